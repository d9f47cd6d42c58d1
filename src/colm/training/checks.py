"""A run's settings checked before anything is written: the selection settings against the run
they are for (its data and training arguments), the seeds, and --num-train-epochs where
--max-steps decides. Each raises colm.errors.InputError naming the option."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from colm.errors import InputError


def check_pool(coreset: Any, n_examples: int, targs: Any) -> None:
    """Refuse a pool larger than the training set (colm.integrations.pool_size says why it is not adjusted)."""
    from colm.integrations.pool_size import PoolTooLargeError, check_pool_fits

    if coreset is None:
        return
    try:
        check_pool_fits(n_examples, coreset.pool_factor, targs.per_device_train_batch_size,
                        targs.gradient_accumulation_steps, targs.world_size)
    except PoolTooLargeError as err:
        raise InputError(err.describe(
            "--pool-factor", "--per-device-train-batch-size", "--gradient-accumulation-steps"
        )) from None


def check_small_sources(coreset: Any, sources: Sequence[str]) -> None:
    """Refuse --small-sources names the training data does not have."""
    if coreset is not None and isinstance(coreset.small_sources, list):
        unknown = [s for s in coreset.small_sources if s not in sources]
        if unknown:
            raise InputError(
                f"--small-sources: unknown source name(s) {unknown}; the training data has {sorted(sources)}"
            )


def check_pseudo_sources(coreset: Any, targs: Any, n_rows: int | None = None) -> None:
    """--pseudo-sources settings that cannot do what they say: a warm-up as long as the run (the
    clusters would never be used), or more clusters than training rows (`n_rows`, once loaded)."""
    if coreset is None or coreset.pseudo_sources is None or coreset.pool_factor < 2:
        return
    warmup = coreset.pseudo_source_warmup_steps
    if targs.max_steps > 0 and warmup >= targs.max_steps:
        raise InputError(
            f"--pseudo-source-warmup-steps: {warmup} warm-up steps in a run of --max-steps "
            f"{targs.max_steps}: the pseudo-sources would never be used; use fewer than {targs.max_steps}"
        )
    if n_rows is not None and coreset.pseudo_sources != "auto" and coreset.pseudo_sources > n_rows:
        raise InputError(
            f"--pseudo-sources: {coreset.pseudo_sources} clusters, but the training data has only "
            f"{n_rows} examples; use at most {n_rows}, or 'auto'"
        )


def check_seeds(targs: Any) -> None:
    """The seeds numpy and torch accept (a negative one failed inside the Trainer, as a bug)."""
    for flag, value in (("--seed", targs.seed), ("--data-seed", targs.data_seed)):
        if value is not None and not 0 <= value < 2**32:
            raise InputError(f"{flag}: {value} is not a seed; expected a whole number from 0 to 2**32 - 1")


#: TrainingArguments' own default of num_train_epochs: any other value was given by the user.
DEFAULT_EPOCHS = 3.0


def check_epochs(targs: Any, command: str) -> None:
    """--num-train-epochs given while --max-steps decides the length (a value out of range is
    left to colm.training.option_ranges, which names the range)."""
    epochs = targs.num_train_epochs
    if not (isinstance(epochs, (int, float)) and 0 < epochs < float("inf")):
        return
    if targs.max_steps > 0 and epochs != DEFAULT_EPOCHS:
        raise InputError(
            f"--num-train-epochs {targs.num_train_epochs}: does nothing while --max-steps is {targs.max_steps} "
            f"(--max-steps decides; {command}'s default is 100 steps): "
            + ("pass --max-steps -1 to train by epochs" if command == "colm train" else
               "colm compare trains --max-steps steps per arm; leave --num-train-epochs out"))
