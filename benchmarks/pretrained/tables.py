"""The pretrained lab's tables, generated from its `colm compare` results files.

Reads benchmarks/results/pretrained_lab/results.jsonl (one line per finished arm x seed; see
`make pretrained-lab`) and writes markdown: per arm the natural-mixture loss, the mean over
sources and the worst source (mean +- sd over seeds), paired differences (95% t intervals) to
the stratified control and to plain b, the share of the b -> 2b gap each arm recovers (where that
gap is resolved), exact match, the gradient noise scale measured on accumulate2, per-source
losses, and step time as ratios to plain b and to accumulate2 (medians of the same runs). The
equal-compute lab (`make pretrained-lab-compute`) adds its table when it has run.

Only seeds every arm has finished are used, so every comparison is paired on the same seeds; a
run that diverged or has an undefined loss is left out with its seed, and listed by name.
`--write-docs` also replaces the README's pretrained table (the control against each other arm,
both losses, in the words of the tiny lab's table above it).

    .venv/bin/python benchmarks/pretrained/tables.py                 # print the tables
    .venv/bin/python benchmarks/pretrained/tables.py --write-docs    # and replace them in docs/benchmarks.md and README.md
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from colm.compare.stats import IntervalError, Paired, mean_sd, paired_difference  # noqa: E402
from colm.diagnostics.noise_scale import median_of_means  # noqa: E402

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
NOISE_WINDOW = 20  # steps pooled per row of the noise-scale table (10 gave windows with |G|^2 <= 0)


@dataclass
class Lab:
    """One results file: its settings, its usable runs by arm and seed, and the runs left out."""

    path: Path
    settings: dict
    table: dict[str, dict[int, dict]] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # "arm seed N (why)"
    excluded_seeds: set[int] = field(default_factory=set)

    @property
    def arms(self) -> list[str]:
        return list(self.settings["arms"])

    @property
    def n_runs(self) -> int:
        return sum(len(v) for v in self.table.values())

    def seeds(self) -> list[int]:
        """The seeds every arm has finished with finite losses (a left-out run drops its seed)."""
        have = [set(self.table.get(a, {})) for a in self.arms]
        return sorted(set.intersection(*have) - self.excluded_seeds) if have else []

    def values(self, arm: str, key: str, seeds: list[int]) -> dict[int, float]:
        return {s: float(self.table[arm][s][key]) for s in seeds}


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def read_lab(path: Path) -> Lab:
    """A `colm compare` results file. A run recorded twice counts once (the first, as colm
    compare counts it); identity records (a resume's recorded settings) are not runs."""
    lines = [(n, x) for n, x in enumerate(path.read_text().splitlines(), 1) if x.strip()]
    if not lines:
        raise SystemExit(f"{path}: empty; expected a `colm compare` results file")
    try:
        records = [(n, json.loads(x)) for n, x in lines]
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not JSON Lines ({err})") from None
    if records[0][1].get("kind") != "settings":
        raise SystemExit(f"{path}:{records[0][0]}: expected the settings record first")
    lab = Lab(path, records[0][1]["settings"])
    seen: set[tuple[str, int]] = set()
    for _, rec in records[1:]:
        if rec.get("kind") != "run":
            continue
        row = rec["row"]
        key = (row["arm"], row["seed"])
        if key in seen:
            continue
        seen.add(key)
        bad = [k for k, _ in LOSSES if not _finite(row.get(k))]
        if row.get("diverged") or bad:
            why = (f"diverged: {row['diverged'].get('what', '')}" if row.get("diverged")
                   else f"{', '.join(bad)} undefined")
            lab.left_out.append(f"{row['arm']} seed {row['seed']} ({why})")
            lab.excluded_seeds.add(row["seed"])
            continue
        lab.table.setdefault(row["arm"], {})[row["seed"]] = row
    return lab


def _fmt(m: float, sd: float) -> str:
    return f"{m:.4f} ± {sd:.4f}" if sd == sd else f"{m:.4f}"


def _paired(arm: dict[int, float], base: dict[int, float]) -> Paired | None:
    try:
        return paired_difference(arm, base)
    except IntervalError:
        return None


def _diff(arm: dict[int, float], base: dict[int, float]) -> str:
    d = _paired(arm, base)
    return "—" if d is None else f"{d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"


def _left_out_line(lab: Lab) -> list[str]:
    if not lab.left_out:
        return []
    return [f"Left out, with their seeds, from every comparison: {'; '.join(lab.left_out)}.", ""]


def loss_tables(lab: Lab, seeds: list[int]) -> list[str]:
    lines = []
    for key, title in LOSSES:
        lines += [f"**{title}** ({len(seeds)} paired seeds: {', '.join(map(str, seeds))})", "",
                  f"| arm | mean ± sd | minus {CONTROL} | minus {SMALL} | b→2b gap recovered |",
                  "|---|---|---|---|---:|"]
        vals = {a: lab.values(a, key, seeds) for a in lab.arms}
        small = statistics.mean(vals[SMALL].values())
        gap = _paired(vals[SMALL], vals[LARGE])  # plain - accumulate2: positive when 2b is better
        resolved = gap is not None and gap.lo > 0
        for a in lab.arms:
            m, sd = mean_sd(list(vals[a].values()))
            rec = f"{100 * (small - m) / gap.mean:.0f}%" if resolved and gap is not None else "—"
            lines.append(f"| {a} | {_fmt(m, sd)} | {_diff(vals[a], vals[CONTROL]) if a != CONTROL else '—'} | "
                         f"{_diff(vals[a], vals[SMALL]) if a != SMALL else '—'} | {rec} |")
        if not resolved:
            lines += ["", f"No share of the b→2b gap is given on this loss: {SMALL} minus {LARGE} is "
                          f"{_diff(vals[SMALL], vals[LARGE])}, an interval that does not lie above zero."]
        lines.append("")
    return lines


def exact_match_table(lab: Lab, seeds: list[int]) -> list[str]:
    table, arms = lab.table, lab.arms
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


def per_source_table(lab: Lab, seeds: list[int]) -> list[str]:
    train_rows = lab.settings["train_rows"]
    sources = sorted(train_rows, key=lambda s: -train_rows[s])
    lines = ["**Per source** (validation loss, mean over seeds; training rows in brackets)", "",
             "| source | " + " | ".join(lab.arms) + " |", "|---|" + "---:|" * len(lab.arms)]
    for src in sources:
        cells = [f"{statistics.mean(lab.table[a][s]['per_source'][src] for s in seeds):.3f}" for a in lab.arms]
        lines.append(f"| {src} ({train_rows[src]}) | " + " | ".join(cells) + " |")
    return lines + [""]


def cost_table(lab: Lab, seeds: list[int]) -> list[str]:
    table, arms = lab.table, lab.arms
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


# ---- the gradient noise scale ------------------------------------------------------------------
def _measurements(row: dict) -> list[list[float]]:
    """[step, |G|^2, tr(Sigma), b_small, b_big] of every finite measurement of one run."""
    return [m for m in (row.get("noise_scale") or {}).get("per_step") or [] if all(_finite(v) for v in m[:5])]


def step_worth(b_simple: float, b_small: float, b_big: float) -> float:
    """Steps of b_small one step of b_big is worth: (1 + B/b_small) / (1 + B/b_big), McCandlish
    et al. (2018)'s model (which assumes SGD; the lab trains with Adam)."""
    return (1 + b_simple / b_small) / (1 + b_simple / b_big)


def seeds_b_simple(per_seed: list[list[list[float]]]) -> tuple[float, list[float]]:
    """(B_simple pooled over seeds, each seed's own) from each seed's measurements: a seed's |G|^2
    and tr(Sigma) are medians of group means (a few spiky steps cannot decide them); pooled is the
    ratio of their averages over seeds, so it lies within the seeds' range. nan where |G|^2 <= 0."""
    parts = [(median_of_means([m[1] for m in ms]), median_of_means([m[2] for m in ms])) for ms in per_seed if ms]
    own = [t / g for g, t in parts if g > 0 and t > 0]
    if not parts:
        return math.nan, own
    g2, trace = statistics.fmean(g for g, _ in parts), statistics.fmean(t for _, t in parts)
    return (trace / g2 if g2 > 0 and trace > 0 else math.nan), own


def noise_scale_summary(lab: Lab, seeds: list[int]) -> dict | None:
    """B_simple of accumulate2 over the later half of the runs (pooled over seeds, and each
    seed's own) and the effective batch sizes (b_big is token-weighted, a little under 2b)."""
    per_seed = {s: _measurements(lab.table[LARGE][s]) for s in seeds}
    if not seeds or not all(per_seed.values()):
        return None
    late, own = seeds_b_simple([ms[len(ms) // 2:] for ms in per_seed.values()])
    every = [m for ms in per_seed.values() for m in ms]
    return {"late": late, "own": own, "undefined": len(per_seed) - len(own), "b_small": statistics.fmean(m[3] for m in every),
            "b_big": statistics.fmean(m[4] for m in every), "per_seed": per_seed}


def noise_scale_table(lab: Lab, seeds: list[int]) -> list[str]:
    """B_simple over training from accumulate2's two sizes per step (its first micro-batch of b
    and the accumulated 2b), pooled over the paired seeds in windows, with the step worth of 2b
    it predicts, next to the b -> 2b difference measured in the same runs."""
    summary = noise_scale_summary(lab, seeds)
    if summary is None:
        return []
    b, big = summary["b_small"], summary["b_big"]
    starts = sorted({int(m[0]) // NOISE_WINDOW * NOISE_WINDOW for ms in summary["per_seed"].values() for m in ms})
    windows = {w: seeds_b_simple([[m for m in ms if w <= m[0] < w + NOISE_WINDOW]
                                  for ms in summary["per_seed"].values()])[0] for w in starts}
    lines = [f"**Gradient noise scale** (B_simple = tr(Σ)/|G|², from {LARGE}'s two batch sizes per step: b = {b:g} "
             f"and the accumulated step, {big:.1f} rows on average (token-weighted); measured at every step, pooled "
             f"over {len(seeds)} seeds (the ratio of the seeds' average |G|² and tr(Σ), each seed's a median of group means) and windows of {NOISE_WINDOW} steps. A step of the larger batch is worth "
             "(1 + B/b) / (1 + B/b_big) steps of b by McCandlish et al. 2018, a model for SGD; the lab trains "
             "with Adam)", "",
             "| steps | B_simple | B / b | one step of 2b is worth (steps of b) |", "|---|---:|---:|---:|"]
    undefined = False
    for start, bs in windows.items():
        if math.isfinite(bs):
            lines.append(f"| {start}-{start + NOISE_WINDOW - 1} | {bs:.0f} | {bs / b:.1f} | {step_worth(bs, b, big):.2f} |")
        else:
            undefined = True
            lines.append(f"| {start}-{start + NOISE_WINDOW - 1} | — | — | — |")
    late, own = summary["late"], [x for x in summary["own"] if math.isfinite(x)]
    if math.isfinite(late):
        spread = f"; the seeds' own values {min(own):.0f} to {max(own):.0f}" if own else ""
        if summary["undefined"]:
            spread += f", and {summary['undefined']} seed(s) whose own |G|² estimate is not positive"
        lines += ["", f"Later half of the runs, pooled: B_simple = {late:.0f}{spread}; a step of 2b is worth "
                      f"{step_worth(late, b, big):.2f} steps of b."]
    else:
        lines += ["", "Later half of the runs: B_simple undefined (its |G|² estimate is not positive)."]
    if undefined:
        lines += ["", "— : the window's |G|² estimate is not positive (too few or too noisy measurements)."]
    for key, title in LOSSES[:2]:
        lines += ["", f"Measured in the same runs, {SMALL} minus {LARGE} at equal steps ({title}; positive: 2b "
                      f"is better): {_diff(lab.values(SMALL, key, seeds), lab.values(LARGE, key, seeds))}. (A loss "
                      "difference, not a number of steps: the equal-compute table tests the prediction in steps.)"]
    return lines + [""]


# ---- the README's table --------------------------------------------------------------------
def verdict(other: dict[int, float], control: dict[int, float]) -> str:
    """The control against another arm on one loss, in words: wins / loses beyond the paired 95%
    interval, or ties (the interval holds zero). Positive numbers: the control's loss is lower."""
    d = _paired(other, control)  # other - control
    if d is None:
        return "—"
    cell = f"({d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}])"
    return f"**wins** {cell}" if d.lo > 0 else f"**loses** {cell}" if d.hi < 0 else f"ties {cell}"


def readme_table(lab: Lab, seeds: list[int], compute: Lab | None = None) -> list[str]:
    settings = lab.settings
    rank = settings.get("model", {}).get("lora_r")
    rows = [(arm, words) for arm, words in README_ROWS if arm in lab.arms and arm != CONTROL]
    lines = [f"On a **pretrained** model (SmolLM2-135M-Instruct + LoRA{f' r{rank}' if rank else ''}, "
             f"{settings['max_steps']} steps of b = {settings['batch']}, {len(seeds)} paired seeds; "
             f"generated from `{_shown(lab.path)}` by `benchmarks/pretrained/tables.py --write-docs`; "
             "numbers are the other arm's loss minus stratified's, with its 95% interval; each cell is "
             "its own interval, so among many cells about one in twenty can call a difference that is "
             "not there):", "",
             f"| {CONTROL} compared with | loss averaged over sources | natural-mixture loss |", "|---|---|---|"]
    for arm, words in rows:
        cells = [verdict(lab.values(arm, k, seeds), lab.values(CONTROL, k, seeds))
                 for k in ("val_loss_mean", "val_loss_natural")]
        lines.append(f"| {words} | {cells[0]} | {cells[1]} |")
    lines.append(equal_compute_row(compute))
    if lab.left_out:
        lines += ["", f"Left out (their seeds too): {'; '.join(lab.left_out)}."]
    return lines + [""]


def read_compute(path: Path | None) -> Lab | None:
    """The equal-compute lab (None: not run yet)."""
    if path is None or not path.is_file():
        return None
    lab = read_lab(path)
    if CONTROL not in lab.arms or LARGE not in lab.arms:
        raise SystemExit(f"{path}: the equal-compute lab needs arms {CONTROL} and {LARGE}, has {lab.arms}")
    return lab


def _steps(lab: Lab, arm: str, seeds: list[int]) -> float:
    return statistics.median(lab.table[arm][s]["steps"] for s in seeds)


def equal_compute_row(compute: Lab | None) -> str:
    seeds = compute.seeds() if compute is not None else []
    if compute is None or len(seeds) < 2:
        return "| random 2b at **equal compute** | not measured yet (`make pretrained-lab-compute`) | |"
    words = (f"random 2b at **equal compute** ({_steps(compute, LARGE, seeds):.0f} steps of 2b against "
             f"{_steps(compute, CONTROL, seeds):.0f} of b), {len(seeds)} seeds")
    cells = [verdict(compute.values(LARGE, k, seeds), compute.values(CONTROL, k, seeds))
             for k in ("val_loss_mean", "val_loss_natural")]
    return f"| {words} | {cells[0]} | {cells[1]} |"


def compute_section(compute: Lab | None, lab: Lab, lab_seeds: list[int]) -> list[str]:
    """docs' equal-compute table; the noise scale's prediction for it; and the check that the
    two labs' stratified runs are the same runs."""
    seeds = compute.seeds() if compute is not None else []
    if compute is None or len(seeds) < 2:
        return []
    steps = {a: _steps(compute, a, seeds) for a in (CONTROL, LARGE)}
    lines = [f"**Equal compute** (`make pretrained-lab-compute`, {len(seeds)} paired seeds: {CONTROL} "
             f"{steps[CONTROL]:.0f} steps of b, {LARGE} {steps[LARGE]:.0f} steps of 2b)", "",
             f"| loss | {CONTROL} | {LARGE} | {LARGE} minus {CONTROL} | {LARGE} minus {SMALL} at {steps[CONTROL]:.0f} steps |",
             "|---|---|---|---|---|"]
    both = [s for s in seeds if s in lab.table.get(SMALL, {})]
    for key, title in LOSSES:
        a, c = compute.values(LARGE, key, seeds), compute.values(CONTROL, key, seeds)
        plain = {s: float(lab.table[SMALL][s][key]) for s in both}
        lines.append(f"| {title} | {_fmt(*mean_sd(list(c.values())))} | {_fmt(*mean_sd(list(a.values())))} | "
                     f"{_diff(a, c)} | {_diff({s: a[s] for s in both}, plain)} |")
    summary = noise_scale_summary(lab, lab_seeds)
    if summary is not None and math.isfinite(summary["late"]):
        worth = step_worth(summary["late"], summary["b_small"], summary["b_big"])
        lines += ["", f"The noise scale's prediction: {steps[LARGE]:.0f} steps of 2b are worth about "
                      f"{steps[LARGE] * worth:.0f} steps of b ({worth:.2f} each, from the later half's B_simple), "
                      f"against {steps[CONTROL]:.0f} for plain b (the last column; the 2b run also has a schedule "
                      "half as long)."]
    lines += ["", determinism_line(compute, lab)]
    return lines + [""]


def determinism_line(compute: Lab, lab: Lab) -> str:
    shared = sorted(set(compute.table.get(CONTROL, {})) & set(lab.table.get(CONTROL, {})))
    if not shared:
        return f"Determinism check: no seed of {CONTROL} has run in both labs yet."
    keys = [k for k, _ in LOSSES] + ["train_loss"]
    differ = [s for s in shared
              if any(compute.table[CONTROL][s].get(k) != lab.table[CONTROL][s].get(k) for k in keys)]
    if differ:
        return (f"Determinism check FAILED: {CONTROL}'s runs differ between the two labs on seeds "
                f"{differ} (of {len(shared)} shared): the labs' settings or code are not the same.")
    return (f"Determinism check: {CONTROL}'s runs repeated in the two labs give bit-identical losses "
            f"(three validation losses and the training loss) on all {len(shared)} shared seeds.")


# ---- the documents ---------------------------------------------------------------------------
def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def _checked(lab: Lab) -> None:
    missing = [a for a in (CONTROL, SMALL, LARGE) if a not in lab.arms]
    if missing:
        raise SystemExit(f"{lab.path}: the lab's tables compare against {CONTROL}, {SMALL} and {LARGE}; "
                         f"arms {missing} are not in this file's arms {lab.arms}")


def render(path: Path, compute_path: Path | None = None) -> str:
    lab = read_lab(path.resolve())
    _checked(lab)
    seeds = lab.seeds()
    if len(seeds) < 2:
        return (f"The pretrained lab has {len(seeds)} seed(s) finished for every arm so far "
                f"({lab.n_runs} runs in {_shown(lab.path)}); tables need two.\n" + "\n".join(_left_out_line(lab)))
    lines = [f"Generated by `.venv/bin/python benchmarks/pretrained/tables.py --write-docs` from "
             f"`{_shown(lab.path)}` ({lab.n_runs} finished runs, {len(seeds)} seeds finished by every arm; arms "
             f"{', '.join(lab.arms)}; {lab.settings['max_steps']} steps of b = {lab.settings['batch']}, "
             f"learning rate {lab.settings['learning_rate']}).", ""]
    lines += _left_out_line(lab)
    lines += loss_tables(lab, seeds)
    lines += exact_match_table(lab, seeds)
    lines += noise_scale_table(lab, seeds)
    lines += compute_section(read_compute(compute_path), lab, seeds)
    lines += cost_table(lab, seeds)
    lines += per_source_table(lab, seeds)
    return "\n".join(lines)


def render_readme(path: Path, compute_path: Path | None = None) -> str:
    lab = read_lab(path.resolve())
    _checked(lab)
    seeds = lab.seeds()
    if len(seeds) < 2:
        return (f"On a **pretrained** model (SmolLM2-135M-Instruct + LoRA): {len(seeds)} of "
                f"{len(lab.settings.get('seeds', [])) or 'the'} seeds have finished every arm so far; this "
                "table fills in from two (`benchmarks/pretrained/tables.py --write-docs`).\n")
    return "\n".join(readme_table(lab, seeds, read_compute(compute_path)))


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
    ap.add_argument("--write-docs", action="store_true", help=f"replace the generated sections of {DOCS.name} and README.md")
    args = ap.parse_args()
    text, readme = render(args.results, args.compute_results), render_readme(args.results, args.compute_results)
    print(text + "\n" + readme)
    if args.write_docs:
        write_docs(text)
        write_docs(readme, README, README_BEGIN, README_END)


if __name__ == "__main__":
    main()
