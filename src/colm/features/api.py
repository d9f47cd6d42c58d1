"""``gradient_features``: the one path that turns pool batches into per-example features.

The public API and the trainer both come through here: one batch or pre-collated chunks, handed
to the extractor of ``config.feature`` (colm.features.registry), which chunks them further by
``config.score_batch_size`` and with ``gather=True`` returns the features of the global pool of
a distributed run (rank order) on every rank (colm.features.pool). For zeroth-order features only
the SPSA coefficients ``[n, m]`` travel between ranks; every rank rebuilds ``c z`` from the
shared seed and step.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .registry import get_feature

Batch = Mapping[str, torch.Tensor]


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
        config: a ``CoresetConfig``; ``feature`` picks the kind from colm.features.registry:
            ``"zo"`` (SPSA, ``d`` = target numel), ``"exact"`` (per-example gradients, same
            ``d``), ``"hidden"`` (``d`` = hidden size) or ``"full_adam"``.
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
    extract = get_feature(config.feature).extractor()
    # `placed` only when given: an extractor that never gets it need not take it
    extra = {} if placed is None else {"placed": placed}
    return extract(model, batches, config, step, gather=gather, optimizer=optimizer, **extra)
