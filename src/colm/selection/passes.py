"""Blocked passes over a pool's feature matrix ``g`` ``[n, d]``: the selector's only O(n d) work.

At a real model's size (n = 128, d = 327,680 for Phi-2's LoRA B, 168 MB of float32) what a
selection costs is reading the features, so every pass here walks the coordinates in cache-
(CPU) or memory-sized (GPU) column blocks and never materializes an ``[n, d]`` temporary. Each
has a torch path (any device, any float dtype) and, for large contiguous float32 features on
CPU, the fused numba loop of ``colm.selection.kernels`` beside it (``cpu_kernels.applicable``):

- ``normalized_group_sums`` (pass 1): per-source sums of the Adam-normalized features and the
  raw pool total, to rank coordinates by;
- ``raw_group_sums`` / ``raw_total`` / ``mean_square``: the same without normalization, the
  total alone, the mean ``g^2`` over some rows (the pool's second moment);
- ``top_columns`` and ``gather``: the sparsified ``[n_q, h]`` block of one source;
- ``selected_sums`` (pass 2): weighted sums of the selected rows and of their squares (the
  match error, the Adam history update);
- ``all_finite``: the finiteness checks on features, sums and the Adam history.

The Adam arithmetic itself lives in ``colm.selection.normalize``; the passes take a normalizer and apply
its formula block by block.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

import colm.selection.kernels as cpu_kernels


def all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` is finite. A finite sum proves it (any NaN or inf makes the
    sum NaN or inf), and one reduction costs far less on CPU than ``isfinite(x).all()``, which
    writes a bool tensor first (at Phi-2 size the checks were a fifth of select(): see
    docs/benchmarks.md, "Selection speed"). Only a non-finite sum (bad entries, or finite ones
    whose sum overflows) pays the exact check."""
    if x.numel() == 0 or bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())


# Elements per column block on CPU: small enough that a block's temporaries stay in cache.
_CPU_BLOCK_ELEMENTS = 1 << 19
# On GPU blocks only bound memory; one block is fastest when it fits.
_GPU_BLOCK_ELEMENTS = 1 << 26


def column_blocks(n: int, d: int, device: torch.device) -> Iterator[slice]:
    """Column slices covering ``range(d)`` whose ``[n, block]`` temporaries are cache/memory-sized."""
    per = _GPU_BLOCK_ELEMENTS if device.type != "cpu" else _CPU_BLOCK_ELEMENTS
    width = max(1, per // max(n, 1))
    for start in range(0, d, width):
        yield slice(start, min(start + width, d))


def group_sums(rows: Tensor, groups: Tensor, n_groups: int) -> Tensor:
    """Sum of the rows of ``rows`` ``[n, w]`` per group: ``[n_groups, w]`` float32.

    ``groups`` ``[n]`` holds each row's group id in ``[0, n_groups)``. On CPU this is an
    ``index_add_`` (~5x faster there than the equivalent skinny one-hot GEMM); on GPU a one-hot
    GEMM, because ``index_add_`` uses atomics there and its float sums would change from run to
    run, while selection must be deterministic.
    """
    rows = rows.float()
    if rows.device.type == "cpu":
        out = torch.zeros(n_groups, rows.shape[1], dtype=torch.float32)
        return out.index_add_(0, groups, rows)
    one_hot = torch.nn.functional.one_hot(groups, n_groups).T.to(torch.float32)  # [G, n]
    return one_hot @ rows


def normalized_group_sums(g: Tensor, groups: Tensor, n_groups: int, normalizer: Any) -> tuple[Tensor, Tensor]:
    """Pass 1: per-group sums ``[n_groups, d]`` of ``normalizer``'s features of the rows of
    ``g`` ``[n, d]`` (``groups`` ``[n]`` on ``g``'s device), and the raw total ``[d]``, in one
    read of ``g``. The normalizer must be prepared for ``g`` (its ``reference()`` set)."""
    m, v, coefficients = normalizer.reference()
    if cpu_kernels.applicable(g):
        return cpu_kernels.adam_group_sums(g, m, v, groups, n_groups, coefficients, normalizer.eps)
    n, d = g.shape
    sums = torch.empty(n_groups, d, dtype=torch.float32, device=g.device)  # [G, d]
    raw = torch.empty(d, dtype=torch.float32, device=g.device)  # [d]
    for cols in column_blocks(n, d, g.device):
        block = g[:, cols].float()  # [n, w]
        torch.sum(block, dim=0, out=raw[cols])
        sums[:, cols] = group_sums(normalizer.formula(block, m[cols], v[cols]), groups, n_groups)
    return sums, raw


def raw_group_sums(g: Tensor, groups: Tensor, n_groups: int) -> Tensor:
    """Per-group sums of the raw rows ``[n_groups, d]`` (float32), block by block."""
    n, d = g.shape
    if g.dtype == torch.float32 and g.device.type == "cpu":
        return group_sums(g, groups, n_groups)  # one pass, no copy of g
    out = torch.empty(n_groups, d, dtype=torch.float32, device=g.device)
    for cols in column_blocks(n, d, g.device):
        out[:, cols] = group_sums(g[:, cols], groups, n_groups)
    return out


def raw_total(g: Tensor) -> Tensor:
    """Sum of the rows ``[d]`` in float32 (half inputs are upcast block by block)."""
    if g.dtype == torch.float32:
        return g.sum(dim=0)
    n, d = g.shape
    out = torch.empty(d, dtype=torch.float32, device=g.device)
    for cols in column_blocks(n, d, g.device):
        out[cols] = g[:, cols].float().sum(dim=0)
    return out


def mean_square(g: Tensor, rows: Tensor) -> Tensor:
    """Mean of ``g[rows] ** 2`` over the rows, ``[d]`` float32, accumulated in float64 so that
    the result does not depend on the order of the rows (used once per run)."""
    d = g.shape[1]
    out = torch.empty(d, dtype=torch.float32, device=g.device)
    for cols in column_blocks(rows.numel(), d, g.device):
        block = g[:, cols].index_select(0, rows).double()  # [k, w]
        out[cols] = block.square_().mean(dim=0).float()
    return out


def top_columns(score: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries of ``score`` ``[d]``, ascending.

    On CPU a full ``topk`` over d = 327,680 costs ~3 ms; a threshold taken from a 1-in-32
    sample keeps roughly 2k candidates, and the exact ``topk`` then runs on those (~1 ms in
    all). Whenever at
    least ``k`` entries pass the threshold, the k-th largest value passes it too, so the result
    is the full ``topk``'s; otherwise (adversarial ties) it falls back to the full ``topk``.
    """
    d = score.numel()
    if score.device.type == "cpu" and d >= 64 * k:
        stride = 32  # the sample's (2k / stride)-th largest estimates the 2k-th largest
        threshold = torch.topk(score[::stride], max(1, 2 * k // stride), sorted=False).values.min()
        candidates = torch.nonzero(score >= threshold).squeeze(1)  # [~2k]
        if candidates.numel() >= k:
            best = torch.topk(score.index_select(0, candidates), k, sorted=False).indices
            return torch.sort(candidates.index_select(0, best)).values
    return torch.sort(torch.topk(score, k, sorted=False).indices).values


def gather(g: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``g[rows][:, cols]`` ``[len(rows), len(cols)]`` without copying whole rows."""
    if cpu_kernels.applicable(g):
        return cpu_kernels.gather(g, rows, cols)
    if not g.is_contiguous():
        return g[rows.unsqueeze(1), cols.unsqueeze(0)]
    # Flat offsets into contiguous g: one take() is cheaper than two-tensor advanced indexing.
    offsets = rows.unsqueeze(1) * g.shape[1] + cols.unsqueeze(0)  # [n_q, h]
    return g.reshape(-1).take(offsets)


def selected_sums(
    g: Tensor, rows: Tensor, lin_w: Tensor, sq_w: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """``lin_w @ g[rows]`` ``[a, d]`` and ``sq_w @ g[rows]**2`` ``[b, d]`` in one blocked pass."""
    if cpu_kernels.applicable(g):
        return cpu_kernels.selected_sums(g, rows, lin_w, sq_w)
    k = rows.numel()
    d = g.shape[1]
    lin = torch.empty(lin_w.shape[0], d, dtype=torch.float32, device=g.device)
    sq = None if sq_w is None else torch.empty(sq_w.shape[0], d, dtype=torch.float32, device=g.device)
    for cols in column_blocks(k, d, g.device):
        block = g[:, cols].index_select(0, rows).float()  # [k, w]
        lin[:, cols] = lin_w @ block
        if sq is not None and sq_w is not None:  # both or neither
            sq[:, cols] = sq_w @ block.square_()
    return lin, sq
