"""`--noise-scale-every N` of `colm train` and `colm compare`: the gradient noise scale during
training (colm.integrations.noise_scale), and what the report says about it."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from colm.cli.errors import UsageError
from colm.diagnostics.noise_scale import pooled_b_simple, regime, regime_sentence


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


def summary(callback: Any, pool_factor: int | None, parts: int = 5) -> dict[str, Any] | None:
    """report.json's `noise_scale`: B_simple over training in `parts` consecutive stretches of
    the measurements (each pooled: the ratio of the mean estimates), the later half's B_simple
    that the report's sentence uses, and every measurement; None when it was off."""
    if callback is None:
        return None
    history = list(callback.history)
    batch = float(history[-1]["batch"]) if history else math.nan
    stretches = []
    for part in _chunks(history, parts):
        b = pooled_b_simple([h["grad_sq_step"] for h in part], [h["trace_step"] for h in part])
        stretches.append({"first_step": part[0]["step"], "last_step": part[-1]["step"], "measurements": len(part),
                          "b_simple": b if math.isfinite(b) else None})
    late = history[len(history) // 2:]
    b_late = pooled_b_simple([h["grad_sq_step"] for h in late], [h["trace_step"] for h in late])
    defined = math.isfinite(b_late) and bool(history)
    return {
        "mode": callback.mode, "every": callback.every, "measurements": callback.ema.count,
        "skipped_clipped": callback.skipped_clipped, "batch": batch,
        "pool": batch * pool_factor if pool_factor and pool_factor > 1 and history else None,
        "b_simple": b_late if defined else None, "regime": regime(b_late, batch) if defined else None,
        "over_training": stretches,
        "per_step": [{k: h[k] for k in ("step", "grad_sq_step", "trace_step", "b_simple", "b_small", "b_big")}
                     for h in history],
    }


def markdown(section: dict[str, Any] | None) -> str:
    """report.md's paragraph: B_simple over training next to the batch (and the pool), and one
    sentence saying whether the batch is below, near or far above it."""
    if section is None:
        return ""
    lines = ["", "## Gradient noise scale", ""]
    if not section["per_step"]:
        lines.append(f"No measurement ({section['mode'] or 'one batch size per step'}: see "
                     "--noise-scale-split, or use --gradient-accumulation-steps >= 2).")
        return "\n".join(lines) + "\n"
    pool = f", pool {section['pool']:g}" if section.get("pool") else ""
    lines += [f"B_simple = tr(Sigma)/|G|^2, measured every {section['every']} steps ({section['mode']}; "
              "each stretch pools its measurements: the ratio of their mean estimates); "
              f"the batch is {section['batch']:g}{pool}.", "",
              "| steps | measurements | B_simple | B_simple / batch |", "|---|---:|---:|---:|"]
    for part in section["over_training"]:
        b = part["b_simple"]
        shown = f"{b:.3g}" if b is not None else "undefined (the noise swamps |G|^2)"
        ratio = f"{b / section['batch']:.2g}" if b is not None else ""
        lines.append(f"| {part['first_step']}-{part['last_step']} | {part['measurements']} | {shown} | {ratio} |")
    lines.append("")
    if section["b_simple"] is not None:
        lines.append(regime_sentence(section["b_simple"], section["batch"])
                     + " (B_simple of the later half of the measurements.)")
    else:
        lines.append("Over the later half of the measurements B_simple is undefined: the gradient's mean is "
                     "still below its noise, so a far larger batch would be needed to see it.")
    if section.get("skipped_clipped"):
        lines.append(f"({section['skipped_clipped']} measured steps were skipped: their gradient was clipped.)")
    return "\n".join(lines) + "\n"


def _chunks(items: Sequence[dict[str, Any]], parts: int) -> list[list[dict[str, Any]]]:
    """`items` in at most `parts` consecutive, nearly equal, non-empty pieces."""
    parts = max(1, min(parts, len(items)))
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        out.append(list(items[start:start + size]))
        start += size
    return [c for c in out if c]
