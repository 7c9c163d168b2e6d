"""A background telemetry sampler: NVML (power, energy, memory, clocks) and psutil (RSS, CPU).

Each sample is a plain dict with the fields of bench.records.TelemetrySample (SAMPLE_FIELDS).
Samples go to an optional sink in batches (about once a second and at stop) so the caller can
write them to disk; the sampler keeps compact columns of them so window() can answer energy and
peak-memory questions about any time span it covered.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import psutil

from hwprobe.nvml import GPU_SAMPLE_FIELDS, NvmlTelemetryReader, one_line
from hwprobe.window import SampleSeries, WindowStats

SAMPLE_FIELDS = ("t_unix", "config_id", "rss_bytes", "cpu_pct", "gpu_index") + GPU_SAMPLE_FIELDS

__all__ = ["SAMPLE_FIELDS", "TelemetrySampler", "WindowStats"]


class TelemetrySampler:
    """Samples at `hz` on a daemon thread between start() and stop(); also a context manager.

    `reader` replaces the NVML reader (tests feed synthetic power/energy through it; see
    hwprobe.nvml.NvmlTelemetryReader for the protocol); `clock` replaces time.time for the
    samples' timestamps. `sink(batch)` is called from the sampler thread while running and from
    the caller's thread at stop(), never from both at once. Errors inside sampling or the sink
    are counted (n_errors, n_sink_errors, last_error) and never stop the thread.
    """

    def __init__(
        self,
        hz: float = 20.0,
        gpu_index: int = 0,
        pid: int | None = None,
        config_id: str | None = None,
        sink: Callable[[list[dict[str, Any]]], Any] | None = None,
        *,
        reader: Any = None,
        clock: Callable[[], float] = time.time,
        flush_interval_s: float = 1.0,
    ) -> None:
        if not hz > 0:
            raise ValueError(f"sampling rate must be positive, got hz={hz}")
        self.hz = float(hz)
        self.period_s = 1.0 / self.hz
        self.pid = os.getpid() if pid is None else pid
        try:
            self._process = psutil.Process(self.pid)
            self._process.cpu_percent(None)  # the first call only sets the baseline
        except psutil.Error as exc:
            raise ValueError(f"cannot watch process {self.pid}: {one_line(exc)}") from exc
        self._owns_reader = reader is None
        self._reader = NvmlTelemetryReader(gpu_index, self.pid) if reader is None else reader
        self.nvml_available: bool = bool(self._reader.available)
        self.nvml_reason: str | None = None if self.nvml_available else (self._reader.reason or "no GPU reader")
        self.gpu_index = getattr(self._reader, "gpu_index", gpu_index)
        self._sink = sink
        self._clock = clock
        self.flush_interval_s = flush_interval_s
        self._config_id = config_id

        # Interpolating across more than a few missed ticks would invent data.
        self._series = SampleSeries(max_gap_s=max(1.0, 5.0 * self.period_s))
        self._pending: list[dict[str, Any]] = []
        self._latest: dict[str, Any] | None = None
        self._data_lock = threading.Lock()  # series, pending, latest, counters
        self._sample_lock = threading.Lock()  # one sample at a time, so timestamps stay ordered
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

        self.n_samples = 0
        self.n_errors = 0
        self.n_sink_errors = 0
        self.last_error: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("TelemetrySampler.start() called twice")
        self.sample_now()  # a sample right at start, so windows that begin now are covered
        self._thread = threading.Thread(target=self._run, name="telemetry-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, take a last sample, flush to the sink. Safe to call more than once."""
        if self._thread is None or self._stopped:
            return
        self._stopped = True
        self._stop_event.set()
        self._thread.join()
        self.sample_now()  # a sample right at stop, so windows that end now are covered
        self._flush()
        if self._owns_reader:
            self._reader.close()

    def __enter__(self) -> "TelemetrySampler":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopped

    def set_config(self, config_id: str | None) -> None:
        """Tag later samples with config_id; takes a sample at the switch while running."""
        with self._sample_lock:
            self._config_id = config_id
        if self.running:
            self.sample_now()

    # -- sampling ------------------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic() + self.period_s
        last_flush = time.monotonic()
        while not self._stop_event.wait(max(0.0, next_tick - time.monotonic())):
            self.sample_now()
            now = time.monotonic()
            next_tick += self.period_s
            if next_tick < now:
                # Fell behind (a slow NVML call, a suspended VM): skip ticks rather than burst.
                next_tick = now + self.period_s
            if now - last_flush >= self.flush_interval_s:
                self._flush()
                last_flush = now

    def sample_now(self) -> dict[str, Any]:
        """Take one sample now (the thread calls this each tick); never raises."""
        with self._sample_lock:
            try:
                sample = self._take_sample()
            except Exception as exc:  # noqa: BLE001 - e.g. a broken clock: count it and go on
                self._count_error(exc)
                return {}
        with self._data_lock:
            self._series.append(sample)
            self._pending.append(sample)
            self._latest = sample
            self.n_samples += 1
        return sample

    def _take_sample(self) -> dict[str, Any]:
        sample: dict[str, Any] = dict.fromkeys(SAMPLE_FIELDS)
        sample["t_unix"] = self._clock()
        sample["config_id"] = self._config_id
        if self.nvml_available:
            try:
                gpu = self._reader.read()
            except Exception as exc:  # noqa: BLE001 - this tick's GPU fields are None, nothing more
                self._count_error(exc)
            else:
                sample["gpu_index"] = self.gpu_index
                for name in GPU_SAMPLE_FIELDS:
                    sample[name] = gpu.get(name)
        try:
            with self._process.oneshot():
                sample["rss_bytes"] = self._process.memory_info().rss
                sample["cpu_pct"] = self._process.cpu_percent(None)
        except psutil.Error as exc:  # the watched process ended or cannot be read
            self._count_error(exc)
        return sample

    def _count_error(self, exc: BaseException) -> None:
        with self._data_lock:
            self.n_errors += 1
            self.last_error = one_line(exc)

    def _flush(self) -> None:
        with self._data_lock:
            batch, self._pending = self._pending, []
        if not batch or self._sink is None:
            return
        try:
            self._sink(batch)
        except Exception as exc:  # noqa: BLE001 - a failing sink must not stop the sampling
            with self._data_lock:
                self.n_sink_errors += 1
                self.last_error = f"sink: {one_line(exc)}"

    # -- queries -------------------------------------------------------------------------------

    def latest(self) -> dict[str, Any] | None:
        """The most recent sample (a copy), e.g. for a live power readout."""
        with self._data_lock:
            return dict(self._latest) if self._latest is not None else None

    def window(self, t0_unix: float, t1_unix: float) -> WindowStats:
        """Energy, power and peak memory over [t0_unix, t1_unix] (wall-clock seconds).

        While running, a window that ends after the latest sample triggers a sample now, so the
        end of a request that just finished is covered. GPU figures are None without NVML.
        """
        if self.running:
            with self._data_lock:
                last_t = self._series.t[-1] if len(self._series) else None
            if last_t is None or t1_unix > last_t:
                self.sample_now()
        with self._data_lock:
            return self._series.window(t0_unix, t1_unix)
