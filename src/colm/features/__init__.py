"""Per-example gradient features from any Hugging Face causal LM (docs/method.md, step 3).

``gradient_features`` is the entry point; the pieces are public for tests, the trainer and the
distributed exchange (ranks share only the SPSA coefficients and regenerate the directions).
The kinds of feature (``CoresetConfig.feature``) are named in ``registry.py``: a new kind is one
module with an extractor and one ``register`` line there.

Imports: anything but colm.integrations, colm.training, colm.compare and colm.cli (tests/test_layers.py checks it).
"""
from __future__ import annotations

import importlib
from typing import Any

# Imported on first use, so that colm.config can read colm.features.registry without torch.
_PUBLIC = {
    "gradient_features": ".api",
    "exact_gradients": ".exact",
    "final_hidden_features": ".hidden",
    "last_token_index": ".hidden",
    "per_example_loss": ".loss",
    "per_example_nll": ".loss",
    "LastLayerReplay": ".replay",
    "scoring_mode": ".state",
    "find_decoder_stack": ".structure",
    "find_target_parameters": ".targets",
    "direction_seed": ".zeroth_order",
    "zo_coefficients": ".zeroth_order",
    "zo_direction": ".zeroth_order",
    "zo_directions": ".zeroth_order",
    "zo_features_from_coefficients": ".zeroth_order",
}

__all__ = sorted(_PUBLIC, key=str.lower)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'colm.features' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
