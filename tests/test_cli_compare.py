"""`colm compare` end to end on a new user's own 3-source folder: the report carries both losses
and paired intervals, an interrupted comparison resumes to the same numbers, bad input is one
line with exit 2 and leaves no folder behind."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from colm.cli import main

PROBLEMS = {
    "addition": [("What is {a} plus {b}?", "{a} + {b} = {c}. The answer is {c}.", lambda a, b: a + b)],
    "product": [("Multiply {a} by {b}.", "{a} * {b} = {c}. The answer is {c}.", lambda a, b: a * b)],
    "riddle": [("Tom has {a} apples and eats {b}. How many are left?", "{a} - {b} = {c}. The answer is {c}.",
                lambda a, b: a - b)],
}
SIZES = {"addition": 40, "product": 14, "riddle": 6}  # an imbalanced mixture, not the shipped one


pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_env")  # tests/conftest.py


def user_folder(root: Path) -> Path:
    """<source>.train.jsonl / <source>.validation.jsonl of three made-up sources."""
    root.mkdir(parents=True, exist_ok=True)
    for source, n in SIZES.items():
        prompt, response, f = PROBLEMS[source][0]
        for split, count, offset in (("train", n, 0), ("validation", 3, 100)):
            rows = []
            for i in range(count):
                a, b = 7 + i + offset, 1 + i % 5
                rows.append(json.dumps({"prompt": prompt.format(a=a, b=b),
                                        "response": response.format(a=a, b=b, c=f(a, b))}))
            (root / f"{source}.{split}.jsonl").write_text("\n".join(rows) + "\n")
    return root


MICRO = ["--max-steps", "3", "--per-device-train-batch-size", "4", "--max-length", "64",
         "--learning-rate", "3e-3"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_on_a_users_folder_reports_both_losses_with_intervals(tmp_path, capsys):
    data = user_folder(tmp_path / "my_data")
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(capsys, "compare", "--data", data, "--arms", "plain,stratified",
                                "--seeds", "0,1", *MICRO, "--output-dir", out)
    assert code == 0, err
    md = (out / "report.md").read_text()
    assert "natural mixture" in md and "mean over sources" in md and "worst source" in md
    assert "share of the training rows" in md and "95%" in md
    assert "[" in md.split("| plain |")[1].splitlines()[0]  # plain's row has intervals
    assert (out / "compare.png").stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    plain = next(a for a in report["arms"] if a["arm"] == "plain")
    paired = plain["losses"]["val_loss_natural"]["paired"]
    assert paired["n"] == 2 and paired["lo"] <= paired["mean"] <= paired["hi"]
    runs = report["runs"]
    assert len(runs) == 4 and {r["steps"] for r in runs} == {3}
    # The natural loss weighs the sources by their training rows (40:14:6), not equally.
    r = runs[0]
    w = {s: SIZES[s] / sum(SIZES.values()) for s in SIZES}
    assert r["val_loss_natural"] == pytest.approx(sum(w[s] * r["per_source"][s] for s in SIZES))
    assert "[plain seed 0] step 3/3" in stdout  # progress: arm, seed, step
    lines = (out / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "settings" and len(lines) == 5


def test_an_interrupted_compare_resumes_to_the_same_numbers(tmp_path, capsys, monkeypatch):
    data = user_folder(tmp_path / "my_data")
    argv = ["compare", "--data", data, "--arms", "plain,reweighted", "--seeds", "0,1", *MICRO]
    code, _, err = run_cli(capsys, *argv, "--output-dir", tmp_path / "whole")
    assert code == 0, err

    from colm.compare import run as compare_run

    real, calls = compare_run.run_arm, []

    def killed_on_the_third(*a, **k):
        calls.append(a[0].name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(compare_run, "run_arm", killed_on_the_third)
    code, _, err = run_cli(capsys, *argv, "--output-dir", tmp_path / "cut")
    assert code == 130, err
    assert len((tmp_path / "cut" / "results.jsonl").read_text().splitlines()) == 1 + 2
    assert not (tmp_path / "cut" / "report.md").exists()
    monkeypatch.setattr(compare_run, "run_arm", real)

    code, stdout, err = run_cli(capsys, *argv, "--output-dir", tmp_path / "cut")
    assert code == 0, err
    assert "resuming, 2 arm x seed run(s)" in stdout
    assert stdout.count("] done:") == 2  # only the two missing runs trained

    def losses(folder):
        rows = json.loads((folder / "report.json").read_text())["runs"]
        return {(r["arm"], r["seed"]): r["per_source"] for r in rows}

    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")
    # The same folder under other settings is refused, not mixed.
    code, _, err = run_cli(capsys, *argv[:-2], "--max-steps", "2", *MICRO[2:], "--output-dir", tmp_path / "cut")
    assert code == 2 and "other settings" in err and "max_steps" in err
    code, stdout, err = run_cli(capsys, *argv[:-2], "--max-steps", "2", *MICRO[2:], "--output-dir",
                                tmp_path / "cut", "--overwrite-output-dir")
    assert code == 0, err
    assert {r["steps"] for r in json.loads((tmp_path / "cut" / "report.json").read_text())["runs"]} == {2}


@pytest.mark.parametrize("extra, needles", [
    (["--arms", "plain,bogus"], ["unknown arm 'bogus'", "presets: plain, accumulate2"]),
    (["--arms", "plain,stratified", "--baseline", "paper"], ["--baseline", "'paper' is not among the arms"]),
    (["--arms", "plain,stratified", "--seeds", "0"], ["the interval needs >= 2 seeds"]),
    (["--arms", "stratified:pool_factor=0"], ["pool_factor"]),
    (["--seeds", "0,x"], ["--seeds"]),
    (["--exact-match-per-source", "-1"], ["--exact-match-per-source", ">= 0"]),
])
def test_bad_compare_input_is_one_line_exit_2_and_no_folder(extra, needles, tmp_path, capsys):
    data = user_folder(tmp_path / "my_data")
    out = tmp_path / "cmp"
    code, _, err = run_cli(capsys, "compare", "--data", data, *MICRO, *extra, "--output-dir", out)
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()


def test_train_and_evaluate_report_the_natural_mixture_loss(tmp_path, capsys):
    data = user_folder(tmp_path / "my_data")
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--data", data, *MICRO, "--output-dir", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    val, rows = report["validation"], report["data"]["train"]["per_source"]
    assert rows == SIZES
    total = sum(rows.values())
    assert val["natural"] == pytest.approx(sum(rows[s] / total * v for s, v in val["per_source"].items()))
    assert "natural mixture" in stdout and "share of the training rows" in stdout
    assert "natural mixture" in (out / "report.md").read_text()
    final = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["eval/loss_natural"] == pytest.approx(val["natural"])

    code, stdout, err = run_cli(capsys, "evaluate", "--checkpoint", out, "--data", data)
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())
    assert result["loss"]["natural"] == pytest.approx(val["natural"], abs=1e-5)
    assert "natural mixture" in stdout


def test_compute_budget_calibrates_the_scoring_arm_and_gives_it_the_steps_that_fit(tmp_path, capsys):
    data = user_folder(tmp_path / "my_data")
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(capsys, "compare", "--data", data, "--arms", "stratified,accumulate2,paper",
                                "--seeds", "0", "--no-intervals", "--budget", "compute",
                                "--max-steps", "4", *MICRO[2:], "--output-dir", out)
    assert code == 0, err
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    ratio = next(x["ratio"] for x in lines if x["kind"] == "calibration" and x["arm"] == "paper")
    assert ratio > 0
    steps = {x["row"]["arm"]: x["row"]["steps"] for x in lines if x["kind"] == "run"}
    # baseline: 4 steps x 4 rows = 16 training rows; accumulate2 8 rows per step; paper 4 + ratio x 8
    assert steps["stratified"] == 4 and steps["accumulate2"] == 2
    assert steps["paper"] == max(1, int(16 / (4 + ratio * 8) + 1e-9))
    plan = json.loads((out / "report.json").read_text())["plan"]
    assert all(p["units"] <= plan["stratified"]["units"] + 1e-9 for p in plan.values())
    assert "calibrating the scoring cost" in stdout and "training-row equivalents" in (out / "report.md").read_text()


def test_exact_match_rows_take_the_first_numeric_answers_of_every_source():
    import datasets

    from colm.compare.run import exact_match_rows

    raw = datasets.Dataset.from_dict({
        "source": ["a", "a", "a", "b", "b", "a"],
        "prompt": ["p"] * 6,
        "response": ["x. The answer is 1,200.", "The answer is (C).", "The answer is 3.5", "The answer is -2",
                     "no answer here", "The answer is 4"],
    })
    picked = exact_match_rows(raw, 2)
    assert list(picked["response"]) == ["x. The answer is 1,200.", "The answer is 3.5", "The answer is -2"]


def test_compare_scores_exact_match_when_asked(tmp_path, capsys):
    data = user_folder(tmp_path / "my_data")
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(capsys, "compare", "--data", data, "--arms", "plain,stratified", "--seeds", "0,1",
                                *MICRO, "--exact-match-per-source", "2", "--exact-match-max-new-tokens", "4",
                                "--output-dir", out)
    assert code == 0, err
    runs = json.loads((out / "report.json").read_text())["runs"]
    for r in runs:
        assert r["exact_match"]["n"] == {"addition": 2, "product": 2, "riddle": 2}
        assert 0.0 <= r["exact_match"]["overall"] <= 1.0
    assert "## Exact match" in (out / "report.md").read_text()
    assert "exact match" in stdout
    header = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert header["settings"]["exact_match"] == {"per_source": 2, "max_new_tokens": 4}


def test_a_config_file_holds_the_comparisons_own_options(tmp_path, capsys):
    data = user_folder(tmp_path / "my_data")
    config = tmp_path / "lab.yaml"
    config.write_text("arms: plain,stratified\nseeds: 0,1\nbaseline: plain\nmax_steps: 2\n"
                      "per_device_train_batch_size: 4\nmax_length: 64\n")
    out = tmp_path / "cmp"
    code, _, err = run_cli(capsys, "compare", "--config", config, "--data", data, "--output-dir", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"] == "plain" and report["settings"]["seeds"] == [0, 1]
    assert {(r["arm"], r["steps"]) for r in report["runs"]} == {("plain", 2), ("stratified", 2)}
    config.write_text("arms: plain,nonsense\n")
    code, _, err = run_cli(capsys, "compare", "--config", config, "--data", data, "--output-dir", tmp_path / "x")
    assert code == 2 and "unknown arm 'nonsense'" in err
