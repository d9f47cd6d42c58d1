"""The registry of feature kinds: the one place a kind of per-example feature is named.

Each entry names a ``CoresetConfig.feature`` value, where its extractor lives, and one line for
the docs. ``CoresetConfig``'s allowed ``feature`` values, the CLI's choices and the table of
docs/method.md come from here (tests check the table).

Adding a feature kind = one module with an extractor + one ``register(Feature(...))`` line (below,
or in user code before the config is built). An extractor is

    extract(model, batches, config, step, *, gather, optimizer) -> Tensor [N, d]

``batches``: the pool as a list of collated batches (``input_ids``, ``attention_mask``,
``labels``); the features are float32 on the model's device, of every rank's rows when
``gather`` (rank order), and the model is left exactly as it was (colm.features.pool has the
helpers that chunk, score in eval mode, place and gather). A kind that supports scoring only
some rows also takes ``placed=`` (see ``gradient_features``); it is passed only when given.

This module imports no torch (``colm.config`` reads it): an extractor is named by
``"module:function"`` and imported on first use.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Extractor = Callable[..., Any]


@dataclass(frozen=True)
class Feature:
    """One feature kind.

    Attributes:
        name: the ``CoresetConfig.feature`` value.
        extract: the extractor (see the module docstring), or its ``"module:function"`` path.
        summary: what it computes and costs, one line of the docs' table.
    """

    name: str
    extract: Extractor | str
    summary: str
    _resolved: list[Extractor] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"Feature.name must be a non-empty string, got {self.name!r}")
        if not (callable(self.extract) or (isinstance(self.extract, str) and ":" in self.extract)):
            raise ValueError(f"Feature {self.name!r}: extract must be a callable or 'module:function', "
                             f"got {self.extract!r}")

    def extractor(self) -> Extractor:
        """The extractor, imported on first use."""
        if not self._resolved:
            if callable(self.extract):
                self._resolved.append(self.extract)
            else:
                module, _, name = self.extract.partition(":")
                self._resolved.append(getattr(importlib.import_module(module), name))
        return self._resolved[0]


FEATURES: dict[str, Feature] = {}


def register(feature: Feature) -> Feature:
    """Add ``feature`` to the registry; ValueError if its name is taken."""
    if feature.name in FEATURES:
        raise ValueError(f"feature kind {feature.name!r} is already registered")
    FEATURES[feature.name] = feature
    return feature


def get_feature(name: str) -> Feature:
    """The registered kind ``name``; ValueError naming the known ones otherwise."""
    try:
        return FEATURES[name]
    except (KeyError, TypeError):
        raise ValueError(f"CoresetConfig.feature = {name!r} is invalid: expected one of {feature_names()}") from None


def feature_names() -> tuple[str, ...]:
    """Every registered name, in registration order."""
    return tuple(FEATURES)


def docs_table() -> str:
    """The markdown table of docs/method.md (step 3, the feature kinds)."""
    lines = ["| feature | what it computes |", "|---|---|"]
    lines += [f'| `"{f.name}"` | {f.summary} |' for f in FEATURES.values()]
    return "\n".join(lines)


_HERE = "colm.features"

register(Feature(
    "zo", f"{_HERE}.zeroth_order:zo_features",
    "the paper's zeroth-order (SPSA) estimate of the per-example gradients of the target "
    "parameters (default: the last layer's v_proj), from forward passes only (`zo_probes` directions)",
))
register(Feature(
    "exact", f"{_HERE}.exact:exact_features",
    "the exact per-example gradients of the same targets, by one backward through the last "
    "block; about the cost of `zo` with one probe",
))
register(Feature(
    "hidden", f"{_HERE}.hidden:hidden_features",
    "the last real token's final hidden state (the LM head's input): a cheap baseline, no gradient",
))
register(Feature(
    "full_adam", f"{_HERE}.full:full_adam_pool_features",
    "full-model per-example gradients in the optimizer's Adam space (torch.func; memory O(pool x "
    "parameters); a lab tool for small models, needs `adam_normalize=False`)",
))
