"""Zeroth-order (SPSA) features: coefficients match autograd directional derivatives; directions
are fresh per step unless fixed; features are Σ_j c_ij z_j / m."""
from __future__ import annotations

import pytest
import torch
from tiny_models import (
    one_thread,  # noqa: F401  (autouse: one thread)
    padded_batch,
    reference_gradients,
    tiny_model,
)

from colm.config import CoresetConfig
from colm.features import (
    LastLayerReplay,
    find_target_parameters,
    gradient_features,
    zo_coefficients,
    zo_direction,
    zo_directions,
    zo_features_from_coefficients,
)


@pytest.mark.parametrize("arch,lora", [("llama", False), ("llama", True), ("gpt2", False),
                                       ("gpt_neox", True), ("phi", False)])
def test_coefficients_match_directional_derivative(arch: str, lora: bool) -> None:
    model, batch = tiny_model(arch, lora), padded_batch()
    config = CoresetConfig(zo_eps=1e-3, zo_probes=3, selection_seed=7)
    (name, param), = find_target_parameters(model).items()
    c = zo_coefficients(model, batch, config, step=5)  # [n, m]
    grads = reference_gradients(model, batch, param)  # [n, d]
    z = zo_directions(config, 5, param.numel())  # [m, d], the very directions the code used
    expected = grads @ z.T  # [n, m]
    rel = (c - expected).norm() / expected.norm()
    assert rel <= 0.05, f"relative error {rel:.3g}"


def test_directions_fresh_per_step_fixed_when_asked_and_reproducible() -> None:
    fresh = CoresetConfig(selection_seed=3)
    fixed = CoresetConfig(selection_seed=3, zo_fixed_z=True)
    assert not torch.equal(zo_direction(fresh, 0, 0, 100), zo_direction(fresh, 1, 0, 100))
    assert not torch.equal(zo_direction(fresh, 0, 0, 100), zo_direction(fresh, 0, 1, 100))
    assert torch.equal(zo_direction(fresh, 4, 2, 100), zo_direction(fresh, 4, 2, 100))
    assert torch.equal(zo_direction(fixed, 0, 0, 100), zo_direction(fixed, 9, 0, 100))
    assert not torch.equal(zo_direction(fresh, 0, 0, 100), zo_direction(CoresetConfig(selection_seed=4), 0, 0, 100))


def test_features_fresh_vs_fixed_across_steps() -> None:
    model, batch = tiny_model("qwen2"), padded_batch()
    fresh = CoresetConfig(feature="zo", zo_probes=1, selection_seed=1)
    fixed = CoresetConfig(feature="zo", zo_probes=1, selection_seed=1, zo_fixed_z=True)
    f0, f1 = (gradient_features(model, batch, fresh, step=s) for s in (0, 1))
    assert not torch.allclose(f0, f1)
    g0, g1 = (gradient_features(model, batch, fixed, step=s) for s in (0, 1))
    assert torch.equal(g0, g1)
    # fixed z, m = 1: every feature is a multiple of the same vector (the reference's rank-1 flaw)
    assert torch.linalg.matrix_rank(g0).item() == 1


def test_features_equal_sum_of_coefficients_times_directions() -> None:
    model, batch = tiny_model("mistral", lora=True), padded_batch()
    config = CoresetConfig(feature="zo", zo_probes=4, selection_seed=2)
    targets = find_target_parameters(model)
    d = sum(p.numel() for p in targets.values())
    features = gradient_features(model, batch, config, step=3)
    replay = LastLayerReplay(model)
    c = zo_coefficients(replay, batch, config, step=3)  # [n, m]
    z = zo_directions(config, 3, d)  # [m, d]
    assert features.shape == (batch["input_ids"].shape[0], d) and features.dtype == torch.float32
    assert torch.allclose(features, c @ z / config.zo_probes, atol=1e-6)
    assert torch.allclose(zo_features_from_coefficients(c, config, 3, d), features, atol=1e-6)


def test_chunked_scoring_matches_whole_batch() -> None:
    model, batch = tiny_model("llama"), padded_batch(n=5)
    whole = gradient_features(model, batch, CoresetConfig(zo_probes=2))
    chunked = gradient_features(model, batch, CoresetConfig(zo_probes=2, score_batch_size=2))
    assert torch.allclose(whole, chunked, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_coefficients_match_the_fp32_directional_derivative(dtype) -> None:
    # In bf16 the perturbed weight theta + eps z is rounded back to bf16: at |w| ~ 0.2 and
    # eps = 1e-3 that is off by tens of percent, and the loss difference drowns in bf16 noise.
    # The replay must perturb and evaluate the target in float32.
    model = tiny_model("llama", seed=3)
    with torch.no_grad():  # weights of a realistic size, so bf16 rounding bites
        for p in model.parameters():
            p.mul_(4.0)
    half = model.to(dtype)
    batch = padded_batch(n=6, T=16, seed=2)
    config = CoresetConfig(zo_eps=1e-3, zo_probes=4, selection_seed=11)
    (name, param), = find_target_parameters(half).items()
    c = zo_coefficients(half, batch, config, step=2)  # [n, m]
    reference = tiny_model("llama", seed=3)
    with torch.no_grad():  # the same (rounded) weights, in float32
        for p_ref, p_half in zip(reference.parameters(), half.parameters()):
            p_ref.copy_(p_half.float())
    grads = reference_gradients(reference, batch, dict(reference.named_parameters())[name])  # [n, d]
    expected = grads @ zo_directions(config, 2, param.numel()).T  # [n, m]
    assert c.dtype == torch.float32
    assert bool((torch.sign(c) == torch.sign(expected)).all())
    # the layers before the last still run in half precision (that is the data being scored),
    # so against the all-fp32 model the match is to within that rounding ...
    rel = (c - expected).norm() / expected.norm()
    assert rel <= 0.05, f"relative error {rel:.3g}"
    # ... and against the float32 derivative of what the replay evaluates (the last layer and
    # head on the captured half-precision activations) every coefficient is within 5%
    replay = LastLayerReplay(half)
    replay.capture(batch)
    from colm.features import exact_gradients

    exact = exact_gradients(replay, {name: param}) @ zo_directions(config, 2, param.numel()).T  # [n, m]
    per_entry = ((c - exact).abs() / exact.abs()).mean()
    assert per_entry <= 0.05, f"mean relative error {per_entry:.3g}"
    assert half.model.layers[-1].self_attn.v_proj.weight.dtype == dtype  # model untouched
