"""CoresetSelector: per-example features + source labels -> the coreset (docs/method.md).

Framework-free: it sees tensors and source labels, never a model. The step numbers are those of
docs/method.md ("One optimizer step"); one call to ``select`` runs steps 2 and 4-7:

- **Steps 2 and 6, budgets.** Small sources (``budget.small_sources``) are kept whole; if they
  alone exceed the budget, ``budget.overflow_keep`` decides which of them stay and large
  sources get nothing. The rest of the budget is split over the large sources present
  (``budget.split_budget``).
- **Step 4, Adam normalization** (skipped by feature-free methods such as
  ``within_source="random"``): one pass over the large-source rows gives per-source sums of the
  Adam-normalized features (``normalize.AdamNormalizer``; on the first step the pool supplies
  the second moment) and the pool mean of the raw features.
- **Step 5, sparsify**: per large source, keep the ``config.topk_dims`` coordinates with the
  largest |mean normalized feature| over that source's pool rows.
- **Step 7, fill each large source's share** with the method ``config.within_source`` names in
  ``colm.selection.methods.registry``; its weight rule gives the weights.
- **After step 7, the history** (the end of step 4): the Adam history becomes the mean moments
  of the selected large-source rows; ``match_error`` compares the trained coreset's mean with
  the pool's.

Cost at Phi-2 size (n = 128, d = 327,680): ``features`` is read about twice, block by block
(step 4, and the history update over the selected rows); only ``[n_q, topk_dims]`` blocks and
``[n_q, n_q]`` similarities are ever materialized per source. No step loops over examples or
coordinates in Python. On CPU, large float32 features go through the fused numba loops of
``colm.selection.kernels``; elsewhere through torch.
"""
from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from colm.config import CoresetConfig
from colm.errors import check_budget, check_int
from colm.selection import passes
from colm.selection.budget import overflow_keep, small_sources, split_budget
from colm.selection.methods.random import selection_generator
from colm.selection.methods.registry import get_method
from colm.selection.methods.task import SourceTask, weigh
from colm.selection.normalize import AdamNormalizer
from colm.selection.passes import all_finite
from colm.selection.similarity import check_features

_STATE_VERSION = 1


@dataclass
class Selection:
    """The coreset chosen from one pool.

    Attributes:
        indices: LongTensor ``[budget]``, distinct positions in the pool, ascending.
        weights: ``[budget]`` float: how many pool examples each chosen one stands for (a kept
            small-source example stands for itself; a facility-location medoid for its cluster;
            a row of an unweighted sample of a large source for ``n_q / b_q`` rows of it; a
            "pps" row for its Horvitz-Thompson share). They sum to the pool size unless some
            pool rows are represented by nobody: overflow (small sources alone exceed the
            budget, all weights are 1) or a large source that got 0 slots. Descriptive: they
            are not what training multiplies the loss by.
        stats: numbers describing the selection (see ``CoresetSelector.select``).
        loss_weights: ``[budget]`` float, the per-example loss weights to train with. 1 for
            every row except: a facility-location medoid trains with its cluster size when
            ``config.weighted`` (the one method whose weights are a choice); a "pps" row with
            its Horvitz-Thompson weight scaled to mean 1 within its source (always: the weight
            is part of that estimator); an "nnls" row with its fitted weight, mean 1 within its
            source (always: the weights are the method). ``weighted`` changes nothing for the other methods.
    """

    indices: Tensor
    weights: Tensor
    stats: dict[str, float] = field(default_factory=dict)
    loss_weights: Tensor | None = None

    def __post_init__(self) -> None:
        if self.loss_weights is None:
            self.loss_weights = torch.ones_like(self.weights)


@dataclass
class _Plan:
    """Steps 2 and 6's bookkeeping for one pool (host tensors and ints)."""

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
            ``weighted``, ``selection_seed``).
        source_sizes: dataset-level example count per source (decides which sources are small).
            Its iteration order is the "source order" used to break ties.
    """

    def __init__(self, config: CoresetConfig, source_sizes: Mapping[Hashable, int]) -> None:
        if not isinstance(config, CoresetConfig):
            raise ValueError(f"config must be a CoresetConfig, got {type(config).__name__}")
        if not isinstance(source_sizes, Mapping) or len(source_sizes) == 0:
            raise ValueError("source_sizes must be a non-empty mapping source -> dataset size")
        for key, size in source_sizes.items():
            check_int(f"source_sizes[{key!r}]", size, 0)
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

    def _source_ids(self, sources: Sequence[Any] | Tensor, n: int | None) -> Tensor:
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
        ids = {v: self._lookup(v) for v in dict.fromkeys(sources)}
        return torch.tensor(list(map(ids.__getitem__, sources)), dtype=torch.long)

    # --- the selection -------------------------------------------------------------------------
    def rows_read(self, sources: Sequence[Any] | Tensor) -> Tensor:
        """Bool ``[n]``: the pool rows whose features a selection reads, i.e. the rows of large
        sources. A small source is kept whole whatever its features say, so a caller may skip
        scoring its rows and pass zeros there with ``scored=rows_read(sources)``."""
        ids = self._source_ids(sources, None)  # [n] host
        return ~self._is_small[ids]

    def select(
        self, features: Tensor | None, sources: Sequence[Any] | Tensor, budget: int,
        scored: Tensor | None = None,
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
            scored: optional bool ``[n]``, the rows whose features were computed; the others
                must hold zeros. It must cover ``rows_read(sources)`` (the selection is then the
                same as with every row scored); ``match_error`` compares means over it only.

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
        budget = check_budget(budget, 1, n, what="the pool size")
        if scored is not None:
            scored = self._check_scored(scored, ids)
        with torch.no_grad():
            selection = self._select(features, ids, budget, scored)
        if selection.indices.unique().numel() != budget:  # every path guarantees it; be loud
            raise RuntimeError(f"internal error: the selection repeats a pool row ({selection.indices.tolist()})")
        selection.stats["select_ms"] = (time.perf_counter() - start) * 1e3
        return selection

    def _check_scored(self, scored: Tensor, ids: Tensor) -> Tensor:
        """``scored`` as a host bool ``[n]`` that covers every row a selection reads."""
        scored = torch.as_tensor(scored).cpu()
        if scored.dtype != torch.bool or scored.shape != ids.shape:
            raise ValueError(f"scored must be a bool tensor [{ids.numel()}], got {scored.dtype} {tuple(scored.shape)}")
        missing = ~scored & ~self._is_small[ids]
        if bool(missing.any()):
            raise ValueError(f"scored leaves out {int(missing.sum())} large-source row(s) whose features the "
                             "selection reads (see rows_read)")
        return scored

    def _plan(self, ids: Tensor, budget: int) -> _Plan:
        """Steps 2 and 6: who is kept whole, and each large source's share of the rest."""
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

    def _select(self, g: Tensor | None, ids: Tensor, budget: int, scored: Tensor | None = None) -> Selection:
        device = g.device if g is not None else torch.device("cpu")
        ids_dev = ids.to(device)  # [n]
        uses_history = self.config.adam_normalize and self.config.needs_features and g is not None
        plan = self._plan(ids, budget)  # steps 2, 6: budgets
        choose = plan.to_choose()
        blocks, pool_total = (  # steps 4-5: normalized, sparsified features of the rows to choose from
            self._feature_blocks(g, ids_dev, plan, choose, uses_history)
            if g is not None and self.config.needs_features
            else (None, None if g is None else passes.raw_total(g))
        )
        parts, objective = self._fill(plan, choose, blocks, device)  # step 7: each large source's share
        indices = torch.cat([p.rows for p in parts])  # [budget]
        weight = torch.cat([p.weights for p in parts])  # [budget]
        loss_weight = torch.cat([p.loss_weights for p in parts])  # [budget]
        indices, perm = torch.sort(indices)
        weight, loss_weight = weight.index_select(0, perm), loss_weight.index_select(0, perm)
        numbers = [objective]
        if g is not None:  # match error and the end of step 4: Adam history
            assert pool_total is not None  # computed whenever there are features
            numbers.append(self._match_and_update(g, ids_dev, indices, loss_weight, pool_total, plan, uses_history,
                                                  scored))
        self.calls += 1
        stats = self._stats(plan, ids_dev.index_select(0, indices), numbers, with_features=g is not None)
        return Selection(indices=indices, weights=weight, stats=stats, loss_weights=loss_weight)

    def _fill(
        self, plan: _Plan, choose: list[tuple[int, int]], blocks: list[Tensor] | None, device: torch.device
    ) -> tuple[list[_Part], Tensor]:
        """Step 7: the rows taken without choice (kept small sources, large sources that get
        every row) and each choosing source's picks by the registered ``config.within_source``
        method; also the sum of the per-source objectives (0-d float64)."""
        cfg = self.config
        method = get_method(cfg.within_source)
        parts = [_Part.uniform(plan.kept.to(device))]
        whole = [q for q, b in zip(plan.large, plan.shares) if b == plan.counts[q]]  # sources taken whole
        parts += [_Part.uniform(plan.rows[q].to(device)) for q in whole]
        objective = torch.zeros((), dtype=torch.float64, device=device)
        features: list[Tensor | None] = list(blocks) if blocks is not None else [None] * len(choose)
        tasks = [
            SourceTask(plan.counts[q], b, feats, selection_generator(cfg.effective_seed, self.calls, q))
            for (q, b), feats in zip(choose, features)
        ]
        picks = method.fill_function()(tasks, cfg) if tasks else []
        if len(picks) != len(tasks):
            raise RuntimeError(f"within_source {method.name!r} returned {len(picks)} picks for {len(tasks)} sources")
        for (q, b), pick in zip(choose, picks):
            rows = plan.rows[q].to(device).index_select(0, pick.local.to(device))  # [b] pool positions
            weights, loss_weights = weigh(method.weights, pick, plan.counts[q], b, cfg.weighted, device)
            parts.append(_Part(rows, weights, loss_weights))
            if pick.objective is not None:
                objective = objective + pick.objective
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
        """Steps 4-5: each choosing source's rows in the (normalized) sparsified feature space
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
                assert source_sums is not None  # ranked whenever topk is set and sources choose
                cols = passes.top_columns(source_sums[q].abs(), topk)  # [h], ascending
                block = passes.gather(g, rows, cols)  # [n_q, h]
            else:
                cols, block = None, g.index_select(0, rows)  # [n_q, d]
            blocks.append(self.normalizer.transform(block, cols) if normalize else block.float())
        return blocks, pool_total

    def _match_and_update(
        self, g: Tensor, ids_dev: Tensor, indices: Tensor, loss_weight: Tensor, pool_total: Tensor,
        plan: _Plan, update: bool, scored: Tensor | None = None,
    ) -> Tensor:
        """After step 7, one pass over the selected rows: the match error of the trained coreset, and
        the Adam history update from the selected large-source rows. Returns the match error
        (over the ``scored`` rows only when given: unscored rows hold zeros, not features)."""
        n = g.shape[0]
        is_large_sel = (~self._is_small).to(g.device)[ids_dev.index_select(0, indices)]  # [budget]
        if scored is not None:
            n = int(scored.sum())
            if n == 0:  # no large source in the pool: nothing was scored, nothing to compare or learn
                return torch.zeros((), dtype=torch.float64, device=g.device)
            loss_weight = loss_weight * scored.to(g.device)[indices].to(loss_weight.dtype)  # [budget]
        lin_w = [loss_weight / loss_weight.sum()]  # weighted mean of the trained coreset
        sq_w: Tensor | None = None
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
            assert sq is not None  # asked for with sq_w
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
        calls = check_int("calls", state.get("calls"), 0, owner="selector state")
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
    def uniform(cls, rows: Tensor) -> _Part:
        """Rows taken whole: each stands for itself."""
        return cls(rows, _ones(rows.numel(), rows.device), _ones(rows.numel(), rows.device))


def _check_magnitude(total: Tensor, g: Tensor) -> None:
    """ValueError unless the pool total ``[d]`` is finite. Any NaN/inf feature makes its
    column's total non-finite, so a good pool pays one ``[d]`` check; ``g`` is inspected only
    to tell NaN/inf input from finite features whose sum overflows."""
    if all_finite(total):
        return
    if not all_finite(g):
        raise ValueError("features contain NaN or inf values")
    raise ValueError("features are too large: their sum over the pool overflows float32")
