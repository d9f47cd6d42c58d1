"""The cheap baseline feature: each example's final hidden state at its last real token.

"Final" means after the final norm: the LM head's input. It is grabbed with a pre-hook on the LM
head, which then stops the forward, so the LM head never runs (on an FSDP2 model the forward
completes, with the head on one position per row: see colm/features/sharded.py).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .pool import score_pool
from .sharded import is_sharded
from .structure import StopForward, model_device, model_inputs, output_embeddings


def last_token_index(attention_mask: torch.Tensor | None, n: int, T: int) -> torch.Tensor:
    """Position of each row's last real token ``[n]`` (right or left padding)."""
    if attention_mask is None:
        return torch.full((n,), T - 1, dtype=torch.long)
    positions = torch.arange(T, device=attention_mask.device)  # [T]
    # highest position holding a real token; an all-padding row gives 0
    return (attention_mask.ne(0).long() * (positions + 1)).argmax(dim=1)  # [n]


def final_hidden_states(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``[n, T, hidden]``: the LM head's input at every position, from one no-grad forward with
    ``use_cache=False`` that stops there (``inputs`` already on the model's device)."""
    store: dict[str, torch.Tensor] = {}
    # FSDP2: a forward stopped by an exception would leave FSDP's root mid-forward, so on a
    # sharded model the forward runs to the end, the LM head on one position per row only
    complete = is_sharded(model)

    def grab(module: nn.Module, args: tuple):
        store["hidden"] = args[0]
        if not complete:
            raise StopForward
        return (args[0][:, :1],) + tuple(args[1:])  # [n, 1, h]: these logits are not used

    handle = output_embeddings(model).register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    except StopForward:
        pass
    finally:
        handle.remove()
    return store["hidden"]


def final_hidden_features(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``[n, hidden]`` float32: the final hidden state of each example's last real token."""
    inputs = model_inputs(batch, model_device(model))
    hidden = final_hidden_states(model, inputs)  # [n, T, h]
    n, T = inputs["input_ids"].shape
    index = last_token_index(inputs.get("attention_mask"), n, T).to(hidden.device)  # [n]
    return hidden[torch.arange(n, device=hidden.device), index].float()  # [n, h]


def hidden_features(model: nn.Module, batches, config, step: int = 0, *, gather: bool = False,
                    optimizer=None, placed: torch.Tensor | None = None) -> torch.Tensor:
    """``feature="hidden"`` (colm.features.registry): ``[N, hidden]`` float32 on the model's device."""
    device = model_device(model)
    local = score_pool(model, batches, config, lambda chunk: final_hidden_features(model, chunk), gather=gather,
                       placed=placed)  # no rows scored: no width to agree on
    return local.to(device=device, dtype=torch.float32)
