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
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset
from transformers import Trainer

from colm import distributed
from colm.integrations.checkpoints import CheckpointError, checkpoint_step, resume_checkpoint
from colm.columns import IGNORE_INDEX, SOURCE
from colm.config import CoresetConfig
from colm.features import gradient_features, per_example_nll
from colm.files import truncate_jsonl
from colm.integrations.launch import check_launch
from colm.integrations.packing import check_one_row_per_example, check_unpacked
from colm.integrations.pool_size import check_training_pool, pool_size
from colm.integrations.pseudo_sources import PseudoSources
from colm.selection.selector import CoresetSelector, Selection
from colm.selection.state import load_selector_state, save_selector_state
from colm.integrations.streams import IndexedStream, given_source_sizes, is_stream

logger = logging.getLogger(__name__)

ID_KEY = "colm_example_id"
WEIGHT_KEY = "colm_weight"
#: Examples the optimizer step trains on, over all micro-batches and ranks (loss_average="example").
STEP_EXAMPLES_KEY = "colm_step_examples"
SELECTOR_STATE_FILE = "colm_selector.safetensors"
#: Written by colm before the safetensors format (pickle): still read, with weights_only=True.
LEGACY_SELECTOR_STATE_FILE = "colm_selector.pt"
SELECTIONS_FILE = "selections.jsonl"
_PRIVATE_KEYS = (SOURCE, ID_KEY)
#: `description` of the training DataLoader that yields pools of rows (see get_train_dataloader).
_POOL_LOADER = "Training"
_SINGLE_SOURCE = "all"


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


def keep_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """collate_fn of the pool loader: rows stay rows until the coreset is chosen."""
    return rows


def dataset_sources(dataset: Any) -> list[str]:
    """The `source` of every training row, as strings (a single source when the column is absent)."""
    names = getattr(dataset, "column_names", None)
    if names is not None:
        if SOURCE not in names:
            return [_SINGLE_SOURCE] * len(dataset)
        return [str(s) for s in dataset[SOURCE]]
    return [str(dataset[i].get(SOURCE, _SINGLE_SOURCE)) for i in range(len(dataset))]


def split_evenly(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Split into `parts` contiguous pieces whose sizes differ by at most one."""
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        out.append(list(items[start : start + size]))
        start += size
    return out


class CoresetTrainerMixin:
    """CoLM selection for `transformers.Trainer` or any subclass of it: put it first among the
    bases, e.g. `class MyTrainer(CoresetTrainerMixin, SomeTrainer)`. Each optimizer step then
    trains on a coreset of a larger pool.

    Args:
        coreset_config: the selection settings; None or `pool_factor=1` trains like the base.
        log_selections: also write every step's selected example ids to
            `<output_dir>/selections.jsonl` (main process only).
        source_sizes: examples per source in the whole training set ({source: count}; only the
            ratios matter). Default: counted from train_dataset; required when train_dataset is
            a stream (an IterableDataset or any iterable without len()).
        All other arguments are the base trainer's.
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
        coreset_config: CoresetConfig | None = None,
        log_selections: bool = False,
        source_sizes: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        config = coreset_config or CoresetConfig(pool_factor=1)
        # Trainer and SFTTrainer both take (model, args, data_collator, train_dataset, ...).
        training_args = kwargs["args"] if "args" in kwargs else (args[1] if len(args) > 1 else None)
        train_dataset = kwargs["train_dataset"] if "train_dataset" in kwargs else (args[3] if len(args) > 3 else None)
        # Refused before the base trainer tokenizes or packs the whole dataset.
        check_unpacked(training_args, config.pool_factor > 1 or config.loss_average == "example")
        if training_args is not None:
            check_launch(training_args)
        if training_args is not None and train_dataset is not None and is_stream(train_dataset):
            # accelerate's dispatcher would concatenate the pool chunks of a stream as tensors; a
            # shard per process keeps them Python rows (as TRL does for its streams).
            training_args.accelerator_config.dispatch_batches = False
        super().__init__(*args, **kwargs)
        # Before anything trains (and above, before the base prepares the data when args are
        # given): a launch where torch.distributed and the Trainer count different processes
        # would train diverging copies on duplicated pools, without any error.
        check_launch(self.args, self.accelerator.num_processes)
        self.coreset_config = config
        self.source_sizes = source_sizes
        self.log_selections = log_selections
        self._warned_unsupervised = False
        self._coreset_logs: dict[str, float] = {}
        self._coreset_log_count = 0
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
        sizes = Counter(dataset_sources(dataset))
        if list(sizes) == [_SINGLE_SOURCE]:
            logger.warning(
                "train_dataset has no %r column: every example is treated as one source, so no "
                "source is kept whole", SOURCE,
            )
        return CoresetSelector(self.coreset_config, dict(sizes))

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("CoresetTrainer: training requires a train_dataset.")
        if self.selector is None and self.selection_enabled:
            self.selector = self._build_selector(self.train_dataset)
        check_training_pool(self.train_dataset, self.coreset_config.pool_factor, self.args)
        # The Trainer's own DataLoader machinery (sampler, seeding, accelerate sharding, resume
        # skipping) is kept; only the batch (a pool chunk) and the collate function change.
        stream = is_stream(self.train_dataset)
        return self._get_dataloader(
            dataset=IndexedStream(self.train_dataset, ID_KEY) if stream else _IndexedRows(self.train_dataset),
            description=_POOL_LOADER,
            batch_size=self._train_batch_size * self.coreset_config.pool_factor,
            sampler_fn=lambda _: self._get_train_sampler(self.train_dataset),
            is_training=True,
        )

    def _get_collator_with_removed_columns(self, data_collator: Callable, description: str | None = None):
        # The pool loader hands out rows; `_collate` applies the user's collator (and the column
        # filtering, which must keep `source` for the selector) once the coreset is chosen.
        if description == _POOL_LOADER:
            return keep_rows
        return super()._get_collator_with_removed_columns(data_collator, description)

    def _collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The user's collator on rows stripped of colm's columns (and, as Trainer does, of
        columns the model's forward does not take)."""
        keep: Callable[[str], bool]
        if self.args.remove_unused_columns:
            self._set_signature_columns_if_needed()
            allowed = set(self._signature_columns)
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
        else:
            batches = self._select_batches(chunks)
        return batches, self._get_num_items_in_batch(batches, device)

    def _select_batches(self, chunks: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        assert self.selector is not None
        cfg = self.coreset_config
        num_batches = len(chunks)
        world, rank = distributed.world_size(), distributed.rank()
        local_rows = [row for chunk in chunks for row in chunk]
        # Rows with no supervised token are no pool members: never scored, never selected.
        local_rows, unsupervised = self._supervised_only(local_rows)
        warming_up = self.pseudo_sources is not None and self._pseudo_sources_warming_up()

        # Score this rank's rows without gradients, in chunks that fit, then assemble the
        # global pool's features on every rank (skipped when selection looks at no feature).
        start = time.perf_counter()
        features = None
        if cfg.needs_features and not warming_up:
            chunk_size = cfg.score_batch_size or self.args.per_device_train_batch_size
            score_batches = [
                self._prepare_inputs(self._collate(local_rows[i : i + chunk_size]))
                for i in range(0, len(local_rows), chunk_size)
            ]
            features = gradient_features(  # [N, d]
                self.model, score_batches, cfg, self.state.global_step, gather=True, optimizer=self.optimizer
            )
        score_ms = (time.perf_counter() - start) * 1e3

        pool_rows = distributed.gather_objects(local_rows)
        unsupervised = sum(distributed.gather_objects([unsupervised]))
        if len(pool_rows) < world * num_batches:
            raise ValueError(
                f"this step's pool has only {len(pool_rows)} rows with a supervised token "
                f"({unsupervised} have none: every label is -100); at least {world * num_batches} "
                "are needed to fill the micro-batches. Drop such rows from the dataset (e.g. rows "
                "whose response was truncated away) or check the labels your collator builds."
            )
        if self.pseudo_sources is not None:
            sources = self.pseudo_sources.labels(pool_rows, ID_KEY)
        else:
            sources = [str(row.get(SOURCE, _SINGLE_SOURCE)) for row in pool_rows]
        # Budget: the batch the optimizer steps on, shrunk with the pool on a short last step,
        # and a multiple of the world size so every rank trains an equal share.
        per_rank = max(num_batches, math.ceil((len(pool_rows) + unsupervised) / (cfg.pool_factor * world)))
        budget = min(per_rank * world, len(pool_rows))

        selection = self.selector.select(features, sources, budget)
        selection.stats["unsupervised_rows"] = float(unsupervised)
        self.last_selection = selection
        picked = selection.indices.tolist()
        self._record_selection(selection, pool_rows, sources, score_ms)

        mine = list(range(rank, len(picked), world))
        parts = split_evenly(mine, num_batches)
        batches = [self._collate([pool_rows[picked[j]] for j in part]) for part in parts]
        weights = selection.loss_weights.to(torch.float32).cpu()  # [budget]
        if bool((weights != 1).any()) or cfg.loss_average == "example":
            # Normalized to mean 1 over the coreset so a weighted loss keeps the loss scale.
            weights = weights * (len(picked) / weights.sum())
            batches = self._with_example_weights(batches, [weights[part] for part in parts], len(picked))
        return batches

    def _pseudo_sources_warming_up(self) -> bool:
        """Whether this step is a pseudo-source warm-up step (a uniform random subset of the pool,
        no scoring); at the first step after the warm-up, the clusters are fitted first."""
        ps, step = self.pseudo_sources, self.state.global_step
        if ps.needs_fit(step):
            chunk = self.coreset_config.score_batch_size or self.args.per_device_train_batch_size
            pool = pool_size(self.coreset_config.pool_factor, self.args.per_device_train_batch_size,
                             self.args.gradient_accumulation_steps, distributed.world_size())
            ps.fit(
                self.model, self.train_dataset, lambda rows: self._prepare_inputs(self._collate(rows)), chunk,
                step, pool, dataset_sources(self.train_dataset) if ps.has_source_column else None,
            )
            self.selector = ps.selector()
            self.log(ps.log_entry())
        return ps.warming_up(step)

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
            global_denominator = num_items_in_batch is not None
            if self.args.average_tokens_across_devices and global_denominator:
                loss = loss * self.accelerator.num_processes
        else:
            # loss_average="example": each example's mean token NLL, averaged over the step's
            # examples on every micro-batch and rank. DDP averages gradients over ranks, hence
            # the world size; a loop that divides by the accumulation steps gets them back.
            means = nll_sums / counts.clamp(min=1).to(nll_sums.dtype)  # [n]
            loss = (means * weights).sum() / step_examples.to(means.device)
            loss = loss * self.accelerator.num_processes
            if not self._loss_scaled_for_accumulation(num_items_in_batch):
                loss = loss * self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def _loss_scaled_for_accumulation(self, num_items_in_batch) -> bool:
        """Whether `Trainer.training_step` leaves the loss as is (True) or divides it by the
        gradient accumulation steps (False): the rule of transformers' training_step."""
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool(
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
            or self.compute_loss_func is not None
        )

    # ---- telemetry --------------------------------------------------------------------------
    def _record_selection(
        self, selection: Selection, pool_rows: list[dict[str, Any]], sources: list[str], score_ms: float
    ) -> None:
        stats = {f"coreset/{k}": float(v) for k, v in selection.stats.items()}
        stats["coreset/score_ms"] = score_ms
        for key, value in stats.items():
            self._coreset_logs[key] = self._coreset_logs.get(key, 0.0) + value
        self._coreset_log_count += 1
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
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(os.path.join(self.args.output_dir, SELECTIONS_FILE), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # Training logs carry 'loss'; attach the selection averages since the previous one.
        if "loss" in logs and self._coreset_log_count:
            for key, total in self._coreset_logs.items():
                logs[key] = round(total / self._coreset_log_count, 6)
            self._coreset_logs.clear()
            self._coreset_log_count = 0
        super().log(logs, *args, **kwargs)

    # ---- checkpoints ------------------------------------------------------------------------
    def _save_rng_state(self, output_dir: str) -> None:
        # Called inside every checkpoint save, before trainer_state.json marks it complete: the
        # selector state is run state like the RNG states, and written atomically.
        super()._save_rng_state(output_dir)
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
            self._load_selector_state(checkpoint)
        return super().train(resume_from_checkpoint=checkpoint, *args, **kwargs)

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


class CoresetTrainer(CoresetTrainerMixin, Trainer):
    """`transformers.Trainer` that trains each step on a coreset of a larger pool (CoLM).

    Args:
        coreset_config: the selection settings; None or `pool_factor=1` trains like `Trainer`.
        log_selections: also write every step's selected example ids to
            `<output_dir>/selections.jsonl` (main process only).
        All other arguments are `transformers.Trainer`'s.
    """
