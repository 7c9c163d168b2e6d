"""Timing figures from per-token timestamps, and the percentiles every summary uses.

All inputs are `time.perf_counter_ns()` stamps; all outputs carry their unit in the name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

NS_PER_MS = 1e6
NS_PER_S = 1e9


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0–100) with linear interpolation (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    frac = rank - lo
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * frac)


@dataclass(frozen=True)
class RequestTiming:
    ttft_ms: float
    latency_ms: float
    prefill_tps: float | None
    decode_tps: float | None
    itl_p50_ms: float | None
    itl_p90_ms: float | None
    itl_p99_ms: float | None
    token_times_ms: list[float]


def request_timing(t_start_ns: int, token_times_ns: Sequence[int], n_prompt_tokens: int,
                   t_done_ns: int) -> RequestTiming:
    """The request's figures from its start and the arrival of every generated token.

    TTFT runs from request start to the first generated token (prompt processing plus one
    sampling step). Decode TPS = (n_gen - 1) / (t_last - t_first): the first token is paid for by
    prefill, so only the gaps after it measure decoding. With no generated token (the model
    stopped at once) TTFT and latency are the time to that stop decision, `t_done_ns`.
    """
    times_ms = [(t - t_start_ns) / NS_PER_MS for t in token_times_ns]
    if times_ms:
        ttft_ms = times_ms[0]
        latency_ms = times_ms[-1]
    else:
        ttft_ms = latency_ms = (t_done_ns - t_start_ns) / NS_PER_MS
    prefill_tps = n_prompt_tokens / (ttft_ms / 1e3) if ttft_ms > 0 and n_prompt_tokens else None
    gaps_ms = [b - a for a, b in zip(times_ms, times_ms[1:])]
    decode_tps = None
    if len(times_ms) >= 2 and times_ms[-1] > times_ms[0]:
        decode_tps = (len(times_ms) - 1) / ((times_ms[-1] - times_ms[0]) / 1e3)
    return RequestTiming(
        ttft_ms=ttft_ms,
        latency_ms=latency_ms,
        prefill_tps=prefill_tps,
        decode_tps=decode_tps,
        itl_p50_ms=percentile(gaps_ms, 50),
        itl_p90_ms=percentile(gaps_ms, 90),
        itl_p99_ms=percentile(gaps_ms, 99),
        token_times_ms=times_ms,
    )


@dataclass(frozen=True)
class Spread:
    """Median with its p10–p90 range over n values."""

    n: int
    median: float | None
    p10: float | None
    p90: float | None


def spread(values: Sequence[float | None]) -> Spread:
    present = [v for v in values if v is not None]
    return Spread(len(present), percentile(present, 50), percentile(present, 10), percentile(present, 90))
