"""Telemetry for a configuration split over several GPUs: one sampler per GPU, answering as one.

The worker of a split configuration (`bench profile --gpus … --split ID`) samples every GPU it
holds; each sampler writes its own rows (tagged with its NVML gpu_index) and a request's window
adds them up: energy and mean power are sums over the GPUs; the peak power is the sum of the
per-GPU peaks, an upper bound on the combined peak since the GPUs need not peak together.
"""

from __future__ import annotations

from typing import Any

from hwprobe.window import WindowStats


class MultiGpuSampler:
    """The TelemetrySampler interface the worker uses (start/stop/sample_now/window/nvml_*)."""

    def __init__(self, samplers: list[Any]):
        if not samplers:
            raise ValueError("MultiGpuSampler needs at least one sampler")
        self.samplers = samplers
        self.nvml_available = all(s.nvml_available for s in samplers)
        reasons = [f"GPU {s.gpu_index}: {s.nvml_reason}" for s in samplers if not s.nvml_available]
        self.nvml_reason = "; ".join(reasons) or None
        self.gpu_index = samplers[0].gpu_index

    def start(self) -> None:
        for sampler in self.samplers:
            sampler.start()

    def stop(self) -> None:
        for sampler in self.samplers:
            sampler.stop()

    def sample_now(self) -> None:
        for sampler in self.samplers:
            sampler.sample_now()

    def window(self, t0_unix: float, t1_unix: float) -> WindowStats:
        return combine_windows([s.window(t0_unix, t1_unix) for s in self.samplers])


def _sum(values: list) -> Any:
    """The sum, or None as soon as one GPU could not say (a partial sum would understate)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values)


def combine_windows(stats: list[WindowStats]) -> WindowStats:
    sources = {s.energy_source for s in stats}
    return WindowStats(
        n_samples=min(s.n_samples for s in stats),
        energy_j=_sum([s.energy_j for s in stats]),
        power_mean_w=_sum([s.power_mean_w for s in stats]),
        power_peak_w=_sum([s.power_peak_w for s in stats]),
        peak_mem_used_bytes=_sum([s.peak_mem_used_bytes for s in stats]),
        peak_proc_mem_bytes=_sum([s.peak_proc_mem_bytes for s in stats]),
        peak_rss_bytes=max((s.peak_rss_bytes for s in stats if s.peak_rss_bytes is not None), default=None),
        energy_source=sources.pop() if len(sources) == 1 else "mixed",
    )
