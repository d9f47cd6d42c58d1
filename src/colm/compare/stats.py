"""Mean +- sd over seeds and paired differences with 95% Student-t intervals.

Arms of one seed share the initialisation and data order, so arm - baseline is compared seed by
seed (a paired interval): the noise of the seed cancels. The t quantile is computed here (the
t density integrated by Simpson's rule, then bisection) so the library needs no scipy.
"""
from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class IntervalError(ValueError):
    """An interval asked of fewer than two paired seeds."""


def _t_cdf(x: float, df: int, intervals: int = 4000) -> float:
    """P(T <= x) for x >= 0 (Simpson's rule on the density from 0 to x)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    h = x / intervals
    f = lambda t: c * (1 + t * t / df) ** (-(df + 1) / 2)  # noqa: E731
    s = f(0) + f(x) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, intervals))
    return 0.5 + s * h / 3


@functools.cache
def t_quantile(p: float, df: int) -> float:
    """The p-quantile (0.5 < p < 1) of Student's t with df >= 1 degrees of freedom."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Paired:
    """arm - baseline over the seeds both have: mean, sd, 95% t interval [lo, hi], n seeds."""

    mean: float
    sd: float
    lo: float
    hi: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "sd": self.sd, "lo": self.lo, "hi": self.hi, "n": self.n}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample sd); sd is nan for a single value."""
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def paired_difference(arm: Mapping[int, float], base: Mapping[int, float], level: float = 0.95) -> Paired:
    """Seed-paired arm - base ({seed: value} each) with a `level` t interval.

    Raises IntervalError with fewer than 2 common seeds ("the interval needs >= 2 seeds").
    """
    seeds = sorted(set(arm) & set(base))
    if len(seeds) < 2:
        raise IntervalError(f"the interval needs >= 2 seeds; {len(seeds)} paired seed(s) {seeds}")
    diffs = [arm[s] - base[s] for s in seeds]
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = t_quantile(0.5 + level / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return Paired(mean, sd, mean - half, mean + half, len(diffs))


def fraction_of_gap(arm: float, low: float, high: float) -> float:
    """Where `arm` lies from `low` (0) to `high` (1), e.g. from random b's loss to random 2b's."""
    return (low - arm) / (low - high) if low != high else math.nan
