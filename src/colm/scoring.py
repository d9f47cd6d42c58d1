"""Per-example gradient features of a whole (possibly distributed) pool.

Each rank scores its own rows in chunks that fit in memory; the features of the global pool are
then assembled on every rank. For zeroth-order features only the SPSA coefficients travel
([n, m] floats); each rank regenerates the directions z from the shared seed and step.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from . import distributed
from .config import CoresetConfig
from .features import find_target_parameters, gradient_features, zo_coefficients, zo_features_from_coefficients


@torch.no_grad()
def pool_features(
    model: torch.nn.Module, batches: Sequence[dict[str, Any]], config: CoresetConfig, step: int
) -> torch.Tensor:
    """Features of every example of the global pool, in rank order: [N, d] on the model's device."""
    if config.feature == "zo":
        coeffs = torch.cat([zo_coefficients(model, b, config, step) for b in batches])  # [n_local, m]
        coeffs = distributed.gather_rows(coeffs)  # [N, m]
        targets = find_target_parameters(model, config.target_modules)
        numel = sum(p.numel() for p in targets.values())
        return zo_features_from_coefficients(coeffs, config, step, numel)  # [N, d]
    local = torch.cat([gradient_features(model, b, config, step) for b in batches])  # [n_local, d]
    return distributed.gather_rows(local)
