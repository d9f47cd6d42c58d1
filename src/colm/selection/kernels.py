"""Fused CPU loops for the selector's passes over the ``[n, d]`` features (numba).

At a real model's size (n = 128, d = 327,680 for Phi-2's LoRA B: 168 MB of float32) the
selector's cost on CPU is its passes over the features, not facility location. In eager torch
each elementwise op is a separate sweep over memory: the Adam-normalized per-source sums
(``AdamNormalizer.feature_sums``) take ~8 sweeps of a block, the column gather of the top-k
coordinates chases scattered addresses through an index tensor, and the sums over the selected
rows copy them first. The loops here do each in one cache-blocked sweep, which puts them near
the cost of reading the features once.

Used only where they pay off and are exact stand-ins (``applicable``): numba importable,
features on CPU, float32, C-contiguous, at least ``MIN_ELEMENTS`` entries. Everything else
(GPU tensors, half precision, small pools) keeps the torch code, which is what GPUs want
anyway. Set ``COLM_NUMBA=0`` to force the torch code everywhere.

Arithmetic is plain IEEE float32 (no fast-math), and every column's sum runs over the rows in
pool order whatever the thread count, so results are deterministic and match the torch code up
to rounding (tested). Parallelism splits columns over threads, each thread owning its columns;
the loops release the GIL. The thread count follows ``torch.get_num_threads()``.

numba compiles the loops on first use (a few seconds) and caches them on disk next to this file
or in the user cache directory; where neither is writable it compiles once per process.
"""
from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from colm.field_types import env_switch

# Below this many feature entries the torch code takes at most a few milliseconds and a
# first-use compile would cost more than it could ever save.
MIN_ELEMENTS = 1 << 20
# Columns per cache block: a block of one row is 16 KB, so a thread's block of the outputs
# and history stays in L1/L2 while the rows stream past.
BLOCK_COLUMNS = 4096

_lock = threading.Lock()
_kernels: dict[str, Callable[..., Any]] | None = None
_failed = False
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)  # (pid, workers): a forked child must not reuse the parent's


def _enabled_by_env() -> bool:
    return env_switch("COLM_NUMBA", True)


def _compile() -> dict[str, Callable[..., Any]] | None:
    """The jitted loops, built on first use; None when numba is missing or fails."""
    global _kernels, _failed
    if _kernels is not None or _failed:
        return _kernels
    with _lock:
        if _kernels is not None or _failed:
            return _kernels
        try:
            _kernels = _build()
        except Exception as err:  # ImportError, or numba unable to compile on this platform
            _failed = True
            if not isinstance(err, ImportError):
                msg = f"colm: numba kernels unavailable ({err}); using torch code"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return _kernels


def _build() -> dict[str, Callable[..., Any]]:
    import numba

    # error_model="numpy": a float division by zero gives inf as in torch instead of raising;
    # the Python error model's check on every division also stops the loops vectorizing (4x).
    options = dict(nogil=True, boundscheck=False, error_model="numpy")

    def jit(fn: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # no writable cache location: compile once per process instead
            return numba.njit(**options)(fn)

    def adam_group_sums(g, m, v, groups, cm, cg, cv, cg2, eps, start, stop, width, sums, raw):
        # g [n, d], m/v [d], groups [n]; sums [G, d] and raw [d] zeroed; columns [start, stop).
        n = g.shape[0]
        mm = np.empty(width, np.float32)  # cm * m over the block
        vv = np.empty(width, np.float32)  # cv * v over the block
        for s in range(start, stop, width):
            e = min(s + width, stop)
            w = e - s
            for k in range(w):
                mm[k] = cm * m[s + k]
                vv[k] = cv * v[s + k]
            r = raw[s:e]
            for i in range(n):
                x = g[i, s:e]
                o = sums[groups[i], s:e]
                for k in range(w):
                    xk = x[k]
                    # m_hat_i / (sqrt(v_hat_i) + eps), as AdamNormalizer._features
                    o[k] += (mm[k] + cg * xk) / (np.sqrt(vv[k] + cg2 * (xk * xk)) + eps)
                    r[k] += xk

    def gather(g, rows, cols, out, start, stop):
        # out[a, b] = g[rows[a], cols[b]] for a in [start, stop)
        h = cols.shape[0]
        for a in range(start, stop):
            x = g[rows[a]]
            o = out[a]
            for b in range(h):
                o[b] = x[cols[b]]

    def selected_sums(g, rows, lin_w, sq_w, start, stop, width, lin, sq):
        # lin[p] = sum_i lin_w[p, i] g[rows[i]], sq[p] = sum_i sq_w[p, i] g[rows[i]]^2 over
        # columns [start, stop); lin [a, d], sq [b, d] zeroed.
        for s in range(start, stop, width):
            e = min(s + width, stop)
            w = e - s
            for i in range(rows.shape[0]):
                x = g[rows[i], s:e]
                for p in range(lin_w.shape[0]):
                    c = lin_w[p, i]
                    o = lin[p, s:e]
                    for k in range(w):
                        o[k] += c * x[k]
                for p in range(sq_w.shape[0]):
                    c = sq_w[p, i]
                    o = sq[p, s:e]
                    for k in range(w):
                        o[k] += c * (x[k] * x[k])

    kernels = {
        "adam_group_sums": jit(adam_group_sums),
        "gather": jit(gather),
        "selected_sums": jit(selected_sums),
    }
    _warm_up(kernels)
    return kernels


def _warm_up(kernels: dict[str, Callable[..., Any]]) -> None:
    """Compile every loop now, on tiny arrays of the argument types the real calls use, so that
    a platform where numba cannot compile falls back to torch here instead of failing mid-run."""
    f32, i64 = np.float32, np.int64
    g = np.ones((2, 3), f32)
    one = f32(1.0)
    kernels["adam_group_sums"](
        g, np.zeros(3, f32), np.zeros(3, f32), np.zeros(2, i64), one, one, one, one, one,
        0, 3, 2, np.zeros((1, 3), f32), np.zeros(3, f32),
    )
    kernels["gather"](g, np.zeros(1, i64), np.zeros(2, i64), np.zeros((1, 2), f32), 0, 1)
    kernels["selected_sums"](
        g, np.zeros(1, i64), np.ones((1, 1), f32), np.ones((1, 1), f32), 0, 3, 2,
        np.zeros((1, 3), f32), np.zeros((1, 3), f32),
    )


def applicable(g: Tensor) -> bool:
    """Whether the fused loops handle ``g``: numba available, CPU float32 C-contiguous, large."""
    if g.device.type != "cpu" or g.dtype != torch.float32 or g.dim() != 2:
        return False
    if g.numel() < MIN_ELEMENTS or not g.is_contiguous():
        return False
    return _enabled_by_env() and _compile() is not None


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _run_split(
    fn: Callable[..., Any], total: int, quantum: int, args: tuple[Any, ...], tail: tuple[Any, ...] = ()
) -> None:
    """Run ``fn(*args, start, stop, *tail)`` over ``[0, total)`` split into one contiguous
    range per thread (multiples of ``quantum``), the calling thread taking the first."""
    global _pool, _pool_key
    parts = min(_threads(), max(1, total // max(quantum, 1)))
    if parts <= 1:
        fn(*args, 0, total, *tail)
        return
    per = -(-total // parts)
    per = -(-per // quantum) * quantum
    bounds = [(s, min(s + per, total)) for s in range(0, total, per)]
    workers = len(bounds) - 1
    with _lock:
        if _pool is None or _pool_key[0] != os.getpid() or _pool_key[1] < workers:
            if _pool is not None and _pool_key[0] == os.getpid():
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="colm-kernel")
            _pool_key = (os.getpid(), workers)
        pool = _pool
    futures = [pool.submit(fn, *args, s, e, *tail) for s, e in bounds[1:]]
    fn(*args, bounds[0][0], bounds[0][1], *tail)
    for f in futures:
        f.result()


def adam_group_sums(
    g: Tensor, m: Tensor, v: Tensor, groups: Tensor, n_groups: int,
    coefficients: tuple[float, float, float, float], eps: float,
) -> tuple[Tensor, Tensor]:
    """``AdamNormalizer.feature_sums`` in one sweep: per-group sums ``[n_groups, d]`` of the
    normalized rows of ``g`` ``[n, d]`` against history ``m, v`` ``[d]``, and the sum ``[d]``
    of the raw rows. ``coefficients`` = ``(cm, cg, cv, cg2)`` of ``AdamNormalizer``."""
    kernels = _compile()
    assert kernels is not None
    n, d = g.shape
    sums = np.zeros((n_groups, d), np.float32)
    raw = np.zeros(d, np.float32)
    cm, cg, cv, cg2 = (np.float32(c) for c in coefficients)
    args = (
        g.detach().numpy(), m.contiguous().numpy(), v.contiguous().numpy(),
        groups.to(torch.int64).contiguous().numpy(), cm, cg, cv, cg2, np.float32(eps),
    )
    _run_split(kernels["adam_group_sums"], d, BLOCK_COLUMNS, args, (BLOCK_COLUMNS, sums, raw))
    return torch.from_numpy(sums), torch.from_numpy(raw)


def gather(g: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``g[rows][:, cols]`` ``[len(rows), len(cols)]``; ``cols`` ascending reads each row
    forward in memory."""
    kernels = _compile()
    assert kernels is not None
    out = np.empty((rows.numel(), cols.numel()), np.float32)
    rows_np, cols_np = rows.to(torch.int64).contiguous().numpy(), cols.to(torch.int64).contiguous().numpy()
    args = (g.detach().numpy(), rows_np, cols_np, out)
    _run_split(kernels["gather"], rows.numel(), 1, args)
    return torch.from_numpy(out)


def selected_sums(g: Tensor, rows: Tensor, lin_w: Tensor, sq_w: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``lin_w @ g[rows]`` ``[a, d]`` and ``sq_w @ g[rows]**2`` ``[b, d]`` in one sweep over
    the selected rows (``sq_w=None``: no squared sums)."""
    kernels = _compile()
    assert kernels is not None
    d = g.shape[1]
    lin_np = lin_w.to(torch.float32).contiguous().numpy()
    sq_np = np.zeros((0, rows.numel()), np.float32) if sq_w is None else sq_w.to(torch.float32).contiguous().numpy()
    lin = np.zeros((lin_np.shape[0], d), np.float32)
    sq = np.zeros((sq_np.shape[0], d), np.float32)
    args = (g.detach().numpy(), rows.to(torch.int64).contiguous().numpy(), lin_np, sq_np)
    _run_split(kernels["selected_sums"], d, BLOCK_COLUMNS, args, (BLOCK_COLUMNS, lin, sq))
    return torch.from_numpy(lin), None if sq_w is None else torch.from_numpy(sq)
