"""`colm train` and the Python API after the fourth red team (issue 28): a run that diverges
before its first log or save never exits 0, damaged checkpoint files are named, every numeric
option is range-checked and every regular expression compiled before anything loads, and a full
disk under `colm compare` names the file."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from test_cli_compare import MICRO, run_cli, user_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_env")  # tests/conftest.py

A = ["--model-size", "tiny", "--max-length", "48", "--per-device-train-batch-size", "4", "--disable-tqdm", "true"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return user_folder(tmp_path_factory.mktemp("rel4") / "my_data")


def test_a_run_diverging_before_its_first_log_or_save_exits_1(data, tmp_path, capsys):
    out = tmp_path / "t"
    code, _, err = run_cli(capsys, "train", "--data", data, *A, "--learning-rate", "1e30", "--max-steps", "3",
                           "--save-strategy", "no", "--output-dir", out)
    assert code == 1
    assert "failed: training diverged" in err and "at step 3" in err and "no checkpoint was saved" in err
    assert not (out / "report.json").exists() and not (out / "model.safetensors").exists()


def test_weights_that_turned_non_finite_fail_the_run_at_its_end():
    import torch

    from colm.integrations.non_finite import NonFiniteTrainingError, check_weights

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    check_weights(model, 5)  # finite: nothing happens
    with torch.no_grad():
        model[1].weight[0, 1] = float("inf")
    with pytest.raises(NonFiniteTrainingError, match=r"weight 1.weight is nan at step 5"):
        check_weights(model, 5)
    model[1].weight.requires_grad_(False)  # a frozen weight is not what training changed
    check_weights(model, 5)


@pytest.fixture(scope="module")
def saved_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rel4_run") / "r"
    from colm.cli import main

    assert main(["train", "--data", str(data), *A, "--max-steps", "4", "--save-steps", "2",
                 "--output-dir", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                  "colm_selector.safetensors"])
def test_a_truncated_checkpoint_file_is_named_on_resume(name, data, saved_run, tmp_path, capsys):
    out = tmp_path / "r"
    shutil.copytree(saved_run, out)
    path = out / "checkpoint-4" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, _, err = run_cli(capsys, "train", "--data", data, *A, "--max-steps", "6",
                           "--save-steps", "2", "--output-dir", out, "--resume-from-checkpoint", "true")
    assert code == 2, err
    assert f"{path}:" in err and "damaged checkpoint file" in err and "internal error" not in err
    assert f"--resume-from-checkpoint {out / 'checkpoint-2'}" in err  # the older one to use instead


@pytest.mark.parametrize("option, value, needle", [
    ("--weight-decay", "nan", "--weight-decay: expected a finite number >= 0, got nan"),
    ("--weight-decay", "-1", "--weight-decay: expected a finite number >= 0"),
    ("--max-grad-norm", "-1", "--max-grad-norm: expected a finite number >= 0 (0: no clipping)"),
    ("--max-grad-norm", "inf", "--max-grad-norm: expected a finite number >= 0"),
    ("--label-smoothing-factor", "2", "--label-smoothing-factor: expected a number in [0, 1)"),
    ("--num-train-epochs", "inf", "--num-train-epochs: expected a finite number > 0"),
    ("--lora-alpha", "inf", "--lora-alpha: expected a finite number > 0"),
    ("--save-steps", "0", "--save-steps: expected a number > 0"),
    ("--per-device-eval-batch-size", "0", "--per-device-eval-batch-size: expected an integer >= 1"),
    ("--max-eval-examples-per-source", "0", "--max-eval-examples-per-source: expected an integer >= 1"),
    ("--feature-modules", "a(", "--feature-modules: CoresetConfig.feature_modules = ['a('] is invalid: "
                                "expected regular expressions; 'a(' is not one"),
])
def test_numeric_and_pattern_options_are_checked_before_anything_loads(option, value, needle, data, tmp_path,
                                                                       capsys):
    out = tmp_path / "t"
    code, _, err = run_cli(capsys, "train", "--data", data, *A, "--max-steps", "2", option, value,
                           "--output-dir", out)
    assert code == 2 and needle in err, err
    assert not out.exists()
    code, _, err = run_cli(capsys, "compare", "--data", data, "--arms", "plain", "--seeds", "0",
                           "--no-intervals", *MICRO, option, value, "--output-dir", out)
    assert code == 2 and needle in err, err
    assert not out.exists()


def test_a_negative_selection_seed_in_an_arm_is_one_line(data, tmp_path, capsys):
    code, _, err = run_cli(capsys, "compare", "--data", data, "--arms", "stratified:selection_seed=-1",
                           "--seeds", "0", "--no-intervals", *MICRO, "--output-dir", tmp_path / "c")
    assert code == 2 and "selection_seed" in err and "internal error" not in err


def test_a_full_disk_under_compare_names_the_results_file(data, tmp_path, capsys, monkeypatch):
    import colm.compare.results as results_module

    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        if "a" in mode and str(path).endswith("results.jsonl") and Path(path).is_file():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(results_module, "open", full_disk, raising=False)
    out = tmp_path / "c"
    code, _, err = run_cli(capsys, "compare", "--data", data, "--arms", "plain", "--seeds", "0",
                           "--no-intervals", *MICRO, "--output-dir", out)
    assert code == 1
    assert f"failed: appending to results.jsonl, {out / 'results.jsonl'}: no space left on device" in err


def test_a_trained_source_without_validation_rows_is_said_in_train_and_evaluate(data, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(data, partial)
    (partial / "riddle.validation.jsonl").unlink()
    out = tmp_path / "t"
    code, stdout, err = run_cli(capsys, "train", "--data", partial, *A, "--max-steps", "2", "--output-dir", out)
    assert code == 0, err
    said = "no validation loss for trained source(s) riddle (6 of 60 training rows, 10.0%)"
    assert said in stdout and said in (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["missing_sources"] == ["riddle"]
    code, stdout, err = run_cli(capsys, "evaluate", "--checkpoint", out, "--data", partial,
                                "--output", tmp_path / "ev.json")
    assert code == 0, err
    assert said in stdout


@pytest.mark.parametrize("extra, needle", [
    (["--within-source", "random", "--feature", "zo"],
     "--feature zo: does nothing with within_source random (it looks at no gradient features)"),
    (["--no-coreset", "--pool-factor", "4"], "--pool-factor 4: does nothing with --no-coreset"),
    (["--pool-factor", "1", "--within-source", "facility_location"],
     "--within-source facility_location: does nothing with pool_factor 1"),
    (["--within-source", "facility_location", "--feature", "hidden", "--feature-modules", "v_proj"],
     "--feature-modules ['v_proj']: does nothing with feature hidden"),
    (["--num-train-epochs", "1"], "--num-train-epochs 1.0: does nothing while --max-steps is 2"),
])
def test_a_train_option_its_mode_ignores_is_refused(extra, needle, data, tmp_path, capsys):
    out = tmp_path / "t"
    code, _, err = run_cli(capsys, "train", "--data", data, *A, "--max-steps", "2", *extra, "--output-dir", out)
    assert code == 2 and needle in err, err
    assert not out.exists()


def test_selection_options_from_a_config_file_with_no_coreset_are_a_warning(data, tmp_path, capsys):
    """`colm train --config run.yaml --no-coreset` is the documented baseline of the same recipe."""
    config = tmp_path / "run.yaml"
    config.write_text("pool_factor: 4\nwithin_source: facility_location\n")
    code, _, err = run_cli(capsys, "train", "--config", config, "--data", data, *A, "--max-steps", "1",
                           "--no-coreset", "--output-dir", tmp_path / "t")
    assert code == 0, err
    assert "colm train: warning: --config pool-factor: 4, within-source: facility_location: does nothing " \
           "with --no-coreset" in err


@pytest.mark.parametrize("extra, needle", [
    (["--no-coreset"], "--no-coreset: does nothing in colm compare"),
    (["--resume-from-checkpoint", "true"], "--resume-from-checkpoint: does nothing in colm compare"),
    (["--save-strategy", "steps"], "--save-strategy steps: does nothing in colm compare"),
    (["--num-train-epochs", "1"], "--num-train-epochs 1.0: does nothing while --max-steps is 3"),
    (["--selection-seed", "3"], "--selection-seed 3: does nothing in colm compare"),
    (["--arms", "plain,stratified:pool_factor=1"], "--arms stratified:pool_factor=1: pool_factor 1 has no pool"),
    (["--arms", "plain,stratified:feature=zo"],
     "--arms stratified:feature=zo: feature=zo: does nothing with within_source random"),
    (["--arms", "plain,accumulate2", "--feature", "zo"],
     "--feature zo: does nothing with the arms plain, accumulate2 (no arm uses it)"),
])
def test_a_compare_option_that_does_nothing_is_refused(extra, needle, data, tmp_path, capsys):
    out = tmp_path / "c"
    code, _, err = run_cli(capsys, "compare", "--data", data, "--arms", "plain,stratified", "--seeds", "0",
                           "--no-intervals", *MICRO, *extra, "--output-dir", out)
    assert code == 2 and needle in err, err
    assert not out.exists()


def test_an_arms_selection_seed_override_wins_over_the_runs_seed():
    from colm.compare.arms import parse_arm
    from colm.config import CoresetConfig

    fixed = parse_arm("stratified:selection_seed=7")
    assert [fixed.coreset_config(CoresetConfig(), seed).selection_seed for seed in (0, 1)] == [7, 7]
    assert parse_arm("stratified").coreset_config(CoresetConfig(), 1).selection_seed == 1


def test_the_final_loss_after_a_resume_survives_a_cut_metrics_file(data, saved_run, tmp_path, capsys, monkeypatch):
    """metrics.jsonl lost its lines (a full disk, an edit): the checkpoint's own log history
    still covers the steps before the resume."""
    from trainer_helpers import KilledAt, add_to_cli_trainer

    from colm.cli import train as train_cli

    uninterrupted = json.loads((saved_run / "report.json").read_text())["train_loss"]
    out = tmp_path / "r"
    argv = ["train", "--data", data, *A, "--max-steps", "4", "--save-steps", "2", "--output-dir", out]
    real = add_to_cli_trainer(monkeypatch, KilledAt(3))
    assert run_cli(capsys, *argv)[0] == 130
    monkeypatch.setattr(train_cli, "make_trainer", real)
    (out / "metrics.jsonl").write_text("")
    code, _, err = run_cli(capsys, *argv, "--resume-from-checkpoint", "true")
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["train_loss"] == pytest.approx(uninterrupted, rel=1e-5)


def test_an_empty_sources_option_names_the_option_not_truncation(data, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--data", data, *A, "--max-steps", "1", "--sources", "",
                           "--output-dir", tmp_path / "t")
    assert code == 2 and "names no source" in err and "truncation" not in err, err
