"""CoresetSelector: per-example features + source labels -> the coreset (docs/method.md).

Framework-free: it sees tensors and source labels, never a model. One call to ``select``:

1. **Budgets.** Small sources (``budget.small_sources``) are kept whole; if they alone exceed
   the budget, ``budget.overflow_keep`` decides which of them stay and large sources get
   nothing. The rest of the budget is split over the large sources present
   (``budget.split_budget``).
2. **Features** (skipped by feature-free methods such as ``within_source="random"``): one pass
   over the large-source rows gives per-source sums of the Adam-normalized features
   (``normalize.AdamNormalizer``; on the first step the pool supplies the second moment) and
   the pool mean of the raw features.
3. **Sparsify**: per large source, keep the ``config.topk_dims`` coordinates with the largest
   |mean normalized feature| over that source's pool rows.
4. **Fill each large source's share** with ``config.within_source`` (``colm.selection.methods``):
   facility-location medoids (the paper; all sources stepped together), random picks, mean
   matching, cluster-stratified or norm-proportional sampling.
5. **History**: the Adam history becomes the mean moments of the selected large-source rows;
   ``match_error`` compares the trained coreset's mean with the pool's.

Cost at Phi-2 size (n = 128, d = 327,680): ``features`` is read about twice, block by block
(step 2, and step 5 over the selected rows); only ``[n_q, topk_dims]`` blocks and
``[n_q, n_q]`` similarities are ever materialized per source. No step loops over examples or
coordinates in Python. On CPU, large float32 features go through the fused numba loops of
``colm.selection.kernels``; elsewhere through torch.
"""
from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from colm.selection import passes
from colm.selection.budget import overflow_keep, small_sources, split_budget
from colm.config import CoresetConfig
from colm.selection.methods.facility_location import cluster_weights, greedy_batched, greedy_unchecked
from colm.selection.normalize import AdamNormalizer
from colm.selection.passes import all_finite
from colm.selection.similarity import check_features, similarity_unchecked
from colm.selection.methods import (
    balanced_sample,
    cluster_sample,
    mean_match,
    nnls_match,
    pps_sample,
    random_subset,
    selection_generator,
)

_STATE_VERSION = 1


@dataclass
class Selection:
    """The coreset chosen from one pool.

    Attributes:
        indices: LongTensor ``[budget]``, distinct positions in the pool, ascending.
        weights: ``[budget]`` float: how many pool examples each chosen one stands for (a kept
            small-source example stands for itself; a facility-location medoid for its cluster;
            a row drawn from a large source by another method for ``n_q / b_q`` rows of it, or
            for its Horvitz-Thompson share with "pps"). They sum to the pool size unless some
            pool rows are represented by nobody: overflow (small sources alone exceed the
            budget, all weights are 1) or a large source that got 0 slots.
        stats: numbers describing the selection (see ``CoresetSelector.select``).
        loss_weights: ``[budget]`` float, the per-example loss weights to train with: ``weights``
            when ``config.weighted``, each "pps" row's Horvitz-Thompson weight scaled to mean 1
            within its source, each "nnls" row's fitted weight (mean 1 within its source), else
            all ones (uniform, as the paper trains).
    """

    indices: Tensor
    weights: Tensor
    stats: dict[str, float] = field(default_factory=dict)
    loss_weights: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if self.loss_weights is None:
            self.loss_weights = torch.ones_like(self.weights)


@dataclass
class _Plan:
    """Step 1's bookkeeping for one pool (host tensors and ints)."""

    counts: list[int]  # pool rows per source (source order)
    rows: tuple[Tensor, ...]  # pool positions per source, ascending
    present: list[int]  # sources with rows in the pool
    large: list[int]  # large sources present
    shares: list[int]  # budget of each source in `large`
    kept: Tensor  # small-source positions kept, ascending
    n_small: int  # small-source rows in the pool
    overflow: bool

    @property
    def budget_large(self) -> int:
        return sum(self.shares)

    def to_choose(self) -> list[tuple[int, int]]:
        """(source, budget) of the large sources where a method must choose (0 < b < n_q)."""
        return [(q, b) for q, b in zip(self.large, self.shares) if 0 < b < self.counts[q]]


class CoresetSelector:
    """Select a weighted coreset from a pool of per-example gradient features.

    Args:
        config: the ``CoresetConfig`` (uses ``small_sources``, ``within_source``,
            ``similarity``, ``topk_dims``, ``adam_normalize``, ``adam_betas``, ``adam_eps``,
            ``weighted``, ``seed``).
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

    def _source_ids(self, sources: Union[Sequence[Any], Tensor], n: Optional[int]) -> Tensor:
        """Map the pool's source labels to source indices: host LongTensor ``[n]`` (``n`` None:
        as many as there are labels)."""
        what = "features have {n} rows but sources has {m} entries"
        if isinstance(sources, Tensor):
            if sources.dim() != 1:
                raise ValueError(f"sources must be 1-D, got shape {tuple(sources.shape)}")
            if sources.is_floating_point() or sources.is_complex():
                raise ValueError(f"source tensor must hold integer ids, got dtype {sources.dtype}")
            if n is not None and sources.numel() != n:
                raise ValueError(what.format(n=n, m=sources.numel()))
            values, inverse = torch.unique(sources.cpu(), return_inverse=True)
            table = torch.tensor([self._lookup(v) for v in values.tolist()], dtype=torch.long)
            return table[inverse]
        if not isinstance(sources, (str, bytes, Sequence)) and hasattr(sources, "tolist"):
            sources = sources.tolist()  # e.g. a numpy array of labels
        if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
            raise ValueError(f"sources must be a sequence of labels or a LongTensor, got {type(sources).__name__}")
        if n is not None and len(sources) != n:
            raise ValueError(what.format(n=n, m=len(sources)))
        # Labels are resolved once per distinct value; the per-example map runs in C.
        table = {v: self._lookup(v) for v in dict.fromkeys(sources)}
        return torch.tensor(list(map(table.__getitem__, sources)), dtype=torch.long)

    # --- the selection -------------------------------------------------------------------------
    def select(
        self, features: Optional[Tensor], sources: Union[Sequence[Any], Tensor], budget: int
    ) -> Selection:
        """Choose ``budget`` of the ``n`` pool examples.

        Args:
            features: ``[n, d]`` per-example gradient features (any device, floating dtype,
                finite; with Adam normalization their squares must fit in float32, i.e.
                ``|x| < 1.8e19``), or None for a feature-free ``within_source``
                ("random"), which then picks on the CPU.
            sources: ``n`` source labels (keys of ``source_sizes``, or their ``str``), or an
                integer tensor ``[n]`` of keys.
            budget: coreset size, ``1 <= budget <= n``.

        Returns:
            ``Selection`` on ``features``' device. ``stats``: ``kept_small`` (small-source
            examples kept), ``dropped_small`` and ``overflow`` (1.0 when small sources alone
            exceeded the budget), ``n_large_sources`` (present in the pool), ``budget_large``,
            ``selected/<source>`` (chosen count per source present), ``adam_step`` (history
            updates so far), ``select_ms``; with features also ``objective`` (the sum of the
            per-source objectives of the method: facility location's F, mean matching's
            squared error, 0 otherwise) and ``match_error`` (``||sum_j w_j f_j / sum_j w_j -
            mean_i f_i|| / ||mean_i f_i||`` on the raw features with the loss weights ``w``;
            the absolute error when the pool mean is 0).

        Raises:
            ValueError: features not a finite 2-D floating tensor with data (or missing when
                the method needs them); sources of the wrong length or naming a source absent
                from ``source_sizes``; budget not an integer in ``[1, n]``. A rejected call
                changes no state.
        """
        start = time.perf_counter()
        if features is None:
            if self.config.needs_features:
                raise ValueError(
                    f"features are required with within_source={self.config.within_source!r}; "
                    "only a feature-free method ('random') selects without them"
                )
            n = None
        else:
            # finiteness is checked on the pool mean, where it costs nothing extra
            check_features(features, "features", finite=False)
            n = features.shape[0]
        ids = self._source_ids(sources, n)  # [n] host
        n = ids.numel()
        if isinstance(budget, bool):
            raise ValueError(f"budget must be an integer, got {budget!r}")
        try:
            budget = operator.index(budget)
        except TypeError:
            raise ValueError(f"budget must be an integer, got {budget!r}") from None
        if not 1 <= budget <= n:
            raise ValueError(f"budget must be in [1, {n}] (the pool size), got {budget}")
        with torch.no_grad():
            selection = self._select(features, ids, budget)
        if selection.indices.unique().numel() != budget:  # every path guarantees it; be loud
            raise RuntimeError(f"internal error: the selection repeats a pool row ({selection.indices.tolist()})")
        selection.stats["select_ms"] = (time.perf_counter() - start) * 1e3
        return selection

    def _plan(self, ids: Tensor, budget: int) -> _Plan:
        """Step 1: who is kept whole, and each large source's share of the rest."""
        counts = torch.bincount(ids, minlength=len(self._keys)).tolist()  # per source, host ints
        # Pool positions grouped by source, ascending within each source (stable sort).
        rows = torch.split(torch.argsort(ids, stable=True), counts)
        present = [q for q in range(len(self._keys)) if counts[q] > 0]
        small_q = [q for q in present if self._small_flags[q]]
        large_q = [q for q in present if not self._small_flags[q]]
        n_small = sum(counts[q] for q in small_q)
        overflow = n_small > budget
        if overflow:
            kept = overflow_keep(budget, [(self.source_sizes[self._keys[q]], rows[q]) for q in small_q])
        elif small_q:
            kept = torch.sort(torch.cat([rows[q] for q in small_q])).values
        else:
            kept = torch.empty(0, dtype=torch.long)
        shares = split_budget(budget - kept.numel(), [counts[q] for q in large_q])
        return _Plan(counts, rows, present, large_q, shares, kept, n_small, overflow)

    def _select(self, g: Optional[Tensor], ids: Tensor, budget: int) -> Selection:
        device = g.device if g is not None else torch.device("cpu")
        ids_dev = ids.to(device)  # [n]
        uses_history = self.config.adam_normalize and self.config.needs_features and g is not None
        plan = self._plan(ids, budget)  # 1. budgets
        choose = plan.to_choose()
        blocks, pool_total = (  # 2-3. normalized, sparsified features of the rows to choose from
            self._feature_blocks(g, ids_dev, plan, choose, uses_history)
            if g is not None and self.config.needs_features
            else (None, None if g is None else passes.raw_total(g))
        )
        parts, objective = self._fill(plan, choose, blocks, device)  # 4. each large source's share
        indices = torch.cat([p.rows for p in parts])  # [budget]
        weight = torch.cat([p.weights for p in parts])  # [budget]
        loss_weight = weight if self.config.weighted else torch.cat([p.loss_weights for p in parts])
        indices, perm = torch.sort(indices)
        weight, loss_weight = weight.index_select(0, perm), loss_weight.index_select(0, perm)
        numbers = [objective]
        if g is not None:  # 5. match error and Adam history
            numbers.append(self._match_and_update(g, ids_dev, indices, loss_weight, pool_total, plan, uses_history))
        self.calls += 1
        stats = self._stats(plan, ids_dev.index_select(0, indices), numbers, with_features=g is not None)
        return Selection(indices=indices, weights=weight, stats=stats, loss_weights=loss_weight)

    def _fill(
        self, plan: _Plan, choose: list[tuple[int, int]], blocks: Optional[list[Tensor]], device: torch.device
    ) -> tuple[list["_Part"], Tensor]:
        """Step 4: the rows taken without choice (kept small sources, large sources that get
        every row) and each choosing source's picks by ``config.within_source``; also the sum of
        the per-source objectives (0-d float64)."""
        cfg = self.config
        parts = [_Part.uniform(plan.kept.to(device))]
        parts += [_Part.uniform(plan.rows[q].to(device)) for q, b in zip(plan.large, plan.shares) if b == plan.counts[q]]
        objective = torch.zeros((), dtype=torch.float64, device=device)
        if blocks is None:  # feature-free: uniform picks within each source
            for q, b in choose:
                local = random_subset(plan.counts[q], b, selection_generator(cfg.seed, self.calls, q))
                parts.append(_Part.sample(plan.rows[q].index_select(0, local).to(device), plan.counts[q]))
            return parts, objective
        fl_pending: list[tuple[Tensor, Tensor, int]] = []  # (rows, similarity, budget): stepped together
        for (q, b), feats in zip(choose, blocks):
            rows, n_q, method = plan.rows[q].to(device), plan.counts[q], cfg.within_source
            gen = selection_generator(cfg.seed, self.calls, q)
            if method in ("facility_location", "cluster_sample"):
                sim = _similarity(feats, cfg.similarity)  # [n_q, n_q]
                if method == "facility_location":
                    fl_pending.append((rows, sim, b))
                else:
                    parts.append(_Part.sample(rows.index_select(0, cluster_sample(sim, b, gen).to(device)), n_q))
            elif method == "mean_match":
                local, error = mean_match(feats, b)
                objective = objective + error
                parts.append(_Part.sample(rows.index_select(0, local), n_q))
            elif method == "nnls":  # weights fitted to the source's pool mean, mean 1 over its b rows
                local, lw = nnls_match(feats, b)
                parts.append(_Part(rows.index_select(0, local), lw * (n_q / b), lw))
            elif method == "balanced":
                parts.append(_Part.sample(rows.index_select(0, balanced_sample(feats, b, gen).to(device)), n_q))
            elif method == "pps":
                local, ht = pps_sample(torch.linalg.vector_norm(feats.double(), dim=1), b, gen)  # [b], [b]
                ht = ht.to(device)
                parts.append(_Part(rows.index_select(0, local.to(device)), ht * (n_q / ht.sum()), ht * (b / ht.sum())))
            else:  # validated by CoresetConfig; a new name must be wired in here
                raise RuntimeError(f"within_source {method!r} has no implementation")
        for (rows, sim, _), (picks, gains) in zip(fl_pending, _greedy_all(fl_pending)):
            parts.append(_Part(rows.index_select(0, picks), cluster_weights(sim, picks).float(), _ones(picks.numel(), device)))
            objective = objective + gains.sum().double()
        return parts, objective

    def _stats(self, plan: _Plan, src_sel: Tensor, numbers: list[Tensor], with_features: bool) -> dict[str, float]:
        """The numbers ``select`` reports, with one host sync for all of them."""
        per_source = torch.bincount(src_sel, minlength=len(self._keys))
        values = torch.cat([torch.stack([v.double() for v in numbers]), per_source.double()]).tolist()
        stats: dict[str, float] = {
            "kept_small": float(plan.kept.numel()),
            "dropped_small": float(plan.n_small - plan.kept.numel()),
            "overflow": float(plan.overflow),
            "n_large_sources": float(len(plan.large)),
            "budget_large": float(plan.budget_large),
            "adam_step": float(self.normalizer.step),
        }
        if with_features:
            stats["objective"], stats["match_error"] = values[0], values[1]
        for q in plan.present:
            stats[f"selected/{self._keys[q]}"] = values[len(numbers) + q]
        return stats

    def _feature_blocks(
        self, g: Tensor, ids_dev: Tensor, plan: _Plan, choose: list[tuple[int, int]], normalize: bool
    ) -> tuple[list[Tensor], Tensor]:
        """Steps 2-3: each choosing source's rows in the (normalized) sparsified feature space
        ``[n_q, h]``, and the raw pool total ``[d]``."""
        cfg = self.config
        n, d = g.shape
        n_sources = len(self._keys)
        topk = cfg.topk_dims if cfg.topk_dims is not None and cfg.topk_dims < d else None
        if normalize:
            self.normalizer.prepare(g)  # fixes d on the first call; ValueError if it changed
            if self.normalizer.needs_pool_moment and choose:
                # The pool's second moment over the rows compared: it stands in for the empty
                # history on the first step, and is shared by all rows with
                # adam_second_moment="pool" (see colm.selection.normalize).
                rows = torch.cat([plan.rows[q] for q, _ in choose]).to(g.device)
                mean_g2 = passes.mean_square(g, rows)  # [d]
                if not all_finite(mean_g2) and not all_finite(g):
                    raise ValueError("features contain NaN or inf values")
                self.normalizer.set_pool_moment(mean_g2)  # ValueError if the squares overflow
        if topk is not None and choose and normalize:
            source_sums, pool_total = passes.normalized_group_sums(g, ids_dev, n_sources, self.normalizer)
        elif topk is not None and choose:
            source_sums = passes.raw_group_sums(g, ids_dev, n_sources)  # [S, d]
            pool_total = source_sums.sum(dim=0)
        else:  # nothing to rank: only the pool total is needed
            source_sums, pool_total = None, passes.raw_total(g)
        _check_magnitude(pool_total, g)
        if source_sums is not None and not all_finite(source_sums):
            raise ValueError("features are too large: their normalized sums overflow float32")
        blocks = []
        for q, _ in choose:
            rows = plan.rows[q].to(g.device)  # [n_q]
            if topk is not None:
                # Sorted columns make the gather walk each row forward in memory (~4x faster on
                # CPU than topk's arbitrary order); |mean| ranks like |sum| within a source.
                cols = passes.top_columns(source_sums[q].abs(), topk)  # [h], ascending
                block = passes.gather(g, rows, cols)  # [n_q, h]
            else:
                cols, block = None, g.index_select(0, rows)  # [n_q, d]
            blocks.append(self.normalizer.transform(block, cols) if normalize else block.float())
        return blocks, pool_total

    def _match_and_update(
        self, g: Tensor, ids_dev: Tensor, indices: Tensor, loss_weight: Tensor, pool_total: Tensor,
        plan: _Plan, update: bool,
    ) -> Tensor:
        """Step 5, one pass over the selected rows: the match error of the trained coreset, and
        the Adam history update from the selected large-source rows. Returns the match error."""
        n = g.shape[0]
        is_large_sel = (~self._is_small).to(g.device)[ids_dev.index_select(0, indices)]  # [budget]
        lin_w = [loss_weight / loss_weight.sum()]  # weighted mean of the trained coreset
        sq_w: Optional[Tensor] = None
        update = update and plan.budget_large > 0
        if update:
            mean_w = is_large_sel.float() / plan.budget_large  # [budget]
            lin_w.append(mean_w)
            sq_w = mean_w.unsqueeze(0)
        lin, sq = passes.selected_sums(g, indices, torch.stack(lin_w), sq_w)
        pool_mean = pool_total.double() / n
        diff = torch.linalg.vector_norm(lin[0].double() - pool_mean)
        scale = torch.linalg.vector_norm(pool_mean)
        match_error = torch.where(scale > 0, diff / scale, diff)
        if update:
            self.normalizer.update_from_moments(lin[1], sq[0])  # ValueError (no change) on overflow
        return match_error

    # --- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to select exactly what this one would."""
        return {"version": _STATE_VERSION, "calls": self.calls, "normalizer": self.normalizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            version = state.get("version") if isinstance(state, Mapping) else None
            raise ValueError(f"unsupported selector state version {version!r}")
        calls = state.get("calls")
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
            raise ValueError(f"selector state: calls must be an integer >= 0, got {calls!r}")
        self.normalizer.load_state_dict(state["normalizer"])
        self.calls = calls


def _ones(k: int, device: torch.device) -> Tensor:
    return torch.ones(k, dtype=torch.float32, device=device)


@dataclass
class _Part:
    """Some of the chosen rows, with their weights (see ``Selection``)."""

    rows: Tensor  # [k] pool positions
    weights: Tensor  # [k] how many pool rows each stands for
    loss_weights: Tensor  # [k]

    @classmethod
    def uniform(cls, rows: Tensor) -> "_Part":
        """Rows taken whole: each stands for itself."""
        return cls(rows, _ones(rows.numel(), rows.device), _ones(rows.numel(), rows.device))

    @classmethod
    def sample(cls, rows: Tensor, n_source: int) -> "_Part":
        """An unweighted pick of ``len(rows)`` of a source's ``n_source`` rows."""
        k = rows.numel()
        return cls(rows, torch.full((k,), n_source / k, device=rows.device), _ones(k, rows.device))


def _similarity(feats: Tensor, metric: str) -> Tensor:
    """Facility location's ``[n_q, n_q]`` similarity, float64: the gains of a greedy step then
    hardly depend on row order (a permuted pool gives the permuted choice), and cosine is
    shifted into [0, 2] so that, as with l1/l2, every row counts in the objective
    (facility_location ignores negative similarities)."""
    sim = similarity_unchecked(feats, metric).double()
    return sim + 1.0 if metric == "cosine" else sim


def _check_magnitude(total: Tensor, g: Tensor) -> None:
    """ValueError unless the pool total ``[d]`` is finite. Any NaN/inf feature makes its
    column's total non-finite, so a good pool pays one ``[d]`` check; ``g`` is inspected only
    to tell NaN/inf input from finite features whose sum overflows."""
    if all_finite(total):
        return
    if not all_finite(g):
        raise ValueError("features contain NaN or inf values")
    raise ValueError("features are too large: their sum over the pool overflows float32")


def _greedy_all(pending: Sequence[tuple[Tensor, Tensor, int]]) -> list[tuple[Tensor, Tensor]]:
    """Facility location for every source: batched when padding to the largest source wastes
    at most half the work (sources of similar size, the usual case), else one by one."""
    if not pending:
        return []
    sizes = [sim.shape[0] for _, sim, _ in pending]
    if len(pending) > 1 and len(sizes) * max(sizes) ** 2 <= 2 * sum(n * n for n in sizes):
        return greedy_batched([sim for _, sim, _ in pending], [b for _, _, b in pending])
    return [greedy_unchecked(sim, b) for _, sim, b in pending]


