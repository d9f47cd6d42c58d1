"""colm: mini-batch coresets for memory-efficient language-model training (CoLM, ICLR 2025).

Public names are imported lazily so that `import colm` stays light: the selector needs only
torch, while the trainer pulls in transformers.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "CoresetConfig": "colm.config",
    "pairwise_similarity": "colm.selection.similarity",
    "facility_location": "colm.selection.methods.facility_location",
    "cluster_weights": "colm.selection.methods.facility_location",
    "AdamNormalizer": "colm.selection.normalize",
    "CoresetSelector": "colm.selection.selector",
    "Selection": "colm.selection.selector",
    "per_example_loss": "colm.features",
    "gradient_features": "colm.features",
    "LastLayerReplay": "colm.features",
    "CoresetTrainer": "colm.integrations.trainer",
    "CoresetTrainerMixin": "colm.integrations.trainer",
    # needs the optional extra colm[trl]; importing it without TRL says how to install it
    "CoresetSFTTrainer": "colm.integrations.trl",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'colm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
