"""Reference forms of Adam normalization that materialize the [n, d] matrices (tests only).

The selector never builds these matrices (colm.selection.normalize's docstring says how it
works instead); the tests check the production passes against these direct forms of
docs/method.md step 4.
"""
from __future__ import annotations

import torch
from torch import Tensor

from colm.selection.normalize import AdamNormalizer
from colm.selection.passes import column_blocks, normalized_group_sums


def normalize(norm: AdamNormalizer, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(features, m_i, v_i)``, each ``[n, d]`` float32: every row of ``g`` normalized against
    the history, and the per-example moments (not bias-corrected) to pass to ``update``. Where a
    pool moment is used, the rows of ``g`` are the pool."""
    norm.prepare(g)
    b1, b2 = norm.betas
    gf = g.float()
    if norm.needs_pool_moment:
        norm.set_pool_moment(gf.square().mean(dim=0))
    m_i = torch.add(norm.m * b1, gf, alpha=1.0 - b1)  # [n, d]
    v_i = torch.addcmul(norm.v * b2, gf, gf, value=1.0 - b2)  # [n, d]
    m, v, _ = norm.reference()
    return norm.formula(gf, m, v), m_i, v_i


def update(norm: AdamNormalizer, m_i: Tensor, v_i: Tensor) -> None:
    """The history := the mean of ``m_i, v_i`` ``[k, d]``; ``k = 0`` changes nothing."""
    if m_i.shape != v_i.shape or m_i.dim() != 2:
        raise ValueError(f"m_i and v_i must be equal-shape [k, d], got {tuple(m_i.shape)}, {tuple(v_i.shape)}")
    if m_i.shape[0] == 0:
        return
    norm.prepare(m_i)
    norm._commit(m_i.float().mean(dim=0), v_i.float().mean(dim=0))


def update_from_gradients(norm: AdamNormalizer, g: Tensor, rows: Tensor) -> None:
    """``update(m_i[rows], v_i[rows])`` from the raw ``g`` ``[n, d]``, block by block."""
    norm.prepare(g)
    rows = rows.to(device=g.device, dtype=torch.long).view(-1)
    k = rows.numel()
    if k == 0:
        return
    _, d = g.shape
    mean_g = torch.empty(d, dtype=torch.float32, device=g.device)
    mean_g2 = torch.empty(d, dtype=torch.float32, device=g.device)
    for cols in column_blocks(k, d, g.device):
        block = g[:, cols].index_select(0, rows).float()  # [k, w]
        torch.mean(block, dim=0, out=mean_g[cols])
        torch.mean(block.square_(), dim=0, out=mean_g2[cols])
    norm.update_from_moments(mean_g, mean_g2)


def feature_sums(norm: AdamNormalizer, g: Tensor, groups: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """``([n_groups, d] per-group sums of normalized rows, [d] raw sum)``, the selector's pass."""
    norm.prepare(g)
    return normalized_group_sums(g, groups, n_groups, norm)
