"""Pad tokenized mixture examples into a batch, keeping each example's source."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from colm.data.loading import SOURCE
from colm.data.templating import IGNORE_INDEX


@dataclass
class MixtureCollator:
    """Right-pads input_ids / attention_mask / labels and passes `source` through as a list.

    `transformers.Trainer` moves only tensors to the device, so the `source` strings survive
    to the coreset selector; whoever calls the model must pop `source` first.

    Attributes:
        pad_token_id: id written into padded input positions (masked out by attention_mask,
            ignored by the loss through labels = -100).
        pad_to_multiple_of: round the padded length up to a multiple of this (tensor cores).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("cannot collate an empty list of examples")
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(features)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)  # [n, T]
        attention_mask = torch.zeros((n, width), dtype=torch.long)  # [n, T]
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)  # [n, T]
        for i, f in enumerate(features):
            length = len(f["input_ids"])
            input_ids[i, :length] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            attention_mask[i, :length] = 1
            labels[i, :length] = torch.as_tensor(f["labels"], dtype=torch.long)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
        }
        if SOURCE in features[0]:
            batch[SOURCE] = [f[SOURCE] for f in features]
        return batch
