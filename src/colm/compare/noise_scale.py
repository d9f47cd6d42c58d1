"""The comparison report's paragraph on the gradient noise scale (`--noise-scale-every`): where
the batch stands relative to B_simple, and what that predicts for an arm with a larger batch.

McCandlish et al. (2018) model the steps a run needs at batch B as S_min (1 + B_simple / B), so
at equal steps a batch k times larger makes each step worth (1 + B_simple/b) / (1 + B_simple/(k b))
steps of b: close to k when b is far below B_simple, close to 1 when far above. The paragraph
puts that number next to the arm's measured difference; it explains, it does not decide.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from colm.diagnostics.noise_scale import pooled_b_simple, regime_sentence


def arm_row_summary(callback: Any) -> dict[str, Any] | None:
    """What one arm x seed run keeps of its NoiseScaleCallback (None when none ran): the later
    half's pooled B_simple and its parts, and per_step = [step, |G|^2, tr(Sigma), b_small, b_big]
    of every measurement."""
    if callback is None:
        return None
    history = callback.history
    late = history[len(history) // 2:]
    b_late = pooled_b_simple([h["grad_sq_step"] for h in late], [h["trace_step"] for h in late])
    return {"mode": callback.mode, "measurements": callback.ema.count,
            "b_simple_late": b_late if math.isfinite(b_late) else None,
            "grad_sq_late": statistics.fmean(h["grad_sq_step"] for h in late) if late else None,
            "trace_late": statistics.fmean(h["trace_step"] for h in late) if late else None,
            "batch": float(history[-1]["batch"]) if history else None,
            # every measurement, so B_simple can be re-pooled over any window and any seeds later
            "per_step": [[h["step"], h["grad_sq_step"], h["trace_step"], h["b_small"], h["b_big"]] for h in history]}


def step_worth(b_simple: float, batch: float, larger: float) -> float:
    """Steps of `batch` one step of `larger` is worth under McCandlish et al.'s model."""
    return (1 + b_simple / batch) / (1 + b_simple / larger)


def verdict_lines(runs: Sequence[dict[str, Any]], arms: Sequence[dict[str, Any]], baseline: str) -> list[str]:
    """The verdict's reason, under it: for each arm with more rows per step than the baseline,
    what its steps are worth by the measured noise scale and whether it won (none when off)."""
    body = markdown(runs, arms, baseline)
    reasons = [line[2:] for line in body if line.startswith("- ")]
    if not reasons:
        return []
    return ["Why (gradient noise scale, see \"Would a larger batch help?\"): " + " ".join(reasons), ""]


def markdown(runs: Sequence[dict[str, Any]], arms: Sequence[dict[str, Any]], baseline: str) -> list[str]:
    """Lines of report.md (none when no run measured the noise scale)."""
    components: dict[str, tuple[list[float], list[float]]] = {}
    rows_per_step: dict[str, float] = {}
    for r in runs:
        rows_per_step[r["arm"]] = float(r.get("train_rows_per_step") or 0)
        ns = r.get("noise_scale") or {}
        if ns.get("grad_sq_late") is not None:
            g2s, traces = components.setdefault(r["arm"], ([], []))
            g2s.append(ns["grad_sq_late"])
            traces.append(ns["trace_late"])
    # pooled over seeds: the ratio of the mean estimates (one seed's is noisy)
    measured = {arm: b for arm, (g2s, traces) in components.items() if math.isfinite(b := pooled_b_simple(g2s, traces))}
    if not any(r.get("noise_scale") for r in runs):
        return []
    lines = ["## Would a larger batch help? (gradient noise scale)", ""]
    if not measured:
        return lines + ["No arm measured B_simple (an arm with one process and no accumulation needs "
                        "--noise-scale-split).", ""]
    lines += ["| arm | rows per step | B_simple, later half of the run (pooled over seeds) | B_simple / rows |",
              "|---|---:|---:|---:|"]
    for arm, b in measured.items():
        lines.append(f"| {arm} | {rows_per_step[arm]:g} | {b:.3g} | {b / rows_per_step[arm]:.2g} |")
    lines.append("")
    source = baseline if baseline in measured else next(iter(measured))
    b_simple = measured[source]
    base_rows = rows_per_step.get(baseline) or rows_per_step[source]
    lines.append(regime_sentence(b_simple, base_rows) + f" (B_simple from {source}.)")
    natural = {a["arm"]: a["losses"]["val_loss_natural"].get("paired") for a in arms}
    for a in arms:
        rows = rows_per_step.get(a["arm"], 0.0)
        if a["arm"] == baseline or rows <= base_rows:
            continue
        worth = step_worth(b_simple, base_rows, rows)
        d = natural.get(a["arm"])
        result = ("" if d is None else
                  f"; measured: {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] on the natural mixture "
                  f"({'it won' if d['hi'] < 0 else 'it lost' if d['lo'] > 0 else 'a tie'})")
        lines.append(f"- {a['arm']} trains {rows / base_rows:g}x the baseline's rows per step: at B_simple "
                     f"~ {b_simple:.3g}, each of its steps is worth about {worth:.2f} of the baseline's "
                     f"(at most {rows / base_rows:g}){result}.")
    return lines + [""]
