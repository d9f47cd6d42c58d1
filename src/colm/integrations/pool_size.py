"""The pool one optimizer step draws, and whether the training set can fill it.

A step's pool is pool_factor x per-device batch x gradient accumulation x processes examples.
When the training set is smaller, every step draws the whole set and the coreset shrinks with it
(to as few as one example), so the optimizer steps on a far smaller batch than asked for.

This is refused rather than adjusted: shrinking pool_factor changes the selection ratio (the
method's main setting) and keeping it shrinks the batch the learning rate was chosen for; either
silently trains something other than what was asked. A training set smaller than one pool is
also almost always a mistake (a cap per source or a source filter set too tight).
"""
from __future__ import annotations


class PoolTooLargeError(ValueError):
    """The training set holds fewer examples than one optimizer step's pool."""

    def __init__(
        self, n_examples: int, pool_factor: int, per_device_batch: int, grad_accum: int, world: int
    ) -> None:
        self.n_examples = n_examples
        self.pool_factor = pool_factor
        self.per_device_batch = per_device_batch
        self.grad_accum = grad_accum
        self.world = world
        super().__init__(self.describe(
            "pool_factor", "per_device_train_batch_size", "gradient_accumulation_steps"
        ))

    @property
    def pool(self) -> int:
        return pool_size(self.pool_factor, self.per_device_batch, self.grad_accum, self.world)

    @property
    def largest_fitting_factor(self) -> int:
        """The largest pool_factor whose pool the training set fills (0: not even one batch)."""
        return self.n_examples // (self.per_device_batch * self.grad_accum * self.world)

    def describe(self, factor_name: str, batch_name: str, accum_name: str) -> str:
        """The message, with the three settings called by the given names (Python or CLI)."""
        fits = self.largest_fitting_factor
        if fits >= 2:
            remedy = f"lower {factor_name} to at most {fits}, lower the batch, or train on more data"
        else:
            remedy = (
                f"the training set does not fill two batches, so no selection fits; lower the batch "
                f"or train on more data ({factor_name} 1 trains without selection)"
            )
        return (
            f"one optimizer step's pool ({factor_name} {self.pool_factor} x {batch_name} "
            f"{self.per_device_batch} x {accum_name} {self.grad_accum} x {self.world} process(es) = "
            f"{self.pool} examples) is larger than the training set ({self.n_examples} examples): "
            f"every step would draw the whole set and train on fewer examples than the batch; {remedy}"
        )


def pool_size(pool_factor: int, per_device_batch: int, grad_accum: int, world: int) -> int:
    """Examples one optimizer step draws, over all processes."""
    return pool_factor * per_device_batch * grad_accum * world


def check_pool_fits(
    n_examples: int, pool_factor: int, per_device_batch: int, grad_accum: int, world: int = 1
) -> None:
    """Raise PoolTooLargeError when selection is on and the training set cannot fill one pool."""
    if pool_factor > 1 and n_examples < pool_size(pool_factor, per_device_batch, grad_accum, world):
        raise PoolTooLargeError(n_examples, pool_factor, per_device_batch, grad_accum, world)


def check_training_pool(dataset: object, pool_factor: int, args: object) -> None:
    """check_pool_fits for a Trainer's training set and TrainingArguments (sized datasets only)."""
    try:
        n_examples = len(dataset)  # type: ignore[arg-type]
    except TypeError:  # an IterableDataset: its size is unknown
        return
    if n_examples == 0:
        raise ValueError(
            "the training set is empty (after tokenization every example may have lost its "
            "supervised tokens to truncation: check max_length and the prompt template)"
        )
    check_pool_fits(
        n_examples, pool_factor, args.per_device_train_batch_size,  # type: ignore[attr-defined]
        args.gradient_accumulation_steps, args.world_size,  # type: ignore[attr-defined]
    )
