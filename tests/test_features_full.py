"""Full-model per-example gradients (torch.func) and their map into a real AdamW's state."""
from __future__ import annotations

import pytest
import torch
from tiny_models import (
    one_thread,  # noqa: F401  (autouse: one thread)
    padded_batch,
    tiny_model,
)

from colm.config import CoresetConfig
from colm.features import gradient_features
from colm.features.full import adam_space, per_example_summed_nll_gradients, trainable_parameters
from colm.features.loss import per_example_nll

CONFIG = CoresetConfig(feature="full_adam", adam_normalize=False, topk_dims=None)


def _row_gradients(model, batch, params) -> torch.Tensor:
    """The obvious reference: each row alone through the model, one autograd.grad per row."""
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        logits = model(input_ids=batch["input_ids"][i:i + 1], attention_mask=batch["attention_mask"][i:i + 1]).logits
        summed, _ = per_example_nll(logits, batch["labels"][i:i + 1])
        grads = torch.autograd.grad(summed[0], list(params.values()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)  # [n, P]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_vmap_gradients_equal_per_row_autograd(arch: str) -> None:
    model, batch = tiny_model(arch), padded_batch(n=5, T=12)  # right-padded rows of varied length
    params = trainable_parameters(model)
    got, counts = per_example_summed_nll_gradients(model, batch, params)
    want = _row_gradients(model, batch, params)
    assert got.shape == want.shape == (5, sum(p.numel() for p in params.values()))
    assert torch.equal(counts, (batch["labels"][:, 1:] != -100).sum(dim=1))
    assert float((got - want).norm() / want.norm()) <= 1e-5
    # every row differs: the gradients really are per example
    assert float(torch.cdist(got, got).fill_diagonal_(float("inf")).min()) > 0


def test_left_padding_gives_the_same_gradients() -> None:
    model, batch = tiny_model("llama"), padded_batch(n=3, T=10)
    params = trainable_parameters(model)
    right, _ = per_example_summed_nll_gradients(model, batch, params)
    i = 2  # the same row shifted to the left-padded layout (position ids differ: compare alone)
    length = int(batch["attention_mask"][i].sum())
    alone = {k: v[i:i + 1, :length] for k, v in batch.items()}
    single, _ = per_example_summed_nll_gradients(model, alone, params)
    assert float((single[0] - right[i]).norm() / right[i].norm()) <= 1e-5


def _stepped_adamw(model, batch, steps: int = 3) -> torch.optim.AdamW:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        summed, counts = per_example_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                         batch["labels"])
        (summed.sum() / counts.sum()).backward()
        opt.step()
    opt.zero_grad()
    return opt


def test_adam_space_equals_a_hand_computation_from_a_real_adamw_state() -> None:
    model, batch = tiny_model("llama"), padded_batch(n=4, T=12)
    opt = _stepped_adamw(model, batch)
    params = trainable_parameters(model)
    g, _ = per_example_summed_nll_gradients(model, batch, params)
    got = adam_space(g, opt, params)
    b1, b2, eps, t = 0.8, 0.95, 1e-6, 4  # the step about to be taken is the 4th
    mean = g.double().mean(dim=0)
    pieces = []
    for p in params.values():
        v = opt.state[p]["exp_avg_sq"].double().reshape(-1)
        assert int(opt.state[p]["step"]) == 3
        pieces.append(b2 * v)
    v_prior = torch.cat(pieces)
    v_hat = (v_prior + (1 - b2) * mean**2) / (1 - b2**t)
    want = ((1 - b1) / (1 - b1**t)) * g.double() / (v_hat.sqrt() + eps)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-7)
    # The map is linear: the mean of features is the feature of the mean gradient, and the
    # pool-mean feature plus the momentum term is the update AdamW takes on the pool's gradient.
    m_prior = torch.cat([opt.state[p]["exp_avg"].double().reshape(-1) for p in params.values()])
    update = (b1 * m_prior / (1 - b1**t)) / (v_hat.sqrt() + eps) + want.mean(dim=0)
    before = torch.cat([p.detach().reshape(-1).double().clone() for p in params.values()])
    offset = 0
    for p in params.values():  # step AdamW on exactly the pool-mean gradient
        p.grad = mean[offset:offset + p.numel()].reshape(p.shape).to(p.dtype)
        offset += p.numel()
    opt.param_groups[0]["weight_decay"] = 0.0
    opt.step()
    after = torch.cat([p.detach().reshape(-1).double() for p in params.values()])
    taken = (before - after) / 1e-2  # float32 parameters: the difference keeps ~5 digits
    assert float((taken - update).norm() / update.norm()) <= 1e-4


def test_fresh_optimizer_uses_the_pool_gradient_as_second_moment() -> None:
    model, batch = tiny_model("llama"), padded_batch(n=4, T=12)
    opt = torch.optim.AdamW(model.parameters(), eps=1e-8)  # no state yet: step 0
    params = trainable_parameters(model)
    g, _ = per_example_summed_nll_gradients(model, batch, params)
    got = adam_space(g, opt, params)
    want = g.double() / (g.double().mean(dim=0).abs() + 1e-8)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)


def test_gradient_features_full_adam_token_scaling_and_model_untouched() -> None:
    model, batch = tiny_model("llama"), padded_batch(n=4, T=12)
    opt = _stepped_adamw(model, batch)
    before = [p.detach().clone() for p in model.parameters()]
    params = trainable_parameters(model)
    got = gradient_features(model, [batch], CONFIG, optimizer=opt)
    g, counts = per_example_summed_nll_gradients(model, batch, params)
    assert torch.allclose(got, adam_space(g / counts.float().mean(), opt, params), rtol=1e-5, atol=1e-7)
    example = gradient_features(model, [batch], CoresetConfig(**{**CONFIG.to_dict(), "loss_average": "example"}),
                                optimizer=opt)
    assert torch.allclose(example, adam_space(g / counts.float()[:, None], opt, params), rtol=1e-5, atol=1e-7)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_full_adam_needs_the_optimizer_and_no_second_normalization() -> None:
    model, batch = tiny_model("llama"), padded_batch(n=2, T=8)
    with pytest.raises(ValueError, match="needs the optimizer"):
        gradient_features(model, batch, CONFIG)
    with pytest.raises(ValueError, match="adam_normalize"):
        CoresetConfig(feature="full_adam")
    with pytest.raises(ValueError, match="Adam-type optimizer"):
        gradient_features(model, batch, CONFIG, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_trainer_passes_its_optimizer_and_trains_the_nnls_weights(tmp_path, monkeypatch) -> None:
    from trainer_helpers import collator, mixture, tiny_llama, training_args

    import colm.features.full as api
    from colm import CoresetTrainer

    seen = []
    real = api.full_adam_features

    def spy(model, batches, config, optimizer, *, gather=False):
        state = [s for s in optimizer.state.values() if "step" in s]
        seen.append((optimizer, int(state[0]["step"]) if state else 0))
        return real(model, batches, config, optimizer, gather=gather)

    monkeypatch.setattr(api, "full_adam_features", spy)
    cfg = CoresetConfig(pool_factor=2, feature="full_adam", adam_normalize=False, topk_dims=None,
                        within_source="nnls", small_sources="none")
    trainer = CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=2),
                             train_dataset=mixture({"big_a": 40, "big_b": 40}), data_collator=collator(),
                             coreset_config=cfg)
    trainer.train()
    assert [step for _, step in seen] == [0, 1]  # the real Adam state, one step later each time
    assert all(opt is trainer.optimizer for opt, _ in seen)
    weights = trainer.last_selection.loss_weights
    assert (weights >= 0).all() and not torch.allclose(weights, torch.ones_like(weights))
