"""Pairwise similarity between per-example features (docs/method.md, step 7).

Facility location needs a similarity where "more similar" means "larger". For the distance
metrics the paper uses s_ij = C - d_ij with C the largest distance in the matrix, so every
similarity is >= 0 and the two farthest examples have similarity exactly 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from colm.selection.passes import all_finite

METRICS = ("l1", "l2", "cosine")

# Norm below which a row counts as the zero vector for cosine similarity.
_COSINE_TINY = 1e-12


def check_features(x: Tensor, name: str = "x", *, finite: bool = True) -> None:
    """Raise ValueError when ``x`` is not a (finite, unless ``finite=False``) 2-D floating
    tensor with at least one row and one column."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [n, d], got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (shape only, no values): pass real data")
    if finite and not all_finite(x):
        raise ValueError(f"{name} contains NaN or inf values")


def pairwise_similarity(x: Tensor, metric: str = "l1") -> Tensor:
    """Similarity between every pair of rows of ``x``.

    Args:
        x: ``[n, d]`` floating features, finite.
        metric: ``"l1"`` or ``"l2"``: ``s_ij = C - ||x_i - x_j||_p`` with ``C`` the largest
            distance in the matrix (so ``s >= 0``, ``s_ii = C``; all zeros when every row is
            equal). ``"cosine"``: plain cosine similarity in ``[-1, 1]``; a zero row has
            similarity 0 with everything, itself included.

    Returns:
        ``[n, n]`` similarity on ``x``'s device, float32 for half-precision input, else
        ``x``'s dtype. Symmetric.

    Raises:
        ValueError: ``x`` is not 2-D, empty, not floating point, or holds NaN/inf; unknown metric.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown similarity metric {metric!r}; expected one of {METRICS}")
    check_features(x)
    return similarity_unchecked(x, metric)


def similarity_unchecked(x: Tensor, metric: str) -> Tensor:
    """``pairwise_similarity`` without input validation, for callers whose features are finite
    by construction (validation costs a device-to-host sync on GPU)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # distances over thousands of coordinates overflow/round badly in half

    if metric == "cosine":
        norms = x.norm(dim=1, keepdim=True)  # [n, 1]
        unit = x / norms.clamp_min(_COSINE_TINY)  # [n, d]; zero rows stay zero
        return unit @ unit.T  # [n, n]

    p = 1.0 if metric == "l1" else 2.0
    n = x.shape[0]
    # pdist computes each unordered pair once, exactly (no matmul shortcut, so d_ii = 0 and
    # d_ij = d_ji bit for bit); for p = 1 it is also ~10-40x faster than cdist on CPU.
    upper = torch.pdist(x, p=p)  # [n * (n - 1) / 2]
    dist = x.new_zeros(n, n)  # [n, n]
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    dist[i, j] = upper
    dist[j, i] = upper
    return dist.max() - dist  # [n, n], >= 0
