"""`bench profile --gpus`: the queue (fake workers), GPU choice and pinning, and a pool of real children.

No GPU here: the queue is tested with fake jobs, the pinning with fake GPUs, and the pool once with
real worker children on the CPU (pinned to fake GPU UUIDs, which a CPU build ignores) to check that
several children appending to one run directory at once lose and duplicate nothing.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from bench import records
from bench.engine.multisampler import combine_windows
from bench.engine.scaleout import (
    Gpu, GpuPool, Job, PoolInterrupted, SlotPool, parse_gpus, parse_split, pin, plan_pool, tensor_split,
)
from bench.errors import BenchError
from bench.rundir import RunDir, read_jsonl
from hwprobe.window import WindowStats

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the queue, with fake workers


def _pool(slots, run_job, **kw):
    return SlotPool(slots=slots, run_job=run_job, on_error=lambda job, s, exc: ("failed", job.name, str(exc)),
                    poll_s=0.01, **kw)


def test_jobs_go_to_whichever_worker_is_free():
    release_long = threading.Event()
    ran_on: dict[str, str] = {}

    def run_job(job, slots):
        ran_on[job.name] = slots[0]
        if job.name == "long":
            # Held until every short job has finished: they can only have run on the other slot.
            assert release_long.wait(10)
        elif all(n in ran_on for n in ("s1", "s2", "s3")) and job.name == "s3":
            release_long.set()
        return ("ok", job.name, slots)

    jobs = [Job(0, "long"), Job(1, "s1"), Job(2, "s2"), Job(3, "s3")]
    results = _pool(["gpu0", "gpu1"], run_job).run(jobs)
    assert ran_on == {"long": "gpu0", "s1": "gpu1", "s2": "gpu1", "s3": "gpu1"}
    assert [r[1] for r in results] == ["long", "s1", "s2", "s3"]  # the user's order, whatever the timing


def test_two_workers_run_at_once():
    both_running = threading.Barrier(2, timeout=10)

    def run_job(job, slots):
        both_running.wait()  # deadlocks (and times out) unless the two jobs run concurrently
        return ("ok", job.name, slots)

    results = _pool(["a", "b"], run_job).run([Job(0, "x"), Job(1, "y")])
    assert {r[2][0] for r in results} == {"a", "b"}


def test_a_failing_worker_is_recorded_failed_and_the_others_go_on():
    def run_job(job, slots):
        if job.name == "bad":
            raise RuntimeError("CUDA error: out of memory")
        return ("ok", job.name, slots)

    ended = []
    jobs = [Job(i, name) for i, name in enumerate(["a", "bad", "c", "d"])]
    results = _pool(["g0", "g1"], run_job, on_end=lambda job, s, r: ended.append(job.name)).run(jobs)
    assert results[1] == ("failed", "bad", "CUDA error: out of memory")
    assert [r[0] for r in results] == ["ok", "failed", "ok", "ok"]
    assert sorted(ended) == ["a", "bad", "c", "d"]


def test_a_split_job_gets_several_workers_at_once_and_goes_first():
    lock = threading.Lock()
    running: set[str] = set()
    starts: dict[str, tuple[float, set]] = {}
    ends: dict[str, float] = {}

    def run_job(job, slots):
        with lock:
            running.update(slots)
            starts[job.name] = (time.monotonic(), set(running))
        time.sleep(0.05)
        with lock:
            running.difference_update(slots)
            ends[job.name] = time.monotonic()
        return ("ok", job.name, slots)

    jobs = [Job(0, "small"), Job(1, "big", n_slots=3), Job(2, "small2")]
    results = _pool(["g0", "g1", "g2"], run_job).run(jobs)
    assert results[1] == ("ok", "big", ("g0", "g1", "g2"))
    assert starts["big"][1] == {"g0", "g1", "g2"}  # it alone held every GPU
    # Queued first although listed second; the single-GPU jobs waited for it.
    assert starts["small"][0] >= ends["big"] and starts["small2"][0] >= ends["big"]


def test_a_job_needing_more_gpus_than_the_pool_is_refused():
    with pytest.raises(BenchError, match="needs 3 GPUs, the pool has 2"):
        _pool(["a", "b"], lambda job, s: None).run([Job(0, "huge", n_slots=3)])


def test_an_interrupted_job_stops_the_queue_and_keeps_what_finished():
    interrupts = []

    def run_job(job, slots):
        return ("interrupted" if job.name == "b" else "ok", job.name, slots)

    pool = _pool(["only"], run_job, interrupt=lambda: interrupts.append(1), is_interrupt=lambda r: r[0] == "interrupted")
    with pytest.raises(PoolInterrupted) as info:
        pool.run([Job(0, "a"), Job(1, "b"), Job(2, "c")])
    assert [r[1] for r in info.value.results] == ["a", "b"]  # c never started
    assert interrupts == [1]


# --------------------------------------------------------------------------- choosing and pinning GPUs

PROBED = [{"index": 0, "uuid": "GPU-aaaa", "name": "H100"}, {"index": 1, "uuid": "GPU-bbbb", "name": "H100"},
          {"index": 2, "uuid": "GPU-cccc", "name": "L4"}]


def test_parse_gpus():
    assert [g.index for g in parse_gpus("all", PROBED)] == [0, 1, 2]
    assert [g.uuid for g in parse_gpus("2, 0", PROBED)] == ["GPU-cccc", "GPU-aaaa"]
    for bad, message in [("3", "there is no GPU 3; NVML sees 0, 1, 2"), ("0,0", "named twice"),
                         ("gpu1", "expected NVML indices"), ("", "expected NVML indices")]:
        with pytest.raises(BenchError, match=message):
            parse_gpus(bad, PROBED)


def test_parse_gpus_without_any_gpu_says_why():
    with pytest.raises(BenchError, match=r"--gpus 0,1: no NVIDIA GPU found \(NVML Shared Library Not Found\)"):
        parse_gpus("0,1", [], "NVML Shared Library Not Found")


def test_parse_split_with_ids_that_hold_colons():
    ids = ["smollm2:135m-q4_1", "qwen2.5:14b-q8_0", "m"]
    assert parse_split(["qwen2.5:14b-q8_0"], ids, 4) == {"qwen2.5:14b-q8_0": 4}
    assert parse_split(["qwen2.5:14b-q8_0:2", "m:3"], ids, 4) == {"qwen2.5:14b-q8_0": 2, "m": 3}
    with pytest.raises(BenchError, match="not one of this run's configurations"):
        parse_split(["nope"], ids, 4)
    with pytest.raises(BenchError, match="2 to 4 GPUs"):
        parse_split(["m:5"], ids, 4)
    with pytest.raises(BenchError, match="2 to 1 GPUs"):
        parse_split(["m"], ids, 1)


def test_plan_pool_needs_gpus_for_split():
    from bench.engine.orchestrator import ProfileOptions

    assert plan_pool(ProfileOptions(), ["m"], False, None) is None
    with pytest.raises(BenchError, match="--split needs --gpus"):
        plan_pool(ProfileOptions(split=["m"]), ["m"], False, None)
    with pytest.raises(BenchError, match="no NVIDIA GPU found"):
        plan_pool(ProfileOptions(gpus="all"), ["m"], False, "no driver")


def test_tensor_split_follows_free_memory():
    assert tensor_split([30, 10]) == [0.75, 0.25]
    assert tensor_split([None, 10]) == [0.5, 0.5]  # unknown: equal shares, not a guess
    assert tensor_split([8, 8, 16]) == [0.25, 0.25, 0.5]


def test_pin_one_gpu_by_uuid_and_sample_its_nvml_index():
    p = pin([Gpu(3, "GPU-dddd")])
    # CUDA's order need not match NVML's: the UUID names the same card to both.
    assert p.child_env["CUDA_VISIBLE_DEVICES"] == "GPU-dddd"
    assert p.spec_extra == {"gpu_index": 3} and p.gpu_uuid == "GPU-dddd" and p.label == "GPU 3"
    # Each worker's roofline uses its own card's peak bandwidth.
    (h100,) = parse_gpus("0", PROBED)
    assert pin([h100]).orchestrator_kwargs()["peak_gbs"] == 3350.0
    l4 = parse_gpus("2", PROBED)[0]
    assert pin([l4]).peak_gbs == 300.0


def test_pin_a_split_over_several_gpus():
    p = pin([Gpu(0, "GPU-aaaa"), Gpu(2, "GPU-cccc")], free_bytes=lambda idx: [3 * 2**30, 1 * 2**30])
    assert p.child_env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-cccc"
    assert p.spec_extra["split_mode"] == "layer" and p.spec_extra["tensor_split"] == [0.75, 0.25]
    assert p.spec_extra["gpu_indices"] == [0, 2] and p.spec_extra["vram_check"] is False
    assert p.record_extra["gpu_uuids"] == ["GPU-aaaa", "GPU-cccc"] and p.label == "GPU 0+2"


def test_split_windows_add_up_and_unknown_stays_unknown():
    a = WindowStats(10, 5.0, 50.0, 70.0, 100, 40, 1000, "counter")
    b = WindowStats(12, 3.0, 30.0, 60.0, 200, 60, 900, "counter")
    both = combine_windows([a, b])
    assert (both.energy_j, both.power_mean_w, both.power_peak_w) == (8.0, 80.0, 130.0)
    assert (both.peak_proc_mem_bytes, both.n_samples, both.energy_source) == (100, 10, "counter")
    c = WindowStats(12, None, None, None, None, None, None, None)
    assert combine_windows([a, c]).energy_j is None  # half the GPUs' energy is not the energy


# --------------------------------------------------------------------------- GpuPool with fake orchestrators


class _FakeOrchestrator:
    def __init__(self, run, pinned, log):
        self.run, self.pinned, self.log = run, pinned, log

    def run_config(self, plan):
        from bench.engine.orchestrator import ConfigOutcome

        if plan.config_id == "broken":
            raise OSError("No space left on device")
        self.log.append((plan.config_id, self.pinned["gpu_uuid"], self.pinned["child_env"]["CUDA_VISIBLE_DEVICES"]))
        record = records.ConfigRecord(config_id=plan.config_id, status="ok", stage="done", n_requests=0,
                                      gpu_uuid=self.pinned["gpu_uuid"], extra=dict(self.pinned["record_extra"]))
        self.run.append(records.CONFIGS_FILE, record)
        return ConfigOutcome(record)

    def interrupt(self):
        pass


def _quiet_display():
    from rich.console import Console

    from bench.engine.pool_display import PoolDisplay

    return PoolDisplay(Console(file=io.StringIO(), width=120))


def test_gpu_pool_pins_each_configuration_and_records_a_crash_outside_the_child(tmp_path):
    from bench.engine.orchestrator import ConfigPlan

    run = RunDir(tmp_path)
    log: list = []

    def make(display, **pinned):
        return _FakeOrchestrator(run, pinned, log)

    gpus = [Gpu(0, "GPU-aaaa"), Gpu(1, "GPU-bbbb")]
    pool = GpuPool(run, gpus, {"big": 2}, make, _quiet_display(), free_bytes=lambda idx: [1, 1])
    plans = [ConfigPlan(config_id=c, entry=None) for c in ("a", "broken", "big", "d")]
    outcomes = pool.run_all(plans)
    assert [o.record.config_id for o in outcomes] == ["a", "broken", "big", "d"]
    configs = {c.config_id: c for c in run.configs()}
    assert configs["broken"].status == "failed" and "No space left on device" in configs["broken"].error
    assert configs["big"].extra["gpu_uuids"] == ["GPU-aaaa", "GPU-bbbb"]
    assert configs["big"].extra["tensor_split"] == [0.5, 0.5]
    ran = {name: (uuid, visible) for name, uuid, visible in log}
    assert ran["big"] == ("GPU-aaaa", "GPU-aaaa,GPU-bbbb")
    assert {ran["a"][1], ran["d"][1]} <= {"GPU-aaaa", "GPU-bbbb"}
    assert "[broken] failed on GPU" in run.file(records.LOG_FILE).read_text()


# --------------------------------------------------------------------------- real children, one run directory


def test_a_pool_of_real_children_shares_one_run_directory(tiny_models, local_manifest, tmp_path):
    """Two workers, three configurations: what a sequential run records, once each, lines intact."""
    from bench.commands.profile import _request_dict
    from bench.engine.orchestrator import ConfigPlan, DevicePlan, Orchestrator, ProfileOptions
    from bench.fetch import resolve_model
    from bench.manifest import load_manifest
    from scoring.tasks import load_suite

    manifest = load_manifest(local_manifest({"a": tiny_models["tiny"], "b": tiny_models["tiny-notemplate"],
                                             "c": tiny_models["tiny"]}))
    options = ProfileOptions(device="cpu", n_threads=1, max_tokens=8, sample_hz=20.0, score=False, download=False)
    requests = [_request_dict(r) for r in load_suite().requests("quick")]
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_meta({"options": options.to_dict()})
    lock = threading.Lock()

    def resolve(plan):
        with lock:
            resolved = resolve_model(plan.entry, manifest)
        plan.model_path, plan.model_bytes, plan.sha256 = str(resolved.path), resolved.size_bytes, resolved.sha256

    def make(display, **pinned):
        return Orchestrator(run, options, DevicePlan("cpu", 0, None), requests, display, resolve, host="h", **pinned)

    gpus = [Gpu(0, "GPU-fake-0"), Gpu(1, "GPU-fake-1")]
    plans = [ConfigPlan(config_id=e.id, entry=e) for e in manifest.entries]
    outcomes = GpuPool(run, gpus, {}, make, _quiet_display()).run_all(plans)
    assert [o.record.status for o in outcomes] == ["ok", "ok", "ok"]

    expected = Counter(records.request_key(c, 0, r["request_id"], "plain") for c in ("a", "b", "c") for r in requests)
    assert Counter(r.key for r in run.requests()) == expected
    for name in (records.REQUESTS_FILE, records.CONFIGS_FILE, records.TELEMETRY_FILE):
        assert read_jsonl(run.file(name)).bad_lines == [], name
    configs = {c.config_id: c for c in run.configs()}
    assert {configs[c].extra["gpu_index"] for c in "abc"} <= {0, 1}
    # Two children ran at once: some pair of configurations overlaps in time.
    spans = sorted((c.t_start_unix, c.t_end_unix) for c in configs.values())
    assert any(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    # Same model file and seed as "a": the same outputs, whichever worker ran it.
    outputs = {(r.config_id, r.request_id): r.output for r in run.requests()}
    assert all(outputs[("a", r["request_id"])] == outputs[("c", r["request_id"])] for r in requests)
    assert not list(run.path.glob(".worker-spec-*"))

    # benchmarks/multigpu.py's table reads the same run: one row per configuration, its GPU index.
    table = subprocess.run([sys.executable, str(REPO / "benchmarks" / "multigpu.py"), "--summarize", str(run.path)],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ") and "configuration" not in line]
    assert len(rows) == 3 and all(f"| {configs[c].extra['gpu_index']} (" in next(r for r in rows if r.startswith(f"| {c} "))
                                  for c in "abc")
    assert "Total wall time" in table.stdout and "×" in table.stdout


# --------------------------------------------------------------------------- the command line


def test_gpus_on_a_machine_without_gpus_is_one_clear_line(tiny_models, local_manifest, tmp_path):
    from hwprobe.nvml import NvmlSession

    with NvmlSession() as session:
        if session.available:
            pytest.skip("this machine has an NVIDIA GPU")
    manifest = local_manifest({"tiny": tiny_models["tiny"]})
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--manifest", str(manifest), "profile", "tiny", "--gpus", "0,1",
         "--out", str(out)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --gpus 0,1: no NVIDIA GPU found"), result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()  # refused before any run directory was made


def test_ctrl_c_interrupts_the_running_jobs_and_starts_no_more():
    import signal

    stop = threading.Event()
    started = []

    def run_job(job, slots):
        started.append(job.name)
        if not stop.wait(10):  # a running child, until interrupt() stops it
            return ("ok", job.name, slots)
        return ("interrupted", job.name, slots)

    def press_ctrl_c():
        while len(started) < 2:
            time.sleep(0.01)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    pool = _pool(["g0", "g1"], run_job, interrupt=stop.set, is_interrupt=lambda r: r[0] == "interrupted")
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(PoolInterrupted) as info:
        pool.run([Job(i, f"j{i}") for i in range(5)])
    assert time.monotonic() - t0 < 5  # the running jobs were stopped, not awaited to the end
    assert sorted(r[1] for r in info.value.results) == ["j0", "j1"]
    assert all(r[0] == "interrupted" for r in info.value.results) and sorted(started) == ["j0", "j1"]
