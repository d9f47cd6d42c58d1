"""The opening of `colm compare`'s report: what the numbers say, in sentences.

Per loss (natural mixture, mean over sources, worst source), every arm is placed against the
baseline by its seed-paired 95% interval: better (the whole interval below 0), worse (above 0)
or not told apart from seed noise (the interval holds 0). An arm that differs is followed by
what it costs next to the baseline: steps, compute (training-row equivalents), time per step and
peak memory. Nothing here is judged beyond the intervals: with means only (`--no-intervals`)
the verdict says that no difference can be told from noise.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: (result key, words) of the losses, as compare/report.py's LOSSES.
LOSS_WORDS = {"val_loss_natural": "natural-mixture loss", "val_loss_mean": "mean loss over sources",
              "val_loss_worst": "worst-source loss"}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _ratio(a: Any, b: Any) -> str:
    if not (_finite(a) and _finite(b)) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def cost_words(arm: Mapping[str, Any], base: Mapping[str, Any], plan: Mapping[str, Mapping[str, Any]]) -> str:
    """"3 steps vs 3, compute 1.00x, time per step 1.35x, peak memory 0.62x" (arm next to baseline)."""
    steps = ",".join(map(str, arm.get("steps", [])))
    base_steps = ",".join(map(str, base.get("steps", [])))
    units = _ratio(plan.get(arm["arm"], {}).get("units"), plan.get(base["arm"], {}).get("units"))
    return (f"{steps} steps vs {base_steps}, compute {units}, time per step "
            f"{_ratio(arm.get('step_s'), base.get('step_s'))}, peak memory "
            f"{_ratio(arm.get('peak_mem_mib'), base.get('peak_mem_mib'))}")


def _interval(d: Mapping[str, float]) -> str:
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def verdict(arms: Sequence[Mapping[str, Any]], baseline: str, plan: Mapping[str, Mapping[str, Any]], *,
            intervals: bool, budget: str) -> list[str]:
    """Markdown lines: the answer first, then one bullet per loss (see the module docstring).

    `arms` is compare.report.summarize_arms' output, `plan` the step plan with each arm's compute."""
    base = next((a for a in arms if a["arm"] == baseline), None)
    others = [a for a in arms if a["arm"] != baseline]
    seeds = min((len(a["seeds"]) for a in arms), default=0)
    lines = ["## Verdict", ""]
    if base is None or not others:
        return lines + [f"Only {baseline} ran: there is nothing to compare it with.", ""]
    if not intervals:
        return lines + [f"Means only (--no-intervals): with no interval no difference to {baseline} can be "
                        "told from seed noise; rerun with two or more seeds.", ""]
    better: dict[str, list[str]] = {}
    worse: dict[str, list[str]] = {}
    bullets = []
    for key, words in LOSS_WORDS.items():
        if base["losses"][key].get("undefined"):
            bullets.append(f"- **{words}**: undefined (no validation source is a training source), not compared.")
            continue
        parts = []
        noise = []
        for a in others:
            d = a["losses"][key].get("paired")
            if d is None or not all(_finite(d.get(k)) for k in ("mean", "lo", "hi")):
                noise.append(f"{a['arm']} (no interval)")
            elif d["hi"] < 0:
                better.setdefault(a["arm"], []).append(words)
                parts.append(f"{a['arm']} is better than {baseline} by {-d['mean']:.3f} ({_interval(d)})")
            elif d["lo"] > 0:
                worse.setdefault(a["arm"], []).append(words)
                parts.append(f"{a['arm']} is worse than {baseline} by {d['mean']:.3f} ({_interval(d)})")
            else:
                noise.append(f"{a['arm']} ({_interval(d)})")
        if noise:
            parts.append("within seed noise: " + ", ".join(noise))
        bullets.append(f"- **{words}** (arm minus {baseline}, 95% interval): " + "; ".join(parts) + ".")
    answer = []
    for name in [a["arm"] for a in others]:
        arm = next(a for a in others if a["arm"] == name)
        if name in better or name in worse:
            said = []
            if name in better:
                said.append(f"better on the {', '.join(better[name])}")
            if name in worse:
                said.append(f"worse on the {', '.join(worse[name])}")
            answer.append(f"**{name}** is {' and '.join(said)} than {baseline}, at {cost_words(arm, base, plan)}.")
    if not answer:
        answer.append(f"No arm differs from **{baseline}** beyond seed noise on any loss ({seeds} seeds, "
                      f"{'equal steps' if budget == 'steps' else 'equal compute'}): on this evidence the choice "
                      "between them can rest on cost (the table below); more seeds or steps would narrow the "
                      "intervals.")
    else:
        rest = [a["arm"] for a in others if a["arm"] not in better and a["arm"] not in worse]
        if rest:
            answer.append(f"{', '.join(rest)}: not told apart from {baseline} on any loss ({seeds} seeds).")
    budget_words = "equal optimizer steps" if budget == "steps" else "equal compute"
    return lines + [" ".join(answer), "", f"Per loss ({budget_words}, {seeds} seeds, differences paired by seed):", "",
                    *bullets, ""]
