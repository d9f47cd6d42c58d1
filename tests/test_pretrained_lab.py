"""The pretrained lab's committed config and table generator, without running the model."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "pretrained" / "lab.yaml"

pytestmark = pytest.mark.usefixtures("offline_env")


def test_the_lab_config_parses_into_the_issue_arms():
    from colm.cli import compare
    from colm.compare.arms import PRESETS

    _, data_args, targs, base, arms, seeds, baseline, budget, intervals, exact = compare.parse(
        ["--config", str(CONFIG), "--output-dir", "/nonexistent/never-written"])
    names = [a.name for a in arms]
    assert names == ["plain", "accumulate2", "reweighted", "stratified", "paper", "mean_match"]
    assert all(n in PRESETS for n in names)
    assert seeds == list(range(10)) and baseline == "stratified" and budget == "steps" and intervals
    assert targs.per_device_train_batch_size == 8 and data_args.max_length == 128 and targs.max_steps >= 20
    assert exact[0] == 0  # off: the sweep got 0-1 of 72 questions right (lab.yaml says why)
    for arm in arms:  # every arm's CoresetConfig is valid on the run's base config
        arm.coreset_config(base, 0)


def test_the_equal_compute_lab_shares_every_setting_but_arms_and_budget():
    # stratified's runs in the two labs must be the same runs (the tables check they are
    # bit-identical), so every setting that shapes a run has to agree
    from colm.cli import compare

    main = compare.parse(["--config", str(CONFIG), "--output-dir", "/nonexistent/a"])
    other = compare.parse(["--config", str(CONFIG.parent / "lab_compute.yaml"), "--output-dir", "/nonexistent/a"])
    assert [a.name for a in other[4]] == ["stratified", "accumulate2"] and other[7] == "compute"
    assert other[5] == main[5] and other[6] == main[6]  # seeds, baseline
    for k in (0, 1, 3):  # model, data, CoresetConfig
        assert other[k] == main[k]
    assert other[2].to_dict() == main[2].to_dict()  # every training argument
    assert other[9] == main[9]  # exact match settings


def _tables():
    spec = importlib.util.spec_from_file_location("lab_tables", ROOT / "benchmarks" / "pretrained" / "tables.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


ARMS = ["plain", "accumulate2", "stratified"]


def run_row(arm, seed, **changes):
    """A results row: plain k = 0, accumulate2 k = 1, stratified k = 2 (lower loss as k grows, by
    the same amount every seed); accumulate2 measures the noise scale: tr(Sigma) = (1 + seed) x
    8 in steps 0-19 and x 32 in steps 20-39, |G|^2 = 1, so pooling over seeds matters."""
    k = ARMS.index(arm) if arm in ARMS else 1
    loss = {"a": 1.0 - 0.1 * k + 0.01 * seed, "b": 2.0 - 0.05 * k}
    row = {"arm": arm, "seed": seed, "steps": 60, "val_loss_natural": 0.8 * loss["a"] + 0.2 * loss["b"],
           "val_loss_mean": (loss["a"] + loss["b"]) / 2, "val_loss_worst": loss["b"], "train_loss": 1.5,
           "per_source": loss, "step_s": 1.0 + k, "score_s": 0.0, "wall_s": 10.0,
           "exact_match": {"per_source": {"a": 0.5, "b": 0.0}, "mean": 0.25, "overall": 0.4, "n": {"a": 4, "b": 1}}}
    if arm == "accumulate2":
        row["noise_scale"] = {"measurements": 40, "per_step": [
            [t, 1.0, (1 + seed) * (8.0 if t < 20 else 32.0), 8.0, 16.0] for t in range(40)]}
    return {**row, **changes}


def write_results(path, rows, arms=ARMS):
    settings = {"arms": arms, "seeds": [0, 1, 2], "max_steps": 60, "batch": 8, "learning_rate": 1e-3,
                "train_rows": {"a": 80, "b": 20}, "model": {"lora_r": 16}}
    path.write_text("\n".join(json.dumps(x) for x in [{"kind": "settings", "settings": settings}]
                              + [{"kind": "run", "row": r} for r in rows]) + "\n")
    return path


def test_tables_use_only_paired_seeds_and_report_both_losses(tmp_path):
    tables = _tables()
    # seed 2 of stratified has not finished: seed 2 is in no table
    rows = [run_row(a, s) for s in (0, 1, 2) for a in ARMS if (a, s) != ("stratified", 2)]
    path = write_results(tmp_path / "results.jsonl", rows)
    assert tables.read_lab(path).seeds() == [0, 1]
    text = tables.render(path)
    assert "natural mixture" in text and "mean over sources" in text and "worst source" in text
    assert "2 paired seeds: 0, 1" in text
    # accumulate2 recovers 100% of its own gap; stratified (k = 2) twice plain's distance: 200%
    assert "| accumulate2 |" in text and "| 100% |" in text and "| 200% |" in text
    assert "| stratified | 3.00 | 1.50 |" in text  # step ratios to plain and accumulate2
    # the noise scale pooled over both seeds (seed 0 alone would give 8 and 32): B = 12, then 48;
    # a step of 16 rows is worth (1 + B/8) / (1 + B/16) steps of 8
    assert "| 0-19 | 12 | 1.5 | 1.43 |" in text and "| 20-39 | 48 | 6.0 | 1.75 |" in text
    assert "pooled: B_simple = 48; the seeds' own values 32 to 64" in text
    assert "plain minus accumulate2 at equal steps (natural mixture; positive: 2b is better): +0.0900" in text
    # The README's table: the control against each arm, in words, both losses (here plain's
    # losses exceed stratified's by the same amount every seed: a zero-width interval).
    readme = tables.render_readme(path)
    assert "2 paired seeds" in readme and "loss averaged over sources" in readme and "natural-mixture loss" in readme
    assert "| random b (same compute) | **wins** (+" in readme  # plain's losses are higher on both
    assert "equal compute** | not measured yet" in readme
    assert f"generated from `{path}`" in readme
    # Differences 0.10, 0.11, 0.10: the interval excludes zero; 0.1, 0.2, 0.1: it holds zero.
    assert tables.verdict({0: 1.0, 1: 1.11, 2: 1.1}, {0: 0.9, 1: 1.0, 2: 1.0}).startswith("**wins** (+0.103 [+0.0")
    assert tables.verdict({0: 0.9, 1: 1.0, 2: 1.0}, {0: 1.0, 1: 1.11, 2: 1.1}).startswith("**loses** (-0.103 [-0.1")
    assert tables.verdict({0: 1.0, 1: 1.2, 2: 1.1}, {0: 0.9, 1: 1.0, 2: 1.0}).startswith("ties (+0.133 [-0.0")
    docs = tmp_path / "bench.md"
    docs.write_text(f"intro\n{tables.BEGIN}\nold\n{tables.END}\noutro\n")
    tables.write_docs(text, docs)
    body = docs.read_text()
    assert "old" not in body and body.startswith("intro") and body.rstrip().endswith("outro")
    with pytest.raises(SystemExit, match="markers"):  # the README's markers are not in this file
        tables.write_docs(readme, docs, tables.README_BEGIN, tables.README_END)


def test_failed_runs_duplicates_and_an_unresolved_gap_are_said_not_hidden(tmp_path):
    tables = _tables()
    rows = [run_row(a, s) for s in (0, 1, 2, 3) for a in ARMS]
    # accumulate2 beats plain on seeds 0 and 2, loses on 1: the b -> 2b gap is not resolved
    for r in rows:
        if r["arm"] == "accumulate2" and r["seed"] == 1:
            r.update(val_loss_natural=2.0, val_loss_mean=2.0, val_loss_worst=3.0)
    rows[ARMS.index("stratified") + 3 * 3]["diverged"] = {"step": 7, "what": "training loss (nan)"}  # seed 3
    rows.append(run_row("plain", 0, val_loss_natural=9.0))  # recorded twice: the first counts
    rows.append(run_row("plain", 4, val_loss_mean=None))  # undefined loss (NaN is stored as null)
    path = write_results(tmp_path / "results.jsonl", rows)
    lab = tables.read_lab(path)
    assert lab.seeds() == [0, 1, 2] and lab.table["plain"][0]["val_loss_natural"] < 9.0
    text = tables.render(path)
    assert "Left out, with their seeds, from every comparison: stratified seed 3 (diverged: training loss (nan)); " \
           "plain seed 4 (val_loss_mean undefined)" in text
    assert "Left out (their seeds too): stratified seed 3" in tables.render_readme(path)
    assert "%" not in text.split("**mean over sources**")[0].split("**natural mixture**")[1]
    assert "No share of the b→2b gap is given on this loss: plain minus accumulate2 is" in text
    # a noise-scale window whose |G|^2 estimate is not positive is a dash, not "nan"
    for r in rows:
        if r["arm"] == "accumulate2":
            r["noise_scale"]["per_step"] = [[t, -1.0 if t < 20 else 1.0, 8.0, 8.0, 16.0] for t in range(40)]
    text = tables.render(write_results(tmp_path / "results.jsonl", rows))
    assert "| 0-19 | — | — | — |" in text and "| nan |" not in text


def test_the_equal_compute_lab_its_prediction_and_the_determinism_check(tmp_path):
    tables = _tables()
    path = write_results(tmp_path / "results.jsonl", [run_row(a, s) for s in (0, 1) for a in ARMS])
    same = [run_row("stratified", s) for s in (0, 1)]
    half = [run_row("accumulate2", s, steps=30, val_loss_natural=1.2 + 0.01 * s, val_loss_mean=1.5 + 0.01 * s)
            for s in (0, 1)]
    cpath = write_results(tmp_path / "compute.jsonl", same + half, arms=["stratified", "accumulate2"])
    readme = tables.render_readme(path, cpath)
    assert "| random 2b at **equal compute** (30 steps of 2b against 60 of b), 2 seeds | **wins** (+" in readme
    text = tables.render(path, cpath)
    assert "stratified 60 steps of b, accumulate2 30 steps of 2b" in text
    assert "30 steps of 2b are worth about 52 steps of b (1.75 each" in text  # B = 48 on b = 8 and 16
    assert "bit-identical losses (three validation losses and the training loss) on all 2 shared seeds" in text
    differs = write_results(tmp_path / "c2.jsonl", [same[0], run_row("stratified", 1, train_loss=1.6)] + half,
                            arms=["stratified", "accumulate2"])
    assert "Determinism check FAILED: stratified's runs differ between the two labs on seeds [1]" in \
           tables.render(path, differs)
    with pytest.raises(SystemExit, match="compare against stratified, plain and accumulate2"):
        tables.render(cpath)


def test_the_generated_blocks_have_their_markers_in_the_docs():
    tables = _tables()
    assert tables.BEGIN in tables.DOCS.read_text() and tables.END in tables.DOCS.read_text()
    assert tables.README_BEGIN in tables.README.read_text() and tables.README_END in tables.README.read_text()
