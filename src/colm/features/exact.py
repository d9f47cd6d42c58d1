"""Exact per-example gradients of the target parameters, by a backward through the last block.

The replayed loss Σ_i L_i is differentiated once. Because example i's loss depends only on row i,
the gradient reaching a target linear map's output at row i, δ_i [T, out], is exactly example i's
own. With the map's input h_i [T, in] (recorded by a forward hook), its per-example weight
gradient is

    nn.Linear  (y = h Wᵀ + b, W [out, in]):   g_i = Σ_t δ_{i,t} h_{i,t}ᵀ   -> [out, in]
    Conv1D     (y = h W + b,  W [in, out]):   g_i = Σ_t h_{i,t} δ_{i,t}ᵀ   -> [in, out]
    bias:                                     g_i = Σ_t δ_{i,t}

one batched einsum each, no loop over examples. For a LoRA target the hooked module is peft's
``lora_B`` linear itself: its input is ``lora_A(dropout(x))`` and the ``scaling`` applied after it
is already inside δ by the chain rule, so the same formula holds. Gradients are flattened in the
parameter's own order (``param.view(-1)``) and concatenated over targets in order.

The last block's input is the detached captured activation, so nothing before it is traversed.
Targets of another kind fall back to one ``autograd.grad`` per example (correct, slower).
Memory: h and δ of each target ``[n, T, in|out]`` plus the result ``[n, d]``.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .pool import replayed, score_pool
from .replay import LastLayerReplay
from .structure import model_device
from .targets import find_target_parameters


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def _layout(module: nn.Module, attr: str, shape: torch.Size, d_in: int, d_out: int) -> str | None:
    """How ``module.<attr>`` maps input to output: "linear" (W [out, in]), "conv1d" (W [in, out],
    transformers' GPT-2 Conv1D), "bias", or ``None`` when the einsum does not apply."""
    shape = tuple(shape)
    if attr == "bias" and shape == (d_out,):
        return "bias"
    if attr == "weight" and isinstance(module, nn.Linear) and shape == (d_out, d_in):
        return "linear"
    if attr == "weight" and type(module).__name__ == "Conv1D" and shape == (d_in, d_out):
        return "conv1d"
    return None


def _einsum_gradient(layout: str, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-example gradient ``[n, numel]`` from input ``h [n, T, in]`` and output gradient
    ``delta [n, T, out]`` (any extra middle dimensions are folded into T)."""
    n = h.shape[0]
    h = h.reshape(n, -1, h.shape[-1]).float()  # [n, T, in]
    delta = delta.reshape(n, -1, delta.shape[-1]).float()  # [n, T, out]
    if layout == "bias":
        return delta.sum(dim=1)  # [n, out]
    if layout == "linear":
        return torch.einsum("nto,nti->noi", delta, h).reshape(n, -1)  # [n, out*in]
    return torch.einsum("nti,nto->nio", h, delta).reshape(n, -1)  # conv1d: [n, in*out]


# Grad mode on for the whole function: callers (the trainer's scoring) may run under
# torch.no_grad(), where even `losses.sum()` or `losses[i]` would drop the graph.
@torch.enable_grad()
def exact_gradients(
    replay: LastLayerReplay, targets: Mapping[str, nn.Parameter]
) -> torch.Tensor:
    """Per-example gradients ``[n, d]`` (float32) of the targets on the captured batch.

    The replay must hold a capture with labels. Parameters are not modified and no ``.grad`` is
    written (gradients are taken with ``torch.autograd.grad`` with respect to fresh leaf copies).
    """
    model = replay.model
    targets = replay.current(targets)  # full tensors on an FSDP2 model, not this rank's shards
    # float32 leaves when the replay upcasts a half-precision model (see LastLayerReplay)
    leaves = {name: p.detach().to(replay.compute_dtype(p)).requires_grad_(True) for name, p in targets.items()}
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in targets}
    handles = []
    for name in targets:
        module, _ = _owner(model, name)

        def record(mod, args, output, _name=name):
            calls[_name].append((args[0].detach(), output))

        handles.append(module.register_forward_hook(record))
    try:
        with torch.enable_grad():
            losses = replay.losses(leaves)  # [n]
    finally:
        for handle in handles:
            handle.remove()

    layouts: dict[str, str | None] = {}
    for name, p in targets.items():
        module, attr = _owner(model, name)
        kinds = {_layout(module, attr, p.shape, h.shape[-1], y.shape[-1]) for h, y in calls[name]}
        layouts[name] = kinds.pop() if len(kinds) == 1 else None
    einsum_names = [name for name in targets if layouts[name] is not None]
    fallback = len(einsum_names) < len(targets)
    outputs = [y for name in einsum_names for _, y in calls[name]]
    if outputs and not all(y.requires_grad for y in outputs):
        raise RuntimeError("target modules were not reached by the last-layer replay")
    deltas = iter(torch.autograd.grad(losses.sum(), outputs, retain_graph=fallback) if outputs else ())

    pieces = []
    for name in targets:
        if layouts[name] is None:
            pieces.append(_per_example_fallback(losses, leaves[name]))  # [n, numel]
            continue
        # a module called several times in the replay: its gradients add up
        pieces.append(sum(_einsum_gradient(layouts[name], h, next(deltas)) for h, _ in calls[name]))
    return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]


def _per_example_fallback(losses: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """One backward per example, for targets the einsum does not cover."""
    rows = [
        torch.autograd.grad(losses[i], leaf, retain_graph=True, allow_unused=True)[0]
        for i in range(losses.shape[0])
    ]
    return torch.stack(
        [torch.zeros_like(leaf) if r is None else r for r in rows]
    ).reshape(losses.shape[0], -1).float()  # [n, numel]


def exact_features(model: nn.Module, batches, config, step: int = 0, *, gather: bool = False,
                   optimizer=None, placed: torch.Tensor | None = None) -> torch.Tensor:
    """``feature="exact"`` (colm.features.registry): ``[N, d]`` float32 on the model's device."""
    device = model_device(model)
    targets = find_target_parameters(model, config.feature_modules)
    local = score_pool(model, batches, config,
                       lambda chunk: replayed(model, chunk, lambda r: exact_gradients(r, targets)),
                       gather=gather, placed=placed, width=sum(p.numel() for p in targets.values()))  # [N, d]
    return local.to(device=device, dtype=torch.float32)
