"""Summary statistics the reports print: medians with their spread, shares, bootstrap ratios.

Every figure a report prints comes from one of these, so the definitions live in one place:
percentiles use numpy's default linear interpolation; sd is the sample standard deviation
(ddof=1, None for fewer than two values); a bootstrap interval is the percentile interval of
the resampled statistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20240917  # fixed so the same runs always give the same intervals


def clean(values: Iterable) -> np.ndarray:
    """Values as floats with None/NaN/inf dropped (a figure that was not measured is not 0)."""
    out = []
    for value in values:
        if value is None or isinstance(value, str):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out.append(number)
    return np.asarray(out, dtype=float)


@dataclass(frozen=True)
class Summary:
    """A distribution over requests: the median is the headline, p10–p90 and sd its spread."""

    n: int
    median: float | None
    p10: float | None
    p90: float | None
    mean: float | None
    sd: float | None
    min: float | None
    max: float | None

    @property
    def empty(self) -> bool:
        return self.n == 0


EMPTY = Summary(0, None, None, None, None, None, None, None)


def summarize(values: Iterable) -> Summary:
    data = clean(values)
    if data.size == 0:
        return EMPTY
    p10, median, p90 = np.percentile(data, [10, 50, 90])
    return Summary(
        n=int(data.size),
        median=float(median),
        p10=float(p10),
        p90=float(p90),
        mean=float(data.mean()),
        sd=float(data.std(ddof=1)) if data.size > 1 else None,
        min=float(data.min()),
        max=float(data.max()),
    )


@dataclass(frozen=True)
class Share:
    """How many of n items had a property; pct is None when n is 0."""

    k: int
    n: int

    @property
    def pct(self) -> float | None:
        return 100.0 * self.k / self.n if self.n else None


def share(values: Iterable) -> Share:
    """Count true values among those measured (None is skipped, not counted as false)."""
    measured = [v for v in values if v is not None and not _is_nan(v)]
    return Share(k=sum(1 for v in measured if bool(v)), n=len(measured))


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


@dataclass(frozen=True)
class RatioCI:
    """ratio = stat(b) / stat(a) with a bootstrap percentile interval."""

    ratio: float | None
    low: float | None
    high: float | None
    n_a: int
    n_b: int
    level: float = 0.95
    resamples: int = BOOTSTRAP_RESAMPLES

    @property
    def significant(self) -> bool | None:
        """True when the interval excludes 1 (None when there is no interval)."""
        if self.low is None or self.high is None:
            return None
        return self.low > 1.0 or self.high < 1.0


def bootstrap_ratio(
    a: Sequence[float],
    b: Sequence[float],
    *,
    statistic: Callable[..., np.ndarray] = np.median,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> RatioCI:
    """Ratio of a statistic (default the median) of b over a, with a bootstrap CI.

    The two samples are resampled independently (requests in different runs are not paired
    draws), `resamples` times each, with a fixed seed so a report is reproducible.
    """
    xa, xb = clean(a), clean(b)
    if xa.size == 0 or xb.size == 0:
        return RatioCI(None, None, None, int(xa.size), int(xb.size), level, resamples)
    point_a, point_b = float(statistic(xa)), float(statistic(xb))
    ratio = point_b / point_a if point_a != 0 else None
    if xa.size < 2 or xb.size < 2 or ratio is None:
        return RatioCI(ratio, None, None, int(xa.size), int(xb.size), level, resamples)
    rng = np.random.default_rng(seed)
    stat_a = statistic(xa[rng.integers(0, xa.size, size=(resamples, xa.size))], axis=1)
    stat_b = statistic(xb[rng.integers(0, xb.size, size=(resamples, xb.size))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = stat_b / stat_a
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return RatioCI(ratio, None, None, int(xa.size), int(xb.size), level, resamples)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return RatioCI(ratio, float(low), float(high), int(xa.size), int(xb.size), level, resamples)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (both are to be maximised)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front
