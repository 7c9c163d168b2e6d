"""bench profile --twin / --parallel / --sampler on the CPU, through the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
FAST = ["--threads", "1", "--max-tokens", "10", "--no-download", "--sample-hz", "0"]


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd)


def _manifest(tmp_path: Path) -> Path:
    from test_twin import TINY

    s = TINY["llama"]
    path = tmp_path / "models.toml"
    path.write_text(
        "schema_version = 1\n\n[[model]]\n"
        'id = "tiny-llama:q8_0"\nfamily = "tiny-llama"\nparams_b = 0.001\ntier = "A"\narch = "llama"\n'
        'quant = "Q8_0"\nsource = "local"\npath = "not-downloaded.gguf"\n'
        "[model.shape]\n"
        f"n_layer = {s.n_layer}\nn_embd = {s.n_embd}\nn_head = {s.n_head}\nn_head_kv = {s.n_head_kv}\n"
        f"head_dim = {s.head_dim}\nn_ff = {s.n_ff}\nn_vocab = {s.n_vocab}\ntied_embeddings = true\n"
        "attn_bias = false\ncontext_length = 4096\nrope_freq_base = 500000.0\nnorm_eps = 1e-5\n"
    )
    return path


def test_profile_twin_times_the_twin_with_fixed_length_and_no_scores(tmp_path):
    manifest = _manifest(tmp_path)
    out = tmp_path / "run"
    env_cache = {"BENCH_TWIN_CACHE": str(tmp_path / "twins")}
    os.environ.update(env_cache)
    try:
        result = bench("--manifest", str(manifest), "profile", "tiny-llama:q8_0", "--twin", "--cpu", "--parallel", "2",
                       "--sampler", "gpu", "--out", str(out), *FAST, cwd=tmp_path)
    finally:
        for k in env_cache:
            os.environ.pop(k)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "not scored: twins have random weights" in result.stdout
    run = RunDir.open(out)
    (config,) = run.configs()
    assert config.status == "ok" and config.twin is True and config.sampler == "gpu"
    assert config.extra["parallel"] == 2
    assert config.extra["roofline"]["model_bytes"] > 0 and config.extra["roofline"]["peak_gbs"] is None
    reqs = run.requests()
    assert reqs and all(r.twin and r.n_gen_tokens == 10 and r.finish_reason == "length" for r in reqs)
    assert all(r.extra["sampler"] == "gpu" and r.extra["parallel"] == 2 for r in reqs)
    assert not run.scores()
    meta = run.meta()
    assert meta["options"]["twin"] is True and meta["options"]["ignore_eos"] is True
    resolved = meta["configs"][0]["resolved"]
    assert resolved["verified_by"] == "twin" and Path(resolved["path"]).parent == tmp_path / "twins"
    from bench.twin import read_twin_marker

    assert read_twin_marker(resolved["path"])["twin_of"] == "tiny-llama:q8_0"


def test_profile_a_twin_of_a_quant_without_twins_is_one_line(tmp_path):
    result = bench("profile", "--twin", "--cpu", *FAST, cwd=tmp_path)  # the default model is Q4_1
    assert result.returncode != 0
    assert "twins are quantized to Q4_K_M or Q8_0" in (result.stdout + result.stderr)
    assert "Traceback" not in result.stderr
