"""`bench crosscheck`: a run's requests again on Ollama or an OpenAI-compatible server, compared.

- plan.py            what to send: configurations, exact prompts, matched options, read from RUN_DIR
- ollama_client.py   Ollama through its Python client (blob upload, /api/create, raw /api/generate)
- openai_client.py   /v1/completions over httpx (llama-server, llama-cpp-python, vLLM)
- runner.py          the loop: per configuration, prepare, warm up, time every request, record it
- records.py         CrosscheckRecord, flags, file layout under RUN_DIR/crosscheck/
The comparison itself (ratios, agreement, quality deltas) lives in reports/crosscheck.py.
"""
