"""The in-process engine behind `bench profile`.

- `generate`     the timed generation loop on llama.cpp's low-level API (one child process per config)
- `chat`         the prompt: the GGUF's own chat template, or a stated ChatML fallback
- `stats`        per-request timing figures from per-token timestamps; percentiles
- `worker`       the child process: load, warm up, time every request, write records
- `orchestrator` the parent: plan, spawn one child per configuration, survive its crashes
- `progress`     the rich progress display and the closing summary table
"""
