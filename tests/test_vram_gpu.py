"""VRAM prediction and KV-depth sweeps on an NVIDIA GPU (CI skips these: `pytest -m gpu` on a GPU host).

One random-weight twin of llama3.2:1b at Q4_K_M (`bench.twin`, cached in $BENCH_TWIN_CACHE) serves
every test: the prediction against NVML (within 5%) and against llama.cpp's own buffer sizes, a
depth sweep, the refusal before loading, and the engine's record of predicted vs measured VRAM.
benchmarks/gpu_vram_depth.py runs the same checks over three twins and prints a table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.rundir import read_jsonl

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
TWIN_OF = ("llama3.2:1b-q4_K_M", "Q4_K_M")
MIB = 2**20


def bench(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)


@pytest.fixture(scope="module", autouse=True)
def needs_gpu_build():
    from hwprobe.nvml import NvmlSession

    with NvmlSession() as nvml:
        if not nvml.available:
            pytest.skip(f"no NVIDIA GPU: {nvml.error}")
    out = subprocess.run([sys.executable, "-m", "bench.engine.worker", "--probe"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
    if not json.loads(out.stdout).get("supports_gpu_offload"):
        pytest.skip("llama-cpp-python is built without GPU support (reinstall with CMAKE_ARGS=\"-DGGML_CUDA=on\")")


@pytest.fixture(scope="module")
def twin() -> Path:
    from bench.manifest import load_manifest
    from bench.twin import ensure_twin

    entry = load_manifest().get(TWIN_OF[0])
    return ensure_twin(entry, TWIN_OF[1]).path


def _configs(run: Path) -> list[dict]:
    return read_jsonl(run / "configs.jsonl").rows


def test_prediction_is_within_5_percent_of_nvml_and_matches_llama_cpps_buffers(twin, tmp_path):
    run = tmp_path / "run"
    result = bench("sweep", str(twin), "--gpu", "-d", "0", "-p", "512", "-n", "16", "--reps", "1",
                   "--flash-attn", "on", "--out", str(run))
    assert result.returncode == 0, result.stderr + result.stdout
    (config,) = _configs(run)
    extra = config["extra"]
    assert config["n_layers_offloaded"] == config["n_layers_total"]
    assert extra.get("spill") is None
    assert extra["vram_measured_bytes"], "NVML gave no measurement"
    assert abs(extra["vram_prediction_error_pct"]) <= 5.0, extra
    buffers, prediction = extra["vram_llama_buffers_bytes"], extra["vram_prediction"]
    assert prediction["kv_bytes"] == pytest.approx(buffers["KV"], abs=0.01 * MIB)
    assert prediction["weights_bytes"] == pytest.approx(buffers["model"], rel=0.01)
    assert prediction["compute_bytes"] == pytest.approx(buffers["compute"], rel=0.25)


def test_depth_sweep_on_the_gpu(twin, tmp_path):
    run = tmp_path / "run"
    result = bench("sweep", str(twin), "--gpu", "-d", "0,4096", "--reps", "2", "--flash-attn", "on",
                   "-p", "512", "-n", "64", "--out", str(run))
    assert result.returncode == 0, result.stderr + result.stdout
    rows = read_jsonl(run / "sweep.jsonl").rows
    assert len(rows) == 4 and all(r["status"] == "ok" and r["device"] == "gpu" for r in rows)
    assert all(r["kv_tokens_before_decode"] == r["depth"] for r in rows)
    by_depth = {d: sorted(r["decode_tps"] for r in rows if r["depth"] == d) for d in (0, 4096)}
    assert max(by_depth[4096]) <= 1.05 * max(by_depth[0])  # more context never decodes faster
    assert all(r["decode_power_mean_w"] for r in rows)
    print("decode tok/s by depth:", by_depth)


def test_what_does_not_fit_is_refused_before_loading(twin, tmp_path):
    run = tmp_path / "run"
    huge = {"BENCH_VRAM_OVERHEAD_MIB": str(10 * 1024 * 1024)}  # 10 TiB of "overhead": nothing fits
    result = bench("sweep", str(twin), "--gpu", "-d", "0", "--reps", "1", "--out", str(run), env=huge)
    assert result.returncode == 1
    (config,) = _configs(run)
    assert config["status"] == "failed" and config["stage"] == "fit"
    assert "needs ~" in config["error"] and "free" in config["error"]
    (row,) = read_jsonl(run / "sweep.jsonl").rows
    assert row["status"] == "failed" and row["stage"] == "fit"


def test_profile_records_predicted_and_measured_vram(twin, tmp_path):
    run = tmp_path / "run"
    manifest = tmp_path / "models.toml"
    manifest.write_text(
        'schema_version = 1\n[[model]]\nid = "twin"\nfamily = "llama3.2"\nparams_b = 1.2\ntier = "A"\n'
        f'arch = "llama"\nquant = "Q4_K_M"\nsource = "local"\npath = "{twin}"\n'
    )
    result = bench("--manifest", str(manifest), "profile", "twin", "--gpu", "--preset", "quick", "--max-tokens", "8",
                   "--no-score", "--out", str(run))
    assert result.returncode == 0, result.stderr + result.stdout
    (config,) = _configs(run)
    extra = config["extra"]
    assert extra["vram_predicted_bytes"] > 0 and extra["vram_measured_bytes"] > 0
    assert abs(extra["vram_prediction_error_pct"]) <= 10.0  # profile's n_ctx is its own; 5% is the sweep's test
    assert "spill" not in extra
