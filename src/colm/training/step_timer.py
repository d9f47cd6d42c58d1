"""The one step timer of colm's commands and benchmarks."""
from __future__ import annotations

import math
import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, from the end of the previous one.

    Measured end to end so the pool's scoring and selection (which run before the Trainer's
    on_step_begin) count; time spent in colm's own evaluations is excluded via `skip()`.
    """

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._last: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._last is not None:
            self.durations.append(now - self._last)
        self._last = now

    def skip(self) -> None:
        """Restart the clock (after work that is not training)."""
        self._last = time.perf_counter()

    def summary(self) -> dict[str, float]:
        d = sorted(self.durations)
        if not d:
            return {"steps": 0, "mean_s": math.nan, "median_s": math.nan, "total_s": 0.0}
        return {
            "steps": len(d),
            "mean_s": sum(d) / len(d),
            "median_s": d[len(d) // 2] if len(d) % 2 else (d[len(d) // 2 - 1] + d[len(d) // 2]) / 2,
            "total_s": sum(d),
        }
