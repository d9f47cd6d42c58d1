"""A LoRA model is a function of its seed: peft draws the adapters from the global torch RNG,
which is random at process start and, later in a `colm compare` process, whatever the previous
run left. Unseeded, the first run of every process differed between two identical commands and
the arms of one seed started from different adapters."""
from __future__ import annotations

import pytest
import torch

from colm.models.arguments import ModelArguments
from colm.models.loading import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_env")  # tests/conftest.py

LORA = ModelArguments(model_size="tiny", lora_r=4, lora_alpha=8.0, lora_target_modules=["q_proj", "v_proj"])


def adapters(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])


def test_the_adapters_depend_on_the_seed_only_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    first = adapters(load_model(LORA, seed=0)[0])
    torch.manual_seed(456)  # another process, or another run before this one
    state = torch.get_rng_state()
    again = adapters(load_model(LORA, seed=0)[0])
    assert torch.equal(torch.get_rng_state(), state)
    other = adapters(load_model(LORA, seed=1)[0])
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert bool((first != 0).any())  # lora_A is drawn (lora_B starts at zero)
