"""What every feature extractor does around its own arithmetic: split the pool into chunks of
``config.score_batch_size``, score them in eval mode with no autograd graph (the model left
exactly as it was), replay the last block where the kind needs it, and gather the rows of a
distributed run."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from colm import distributed

from .replay import LastLayerReplay
from .state import scoring_mode
from .structure import model_device

Batch = Mapping[str, torch.Tensor]


def chunks(batch: Batch, size: int | None) -> Iterator[Batch]:
    """``batch`` in row chunks of at most ``size`` (None: whole)."""
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


def score_pool(model: nn.Module, batches: Sequence[Batch], config: Any, score: Callable[[Batch], torch.Tensor], *,
               gather: bool, placed: torch.Tensor | None = None, width: int | None = None) -> torch.Tensor:
    """``score(chunk)`` of every chunk, concatenated ``[n_local, .]``; with ``placed`` (bool
    ``[n_local]``, see ``gradient_features``) the scored rows at its True positions and zeros
    elsewhere (``width`` columns when this rank scored none); with ``gather``, every rank's rows
    ``[N, .]`` (rank order)."""
    with scoring_mode(model), torch.no_grad():
        parts = [score(chunk) for b in batches for chunk in chunks(b, config.score_batch_size)]
    if placed is not None:
        local = place(parts, placed, width, model_device(model), config.feature)
    else:
        local = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return distributed.gather_rows(local) if gather else local


def place(parts: list[torch.Tensor], placed: torch.Tensor, width: int | None, device: torch.device,
          feature: str) -> torch.Tensor:
    """The scored rows ``parts`` (in order) at the True positions of ``placed`` ``[n_local]``,
    zeros elsewhere: ``[n_local, width]``."""
    placed = torch.as_tensor(placed, dtype=torch.bool).cpu()
    scored = torch.cat(parts, dim=0) if parts else None
    n_scored = 0 if scored is None else scored.shape[0]
    if n_scored != int(placed.sum()):
        raise ValueError(f"gradient_features: `placed` marks {int(placed.sum())} rows but the batches hold {n_scored}")
    if scored is not None:
        width, dtype, where = scored.shape[1], scored.dtype, scored.device
    else:  # this rank scored nothing: the width every rank agrees on, from the config and model
        if width is None:
            raise ValueError(f"gradient_features: `placed` marks no row with feature={feature!r}; score at least one")
        dtype, where = torch.float32, device
    out = torch.zeros((placed.numel(), width), dtype=dtype, device=where)
    if scored is not None:
        out[placed.to(where)] = scored
    return out


def replayed(model: nn.Module, chunk: Batch, score: Callable[[LastLayerReplay], torch.Tensor]) -> torch.Tensor:
    """``score(replay)`` on the chunk's captured last block (released afterwards)."""
    replay = LastLayerReplay(model)
    replay.capture(chunk)
    try:
        return score(replay)
    finally:
        replay.release()
