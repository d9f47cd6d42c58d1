"""`colm train`'s per-source validation reaches every `report_to` backend as eval/* tags (not only
metrics.jsonl): TensorBoard's event file is read back when tensorboard is installed; the
forwarding itself is checked with a recording integration."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from colm.cli import main
from colm.cli.progress import BackendReporter, eval_record

RESULT = {"mean": 2.0, "worst": 3.0, "worst_source": "b", "overall": 1.8,
          "per_source": {"a": 1.0, "b": 3.0}}


def test_eval_record_has_mean_worst_overall_and_sources():
    record = eval_record(5, RESULT)
    assert record == {"step": 5, "eval/loss_mean": 2.0, "eval/loss_worst": 3.0, "eval/loss_overall": 1.8,
                      "eval/loss/a": 1.0, "eval/loss/b": 3.0}
    assert eval_record(5, {**RESULT, "natural": 1.7})["eval/loss_natural"] == 1.7  # the hook


def test_reporter_sends_eval_logs_to_the_report_to_integrations_only(monkeypatch):
    class Recording:
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append((state.global_step, logs))

    import transformers.integrations as integrations

    monkeypatch.setattr(integrations, "get_reporting_integration_callbacks",
                        lambda report_to: [Recording] if report_to == ["recording"] else [])
    backend = Recording()
    plain = SimpleNamespace(logs=[], on_log=lambda *a, **k: plain.logs.append(1))
    trainer = SimpleNamespace(args=SimpleNamespace(report_to=["recording"]), control=None, model=None,
                              state=SimpleNamespace(is_world_process_zero=True, global_step=7),
                              callback_handler=SimpleNamespace(callbacks=[backend, plain]))
    reporter = BackendReporter()
    reporter(eval_record(7, RESULT))  # before the trainer exists: nothing, no error
    reporter.trainer = trainer
    reporter(eval_record(7, RESULT))
    # transformers' integrations turn "eval_" keys into "eval/" tags
    assert backend.logs == [(7, {"eval_loss_mean": 2.0, "eval_loss_worst": 3.0, "eval_loss_overall": 1.8,
                                 "eval_loss/a": 1.0, "eval_loss/b": 3.0})]
    assert plain.logs == []
    trainer.state.is_world_process_zero = False
    reporter(eval_record(7, RESULT))
    assert len(backend.logs) == 1


def test_colm_train_writes_eval_tags_to_tensorboard(tmp_path, monkeypatch, cache_dir, capsys):
    pytest.importorskip("tensorboard")
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLM_CACHE", str(cache_dir))
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    rows = [{"source": s, "prompt": f"{i} + {i}?", "response": f"The answer is {2 * i}."}
            for s in ("left", "right") for i in range(6)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, logs = tmp_path / "run", tmp_path / "tb"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "--data", str(data), "--eval-data", str(data), "--output-dir", str(out),
                     "--max-steps", "2", "--per-device-train-batch-size", "2", "--save-strategy", "no",
                     "--eval-strategy", "steps", "--eval-steps", "1", "--report-to", "tensorboard"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err
    tags = set()
    for events in logs.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"eval/loss_mean", "eval/loss_worst", "eval/loss_overall", "eval/loss/left", "eval/loss/right"} <= tags, tags
