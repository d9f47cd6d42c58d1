"""Which parameters the gradient features are taken over.

Default (docs/method.md, step 3): the value projection of the LAST decoder layer, or its LoRA B matrix
when a peft LoRA adapter wraps it (the part being trained).

The value projection is found by module name inside the last layer, generically:

* a separate value projection: a module path segment ``v_proj`` (Llama, Qwen2, Mistral, Phi,
  Zephyr...), ``value`` (BERT-style), ``v`` / ``wv`` / ``v_linear``;
* otherwise a fused query/key/value projection: ``c_attn`` (GPT-2), ``query_key_value``
  (GPT-NeoX, Falcon), ``qkv_proj`` (Phi-3), ``Wqkv`` / ``qkv`` / ``W_pack``. The value block
  cannot be isolated as a parameter, so the **whole fused matrix** is the target: its gradient
  contains the value block's, and the extra query/key coordinates are simply more coordinates
  (the selector's top-k sparsification ranks them like any other). Pass ``patterns`` to choose
  differently.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from .structure import find_decoder_stack

_VALUE = re.compile(r"(^|\.)(v_proj|value|v|wv|v_linear)(\.|$)")
_FUSED = re.compile(r"(^|\.)(c_attn|query_key_value|qkv_proj|Wqkv|qkv|W_pack)(\.|$)")
_LORA_B = re.compile(r"(^|\.)lora_B(\.|$)")


def _active_adapters(model: nn.Module) -> set[str] | None:
    active = getattr(model, "active_adapters", None)
    try:
        active = active() if callable(active) else active
    except Exception:  # not a peft model, or no adapter loaded
        return None
    if isinstance(active, str):
        return {active}
    if isinstance(active, (list, tuple, set)):
        return set(active)
    return None


def _pick(named: list[tuple[str, nn.Parameter]], module_re: re.Pattern, model: nn.Module):
    """Parameters under the first module matching ``module_re``: its LoRA B (active adapter)
    when present, else its ``weight``."""
    hits = [(n, p) for n, p in named if module_re.search(n.rsplit(".", 1)[0])]
    if not hits:
        return {}
    lora = [(n, p) for n, p in hits if _LORA_B.search(n)]
    if lora:
        active = _active_adapters(model)
        if active:
            chosen = [(n, p) for n, p in lora if any(f"lora_B.{a}." in n for a in active)]
            lora = chosen or lora
        return dict(lora)
    weights = [(n, p) for n, p in hits if n.endswith(".weight") and ".lora_" not in n]
    return dict(weights[:1])


def find_target_parameters(
    model: nn.Module, patterns: Sequence[str] | str | None = None
) -> dict[str, nn.Parameter]:
    """The target parameters, keyed by their name in ``model.named_parameters()``, in model order.

    Args:
        model: a transformers causal LM, possibly wrapped by peft.
        patterns: regular expressions (``re.search``) over full parameter names, restricted to
            the parameters of the last decoder layer (only those can be replayed). ``None``: the
            last layer's value projection (its ``lora_B`` under LoRA), see the module docstring.

    Raises:
        ValueError: nothing matches; the message lists the last layer's parameter names.
    """
    stack = find_decoder_stack(model)
    prefix = stack.last_prefix
    named = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix)]
    if isinstance(patterns, str):
        patterns = (patterns,)
    if patterns:
        compiled = [re.compile(p) for p in patterns]
        found = {n: p for n, p in named if any(c.search(n) for c in compiled)}
        what = f"patterns {list(patterns)}"
    else:
        found = _pick(named, _VALUE, model) or _pick(named, _FUSED, model)
        what = "the default value projection (v_proj / value / c_attn / query_key_value / qkv_proj)"
    if not found:
        candidates = "\n  ".join(f"{n} {tuple(p.shape)}" for n, p in named)
        raise ValueError(
            f"no parameter of the last decoder layer matches {what}. Candidates "
            f"(set CoresetConfig.feature_modules to regexes over these names):\n  {candidates}"
        )
    return found
