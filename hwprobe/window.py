"""Statistics over a time window of telemetry samples: energy, power, peak memory.

Samples are kept as compact float columns (NaN = not measured) so hours of 20 Hz sampling stay a
few megabytes. Values at the window's edges are interpolated linearly between the neighbouring
samples, so a window shorter than the sampling period still gets a sensible figure.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

_NAN = float("nan")
_COLUMNS = ("power_w", "energy_mj", "mem_used_bytes", "proc_mem_bytes", "rss_bytes")


@dataclass
class WindowStats:
    n_samples: int  # samples taken inside [t0, t1]
    energy_j: float | None
    power_mean_w: float | None  # energy_j / window length
    power_peak_w: float | None
    peak_mem_used_bytes: int | None  # device-wide
    peak_proc_mem_bytes: int | None  # this process's share
    peak_rss_bytes: int | None
    energy_source: str | None  # "counter" (NVML total-energy counter) | "integrated_power" | None


class SampleSeries:
    """The columns of a sample stream that window statistics need, in time order."""

    def __init__(self, max_gap_s: float = 1.0) -> None:
        # Measured neighbours further apart than this are too far to interpolate between.
        self.max_gap_s = max_gap_s
        self.t = array("d")
        self.columns = {name: array("d") for name in _COLUMNS}

    def __len__(self) -> int:
        return len(self.t)

    def append(self, sample: dict[str, Any]) -> None:
        t = sample["t_unix"]
        if self.t and t < self.t[-1]:
            # The wall clock stepped back (NTP): keep the series ordered rather than corrupt
            # every later bisect; this one sample is still written to the sink.
            return
        self.t.append(t)
        for name, column in self.columns.items():
            value = sample.get(name)
            column.append(_NAN if value is None else float(value))

    def value_at(self, name: str, t: float) -> float | None:
        """The column's value at time t: a sample at t, or linear between the nearest measured
        neighbours on both sides; None where either is missing or they are more than max_gap_s
        apart (a gap that long would be invented data)."""
        ts, vs = self.t, self.columns[name]
        i = bisect_right(ts, t)
        before = None
        j = i - 1
        while j >= 0 and t - ts[j] <= self.max_gap_s:
            if not math.isnan(vs[j]):
                before = j
                break
            j -= 1
        if before is not None and ts[before] == t:
            return vs[before]
        after = None
        k = i
        while k < len(ts) and ts[k] - t <= self.max_gap_s:
            if not math.isnan(vs[k]):
                after = k
                break
            k += 1
        if before is None or after is None:
            return None
        t_a, t_b = ts[before], ts[after]
        if t_b - t_a > self.max_gap_s:
            return None
        if t_b == t_a:
            return vs[after]
        return vs[before] + (vs[after] - vs[before]) * (t - t_a) / (t_b - t_a)

    def counter_at(self, t: float) -> float | None:
        """The energy counter (mJ) at time t, placed by when the counter changed.

        NVML refreshes the energy counter only every ~100 ms (seen on H200, driver 580), so a
        20 Hz sampler sees each value twice; interpolating between those plateaus would misplace
        up to 100 ms of energy at each window edge. Instead each new value is placed midway
        between the last sample that showed the old value and the first that showed the new one
        (its update time, to within half a sample period) and the counter is interpolated between
        these change points. Past the newest change point (a request that ended a moment ago) it
        is extended by the measured power; without change points nearby, plain interpolation.
        """
        ts, counter = self.t, self.columns["energy_mj"]
        lo = max(bisect_left(ts, t - self.max_gap_s) - 1, 0)
        hi = bisect_right(ts, t + self.max_gap_s)
        points = [(ts[i], counter[i]) for i in range(lo, hi) if not math.isnan(counter[i])]
        if not points or not points[0][0] <= t <= points[-1][0]:
            return None  # outside what was sampled: no extrapolation into the unknown
        changes = [((ta + tb) / 2.0, cb) for (ta, ca), (tb, cb) in zip(points, points[1:]) if cb != ca]
        i = bisect_right([u for u, _ in changes], t)
        before = changes[i - 1] if i > 0 else None
        after = changes[i] if i < len(changes) else None
        if before and after and after[0] - before[0] <= self.max_gap_s:
            (ua, ca), (ub, cb) = before, after
            return ca + (cb - ca) * (t - ua) / (ub - ua)
        if before and t - before[0] <= self.max_gap_s:
            power_w = self._mean_power(before[0], t)
            if power_w is not None:
                return before[1] + power_w * (t - before[0]) * 1000.0
        if after and after[0] - t <= self.max_gap_s:
            power_w = self._mean_power(t, after[0])
            if power_w is not None:
                return after[1] - power_w * (after[0] - t) * 1000.0
        return self.value_at("energy_mj", t)

    def _counter_rises(self, t0: float, t1: float) -> bool:
        """No step down in the counter readings that counter_at may have used for [t0, t1]."""
        ts, counter = self.t, self.columns["energy_mj"]
        lo = max(bisect_left(ts, t0 - self.max_gap_s) - 1, 0)
        hi = bisect_right(ts, t1 + self.max_gap_s)
        values = [counter[i] for i in range(lo, hi) if not math.isnan(counter[i])]
        return all(b >= a for a, b in zip(values, values[1:]))

    def _mean_power(self, ta: float, tb: float) -> float | None:
        ends = [p for p in (self.value_at("power_w", ta), self.value_at("power_w", tb)) if p is not None]
        return sum(ends) / len(ends) if ends else None

    def _inside(self, name: str, lo: int, hi: int) -> list[float]:
        column = self.columns[name]
        return [column[i] for i in range(lo, hi) if not math.isnan(column[i])]

    def _peak(self, name: str, t0: float, t1: float, lo: int, hi: int) -> int | None:
        values = self._inside(name, lo, hi)
        if not values:
            # No sample inside a short window: the neighbours on each side bound it.
            values = [v for v in (self._nearest(name, lo - 1, -1, t0), self._nearest(name, hi, 1, t1)) if v is not None]
        return int(max(values)) if values else None

    def _nearest(self, name: str, start: int, step: int, t: float) -> float | None:
        ts, vs = self.t, self.columns[name]
        i = start
        while 0 <= i < len(ts) and abs(ts[i] - t) <= self.max_gap_s:
            if not math.isnan(vs[i]):
                return vs[i]
            i += step
        return None

    def window(self, t0: float, t1: float) -> WindowStats:
        if t1 < t0:
            raise ValueError(f"window ends before it starts: t0={t0} > t1={t1}")
        lo = bisect_left(self.t, t0)
        hi = bisect_right(self.t, t1)
        duration_s = t1 - t0

        energy_j, source = None, None
        e0, e1 = self.counter_at(t0), self.counter_at(t1)
        # A counter that went backwards (driver reload) cannot be trusted over this window.
        if e0 is not None and e1 is not None and self._counter_rises(t0, t1):
            energy_j, source = (e1 - e0) / 1000.0, "counter"

        p0, p1 = self.value_at("power_w", t0), self.value_at("power_w", t1)
        if energy_j is None and p0 is not None and p1 is not None:
            ts, power = self.t, self.columns["power_w"]
            points = [(t0, p0)]
            points += [(ts[i], power[i]) for i in range(lo, hi) if t0 < ts[i] < t1 and not math.isnan(power[i])]
            points.append((t1, p1))
            energy_j = sum((tb - ta) * (pa + pb) / 2.0 for (ta, pa), (tb, pb) in zip(points, points[1:]))
            source = "integrated_power"

        if energy_j is not None and duration_s > 0:
            power_mean_w = energy_j / duration_s
        elif duration_s == 0 and p0 is not None:
            power_mean_w = p0
        else:
            power_mean_w = None

        peaks = self._inside("power_w", lo, hi) + [p for p in (p0, p1) if p is not None]
        return WindowStats(
            n_samples=hi - lo,
            energy_j=energy_j,
            power_mean_w=power_mean_w,
            power_peak_w=max(peaks) if peaks else None,
            peak_mem_used_bytes=self._peak("mem_used_bytes", t0, t1, lo, hi),
            peak_proc_mem_bytes=self._peak("proc_mem_bytes", t0, t1, lo, hi),
            peak_rss_bytes=self._peak("rss_bytes", t0, t1, lo, hi),
            energy_source=source,
        )
