"""Exchanges between data-parallel ranks, kept to what selection needs.

Every rank must end up with the same pool (to train any selected example), the same features
(so that every rank computes the same selection) and nothing more. With zeroth-order features
only the SPSA coefficients [n, m] travel: the directions z are regenerated from the shared seed
on every rank, so a step exchanges n*m floats instead of n*d.

Works with any initialized torch.distributed process group (gloo on CPU, NCCL on GPU); without
one, every function is the identity.
"""
from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def gather_objects(local: list[T]) -> list[T]:
    """Concatenate every rank's list in rank order (picklable rows: token ids, source names)."""
    if not is_distributed():
        return list(local)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in part]


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows ([n_r, ...] -> [sum n_r, ...]) in rank order.

    Ranks may hold different row counts (the last pool of an epoch), so counts are exchanged
    first and rows padded to the largest count for the collective.
    """
    if not is_distributed():
        return local
    device = local.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    count = torch.tensor([local.shape[0]], device=device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(local.device)


def broadcast_object(obj: T, src: int = 0) -> T:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
