"""Find the pieces of a causal LM that the features need, without per-architecture code.

* The decoder layers are the ``nn.ModuleList`` whose length equals ``config.num_hidden_layers``
  (``n_layer`` on GPT-2 is aliased to it by transformers). This holds for Llama, Qwen2, Mistral,
  Phi, Phi-3, GPT-2 and GPT-NeoX, and through a peft ``PeftModel`` wrapper.
* The LM head is ``model.get_output_embeddings()`` (``lm_head``, ``embed_out``, ...); its input is
  the final hidden state, after the final norm.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class StopForward(Exception):
    """Raised from a hook to end a forward pass once what was needed has been captured."""


@dataclass(frozen=True)
class DecoderStack:
    """Where the decoder layers live inside a model."""

    path: str
    """Dotted name of the ``nn.ModuleList`` in ``model.named_modules()``."""
    parent: nn.Module
    """Module that owns the list (so it can be swapped temporarily)."""
    attr: str
    """Attribute name of the list on ``parent``."""
    layers: nn.ModuleList

    @property
    def last_index(self) -> int:
        return len(self.layers) - 1

    @property
    def last(self) -> nn.Module:
        return self.layers[self.last_index]

    @property
    def last_prefix(self) -> str:
        """Parameter-name prefix of the last layer, e.g. ``model.layers.3.``."""
        return f"{self.path}.{self.last_index}." if self.path else f"{self.last_index}."


def model_config(model: nn.Module):
    """The transformers config of ``model`` (also through peft wrappers)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no `config`: not a transformers model")
    return config


def num_layers(model: nn.Module) -> int:
    config = model_config(model)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot read the number of decoder layers from {type(config).__name__}")


def find_decoder_stack(model: nn.Module) -> DecoderStack:
    """Locate the decoder layers: the ``nn.ModuleList`` of length ``num_hidden_layers``.

    When several lists have that length (unusual), the one holding the most parameters wins,
    since the decoder layers dominate a causal LM's size.
    """
    n = num_layers(model)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n
    ]
    if not candidates:
        raise ValueError(
            f"no nn.ModuleList of length num_hidden_layers={n} found in {type(model).__name__}"
        )
    name, layers = max(
        candidates, key=lambda c: sum(p.numel() for p in c[1].parameters())
    )
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return DecoderStack(path=name, parent=parent, attr=attr, layers=layers)


def output_embeddings(model: nn.Module) -> nn.Module:
    """The LM head (its input is the final, normalized hidden state)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head)")
    return head


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_inputs(batch, device: torch.device) -> dict[str, torch.Tensor]:
    """The keys of ``batch`` the forward needs (others, e.g. ``labels``/``source``, are dropped)."""
    if "input_ids" not in batch:
        raise ValueError("batch must contain `input_ids`")
    keep = ("input_ids", "attention_mask", "position_ids")
    return {k: batch[k].to(device) for k in keep if k in batch and batch[k] is not None}
