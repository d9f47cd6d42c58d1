"""The CoresetTrainer of colm's commands: their collator, and no transformers progress output."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def make_trainer(
    model: Any, tokenizer: Any, train_dataset: Any, targs: Any, coreset: Any, *,
    callbacks: Sequence[Any] = (), log_selections: bool = True, progress: Any = None,
    train_sampler: Any = None, noise_scale: Any = None,
):
    """A CoresetTrainer whose progress display is `progress` (a TrainerCallback) or none;
    `train_sampler` replaces the Trainer's random order (the re-weighting control of `colm compare`);
    `noise_scale` (anything with `noise_scale_every` and `noise_scale_split`, e.g. the CLI's
    NoiseScaleArguments) turns on the gradient noise scale."""
    from transformers import DataCollatorForSeq2Seq
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from colm.config import CoresetConfig
    from colm.integrations.trainer import CoresetTrainer

    trainer = CoresetTrainer(
        model=model, args=targs, train_dataset=train_dataset, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        # pool_factor=1 for no selection: None would warn that the config was forgotten
        coreset_config=coreset if coreset is not None else CoresetConfig(pool_factor=1),
        log_selections=log_selections and coreset is not None,
        callbacks=list(callbacks), train_sampler=train_sampler,
        noise_scale_every=noise_scale.noise_scale_every if noise_scale is not None else 0,
        noise_scale_split=bool(noise_scale is not None and noise_scale.noise_scale_split),
    )
    # transformers' bar (or its raw-dict printer) would duplicate the caller's.
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if progress is not None:
        trainer.add_callback(progress)
    return trainer
