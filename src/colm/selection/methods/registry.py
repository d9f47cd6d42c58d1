"""The registry of within-source methods: the one place a method is named.

Each entry says whether the method looks at gradient features, where its fill function lives,
and which weight rule turns its picks into ``Selection.weights`` and ``loss_weights``.
``CoresetConfig``'s allowed ``within_source`` values, its ``needs_features``, the CLI's choices
and the table of docs/method.md all come from here (a test checks the table).

Adding a method = one module with a ``fill`` function + one ``register(Method(...))`` line
(below, or in user code before the config is built).

This module imports no torch (``colm.config`` reads it, and ``import colm.config`` stays light):
a fill function is named by ``"module:function"`` and imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from colm.selection.methods.task import Pick, SourceTask

#: How a method's picks become weights (docs/method.md, "Filling a large source's share"):
#: "sample": an unweighted sample; each pick stands for ``n_q / b_q`` rows, loss weight 1.
#: "cluster": each pick stands for its cluster (``Pick.weights``: cluster sizes, summing to
#:     ``n_q``); loss weight 1, or the cluster size when ``CoresetConfig.weighted``.
#: "horvitz_thompson": ``Pick.weights`` are ``1 / pi``; scaled to sum to ``n_q`` as weights and
#:     to mean 1 within the source as loss weights, whatever ``weighted`` says.
#: "fitted": ``Pick.weights`` are loss weights the method fitted (e.g. NNLS); scaled the same way:
#:     to sum to ``n_q`` as weights and to mean 1 within the source as loss weights.
WeightRule = Literal["sample", "cluster", "horvitz_thompson", "fitted"]
WEIGHT_RULES: tuple[WeightRule, ...] = ("sample", "cluster", "horvitz_thompson", "fitted")

#: The docs' "loss weights" column for each rule.
LOSS_WEIGHT_DOCS: dict[str, str] = {
    "sample": "1",
    "cluster": "1 (cluster sizes with `weighted=True`)",
    "horvitz_thompson": "1/π, scaled to mean 1 per source",
    "fitted": "the fitted weights, scaled to mean 1 per source",
}

FillFunction = Callable[[Sequence["SourceTask"], Any], list["Pick"]]


@dataclass(frozen=True)
class Method:
    """One within-source method.

    Attributes:
        name: the ``CoresetConfig.within_source`` value.
        needs_features: whether it looks at gradient features (False: no scoring pass; its
            fill sees ``SourceTask.features = None``).
        fill: ``fill(tasks, config) -> picks``, one ``Pick`` per ``SourceTask``, or its
            ``"module:function"`` path. All of a step's choosing sources come in one call, so a
            method may batch them (facility location steps them together).
        weights: the weight rule (``WeightRule``).
        summary: what it picks, one line of the docs' table.
    """

    name: str
    needs_features: bool
    fill: FillFunction | str
    weights: WeightRule
    summary: str
    _resolved: list[FillFunction] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"Method.name must be a non-empty string, got {self.name!r}")
        if self.weights not in WEIGHT_RULES:
            raise ValueError(f"Method {self.name!r}: weights must be one of {WEIGHT_RULES}, got {self.weights!r}")
        if not (callable(self.fill) or (isinstance(self.fill, str) and ":" in self.fill)):
            raise ValueError(f"Method {self.name!r}: fill must be a callable or 'module:function', got {self.fill!r}")

    def fill_function(self) -> FillFunction:
        """The fill callable, imported on first use."""
        if not self._resolved:
            if callable(self.fill):
                self._resolved.append(self.fill)
            else:
                module, _, name = self.fill.partition(":")
                self._resolved.append(getattr(importlib.import_module(module), name))
        return self._resolved[0]


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry; ValueError if its name is taken."""
    if method.name in METHODS:
        raise ValueError(f"within_source method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; ValueError naming the known ones otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown within_source {name!r}; registered: {method_names()}") from None


def method_names() -> tuple[str, ...]:
    """Every registered name, in registration order."""
    return tuple(METHODS)


def feature_free_names() -> tuple[str, ...]:
    """The methods that look at no gradient feature (they need no scoring pass)."""
    return tuple(name for name, m in METHODS.items() if not m.needs_features)


def docs_table() -> str:
    """The markdown table of docs/method.md ("Filling a large source's share")."""
    lines = ["| method | picks | loss weights | looks at |", "|---|---|---|---|"]
    for m in METHODS.values():
        looks = "features" if m.needs_features else "nothing: no features, no scoring pass"
        lines.append(f'| `"{m.name}"` | {m.summary} | {LOSS_WEIGHT_DOCS[m.weights]} | {looks} |')
    return "\n".join(lines)


_HERE = "colm.selection.methods"

register(Method(
    "facility_location", True, f"{_HERE}.facility_location:fill", "cluster",
    "the paper: greedy medoids maximizing Σ_i max_{j∈S} sim(i, j) (l1 similarity by default)",
))
register(Method(
    "random", False, f"{_HERE}.random:fill", "sample",
    "`b_q` rows uniformly without replacement, seeded by (selection_seed, step, source)",
))
register(Method(
    "mean_match", True, f"{_HERE}.mean_match:fill", "sample",
    "the rows whose plain mean is closest to the source's pool mean: greedy forward selection, "
    "then best-improvement swaps",
))
register(Method(
    "cluster_sample", True, f"{_HERE}.cluster_sample:fill", "sample",
    "facility-location clusters as strata: each cluster's share of `b_q` ∝ its size, drawn at "
    "random inside it",
))
register(Method(
    "pps", True, f"{_HERE}.pps:fill", "horvitz_thompson",
    "sampling with probability ∝ feature norm (systematic πps sampling), Horvitz-Thompson weights",
))
register(Method(
    "balanced", True, f"{_HERE}.balanced:fill", "sample",
    "a random draw in which every row keeps the uniform inclusion probability `b_q / n_q`, "
    "balanced on the 4 leading principal components of the features (the cube method)",
))
register(Method(
    "nnls", True, f"{_HERE}.nnls:fill", "fitted",
    "mean matching's rows, each with a non-negative loss weight fitted so the weighted mean "
    "matches the source's pool mean (least squares on the simplex; the ceiling arms)",
))
