"""`--noise-scale-every N` of `colm train` and `colm compare`: the gradient noise scale during
training (colm.integrations.noise_scale), and what the report says about it."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from colm.cli.errors import UsageError
from colm.diagnostics.noise_scale import regime, regime_sentence


@dataclasses.dataclass
class NoiseScaleArguments:
    """Whether and how often the gradient noise scale is measured."""

    _argument_group_name = "gradient noise scale"

    noise_scale_every: int = dataclasses.field(default=0, metadata={"help": (
        "Measure the gradient noise scale B_simple = tr(Sigma)/|G|^2 every N optimizer steps "
        "(0: off) from two batch sizes the step already has: the first micro-batch and the "
        "accumulated gradient (--gradient-accumulation-steps >= 2), or each process's and the "
        "reduced gradient (several processes). Logged as noise_scale/* and summarized in the "
        "report: whether a larger batch would help (docs/cli.md).")})
    noise_scale_split: bool = dataclasses.field(default=False, metadata={"help": (
        "With one process and no accumulation: train the measured steps as two half "
        "micro-batches (the same gradient), so --noise-scale-every can measure.")})

    def check(self) -> None:
        if self.noise_scale_every < 0:
            raise UsageError(f"--noise-scale-every: expected an integer >= 0 (0: off), got {self.noise_scale_every}")


def summary(callback: Any, pool_factor: int | None) -> dict[str, Any] | None:
    """report.json's `noise_scale`: the measurements and the last moving average, or None."""
    if callback is None:
        return None
    history = list(callback.history)
    last = history[-1] if history else None
    b_simple = last["b_simple"] if last is not None else math.nan
    batch = float(last["batch"]) if last is not None else math.nan
    return {
        "mode": callback.mode, "every": callback.every, "measurements": callback.ema.count,
        "skipped_clipped": callback.skipped_clipped, "batch": batch,
        "pool": batch * pool_factor if pool_factor and pool_factor > 1 and last is not None else None,
        "b_simple": b_simple if math.isfinite(b_simple) else None,
        "regime": regime(b_simple, batch) if math.isfinite(b_simple) and last is not None else None,
        "per_step": [{k: h[k] for k in ("step", "b_simple", "grad_sq", "trace", "b_small", "b_big")} for h in history],
    }


def markdown(section: dict[str, Any] | None, rows: int = 6) -> str:
    """report.md's paragraph: B_simple over training next to the batch (and the pool), and one
    sentence saying whether the batch is below, near or far above it."""
    if section is None:
        return ""
    lines = ["", "## Gradient noise scale", ""]
    per_step = section["per_step"]
    if not per_step:
        lines.append(f"No measurement ({section['mode'] or 'one batch size per step'}: see "
                     "--noise-scale-split, or use --gradient-accumulation-steps >= 2).")
        return "\n".join(lines) + "\n"
    pool = f", pool {section['pool']:g}" if section.get("pool") else ""
    lines += [f"B_simple = tr(Sigma)/|G|^2 (moving average), measured every {section['every']} steps "
              f"({section['mode']}); the batch is {section['batch']:g}{pool}.", "",
              "| step | B_simple | B_simple / batch |", "|---|---|---|"]
    for h in _spread(per_step, rows):
        b = h["b_simple"]
        shown = f"{b:.0f}" if math.isfinite(b) else "n/a (|G|^2 not yet above the noise)"
        ratio = f"{b / section['batch']:.1f}" if math.isfinite(b) else ""
        lines.append(f"| {h['step']} | {shown} | {ratio} |")
    lines.append("")
    if section["b_simple"] is not None:
        lines.append(regime_sentence(section["b_simple"], section["batch"]))
    else:
        lines.append("The last average is undefined: the gradient's mean is still below its noise.")
    if section.get("skipped_clipped"):
        lines.append(f"({section['skipped_clipped']} measured steps were skipped: their gradient was clipped.)")
    return "\n".join(lines) + "\n"


def _spread(items: Sequence[dict[str, Any]], rows: int) -> list[dict[str, Any]]:
    """At most `rows` items, evenly spread, the last one always included."""
    if len(items) <= rows:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (rows - 1)) for i in range(rows)})
    return [items[i] for i in picks]
