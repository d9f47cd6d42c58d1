"""The pretrained lab's tables, generated from its `colm compare` results file.

Reads benchmarks/results/pretrained_lab/results.jsonl (one line per finished arm x seed; see
`make pretrained-lab`) and writes markdown: per arm the natural-mixture loss, the mean over
sources and the worst source (mean +- sd over seeds), paired differences (95% t intervals) to
the stratified control and to plain b, the share of the b -> 2b gap each arm recovers, exact
match, per-source losses, and step time as ratios to plain b and to accumulate2 (medians of the
same runs). Only seeds every arm has finished are used, so every comparison is paired.
`--write-docs` also replaces the README's pretrained table (the control against each other arm,
both losses, the same words as the tiny lab's table above it).

    .venv/bin/python benchmarks/pretrained/tables.py                 # print the tables
    .venv/bin/python benchmarks/pretrained/tables.py --write-docs    # and replace them in docs/benchmarks.md and README.md
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
from colm.diagnostics.noise_scale import pooled_b_simple  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "pretrained_lab" / "results.jsonl"
#: `make pretrained-lab-compute`: stratified against accumulate2 at equal compute (30 steps of 2b).
COMPUTE_RESULTS = ROOT / "benchmarks" / "results" / "pretrained_lab_compute" / "results.jsonl"
DOCS = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- pretrained-lab tables: begin (generated) -->", "<!-- pretrained-lab tables: end -->"
README_BEGIN, README_END = "<!-- pretrained-lab readme: begin (generated) -->", "<!-- pretrained-lab readme: end -->"
# The README's rows: what the control (stratified) is compared with, in the tiny lab's words.
README_ROWS = (("accumulate2", "random 2b at **equal steps** (twice the compute)"),
               ("plain", "random b (same compute)"),
               ("reweighted", "plain b drawn with its source mix, no pool (`reweighted`)"),
               ("paper", "the paper's selection (gradient medoids; `paper`)"),
               ("mean_match", "our mean-matching selector (`mean_match`)"))
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
    measured = [a for a in arms if any((table[a][s].get("noise_scale") or {}).get("measurements") for s in seeds)]
    if measured:
        lines += ["", f"{', '.join(measured)}'s steps include the gradient noise-scale measurement (it reads the "
                      "trainable parameters' gradients twice a step; on the tiny model measuring every step "
                      "cost 1.02x: \"The gradient noise scale\" below)."]
    return lines + [""]


def verdict(other: dict[int, float], control: dict[int, float]) -> str:
    """The control against another arm on one loss, in words: wins / loses beyond the paired 95%
    interval, or ties (the interval holds zero). Positive numbers: the control's loss is lower."""
    try:
        d = paired_difference(other, control)  # other - control
    except IntervalError:
        return "—"
    cell = f"({d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}])"
    return f"**wins** {cell}" if d.lo > 0 else f"**loses** {cell}" if d.hi < 0 else f"ties {cell}"


def readme_table(table: dict[str, dict[int, dict]], arms: list[str], seeds: list[int], settings: dict,
                 compute: tuple[dict[str, dict[int, dict]], list[int]] | None = None) -> list[str]:
    rank = settings.get("model", {}).get("lora_r")
    lines = [f"On a **pretrained** model (SmolLM2-135M-Instruct + LoRA{f' r{rank}' if rank else ''}, "
             f"{settings['max_steps']} steps of b = {settings['batch']}, {len(seeds)} paired seeds; "
             "generated from `benchmarks/results/pretrained_lab/` by `benchmarks/pretrained/tables.py "
             "--write-docs`; numbers are the other arm's loss minus stratified's, 95% interval):", "",
             f"| {CONTROL} compared with | loss averaged over sources | natural-mixture loss |", "|---|---|---|"]
    for arm, words in README_ROWS:
        if arm not in arms or arm == CONTROL:
            continue
        cells = [verdict({s: table[arm][s][k] for s in seeds}, {s: table[CONTROL][s][k] for s in seeds})
                 for k in ("val_loss_mean", "val_loss_natural")]
        lines.append(f"| {words} | {cells[0]} | {cells[1]} |")
    lines.append(equal_compute_row(compute))
    return lines + [""]


def read_compute(path: Path | None) -> tuple[dict[str, dict[int, dict]], list[int]] | None:
    """The equal-compute lab's runs by arm and seed, and its paired seeds (None: not run yet)."""
    if path is None or not path.is_file():
        return None
    settings, runs = read_runs(path)
    return by_arm_seed(runs), paired_seeds(runs, list(settings["arms"]))


def equal_compute_row(compute: tuple[dict[str, dict[int, dict]], list[int]] | None) -> str:
    words = "random 2b at **equal compute** (half the steps)"
    if compute is None or len(compute[1]) < 2:
        return f"| {words} | not measured yet (`make pretrained-lab-compute`) | |"
    table, seeds = compute
    cells = [verdict({s: table[LARGE][s][k] for s in seeds}, {s: table[CONTROL][s][k] for s in seeds})
             for k in ("val_loss_mean", "val_loss_natural")]
    return f"| {words}, {len(seeds)} seeds | {cells[0]} | {cells[1]} |"


def compute_section(compute: tuple[dict[str, dict[int, dict]], list[int]] | None,
                    table: dict[str, dict[int, dict]]) -> list[str]:
    """docs' equal-compute table, and the check that the two labs' stratified runs agree."""
    if compute is None or len(compute[1]) < 2:
        return []
    ctable, seeds = compute
    steps = {a: statistics.median(ctable[a][s]["steps"] for s in seeds) for a in (CONTROL, LARGE)}
    lines = [f"**Equal compute** (`make pretrained-lab-compute`, {len(seeds)} paired seeds: {CONTROL} "
             f"{steps[CONTROL]:.0f} steps of b, {LARGE} {steps[LARGE]:.0f} steps of 2b)", "",
             f"| loss | {CONTROL} | {LARGE} | {LARGE} minus {CONTROL} |", "|---|---|---|---|"]
    for key, title in LOSSES:
        a = {s: ctable[LARGE][s][key] for s in seeds}
        c = {s: ctable[CONTROL][s][key] for s in seeds}
        lines.append(f"| {title} | {_fmt(*mean_sd(list(c.values())))} | {_fmt(*mean_sd(list(a.values())))} | {_diff(a, c)} |")
    shared = [s for s in seeds if s in table.get(CONTROL, {})]
    same = [s for s in shared if ctable[CONTROL][s]["val_loss_natural"] == table[CONTROL][s]["val_loss_natural"]]
    lines += ["", f"Determinism check: {CONTROL}'s runs repeated in the two labs give bit-identical "
                  f"natural-mixture losses on {len(same)} of {len(shared)} shared seeds."]
    return lines + [""]


def render_readme(path: Path, compute_path: Path | None = None) -> str:
    settings, runs = read_runs(path.resolve())
    arms = list(settings["arms"])
    seeds = paired_seeds(runs, arms)
    if len(seeds) < 2 or CONTROL not in arms:
        return (f"On a **pretrained** model (SmolLM2-135M-Instruct + LoRA): {len(seeds)} of "
                f"{len(settings.get('seeds', [])) or 'the'} seeds have finished every arm so far; this "
                "table fills in from two (`benchmarks/pretrained/tables.py --write-docs`).\n")
    return "\n".join(readme_table(by_arm_seed(runs), arms, seeds, settings, read_compute(compute_path)))


def noise_scale_table(table: dict[str, dict[int, dict]], seeds: list[int], every: int = 10) -> list[str]:
    """B_simple over training from accumulate2's two sizes per step (its first micro-batch of b
    and the accumulated 2b), pooled over the paired seeds in windows of `every` steps, with what
    McCandlish et al.'s model predicts one step of 2b is worth and the b -> 2b gain measured."""
    runs = [table[LARGE][s] for s in seeds if LARGE in table and (table[LARGE][s].get("noise_scale") or {}).get("per_step")]
    if len(runs) != len(seeds) or SMALL not in table:
        return []
    windows: dict[int, tuple[list[float], list[float]]] = {}
    for r in runs:
        for step, g2, trace, *_ in r["noise_scale"]["per_step"]:
            w = windows.setdefault(step // every * every, ([], []))
            w[0].append(g2)
            w[1].append(trace)
    b = runs[0]["noise_scale"]["per_step"][0][3]
    lines = [f"**Gradient noise scale** (B_simple = tr(Σ)/|G|², from {LARGE}'s two batch sizes per step, b = {b:g} "
             f"and 2b, measured at every step, pooled over {len(seeds)} seeds and windows of {every} steps; a step "
             "of 2b is worth (1 + B/b) / (1 + B/2b) steps of b by McCandlish et al. 2018)", "",
             "| steps | B_simple | B / b | one step of 2b is worth (steps of b) |", "|---|---:|---:|---:|"]
    for start in sorted(windows):
        bs = pooled_b_simple(*windows[start])
        worth = f"{(1 + bs / b) / (1 + bs / (2 * b)):.2f}" if bs == bs else "—"
        lines.append(f"| {start}-{start + every - 1} | {bs:.0f} | {bs / b:.1f} | {worth} |")
    for key, title in LOSSES[:2]:
        lines.append("")
        lines.append(f"Measured in the same runs, {SMALL} minus {LARGE} ({title}; positive: 2b is better): "
                     + _diff({s: table[SMALL][s][key] for s in seeds}, {s: table[LARGE][s][key] for s in seeds}) + ".")
    return lines + [""]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def render(path: Path, compute_path: Path | None = None) -> str:
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
    lines += noise_scale_table(table, seeds)
    lines += compute_section(read_compute(compute_path), table)
    lines += cost_table(table, arms, seeds)
    lines += per_source_table(table, arms, seeds, settings["train_rows"])
    return "\n".join(lines)


def write_docs(text: str, docs: Path = DOCS, begin: str = BEGIN, end: str = END) -> None:
    """Replace what lies between the markers begin ... end in docs with text."""
    body = docs.read_text()
    if begin not in body or end not in body:
        raise SystemExit(f"{docs}: markers {begin!r} ... {end!r} not found")
    head, rest = body.split(begin, 1)
    _, tail = rest.split(end, 1)
    docs.write_text(head + begin + "\n" + text.rstrip() + "\n" + end + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--compute-results", type=Path, default=COMPUTE_RESULTS,
                    help="the equal-compute lab's results (left out while it does not exist)")
    ap.add_argument("--write-docs", action="store_true", help=f"replace the generated section of {DOCS.name}")
    args = ap.parse_args()
    text, readme = render(args.results, args.compute_results), render_readme(args.results, args.compute_results)
    print(text + "\n" + readme)
    if args.write_docs:
        write_docs(text)
        write_docs(readme, README, README_BEGIN, README_END)


if __name__ == "__main__":
    main()
