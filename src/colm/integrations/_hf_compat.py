"""Every place colm's trainer relies on a private part of `transformers.Trainer`, said once.

`pyproject.toml` allows any transformers 5.x, and private members change without notice. So the
trainer (integrations/trainer.py, and through it the TRL trainer) touches them only here: one small
function per member it calls or reads, and `PrivateOverrides` for the two private methods it
overrides. Each says what colm relies on. `PRIVATE_MEMBERS` lists them all (`LOOP_MEMBERS` and
`TRAINING_MEMBERS` the public attributes of the loop the rules below read); the trainer checks
at construction that they exist (`missing_members`), and tests/test_hf_compat.py checks them and
the parameters colm passes, failing with the member's name and the transformers version.

Two rules of the Trainer's loop are re-implemented because transformers keeps them inline in
`training_step` and `compute_loss` (no function to call): `training_step_divides_loss` and
`token_loss_scale`. The tests compare each with what an actual Trainer step does.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader

#: `description` of the training DataLoader that yields pools of rows, not collated batches.
POOL_LOADER = "Training"

#: Private `transformers.Trainer` members colm uses -> what for (tests/test_hf_compat.py checks them).
PRIVATE_MEMBERS: dict[str, str] = {
    "_get_dataloader": "builds the pool loader with the Trainer's sampler, worker seeding, accelerate sharding and"
                       " resume skipping",
    "_get_train_sampler": "the Trainer's training sampler (shuffling by data_seed) for the pool loader",
    "_train_batch_size": "the per-device batch size (auto_find_batch_size may shrink it); a pool is pool_factor of"
                         " them",
    "_get_collator_with_removed_columns": "overridden: asked by _get_dataloader for the collate_fn of a"
                                          " non-`datasets` dataset, with its description",
    "_set_signature_columns_if_needed": "fills _signature_columns from the model's forward signature",
    "_signature_columns": "the columns the model's forward takes (remove_unused_columns=True)",
    "_prepare_inputs": "moves a collated batch to the device, as for training, before the scoring pass",
    "_get_num_items_in_batch": "counts the coreset's supervised tokens for num_items_in_batch, as the Trainer counts"
                               " a batch",
    "_save_rng_state": "overridden: runs inside every checkpoint save, before trainer_state.json marks it complete",
    "_maybe_log_save_evaluate": "overridden: called after every optimizer step with the running loss and the"
                                " gradient norm, before the Trainer logs or saves",
}
#: Public but loop-internal members the re-implemented rules read (checked by the same test).
LOOP_MEMBERS: dict[str, str] = {
    "get_batch_samples": "overridden: called once per optimizer step with (epoch_iterator, num_batches, device)",
    "model_accepts_loss_kwargs": "whether the model gets num_items_in_batch (decides the scaling rules)",
    "compute_loss_func": "a user loss function (decides the scaling rules)",
}
#: Set by the training loop only (so checked while training).
TRAINING_MEMBERS: dict[str, str] = {
    "current_gradient_accumulation_steps": "micro-batches of the current optimizer step, set before training_step",
}


def missing_members(trainer: Any, training: bool = False) -> list[str]:
    """One line per member of `PRIVATE_MEMBERS` and `LOOP_MEMBERS` (and `TRAINING_MEMBERS` when
    `training`) that `trainer`, a Trainer instance, lacks: the member, what colm needs it for,
    and the installed transformers version. Empty when all are there."""
    import transformers

    wanted = {**PRIVATE_MEMBERS, **LOOP_MEMBERS, **(TRAINING_MEMBERS if training else {})}
    return [
        f"transformers {transformers.__version__}: Trainer has no {name!r}, which colm relies on ({why}); "
        "install a transformers version colm supports (pyproject.toml) or update colm/integrations/_hf_compat.py"
        for name, why in wanted.items()
        if not hasattr(trainer, name)
    ]


def pool_dataloader(trainer: Any, dataset: Any, sampled: Any, batch_size: int) -> DataLoader:
    """The Trainer's training DataLoader over `dataset`, `batch_size` rows per batch, sampling
    as the Trainer samples `sampled` (the user's train_dataset, which `dataset` wraps)."""
    # Relies on: Trainer._get_dataloader(dataset, description, batch_size, sampler_fn, is_training)
    # and Trainer._get_train_sampler(dataset). The collate_fn comes from
    # PrivateOverrides._get_collator_with_removed_columns (for a dataset that is no datasets.Dataset).
    return trainer._get_dataloader(
        dataset=dataset,
        description=POOL_LOADER,
        batch_size=batch_size,
        sampler_fn=lambda _: trainer._get_train_sampler(sampled),
        is_training=True,
    )


def per_device_batch_size(trainer: Any) -> int:
    """The per-device training batch size the Trainer uses now."""
    # Relies on: Trainer._train_batch_size (args.train_batch_size, or what auto_find_batch_size found).
    return int(trainer._train_batch_size)


def model_input_names(trainer: Any) -> set[str]:
    """The keys a batch may keep with remove_unused_columns=True: the model's forward arguments
    and the label names (what the Trainer keeps)."""
    # Relies on: Trainer._set_signature_columns_if_needed() filling Trainer._signature_columns.
    trainer._set_signature_columns_if_needed()
    return set(trainer._signature_columns)


def to_device(trainer: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """A collated batch on the training device, prepared as the Trainer prepares a training batch."""
    # Relies on: Trainer._prepare_inputs(inputs) (device placement, empty-batch check).
    return trainer._prepare_inputs(batch)


def num_items_in_batch(trainer: Any, batches: list[dict[str, Any]], device: torch.device) -> torch.Tensor | int | None:
    """The step's supervised-token count over `batches` as the Trainer computes it (None when
    the model and loss take no num_items_in_batch)."""
    # Relies on: Trainer._get_num_items_in_batch(batch_samples, device).
    return trainer._get_num_items_in_batch(batches, device)


def training_step_divides_loss(trainer: Any, num_items: torch.Tensor | int | None) -> bool:
    """Whether `Trainer.training_step` divides the loss `compute_loss` returns by the gradient
    accumulation steps (True) or leaves it as is (False)."""
    # The rule of transformers 5.x's training_step, kept inline there: the class attribute
    # loss_is_scaled_for_ga decides when set; otherwise the loss counts as scaled when it was
    # normalized by num_items_in_batch (model accepts loss kwargs) or a compute_loss_func ran.
    # `loss_is_scaled_for_ga` is a recent class attribute (absent in 5.17, say): a transformers
    # whose Trainer lacks it has the rest of the rule only, whatever a subclass sets.
    import transformers

    stated = getattr(trainer, "loss_is_scaled_for_ga", None)
    if stated is not None and hasattr(transformers.Trainer, "loss_is_scaled_for_ga"):
        return not stated
    scaled = (trainer.model_accepts_loss_kwargs and num_items is not None) or trainer.compute_loss_func is not None
    return not scaled


def token_loss_scale(trainer: Any, num_items: torch.Tensor | int | None) -> int:
    """The factor `Trainer.compute_loss` multiplies a loss normalized by a global
    `num_items_in_batch` with: DDP averages gradients over processes, and the count spans them all."""
    # The rule of transformers 5.x's compute_loss, kept inline there (colm refuses several GPUs
    # in one process and tensor parallelism has no pools, so num_processes is the whole factor).
    # colm's num_items_in_batch is None unless the model accepts loss kwargs or a
    # compute_loss_func is set, which is the rest of the Trainer's condition.
    if trainer.args.average_tokens_across_devices and num_items is not None:
        return int(trainer.accelerator.num_processes)
    return 1


def keep_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """collate_fn of the pool loader: rows stay rows until the coreset is chosen."""
    return rows


class PrivateOverrides:
    """The four private `transformers.Trainer` methods colm overrides, each handing over to a
    colm method or attribute of the mixin. A base of `CoresetTrainerMixin`, so it sits ahead of
    the Trainer."""

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
        # Relies on: Trainer._get_dataloader / pool_dataloader taking the training sampler from
        # here. A user's `train_sampler` (e.g. the re-weighting control) replaces the random one.
        sampler = getattr(self, "train_sampler", None)
        if sampler is not None:
            return sampler
        return super()._get_train_sampler(*args, **kwargs)  # type: ignore[misc]

    def _get_collator_with_removed_columns(self, data_collator: Callable, description: str | None = None) -> Callable:
        # Relies on: Trainer._get_dataloader asking this for the collate_fn of a dataset that is
        # no datasets.Dataset (colm's row-indexing wrapper never is), passing its description.
        # The pool loader hands out rows; the user's collator (and the column filtering, which
        # must keep `source` for the selector) runs once the coreset is chosen.
        if description == POOL_LOADER:
            return keep_rows
        return super()._get_collator_with_removed_columns(data_collator, description)  # type: ignore[misc]

    def _maybe_log_save_evaluate(self, tr_loss: Any, grad_norm: Any, *args: Any, **kwargs: Any) -> None:
        # Relies on: Trainer's loop calling this after every optimizer step with (tr_loss,
        # grad_norm, ...), with self.control telling whether it will log or save.
        self._check_before_log_or_save(tr_loss, grad_norm)  # type: ignore[attr-defined]
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)  # type: ignore[misc]

    def _save_rng_state(self, output_dir: str) -> None:
        # Relies on: Trainer._save_checkpoint calling this for every checkpoint, before
        # trainer_state.json is written (which is what marks a checkpoint complete), on every rank.
        super()._save_rng_state(output_dir)  # type: ignore[misc]
        self._save_coreset_state(output_dir)  # type: ignore[attr-defined]

