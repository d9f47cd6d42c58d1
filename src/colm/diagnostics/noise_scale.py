"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al., "An Empirical
Model of Large-Batch Training", 2018), from gradients at two batch sizes.

G is the true (full-data) gradient, Sigma the covariance of one example's gradient. A mean
gradient over B examples has E|G_B|^2 = |G|^2 + tr(Sigma) / B, so two measured squared norms,
at sizes b_small < b_big, give unbiased estimates of both terms (`two_size_estimates`). Their
ratio is not unbiased and one step's estimate is very noisy, so `NoiseScaleEMA` averages the
numerator and the denominator separately over steps and divides the averages.

B_simple is the batch size around which doubling the batch stops halving the number of steps
a run needs: well below it a larger batch (accumulation, or a coreset imitating one) pays;
well above it more small steps pay.

Framework-free (torch only for the per-example helper); the Trainer callback is
`colm.integrations.noise_scale`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from colm.errors import ConfigError

#: B_simple / batch below this: "below" (a larger batch pays); above FAR_ABOVE: "far above".
NEAR_LOW = 0.5
FAR_ABOVE = 2.0


def two_size_estimates(b_small: float, sq_small: float, b_big: float, sq_big: float) -> tuple[float, float]:
    """Unbiased estimates of (|G|^2, tr(Sigma)) from the squared norms of two mean gradients.

    `sq_small` = |G_small|^2 of a mean over `b_small` examples, `sq_big` likewise over `b_big`
    (the small batch may be part of the big one: each expectation holds on its own). Either
    estimate may come out negative on one step; only averages over steps mean something.
    """
    if not (0 < b_small < b_big):
        raise ValueError(f"two_size_estimates needs 0 < b_small < b_big, got {b_small} and {b_big}")
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    trace = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


def effective_batch(shares: list[float], sizes: list[float]) -> float:
    """The batch size B with E|A|^2 = |G|^2 + tr(Sigma) / B for A = sum_k w_k G_k, a weighted
    sum (weights `shares`, summing to 1) of independent mean gradients over `sizes` examples
    (what gradient accumulation builds when micro-batches carry unequal loss weights)."""
    total = sum(shares)
    return 1.0 / sum((w / total) ** 2 / b for w, b in zip(shares, sizes))


def per_example_estimates(grads: torch.Tensor) -> tuple[float, float]:
    """Unbiased (|G|^2, tr(Sigma)) from n per-example gradients (rows of `grads`, [n, d]):
    tr(Sigma) is the sample variance summed over coordinates, |G|^2 = |mean|^2 - tr(Sigma)/n."""
    n = grads.shape[0]
    if n < 2:
        raise ValueError(f"per_example_estimates needs at least 2 examples, got {n}")
    g = grads.double()
    mean = g.mean(dim=0)
    trace = float(((g - mean) ** 2).sum() / (n - 1))
    return float(mean.square().sum()) - trace / n, trace


def pooled_b_simple(g2s: list[float], traces: list[float], groups: int = 5) -> float:
    """B_simple of many single-step estimates: the ratio of their means, each mean taken as the
    median of `groups` consecutive group means when there are at least 2 x `groups` estimates
    (median of means: a few steps with a gradient spike, common early in training, would
    otherwise decide the ratio); nan while either is not positive. Far less noisy than a short
    moving average when each step's estimate is noisy, as it is when the batch is well below
    B_simple."""
    if not g2s:
        return math.nan
    g2, trace = median_of_means(g2s, groups), median_of_means(traces, groups)
    return trace / g2 if g2 > 0 and trace > 0 else math.nan


def median_of_means(values: list[float], groups: int = 5) -> float:
    """The median of `groups` consecutive group means (the plain mean below 2 x `groups` values):
    a mean that a few spikes cannot decide."""
    if len(values) < 2 * groups:
        return sum(values) / len(values)
    base, extra = divmod(len(values), groups)
    means, start = [], 0
    for g in range(groups):
        size = base + (1 if g < extra else 0)
        means.append(sum(values[start:start + size]) / size)
        start += size
    means.sort()
    mid = len(means) // 2
    return means[mid] if len(means) % 2 else (means[mid - 1] + means[mid]) / 2


def regime(b_simple: float, batch: float) -> str:
    """'below', 'near' or 'far above': where `batch` stands relative to B_simple."""
    ratio = b_simple / batch
    if ratio > 1 / NEAR_LOW:
        return "below"
    if ratio < 1 / FAR_ABOVE:
        return "far above"
    return "near"


def regime_sentence(b_simple: float, batch: float) -> str:
    """One sentence saying what B_simple means for a run training on `batch` examples per step."""
    where = regime(b_simple, batch)
    if where == "below":
        return (f"The batch ({batch:g}) is well below the gradient noise scale (B_simple ~ {b_simple:.3g}): "
                "a larger effective batch (accumulation, or a coreset imitating one) should pay per step.")
    if where == "far above":
        return (f"The batch ({batch:g}) is far above the gradient noise scale (B_simple ~ {b_simple:.3g}): "
                "a larger batch buys little per step; more small steps pay at equal compute.")
    return (f"The batch ({batch:g}) is near the gradient noise scale (B_simple ~ {b_simple:.3g}): "
            "a larger batch helps per step, but less than proportionally.")


@dataclass
class NoiseScaleEMA:
    """Exponential moving averages of the |G|^2 and tr(Sigma) estimates (separately, not of
    their ratio), bias-corrected as Adam's moments are; `b_simple` divides them.

    `beta` weighs history: 0.9 averages roughly the last 10 measurements."""

    beta: float = 0.9
    g2: float = 0.0
    trace: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not (0.0 <= self.beta < 1.0):
            raise ConfigError("noise_scale_beta", f"a number in [0, 1), got {self.beta!r}")

    def update(self, g2: float, trace: float) -> None:
        if not (math.isfinite(g2) and math.isfinite(trace)):
            return  # a non-finite step (colm stops such runs; other loops may skip them) is not averaged
        self.g2 = self.beta * self.g2 + (1 - self.beta) * g2
        self.trace = self.beta * self.trace + (1 - self.beta) * trace
        self.count += 1

    def _corrected(self, value: float) -> float:
        return value / (1 - self.beta ** self.count)

    @property
    def g2_mean(self) -> float:
        return self._corrected(self.g2) if self.count else math.nan

    @property
    def trace_mean(self) -> float:
        return self._corrected(self.trace) if self.count else math.nan

    @property
    def b_simple(self) -> float:
        """tr(Sigma) / |G|^2 of the averages; nan before any measurement or while either average
        is not positive (the measurements' noise still swamps what they measure)."""
        if not self.count or self.g2 <= 0 or self.trace <= 0:
            return math.nan
        return self.trace / self.g2  # the bias corrections cancel

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "g2": self.g2, "trace": self.trace, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = float(state["beta"])
        self.g2 = float(state["g2"])
        self.trace = float(state["trace"])
        self.count = int(state["count"])
