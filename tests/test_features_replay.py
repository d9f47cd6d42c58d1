"""LastLayerReplay: replayed losses equal the full model's, with and without perturbations,
for every architecture, with and without LoRA, on right-padded batches."""
from __future__ import annotations

import contextlib

import pytest
import torch
from tiny_models import (
    ARCHS,
    one_thread,  # noqa: F401  (autouse: one thread)
    padded_batch,
    tiny_model,
)

from colm.features import LastLayerReplay, find_target_parameters, per_example_loss

CASES = [(arch, lora) for arch in ARCHS for lora in (False, True)]
IDS = [f"{a}{'-lora' if l else ''}" for a, l in CASES]


@contextlib.contextmanager
def applied(param: torch.nn.Parameter, value: torch.Tensor):
    """Temporarily write ``value`` into the real parameter (the reference computation)."""
    saved = param.detach().clone()
    with torch.no_grad():
        param.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            param.copy_(saved)


def full_losses(model, batch) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return per_example_loss(logits, batch["labels"])


@pytest.mark.parametrize("arch,lora", CASES, ids=IDS)
def test_replay_equals_full_forward(arch: str, lora: bool) -> None:
    model, batch = tiny_model(arch, lora), padded_batch()
    replay = LastLayerReplay(model)
    replay.capture(batch)
    assert (replay.losses() - full_losses(model, batch)).abs().max() <= 1e-5
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert (replay.logits() - logits).abs().max() <= 1e-5


@pytest.mark.parametrize("arch,lora", CASES, ids=IDS)
def test_perturbed_replay_equals_perturbed_full_forward(arch: str, lora: bool) -> None:
    model, batch = tiny_model(arch, lora), padded_batch(seed=1)
    (name, param), = find_target_parameters(model).items()
    gen = torch.Generator().manual_seed(3)
    value = param.detach() + 0.5 * torch.randn(param.shape, generator=gen)
    replay = LastLayerReplay(model)
    replay.capture(batch)
    replayed = replay.losses({name: value})
    with applied(param, value):
        reference = full_losses(model, batch)
    assert (replayed - reference).abs().max() <= 1e-5
    assert (replayed - replay.losses()).abs().max() > 1e-3  # the perturbation matters


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_no_kv_cache_reuse_across_replays(arch: str) -> None:
    """Fails if replays shared a growing KV cache: each replay must see only its own values."""
    model, batch = tiny_model(arch), padded_batch(seed=2)
    (name, param), = find_target_parameters(model).items()
    replay = LastLayerReplay(model)
    replay.capture(batch)
    from transformers.cache_utils import Cache

    assert not any(isinstance(v, Cache) for v in list(replay._kwargs.values()) + list(replay._args))
    base = replay.losses()
    gen = torch.Generator().manual_seed(4)
    for k in range(3):
        value = param.detach() + 0.3 * (k + 1) * torch.randn(param.shape, generator=gen)
        replayed = replay.losses({name: value})
        with applied(param, value):
            reference = full_losses(model, batch)
        assert (replayed - reference).abs().max() <= 1e-5, f"replay {k} read stale state"
        assert (replayed - base).abs().max() > 1e-3
    assert (replay.losses() - base).abs().max() == 0.0  # unperturbed again: identical


def test_kv_cache_control_would_be_detected() -> None:
    """Negative control: feeding the layer a DynamicCache (the trap) breaks the equality above."""
    from transformers import DynamicCache

    model, batch = tiny_model("llama"), padded_batch(seed=2)
    (name, param), = find_target_parameters(model).items()
    replay = LastLayerReplay(model)
    replay.capture(batch)
    # The layer's cache argument is `cache` in transformers 5.25, `past_key_values` in 5.20.
    key = next(k for k in ("cache", "past_key_values") if k in replay._kwargs)
    replay._kwargs = {**replay._kwargs, key: DynamicCache(config=model.config), "use_cache": True}
    replay.losses()  # fills the cache with unperturbed keys/values
    value = param.detach() + 0.5 * torch.randn(param.shape, generator=torch.Generator().manual_seed(5))
    with applied(param, value):
        reference = full_losses(model, batch)
    try:
        replayed = replay.losses({name: value})
    except RuntimeError:  # the grown cache no longer fits the captured mask: also caught
        return
    assert (replayed - reference).abs().max() > 1e-4


def test_replay_hidden_states_are_final_normed() -> None:
    model, batch = tiny_model("phi"), padded_batch()
    replay = LastLayerReplay(model)
    replay.capture(batch)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=True)
        assert (replay.hidden_states() - out.hidden_states[-1]).abs().max() <= 1e-5


def test_overriding_an_earlier_layer_is_refused() -> None:
    model, batch = tiny_model("llama"), padded_batch()
    replay = LastLayerReplay(model)
    replay.capture(batch)
    name = "model.layers.0.self_attn.v_proj.weight"
    with pytest.raises(ValueError, match="last decoder layer"):
        replay.losses({name: dict(model.named_parameters())[name]})


def test_replay_before_capture_raises() -> None:
    with pytest.raises(RuntimeError, match="capture"):
        LastLayerReplay(tiny_model("llama")).losses()


@pytest.mark.parametrize("arch,lora", CASES, ids=IDS)
def test_loss_replay_runs_the_last_mlp_only_at_supervised_positions(arch: str, lora: bool) -> None:
    """The trimmed MLP sees [1, N, h] (N supervised positions), and the losses still equal the
    full model's, perturbed (value projection) or not; an override inside the MLP keeps it whole."""
    from colm.features.loss import supervised_positions
    from colm.features.replay import position_wise_mlp

    model, batch = tiny_model(arch, lora), padded_batch(seed=5)
    replay = LastLayerReplay(model)
    found = position_wise_mlp(replay.stack.last)
    assert found is not None, f"{arch}: no MLP child found on the last layer"
    seen: list[tuple[int, ...]] = []
    found[1].register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape[:2])))
    replay.capture(batch)
    n_supervised = int(supervised_positions(batch["labels"])[0].sum())
    n, T = batch["input_ids"].shape
    assert n_supervised < n * (T - 1)  # the batch has prompt and padding positions

    replayed = replay.losses()
    assert seen == [(1, n_supervised)]
    assert (replayed - full_losses(model, batch)).abs().max() <= 1e-5

    (name, param), = find_target_parameters(model).items()
    value = param.detach() + 0.5 * torch.randn(param.shape, generator=torch.Generator().manual_seed(6))
    seen.clear()
    replayed = replay.losses({name: value})
    assert seen == [(1, n_supervised)]
    with applied(param, value):
        assert (replayed - full_losses(model, batch)).abs().max() <= 1e-5

    mlp_param, mlp_value = next(
        (n_, p) for n_, p in model.named_parameters() if n_.startswith(replay._mlp_prefix)
    )
    mlp_value = mlp_value.detach() + 0.5
    seen.clear()
    replayed = replay.losses({mlp_param: mlp_value})
    assert seen == [(n, T)]
    with applied(dict(model.named_parameters())[mlp_param], mlp_value):
        assert (replayed - full_losses(model, batch)).abs().max() <= 1e-5
