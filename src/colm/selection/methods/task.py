"""What a fill function is given (``SourceTask``) and what it returns (``Pick``).

The selector builds one ``SourceTask`` per large source that must choose (``0 < b_q < n_q``)
and turns each ``Pick`` into weights with the method's weight rule
(``colm.selection.methods.registry``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SourceTask:
    """One large source's share to fill.

    Attributes:
        n: ``n_q``, the source's pool rows.
        budget: ``b_q``, how many of them to pick (``1 <= b_q < n_q``).
        features: ``[n_q, h]`` float32 rows in the normalized, sparsified feature space
            (docs/method.md steps 4-5), on the features' device; None for a feature-free method.
        generator: CPU generator seeded by ``(selection seed, step, source)``: the only
            randomness a method may use, so every rank of a distributed run picks the same.
    """

    n: int
    budget: int
    features: Tensor | None
    generator: torch.Generator


@dataclass
class Pick:
    """A method's answer for one ``SourceTask``.

    Attributes:
        local: LongTensor ``[b_q]`` of distinct positions in ``range(n_q)`` (any device).
        weights: ``[b_q]`` what the weight rule needs (cluster sizes, or ``1 / pi``); None for
            an unweighted sample.
        objective: 0-d tensor added to ``stats["objective"]`` (facility location's F, mean
            matching's squared error); None adds nothing.
    """

    local: Tensor
    weights: Tensor | None = None
    objective: Tensor | None = None


def each_source(tasks: Sequence[SourceTask], pick: Callable[[SourceTask, Tensor], Pick]) -> list[Pick]:
    """The fill loop of a method that chooses each source on its own: ``pick(task, features)``
    per task, in order (``features`` present: the method is registered with needs_features)."""
    picks = []
    for t in tasks:
        if t.features is None:
            raise RuntimeError("this within-source method needs features; it is registered with needs_features=True")
        picks.append(pick(t, t.features))
    return picks


def weigh(rule: str, pick: Pick, n: int, b: int, weighted: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(weights, loss_weights)`` ``[b]`` of one source's picks by the method's weight rule
    (``registry.WeightRule``): how many pool rows each pick stands for, and its loss weight.
    ``weighted`` changes only the "cluster" rule: it is the one rule with weights that are a
    choice (cluster sizes), not part of the estimator (a sample's ``n/b``, Horvitz-Thompson)."""
    if rule == "sample":
        return torch.full((b,), n / b, device=device), torch.ones(b, dtype=torch.float32, device=device)
    if pick.weights is None:
        raise RuntimeError(f"weight rule {rule!r} needs Pick.weights")
    w = pick.weights.to(device)
    if rule == "cluster":  # cluster sizes, summing to n
        return w, w if weighted else torch.ones(b, dtype=torch.float32, device=device)
    if rule in ("horvitz_thompson", "fitted"):  # 1 / pi or fitted: sum n as weights, mean 1 as loss weights
        return w * (n / w.sum()), w * (b / w.sum())
    raise RuntimeError(f"unknown weight rule {rule!r}")
