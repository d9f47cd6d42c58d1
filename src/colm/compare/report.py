"""The comparison's report: per arm mean +- sd over seeds and the seed-paired difference to the
baseline with a 95% t interval, on the natural-mixture loss, the mean over sources and the worst
source; step time, peak memory and compute per arm. Markdown, JSON and one plot."""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colm.compare.stats import IntervalError, mean_sd, paired_difference

#: (result key, column title): the losses every table reports, the natural mixture first.
LOSSES = (
    ("val_loss_natural", "natural mixture"),
    ("val_loss_mean", "mean over sources"),
    ("val_loss_worst", "worst source"),
)
NATURAL_NOTE = ("natural mixture = per-source validation loss weighted by the source's share of the "
                "training rows (what a large random batch optimizes); mean over sources = every "
                "source weighted equally")


def finished(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that trained to a finite model (a diverged run has no loss to average)."""
    return [r for r in runs if not r.get("diverged")]


def diverged_markdown(runs: Sequence[dict[str, Any]]) -> str:
    """A report.md section naming every arm x seed whose training diverged (empty when none)."""
    bad = [r for r in runs if r.get("diverged")]
    if not bad:
        return ""
    lines = ["## Diverged runs", "",
             "These runs stopped on a non-finite loss, gradient norm or weight; they are left out of every "
             "mean and interval above.", "", "| arm | seed | step | what |", "|---|---:|---:|---|"]
    lines += [f"| {r['arm']} | {r['seed']} | {r['diverged'].get('step')} | {r['diverged'].get('what')} |" for r in bad]
    return "\n".join(lines) + "\n"


def by_arm(runs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        arms.setdefault(r["arm"], []).append(r)
    return arms


def summarize_arms(runs: Sequence[dict[str, Any]], baseline: str, *, intervals: bool = True) -> list[dict[str, Any]]:
    """One dict per arm (in order of first appearance): seeds, steps, compute, step time, memory,
    and per loss: mean, sd, and `paired` (arm - baseline; None for the baseline or without
    intervals). Raises IntervalError when intervals are asked of < 2 paired seeds. Diverged
    runs are left out."""
    arms = by_arm(finished(runs))
    base = {r["seed"]: r for r in arms.get(baseline, [])}
    out = []
    for name, rs in arms.items():
        entry: dict[str, Any] = {
            "arm": name, "seeds": sorted(r["seed"] for r in rs),
            "steps": sorted({r.get("steps") for r in rs}, key=str),
            "units": rs[0].get("units"),
            "step_s": statistics.median(r["step_s"] for r in rs),
            "wall_s": statistics.mean(r["wall_s"] for r in rs),
            "peak_mem_mib": max(r["peak_mem_mib"] for r in rs), "mem_kind": rs[0].get("mem_kind"),
            "losses": {},
        }
        for key, _ in LOSSES:
            if all(not _finite(r.get(key)) for r in runs):  # e.g. natural: no validation source was trained on
                entry["losses"][key] = {"mean": math.nan, "sd": math.nan, "paired": None, "undefined": True}
                continue
            m, sd = mean_sd([r[key] for r in rs])
            d = None
            if intervals and name != baseline:
                d = paired_difference({r["seed"]: r[key] for r in rs},
                                      {s: r[key] for s, r in base.items()}).as_dict()
            entry["losses"][key] = {"mean": m, "sd": sd, "paired": d}
        out.append(entry)
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _cell(x: dict[str, Any]) -> str:
    if x.get("undefined"):
        return "undefined"
    return f"{x['mean']:.3f}" if math.isnan(x["sd"]) else f"{x['mean']:.3f} ± {x['sd']:.3f}"


def _diff(d: dict[str, Any] | None) -> str:
    return "—" if d is None else f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def loss_table(runs: Sequence[dict[str, Any]], baseline: str, *, intervals: bool = True) -> str:
    """Markdown: per arm and loss, mean ± sd and minus the baseline (paired, 95% t interval)."""
    try:
        arms = summarize_arms(runs, baseline, intervals=intervals)
    except IntervalError:  # e.g. an arm run on a single seed so far: show it without intervals
        arms = summarize_arms(runs, baseline, intervals=False)
    head = ["arm", "seeds", "steps"]
    for _, title in LOSSES:
        head += [f"val loss, {title}", f"minus {baseline} (paired, 95% CI)"]
    head += ["s / step (median)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|" + "---|---|" * len(LOSSES) + "---:|"]
    for a in arms:
        cells = [a["arm"], str(len(a["seeds"])), ",".join(map(str, a["steps"]))]
        for key, _ in LOSSES:
            cells += [_cell(a["losses"][key]), _diff(a["losses"][key]["paired"])]
        cells.append(f"{a['step_s']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def exact_match_table(runs: Sequence[dict[str, Any]], baseline: str, *, intervals: bool = True) -> str | None:
    """Greedy-decoding exact match per arm (overall and mean over sources), when the runs have it."""
    scored = [r for r in runs if r.get("exact_match")]
    if not scored:
        return None
    arms = by_arm(scored)
    base = {r["seed"]: r for r in arms.get(baseline, [])}
    rows = ["| arm | questions | exact match, overall | minus " + baseline + " | exact match, mean over sources |",
            "|---|---:|---|---|---|"]
    for name, rs in arms.items():
        overall = mean_sd([r["exact_match"]["overall"] for r in rs])
        mean = mean_sd([r["exact_match"]["mean"] for r in rs])
        d = None
        if intervals and name != baseline and base:
            try:
                d = paired_difference({r["seed"]: r["exact_match"]["overall"] for r in rs},
                                      {k: r["exact_match"]["overall"] for k, r in base.items()}).as_dict()
            except IntervalError:
                d = None
        n = sum(rs[0]["exact_match"]["n"].values())
        rows.append(f"| {name} | {n} | {_cell({'mean': overall[0], 'sd': overall[1]})} | {_diff(d)} | "
                    f"{_cell({'mean': mean[0], 'sd': mean[1]})} |")
    return "\n".join(rows)


def kept_whole(runs: Sequence[dict[str, Any]], train_rows: dict[str, int]) -> dict[str, list[str]]:
    """Per arm, the sources its selection keeps whole (every pool row of them): the small
    sources of its CoresetConfig; none for arms without a pool."""
    from colm.selection.budget import small_sources

    out: dict[str, list[str]] = {}
    for name, rs in by_arm(runs).items():
        cfg = rs[0].get("coreset") or {}
        if cfg.get("pool_factor", 1) > 1 and not cfg.get("pseudo_sources"):
            try:
                out[name] = sorted(map(str, small_sources(cfg.get("small_sources", "below_mean"), train_rows)))
            except ValueError:
                out[name] = []
        else:
            out[name] = []
    return out


def per_source_table(runs: Sequence[dict[str, Any]], train_rows: dict[str, int]) -> str | None:
    """Markdown: validation loss per source (mean over seeds) per arm; * marks a source that some
    arm keeps whole, with the arms that do in the last column."""
    arms = by_arm([r for r in runs if r.get("per_source")])
    if not arms:
        return None
    whole = kept_whole(runs, train_rows)
    sources = sorted({s for rs in arms.values() for r in rs for s in r["per_source"]})
    lines = ["| source | training rows | " + " | ".join(arms) + " | kept whole by |",
             "|---|---:|" + "---:|" * len(arms) + "---|"]
    for src in sources:
        cells = []
        for rs in arms.values():
            vals = [r["per_source"][src] for r in rs if _finite(r["per_source"].get(src))]
            cells.append(f"{sum(vals) / len(vals):.3f}" if vals else "—")
        keepers = [a for a in arms if src in whole.get(a, [])]
        name = f"{src} *" if keepers else src
        lines.append(f"| {name} | {train_rows.get(src, 0)} | " + " | ".join(cells)
                     + f" | {', '.join(keepers) or '—'} |")
    return "\n".join(lines)


def compute_table(plan: dict[str, dict[str, Any]]) -> str:
    lines = ["| arm | steps | training rows / step | scoring rows / step | cost ratio "
             "| compute (training-row equivalents) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, p in plan.items():
        ratio = ("—" if not p["scoring_rows_per_step"] else
                 f"{p['ratio']:.3f}" + (f" ({p['ratio_from']})" if p.get("ratio_from") else ""))
        lines.append(f"| {name} | {p['steps']} | {p['train_rows_per_step']} | {p['scoring_rows_per_step']} "
                     f"| {ratio} | {p['units']:.0f} |")
    return "\n".join(lines)


def plot(arms: list[dict[str, Any]], baseline: str, path: Path, budget: str = "steps") -> None:
    """Paired difference to the baseline (95% interval) per arm, one panel per loss; each arm's
    label carries its steps, the title the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [a for a in arms if a["arm"] != baseline]
    fig, axes = plt.subplots(1, len(LOSSES), figsize=(5 * len(LOSSES), 2.0 + 0.5 * max(1, len(others))), squeeze=False)
    for ax, (key, title) in zip(axes[0], LOSSES):
        for i, a in enumerate(others):
            d = a["losses"][key]["paired"]
            if d is not None:
                ax.errorbar(d["mean"], i, xerr=[[d["mean"] - d["lo"]], [d["hi"] - d["mean"]]], fmt="o", capsize=3)
        ax.axvline(0, color="gray", lw=1)
        ax.set_yticks(range(len(others)), [f"{a['arm']} ({','.join(map(str, a['steps']))} steps)" for a in others]
                      if key == LOSSES[0][0] else [""] * len(others))
        ax.set_ylim(-0.6, len(others) - 0.4)
        ax.set_title(f"{title}\nminus {baseline} (lower = better)", fontsize=9)
        ax.set_xlabel("validation loss difference, mean and 95% t interval over seeds", fontsize=8)
    base = next((a for a in arms if a["arm"] == baseline), None)
    base_steps = ",".join(map(str, base["steps"])) if base else "?"
    fig.suptitle(f"budget: {'equal optimizer steps' if budget == 'steps' else 'equal compute'}; "
                 f"{baseline}: {base_steps} steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out: Path, *, runs: Sequence[dict[str, Any]], plan: dict[str, dict[str, Any]], baseline: str,
          budget: str, settings: dict[str, Any], intervals: bool, harness: dict[str, float]) -> list[Path]:
    """report.md, report.json and compare.png into `out`; returns the paths written."""
    from colm.compare.noise_scale import markdown as noise_scale_markdown
    from colm.compare.noise_scale import verdict_lines as noise_scale_verdict
    from colm.files import atomic_write_json, atomic_write_text, writing

    try:
        arms = summarize_arms(runs, baseline, intervals=intervals)
    except IntervalError:  # e.g. diverged runs left fewer than 2 paired seeds
        intervals = False
        arms = summarize_arms(runs, baseline, intervals=False)
    png = out / "compare.png"
    if intervals:
        with writing(f"writing {png.name}", png):
            plot(arms, baseline, png, budget)
    from colm.compare.verdict import verdict

    train_rows = settings.get("train_rows", {})
    per_source = per_source_table(runs, train_rows)
    budget_text = ("equal optimizer steps" if budget == "steps" else
                   f"equal compute: {baseline} trains its steps, every other arm the whole steps whose "
                   "compute fits the same total; compute = training rows + scoring-pass rows x their "
                   "measured cost ratio (scoring time per row / training time per row, from a short "
                   "calibration run of the arm), in training-row equivalents")
    lines = [
        "# colm compare", "",
        f"Arms: {', '.join(plan)}; seeds: {', '.join(map(str, settings['seeds']))}; baseline: {baseline}; "
        f"budget: {budget_text}. Every arm of a seed starts from the same initialisation and data order.", "",
        *verdict(arms, baseline, plan, intervals=intervals, budget=budget),
        *noise_scale_verdict(runs, arms, baseline),
        "## Losses", "",
        f"Losses: {NATURAL_NOTE}. Differences are arm minus {baseline}, paired by seed, with a 95% "
        "Student-t interval (negative = the arm is better).", "",
        *([f"Validation sources: {', '.join(settings['validation_sources'])}."
           + (f" **Note:** {settings['validation_note']}." if settings.get("validation_note") else ""), ""]
          if settings.get("validation_sources") else []),
        loss_table(runs, baseline, intervals=intervals), "",
        *(["## Per source", "", "Validation loss per source, mean over seeds; * = kept whole (every pool "
            "row of it trained) by the arms named in the last column.", "", per_source, ""] if per_source else []),
        *(["## Exact match (greedy decoding, numeric answers)", "", em, ""] if (em := exact_match_table(
            runs, baseline, intervals=intervals)) else []),
        *noise_scale_markdown(runs, arms, baseline),
        "## Compute per arm", "", compute_table(plan), "",
        "## Time and memory", "",
        "| arm | s / step (median) | training wall s (mean) | peak memory MiB (max over seeds) |",
        "|---|---:|---:|---:|",
        *[f"| {a['arm']} | {a['step_s']:.3f} | {a['wall_s']:.1f} | {a['peak_mem_mib']:.0f} |" for a in arms], "",
        f"Peak memory: {arms[0]['mem_kind'] if arms else '—'}. Harness overhead (building each arm's "
        f"trainer and progress display, outside training): {harness['harness_s']:.2f} s over "
        f"{harness['train_s']:.1f} s of training ({100 * harness['fraction']:.2f}%).", "",
    ]
    if intervals:
        lines += [f"![paired differences]({png.name})", ""]
    from colm.compare.results import changes_markdown

    if diverged := diverged_markdown(runs):
        lines += [diverged]
    if settings.get("changed_settings"):
        lines += [changes_markdown(settings["changed_settings"])]
    lines += ["Files: report.json (every number), results.jsonl (one line per arm x seed; a rerun "
              "resumes from it).", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    atomic_write_json(out / "report.json", {
        "settings": settings, "baseline": baseline, "budget": budget, "plan": plan,
        "arms": arms, "harness": harness, "natural_note": NATURAL_NOTE, "runs": list(runs),
    })
    return [out / "report.md", out / "report.json"] + ([png] if intervals else [])


def harness_overhead(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    harness = sum(r.get("harness_s", 0.0) for r in runs)
    train = sum(r["wall_s"] for r in runs)
    return {"harness_s": harness, "train_s": train, "fraction": harness / train if train else math.nan}


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
