"""A new user's own folder, end to end: `train.jsonl` + `validation.jsonl` (no source field) runs
through `colm compare` to a report with both losses, intervals and a verdict; validation sources
that match no training source still give a finished run (no "internal error")."""
from __future__ import annotations

import json

import pytest

from colm.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_env")  # tests/conftest.py
MICRO = ["--max-steps", "3", "--per-device-train-batch-size", "4", "--max-length", "64", "--learning-rate", "3e-3"]


def rows(n: int, offset: int, source: str | None = None) -> str:
    out = []
    for i in range(n):
        a, b = 3 + i + offset, 1 + i % 7
        row = {"prompt": f"What is {a} plus {b}?", "response": f"{a} + {b} = {a + b}. The answer is {a + b}."}
        if source is not None:
            row["source"] = source
        out.append(json.dumps(row))
    return "\n".join(out) + "\n"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_train_and_validation_jsonl_folder_runs_through_compare(tmp_path, capsys):
    data = tmp_path / "my_data"
    data.mkdir()
    (data / "train.jsonl").write_text(rows(40, 0))
    (data / "validation.jsonl").write_text(rows(6, 100))
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(capsys, "compare", "--data", data, "--arms", "plain,stratified", "--seeds", "0,1",
                                *MICRO, "--output-dir", out)
    assert code == 0, err
    assert "validating on" in stdout and "--source-field" in stdout  # the choice and the note, at the start
    assert "colm compare: run 1 of 4: plain, seed 0" in stdout and "run 4 of 4: stratified, seed 1" in stdout
    assert " left" in stdout.split("run 2 of 4")[1].splitlines()[0]  # an estimate of the time left
    md = (out / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Losses")
    assert "natural mixture" in md and "mean over sources" in md and "95%" in md
    assert "[" in md.split("| plain |")[1].splitlines()[0]  # plain's row has intervals
    assert "| my_data |" in md  # the per-source table: one source, named after the folder


def test_validation_sources_that_are_no_training_source_still_finish_the_run(tmp_path, capsys):
    train, valid = tmp_path / "t.jsonl", tmp_path / "v.jsonl"
    train.write_text(rows(24, 0, "arith"))
    valid.write_text(rows(4, 100, "other"))
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--data", train, "--eval-data", valid, *MICRO,
                                "--output-dir", out, "--disable-tqdm", "true", "--logging-steps", "1")
    assert code == 0, err
    assert "internal error" not in err
    note = stdout.index("natural-mixture loss is undefined")
    assert note < stdout.index("trained 3 steps")  # said before training
    # tqdm off (a batch job): a line per training log as it happens, before the summary
    for step in (1, 2, 3):
        assert stdout.index(f"colm train: step {step}/3  loss ") < stdout.index("trained 3 steps")
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["natural"] is None and report["validation"]["per_source"]["other"] > 0
    # colm evaluate without --data: the run's own validation data (not the shipped mixture), and a
    # second evaluation says it replaces the first's eval.json
    code, stdout, err = run_cli(capsys, "evaluate", "--checkpoint", out, "--disable-tqdm")
    assert code == 0, err
    assert f"evaluating on {valid}: the run's own validation data" in stdout
    evaluated = json.loads((out / "eval.json").read_text())["loss"]["per_source"]
    assert evaluated == pytest.approx(report["validation"]["per_source"], rel=1e-4)
    code, stdout, err = run_cli(capsys, "evaluate", "--checkpoint", out, "--disable-tqdm")
    assert code == 0 and "note: replacing the earlier" in stdout


def test_evaluate_picks_the_data_the_run_recorded(tmp_path):
    from argparse import Namespace

    from colm.cli.errors import UsageError
    from colm.cli.evaluate import evaluation_data

    shipped = tmp_path / "shipped"
    ns = Namespace(data=None, split=None)
    assert evaluation_data(ns, {}, shipped)[0] == shipped  # not a colm run
    mine = {"data": "/d", "validation": {"data": "/d", "split": "val"}}
    assert evaluation_data(ns, mine, shipped)[:2] == ("/d", "val")
    assert "shipped" in evaluation_data(ns, {"data": None, "validation": {"data": None, "split": None}}, shipped)[2]
    with pytest.raises(UsageError, match="without validation data"):
        evaluation_data(ns, {"data": "/d", "validation": {"data": None, "split": None}}, shipped)
    assert evaluation_data(Namespace(data="/x", split=None), mine, shipped)[:2] == ("/x", "validation")
