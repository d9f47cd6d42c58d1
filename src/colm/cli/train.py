"""`colm train`: fine-tune a causal LM on a data mixture with (or without) CoLM selection.

Everything that can fail on bad input (options, YAML, output folder, data, model) is checked
before anything is written into the output folder, so a failed command leaves nothing behind.
The folder is locked for the whole run (colm.cli.rundir), so a second run into it is refused.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colm.cli import args as cli_args
from colm.cli.errors import UsageError
from colm.cli.settings import check_train_settings
from colm.training.checks import check_epochs, check_pseudo_sources, check_seeds
from colm.training.trainer import make_trainer

DESCRIPTION = (
    "Fine-tune a causal LM on a data mixture, training each optimizer step on a CoLM coreset of a "
    "pool_factor-times larger random pool (or plain training with --no-coreset). Options come "
    "from --config FILE.yaml and/or flags (flags win). Writes checkpoints, metrics.jsonl, "
    "selections.jsonl, report.md and report.json into --output-dir."
)
#: colm's defaults for a quick CPU run, where they differ from TrainingArguments'.
TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/train",
    "max_steps": 100,
    "learning_rate": 5e-4,
    "logging_steps": 10,
    "save_steps": 50,
    "save_total_limit": 2,
    "report_to": "none",
    "dataloader_num_workers": 0,
    # TrainingArguments turns its bar off when transformers logs quietly, as the CLI makes it.
    "disable_tqdm": False,
}


def build_parser():
    """The HfArgumentParser of `colm train` (also used to render --help and docs)."""
    from colm.cli.identity import RunArguments
    from colm.cli.noise_scale import NoiseScaleArguments

    parser = cli_args.ColmArgumentParser.create(
        [cli_args.ModelArguments, cli_args.DataArguments, cli_args.SelectionArguments,
         RunArguments, cli_args.training_arguments_class(), NoiseScaleArguments],
        prog="colm train", description=DESCRIPTION,
        usage="colm train [--config FILE.yaml] [options]   (all options below; flags override the YAML)",
    )
    cli_args.add_config_option(parser)
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parser


def parse(argv: Sequence[str]):
    """(ModelArguments, DataArguments, SelectionArguments, TrainingArguments, CoresetConfig|None,
    RunArguments); `parse_all` adds NoiseScaleArguments."""
    return parse_all(argv)[:6]


def parse_all(argv: Sequence[str]):
    """`parse`'s tuple and NoiseScaleArguments."""
    parser = build_parser()
    model_args, data_args, sel_args, run_args, targs, noise = cli_args.parse_command(parser, argv, 6)
    noise.check()
    cli_args.as_plain_training_arguments(targs)
    check_seeds(targs)  # before --seed becomes the selection seed (named as --seed, not --selection-seed)
    coreset = cli_args.to_coreset_config(sel_args, targs)
    return model_args, data_args, sel_args, targs, coreset, run_args, noise


def run(argv: Sequence[str]) -> int:
    model_args, data_args, sel, targs, coreset, run_args, noise = parse_all(argv)
    from colm import phases

    phases.enable(not targs.disable_tqdm)  # GGUF, tokenization, embedding pass, evaluation bars
    check_train_settings(model_args, data_args, targs)
    from colm.cli.option_effect import check_selection_options

    check_selection_options(sel, coreset, argv)  # e.g. --no-coreset --pool-factor 4: refused, not ignored
    check_epochs(targs, "colm train")
    check_seeds(targs)
    check_pseudo_sources(coreset, targs)
    from colm.cli import rundir

    # The folder is locked for the whole run, and a previous run or the checkpoint to resume is
    # settled under the lock, before the model and data load.
    with rundir.claim(
        Path(targs.output_dir), overwrite=data_args.overwrite_output_dir,
        resume=targs.resume_from_checkpoint, max_steps=targs.max_steps,
        num_train_epochs=targs.num_train_epochs, command="colm train " + " ".join(argv),
    ) as run_dir:
        if run_dir.finished is not None:
            print(rundir.finished_message(run_dir, targs.max_steps, targs.num_train_epochs))
            return 0
        return _train(argv, model_args, data_args, targs, coreset, run_dir, run_args, noise)


def _train(argv: Sequence[str], model_args: Any, data_args: Any, targs: Any, coreset: Any, run_dir: Any,
           run_args: Any, noise: Any = None) -> int:
    """Load and check, start the output folder, train, validate, report: each phase below."""
    plan = _load_and_check(model_args, data_args, targs, coreset)
    eval_every = _eval_every(targs, plan)
    identity_record = _identity_record(plan, model_args, data_args, targs, coreset, run_dir, run_args)
    # ---- from here on the output dir is written
    _start_output(run_dir, model_args, data_args, targs, identity_record)
    fitted = _fit(plan, targs, coreset, run_dir, eval_every, noise)
    validation = _final_validation(plan, fitted)
    report = _report(argv, plan, model_args, data_args, targs, coreset, run_dir, identity_record, fitted,
                     validation)
    from colm.cli.identity import changes_markdown
    from colm.cli.noise_scale import markdown as noise_scale_markdown
    from colm.cli.report import text_table, train_markdown, write_report

    write_report(run_dir.path, report, train_markdown(report) + noise_scale_markdown(report["noise_scale"])
                 + changes_markdown(report["changed_settings"]))
    _print_summary(report, text_table)
    return 0


def _load_and_check(model_args: Any, data_args: Any, targs: Any, coreset: Any) -> Any:
    """The model and data (colm.training.plan), and the selection settings checked against them."""
    from colm.training.checks import check_pool, check_pseudo_sources, check_small_sources
    from colm.training.plan import prepare_run

    plan = prepare_run(model_args, data_args, targs)
    check_small_sources(coreset, list(plan.train_rows))
    check_pool(coreset, len(plan.data.train), targs)
    check_pseudo_sources(coreset, targs, len(plan.data.train))
    return plan


def _eval_every(targs: Any, plan: Any) -> int:
    """Steps between colm's per-source validations (0: none); the Trainer's own loop is turned off."""
    from transformers.trainer_utils import IntervalStrategy

    eval_every = 0
    if targs.eval_strategy == IntervalStrategy.STEPS and plan.data.eval is not None:
        # A fractional eval_steps is a share of the run, as in TrainingArguments.
        steps = targs.eval_steps or targs.logging_steps
        eval_every = max(1, int(steps * targs.max_steps) if 0 < steps < 1 and targs.max_steps > 0 else int(steps))
    # colm evaluates per source itself; the Trainer's own loop has no eval dataset to run.
    targs.eval_strategy = IntervalStrategy.NO
    return eval_every


def _identity_record(plan: Any, model_args: Any, data_args: Any, targs: Any, coreset: Any, run_dir: Any,
                     run_args: Any) -> dict[str, Any]:
    """The run's identity; on a resume, checked against the one it started with (refused here,
    before anything is written, when the run's settings changed)."""
    from colm.cli import identity as run_identity

    identity = run_identity.run_identity(model_args, data_args, targs, coreset, plan.data.train_raw, plan.tokenizer)
    if run_dir.resume_from is None:
        return {"identity": identity, "changes": []}
    return run_identity.check_resume(
        Path(run_dir.resume_from).parent, identity, run_args.allow_changed_settings, run_dir.resume_step)


def _start_output(run_dir: Any, model_args: Any, data_args: Any, targs: Any, identity_record: dict[str, Any]) -> None:
    """A fresh run clears the previous one; a resume cuts metrics.jsonl back to its checkpoint."""
    from colm.cli.identity import IDENTITY_FILE
    from colm.cli.rundir import clear_previous_run
    from colm.files import atomic_write_json, truncate_jsonl
    from colm.models.checkpoint import RUN_FILE, run_info

    out = run_dir.path
    if run_dir.resume_from is None:
        clear_previous_run(out)
    else:
        truncate_jsonl(out / "metrics.jsonl", run_dir.resume_step)
    atomic_write_json(out / RUN_FILE, run_info(model_args, data_args, targs.seed))
    atomic_write_json(out / IDENTITY_FILE, identity_record)


@dataclasses.dataclass
class _Fitted:
    """What training left for the report."""

    trainer: Any
    result: Any
    wall_s: float
    memory: Any
    timer: Any
    metrics: Any
    reporter: Any


def _fit(plan: Any, targs: Any, coreset: Any, run_dir: Any, eval_every: int, noise: Any = None) -> _Fitted:
    """Train with colm's callbacks (metrics, timing, periodic validation, progress bar) and save
    the final model; a start that trained nothing leaves nothing to block the next run."""
    from colm.cli.progress import BackendReporter, LogLines, MetricsFile, PeriodicEval, ProgressBar
    from colm.cli.rundir import forget_failed_start
    from colm.cli.save_logging import LogAtEverySave
    from colm.training.memory import PeakMemory
    from colm.training.step_timer import StepTimer

    out = run_dir.path
    metrics = MetricsFile(out / "metrics.jsonl")
    timer = StepTimer()
    callbacks: list[Any] = [timer, metrics, LogAtEverySave()]
    progress = None if targs.disable_tqdm else ProgressBar("colm train")
    lines = LogLines("colm train") if targs.disable_tqdm else None  # batch jobs: a line per log
    if lines is not None:
        callbacks.append(lines)
    reporter = BackendReporter()  # validation to every --report-to backend, as eval/* tags
    if eval_every:
        callbacks.append(PeriodicEval(
            (), lambda m: _validate(plan, m), every=eval_every, metrics=metrics, timer=timer,
            on_result=progress.show_eval if progress is not None else lines.show_eval if lines is not None else None,
            report=reporter,
        ))
    trainer = None
    try:
        trainer = make_trainer(plan.model, plan.tokenizer, plan.data.train, targs, coreset, callbacks=callbacks,
                               progress=progress, noise_scale=noise)
        reporter.trainer = trainer
        started = time.perf_counter()
        with PeakMemory() as mem:
            result = _run_training(trainer, out, run_dir)
    except BaseException:
        if progress is not None:  # end the bar's line now, so the error gets a line of its own
            progress.on_train_end(targs, None, None)
        if run_dir.resume_from is None and (trainer is None or trainer.state.global_step == 0):
            forget_failed_start(out)  # nothing trained: nothing may block the next run
        raise
    wall = time.perf_counter() - started
    _save_final_model(trainer, out)
    return _Fitted(trainer, result, wall, mem, timer, metrics, reporter)


def _validate(plan: Any, model: Any) -> dict[str, Any]:
    """Per-source validation loss, with the natural mixture's (training rows as weights)."""
    from colm.evaluation import per_source_loss, with_natural

    return with_natural(per_source_loss(model, plan.data.eval, pad_token_id=plan.tokenizer.pad_token_id,
                                        batch_size=plan.eval_batch_size), plan.train_rows)


def _final_validation(plan: Any, fitted: _Fitted) -> dict[str, Any] | None:
    from colm.cli.progress import eval_record

    if plan.data.eval is None:
        return None
    validation = _validate(plan, fitted.trainer.model)
    record = eval_record(fitted.trainer.state.global_step, validation)
    fitted.metrics.write(record)
    fitted.reporter(record)
    return validation


def _report(argv: Sequence[str], plan: Any, model_args: Any, data_args: Any, targs: Any, coreset: Any,
            run_dir: Any, identity_record: dict[str, Any], fitted: _Fitted,
            validation: dict[str, Any] | None) -> dict[str, Any]:
    """report.json's content."""
    from colm.cli.noise_scale import summary as noise_scale_summary
    from colm.integrations.selection_log import SELECTIONS_FILE, selection_summary
    from colm.training.run_summary import pseudo_sources_report, whole_run_train_loss

    out, trainer, mem = run_dir.path, fitted.trainer, fitted.memory
    steps_this_call = trainer.state.global_step - (run_dir.resume_step or 0)
    return {
        "command": "colm train " + " ".join(argv),
        "output_dir": str(out),
        "global_step": trainer.state.global_step,
        # Over the whole run: the Trainer's number covers only the steps since the resume.
        "train_loss": whole_run_train_loss(out / "metrics.jsonl", run_dir.resume_step,
                                           fitted.result.training_loss, steps_this_call,
                                           history=trainer.state.log_history),
        "resumed_from": run_dir.resume_from,
        # What defines the run, and every setting a resume changed (with its step).
        "identity": identity_record["identity"],
        "changed_settings": identity_record["changes"],
        "train_wall_s": fitted.wall_s,
        "config": {
            "model": dataclasses.asdict(model_args),
            "data": dataclasses.asdict(data_args),
            "coreset": coreset.to_dict() if coreset is not None else None,
            "training": targs.to_dict(),
        },
        "data": {"train": plan.data.train_stats, "validation": plan.data.eval_stats,
                 "validation_source": plan.data.eval_spec},
        "selection": _without_steps(selection_summary(out / SELECTIONS_FILE)),
        "pseudo_sources": pseudo_sources_report(trainer, plan.data.train),
        "validation": validation,
        "time": fitted.timer.summary(),
        "memory": {"peak_bytes": mem.peak_bytes, "kind": mem.kind, "description": mem.description},
        "noise_scale": noise_scale_summary(trainer.noise_scale, coreset.pool_factor if coreset else None),
    }


def _run_training(trainer: Any, out: Path, run_dir: Any) -> Any:
    """trainer.train(), with the failures that are not colm's bugs told as what they are."""
    from colm.cli.errors import RunFailed
    from colm.integrations.checkpoints import CheckpointError, latest_complete_checkpoint
    from colm.integrations.non_finite import NonFiniteTrainingError
    from colm.integrations.write_faults import failed_save
    from colm.models.checkpoint import SIZE_MISMATCH

    try:
        return trainer.train(resume_from_checkpoint=run_dir.resume_from)
    except CheckpointError as err:  # e.g. a checkpoint without colm's selector state
        raise UsageError(f"--resume-from-checkpoint: {err}") from None
    except NonFiniteTrainingError as err:
        good = latest_complete_checkpoint(out)
        kept = f"the last good checkpoint is {good.path}" if good is not None else "no checkpoint was saved"
        raise RunFailed(f"{err}; {kept}") from None
    except Exception as err:
        mismatch = SIZE_MISMATCH.search(str(err)) if isinstance(err, RuntimeError) else None
        if mismatch is not None and run_dir.resume_from is not None:
            name, saved, current = mismatch.groups()
            raise UsageError(
                f"--resume-from-checkpoint {run_dir.resume_from}: its weights do not fit this model "
                f"({name} is {saved} in the checkpoint but {current} in the model): it was trained "
                "with another --model or --model-size") from None
        fault = failed_save(out, err, run_dir.resume_step)
        if fault is not None:
            raise fault from err
        raise


def _save_final_model(trainer: Any, out: Path) -> None:
    """The final model (or LoRA adapter) + tokenizer in the output dir root; a write the machine
    refuses is named (safetensors reports a full disk in its own error type)."""
    from colm.files import WriteError, os_reason
    from colm.integrations.write_faults import probe_reason

    try:
        trainer.save_model()
    except Exception as err:
        reason = os_reason(err) or probe_reason(out)
        if reason is None:
            raise
        raise WriteError("saving the final model", out, f"{reason[0]}; the checkpoints are intact",
                         reason[1]) from err


def _without_steps(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if summary is not None:
        summary = {k: v for k, v in summary.items() if k != "per_step"}
    return summary


def _print_summary(report: dict[str, Any], text_table: Any) -> None:
    val = report.get("validation")
    t = report["time"]
    print(f"trained {report['global_step']} steps in {report['train_wall_s']:.1f} s "
          f"({t['mean_s']:.3f} s/step); final training loss {report['train_loss']:.4f}")
    if val:
        rows = [[s, v] for s, v in val["per_source"].items()]
        print(text_table(["source", "validation loss"], rows))
        natural = (f"natural mixture {val['natural']:.4f} (sources weighted by their share of the training rows)"
                   if val["natural"] == val["natural"] else "natural mixture undefined (no validation source is a "
                   "training source)")
        print(f"{natural}, "
              f"mean over sources {val['mean']:.4f}, worst {val['worst']:.4f} ({val['worst_source']})")
        if val.get("missing_sources"):
            from colm.evaluation import coverage_note

            print(f"note: {coverage_note(val['per_source'], report['data']['train']['per_source'])}")
    print(f"report: {Path(report['output_dir']) / 'report.md'}")
    sys.stdout.flush()
