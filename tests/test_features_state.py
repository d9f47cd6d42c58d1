"""The model is left exactly as found (also on error); missing targets are reported clearly."""
from __future__ import annotations

import pytest
import torch
from tiny_models import (
    one_thread,  # noqa: F401  (autouse: one thread)
    padded_batch,
    tiny_model,
)

from colm.config import CoresetConfig
from colm.features import find_decoder_stack, find_target_parameters, gradient_features


def snapshot(model):
    return (
        {n: p.detach().clone() for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def assert_unchanged(model, before) -> None:
    params, modes, flags = before
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), params[n]), n
        assert p.grad is None, n
        assert p.requires_grad == flags[n], n
    assert {n: m.training for n, m in model.named_modules()} == modes
    stack = find_decoder_stack(model)
    assert len(stack.layers) == model.config.num_hidden_layers
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


def _train_mode_model(arch: str, lora: bool):
    model = tiny_model(arch, lora)
    model.train()  # scoring must switch dropout off and then restore train mode
    if not lora:
        model.get_input_embeddings().weight.requires_grad_(False)  # a mixed requires_grad pattern
    return model


@pytest.mark.parametrize("feature", ["zo", "exact", "hidden"])
@pytest.mark.parametrize("arch,lora", [("llama", True), ("gpt2", False)])
def test_model_unchanged_after_features(feature: str, arch: str, lora: bool) -> None:
    model, batch = _train_mode_model(arch, lora), padded_batch()
    before = snapshot(model)
    first = gradient_features(model, batch, CoresetConfig(feature=feature, zo_probes=2))
    assert_unchanged(model, before)
    # eval mode inside: deterministic despite dropout in train mode
    again = gradient_features(model, batch, CoresetConfig(feature=feature, zo_probes=2))
    assert torch.equal(first, again)


@pytest.mark.parametrize("feature", ["zo", "exact"])
def test_model_unchanged_after_error_mid_replay(feature: str) -> None:
    model, batch = _train_mode_model("llama", True), padded_batch()
    before = snapshot(model)
    head = model.get_output_embeddings()

    def boom(module, args):
        raise RuntimeError("boom")

    handle = head.register_forward_pre_hook(boom)  # capture stops before the head: replay fails
    try:
        with pytest.raises(RuntimeError, match="boom"):
            gradient_features(model, batch, CoresetConfig(feature=feature))
    finally:
        handle.remove()
    assert_unchanged(model, before)


def test_missing_target_lists_candidates_and_leaves_model_unchanged() -> None:
    model, batch = _train_mode_model("phi", False), padded_batch()
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.dense\.weight"):
        find_target_parameters(model, ["no_such_module"])
    before = snapshot(model)
    with pytest.raises(ValueError, match="Candidates"):
        gradient_features(model, batch, CoresetConfig(target_modules=("nope",)))
    assert_unchanged(model, before)


def test_default_targets_per_architecture() -> None:
    expect = {
        "llama": "model.layers.1.self_attn.v_proj.weight",
        "gpt2": "transformer.h.1.attn.c_attn.weight",
        "gpt_neox": "gpt_neox.layers.1.attention.query_key_value.weight",
        "phi3": "model.layers.1.self_attn.qkv_proj.weight",
    }
    for arch, name in expect.items():
        assert list(find_target_parameters(tiny_model(arch))) == [name]
    lora = list(find_target_parameters(tiny_model("qwen2", lora=True)))
    assert lora == ["base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"]


def test_patterns_outside_last_layer_do_not_match() -> None:
    model = tiny_model("llama")
    assert list(find_target_parameters(model, ["v_proj.weight"])) == [
        "model.layers.1.self_attn.v_proj.weight"
    ]
