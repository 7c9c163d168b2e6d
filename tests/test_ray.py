"""`bench profile --ray`: configurations as Ray tasks on a local, CPU-only Ray, records streamed back.

The slow tests start a private Ray on this machine through the real command line (`--ray` alone;
2 CPUs, no dashboard) and compare with a sequential run of the same three tiny configurations.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench import records
from bench.errors import BenchError
from bench.rundir import RunDir, read_jsonl

REPO = Path(__file__).resolve().parents[1]
FAST = ["--cpu", "--threads", "1", "--max-tokens", "8", "--no-score", "--no-download"]
CONFIGS = ("a", "b", "c")


# --------------------------------------------------------------------------- without a cluster


def test_without_ray_installed_the_error_says_how_to_get_it(monkeypatch):
    from bench.engine import ray_backend

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(BenchError, match=r"--ray needs the ray package.*bench-gguf\[ray\]"):
        ray_backend.import_ray()


def test_a_cluster_without_gpus_is_refused_unless_cpu():
    from bench.engine.ray_backend import check_resources

    cpu_only = {"resources": {"CPU": 8.0, "memory": 1e9}}
    with pytest.raises(BenchError, match="has no GPU .*CPU 8.*pass --cpu"):
        check_resources(cpu_only, num_gpus=1, num_cpus=1)
    check_resources(cpu_only, num_gpus=0, num_cpus=4)
    with pytest.raises(BenchError, match="asks for 16 CPUs"):
        check_resources(cpu_only, num_gpus=0, num_cpus=16)


def test_tail_hands_over_only_complete_lines(tmp_path):
    from bench.engine.ray_backend import _Tail

    path = tmp_path / "f.jsonl"
    tail = _Tail(path)
    assert tail.lines() == []  # not there yet
    path.write_bytes(b'{"a": 1}\n{"b": ')
    assert tail.lines() == [b'{"a": 1}']
    with path.open("ab") as fh:
        fh.write(b'2}\n')
    assert tail.lines() == [b'{"b": 2}'] and tail.lines() == []


def test_a_ray_gpu_id_maps_to_the_nvml_device():
    from bench.engine.ray_backend import _nvml_gpu

    gpus = [{"index": 0, "uuid": "GPU-aaaa"}, {"index": 1, "uuid": "GPU-bbbb"}]
    assert _nvml_gpu("1", gpus)["uuid"] == "GPU-bbbb"
    assert _nvml_gpu("GPU-aaaa", gpus)["index"] == 0
    assert _nvml_gpu("7", gpus) is None and _nvml_gpu("", gpus) is None


# --------------------------------------------------------------------------- on a local Ray


def bench(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    full_env.pop("RAY_ADDRESS", None)  # always a private Ray, never a cluster the machine happens to know
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)


@pytest.fixture(scope="module")
def three_configs(tiny_models, tmp_path_factory):
    """Three tiny configurations and the run a sequential (non-Ray) `bench profile` makes of them."""
    pytest.importorskip("ray")
    from conftest import write_local_manifest

    root = tmp_path_factory.mktemp("ray")
    manifest = write_local_manifest(root / "models.toml", {"a": tiny_models["tiny"], "b": tiny_models["tiny-notemplate"],
                                                           "c": tiny_models["tiny"]})
    out = root / "sequential"
    result = bench("--manifest", str(manifest), "profile", *CONFIGS, "--reps", "2", "--out", str(out), *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    return manifest, RunDir.open(out), root


def _outputs(run: RunDir) -> dict[str, str]:
    return {r.key: r.output for r in run.requests()}


@pytest.mark.slow
def test_ray_run_holds_exactly_what_a_sequential_run_holds(three_configs):
    manifest, sequential, root = three_configs
    out = root / "ray"
    result = bench("--manifest", str(manifest), "profile", *CONFIGS, "--reps", "2", "--ray", "--out", str(out), *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    run = RunDir.open(out)
    keys = Counter(r.key for r in run.requests())
    assert keys == Counter(r.key for r in sequential.requests()) and max(keys.values()) == 1
    assert _outputs(run) == _outputs(sequential)  # temperature 0: the same text, token for token
    assert read_jsonl(run.file(records.REQUESTS_FILE)).bad_lines == []

    configs = {c.config_id: c for c in run.configs()}
    assert set(configs) == set(CONFIGS) and all(c.status == "ok" and c.extra["retries"] == 0 for c in configs.values())
    meta = run.meta()
    host = meta["ray"]["nodes"][0]
    assert all(r.host == host for r in run.requests())
    assert meta["hosts"][host]["hardware"]["cpu"] and "supports_gpu_offload" in meta["hosts"][host]["llama_cpp"]
    assert meta["hardware"] == meta["hosts"][host]["hardware"]  # one worker host: a local run's layout
    assert all(c["resolved"]["host"] == host and c["resolved"]["sha256"] for c in meta["configs"])
    assert {s.config_id for s in run.telemetry()} == set(CONFIGS)
    assert "[b] llama.cpp:" in run.file(records.LOG_FILE).read_text()
    # Ray tasks ran side by side (2 CPUs, one thread each): some pair of configurations overlaps.
    spans = sorted((c.t_start_unix, c.t_end_unix) for c in configs.values())
    assert any(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


@pytest.mark.slow
def test_a_lost_worker_is_retried_once_and_nothing_is_recorded_twice(three_configs):
    manifest, sequential, root = three_configs
    out = root / "ray-lost"
    result = bench("--manifest", str(manifest), "profile", *CONFIGS, "--reps", "2", "--ray", "--out", str(out), *FAST,
                   env={"BENCH_RAY_TEST_LOSE_WORKER": "b:3"})
    assert result.returncode == 0, result.stdout + result.stderr
    run = RunDir.open(out)
    keys = Counter(r.key for r in run.requests())
    assert keys == Counter(r.key for r in sequential.requests()) and max(keys.values()) == 1
    assert _outputs(run) == _outputs(sequential)

    configs = {c.config_id: c for c in run.configs()}
    b = configs["b"]
    assert b.status == "ok" and b.extra["retries"] == 1
    (lost,) = b.extra["lost_attempts"]
    assert lost["attempt"] == 0 and 1 <= lost["n_requests"] <= 3 and "WorkerCrashed" in lost["error"]
    n_b = sum(1 for r in run.requests() if r.config_id == "b")
    assert b.n_requests == n_b - lost["n_requests"]  # the retry ran only what the driver lacked
    assert configs["a"].extra["retries"] == 0 and configs["c"].extra["retries"] == 0
    assert "[b] Ray worker lost" in run.file(records.LOG_FILE).read_text()
