"""Per-example gradient features from any Hugging Face causal LM (docs/method.md, step 3).

``gradient_features`` is the entry point; the pieces are public for tests, the trainer and the
distributed exchange (ranks share only the SPSA coefficients and regenerate the directions).

Imports: anything but colm.integrations, colm.training, colm.compare and colm.cli (tests/test_layers.py checks it).
"""
from __future__ import annotations

from .api import gradient_features
from .exact import exact_gradients
from .hidden import final_hidden_features, last_token_index
from .loss import per_example_loss, per_example_nll
from .replay import LastLayerReplay
from .state import scoring_mode
from .structure import find_decoder_stack
from .targets import find_target_parameters
from .zeroth_order import (
    direction_seed,
    zo_coefficients,
    zo_direction,
    zo_directions,
    zo_features_from_coefficients,
)

__all__ = [
    "LastLayerReplay",
    "direction_seed",
    "exact_gradients",
    "final_hidden_features",
    "find_decoder_stack",
    "find_target_parameters",
    "gradient_features",
    "last_token_index",
    "per_example_loss",
    "per_example_nll",
    "scoring_mode",
    "zo_coefficients",
    "zo_direction",
    "zo_directions",
    "zo_features_from_coefficients",
]
