"""`colm compare`: train several arms x seeds on the user's model and data, report both losses.

Takes everything `colm train` takes (the same parser: model, data, selection options as the base
CoresetConfig of every pooled arm, training options, --config YAML) plus --arms, --seeds,
--baseline, --budget and --no-intervals. Every arm of a seed starts from the same
initialisation and data order. Results go to <output-dir>/results.jsonl one arm x seed at a
time (a rerun resumes), then report.md, report.json and compare.png.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colm.cli.errors import UsageError

DEFAULT_ARMS = "plain,accumulate2,reweighted,stratified"
RESULTS_FILE = "results.jsonl"


@dataclasses.dataclass
class CompareArguments:
    """The comparison's own options: a dataclass, so a `--config` YAML file can hold them too."""

    _argument_group_name = "comparison"

    arms: str = dataclasses.field(default=DEFAULT_ARMS, metadata={"help": (
        "comma-separated arms: presets {presets}, each optionally with CoresetConfig overrides "
        "PRESET:KEY=VALUE[:KEY=VALUE] (KEY=VALUE alone: on stratified)")})
    seeds: str = dataclasses.field(default="0,1,2", metadata={
        "help": "comma-separated seeds (model init, data order, selection)"})
    baseline: str | None = dataclasses.field(default=None, metadata={
        "help": "the arm every difference is paired against (default: stratified if listed, else the first)"})
    budget: str = dataclasses.field(default="steps", metadata={"choices": ["steps", "compute"], "help": (
        "steps: every arm --max-steps; compute: the baseline --max-steps, every other arm the steps whose "
        "compute (training rows + scoring rows x measured cost ratio) fits the same total")})
    exact_match_per_source: int = dataclasses.field(default=0, metadata={"help": (
        "after training, greedy-decode the first N validation rows of every source whose reference ends "
        "in a numeric answer ('The answer is 72') and report exact match per source (0: off; "
        "prompt/response data only)")})
    exact_match_max_new_tokens: int = dataclasses.field(default=96, metadata={
        "help": "tokens generated per question for --exact-match-per-source"})
    no_intervals: bool = dataclasses.field(default=False, metadata={
        "help": "report means only (allows a single seed: the interval needs >= 2 seeds)"})


def build_parser():
    """`colm train`'s options (its dataclasses and defaults) plus the comparison's (CompareArguments)."""
    from colm.cli import args as cli_args
    from colm.cli import train
    from colm.cli.identity import RunArguments
    from colm.cli.noise_scale import NoiseScaleArguments

    parser = cli_args.ColmArgumentParser.create(
        [cli_args.ModelArguments, cli_args.DataArguments, cli_args.SelectionArguments,
         RunArguments, cli_args.training_arguments_class(), CompareArguments, NoiseScaleArguments],
        prog="colm compare",
        description=("Train every --arms arm for every --seeds seed from the same initialisation "
                     "and data order, evaluate per source, and write report.md with the "
                     "natural-mixture loss, the mean over sources and the worst source: mean +- sd "
                     "and the paired difference to --baseline with a 95% t interval."),
        usage="colm compare [--config FILE.yaml] [--arms A,B] [--seeds 0,1,2] [colm train options]",
    )
    cli_args.add_config_option(parser)
    from colm.compare.arms import PRESETS

    for action in parser._actions:  # the presets' names come from the one table that defines them
        if action.dest == "arms":
            action.help = (action.help or "").replace("{presets}", ", ".join(PRESETS))
    parser.set_defaults(**train.TRAINING_DEFAULTS)
    parser.set_defaults(output_dir="runs/compare", save_strategy="no")
    return parser


def parse(argv: Sequence[str]):
    """(model, data, training args, base CoresetConfig, arms, seeds, baseline, budget, intervals,
    exact match)."""
    return parse_all(argv)[:10]


def parse_with_resume(argv: Sequence[str]):
    """`parse`, plus --allow-changed-settings (the fields a resumed comparison may change)."""
    return parse_all(argv)[:11]


def parse_all(argv: Sequence[str]):
    """`parse_with_resume`, plus the noise-scale options (NoiseScaleArguments)."""
    from colm.cli import args as cli_args
    from colm.compare.arms import ArmError, parse_arms

    parser = build_parser()
    # colm train's dataclasses (its RunArguments: --allow-changed-settings for a resumed comparison), then ours
    model_args, data_args, sel_args, run_args, targs, extra, noise = cli_args.parse_command(parser, argv, 7)
    noise.check()
    cli_args.as_plain_training_arguments(targs)
    from colm.training.checks import check_seeds

    check_seeds(targs)  # before --seed becomes the base selection seed
    base = cli_args.to_coreset_config(sel_args, targs)
    try:
        arms = parse_arms(extra.arms)
    except ArmError as err:
        raise UsageError(str(err)) from None
    try:
        seeds = [int(s) for s in extra.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds: expected comma-separated integers, got {extra.seeds!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds: expected distinct comma-separated integers, got {extra.seeds!r}")
    if any(not 0 <= s < 2**32 for s in seeds):  # numpy and torch refuse them mid-run otherwise
        raise UsageError(f"--seeds: {[s for s in seeds if not 0 <= s < 2**32]} are not seeds; expected "
                         "whole numbers from 0 to 2**32 - 1")
    from colm.cli.option_effect import check_compare_options
    from colm.config import CoresetConfig

    check_compare_options(sel_args, targs, arms, base or CoresetConfig(), seeds[0], argv)
    names = [a.name for a in arms]
    baseline = extra.baseline or ("stratified" if "stratified" in names else names[0])
    if baseline not in names:
        raise UsageError(f"--baseline: {baseline!r} is not among the arms ({', '.join(names)}); add it to --arms")
    intervals = not extra.no_intervals
    if intervals and len(seeds) < 2:
        raise UsageError(f"--seeds: the interval needs >= 2 seeds, got {len(seeds)} ({extra.seeds}); "
                         "give two or more, or --no-intervals")
    if targs.max_steps < 1:
        raise UsageError(f"--max-steps: colm compare trains a fixed number of steps per arm; got {targs.max_steps}")
    if extra.exact_match_per_source < 0:
        raise UsageError(f"--exact-match-per-source: expected an integer >= 0, got {extra.exact_match_per_source}")
    if extra.exact_match_max_new_tokens < 1:
        raise UsageError(f"--exact-match-max-new-tokens: expected an integer >= 1, "
                         f"got {extra.exact_match_max_new_tokens}")
    exact = (extra.exact_match_per_source, extra.exact_match_max_new_tokens)
    return (model_args, data_args, targs, base or CoresetConfig(), arms, seeds, baseline, extra.budget, intervals,
            exact, run_args.allow_changed_settings, noise)


def run(argv: Sequence[str]) -> int:
    from colm.cli.settings import check_train_settings

    (model_args, data_args, targs, base, arms, seeds, baseline, budget, intervals, exact,
     allow_changed, noise) = parse_all(argv)
    check_train_settings(model_args, data_args, targs)
    for arm in arms:  # every arm's config is valid before anything loads
        try:
            arm.coreset_config(base, seeds[0])
        except (ValueError, TypeError) as err:
            raise UsageError(f"--arms {arm.name}: {' '.join(str(err).split())}") from None
    out = Path(targs.output_dir)
    from colm.cli.lock import OutputDirLock

    with OutputDirLock(out, "--output-dir", "colm compare", command="colm compare " + " ".join(argv)) as lock:
        if lock.taken_over is not None:
            print(lock.takeover_note(), flush=True)
        from colm.cli import ownership

        ownership.check(out, "colm compare", data_args.overwrite_output_dir)  # e.g. a colm train run's report
        return _compare(argv, model_args, data_args, targs, base, arms, seeds, baseline, budget, intervals, out,
                        exact, allow_changed, noise)


def _compare(argv, model_args, data_args, targs, base, arms, seeds, baseline, budget, intervals, out: Path,
             exact: tuple[int, int] = (0, 96), allow_changed: str | None = None, noise: Any = None) -> int:
    from colm.compare import report
    from colm.compare.identity import compare_identity
    from colm.compare.run import costed_plan

    # ---- load and check everything before writing anything
    plan, exact_raw = _load_and_check(model_args, data_args, targs, base, arms, seeds, exact)
    lab = _lab(plan, data_args, targs, base, out, exact_raw, exact, noise)
    settings = {
        "arms": [a.name for a in arms], "seeds": seeds, "baseline": baseline, "budget": budget,
        "max_steps": targs.max_steps, "batch": lab.batch, "model": dataclasses.asdict(model_args),
        "data": dataclasses.asdict(data_args), "coreset": base.to_dict(),
        "learning_rate": targs.learning_rate, "train_rows": lab.train_rows,
    }
    if exact[0]:  # recorded only when on, so results files written before the option still resume
        settings["exact_match"] = {"per_source": exact[0], "max_new_tokens": exact[1]}
    _check_budget(arms, baseline, lab, targs.max_steps, budget)
    # ---- from here on the output dir is written
    identity = compare_identity(plan.data.train_raw, plan.data.eval_raw, plan.tokenizer, targs)
    results = _results_file(out, settings, identity, allow_changed, overwrite=data_args.overwrite_output_dir)
    eval_sources, missing_note = _validation_coverage(plan.data.eval, lab.train_rows)
    n = len(arms) * len(seeds)
    print(f"colm compare: {len(arms)} arms x {len(seeds)} seeds ({n} runs), budget {budget}, baseline "
          f"{baseline}; {len(plan.data.train)} training / {len(plan.data.eval)} validation rows", flush=True)
    plan_steps = _run_compare(arms, seeds, lab, steps=targs.max_steps, budget=budget, baseline=baseline,
                              results=results, progress=sys.stdout, after_run=_print_finished)
    wanted = {(a.name, s) for a in arms for s in seeds}
    runs = [r for r in results.runs if (r["arm"], r["seed"]) in wanted]
    paths = report.write(out, runs=runs, plan=costed_plan(plan_steps, runs), baseline=baseline, budget=budget,
                         settings={**settings, "command": "colm compare " + " ".join(argv), "identity": identity,
                                   "changed_settings": results.changes, "validation_sources": eval_sources,
                                   "validation_note": missing_note},
                         intervals=intervals, harness=report.harness_overhead(runs))
    print()
    print(report.loss_table(runs, baseline, intervals=intervals))
    print(f"\n{report.NATURAL_NOTE}.")
    print("report: " + ", ".join(map(str, paths)))
    _fail_on_divergence(runs)
    return 0


def _load_and_check(model_args, data_args, targs, base, arms, seeds, exact: tuple[int, int]):
    """(RunPlan without a model, the exact-match rows or None); every arm's selection checked
    against the data."""
    from colm.compare.run import exact_match_rows
    from colm.training.checks import check_pool, check_small_sources
    from colm.training.plan import prepare_run

    plan = prepare_run(model_args, data_args, targs, model_seed=seeds[0], need_eval=True)
    plan.model = None  # every arm x seed loads its own fresh copy
    exact_raw = None
    if exact[0]:
        if "response" not in plan.data.eval_raw.column_names:
            raise UsageError("--exact-match-per-source: needs prompt/response validation rows (chat rows "
                             "have no single reference answer)")
        exact_raw = exact_match_rows(plan.data.eval_raw, exact[0])
        if len(exact_raw) == 0:
            raise UsageError("--exact-match-per-source: no validation row's response ends in a numeric "
                             "answer ('The answer is 72'); nothing to score")
    for arm in arms:
        cfg = arm.coreset_config(base, seeds[0])
        check_small_sources(cfg, list(plan.train_rows))
        check_pool(cfg, len(plan.data.train), dataclasses.replace(
            targs, gradient_accumulation_steps=targs.gradient_accumulation_steps * arm.accumulation))
    return plan, exact_raw


def _lab(plan, data_args, targs, base, out: Path, exact_raw, exact: tuple[int, int], noise: Any = None):
    """What every arm x seed shares: the data, a fresh model per seed, its TrainingArguments."""
    from colm.compare.run import Lab

    def training_args(steps: int, accumulation: int, seed: int, output_dir: str):
        return dataclasses.replace(
            targs, output_dir=output_dir, max_steps=steps, seed=seed, data_seed=seed,
            gradient_accumulation_steps=targs.gradient_accumulation_steps * accumulation,
            save_strategy="no", disable_tqdm=True, logging_steps=max(targs.logging_steps, steps),
        )

    return Lab(
        tokenizer=plan.tokenizer, train=plan.data.train, evald=plan.data.eval,
        new_model=plan.new_model, training_args=training_args, base_coreset=base,
        batch=targs.per_device_train_batch_size * targs.gradient_accumulation_steps * targs.world_size,
        output_dir=out, eval_batch_size=plan.eval_batch_size, train_rows=plan.train_rows,
        exact_match_raw=exact_raw, template=data_args.template, max_new_tokens=exact[1],
        max_prompt_length=data_args.max_length,
        noise_scale=noise if noise is not None and noise.noise_scale_every else None,
    )


def _check_budget(arms, baseline: str, lab, steps: int, budget: str) -> None:
    """Refuse, before anything is written, an arm that cannot fit one step of the budget."""
    from colm.compare.budget import BudgetError
    from colm.compare.run import check_budget

    try:
        check_budget(arms, baseline, lab, steps, budget)
    except BudgetError as err:
        raise UsageError(str(err)) from None


def _run_compare(*args: Any, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """colm.compare.run.run_compare; a scoring arm's cost over the budget, known once calibrated
    (the calibration is kept), is a usage error."""
    from colm.compare.budget import BudgetError
    from colm.compare.run import run_compare

    try:
        return run_compare(*args, **kwargs)
    except BudgetError as err:
        raise UsageError(str(err)) from None


def _results_file(out: Path, settings: dict[str, Any], identity: dict[str, Any], allow_changed: str | None, *,
                  overwrite: bool):
    """results.jsonl, resumed when it holds this comparison's runs (refused under other settings
    or another identity, unless --allow-changed-settings names the change)."""
    from colm.compare.results import ResultsFile, ResultsFileError

    if overwrite:  # start over: the previous results and reports are dropped
        from colm.cli import ownership

        ownership.clear(out)
    try:
        results = ResultsFile(out / RESULTS_FILE, settings, identity, allow_changed)
    except ResultsFileError as err:
        raise UsageError(str(err)) from None
    for note in results.notes:
        print(f"colm compare: note: {note}", flush=True)
    if results.runs:
        print(f"colm compare: resuming, {len(results.runs)} arm x seed run(s) already in {out / RESULTS_FILE}",
              flush=True)
    return results


def _validation_coverage(evald: Any, train_rows: dict[str, int]) -> tuple[list[str], str | None]:
    """(the validation sources, the note naming trained sources without validation rows, or None);
    the note is said once here and in report.md, never dropped without a word."""
    from colm.evaluation import coverage_note

    eval_sources = sorted({str(x) for x in evald["source"]})
    missing_note = coverage_note(dict.fromkeys(eval_sources), train_rows)
    if missing_note:
        print(f"colm compare: note: {missing_note}", flush=True)
    return eval_sources, missing_note


def _print_finished(row: dict[str, Any]) -> None:
    if row.get("diverged"):
        print(f"  [{row['arm']} seed {row['seed']}] DIVERGED: {row['diverged']['message']}", flush=True)
        return
    em = f", exact match {row['exact_match']['overall']:.3f}" if "exact_match" in row else ""
    natural = row["val_loss_natural"]
    natural_text = f"{natural:.4f}" if natural == natural else "undefined"  # NaN: no validation source trained on
    print(f"  [{row['arm']} seed {row['seed']}] done: {row['steps']} steps, natural {natural_text}, "
          f"mean over sources {row['val_loss_mean']:.4f}, worst {row['val_loss_worst']:.4f}{em}", flush=True)


def _fail_on_divergence(runs: Sequence[dict[str, Any]]) -> None:
    """A diverged run is a result, recorded and reported, but never a success."""
    diverged = [f"{r['arm']} seed {r['seed']}" for r in runs if r.get("diverged")]
    if diverged:
        from colm.cli.errors import RunFailed

        raise RunFailed(f"{len(diverged)} run(s) diverged ({', '.join(diverged)}); report.md lists them, "
                        "and their losses are left out of the table")
