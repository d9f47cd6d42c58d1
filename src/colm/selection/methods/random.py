"""Uniform random fill: ``b`` of a source's ``n`` pool rows without replacement.

The stratified control every other method must beat: the coreset mean is an unbiased estimate
of the source's pool mean, and no gradient feature (no scoring pass) is needed. The random
methods draw from a ``torch.Generator`` the caller seeds with ``selection_generator(seed, step,
source)``, so every rank of a distributed run makes the same picks.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from colm.selection.methods.task import Pick, SourceTask

if TYPE_CHECKING:
    from colm.config import CoresetConfig


def selection_generator(seed: int, step: int, source: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, step, source)``, stable across processes."""
    # The key keeps the module's former name: changing it would change every draw.
    key = f"colm.within_source/{int(seed)}/{int(step)}/{int(source)}".encode()
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)
    return torch.Generator(device="cpu").manual_seed(value)


def random_subset(n: int, b: int, generator: torch.Generator) -> Tensor:
    """``b`` distinct positions of ``range(n)`` uniformly at random: LongTensor ``[b]`` (CPU)."""
    return torch.randperm(n, generator=generator)[:b]


def fill(tasks: Sequence[SourceTask], config: CoresetConfig) -> list[Pick]:
    """Registry fill (``within_source="random"``): ``random_subset`` per source."""
    return [Pick(random_subset(t.n, t.budget, t.generator)) for t in tasks]
