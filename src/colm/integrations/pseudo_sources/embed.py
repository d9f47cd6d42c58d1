"""What k-means clusters: one vector per training row, the model's final hidden state (the LM
head's input, after the final norm) averaged over the row's supervised positions.

"Supervised positions" are those whose next token is a label (``labels[:, 1:] != -100``): the
positions the training loss is taken at, and the trainer's own test of whether a row carries any
signal, so every row that can be trained gets a vector. The prompt still shapes those states
through attention, while the average describes what the row trains the model to produce. The
forward stops at the LM head's input, so the vocabulary projection (most of a tiny model's
compute) never runs.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from colm.columns import IGNORE_INDEX
from colm.features.hidden import final_hidden_states
from colm.features.state import scoring_mode
from colm.features.structure import model_device, model_inputs


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[n, T]`` bool: True where the next token is supervised (the last position never is)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)  # [n, T]
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def mean_supervised_hidden(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``[n, hidden]`` float32 on the CPU: each row's final hidden state, averaged over its
    supervised positions (zeros for a row without any).

    One no-grad forward in eval mode; the model's modes and gradients are left as they were.
    """
    if batch.get("labels") is None:
        raise ValueError("pseudo-sources embed rows by their supervised tokens: the batch needs `labels`")
    inputs = model_inputs(batch, model_device(model))
    with scoring_mode(model):
        hidden = final_hidden_states(model, inputs).float()  # [n, T, h]
    mask = supervised_positions(batch["labels"].to(hidden.device)).to(hidden.dtype)  # [n, T]
    sums = torch.einsum("nt,nth->nh", mask, hidden)  # [n, h]
    counts = mask.sum(dim=1, keepdim=True).clamp_min(1.0)  # [n, 1]
    return (sums / counts).cpu()
