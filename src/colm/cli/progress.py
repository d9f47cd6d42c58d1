"""Trainer callbacks of the CLI: a progress bar, a metrics JSONL and periodic per-source
validation (the step timer they skip around is colm.training.step_timer.StepTimer)."""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from colm.files import append_jsonl
from colm.training.step_timer import StepTimer


class MetricsFile(TrainerCallback):
    """Appends every Trainer log line (plus colm's evaluations) to `<output_dir>/metrics.jsonl`.

    A training-loss line also gets `loss_steps`, the optimizer steps its mean covers (the Trainer
    restarts its window at a resume), so the whole run's mean loss can be rebuilt exactly.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._last_loss_step = 0

    def write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.path, record)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_loss_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            record = {"step": state.global_step, **logs}
            if "loss" in logs:
                record["loss_steps"] = state.global_step - self._last_loss_step
                self._last_loss_step = state.global_step
            self.write(record)


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimizer steps showing loss, selection time per step and the ETA.

    Replaces transformers' ProgressCallback (which knows nothing of selection)."""

    def __init__(self, desc: str = "train", file: Any = None) -> None:
        self.desc = desc
        self.file = file or sys.stderr
        self.bar = None
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", file=self.file,
                            dynamic_ncols=True, initial=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self.postfix["loss"] = f"{logs['loss']:.3f}"
        ms = sum(logs.get(k, 0.0) for k in ("coreset/select_ms", "coreset/score_ms"))
        if ms:
            self.postfix["sel_ms"] = f"{ms:.0f}"
        self.bar.set_postfix(self.postfix, refresh=True)

    def show_eval(self, step: int, result: dict[str, Any]) -> None:
        """Put the latest validation loss (mean over sources) on the bar."""
        if self.bar is not None:
            self.postfix["val"] = f"{result['mean']:.3f}"
            self.bar.set_postfix(self.postfix, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LogLines(TrainerCallback):
    """With the bar off (--disable-tqdm true: log files, batch jobs), one console line per
    training log and per validation, as they happen, instead of nothing until the end."""

    def __init__(self, desc: str = "colm train", file: Any = None) -> None:
        self.desc = desc
        self.file = file or sys.stdout
        self.started = time.perf_counter()
        self.state: Any = None  # the Trainer's state (one object, updated in place)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.state = time.perf_counter(), state

    def _print(self, step: int, text: str) -> None:
        if self.state is None or self.state.is_world_process_zero:
            total = self.state.max_steps if self.state is not None else "?"
            print(f"{self.desc}: step {step}/{total}  {text}  [{time.perf_counter() - self.started:.0f} s]",
                  file=self.file, flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        parts = [f"loss {logs['loss']:.4f}"]
        if "grad_norm" in logs:
            parts.append(f"grad norm {logs['grad_norm']:.3g}")
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.3g}")
        ms = sum(logs.get(k, 0.0) for k in ("coreset/select_ms", "coreset/score_ms"))
        if ms:
            parts.append(f"selection {ms:.0f} ms/step")
        self._print(state.global_step, ", ".join(parts))

    def show_eval(self, step: int, result: dict[str, Any]) -> None:
        natural = result.get("natural")
        text = "validation: " + (f"natural mixture {natural:.4f}, " if isinstance(natural, float) and
                                 math.isfinite(natural) else "")
        text += f"mean over sources {result['mean']:.4f}, worst {result['worst']:.4f} ({result['worst_source']})"
        self._print(step, text)


def eval_record(step: int, result: dict[str, Any]) -> dict[str, Any]:
    """The metrics line of one validation: mean over sources, worst source, the token-weighted
    loss over the whole validation set, each source's loss, and the natural-mixture loss when the
    evaluation function provides one (key "natural": the hook for colm.evaluation's metric)."""
    record = {"step": step, "eval/loss_mean": result["mean"], "eval/loss_worst": result["worst"]}
    if "overall" in result:
        record["eval/loss_overall"] = result["overall"]
    if "natural" in result:
        record["eval/loss_natural"] = result["natural"]
    record.update({f"eval/loss/{s}": v for s, v in result["per_source"].items()})
    return record


class BackendReporter:
    """Sends colm's validation records to every `report_to` backend (TensorBoard, W&B, MLflow,
    ...) the Trainer set up, as `eval/*` tags at the current step.

    colm evaluates per source in its own callback, outside the Trainer's evaluate(), so nothing
    would reach those backends otherwise. The records go straight to the integration callbacks'
    on_log rather than through `trainer.log`, which would also append them to the Trainer's log
    history and to metrics.jsonl a second time. The integrations prefix "eval_" keys with
    "eval/" (transformers' rewrite_logs), hence the renaming.
    """

    def __init__(self) -> None:
        self.trainer: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        trainer = self.trainer
        if trainer is None or not trainer.state.is_world_process_zero:
            return
        from transformers.integrations import get_reporting_integration_callbacks

        backends = tuple(get_reporting_integration_callbacks(trainer.args.report_to))
        if not backends:
            return
        logs = {"eval_" + k[len("eval/"):]: v for k, v in record.items() if k.startswith("eval/")}
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, backends):
                callback.on_log(trainer.args, trainer.state, trainer.control, logs=logs, model=trainer.model)


class PeriodicEval(TrainerCallback):
    """Per-source validation loss at chosen optimizer steps (`steps`) or every `every` steps.

    `evaluate(model) -> dict` does the work; results go to `history`, to the metrics file, and
    to `on_result` (e.g. a progress line)."""

    def __init__(
        self,
        steps: Iterable[int],
        evaluate: Callable[[Any], dict[str, Any]],
        *,
        every: int | None = None,
        metrics: MetricsFile | None = None,
        timer: StepTimer | None = None,
        on_result: Callable[[int, dict[str, Any]], None] | None = None,
        report: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.steps = set(int(s) for s in steps)
        self.every = every
        self.evaluate = evaluate
        self.metrics = metrics
        self.timer = timer
        self.on_result = on_result
        self.report = report
        self.history: list[dict[str, Any]] = []

    def run(self, step: int, model: Any) -> dict[str, Any]:
        result = self.evaluate(model)
        record = eval_record(step, result)
        self.history.append({"step": step, **result})
        if self.metrics is not None:
            self.metrics.write(record)
        if self.report is not None:
            self.report(record)
        if self.on_result is not None:
            self.on_result(step, result)
        if self.timer is not None:
            self.timer.skip()
        return result

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if 0 in self.steps and state.global_step == 0 and model is not None:
            self.run(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        due = step in self.steps or (self.every and step % self.every == 0)
        if due and model is not None:
            self.run(step, model)
