"""Hidden-state features: the final (normed) hidden state of each example's last real token."""
from __future__ import annotations

import pytest
import torch
from tiny_models import (
    ARCHS,
    one_thread,  # noqa: F401  (autouse: one thread)
    padded_batch,
    tiny_model,
)

from colm.config import CoresetConfig
from colm.features import gradient_features, last_token_index


@pytest.mark.parametrize("arch,lora", [(a, False) for a in ARCHS] + [("llama", True)])
def test_hidden_matches_output_hidden_states(arch: str, lora: bool) -> None:
    model, batch = tiny_model(arch, lora), padded_batch()
    got = gradient_features(model, batch, CoresetConfig(feature="hidden"))
    with torch.no_grad():
        states = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states[-1]  # [n, T, h]
    last = batch["attention_mask"].sum(dim=1) - 1  # right padding
    want = states[torch.arange(states.shape[0]), last]
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).abs().max() <= 1e-5


def test_last_token_index_right_and_left_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(mask, 3, 4).tolist() == [2, 3, 3]
    assert last_token_index(None, 2, 5).tolist() == [4, 4]
