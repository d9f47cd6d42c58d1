"""``gradient_features``: the one path that turns pool batches into per-example features.

The public API and the trainer both come through here: one batch or pre-collated chunks,
chunked further by ``config.score_batch_size``, and with ``gather=True`` the features of the
global pool of a distributed run (rank order) on every rank. For zeroth-order features only the
SPSA coefficients ``[n, m]`` travel between ranks; every rank rebuilds ``c z`` from the shared
seed and step.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from colm import distributed

from .exact import exact_gradients
from .full import full_adam_features
from .hidden import final_hidden_features
from .replay import LastLayerReplay
from .state import scoring_mode
from .structure import model_device
from .targets import find_target_parameters
from .zeroth_order import zo_coefficients, zo_features_from_coefficients

Batch = Mapping[str, torch.Tensor]


def _chunks(batch: Batch, size: int | None):
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


def _score_chunk(model: nn.Module, batch: Batch, config, step: int, targets) -> torch.Tensor:
    """zo coefficients ``[n, m]``, or the features ``[n, d]`` of the other types, of one chunk."""
    if config.feature == "hidden":
        return final_hidden_features(model, batch)
    replay = LastLayerReplay(model)
    replay.capture(batch)
    try:
        if config.feature == "zo":
            return zo_coefficients(replay, None, config, step, targets=targets)  # [n, m]
        if config.feature == "exact":
            return exact_gradients(replay, targets)  # [n, d]
        raise ValueError(
            f"CoresetConfig.feature = {config.feature!r} is invalid: expected 'zo', 'exact' or 'hidden'"
        )
    finally:
        replay.release()


def _place(parts: list[torch.Tensor], placed: torch.Tensor, config, targets, device) -> torch.Tensor:
    """The scored rows ``parts`` (in order) at the True positions of ``placed`` ``[n_local]``,
    zeros elsewhere: ``[n_local, m]`` (zo coefficients) or ``[n_local, d]``."""
    placed = torch.as_tensor(placed, dtype=torch.bool).cpu()
    scored = torch.cat(parts, dim=0) if parts else None
    n_scored = 0 if scored is None else scored.shape[0]
    if n_scored != int(placed.sum()):
        raise ValueError(f"gradient_features: `placed` marks {int(placed.sum())} rows but the batches hold {n_scored}")
    if scored is not None:
        width, dtype, where = scored.shape[1], scored.dtype, scored.device
    else:  # this rank scored nothing: the width every rank agrees on, from the config and model
        width = config.zo_probes if config.feature == "zo" else (
            sum(p.numel() for p in targets.values()) if targets is not None else None)
        if width is None:
            raise ValueError("gradient_features: `placed` marks no row with feature='hidden'; score at least one")
        dtype, where = torch.float32, device
    out = torch.zeros((placed.numel(), width), dtype=dtype, device=where)
    if scored is not None:
        out[placed.to(where)] = scored
    return out


def gradient_features(
    model: nn.Module, batch: Batch | Sequence[Batch], config, step: int = 0, *, gather: bool = False,
    optimizer: Any = None, placed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example features ``[n, d]`` (float32, on the model's device) of a pool.

    Args:
        model: a transformers causal LM, optionally wrapped by peft.
        batch: ``input_ids [n, T]``, ``attention_mask [n, T]``, ``labels [n, T]`` (-100 where no
            loss is taken; not needed for ``"hidden"``); other keys are ignored. Or a sequence
            of such batches (e.g. a pool collated in chunks), scored in order.
        config: a ``CoresetConfig``; ``feature`` picks ``"zo"`` (SPSA, ``d`` = target numel),
            ``"exact"`` (per-example gradients, same ``d``) or ``"hidden"`` (``d`` = hidden size).
            ``score_batch_size``, when set, scores each batch in chunks of that many examples.
        step: optimizer step (selects the SPSA directions unless ``config.zo_fixed_z``).
        gather: in a distributed run, return the features of every rank's rows (rank order),
            the same on every rank; without a process group it changes nothing.
        optimizer: the training optimizer (torch Adam/AdamW); needed only by ``"full_adam"``
            (full-model per-example gradients in its Adam space, a lab tool: colm.features.full).
        placed: optional bool ``[n_local]``: the batches hold only the rows where it is True (in
            order); every other row of the result is zero (zero SPSA coefficients for "zo"), so
            the result keeps one row per pool row. Lets a caller skip rows a selection never
            reads (``CoresetSelector.rows_read``). Not supported with "full_adam".

    The model is scored in eval mode and left exactly as it was: parameters bit-identical, modes,
    ``requires_grad`` and ``.grad`` restored, hooks removed, also when an error is raised.
    """
    batches = [batch] if isinstance(batch, Mapping) else list(batch)
    if placed is not None and config.feature == "full_adam":
        raise ValueError("gradient_features: `placed` is not supported with feature='full_adam'")
    if config.feature == "full_adam":
        with scoring_mode(model):
            return full_adam_features(model, batches, config, optimizer, gather=gather)
    device = model_device(model)
    targets = None if config.feature == "hidden" else find_target_parameters(model, config.feature_modules)
    with scoring_mode(model), torch.no_grad():
        parts = [
            _score_chunk(model, chunk, config, step, targets)
            for b in batches for chunk in _chunks(b, config.score_batch_size)
        ]
    if placed is not None:
        local = _place(parts, placed, config, targets, device)  # [n_local, m] or [n_local, d]
    else:
        local = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)  # [n_local, m] or [n_local, d]
    if gather:
        local = distributed.gather_rows(local)  # [N, .]
    if config.feature == "zo":
        numel = sum(p.numel() for p in targets.values())
        return zo_features_from_coefficients(local, config, step, numel, device)  # [N, d]
    return local.to(device=device, dtype=torch.float32)
