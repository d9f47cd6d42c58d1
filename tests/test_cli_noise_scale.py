"""`colm train --noise-scale-every`: noise_scale/* in metrics.jsonl, the report's paragraph, and
bad values refused."""
from __future__ import annotations

import json

import pytest
from test_cli import MICRO, assert_usage_error, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_env")  # tests/conftest.py


def test_train_reports_the_noise_scale(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *MICRO, "--max-steps", "4", "--gradient-accumulation-steps", "2",
                           "--noise-scale-every", "1", "--output-dir", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    section = report["noise_scale"]
    assert section["mode"] == "accumulation" and section["batch"] == 4
    assert section["pool"] == 8  # the default pool factor 2
    # 17 training rows = 5 pool chunks of 4 per epoch: step 2 ends the epoch with one
    # micro-batch, so it has one batch size only and is not measured
    assert report["data"]["train"]["n_examples"] == 17
    assert [h["step"] for h in section["per_step"]] == [0, 1, 3] and section["measurements"] == 3
    md = (out / "report.md").read_text()
    assert "## Gradient noise scale" in md and "the batch is 4, pool 8" in md
    if section["b_simple"] is not None:  # 4 steps of a tiny model: the average may still be undefined
        assert section["regime"] in ("below", "near", "far above")
        assert "gradient noise scale (B_simple ~" in md
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("noise_scale/measurements" in r for r in records)
    assert sum("loss" in r for r in records) == 4  # the Trainer's own records are all there


def test_train_without_the_option_has_no_noise_scale(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", out)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["noise_scale"] is None
    assert "noise scale" not in (out / "report.md").read_text().lower()


def test_negative_noise_scale_every_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", *MICRO, "--noise-scale-every", "-1", "--output-dir", tmp_path / "x")
    assert_usage_error(code, err, "--noise-scale-every", ">= 0")
    assert not (tmp_path / "x").exists()


def test_compare_says_what_the_noise_scale_predicts_for_the_larger_batch(tmp_path, capsys):
    from test_cli_compare import MICRO as COMPARE_MICRO
    from test_cli_compare import run_cli as compare_cli
    from test_cli_compare import user_folder

    data = user_folder(tmp_path / "my_data")
    out = tmp_path / "cmp"
    code, _, err = compare_cli(capsys, "compare", "--data", data, "--arms", "plain,accumulate2", "--baseline",
                               "plain", "--seeds", "0,1", *COMPARE_MICRO, "--noise-scale-every", "1",
                               "--noise-scale-split", "--output-dir", out)
    assert code == 0, err
    runs = json.loads((out / "report.json").read_text())["runs"]
    modes = {r["arm"]: r["noise_scale"]["mode"] for r in runs}
    assert modes == {"plain": "split", "accumulate2": "accumulation"}
    assert all(r["noise_scale"]["measurements"] == 3 for r in runs)
    # every measurement is kept, so B_simple can be pooled again over any steps and seeds
    assert [[m[0] for m in r["noise_scale"]["per_step"]] for r in runs] == [[0, 1, 2]] * 4
    assert all(m[4] == 2 * m[3] for r in runs for m in r["noise_scale"]["per_step"])  # two sizes, b and 2b
    md = (out / "report.md").read_text()
    assert "## Would a larger batch help? (gradient noise scale)" in md
    section = md.split("## Would a larger batch help?")[1].split("## Compute per arm")[0]
    if any(r["noise_scale"]["b_simple_late"] is not None for r in runs):  # 3 tiny steps: may be undefined
        assert "accumulate2 trains 2x the baseline's rows per step" in section
        assert "each of its steps is worth about" in section and "natural mixture" in section
        # and the verdict at the top says it as the reason
        assert "Why (gradient noise scale" in md.split("## Losses")[0]
