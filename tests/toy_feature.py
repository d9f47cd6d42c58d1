"""A toy feature kind for tests/test_feature_registry.py: each row's number of supervised tokens
and its length, as a 2-dim feature. One module + one registry entry is all a new kind needs."""
from __future__ import annotations

import torch

from colm.features.pool import score_pool
from colm.features.structure import model_device


def extract(model, batches, config, step, *, gather, optimizer=None) -> torch.Tensor:
    def score(chunk):
        supervised = (chunk["labels"] != -100).sum(dim=1)
        length = chunk["attention_mask"].sum(dim=1)
        return torch.stack([supervised, length], dim=1).float()

    return score_pool(model, batches, config, score, gather=gather).to(model_device(model))
