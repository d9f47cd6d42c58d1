"""CoresetTrainer: `transformers.Trainer` with online coreset selection at every optimizer step.

A thin adapter. The Trainer's own loop runs unchanged; colm plugs into three extension points:

* the training DataLoader yields *rows* (uncollated examples) in chunks `pool_factor` times the
  per-device batch, so one optimizer step's `gradient_accumulation_steps` chunks form the pool and
  an epoch stays one pass over the data;
* `get_batch_samples` (called once per optimizer step) scores the pool without gradients (unless
  the selection needs no features, as `within_source="random"`), selects the coreset, and
  returns exactly the number of micro-batches the loop expects, collated by the user's
  collator, with `num_items_in_batch` recomputed over the coreset;
* checkpoints carry the selector state (tensors + JSON, no pickle), restored by
  `resume_from_checkpoint`.

Pool rows without a supervised token (every label -100 after the shift) carry no training
signal: they are never scored or selected, do not count as pool members, and are counted in
the step's stats (`coreset/unsupervised_rows`), with a warning the first time.

`per_device_train_batch_size` x `gradient_accumulation_steps` x world size keeps its meaning: the
batch the optimizer steps on. The `source` column reaches the selector only, never the model or
the user's collator.

Private members of `transformers.Trainer` are used only through `colm.integrations._hf_compat`
(tests/test_hf_compat.py checks the installed transformers has them all).
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import Trainer

from colm import distributed
from colm.columns import IGNORE_INDEX, SOURCE
from colm.config import CoresetConfig
from colm.data.sources import SINGLE_SOURCE, count_sources, source_labels
from colm.features import gradient_features, per_example_nll
from colm.files import truncate_jsonl
from colm.integrations import _hf_compat as hf
from colm.integrations._hf_compat import PrivateOverrides
from colm.integrations.checkpoints import (
    CheckpointError,
    check_checkpoint_files,
    checkpoint_step,
    resume_checkpoint,
)
from colm.integrations.launch import check_launch
from colm.integrations.noise_scale import NoiseScaleCallback, NoiseScaleSplitMixin, add_noise_scale
from colm.integrations.non_finite import check_finite, check_weights
from colm.integrations.packing import check_one_row_per_example, check_unpacked
from colm.integrations.pool_size import check_training_pool, pool_size
from colm.integrations.precision import warn_slow_half_precision
from colm.integrations.pseudo_sources import PseudoSources
from colm.integrations.selection_log import SELECTIONS_FILE, append_selection
from colm.integrations.sharding import check_sharding
from colm.integrations.streams import IndexedStream, given_source_sizes, is_stream
from colm.selection.selector import CoresetSelector, Selection
from colm.selection.state import load_selector_state, save_selector_state

logger = logging.getLogger(__name__)

ID_KEY = "colm_example_id"
WEIGHT_KEY = "colm_weight"
#: Examples the optimizer step trains on, over all micro-batches and ranks (loss_average="example").
STEP_EXAMPLES_KEY = "colm_step_examples"
SELECTOR_STATE_FILE = "colm_selector.safetensors"
#: Written by colm before the safetensors format (pickle): still read, with weights_only=True.
LEGACY_SELECTOR_STATE_FILE = "colm_selector.pt"
_PRIVATE_KEYS = (SOURCE, ID_KEY)


class _IndexedRows(Dataset):
    """Wraps the training set so every row carries its dataset index (for logs and resume checks)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[index]
        if not isinstance(row, dict):
            raise TypeError(
                f"CoresetTrainer needs dict rows in train_dataset (got {type(row).__name__} at index {index})"
            )
        return {**row, ID_KEY: index}


def init_argument(signatures: Sequence[inspect.Signature], args: tuple, kwargs: Mapping[str, Any], name: str) -> Any:
    """The value a trainer's `__init__(*args, **kwargs)` receives for its parameter `name`,
    passed by position or by keyword (None when not passed), bound by the first of `signatures`
    that names the parameter (a base trainer taking only *args/**kwargs passes them on)."""
    for signature in signatures:
        param = signature.parameters.get(name)
        if param is None or param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            continue
        try:
            return signature.bind_partial(*args, **kwargs).arguments.get(name)
        except TypeError:  # arguments the trainer rejects: its own __init__ says what is wrong
            break
    return kwargs.get(name)


def step_budget(pool_rows: int, unsupervised: int, num_batches: int, pool_factor: int, world: int) -> int:
    """The coreset size of one optimizer step, over all ranks.

    The batch the optimizer steps on (`num_batches` micro-batches per rank), shrunk with the pool
    on a short last step (the pool as loaded, `pool_rows` plus the `unsupervised` rows left out,
    over `pool_factor`), a multiple of the world size so every rank trains an equal share, and
    at most the pool."""
    per_rank = max(num_batches, math.ceil((pool_rows + unsupervised) / (pool_factor * world)))
    return min(per_rank * world, pool_rows)


def split_evenly(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Split into `parts` contiguous pieces whose sizes differ by at most one."""
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        out.append(list(items[start : start + size]))
        start += size
    return out


class CoresetTrainerMixin(NoiseScaleSplitMixin, PrivateOverrides):
    """CoLM selection for `transformers.Trainer` or any subclass of it: put it first among the
    bases, e.g. `class MyTrainer(CoresetTrainerMixin, SomeTrainer)`. Each optimizer step then
    trains on a coreset of a larger pool.

    Args:
        coreset_config: the selection settings; None or `pool_factor=1` trains like the base.
        log_selections: also write every step's selected example ids to
            `<output_dir>/selections.jsonl` (main process only).
        train_sampler: a sampler of training row indices to use instead of the Trainer's random
            one (e.g. `colm.integrations.reweighted.SourceReweightedSampler`).
        source_sizes: examples per source in the whole training set ({source: count}; only the
            ratios matter). Default: counted from train_dataset, in order of first appearance
            (`colm.data.sources`; a given dict keeps its order, which breaks selection ties);
            required when train_dataset is a stream (an IterableDataset or any iterable without len()).
        source_column: the column naming each row's source, when it is not `source` (renamed to
            `source` in train_dataset and eval_dataset; a `datasets.Dataset` is needed).
        noise_scale_every: measure the gradient noise scale every this many optimizer steps and
            log `noise_scale/*` (colm.integrations.noise_scale); 0 (default) is off.
        noise_scale_split: with no gradient accumulation and one process, measure by training the
            measured steps as two half micro-batches (otherwise nothing can be measured).
        All other arguments are the base trainer's (bound by its signature, by position or keyword).
        evaluate() adds the per-source losses (colm.integrations.eval_sources).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A Trainer class ahead of the mixin in the MRO would take (and reject) coreset_config
        # and run its own get_batch_samples/compute_loss: say so when the class is defined.
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        ahead = mro[: mro.index(CoresetTrainerMixin)]
        wrong = [c for c in ahead if issubclass(c, Trainer) and not issubclass(c, CoresetTrainerMixin)]
        if wrong:
            raise TypeError(
                f"{cls.__name__}: put CoresetTrainerMixin first among the bases, e.g. "
                f"class {cls.__name__}(CoresetTrainerMixin, {wrong[0].__name__}); it comes after "
                f"{wrong[0].__name__} here"
            )

    def __init__(
        self,
        *args: Any,
        coreset_config: CoresetConfig | dict[str, Any] | None = None,
        log_selections: bool = False,
        source_sizes: dict[str, int] | None = None,
        train_sampler: Any = None,
        source_column: str = SOURCE,
        noise_scale_every: int = 0,
        noise_scale_split: bool = False,
        **kwargs: Any,
    ) -> None:
        if isinstance(coreset_config, dict):  # the fields as a dict (a YAML section, a to_dict())
            coreset_config = CoresetConfig.from_dict(coreset_config)
        elif coreset_config is not None and not isinstance(coreset_config, CoresetConfig):
            raise TypeError(f"coreset_config: expected a CoresetConfig, a dict of its fields or None, "
                            f"got {type(coreset_config).__name__}")
        if coreset_config is None:
            logger.warning(
                "%s without coreset_config trains with no selection (like the base trainer); pass "
                "coreset_config=CoresetConfig() for colm's default (a pool of 2x the batch, small sources "
                "kept whole), or CoresetConfig(pool_factor=1) to say plain training is meant", type(self).__name__,
            )
        config = coreset_config or CoresetConfig(pool_factor=1)
        # The base trainer's own parameters `args` and `train_dataset`, however they are passed.
        signatures = (inspect.signature(super().__init__), inspect.signature(Trainer))
        training_args = init_argument(signatures, args, kwargs, "args")
        train_dataset = init_argument(signatures, args, kwargs, "train_dataset")
        # Refused before the base trainer tokenizes or packs the whole dataset.
        check_unpacked(training_args, config.pool_factor > 1 or config.loss_average == "example")
        if training_args is not None:
            check_launch(training_args)
            check_sharding(training_args)  # DeepSpeed / FSDP1: refused before any data work
        if training_args is not None and train_dataset is not None and is_stream(train_dataset):
            # accelerate's dispatcher would concatenate the pool chunks of a stream as tensors; a
            # shard per process keeps them Python rows (as TRL does for its streams).
            training_args.accelerator_config.dispatch_batches = False
        super().__init__(*args, **kwargs)
        if source_column != SOURCE:  # the rest of colm reads `source`: the column is renamed once
            self.train_dataset = with_source_column(self.train_dataset, source_column, "train_dataset")
            self.eval_dataset = with_source_column(self.eval_dataset, source_column, "eval_dataset")
        self._eval_target: Any = None
        # Before anything trains (and above, before the base prepares the data when args are
        # given): a launch where torch.distributed and the Trainer count different processes
        # would train diverging copies on duplicated pools, without any error.
        check_launch(self.args, self.accelerator.num_processes)
        missing = hf.missing_members(self)
        if missing:  # a transformers that renamed what colm uses: name it now, not mid-training
            raise RuntimeError("; ".join(missing))
        check_sharding(self.args, self.accelerator)  # and FSDP that accelerate did not turn on
        warn_slow_half_precision(self.args)  # e.g. SFTConfig's default bf16 on a CPU without it
        self.coreset_config = config.with_training_seed(self.args.seed)  # selection_seed None: the training seed
        self.source_sizes = source_sizes
        # e.g. colm.integrations.reweighted.SourceReweightedSampler (the re-weighting control)
        self.train_sampler = train_sampler
        self.log_selections = log_selections
        self._warned_unsupervised = False
        self._coreset_logs: dict[str, float] = {}
        self._coreset_log_count = 0
        #: Wall seconds spent scoring pools so far (colm compare's compute accounting reads it).
        self.score_seconds = 0.0
        self.last_selection: Selection | None = None
        self.selector: CoresetSelector | None = None
        self.pseudo_sources: PseudoSources | None = None
        if self.args.n_gpu > 1:
            raise ValueError(
                "CoresetTrainer does not support torch.nn.DataParallel (several GPUs in one process); "
                "launch with `torchrun --nproc_per_node=N` or `accelerate launch` instead"
            )
        if self.selection_enabled and self.train_dataset is not None:
            self.selector = self._build_selector(self.train_dataset)
        #: The gradient noise scale's callback (None unless noise_scale_every > 0).
        self.noise_scale: NoiseScaleCallback | None = None
        if noise_scale_every:
            self.noise_scale = add_noise_scale(self, every=noise_scale_every, split=noise_scale_split)

    # ---- set-up -----------------------------------------------------------------------------
    @property
    def selection_enabled(self) -> bool:
        return self.coreset_config.pool_factor > 1

    def _build_selector(self, dataset: Any) -> CoresetSelector:
        if self.coreset_config.pseudo_sources is not None:  # clusters as sources, after a warm-up
            if self.pseudo_sources is None:
                self.pseudo_sources = PseudoSources(self.coreset_config, dataset, self.source_sizes)
            return self.pseudo_sources.selector()
        if self.source_sizes is not None or is_stream(dataset):
            return CoresetSelector(self.coreset_config, given_source_sizes(self.source_sizes))
        sizes = count_sources(source_labels(dataset))  # first appearance: the source order
        if list(sizes) == [SINGLE_SOURCE]:
            columns = getattr(dataset, "column_names", None)
            if columns is None and len(dataset) and isinstance(dataset[0], dict):
                columns = list(dataset[0])
            logger.warning(
                "train_dataset has no %r column (its columns: %s): every example is treated as one source, "
                "so no source is kept whole; name the column of your sources with source_column=", SOURCE,
                ", ".join(map(str, columns or [])) or "unknown",
            )
        return CoresetSelector(self.coreset_config, sizes)

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("CoresetTrainer: training requires a train_dataset.")
        if self.selector is None and self.selection_enabled:
            self.selector = self._build_selector(self.train_dataset)
        check_training_pool(self.train_dataset, self.coreset_config.pool_factor, self.args)
        # The Trainer's own DataLoader machinery (sampler, seeding, accelerate sharding, resume
        # skipping) is kept; only the batch (a pool chunk) and the collate function change.
        stream = is_stream(self.train_dataset)
        rows = IndexedStream(self.train_dataset, ID_KEY) if stream else _IndexedRows(self.train_dataset)
        return hf.pool_dataloader(
            self, rows, self.train_dataset, hf.per_device_batch_size(self) * self.coreset_config.pool_factor
        )

    def _collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The user's collator on rows stripped of colm's columns (and, as Trainer does, of
        columns the model's forward does not take)."""
        keep: Callable[[str], bool]
        if self.args.remove_unused_columns:
            allowed = hf.model_input_names(self)
            keep = lambda k: k in allowed  # noqa: E731
        else:
            keep = lambda k: k not in _PRIVATE_KEYS  # noqa: E731
        return self.data_collator([{k: v for k, v in row.items() if keep(k)} for row in rows])

    # ---- one optimizer step's batch ---------------------------------------------------------
    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        chunks: list[list[dict[str, Any]]] = []
        for _ in range(num_batches):
            try:
                chunks.append(next(epoch_iterator))
            except StopIteration:
                break
        if not chunks:
            return [], None
        if len(chunks) < num_batches and is_stream(self.train_dataset):
            # A stream has no length, so the Trainer cannot know this is the end of a pass: it
            # would train these micro-batches without an optimizer step and add their gradients
            # to the first step of the next pass. They are left out instead.
            logger.warning(
                "the stream ended %d micro-batch pool chunk(s) into an optimizer step; those rows "
                "are not trained in this pass", len(chunks),
            )
            return [], None
        if not self.selection_enabled:
            batches = [self._collate(chunk) for chunk in chunks]
            if self.coreset_config.loss_average == "example":
                batches = self._with_example_weights(batches, None)
            return batches, hf.num_items_in_batch(self, batches, device)
        # The Trainer calls this before on_step_begin, so a callback timing its steps does not
        # see this work: it is reported as coreset/prepare_ms (docs/trainer.md, Telemetry).
        started = time.perf_counter()
        batches = self._select_batches(chunks)
        num_items = hf.num_items_in_batch(self, batches, device)
        self._add_to_step_stats({"coreset/prepare_ms": (time.perf_counter() - started) * 1e3})
        return batches, num_items

    def _select_batches(self, chunks: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """One optimizer step's micro-batches for this rank from its `chunks` of the pool:
        score the pool, budget, select, shard (and log)."""
        assert self.selector is not None
        num_batches = len(chunks)
        # Rows with no supervised token are no pool members: never scored, never selected.
        local_rows, unsupervised = self._supervised_only([row for chunk in chunks for row in chunk])
        self._fit_pseudo_sources_if_due()
        features, scored, score_ms = self._score_pool(local_rows)  # [N, d] over all ranks, or None
        pool_rows, unsupervised = self._gather_pool(local_rows, unsupervised, num_batches)
        sources = self._pool_sources(pool_rows)
        budget = step_budget(len(pool_rows), unsupervised, num_batches, self.coreset_config.pool_factor,
                             distributed.world_size())
        selection = self.selector.select(features, sources, budget, scored=scored)
        selection.stats["unsupervised_rows"] = float(unsupervised)
        self.last_selection = selection
        self._record_selection(selection, pool_rows, sources, score_ms)
        return self._shard_coreset(selection, pool_rows, num_batches)

    def _fit_pseudo_sources_if_due(self) -> None:
        """At the first step after the pseudo-source warm-up (none when pseudo-sources are off):
        embed every training row, cluster them, switch to the selector whose sources are the
        clusters, and log the fit."""
        ps, step = self.pseudo_sources, self.state.global_step
        if ps is None or not ps.needs_fit(step):
            return
        pool = pool_size(self.coreset_config.pool_factor, self.args.per_device_train_batch_size,
                         self.args.gradient_accumulation_steps, distributed.world_size())
        ps.fit(
            self.model, self.train_dataset, lambda rows: hf.to_device(self, self._collate(rows)),
            self._score_chunk_size(), step, pool,
            source_labels(self.train_dataset) if ps.has_source_column else None,
        )
        self.selector = ps.selector()
        self.log(ps.log_entry())

    def _warming_up(self) -> bool:
        """Whether this step is a pseudo-source warm-up step (a uniform random subset, no scoring)."""
        return self.pseudo_sources is not None and self.pseudo_sources.warming_up(self.state.global_step)

    def _score_chunk_size(self) -> int:
        return self.coreset_config.score_batch_size or self.args.per_device_train_batch_size

    def _score_pool(self, local_rows: list[dict[str, Any]]) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        """The gradient features of the pool, assembled on every rank (None when the selection
        looks at no feature); the bool mask [N] of the rows actually scored (None: all); and the
        milliseconds this rank spent on them.

        Only the rows the selection reads are scored: a small source is kept whole whatever its
        features say, so its rows get zero features instead of a forward pass (with
        pseudo-sources, whose clusters are known only after scoring, and with full_adam, every
        row is scored)."""
        start = time.perf_counter()
        if not self.coreset_config.needs_features or self._warming_up():
            return None, None, (time.perf_counter() - start) * 1e3
        placed = self._rows_to_score(local_rows)  # [n_local] bool, or None for all
        rows = local_rows if placed is None else [r for r, keep in zip(local_rows, placed.tolist()) if keep]
        chunk = self._score_chunk_size()  # this rank's rows, without gradients, in chunks that fit
        score_batches = [hf.to_device(self, self._collate(rows[i : i + chunk])) for i in range(0, len(rows), chunk)]
        features = gradient_features(
            self.model, score_batches, self.coreset_config, self.state.global_step, gather=True,
            optimizer=self.optimizer,  # read only by feature='full_adam' (the optimizer's Adam state)
            placed=placed,
        )  # [N, d]
        scored = None if placed is None else distributed.gather_rows(placed[:, None].to(torch.uint8))[:, 0].bool()
        if self.noise_scale is not None and self.coreset_config.feature == "exact":
            # per-example gradients of the rows scored (small sources kept whole are not: then
            # the estimate covers the large sources' rows only)
            self.noise_scale.add_feature_estimate(
                self.state.global_step, features if scored is None else features[scored])
        return features, scored, (time.perf_counter() - start) * 1e3

    def _rows_to_score(self, local_rows: list[dict[str, Any]]) -> torch.Tensor | None:
        """Bool [n_local]: this rank's rows of large sources (at least one row, so that every
        rank scores something and the gathered features agree in width and dtype); None when
        every row must be scored. Decided by the config alone, so every rank takes the same path."""
        if self.pseudo_sources is not None or self.coreset_config.feature == "full_adam":
            return None
        assert self.selector is not None
        placed = self.selector.rows_read([str(row.get(SOURCE, SINGLE_SOURCE)) for row in local_rows]).clone()
        if placed.numel() and not bool(placed.any()):
            placed[0] = True
        return placed

    def _gather_pool(
        self, local_rows: list[dict[str, Any]], unsupervised: int, num_batches: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Every rank's pool rows (rank order) and how many rows all ranks left out as
        unsupervised; an error when too few remain to fill the micro-batches."""
        pool_rows = distributed.gather_objects(local_rows)
        unsupervised = sum(distributed.gather_objects([unsupervised]))
        needed = distributed.world_size() * num_batches
        if len(pool_rows) < needed:
            raise ValueError(
                f"this step's pool has only {len(pool_rows)} rows with a supervised token "
                f"({unsupervised} have none: every label is -100); at least {needed} "
                "are needed to fill the micro-batches. Drop such rows from the dataset (e.g. rows "
                "whose response was truncated away) or check the labels your collator builds."
            )
        return pool_rows, unsupervised

    def _pool_sources(self, pool_rows: list[dict[str, Any]]) -> list[str]:
        """The source label of every pool row: its cluster with pseudo-sources, else its `source`."""
        if self.pseudo_sources is not None:
            return self.pseudo_sources.labels(pool_rows, ID_KEY)
        return [str(row.get(SOURCE, SINGLE_SOURCE)) for row in pool_rows]

    def _shard_coreset(
        self, selection: Selection, pool_rows: list[dict[str, Any]], num_batches: int
    ) -> list[dict[str, Any]]:
        """This rank's share of the coreset (every world-size-th row), as `num_batches` collated
        micro-batches, with loss weights when they are not all 1 or loss_average="example"."""
        world, rank = distributed.world_size(), distributed.rank()
        picked = selection.indices.tolist()
        mine = list(range(rank, len(picked), world))
        parts = split_evenly(mine, num_batches)
        batches = [self._collate([pool_rows[picked[j]] for j in part]) for part in parts]
        weights = selection.loss_weights.to(torch.float32).cpu()  # [budget]
        if bool((weights != 1).any()) or self.coreset_config.loss_average == "example":
            # Normalized to mean 1 over the coreset so a weighted loss keeps the loss scale.
            weights = weights * (len(picked) / weights.sum())
            batches = self._with_example_weights(batches, [weights[part] for part in parts], len(picked))
        return batches

    def _supervised_only(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """The rows that have at least one supervised next-token label, and how many had none.

        The labels are those the user's collator builds (it may derive them from input_ids),
        so the pool is collated once here; padding does not change what is supervised."""
        labels = self._collate(rows).get("labels")
        if labels is None:
            return rows, 0
        check_one_row_per_example(len(rows), labels)
        keep = (torch.as_tensor(labels)[:, 1:] != IGNORE_INDEX).any(dim=1).tolist()  # [n]
        dropped = len(rows) - sum(keep)
        if dropped and not self._warned_unsupervised:
            self._warned_unsupervised = True
            logger.warning(
                "%d of %d pool rows have no supervised token (every label is -100); they are "
                "left out of selection and training (counted as coreset/unsupervised_rows)",
                dropped, len(rows),
            )
        return ([row for row, k in zip(rows, keep) if k] if dropped else rows), dropped

    def _with_example_weights(
        self, batches: list[dict[str, Any]], weights: list[torch.Tensor] | None, step_examples: int | None = None
    ) -> list[dict[str, Any]]:
        """Attach per-example loss weights and, for loss_average="example", the step's example
        count to each micro-batch (compute_loss reads and removes them)."""
        if step_examples is None:  # plain training: the step's examples over all ranks
            step_examples = sum(distributed.gather_objects([sum(len(b["input_ids"]) for b in batches)]))
        for k, batch in enumerate(batches):
            n = len(batch["input_ids"])
            batch[WEIGHT_KEY] = weights[k].clone() if weights is not None else torch.ones(n)
            if self.coreset_config.loss_average == "example":
                batch[STEP_EXAMPLES_KEY] = torch.tensor(float(step_examples))
        return batches

    # ---- loss -------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop(WEIGHT_KEY, None)
        step_examples = inputs.pop(STEP_EXAMPLES_KEY, None)
        if weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        nll_sums, counts = per_example_nll(outputs.logits, labels)  # [n], [n]
        weights = weights.to(nll_sums.device)
        if step_examples is None:
            # loss_average="token", weighted: each example's summed token NLL times its weight,
            # over the coreset's supervised tokens (the unweighted loss's normalization).
            denom = num_items_in_batch if num_items_in_batch is not None else counts.sum()
            loss = (nll_sums * weights).sum() / denom
            loss = loss * hf.token_loss_scale(self, num_items_in_batch)
        else:
            # loss_average="example": each example's mean token NLL, averaged over the step's
            # examples on every micro-batch and rank. DDP averages gradients over ranks, hence
            # the world size; a loop that divides by the accumulation steps gets them back.
            means = nll_sums / counts.clamp(min=1).to(nll_sums.dtype)  # [n]
            loss = (means * weights).sum() / step_examples.to(means.device)
            loss = loss * self.accelerator.num_processes
            if hf.training_step_divides_loss(self, num_items_in_batch):
                loss = loss * self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    # ---- telemetry --------------------------------------------------------------------------
    def _record_selection(
        self, selection: Selection, pool_rows: list[dict[str, Any]], sources: list[str], score_ms: float
    ) -> None:
        quiet = constant_stats(self.coreset_config)
        stats = {f"coreset/{k}": float(v) for k, v in selection.stats.items() if k not in quiet}
        # The selector counts the sources present in the pool; every source it knows is logged
        # at every step (0 when absent), so each selected/<source> series has no gaps.
        for name in self.selector.source_sizes:
            stats.setdefault(f"coreset/selected/{name}", 0.0)
        if "score_ms" not in quiet:
            stats["coreset/score_ms"] = score_ms
        self.score_seconds += score_ms / 1e3
        self._coreset_log_count += 1
        self._add_to_step_stats(stats)
        if self.log_selections and self.is_world_process_zero():
            picked = selection.indices.tolist()
            record = {
                "step": self.state.global_step + 1,
                "selected_ids": [int(pool_rows[i][ID_KEY]) for i in picked],
                "selected_sources": [sources[i] for i in picked],
                "pool_ids": [int(row[ID_KEY]) for row in pool_rows],
                "pool_sources": dict(Counter(sources)),
                "stats": {k: float(v) for k, v in selection.stats.items()},
            }
            append_selection(self.args.output_dir, record)

    def _add_to_step_stats(self, stats: dict[str, float]) -> None:
        """Add numbers of the current step to the sums averaged at the next training log."""
        for key, value in stats.items():
            self._coreset_logs[key] = self._coreset_logs.get(key, 0.0) + value

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # Training logs carry 'loss'; attach the selection averages since the previous one.
        if "loss" in logs and self._coreset_log_count:
            for key, total in self._coreset_logs.items():
                logs[key] = round(total / self._coreset_log_count, 6)
            self._coreset_logs.clear()
            self._coreset_log_count = 0
        super().log(logs, *args, **kwargs)

    def _check_before_log_or_save(self, tr_loss: Any, grad_norm: Any) -> None:
        # Only where the Trainer reads these numbers anyway (a log), is about to save, or ends
        # (the last step: a run that diverges before its first log or save never exits 0): no
        # per-step sync, and no checkpoint of NaN weights (colm.integrations.non_finite).
        if self.control.should_log or self.control.should_save or self.control.should_training_stop:
            check_finite(self.state.global_step, tr_loss, grad_norm)

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval",
                 *args: Any, **kwargs: Any) -> dict[str, float]:
        """The base trainer's evaluate(), plus the per-source losses of `colm train` (see
        colm.integrations.eval_sources) when the validation rows carry a source."""
        target = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(eval_dataset, str) and isinstance(self.eval_dataset, dict):  # one of several, by name
            target = self.eval_dataset[eval_dataset]
        self._eval_target = None if isinstance(target, dict) else target
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, *args, **kwargs)
        finally:
            self._eval_target = None

    def evaluation_loop(self, dataloader: Any, description: str, prediction_loss_only: Any = None,
                        ignore_keys: Any = None, metric_key_prefix: str = "eval") -> Any:
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        if self._eval_target is not None:  # into the metrics the Trainer then logs and returns
            output.metrics.update(self._per_source_metrics(self._eval_target, metric_key_prefix))
        return output

    def _per_source_metrics(self, dataset: Any, prefix: str) -> dict[str, float]:
        from colm.integrations.eval_sources import has_sources, per_source_metrics

        if not has_sources(dataset):
            return {}
        if self.source_sizes is not None:
            train_rows = dict(self.source_sizes)
        elif self.train_dataset is not None and hasattr(self.train_dataset, "__len__"):
            train_rows = count_sources(source_labels(self.train_dataset))
        else:
            train_rows = {}
        return per_source_metrics(self.model, dataset, lambda rows: hf.to_device(self, self._collate(rows)),
                                  self.args.per_device_eval_batch_size, train_rows, prefix)

    # ---- checkpoints ------------------------------------------------------------------------
    def _save_coreset_state(self, output_dir: str) -> None:
        """Write the selector (and pseudo-source) state into a checkpoint being saved.

        Called inside every checkpoint save (through `PrivateOverrides`), before
        trainer_state.json marks it complete: the selector state is run state like the RNG
        states, and written atomically."""
        if self.selector is not None and self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            save_selector_state(
                os.path.join(output_dir, SELECTOR_STATE_FILE), self.coreset_config.to_dict(),
                self.selector.state_dict(),
            )
            if self.pseudo_sources is not None:
                self.pseudo_sources.save(output_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        # True: the latest *complete* checkpoint (one torn by a kill mid-save is skipped, with a warning).
        checkpoint = resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if checkpoint is not None:
            check_checkpoint_files(checkpoint)  # a damaged file named now, not deep in torch.load
            self._load_selector_state(checkpoint)
        result = super().train(checkpoint, *args, **kwargs)
        if self.args.world_size == 1:  # one pass over the weights per run (sharded: the grad norm tells)
            check_weights(self.model, self.state.global_step)
        return result

    def _load_selector_state(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, SELECTOR_STATE_FILE)
        legacy = os.path.join(checkpoint, LEGACY_SELECTOR_STATE_FILE)
        if self.selector is None:
            if self.selection_enabled and self.train_dataset is not None:
                self.selector = self._build_selector(self.train_dataset)
            else:
                return
        if not os.path.isfile(path) and not os.path.isfile(legacy):
            raise CheckpointError(
                f"checkpoint {checkpoint!r} has no {SELECTOR_STATE_FILE}: it was not written by a "
                "CoresetTrainer with selection on, so the selector state cannot be restored"
            )
        config, state = load_selector_state(path if os.path.isfile(path) else legacy)
        if config != self.coreset_config.to_dict():
            logger.warning("resuming with a CoresetConfig that differs from the checkpoint's")
        if self.pseudo_sources is not None:  # the clusters decide which selector the state is for
            self.pseudo_sources.load(checkpoint, checkpoint_step(checkpoint))
            self.selector = self.pseudo_sources.selector()
        try:
            self.selector.load_state_dict(state)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: {err}") from None
        self._truncate_selection_log(checkpoint)

    def _truncate_selection_log(self, checkpoint: str) -> None:
        """Drop logged selections past the checkpoint: the resumed run writes them again."""
        if self.is_world_process_zero():
            truncate_jsonl(os.path.join(self.args.output_dir, SELECTIONS_FILE), checkpoint_step(checkpoint))


def constant_stats(config: CoresetConfig) -> frozenset[str]:
    """Selection statistics that cannot change under `config`, left out of every step's log: no
    scoring pass (no score time, no Adam history) when the selection looks at no feature, and
    no kept or dropped small source when no source is small."""
    quiet = set()
    if not config.needs_features:
        quiet |= {"score_ms", "adam_step"}
    if config.small_sources == "none":
        quiet |= {"kept_small", "dropped_small"}
    return frozenset(quiet)


def with_source_column(dataset: Any, column: str, what: str) -> Any:
    """`dataset` with its `column` renamed to `source` (datasets' rename_column; each of a dict of
    datasets); None stays None. A dataset without the column, or with both, is refused by name."""
    if dataset is None:
        return None
    if isinstance(dataset, dict):
        return {k: with_source_column(v, column, f"{what}[{k!r}]") for k, v in dataset.items()}
    names = getattr(dataset, "column_names", None)
    if names is None or not hasattr(dataset, "rename_column"):
        raise TypeError(f"source_column={column!r}: {what} is a {type(dataset).__name__}; renaming a column needs "
                        "a datasets.Dataset (or name the key 'source' in your rows)")
    if column not in names:
        raise ValueError(f"source_column={column!r}: {what} has no such column; its columns are {names}")
    if SOURCE in names:
        raise ValueError(f"source_column={column!r}: {what} also has a {SOURCE!r} column; drop one of them")
    return dataset.rename_column(column, SOURCE)


class CoresetTrainer(CoresetTrainerMixin, Trainer):
    """`transformers.Trainer` that trains each step on a coreset of a larger pool (CoLM).

    Args:
        coreset_config: the selection settings; None (a warning) or `pool_factor=1` trains like `Trainer`.
        log_selections: also write every step's selected example ids to
            `<output_dir>/selections.jsonl` (main process only).
        source_column: the column naming each row's source, when it is not `source`.
        evaluate() returns and logs, besides `eval_loss`, each source's loss (`eval_loss/<source>`)
        and the natural-mixture, mean and worst losses (`eval_loss_natural`, `eval_loss_mean`,
        `eval_loss_worst`), as `colm train` reports them (colm.integrations.eval_sources).
        All other arguments are `transformers.Trainer`'s.
    """
