"""Log the training loss at every checkpoint save, so a resumed run's report is exact.

The report's "final training loss" is the mean over the whole run; after a resume colm rebuilds
the part before the checkpoint from the losses logged in metrics.jsonl. Steps between the last
log and the checkpoint were never logged, so a run interrupted before its first logging step
reported the mean of the resumed steps only. Logging at each save closes that gap: every step
up to a checkpoint is then in a logged mean. The Trainer reads the loss to the host at a log
anyway, so this costs one sync per save, none per step.
"""
from __future__ import annotations

from transformers import TrainerCallback


class LogAtEverySave(TrainerCallback):
    """Ask the Trainer to log at every step it saves a checkpoint at."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True
        return control
