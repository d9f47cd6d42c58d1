"""`colm compare` after the fourth red team (issue 28): a comparison is one experiment (its
results file records what shapes a result, and a resume that changed any of it is refused), a
diverged run is recorded as such, no command overwrites another's results, and equal compute
holds or is refused."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli_compare import MICRO, run_cli, user_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_env")  # tests/conftest.py

P = ["--arms", "plain", "--baseline", "plain", "--seeds", "0,1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return user_folder(tmp_path_factory.mktemp("compare_rel") / "my_data")


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def kill_after_first_run(results: Path) -> None:
    """What a kill after seed 0 leaves: the header and one run (and no report)."""
    text = results.read_text().splitlines(keepends=True)
    results.write_text("".join(text[:2]))
    for name in ("report.md", "report.json", "compare.png"):
        (results.parent / name).unlink(missing_ok=True)


def test_a_resume_with_another_recipe_or_edited_data_is_refused_naming_each_field(data, tmp_path, capsys):
    out = tmp_path / "cmp"
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out)
    assert code == 0, err
    kill_after_first_run(out / "results.jsonl")
    before = (out / "results.jsonl").read_bytes()
    # Another optimizer recipe: each field named old -> new, nothing trained or written.
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out,
                           "--lr-scheduler-type", "constant", "--weight-decay", "0.3")
    assert code == 2
    assert "identity.training.lr_scheduler_type: linear -> constant" in err
    assert "identity.training.weight_decay: 0.0 -> 0.3" in err and "--allow-changed-settings" in err
    assert (out / "results.jsonl").read_bytes() == before
    # Edited data with the same row counts: the digest tells.
    edited = tmp_path / "edited"
    edited.mkdir()
    for f in data.iterdir():
        edited.joinpath(f.name).write_text(f.read_text().replace("plus", "and"))
    code, _, err = run_cli(capsys, "compare", "--data", edited, *P, *MICRO, "--output-dir", out)
    assert code == 2 and "identity.train_data:" in err and "identity.validation_data:" in err
    assert (out / "results.jsonl").read_bytes() == before
    # Allowed: it continues, records the change and the report lists it.
    code, stdout, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out,
                                "--weight-decay", "0.3", "--allow-changed-settings", "weight_decay")
    assert code == 0, err
    assert "continuing with changed settings (identity.training.weight_decay)" in stdout
    records = lines_of(out / "results.jsonl")
    change = next(r for r in records if r["kind"] == "identity")
    assert change["changes"] == [{"field": "identity.training.weight_decay", "old": 0.0, "new": 0.3,
                                  "after_runs": 1}]
    assert "Settings changed on resume" in (out / "report.md").read_text()
    # The next resume compares against the changed settings.
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out)
    assert code == 2 and "identity.training.weight_decay: 0.3 -> 0.0" in err


def test_a_results_file_in_todays_format_resumes_and_records_its_identity(data, tmp_path, capsys):
    """The format a long experiment is writing now: a header with `settings` only."""
    out = tmp_path / "cmp"
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out)
    assert code == 0, err
    whole = {(r["row"]["arm"], r["row"]["seed"]): r["row"]["val_loss_natural"]
             for r in lines_of(out / "results.jsonl") if r["kind"] == "run"}
    kill_after_first_run(out / "results.jsonl")
    header, run0 = lines_of(out / "results.jsonl")
    old_header = {"kind": "settings", "settings": header["settings"]}  # no identity: today's format
    (out / "results.jsonl").write_text(json.dumps(old_header) + "\n" + json.dumps(run0) + "\n")
    # A changed recorded setting is still refused, named old -> new.
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO[:-2], "--learning-rate", "1e-3",
                           "--output-dir", out)
    assert code == 2 and "learning_rate: 0.003 -> 0.001" in err
    # The same settings resume: one line says so, and the identity is recorded from then on.
    code, stdout, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out)
    assert code == 0, err
    noted = [x for x in stdout.splitlines() if "recorded from now on" in x]
    assert len(noted) == 1
    records = lines_of(out / "results.jsonl")
    assert records[0] == old_header  # the header is never rewritten
    assert [r["kind"] for r in records] == ["settings", "run", "identity", "run"]
    assert records[2]["identity"]["train_data"] and records[2]["after_runs"] == 1
    resumed = {(r["row"]["arm"], r["row"]["seed"]): r["row"]["val_loss_natural"] for r in records if r["kind"] == "run"}
    assert resumed == pytest.approx(whole)
    # From now on the identity is checked too.
    kill_after_first_run(out / "results.jsonl")
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:3]))
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out,
                           "--weight-decay", "0.3")
    assert code == 2 and "identity.training.weight_decay: 0.0 -> 0.3" in err


def test_a_torn_or_damaged_results_file_is_named_and_finished_runs_kept(data, tmp_path, capsys):
    out = tmp_path / "cmp"
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out)
    assert code == 0, err
    kill_after_first_run(out / "results.jsonl")
    good = (out / "results.jsonl").read_text()
    # A full disk cut the next line short: dropped with a note, the run before it kept.
    (out / "results.jsonl").write_text(good + '{"kind": "run", "row": {"arm": "pla')
    code, stdout, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out)
    assert code == 0, err
    assert "results.jsonl:3: dropped a torn last line" in stdout and "1 finished run(s)" in stdout
    assert "[plain seed 0] done" not in stdout and "[plain seed 1] done" in stdout
    assert len(json.loads((out / "report.json").read_text())["runs"]) == 2
    # Damage before the last line: the file and line are named, nothing is touched.
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    damaged = "".join([lines[0], "{not json\n", *lines[1:]])
    (out / "results.jsonl").write_text(damaged)
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out)
    assert code == 2 and "results.jsonl:2: damaged line" in err and "internal error" not in err
    assert (out / "results.jsonl").read_text() == damaged


def test_a_run_recorded_twice_counts_once(data, tmp_path, capsys):
    out = tmp_path / "cmp"
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out)
    assert code == 0, err
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join([*lines, lines[1]]))
    code, stdout, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out)
    assert code == 0, err
    assert "1 run(s) recorded twice; each counts once" in stdout
    report = json.loads((out / "report.json").read_text())
    assert len(report["runs"]) == 2 and report["arms"][0]["seeds"] == [0, 1]


def test_a_diverging_compare_records_the_run_and_exits_1(data, tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO[:-2], "--learning-rate", "1e30",
                                "--output-dir", out)
    assert code == 1, err
    assert "failed: 2 run(s) diverged (plain seed 0, plain seed 1)" in err and "internal error" not in err
    assert "[plain seed 0] DIVERGED" in stdout
    text = (out / "results.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    runs = [r["row"] for r in lines_of(out / "results.jsonl") if r["kind"] == "run"]
    assert all(r["diverged"]["step"] >= 1 for r in runs)
    md = (out / "report.md").read_text()
    assert "## Diverged runs" in md and "| plain | 0 |" in md


def test_compare_and_demo_never_overwrite_a_train_runs_report(data, tmp_path, capsys):
    out = tmp_path / "t"
    code, _, err = run_cli(capsys, "train", "--data", data, "--model-size", "tiny", "--max-steps", "2",
                           "--max-length", "48", "--per-device-train-batch-size", "4", "--output-dir", out)
    assert code == 0, err
    report = (out / "report.json").read_bytes()
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out)
    assert code == 2 and "holds the results of colm train" in err and "--overwrite-output-dir" in err
    code, _, err = run_cli(capsys, "demo", "--quick", "--output-dir", out)
    assert code == 2 and "holds the results of colm train" in err
    assert (out / "report.json").read_bytes() == report
    # And the other way round: colm train into a comparison's folder.
    cmp = tmp_path / "cmp"
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", cmp)
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--data", data, "--max-steps", "2", "--output-dir", cmp)
    assert code == 2 and "holds the results of colm compare" in err
    # --overwrite-output-dir replaces them: nothing of the train run is left beside the comparison.
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out,
                           "--overwrite-output-dir")
    assert code == 0, err
    assert not (out / "colm_run.json").exists() and not (out / "metrics.jsonl").exists()
    assert json.loads((out / "report.json").read_text())["settings"]["command"].startswith("colm compare")


def test_an_overwriting_compare_removes_the_previous_report_before_it_trains(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    code, _, err = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out)
    assert code == 0, err
    import colm.compare.run as compare_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_run, "run_arm", interrupted)
    code, _, _ = run_cli(capsys, "compare", "--data", data, *P, *MICRO, "--output-dir", out, "--overwrite-output-dir")
    assert code == 130
    assert not (out / "report.md").exists() and not (out / "report.json").exists()
    assert [r["kind"] for r in lines_of(out / "results.jsonl")] == ["settings"]


def test_equal_compute_that_cannot_hold_is_refused_before_anything_trains(data, tmp_path, capsys):
    out = tmp_path / "cmp"
    code, _, err = run_cli(capsys, "compare", "--data", data, "--arms", "plain,accumulate4", "--budget", "compute",
                           "--baseline", "plain", "--seeds", "0", "--no-intervals", *MICRO[2:],
                           "--max-steps", "1", "--output-dir", out)
    assert code == 2
    assert "--budget compute: accumulate4: one step costs 16 training-row equivalents, more than the whole " \
           "budget of 4" in err and "--max-steps >= 4" in err
    assert not out.exists()


@pytest.mark.parametrize("seeds", ["0,-1", "0,4294967296"])
def test_seeds_out_of_range_are_one_line(seeds, data, tmp_path, capsys):
    code, _, err = run_cli(capsys, "compare", "--data", data, "--arms", "plain", "--seeds", seeds, *MICRO,
                           "--output-dir", tmp_path / "cmp")
    assert code == 2 and "--seeds:" in err and "not seeds" in err
    assert not (tmp_path / "cmp").exists()


def test_a_trained_source_without_validation_rows_is_said_in_compare(data, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(data, partial)
    (partial / "riddle.validation.jsonl").unlink()
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(capsys, "compare", "--data", partial, "--arms", "plain", "--seeds", "0",
                                "--no-intervals", *MICRO, "--output-dir", out)
    assert code == 0, err
    said = "no validation loss for trained source(s) riddle (6 of 60 training rows, 10.0%)"
    assert said in stdout
    md = (out / "report.md").read_text()
    assert said in md and "Validation sources: addition, product." in md
