"""`bench profile --gpus` on a host with two or more NVIDIA GPUs (CI skips: `pytest -m gpu`).

Two configurations run at once, one per GPU: their records name two different GPU UUIDs (NVML's,
for the device each child was pinned to) and their time windows overlap. A third run splits one
configuration over two GPUs. The model is a random-weight twin of llama3.2:1b at Q4_K_M written
with `bench twin` (about 0.8 GB; a tiny random GGUF with a bigger shape where `bench twin` is not
there), registered twice in a local manifest so each GPU gets a configuration of its own.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import records
from bench.rundir import RunDir

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
TWIN_OF = "llama3.2:1b-q4_K_M"
# Random weights stop at a random EOS: --ignore-eos makes every request 64 tokens long.
FAST = ["--max-tokens", "64", "--ignore-eos", "--no-score", "--no-download", "--sample-hz", "20"]


def bench(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def nvml_gpus() -> list[dict]:
    from hwprobe.probe import collect

    gpus = [g for g in collect(include_llama=False).get("gpus", []) if g.get("uuid")]
    if len(gpus) < 2:
        pytest.skip(f"needs two NVIDIA GPUs; NVML sees {len(gpus)}")
    probe = subprocess.run([sys.executable, "-m", "bench.engine.worker", "--probe"], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))), timeout=120)
    if '"supports_gpu_offload": true' not in probe.stdout:
        pytest.skip(f"llama-cpp-python here cannot offload to a GPU: {probe.stdout.strip()[-200:]}")
    return gpus


@pytest.fixture(scope="module")
def twin_manifest(nvml_gpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multigpu")
    path = root / "twin-Q4_K_M.gguf"
    if importlib.util.find_spec("bench.twin") is not None:
        made = bench("twin", TWIN_OF, "--quant", "Q4_K_M", "--out", str(path))
        assert made.returncode == 0 and path.is_file(), f"bench twin failed: {made.stdout}{made.stderr}"
    else:
        from tiny_gguf import write_tiny_gguf

        write_tiny_gguf(path, n_layer=8, n_embd=1024, n_head=16, n_head_kv=4, n_ff=4096)
    from conftest import write_local_manifest

    return write_local_manifest(root / "models.toml", {"twin-a": path, "twin-b": path})


def _by_config(run: RunDir) -> dict[str, list[records.RequestRecord]]:
    out: dict[str, list[records.RequestRecord]] = {}
    for r in run.requests():
        out.setdefault(r.config_id, []).append(r)
    return out


def test_two_configurations_run_at_once_one_per_gpu(nvml_gpus, twin_manifest, tmp_path):
    out = tmp_path / "run"
    result = bench("--manifest", str(twin_manifest), "profile", "twin-a", "twin-b", "--gpus", "0,1",
                   "--out", str(out), *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    run = RunDir.open(out)
    uuids = {g["index"]: g["uuid"] for g in nvml_gpus}
    configs = {c.config_id: c for c in run.configs()}
    assert {c.status for c in configs.values()} == {"ok"}
    assert all(c.device == "gpu" and c.n_layers_offloaded == c.n_layers_total for c in configs.values())
    # Two different GPUs, each named by NVML's UUID for the NVML index the record gives.
    assert {configs["twin-a"].gpu_uuid, configs["twin-b"].gpu_uuid} == {uuids[0], uuids[1]}
    for c in configs.values():
        assert c.gpu_uuid == uuids[c.extra["gpu_index"]]
    reqs = _by_config(run)
    for config_id, rs in reqs.items():
        assert {r.gpu_uuid for r in rs} == {configs[config_id].gpu_uuid}
        # Each child sampled its own GPU: every request has an energy figure, and they add up to work done.
        assert all(r.energy_j is not None for r in rs) and sum(r.energy_j for r in rs) > 0
        assert all(r.n_gen_tokens == 64 for r in rs)
    # At once: the two configurations' request windows overlap.
    a0, a1 = min(r.t_start_unix for r in reqs["twin-a"]), max(r.t_end_unix for r in reqs["twin-a"])
    b0, b1 = min(r.t_start_unix for r in reqs["twin-b"]), max(r.t_end_unix for r in reqs["twin-b"])
    assert a0 < b1 and b0 < a1, "the two GPUs did not work at the same time"
    # Telemetry per GPU, tagged with its NVML index and the configuration it watched.
    seen = {(s.config_id, s.gpu_index) for s in run.telemetry() if s.power_w is not None}
    assert {("twin-a", configs["twin-a"].extra["gpu_index"]), ("twin-b", configs["twin-b"].extra["gpu_index"])} <= seen


def test_a_split_configuration_spans_two_gpus(nvml_gpus, twin_manifest, tmp_path):
    out = tmp_path / "split"
    result = bench("--manifest", str(twin_manifest), "profile", "twin-a", "--gpus", "0,1", "--split", "twin-a",
                   "--out", str(out), *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    run = RunDir.open(out)
    (config,) = run.configs()
    both = [g["uuid"] for g in nvml_gpus[:2]]
    assert config.status == "ok" and config.device == "gpu"
    assert config.extra["gpu_uuids"] == both and config.extra["split_mode"] == "layer"
    assert sum(config.extra["tensor_split"]) == pytest.approx(1.0, abs=1e-3)
    assert all(r.extra["gpu_uuids"] == both for r in run.requests())
    assert {s.gpu_index for s in run.telemetry() if s.power_w is not None} >= {0, 1}
    log = run.file(records.LOG_FILE).read_text()
    # llama.cpp put model weights on both visible devices.
    assert re.search(r"CUDA0 model buffer size", log) and re.search(r"CUDA1 model buffer size", log)
