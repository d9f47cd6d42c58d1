"""Full-model per-example gradients in the optimizer's Adam space (``feature="full_adam"``).

A lab tool for measuring the ceiling of selection, not a production feature: every trainable
parameter gets a coordinate, so the features take ``O(pool x parameters)`` memory (the tiny lab
model: 32 rows x 1.18M parameters = 151 MB in float32) and each pool row costs a full
forward and backward. Fine for a 1M-parameter model, useless for a 1B one.

Per-example gradients come from ``torch.func``: ``vmap(grad(loss_of_one_row))`` over the pool's
rows with the parameters passed through ``functional_call``, so the model's own parameters are
never written. Under ``vmap`` the model cannot inspect the attention mask's values (transformers
checks "is the padding mask all ones?" to skip the causal mask, data-dependent control flow that
``vmap`` refuses), so each row gets an explicit 4-D additive mask (causal and padding) built
outside the model: the same attention the batched forward computes.

What each row's gradient is of: the loss the trainer takes, written as a mean over the pool
(docs/method.md, "The ceiling"): with ``loss_average="token"`` the row's summed token NLL over
the pool's mean supervised tokens per row (the pool mean of these gradients is then exactly
the token-averaged gradient of the whole pool); with ``"example"`` the row's mean token NLL.

The Adam space: ``f_i = a * g_i / (sqrt(v_hat) + eps)`` with, per parameter, ``v_hat = (b2 v +
(1 - b2) G^2) / (1 - b2^(t+1))``, ``a = (1 - b1) / (1 - b1^(t+1))``, ``v`` the optimizer's
``exp_avg_sq``, ``t`` its ``step``, ``b1, b2, eps`` its parameter group's, and ``G`` the pool's
mean gradient. This is the gradient's part of the Adam update the optimizer would take if it
stepped on the whole pool: the momentum part ``b1 m / (...)`` is common to every candidate set
and cancels in any comparison of sets, so ``mean_{S} f - mean_{pool} f`` is the difference between
the update taken on ``S`` and on the pool with ``v_hat`` held at the pool's (a subset's own
``(1 - b2) G_S^2`` moves ``v_hat``: this is the first-order term). The map is linear, so the mean of features
is the feature of the mean gradient, which the per-example fold of ``AdamNormalizer``
(``g_i^2`` into each row's own ``v``) is not.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from colm import distributed
from colm.columns import IGNORE_INDEX

Batch = Mapping[str, torch.Tensor]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter that trains, by name, in ``named_parameters`` order (tied weights once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _row_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask ``[1, 1, T, T]`` of one row: 0 where query t may see key s
    (``s <= t`` and s is not padding), the dtype's minimum elsewhere."""
    T = attention_mask.shape[0]
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal & attention_mask.bool()[None, :]  # [T, T]
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[None, None]


def per_example_summed_nll_gradients(
    model: nn.Module, batch: Batch, params: Mapping[str, nn.Parameter]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``[n, P]`` (float32) of each row's summed next-token NLL with respect to
    ``params`` (flattened in order, concatenated), and each row's supervised-token count ``[n]``.

    ``batch``: ``input_ids [n, T]``, ``labels [n, T]`` (-100 where no loss is taken) and
    optionally ``attention_mask [n, T]``. The model is called once per row inside ``vmap``;
    it should be in eval mode (dropout would differ per call).
    """
    ids, labels = batch["input_ids"], batch["labels"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    detached = {name: p.detach() for name, p in params.items()}
    dtype = next(iter(params.values())).dtype

    def summed_nll(p, row_ids, row_mask, row_labels):  # one row: [T], [T], [T] -> scalar
        logits = functional_call(
            model, p, (row_ids[None],), {"attention_mask": _row_mask(row_mask, dtype)}
        ).logits[0, :-1]  # [T-1, V]
        targets = row_labels[1:]  # [T-1]
        supervised = targets != IGNORE_INDEX
        nll = nn.functional.cross_entropy(logits.float(), targets.clamp_min(0), reduction="none")  # [T-1]
        return (nll * supervised).sum()

    with warnings.catch_warnings():  # "no batching rule for sdpa": slower, same numbers
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        grads = vmap(grad(summed_nll), in_dims=(None, 0, 0, 0))(detached, ids, mask, labels)
    n = ids.shape[0]
    flat = torch.cat([grads[name].reshape(n, -1).float() for name in params], dim=1)  # [n, P]
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)  # [n]
    return flat, counts


def _optimizer_state(optimizer, params: Mapping[str, nn.Parameter]):
    """Per parameter (in ``params`` order): ``(exp_avg_sq or None, step, (b1, b2), eps)`` from a
    torch Adam/AdamW (or an accelerate wrapper of one, which forwards ``state`` and
    ``param_groups``)."""
    group_of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            group_of[id(p)] = group
    out = []
    for name, p in params.items():
        group = group_of.get(id(p))
        if group is None or "betas" not in group or "eps" not in group:
            raise ValueError(
                f"feature='full_adam' needs an Adam-type optimizer holding every trainable "
                f"parameter; {name!r} is not in a parameter group with betas and eps"
            )
        state = optimizer.state.get(p, {})
        v = state.get("exp_avg_sq")
        step = int(state["step"]) if "step" in state else 0
        out.append((v, step, tuple(float(b) for b in group["betas"]), float(group["eps"])))
    return out


def adam_space(
    g: torch.Tensor, optimizer, params: Mapping[str, nn.Parameter]
) -> torch.Tensor:
    """Map gradients ``g [n, P]`` (columns in ``params`` order) into the optimizer's Adam space:
    ``f_i = a g_i / (sqrt(v_hat) + eps)`` with ``v_hat`` the second moment after a step on the
    mean of ``g``'s rows (module docstring). Returns ``[n, P]`` float32; ``g`` is not changed."""
    pool_mean = g.double().mean(dim=0)  # [P]
    out = torch.empty_like(g, dtype=torch.float32)
    start = 0
    for (v, step, (b1, b2), eps), p in zip(_optimizer_state(optimizer, params), params.values()):
        stop = start + p.numel()
        mean = pool_mean[start:stop]  # [numel]
        prior = torch.zeros_like(mean) if v is None else v.detach().reshape(-1).to(mean)
        t = step + 1  # the step about to be taken
        v_hat = (b2 * prior + (1.0 - b2) * mean.square()) / (1.0 - b2**t)  # [numel]
        scale = ((1.0 - b1) / (1.0 - b1**t)) / (v_hat.sqrt() + eps)  # [numel]
        torch.mul(g[:, start:stop], scale.float(), out=out[:, start:stop])
        start = stop
    if start != g.shape[1]:
        raise ValueError(f"gradients have {g.shape[1]} columns but the parameters {start}")
    return out


def full_adam_features(
    model: nn.Module, batches: Sequence[Batch], config, optimizer, *, gather: bool = False
) -> torch.Tensor:
    """``feature="full_adam"``: the pool's per-example full-model gradients in the optimizer's
    Adam space, ``[N, P]`` float32 (``N`` the rows of every batch, of every rank with
    ``gather``). The caller has put the model in scoring mode (eval, no parameter change)."""
    if optimizer is None:
        raise ValueError(
            "feature='full_adam' needs the optimizer (its Adam state defines the feature space); "
            "CoresetTrainer passes it, a direct gradient_features call must pass optimizer="
        )
    params = trainable_parameters(model)
    if not params:
        raise ValueError("feature='full_adam': the model has no trainable parameter")
    with torch.enable_grad():
        parts = [per_example_summed_nll_gradients(model, b, params) for b in batches]
    g = torch.cat([p[0] for p in parts], dim=0)  # [n_local, P]
    counts = torch.cat([p[1] for p in parts], dim=0).to(g.device, torch.float32)  # [n_local]
    if gather:
        g = distributed.gather_rows(g)  # [N, P]
        counts = distributed.gather_rows(counts[:, None])[:, 0]  # [N]
    if config.loss_average == "example":
        g = g / counts.clamp_min(1.0)[:, None]  # gradient of each row's mean token NLL
    else:
        g = g / counts.mean().clamp_min(1.0)  # pool mean of rows = the token-averaged gradient
    return adam_space(g, optimizer, params)


def full_adam_pool_features(model: nn.Module, batches: Sequence[Batch], config, step: int = 0, *,
                            gather: bool = False, optimizer=None, placed=None) -> torch.Tensor:
    """``feature="full_adam"`` (colm.features.registry): full_adam_features in scoring mode."""
    from .state import scoring_mode

    if placed is not None:
        raise ValueError("gradient_features: `placed` is not supported with feature='full_adam'")

    with scoring_mode(model):
        return full_adam_features(model, batches, config, optimizer, gather=gather)
