"""hwprobe: the hardware probe, `bench hw`, and the telemetry sampler's energy arithmetic."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from bench.cli import cli
from bench.records import TelemetrySample
from hwprobe.nvml import GPU_SAMPLE_FIELDS, NvmlSession, NvmlTelemetryReader, clock_event_names
from hwprobe.probe import collect, cpu_flags_of_interest, peak_mem_bandwidth_gbs
from hwprobe.sampler import SAMPLE_FIELDS, TelemetrySampler

REPO = Path(__file__).resolve().parents[1]


def _nvml_works() -> bool:
    with NvmlSession() as session:
        return session.available


NO_NVML = pytest.mark.skipif(_nvml_works(), reason="this machine has NVML and a GPU")


class FakeReader:
    """A GPU reader that replays scripted readings; a callable entry computes one, an exception raises."""

    available = True
    reason = None
    gpu_index = 0

    def __init__(self, readings):
        self._readings = iter(readings)
        self.closed = False

    def read(self):
        reading = next(self._readings)
        if isinstance(reading, BaseException):
            raise reading
        return reading() if callable(reading) else reading

    def close(self):
        self.closed = True


def _scripted_sampler(times, readings, hz=1.0):
    """A sampler that is never started: the test takes each sample by hand at a scripted time."""
    clock = iter(times).__next__
    sampler = TelemetrySampler(hz=hz, reader=FakeReader(readings), clock=clock)
    for _ in times:
        sampler.sample_now()
    return sampler


# -- bench hw ------------------------------------------------------------------------------------


@NO_NVML
def test_hw_json_without_gpu_is_valid_json_with_every_section():
    result = subprocess.run(
        [sys.executable, "-m", "bench", "hw", "--json"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert {"cpu", "memory", "os", "python", "software", "host", "gpus", "nvml"} <= set(facts)
    assert facts["nvml"]["available"] is False
    assert facts["nvml"]["error"]
    assert facts["gpus"] == []
    assert "No NVIDIA GPU found through NVML" in result.stderr


def test_hw_json_reports_this_machine():
    result = CliRunner().invoke(cli, ["hw", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["cpu"]["logical_threads"] == psutil.cpu_count()
    assert facts["memory"]["total_bytes"] == psutil.virtual_memory().total
    assert facts["python"]["executable"] == sys.executable
    assert facts["software"]["packages"]["psutil"] == psutil.__version__
    llama = facts["software"]["llama_cpp"]
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        assert llama["system_info"] is None and llama["gpu_offload_supported"] is None
        assert "llama_cpp" in llama["error"]
    else:
        assert llama["system_info"] and isinstance(llama["gpu_offload_supported"], bool)


@NO_NVML
def test_hw_table_says_no_gpu_was_found_and_still_shows_the_rest():
    result = CliRunner().invoke(cli, ["hw"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "No NVIDIA GPU found through NVML" in text
    assert "CPU" in text and "memory" in text and "torch" in text


def test_collect_without_llama_says_why():
    facts = collect(include_llama=False)
    assert facts["software"]["llama_cpp"]["system_info"] is None
    assert "include_llama=False" in facts["software"]["llama_cpp"]["error"]
    json.dumps(facts)  # JSON-able


def test_peak_bandwidth_counts_both_clock_edges():
    # H100 SXM: 2619 MHz on a 5120-bit bus is NVIDIA's published 3.35 TB/s.
    assert peak_mem_bandwidth_gbs(2619, 5120) == pytest.approx(3352.32)
    assert peak_mem_bandwidth_gbs(None, 5120) is None
    assert peak_mem_bandwidth_gbs(2619, None) is None


def test_cpu_flags_of_interest():
    x86 = {"fpu", "avx", "avx2", "avx512f", "avx512_vnni", "amx_tile", "fma", "sse4_2"}
    assert cpu_flags_of_interest(x86) == ["amx_tile", "avx", "avx2", "avx512_vnni", "avx512f", "fma"]
    assert "neon" in cpu_flags_of_interest({"fp", "asimd", "sve"})


def test_clock_event_names():
    assert clock_event_names(0x4 | 0x8) == ["sw_power_cap", "hw_slowdown"]
    assert clock_event_names(0) == []
    assert clock_event_names(0x1 | 0x10000) == ["gpu_idle", "other_0x10000"]


# -- the sampler on this machine -------------------------------------------------------------------


def test_sample_fields_are_the_telemetry_record_fields():
    assert list(SAMPLE_FIELDS) == [f.name for f in dataclasses.fields(TelemetrySample)]


@NO_NVML
def test_sampler_without_nvml_samples_at_the_asked_rate_with_gpu_fields_none():
    batches = []
    sampler = TelemetrySampler(hz=20, config_id="cfg-a", sink=batches.append)
    assert sampler.nvml_available is False and sampler.nvml_reason
    t0 = time.time()
    with sampler:
        time.sleep(0.5)
    t1 = time.time()
    samples = [s for batch in batches for s in batch]
    # 0.5 s at 20 Hz: ~10 ticks, plus the samples taken at start and at stop.
    assert 7 <= len(samples) <= 14, len(samples)
    for sample in samples:
        assert list(sample) == list(SAMPLE_FIELDS)
        TelemetrySample(**sample)  # the record accepts it as is
        assert sample["rss_bytes"] > 0
        assert sample["config_id"] == "cfg-a"
        assert all(sample[name] is None for name in GPU_SAMPLE_FIELDS + ("gpu_index",))
    times = [s["t_unix"] for s in samples]
    assert times == sorted(times)
    stats = sampler.window(t0, t1)
    assert stats.n_samples == len(samples)
    assert stats.energy_j is None and stats.energy_source is None
    assert stats.power_mean_w is None and stats.power_peak_w is None
    assert stats.peak_mem_used_bytes is None and stats.peak_proc_mem_bytes is None
    assert stats.peak_rss_bytes == max(s["rss_bytes"] for s in samples)


def test_set_config_tags_later_samples():
    batches = []
    sampler = TelemetrySampler(hz=50, config_id="first", sink=batches.append, reader=FakeReader(iter(dict, None)))
    with sampler:
        time.sleep(0.1)
        sampler.set_config("second")
        time.sleep(0.1)
    ids = [s["config_id"] for batch in batches for s in batch]
    assert ids[0] == "first" and ids[-1] == "second"
    switch = ids.index("second")
    assert set(ids[:switch]) == {"first"} and set(ids[switch:]) == {"second"}


def test_sink_gets_batches_while_running():
    batches = []
    with TelemetrySampler(hz=20, sink=batches.append, flush_interval_s=0.2):
        time.sleep(0.7)
        flushed_while_running = len(batches)
    assert flushed_while_running >= 2
    assert len(batches) > flushed_while_running  # the rest came at stop


# -- energy arithmetic with a synthetic GPU ---------------------------------------------------------


# NVML refreshes the energy counter every 100 ms; at 20 Hz each value shows up twice. Counter (mJ)
# and power (W) at t = 0, 0.05, ... 0.30 s for a steady 200 W: the new values appear between samples,
# so the change points sit at 0.075 s (20 000 mJ), 0.175 s (40 000) and 0.275 s (60 000).
PLATEAU_TIMES = [1000.0 + 0.05 * i for i in range(7)]
PLATEAU_READINGS = [{"energy_mj": e, "power_w": 200.0} for e in (0, 0, 20_000, 20_000, 40_000, 40_000, 60_000)]


def test_counter_energy_is_placed_by_when_the_counter_changed():
    sampler = _scripted_sampler(PLATEAU_TIMES, PLATEAU_READINGS, hz=20)
    stats = sampler.window(1000.10, 1000.25)
    # counter at 0.10 s: 20 000 + 20 000 x 0.025/0.1 = 25 000; at 0.25 s: 40 000 + 15 000 = 55 000.
    # (Interpolating between the plateaus would say 20 000 -> 40 000: 20 J instead of 30 J.)
    assert stats.energy_source == "counter"
    assert stats.energy_j == pytest.approx(30.0)
    assert stats.power_mean_w == pytest.approx(200.0)
    assert stats.n_samples == 4


def test_counter_energy_past_the_last_change_is_extended_by_the_measured_power():
    sampler = _scripted_sampler(PLATEAU_TIMES, PLATEAU_READINGS, hz=20)
    # 0.30 s is the last sample, after the last change point (0.275 s): 60 000 + 200 W x 0.025 s.
    stats = sampler.window(1000.10, 1000.30)
    assert stats.energy_j == pytest.approx(40.0)


def test_counter_energy_matches_a_steady_load_whatever_the_window():
    # A 250 W load; the counter refreshes every 100 ms at an odd phase; sampled at 20 Hz.
    start, power_w = 1000.0, 250.0
    times = [start + 0.011 + 0.05 * i for i in range(60)]
    readings = [
        {"energy_mj": power_w * 1000.0 * (math.floor((t - start - 0.037) / 0.1) * 0.1 + 0.037), "power_w": power_w}
        for t in times
    ]
    sampler = _scripted_sampler(times, readings, hz=20)
    rng = random.Random(7)
    for _ in range(200):
        t0 = rng.uniform(times[0], times[-1])
        t1 = rng.uniform(t0, times[-1])
        stats = sampler.window(t0, t1)
        assert stats.energy_source == "counter"
        assert stats.energy_j == pytest.approx(power_w * (t1 - t0), abs=1e-6)


def test_window_energy_from_a_counter_sampled_slowly():
    # At 1 Hz every sample sees a new value: 100 W, then 200 W, then 300 W.
    sampler = _scripted_sampler(
        [1000.0, 1001.0, 1002.0, 1003.0],
        [{"energy_mj": e, "power_w": p} for e, p in [(0, 100), (100_000, 100), (300_000, 200), (600_000, 300)]],
    )
    stats = sampler.window(1001.0, 1002.0)
    # change points at 1000.5 (100 000), 1001.5 (300 000), 1002.5 (600 000): 200 000 -> 450 000 mJ.
    assert stats.energy_source == "counter"
    assert stats.energy_j == pytest.approx(250.0)
    assert stats.n_samples == 2
    assert stats.power_peak_w == pytest.approx(200.0)


def test_window_energy_integrates_power_where_there_is_no_counter():
    sampler = _scripted_sampler(
        [1000.0, 1001.0, 1002.0, 1003.0],
        [{"energy_mj": None, "power_w": p} for p in (100, 100, 200, 300)],
    )
    stats = sampler.window(1000.5, 1002.5)
    # trapezoids: 0.5 s x (100+100)/2 + 1 s x (100+200)/2 + 0.5 s x (200+250)/2 = 50 + 150 + 112.5.
    assert stats.energy_source == "integrated_power"
    assert stats.energy_j == pytest.approx(312.5)
    assert stats.power_mean_w == pytest.approx(156.25)
    assert stats.power_peak_w == pytest.approx(250.0)


def test_window_shorter_than_the_sample_period_still_has_energy_and_peaks():
    sampler = _scripted_sampler(
        [1000.0, 1001.0, 1002.0],
        [
            {"energy_mj": 0, "power_w": 100, "mem_used_bytes": 1000, "proc_mem_bytes": 10},
            {"energy_mj": 100_000, "power_w": 100, "mem_used_bytes": 5000, "proc_mem_bytes": 50},
            {"energy_mj": 300_000, "power_w": 200, "mem_used_bytes": 3000, "proc_mem_bytes": 30},
        ],
    )
    stats = sampler.window(1001.25, 1001.5)
    assert stats.n_samples == 0
    # counter: 150 000 mJ at 1.25 s, 200 000 mJ at 1.5 s -> 50 J over 0.25 s.
    assert stats.energy_j == pytest.approx(50.0)
    assert stats.power_mean_w == pytest.approx(200.0)
    assert stats.power_peak_w == pytest.approx(150.0)
    # no sample inside: the neighbours on each side bound the peak memory.
    assert stats.peak_mem_used_bytes == 5000
    assert stats.peak_proc_mem_bytes == 50
    assert stats.peak_rss_bytes > 0


def test_window_peaks_use_the_samples_inside_it():
    sampler = _scripted_sampler(
        [1000.0, 1001.0, 1002.0, 1003.0],
        [{"mem_used_bytes": m, "power_w": 50} for m in (9000, 2000, 4000, 8000)],
    )
    stats = sampler.window(1000.5, 1002.5)
    assert stats.peak_mem_used_bytes == 4000


def test_window_outside_the_sampled_span_has_no_energy():
    sampler = _scripted_sampler([1000.0, 1001.0], [{"energy_mj": 0, "power_w": 100}, {"energy_mj": 100_000, "power_w": 100}])
    assert sampler.window(999.0, 1000.5).energy_j is None  # starts before the first sample
    assert sampler.window(1000.5, 1001.5).energy_j is None  # ends after the last (sampler not running)
    assert sampler.window(1000.0, 1001.0).energy_j == pytest.approx(100.0)


def test_counter_going_backwards_falls_back_to_integrated_power():
    sampler = _scripted_sampler(
        [1000.0, 1001.0, 1002.0],
        [{"energy_mj": 5_000_000, "power_w": 100}, {"energy_mj": 0, "power_w": 100}, {"energy_mj": 100_000, "power_w": 100}],
    )
    stats = sampler.window(1000.0, 1002.0)
    assert stats.energy_source == "integrated_power"
    assert stats.energy_j == pytest.approx(200.0)


def test_missing_counter_readings_are_interpolated_across():
    sampler = _scripted_sampler(
        [1000.0, 1001.0, 1002.0],
        [{"energy_mj": 0, "power_w": 100}, {"energy_mj": None, "power_w": None}, {"energy_mj": 200_000, "power_w": 100}],
    )
    stats = sampler.window(1000.5, 1001.5)
    assert stats.energy_source == "counter"
    assert stats.energy_j == pytest.approx(100.0)


def test_no_interpolation_across_a_long_gap_in_the_samples():
    # At 1 Hz, neighbours 10 s apart are too far apart to say what happened in between.
    sampler = _scripted_sampler([1000.0, 1010.0], [{"energy_mj": 0, "power_w": 100}, {"energy_mj": 1_000_000, "power_w": 100}])
    stats = sampler.window(1004.0, 1005.0)
    assert stats.energy_j is None and stats.power_peak_w is None


def test_window_rejects_a_reversed_span():
    sampler = _scripted_sampler([1000.0], [{}])
    with pytest.raises(ValueError):
        sampler.window(1001.0, 1000.0)


def test_window_while_running_covers_a_request_that_just_ended():
    # A steady 150 W on a counter computed from the wall clock; at 2 Hz the request below ends
    # long before the next tick, so window() must take a sample itself.
    base = time.time()

    def reading():
        return {"energy_mj": (time.time() - base) * 150_000, "power_w": 150.0}

    sampler = TelemetrySampler(hz=2, reader=FakeReader(iter(lambda: reading, None)))
    with sampler:
        t0 = time.time()
        time.sleep(0.1)
        t1 = time.time()
        stats = sampler.window(t0, t1)
    assert stats.energy_source == "counter"
    # the fake reads its clock a few microseconds after the sample's timestamp: allow 1 ms at 150 W.
    assert stats.energy_j == pytest.approx(150.0 * (t1 - t0), abs=0.15)
    assert stats.power_mean_w == pytest.approx(150.0, rel=0.1)


# -- robustness ------------------------------------------------------------------------------------


def test_a_flaky_reader_does_not_stop_the_thread():
    calls = {"n": 0}

    def reading():
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise RuntimeError("NVML hiccup")
        return {"power_w": 100.0, "energy_mj": float(calls["n"])}

    batches = []
    sampler = TelemetrySampler(hz=50, sink=batches.append, reader=FakeReader(iter(lambda: reading, None)))
    with sampler:
        time.sleep(0.4)
        assert sampler._thread.is_alive()
    samples = [s for batch in batches for s in batch]
    assert sampler.n_errors >= 3
    assert "NVML hiccup" in sampler.last_error
    failed = [s for s in samples if s["power_w"] is None]
    assert failed and all(s["rss_bytes"] > 0 for s in failed)  # the psutil half of a tick survives
    assert len(samples) - len(failed) > len(failed)  # and sampling went on after each failure
    assert samples[-1]["t_unix"] > samples[0]["t_unix"] + 0.3


def test_a_failing_sink_does_not_stop_the_sampling():
    def sink(batch):
        raise OSError("disk full")

    sampler = TelemetrySampler(hz=50, sink=sink, flush_interval_s=0.05)
    with sampler:
        time.sleep(0.3)
        assert sampler._thread.is_alive()
    assert sampler.n_sink_errors >= 2
    assert sampler.n_samples >= 8


def test_stop_is_idempotent_and_start_twice_is_an_error():
    sampler = TelemetrySampler(hz=20)
    sampler.start()
    with pytest.raises(RuntimeError):
        sampler.start()
    sampler.stop()
    sampler.stop()
    assert not sampler.running


def test_sampler_rejects_a_process_that_does_not_exist():
    with pytest.raises(ValueError, match="cannot watch process"):
        TelemetrySampler(pid=2**22 + 12345)


# -- the NVML reader against a fake pynvml -----------------------------------------------------------


def _fake_pynvml(pid):
    """Just enough of pynvml for NvmlTelemetryReader: energy is NotSupported, instant power is not."""
    nv = types.SimpleNamespace()

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_FunctionNotFound(NVMLError):
        pass

    nv.NVMLError, nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound = (
        NVMLError,
        NVMLError_NotSupported,
        NVMLError_FunctionNotFound,
    )
    nv.NVML_SUCCESS, nv.NVML_FI_DEV_POWER_INSTANT, nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM = 0, 186, 1, 2
    nv.NVML_TEMPERATURE_GPU = 0
    nv.NVML_VALUE_TYPE_DOUBLE, nv.NVML_VALUE_TYPE_UNSIGNED_INT, nv.NVML_VALUE_TYPE_UNSIGNED_LONG = 0, 1, 2
    nv.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, nv.NVML_VALUE_TYPE_SIGNED_LONG_LONG, nv.NVML_VALUE_TYPE_SIGNED_INT = 3, 4, 5
    nv.calls = {"energy": 0, "handle": 0}

    def energy(handle):
        nv.calls["energy"] += 1
        raise NVMLError_NotSupported()

    def handle_by_index(index):
        nv.calls["handle"] += 1
        return "h0"

    proc = types.SimpleNamespace
    nv.nvmlInit = nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetCount = lambda: 1
    nv.nvmlDeviceGetHandleByIndex = handle_by_index
    nv.nvmlDeviceGetTotalEnergyConsumption = energy
    nv.nvmlDeviceGetFieldValues = lambda h, ids: [
        types.SimpleNamespace(nvmlReturn=0, valueType=1, value=types.SimpleNamespace(uiVal=231_500))
    ]
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=7 * 2**30, total=80 * 2**30)
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: [proc(pid=1, usedGpuMemory=5), proc(pid=pid, usedGpuMemory=3 * 2**30)]
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=97, memory=60)
    nv.nvmlDeviceGetClockInfo = lambda h, which: {1: 1980, 2: 2619}[which]
    nv.nvmlDeviceGetTemperature = lambda h, sensor: 61
    nv.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0x4
    return nv


def test_nvml_reader_converts_units_and_stops_asking_for_unsupported_fields(monkeypatch):
    nv = _fake_pynvml(os.getpid())
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    reader = NvmlTelemetryReader(gpu_index=0)
    assert reader.available and reader.reason is None
    first = reader.read()
    second = reader.read()
    assert first == second == {
        "power_w": 231.5,
        "energy_mj": None,
        "mem_used_bytes": 7 * 2**30,
        "proc_mem_bytes": 3 * 2**30,
        "gpu_util_pct": 97.0,
        "mem_util_pct": 60.0,
        "sm_clock_mhz": 1980,
        "mem_clock_mhz": 2619,
        "temp_c": 61.0,
        "throttle_reasons": ["sw_power_cap"],
    }
    assert reader.power_source == "instant"
    assert nv.calls == {"energy": 1, "handle": 1}  # NotSupported asked once; handle looked up once
    reader.close()


def test_nvml_reader_reports_an_out_of_range_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(os.getpid()))
    reader = NvmlTelemetryReader(gpu_index=3)
    assert not reader.available
    assert "out of range" in reader.reason


def test_hwprobe_never_imports_bench():
    code = "import sys, hwprobe, hwprobe.probe, hwprobe.sampler; print(any(m == 'bench' or m.startswith('bench.') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


# -- on a real GPU -----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_probe_finds_a_gpu():
    facts = collect()
    assert facts["nvml"]["available"] is True
    assert facts["gpus"], facts["nvml"]
    gpu = facts["gpus"][0]
    assert gpu["uuid"].startswith("GPU-")
    assert gpu["memory_total_bytes"] > 0
    assert gpu["peak_mem_bandwidth_gbs"] > 0
    assert gpu["compute_capability"] and gpu["cuda_driver_version"]


@pytest.mark.gpu
def test_sampler_measures_power_and_energy_on_a_gpu():
    """Over a second of matrix products: power and energy are there, and the energy counter agrees
    with the integral of the sampled power (a check of the units on real hardware)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()  # CUDA's start-up happens here, not inside the measured second
    stop = threading.Event()

    def gpu_work():
        b = a
        while not stop.is_set():
            b = (a @ b).clamp_(-1, 1)
            torch.cuda.synchronize()

    batches = []
    worker = threading.Thread(target=gpu_work)
    with TelemetrySampler(hz=20, sink=batches.append) as sampler:
        assert sampler.nvml_available, sampler.nvml_reason
        worker.start()
        time.sleep(0.3)
        t0 = time.time()
        time.sleep(1.0)
        t1 = time.time()
        stats = sampler.window(t0, t1)
        stop.set()
        worker.join()
    samples = [s for batch in batches for s in batch]
    assert all(s["power_w"] is not None and s["power_w"] > 0 for s in samples)
    assert stats.energy_source == "counter"
    assert stats.energy_j > 0 and stats.power_mean_w > 0 and stats.power_peak_w >= stats.power_mean_w * 0.9
    assert stats.peak_mem_used_bytes > 0
    assert stats.n_samples >= 15
    inside = [(s["t_unix"], s["power_w"]) for s in samples if t0 <= s["t_unix"] <= t1]
    integrated_j = sum((tb - ta) * (pa + pb) / 2 for (ta, pa), (tb, pb) in zip(inside, inside[1:]))
    covered_s = inside[-1][0] - inside[0][0]
    assert stats.energy_j / (t1 - t0) == pytest.approx(integrated_j / covered_s, rel=0.2)
