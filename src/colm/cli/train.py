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
    # The subclass only gave --help its section title; Trainer pickles its args into every
    # checkpoint (training_args.bin), so hand it the plain class (same fields and layout).
    from transformers import TrainingArguments

    targs.__class__ = TrainingArguments
    check_seeds(targs)  # before --seed becomes the selection seed (named as --seed, not --selection-seed)
    coreset = cli_args.to_coreset_config(sel_args, targs)
    return model_args, data_args, sel_args, targs, coreset, run_args, noise


def check_seeds(targs: Any) -> None:
    """The seeds numpy and torch accept (a negative one failed inside the Trainer, as a bug)."""
    for flag, value in (("--seed", targs.seed), ("--data-seed", targs.data_seed)):
        if value is not None and not 0 <= value < 2**32:
            raise UsageError(f"{flag}: {value} is not a seed; expected a whole number from 0 to 2**32 - 1")


def check_pool(coreset: Any, n_examples: int, targs: Any) -> None:
    """Refuse a pool larger than the training set (colm.integrations.pool_size says why it is not adjusted)."""
    from colm.integrations.pool_size import PoolTooLargeError, check_pool_fits

    if coreset is None:
        return
    try:
        check_pool_fits(n_examples, coreset.pool_factor, targs.per_device_train_batch_size,
                        targs.gradient_accumulation_steps, targs.world_size)
    except PoolTooLargeError as err:
        raise UsageError(err.describe(
            "--pool-factor", "--per-device-train-batch-size", "--gradient-accumulation-steps"
        )) from None


def check_small_sources(coreset: Any, sources: Sequence[str]) -> None:
    if coreset is not None and isinstance(coreset.small_sources, list):
        unknown = [s for s in coreset.small_sources if s not in sources]
        if unknown:
            raise UsageError(
                f"--small-sources: unknown source name(s) {unknown}; the training data has {sorted(sources)}"
            )


def check_pseudo_sources(coreset: Any, targs: Any, n_rows: int | None = None) -> None:
    """--pseudo-sources settings that cannot do what they say: a warm-up as long as the run (the
    clusters would never be used), or more clusters than training rows (`n_rows`, once loaded)."""
    if coreset is None or coreset.pseudo_sources is None or coreset.pool_factor < 2:
        return
    warmup = coreset.pseudo_source_warmup_steps
    if targs.max_steps > 0 and warmup >= targs.max_steps:
        raise UsageError(
            f"--pseudo-source-warmup-steps: {warmup} warm-up steps in a run of --max-steps "
            f"{targs.max_steps}: the pseudo-sources would never be used; use fewer than {targs.max_steps}"
        )
    if n_rows is not None and coreset.pseudo_sources != "auto" and coreset.pseudo_sources > n_rows:
        raise UsageError(
            f"--pseudo-sources: {coreset.pseudo_sources} clusters, but the training data has only "
            f"{n_rows} examples; use at most {n_rows}, or 'auto'"
        )


def pseudo_sources_report(trainer: Any, train_dataset: Any) -> dict[str, Any] | None:
    """The fitted clusters for report.json, with how the data's own sources spread over them."""
    ps = getattr(trainer, "pseudo_sources", None)
    if ps is None:
        return None
    summary = ps.summary()
    if ps.state is not None and "source" in train_dataset.column_names:
        from collections import Counter

        pairs = Counter(zip(ps.state.assignment.tolist(), train_dataset["source"]))
        by_cluster: dict[str, dict[str, int]] = {}
        for (cluster, source), count in sorted(pairs.items(), key=lambda kv: (kv[0][0], -kv[1])):
            if cluster >= 0:
                by_cluster.setdefault(f"cluster_{cluster}", {})[source] = count
        summary["sources_per_cluster"] = by_cluster
    return summary


def make_trainer(
    model: Any, tokenizer: Any, train_dataset: Any, targs: Any, coreset: Any, *,
    callbacks: Sequence[Any] = (), log_selections: bool = True, progress: Any = None,
    train_sampler: Any = None, noise_scale: Any = None,
):
    """A CoresetTrainer whose progress display is colm's (or none); `train_sampler` replaces the
    Trainer's random order (the re-weighting control of `colm compare`); `noise_scale` (a
    NoiseScaleArguments) turns on the gradient noise scale."""
    from transformers import DataCollatorForSeq2Seq
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from colm.config import CoresetConfig
    from colm.integrations.trainer import CoresetTrainer

    trainer = CoresetTrainer(
        model=model, args=targs, train_dataset=train_dataset, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        # pool_factor=1 for no selection: None would warn that the config was forgotten
        coreset_config=coreset if coreset is not None else CoresetConfig(pool_factor=1),
        log_selections=log_selections and coreset is not None,
        callbacks=list(callbacks), train_sampler=train_sampler,
        noise_scale_every=noise_scale.noise_scale_every if noise_scale is not None else 0,
        noise_scale_split=bool(noise_scale is not None and noise_scale.noise_scale_split),
    )
    # transformers' bar (or its raw-dict printer) would duplicate ours.
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if progress is not None:
        trainer.add_callback(progress)
    return trainer


def run(argv: Sequence[str]) -> int:
    model_args, data_args, sel, targs, coreset, run_args, noise = parse_all(argv)
    from colm import phases

    phases.enable(not targs.disable_tqdm)  # GGUF, tokenization, embedding pass, evaluation bars
    check_train_settings(model_args, data_args, targs)
    from colm.cli.option_effect import check_epochs, check_selection_options

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
    from transformers.trainer_utils import IntervalStrategy

    from colm.cli import dataprep, modeling
    from colm.cli import identity as run_identity
    from colm.cli.memory import PeakMemory
    from colm.cli.noise_scale import markdown as noise_scale_markdown
    from colm.cli.noise_scale import summary as noise_scale_summary
    from colm.cli.progress import (
        BackendReporter,
        LogLines,
        MetricsFile,
        PeriodicEval,
        ProgressBar,
        StepTimer,
        eval_record,
    )
    from colm.cli.report import (
        selection_summary,
        text_table,
        train_markdown,
        whole_run_train_loss,
        write_report,
    )
    from colm.cli.rundir import clear_previous_run, forget_failed_start
    from colm.cli.save_logging import LogAtEverySave
    from colm.evaluation import per_source_loss, with_natural
    from colm.files import atomic_write_json, truncate_jsonl

    out = run_dir.path
    # ---- load and check everything before writing anything
    model, tokenizer = modeling.load(model_args, seed=targs.seed)
    data_seed = targs.data_seed if targs.data_seed is not None else targs.seed
    prep = dataprep.prepare(data_args, tokenizer, seed=data_seed)
    check_small_sources(coreset, list(prep.train_stats["per_source"]))
    check_pool(coreset, len(prep.train), targs)
    check_pseudo_sources(coreset, targs, len(prep.train))
    eval_every = 0
    if targs.eval_strategy == IntervalStrategy.STEPS and prep.eval is not None:
        # A fractional eval_steps is a share of the run, as in TrainingArguments.
        steps = targs.eval_steps or targs.logging_steps
        eval_every = max(1, int(steps * targs.max_steps) if 0 < steps < 1 and targs.max_steps > 0 else int(steps))
    # colm evaluates per source itself; the Trainer's own loop has no eval dataset to run.
    targs.eval_strategy = IntervalStrategy.NO
    identity = run_identity.run_identity(model_args, data_args, targs, coreset, prep.train_raw, tokenizer)
    if run_dir.resume_from is None:
        identity_record: dict[str, Any] = {"identity": identity, "changes": []}
    else:  # refused here, before anything is written, when the run's settings changed
        identity_record = run_identity.check_resume(
            Path(run_dir.resume_from).parent, identity, run_args.allow_changed_settings, run_dir.resume_step)

    # ---- from here on the output dir is written
    if run_dir.resume_from is None:
        clear_previous_run(out)
    else:
        truncate_jsonl(out / "metrics.jsonl", run_dir.resume_step)
    atomic_write_json(out / modeling.RUN_FILE, modeling.run_info(model_args, data_args, targs.seed))
    atomic_write_json(out / run_identity.IDENTITY_FILE, identity_record)

    metrics = MetricsFile(out / "metrics.jsonl")
    timer = StepTimer()
    pad_id = tokenizer.pad_token_id
    batch = max(8, targs.per_device_eval_batch_size)
    callbacks: list[Any] = [timer, metrics, LogAtEverySave()]
    train_rows = prep.train_stats["per_source"]  # the natural mixture's weights
    progress = None if targs.disable_tqdm else ProgressBar("colm train")
    lines = LogLines("colm train") if targs.disable_tqdm else None  # batch jobs: a line per log
    if lines is not None:
        callbacks.append(lines)
    reporter = BackendReporter()  # validation to every --report-to backend, as eval/* tags
    if eval_every:
        callbacks.append(PeriodicEval(
            (), lambda m: with_natural(per_source_loss(m, prep.eval, pad_token_id=pad_id, batch_size=batch),
                                       train_rows),
            every=eval_every, metrics=metrics, timer=timer,
            on_result=progress.show_eval if progress is not None else lines.show_eval if lines is not None else None,
            report=reporter,
        ))
    trainer = None
    try:
        trainer = make_trainer(model, tokenizer, prep.train, targs, coreset, callbacks=callbacks, progress=progress,
                               noise_scale=noise)
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
    steps_this_call = trainer.state.global_step - (run_dir.resume_step or 0)
    _save_final_model(trainer, out)

    validation = None
    if prep.eval is not None:
        validation = with_natural(per_source_loss(trainer.model, prep.eval, pad_token_id=pad_id, batch_size=batch),
                                  train_rows)
        metrics.write(eval_record(trainer.state.global_step, validation))
        reporter(eval_record(trainer.state.global_step, validation))
    report = {
        "command": "colm train " + " ".join(argv),
        "output_dir": str(out),
        "global_step": trainer.state.global_step,
        # Over the whole run: the Trainer's number covers only the steps since the resume.
        "train_loss": whole_run_train_loss(out / "metrics.jsonl", run_dir.resume_step,
                                           result.training_loss, steps_this_call,
                                           history=trainer.state.log_history),
        "resumed_from": run_dir.resume_from,
        # What defines the run, and every setting a resume changed (with its step).
        "identity": identity_record["identity"],
        "changed_settings": identity_record["changes"],
        "train_wall_s": wall,
        "config": {
            "model": dataclasses.asdict(model_args),
            "data": dataclasses.asdict(data_args),
            "coreset": coreset.to_dict() if coreset is not None else None,
            "training": targs.to_dict(),
        },
        "data": {"train": prep.train_stats, "validation": prep.eval_stats,
                 "validation_source": prep.eval_spec},
        "selection": _without_steps(selection_summary(out / "selections.jsonl")),
        "pseudo_sources": pseudo_sources_report(trainer, prep.train),
        "validation": validation,
        "time": timer.summary(),
        "memory": {"peak_bytes": mem.peak_bytes, "kind": mem.kind, "description": mem.description},
        "noise_scale": noise_scale_summary(trainer.noise_scale, coreset.pool_factor if coreset else None),
    }
    write_report(out, report, train_markdown(report) + noise_scale_markdown(report["noise_scale"])
                 + run_identity.changes_markdown(report["changed_settings"]))
    _print_summary(report, text_table)
    return 0


def _run_training(trainer: Any, out: Path, run_dir: Any) -> Any:
    """trainer.train(), with the failures that are not colm's bugs told as what they are."""
    from colm.cli.errors import RunFailed
    from colm.cli.modeling import _SIZE_MISMATCH
    from colm.cli.write_faults import failed_save
    from colm.integrations.checkpoints import CheckpointError, latest_complete_checkpoint
    from colm.integrations.non_finite import NonFiniteTrainingError

    try:
        return trainer.train(resume_from_checkpoint=run_dir.resume_from)
    except CheckpointError as err:  # e.g. a checkpoint without colm's selector state
        raise UsageError(f"--resume-from-checkpoint: {err}") from None
    except NonFiniteTrainingError as err:
        good = latest_complete_checkpoint(out)
        kept = f"the last good checkpoint is {good.path}" if good is not None else "no checkpoint was saved"
        raise RunFailed(f"{err}; {kept}") from None
    except Exception as err:
        mismatch = _SIZE_MISMATCH.search(str(err)) if isinstance(err, RuntimeError) else None
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
    from colm.cli.write_faults import probe_reason
    from colm.files import WriteError, os_reason

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
