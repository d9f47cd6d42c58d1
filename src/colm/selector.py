"""CoresetSelector: per-example features + source labels -> the coreset (METHOD.md steps 2, 4-7).

Framework-free: it sees tensors and source labels, never a model. One call to ``select``:

1. small sources (``budget.small_sources``) are kept whole; if they alone exceed the budget,
   ``budget.overflow_keep`` decides which of them stay and large sources get nothing;
2. the remaining budget is split over the large sources present (``budget.split_budget``);
3. large-source rows are Adam-normalized against the history (``normalize.AdamNormalizer``),
   when ``config.adam_normalize``;
4. per large source: keep the ``config.topk_dims`` coordinates with the largest
   |mean normalized feature| over that source's pool rows, build ``pairwise_similarity`` and run
   greedy facility location with that source's budget (all sources stepped together when their
   sizes are similar); weights are cluster sizes (``facility.cluster_weights``). For the
   "cosine" metric the similarity is shifted to ``1 + cos`` so that, as with l1/l2, it is
   non-negative and every row counts in the objective;
5. the Adam history becomes the mean moments of the selected large-source rows.

Cost at Phi-2 size (n = 128, d = 327,680): ``features`` is read about twice, block by block
(step 3's per-source means, and step 5 over the selected rows); only ``[n_q, topk_dims]``
blocks and ``[n_q, n_q]`` similarities are ever materialized per source. No step loops over
examples or coordinates in Python, and the only host syncs are the budget bookkeeping, one
finiteness check and the final stats. On CPU, large float32 features go through the fused numba
loops of ``colm.cpu_kernels`` (pass 1, the column gather and pass 2); elsewhere through torch.
"""
from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from colm import cpu_kernels
from colm.budget import overflow_keep, small_sources, split_budget
from colm.config import CoresetConfig
from colm.facility import cluster_weights, greedy_batched, greedy_unchecked
from colm.normalize import AdamNormalizer, column_blocks, group_sums
from colm.similarity import check_features, similarity_unchecked

_STATE_VERSION = 1


@dataclass
class Selection:
    """The coreset chosen from one pool.

    Attributes:
        indices: LongTensor ``[budget]``, distinct positions in the pool, ascending.
        weights: ``[budget]`` float cluster sizes: how many pool examples each chosen one stands
            for (a kept small-source example stands for itself). They sum to the pool size
            unless some pool rows are represented by nobody: overflow (small sources alone
            exceed the budget, all weights are 1) or a large source that got 0 slots.
        stats: numbers describing the selection (see ``CoresetSelector.select``).
    """

    indices: Tensor
    weights: Tensor
    stats: dict[str, float] = field(default_factory=dict)


class CoresetSelector:
    """Select a weighted coreset from a pool of per-example gradient features.

    Args:
        config: the ``CoresetConfig`` (uses ``small_sources``, ``similarity``, ``topk_dims``,
            ``adam_normalize``, ``adam_betas``, ``adam_eps``).
        source_sizes: dataset-level example count per source (decides which sources are small).
            Its iteration order is the "source order" used to break ties.
    """

    def __init__(self, config: CoresetConfig, source_sizes: Mapping[Union[str, int], int]) -> None:
        if not isinstance(config, CoresetConfig):
            raise ValueError(f"config must be a CoresetConfig, got {type(config).__name__}")
        if not isinstance(source_sizes, Mapping) or len(source_sizes) == 0:
            raise ValueError("source_sizes must be a non-empty mapping source -> dataset size")
        for key, size in source_sizes.items():
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"source_sizes[{key!r}] must be an integer >= 0, got {size!r}")
        self.config = config
        self.source_sizes: dict[Hashable, int] = dict(source_sizes)
        self._keys: list[Hashable] = list(self.source_sizes)
        self._index = {k: i for i, k in enumerate(self._keys)}
        self._by_name: dict[str, int] = {}
        for i, k in enumerate(self._keys):
            if str(k) in self._by_name:
                raise ValueError(f"source names {k!r} and {self._keys[self._by_name[str(k)]]!r} collide as strings")
            self._by_name[str(k)] = i
        small = small_sources(config.small_sources, self.source_sizes)
        self._small_flags = [k in small for k in self._keys]  # host logic
        self._is_small = torch.tensor(self._small_flags, dtype=torch.bool)  # [S], device lookups
        self.normalizer = AdamNormalizer.from_config(config)
        self.calls = 0

    @property
    def small_source_names(self) -> list[Hashable]:
        """The sources kept whole, in source order."""
        return [k for k, s in zip(self._keys, self._small_flags) if s]

    # --- input handling ------------------------------------------------------------------------
    def _lookup(self, value: Any) -> int:
        try:
            return self._index[value]
        except (KeyError, TypeError):
            pass
        name = str(value)
        if name in self._by_name:
            return self._by_name[name]
        raise ValueError(
            f"source {value!r} is not in source_sizes (known sources: {sorted(self._by_name)})"
        )

    def _source_ids(self, sources: Union[Sequence[Any], Tensor], n: int) -> Tensor:
        """Map the pool's source labels to source indices: host LongTensor ``[n]``."""
        if isinstance(sources, Tensor):
            if sources.dim() != 1:
                raise ValueError(f"sources must be 1-D, got shape {tuple(sources.shape)}")
            if sources.is_floating_point() or sources.is_complex():
                raise ValueError(f"source tensor must hold integer ids, got dtype {sources.dtype}")
            if sources.numel() != n:
                raise ValueError(f"features have {n} rows but sources has {sources.numel()} entries")
            values, inverse = torch.unique(sources.cpu(), return_inverse=True)
            table = torch.tensor([self._lookup(v) for v in values.tolist()], dtype=torch.long)
            return table[inverse]
        if not isinstance(sources, (str, bytes, Sequence)) and hasattr(sources, "tolist"):
            sources = sources.tolist()  # e.g. a numpy array of labels
        if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
            raise ValueError(f"sources must be a sequence of labels or a LongTensor, got {type(sources).__name__}")
        if len(sources) != n:
            raise ValueError(f"features have {n} rows but sources has {len(sources)} entries")
        # Labels are resolved once per distinct value; the per-example map runs in C.
        table = {v: self._lookup(v) for v in dict.fromkeys(sources)}
        return torch.tensor(list(map(table.__getitem__, sources)), dtype=torch.long)

    # --- the selection -------------------------------------------------------------------------
    def select(
        self, features: Tensor, sources: Union[Sequence[Any], Tensor], budget: int
    ) -> Selection:
        """Choose ``budget`` of the ``n`` pool examples.

        Args:
            features: ``[n, d]`` per-example gradient features (any device, floating dtype).
            sources: ``n`` source labels (keys of ``source_sizes``, or their ``str``), or an
                integer tensor ``[n]`` of keys.
            budget: coreset size, ``1 <= budget <= n``.

        Returns:
            ``Selection`` on ``features``' device. ``stats``: ``kept_small`` (small-source
            examples kept), ``dropped_small`` and ``overflow`` (1.0 when small sources alone
            exceeded the budget), ``n_large_sources`` (present in the pool), ``budget_large``,
            ``selected/<source>`` (chosen count per source present), ``objective`` (sum of the
            facility-location objectives of the sources where it ran), ``match_error``
            (``||sum_j w_j f_j / sum_j w_j - mean_i f_i|| / ||mean_i f_i||`` on the raw
            features; the absolute error when the pool mean is 0), ``adam_step`` (history
            updates so far) and ``select_ms``.

        Raises:
            ValueError: features not a finite 2-D floating tensor; sources of the wrong length
                or naming a source absent from ``source_sizes``; budget not in ``[1, n]``.
        """
        start = time.perf_counter()
        # finiteness is checked once, on the pool mean, where it costs nothing extra
        check_features(features, "features", finite=False)
        n, d = features.shape
        try:
            budget = operator.index(budget)
        except TypeError:
            raise ValueError(f"budget must be an integer, got {budget!r}") from None
        if isinstance(budget, bool) or not 1 <= budget <= n:
            raise ValueError(f"budget must be in [1, {n}] (the pool size), got {budget}")
        ids = self._source_ids(sources, n)  # [n] host
        with torch.no_grad():
            selection = self._select(features, ids, budget)
        selection.stats["select_ms"] = (time.perf_counter() - start) * 1e3
        return selection

    def _select(self, g: Tensor, ids: Tensor, budget: int) -> Selection:
        cfg = self.config
        device = g.device
        n, d = g.shape
        n_sources = len(self._keys)
        counts = torch.bincount(ids, minlength=n_sources).tolist()  # per source, host ints
        # Pool positions grouped by source, ascending within each source (stable sort).
        order = torch.argsort(ids, stable=True)
        rows_host = torch.split(order, counts)
        present = [q for q in range(n_sources) if counts[q] > 0]
        small_q = [q for q in present if self._small_flags[q]]
        large_q = [q for q in present if not self._small_flags[q]]

        # Steps 2 and 6: small sources first, the rest split over large sources.
        n_small = sum(counts[q] for q in small_q)
        overflow = n_small > budget
        if overflow:
            kept = overflow_keep(budget, [(self.source_sizes[self._keys[q]], rows_host[q]) for q in small_q])
        elif small_q:
            kept = torch.sort(torch.cat([rows_host[q] for q in small_q])).values
        else:
            kept = torch.empty(0, dtype=torch.long)
        budget_large = budget - kept.numel()
        shares = split_budget(budget_large, [counts[q] for q in large_q])

        topk = cfg.topk_dims if cfg.topk_dims is not None and cfg.topk_dims < d else None
        # Coordinates need ranking only where facility location actually chooses (0 < b_q < n_q).
        rank = topk is not None and any(0 < b < counts[q] for q, b in zip(large_q, shares))

        # Pass 1 over the features: per-source sums of the (normalized) features, to rank
        # coordinates by, and the pool mean (match error, finiteness check).
        ids_dev = ids.to(device)  # [n]
        if cfg.adam_normalize and large_q:
            self.normalizer.prepare(g)  # fixes d on the first call; ValueError if it changed
        if cfg.adam_normalize and rank:
            source_sums, pool_total = self.normalizer.feature_sums(g, ids_dev, n_sources)
        elif rank:
            source_sums = _raw_group_sums(g, ids_dev, n_sources)  # [S, d]
            pool_total = source_sums.sum(dim=0)
        else:  # nothing to rank: only the pool mean is needed
            source_sums, pool_total = None, _raw_total(g)
        pool_mean = pool_total / n  # [d]
        if not bool(torch.isfinite(pool_mean).all()):
            # Any NaN/inf entry makes its column's mean non-finite; finite inputs only get here
            # when the sum itself overflows.
            if not bool(torch.isfinite(g).all()):
                raise ValueError("features contain NaN or inf values")
            raise ValueError("features are too large: their mean overflows float32")

        # Step 7 per large source.
        chosen = [kept.to(device)]
        weights = [torch.ones(kept.numel(), dtype=torch.float32, device=device)]
        objective = torch.zeros((), dtype=torch.float32, device=device)
        pending: list[tuple[Tensor, Tensor, int]] = []  # (rows, similarity, budget) per source
        for q, b in zip(large_q, shares):
            if b == 0:
                continue
            rows = rows_host[q].to(device)  # [n_q]
            if b == counts[q]:
                chosen.append(rows)
                weights.append(torch.ones(b, dtype=torch.float32, device=device))
                continue
            if topk is not None:
                # Step 5. Sorted columns make the gather walk each row forward in memory
                # (~4x faster on CPU than topk's arbitrary order).
                score = source_sums[q].abs()  # [d]; |mean| ranks like |sum| within a source
                cols = _top_columns(score, topk)  # [h], ascending
                block = _gather(g, rows, cols)  # [n_q, h]
            else:
                cols = None
                block = g.index_select(0, rows)  # [n_q, d]
            feats = self.normalizer.transform(block, cols) if cfg.adam_normalize else block.float()
            # feats are finite: the input passed the check above and normalization cannot
            # create NaN/inf, so the public functions' validation (a host sync each) is skipped.
            sim = similarity_unchecked(feats, cfg.similarity)  # [n_q, n_q]
            if cfg.similarity == "cosine":
                # Shift cosine into [0, 2] so every row counts in the objective, as with l1/l2
                # (facility_location ignores negative similarities).
                sim = sim + 1.0
            pending.append((rows, sim, b))
        for (rows, sim, _), (picks, gains) in zip(pending, _greedy_all(pending)):
            chosen.append(rows.index_select(0, picks))
            weights.append(cluster_weights(sim, picks).float())
            objective = objective + gains.sum().float()

        indices = torch.cat(chosen)  # [budget]
        weight = torch.cat(weights)  # [budget]
        indices, perm = torch.sort(indices)
        weight = weight.index_select(0, perm)

        # Pass 2 over the selected rows: match error, and the Adam history update.
        src_sel = ids_dev.index_select(0, indices)  # [budget] source of each chosen row
        is_large_sel = (~self._is_small).to(device)[src_sel]  # [budget]
        n_large_sel = budget_large
        lin_w = [weight / weight.sum()]  # weighted mean of the coreset
        sq_w: Optional[Tensor] = None
        update = cfg.adam_normalize and n_large_sel > 0
        if update:
            mean_w = is_large_sel.float() / n_large_sel  # [budget]
            lin_w.append(mean_w)
            sq_w = mean_w.unsqueeze(0)
        lin, sq = _selected_sums(g, indices, torch.stack(lin_w), sq_w)
        diff = torch.linalg.vector_norm(lin[0] - pool_mean)
        scale = torch.linalg.vector_norm(pool_mean)
        match_error = torch.where(scale > 0, diff / scale, diff)
        if update:
            self.normalizer.update_from_moments(lin[1], sq[0])
        self.calls += 1

        # One host sync for every number reported.
        per_source = torch.bincount(src_sel, minlength=n_sources)
        numbers = torch.cat([torch.stack([objective, match_error.float()]), per_source.float()]).tolist()
        stats: dict[str, float] = {
            "kept_small": float(kept.numel()),
            "dropped_small": float(n_small - kept.numel()),
            "overflow": float(overflow),
            "n_large_sources": float(len(large_q)),
            "budget_large": float(budget_large),
            "objective": numbers[0],
            "match_error": numbers[1],
            "adam_step": float(self.normalizer.step),
        }
        for q in present:
            stats[f"selected/{self._keys[q]}"] = numbers[2 + q]
        return Selection(indices=indices, weights=weight, stats=stats)

    # --- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to select exactly what this one would."""
        return {"version": _STATE_VERSION, "calls": self.calls, "normalizer": self.normalizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported selector state version {state.get('version')!r}")
        self.calls = int(state["calls"])
        self.normalizer.load_state_dict(state["normalizer"])


def _raw_group_sums(g: Tensor, groups: Tensor, n_groups: int) -> Tensor:
    """Per-group sums of the raw rows ``[n_groups, d]`` (float32), block by block."""
    n, d = g.shape
    if g.dtype == torch.float32 and g.device.type == "cpu":
        return group_sums(g, groups, n_groups)  # one pass, no copy of g
    out = torch.empty(n_groups, d, dtype=torch.float32, device=g.device)
    for cols in column_blocks(n, d, g.device):
        out[:, cols] = group_sums(g[:, cols], groups, n_groups)
    return out


def _raw_total(g: Tensor) -> Tensor:
    """Sum of the rows ``[d]`` in float32 (half inputs are upcast block by block)."""
    if g.dtype == torch.float32:
        return g.sum(dim=0)
    n, d = g.shape
    out = torch.empty(d, dtype=torch.float32, device=g.device)
    for cols in column_blocks(n, d, g.device):
        out[cols] = g[:, cols].float().sum(dim=0)
    return out


def _greedy_all(pending: Sequence[tuple[Tensor, Tensor, int]]) -> list[tuple[Tensor, Tensor]]:
    """Facility location for every source: batched when padding to the largest source wastes
    at most half the work (sources of similar size, the usual case), else one by one."""
    if not pending:
        return []
    sizes = [sim.shape[0] for _, sim, _ in pending]
    if len(pending) > 1 and len(sizes) * max(sizes) ** 2 <= 2 * sum(n * n for n in sizes):
        return greedy_batched([sim for _, sim, _ in pending], [b for _, _, b in pending])
    return [greedy_unchecked(sim, b) for _, sim, b in pending]


def _top_columns(score: Tensor, k: int) -> Tensor:
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


def _gather(g: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``g[rows][:, cols]`` ``[len(rows), len(cols)]`` without copying whole rows."""
    if cpu_kernels.applicable(g):
        return cpu_kernels.gather(g, rows, cols)
    if not g.is_contiguous():
        return g[rows.unsqueeze(1), cols.unsqueeze(0)]
    # Flat offsets into contiguous g: one take() is cheaper than two-tensor advanced indexing.
    offsets = rows.unsqueeze(1) * g.shape[1] + cols.unsqueeze(0)  # [n_q, h]
    return g.reshape(-1).take(offsets)


def _selected_sums(
    g: Tensor, rows: Tensor, lin_w: Tensor, sq_w: Optional[Tensor]
) -> tuple[Tensor, Optional[Tensor]]:
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
        if sq is not None:
            sq[:, cols] = sq_w @ block.square_()
    return lin, sq
