"""``gradient_features``: the one entry point the trainer calls."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .exact import exact_gradients
from .hidden import final_hidden_features
from .replay import LastLayerReplay
from .state import scoring_mode
from .structure import model_device
from .targets import find_target_parameters
from .zeroth_order import zo_coefficients, zo_features_from_coefficients


def _chunks(batch: Mapping[str, torch.Tensor], size: int | None):
    n = batch["input_ids"].shape[0]
    if size is None or size >= n:
        yield batch
        return
    for start in range(0, n, size):
        yield {
            k: v[start:start + size]
            for k, v in batch.items()
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n
        }


def _features_one(model: nn.Module, batch, config, step: int) -> torch.Tensor:
    if config.feature == "hidden":
        return final_hidden_features(model, batch)
    replay = LastLayerReplay(model)
    replay.capture(batch)
    try:
        targets = find_target_parameters(model, config.target_modules)
        if config.feature == "zo":
            numel = sum(p.numel() for p in targets.values())
            c = zo_coefficients(replay, None, config, step, targets=targets)  # [n, m]
            return zo_features_from_coefficients(c, config, step, numel, c.device)
        if config.feature == "exact":
            return exact_gradients(replay, targets)
        raise ValueError(
            f"CoresetConfig.feature = {config.feature!r} is invalid: expected 'zo', 'exact' or 'hidden'"
        )
    finally:
        replay.release()


def gradient_features(
    model: nn.Module, batch: Mapping[str, torch.Tensor], config, step: int = 0
) -> torch.Tensor:
    """Per-example features ``[n, d]`` (float32, on the model's device) of a pool batch.

    Args:
        model: a transformers causal LM, optionally wrapped by peft.
        batch: ``input_ids [n, T]``, ``attention_mask [n, T]``, ``labels [n, T]`` (-100 where no
            loss is taken; not needed for ``"hidden"``); other keys are ignored.
        config: a ``CoresetConfig``; ``feature`` picks ``"zo"`` (SPSA, ``d`` = target numel),
            ``"exact"`` (per-example gradients, same ``d``) or ``"hidden"`` (``d`` = hidden size).
            ``score_batch_size``, when set, scores the batch in chunks of that many examples.
        step: optimizer step (selects the SPSA directions unless ``config.zo_fixed_z``).

    The model is scored in eval mode and left exactly as it was: parameters bit-identical, modes,
    ``requires_grad`` and ``.grad`` restored, hooks removed, also when an error is raised.
    """
    device = model_device(model)
    with scoring_mode(model):
        parts = [
            _features_one(model, chunk, config, step)
            for chunk in _chunks(batch, config.score_batch_size)
        ]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return out.to(device=device, dtype=torch.float32)
