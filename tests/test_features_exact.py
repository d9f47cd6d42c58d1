"""Exact per-example gradients through the last block equal whole-model autograd, per example."""
from __future__ import annotations

import pytest
import torch
from tiny_models import (
    ARCHS,
    one_thread,  # noqa: F401  (autouse: one thread)
    padded_batch,
    reference_gradients,
    tiny_model,
)

from colm.config import CoresetConfig
from colm.features import LastLayerReplay, exact_gradients, find_target_parameters, gradient_features

CASES = [(arch, lora) for arch in ARCHS for lora in (False, True)]


@pytest.mark.parametrize("arch,lora", CASES, ids=[f"{a}{'-lora' if l else ''}" for a, l in CASES])
def test_exact_equals_per_example_autograd(arch: str, lora: bool) -> None:
    model, batch = tiny_model(arch, lora), padded_batch()
    (name, param), = find_target_parameters(model).items()
    got = gradient_features(model, batch, CoresetConfig(feature="exact"))  # [n, d]
    want = reference_gradients(model, batch, param)  # [n, d]
    assert got.shape == want.shape and got.dtype == torch.float32
    rel = (got - want).norm() / want.norm()
    assert rel <= 1e-4, f"relative error {rel:.3g}"


def test_several_targets_and_bias_concatenate_in_order() -> None:
    model, batch = tiny_model("qwen2"), padded_batch()  # Qwen2's v_proj has a bias
    targets = find_target_parameters(model, [r"layers\.1\.self_attn\.v_proj\.(weight|bias)",
                                             r"layers\.1\.mlp\.down_proj\.weight"])
    assert len(targets) == 3
    replay = LastLayerReplay(model)
    replay.capture(batch)
    got = exact_gradients(replay, targets)
    want = torch.cat([reference_gradients(model, batch, p) for p in targets.values()], dim=1)
    assert ((got - want).norm() / want.norm()) <= 1e-4


def test_non_linear_target_uses_fallback() -> None:
    model, batch = tiny_model("llama"), padded_batch()
    targets = find_target_parameters(model, [r"layers\.1\.input_layernorm\.weight"])
    replay = LastLayerReplay(model)
    replay.capture(batch)
    got = exact_gradients(replay, targets)
    want = reference_gradients(model, batch, next(iter(targets.values())))
    assert ((got - want).norm() / want.norm()) <= 1e-4


@pytest.mark.parametrize("feature", ["zo", "exact", "hidden"])
def test_features_are_the_same_under_an_outer_no_grad(feature: str) -> None:
    # The trainer scores pools under torch.no_grad(); exact features must still take gradients.
    model, batch = tiny_model("llama", True), padded_batch()
    config = CoresetConfig(feature=feature, zo_probes=2)
    free = gradient_features(model, batch, config)
    with torch.no_grad():
        inside = gradient_features(model, batch, config)
    torch.testing.assert_close(inside, free, rtol=0, atol=0)
