"""The pretrained lab's tables, generated from its `colm compare` results file.

Reads benchmarks/results/pretrained_lab/results.jsonl (one line per finished arm x seed; see
`make pretrained-lab`) and writes markdown: per arm the natural-mixture loss, the mean over
sources and the worst source (mean +- sd over seeds), paired differences (95% t intervals) to
the stratified control and to plain b, the share of the b -> 2b gap each arm recovers, exact
match, per-source losses, and step time as ratios to plain b and to accumulate2 (medians of the
same runs). Only seeds every arm has finished are used, so every comparison is paired.

    .venv/bin/python benchmarks/pretrained/tables.py                 # print the tables
    .venv/bin/python benchmarks/pretrained/tables.py --write-docs    # and replace them in docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from colm.compare.stats import IntervalError, mean_sd, paired_difference  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "pretrained_lab" / "results.jsonl"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- pretrained-lab tables: begin (generated) -->", "<!-- pretrained-lab tables: end -->"
LOSSES = (("val_loss_natural", "natural mixture"), ("val_loss_mean", "mean over sources"),
          ("val_loss_worst", "worst source"))
CONTROL, SMALL, LARGE = "stratified", "plain", "accumulate2"


def read_runs(path: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    settings = lines[0]["settings"]
    # A diverged run has no loss to tabulate (colm compare's report lists it); identity records
    # (a resume's recorded settings) are not runs.
    runs = [x["row"] for x in lines[1:] if x.get("kind") == "run" and not x["row"].get("diverged")]
    return settings, runs


def paired_seeds(runs: list[dict], arms: list[str]) -> list[int]:
    """The seeds every listed arm has finished."""
    have = [{r["seed"] for r in runs if r["arm"] == a} for a in arms]
    return sorted(set.intersection(*have)) if have else []


def by_arm_seed(runs: list[dict]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for r in runs:
        out.setdefault(r["arm"], {})[r["seed"]] = r
    return out


def _fmt(m: float, sd: float) -> str:
    return f"{m:.4f} ± {sd:.4f}" if sd == sd else f"{m:.4f}"


def _diff(arm: dict[int, float], base: dict[int, float]) -> str:
    try:
        d = paired_difference(arm, base)
    except IntervalError:
        return "—"
    return f"{d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"


def loss_tables(table: dict[str, dict[int, dict]], arms: list[str], seeds: list[int]) -> list[str]:
    lines = []
    for key, title in LOSSES:
        lines += [f"**{title}** ({len(seeds)} paired seeds: {', '.join(map(str, seeds))})", "",
                  f"| arm | mean ± sd | minus {CONTROL} | minus {SMALL} | b→2b gap recovered |",
                  "|---|---|---|---|---:|"]
        vals = {a: {s: table[a][s][key] for s in seeds} for a in arms}
        gap = (statistics.mean(vals[SMALL].values()) - statistics.mean(vals[LARGE].values())
               if SMALL in vals and LARGE in vals else None)
        for a in arms:
            m, sd = mean_sd(list(vals[a].values()))
            rec = "—"
            if gap:
                rec = f"{100 * (statistics.mean(vals[SMALL].values()) - m) / gap:.0f}%"
            lines.append(f"| {a} | {_fmt(m, sd)} | {_diff(vals[a], vals[CONTROL]) if a != CONTROL else '—'} | "
                         f"{_diff(vals[a], vals[SMALL]) if a != SMALL else '—'} | {rec} |")
        lines.append("")
    return lines


def exact_match_table(table: dict[str, dict[int, dict]], arms: list[str], seeds: list[int]) -> list[str]:
    if not all("exact_match" in table[a][s] for a in arms for s in seeds):
        return []
    first = table[arms[0]][seeds[0]]["exact_match"]
    lines = [f"**Exact match** (greedy decoding, {sum(first['n'].values())} numeric-answer validation "
             f"questions, at most {max(first['n'].values())} per source)", "",
             f"| arm | overall, mean ± sd | minus {CONTROL} | sources with any right (mean over seeds) |",
             "|---|---|---|---:|"]
    for a in arms:
        overall = {s: table[a][s]["exact_match"]["overall"] for s in seeds}
        base = {s: table[CONTROL][s]["exact_match"]["overall"] for s in seeds}
        any_right = statistics.mean(sum(v > 0 for v in table[a][s]["exact_match"]["per_source"].values())
                                    for s in seeds)
        m, sd = mean_sd(list(overall.values()))
        lines.append(f"| {a} | {_fmt(m, sd)} | {_diff(overall, base) if a != CONTROL else '—'} | {any_right:.1f} |")
    return lines + [""]


def per_source_table(table: dict[str, dict[int, dict]], arms: list[str], seeds: list[int],
                     train_rows: dict[str, int]) -> list[str]:
    sources = sorted(train_rows, key=lambda s: -train_rows[s])
    lines = ["**Per source** (validation loss, mean over seeds; training rows in brackets)", "",
             "| source | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for src in sources:
        cells = [f"{statistics.mean(table[a][s]['per_source'][src] for s in seeds):.3f}" for a in arms]
        lines.append(f"| {src} ({train_rows[src]}) | " + " | ".join(cells) + " |")
    return lines + [""]


def cost_table(table: dict[str, dict[int, dict]], arms: list[str], seeds: list[int]) -> list[str]:
    step = {a: statistics.median(table[a][s]["step_s"] for s in seeds) for a in arms}
    lines = ["**Step time** (median over the same runs; ratios, not absolute CPU seconds)", "",
             f"| arm | step / {SMALL} | step / {LARGE} | scoring share of the step |", "|---|---:|---:|---:|"]
    for a in arms:
        share = statistics.median(table[a][s]["score_s"] / table[a][s]["wall_s"] for s in seeds)
        lines.append(f"| {a} | {step[a] / step[SMALL]:.2f} | {step[a] / step[LARGE]:.2f} | {100 * share:.0f}% |")
    return lines + [""]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def render(path: Path) -> str:
    path = path.resolve()
    settings, runs = read_runs(path)
    arms = list(settings["arms"])
    seeds = paired_seeds(runs, arms)
    if len(seeds) < 2:
        return (f"The pretrained lab has {len(seeds)} seed(s) finished for every arm so far "
                f"({len(runs)} runs in {_shown(path)}); tables need two.\n")
    table = by_arm_seed(runs)
    lines = [f"Generated by `.venv/bin/python benchmarks/pretrained/tables.py --write-docs` from "
             f"`{_shown(path)}` ({len(runs)} runs; arms {', '.join(arms)}; "
             f"{settings['max_steps']} steps of b = {settings['batch']}, learning rate {settings['learning_rate']}).", ""]
    lines += loss_tables(table, arms, seeds)
    lines += exact_match_table(table, arms, seeds)
    lines += cost_table(table, arms, seeds)
    lines += per_source_table(table, arms, seeds, settings["train_rows"])
    return "\n".join(lines)


def write_docs(text: str, docs: Path = DOCS) -> None:
    body = docs.read_text()
    if BEGIN not in body or END not in body:
        raise SystemExit(f"{docs}: markers {BEGIN!r} ... {END!r} not found")
    head, rest = body.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    docs.write_text(head + BEGIN + "\n" + text.rstrip() + "\n" + END + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--write-docs", action="store_true", help=f"replace the generated section of {DOCS.name}")
    args = ap.parse_args()
    text = render(args.results)
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
