"""The `colm` command end to end on micro settings: train, evaluate, demo, --help, YAML configs,
and every kind of bad input (one-line error naming the file/line or option, exit 2, no traceback,
no output dir created)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from colm.cli import main

# A few seconds per run: the tiny model, 2 steps, a handful of short examples of 3 sources.
MICRO = [
    "--max-steps", "2", "--per-device-train-batch-size", "2", "--max-length", "96",
    "--max-examples-per-source", "6", "--max-eval-examples-per-source", "2",
    "--sources", "gsm8k", "svamp", "numglue_1", "--logging-steps", "1", "--save-steps", "2",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_env")  # tests/conftest.py


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usage_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps({"source": "a", "prompt": "1+1?", "response": "2. The answer is 2."})


# ------------------------------------------------------------------ help and dispatch


def test_top_level_help_and_unknown_command(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "train" in out and "demo" in out and "evaluate" in out
    code, _, err = run_cli(capsys, "frobnicate")
    assert code == 2 and "frobnicate" in err


def test_train_help_lists_every_option_with_docs(capsys):
    from transformers import TrainingArguments

    from colm.cli.args import DataArguments, ModelArguments, SelectionArguments
    from colm.config import CoresetConfig

    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0
    for cls in (ModelArguments, DataArguments, SelectionArguments, TrainingArguments):
        for f in dataclasses.fields(cls):
            if f.init:
                assert f"--{f.name.replace('_', '-')}" in out or f"--{f.name}" in out, f.name
    assert "--selection-seed" in out and "--no-coreset" in out and "--config" in out
    flat = " ".join(out.split())
    # CoresetConfig's own field documentation is the help text.
    assert " ".join(CoresetConfig.field_docs()["pool_factor"].split()) in flat


def test_demo_and_evaluate_help(capsys):
    for command in ("demo", "evaluate"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0 and "--output-dir" in out or "--checkpoint" in out


# ------------------------------------------------------------------ train / evaluate


def test_train_writes_run_then_evaluate_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", *MICRO, "--output-dir", out,
                                "--eval-strategy", "steps", "--eval-steps", "1")
    assert code == 0, err
    for name in ("metrics.jsonl", "selections.jsonl", "report.md", "report.json", "model.safetensors",
                 "colm_run.json", "checkpoint-2/colm_selector.safetensors"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["global_step"] == 2
    assert set(report["validation"]["per_source"]) <= {"gsm8k", "svamp", "numglue_1"}
    assert "n_truncated" in report["data"]["train"]
    shares = report["selection"]["per_source"]
    assert abs(sum(v["selected_share"] for v in shares.values()) - 1) < 1e-6
    assert report["time"]["steps"] == 2
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in rec for rec in lines)
    assert [r["step"] for r in lines if "eval/loss_mean" in r] == [1, 2, 2]  # every step + final
    assert "validation loss" in stdout and "colm train" in err  # table on stdout, bar on stderr

    code, stdout, err = run_cli(
        capsys, "evaluate", "--checkpoint", out / "checkpoint-2", "--sources", "gsm8k", "svamp",
        "--max-examples-per-source", "2", "--generate", "--max-new-tokens", "4",
    )
    assert code == 0, err
    result = json.loads((out / "checkpoint-2" / "eval.json").read_text())
    assert set(result["exact_match"]["per_source"]) == {"gsm8k", "svamp"}
    assert "exact match" in stdout

    # --model takes a local folder: continue from the run's final model.
    code, _, err = run_cli(capsys, "train", *MICRO, "--model", out, "--output-dir", tmp_path / "again")
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["config"]["model"]["model"] == str(out)


def test_train_with_pseudo_sources_reports_the_clusters(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *MICRO, "--pseudo-sources", "3", "--pseudo-source-warmup-steps", "1",
                           "--output-dir", out)
    assert code == 0, err
    assert (out / "checkpoint-2" / "colm_pseudo_sources.safetensors").is_file()
    report = json.loads((out / "report.json").read_text())
    ps = report["pseudo_sources"]
    assert ps["fitted"] and ps["fitted_at_step"] == 1 and ps["k"] == 3 and ps["warmup_steps"] == 1
    # every training example is clustered, except those without a supervised token
    assert sum(ps["sizes"].values()) == ps["rows"] == report["data"]["train"]["n_examples"] - ps["unsupervised_rows"]
    assert -1.0 <= ps["ari_vs_source"] <= 1.0
    # how the data's own sources spread over the clusters: every row counted once
    spread = ps["sources_per_cluster"]
    assert set(spread) <= set(ps["sizes"]) and sum(sum(c.values()) for c in spread.values()) == ps["rows"]
    assert {s for c in spread.values() for s in c} == {"gsm8k", "svamp", "numglue_1"}
    fits = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "pseudo_sources/k" in line]
    assert len(fits) == 1 and fits[0]["step"] == 1
    assert "## Pseudo-sources" in (out / "report.md").read_text()


def test_existing_run_is_refused_then_resumed_or_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", *MICRO, "--output-dir", out, "--no-coreset")[0] == 0
    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", out)
    assert_usage_error(code, err, str(out), "--overwrite-output-dir")
    code, _, err = run_cli(capsys, "train", *MICRO[2:], "--max-steps", "3", "--output-dir", out,
                           "--no-coreset", "--resume-from-checkpoint", "true")
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["global_step"] == 3
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # the resumed part replaced, not duplicated
    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", out, "--overwrite-output-dir")
    assert code == 0, err


def test_lora_train_and_evaluate_adapter(tmp_path, capsys):
    out = tmp_path / "lora"
    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", out, "--lora-r", "4",
                           "--lora-alpha", "8", "--lora-target-modules", "q_proj", "v_proj")
    assert code == 0, err
    assert (out / "adapter_config.json").exists() and (out / "checkpoint-2" / "adapter_config.json").exists()
    code, stdout, err = run_cli(capsys, "evaluate", "--checkpoint", out, "--sources", "svamp",
                                "--max-examples-per-source", "2", "--output", tmp_path / "e.json")
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["loss"]["per_source"]["svamp"] > 0


def test_yaml_config_flags_override_it(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        "max_steps: 5\nlearning-rate: 0.002\nsources: [svamp, numglue_1]\nmax_length: 96\n"
        "max_examples_per_source: 4\nmax_eval_examples_per_source: 2\nper_device_train_batch_size: 2\n"
        "save_strategy: 'no'\ncoreset:\n  zo_probes: 2\n  seed: 3\n  topk_dims: null\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    with pytest.warns(FutureWarning, match="'seed' is now 'selection_seed'"):  # the old name, still read
        code, _, err = run_cli(capsys, "train", "--config", config, "--max-steps", "1", "--output-dir", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["global_step"] == 1  # the flag beat the YAML's 5
    assert report["config"]["training"]["learning_rate"] == 0.002
    assert report["config"]["coreset"]["zo_probes"] == 2 and report["config"]["coreset"]["selection_seed"] == 3
    assert report["config"]["coreset"]["topk_dims"] is None
    assert set(report["data"]["train"]["per_source"]) == {"svamp", "numglue_1"}


def test_train_on_one_jsonl_file_without_validation(tmp_path, capsys):
    rows = [json.dumps({"source": src, "prompt": f"{i} + {i}?", "response": f"The answer is {2 * i}."})
            for src in ("left", "right") for i in range(6)]
    data = write_jsonl(tmp_path / "mine.jsonl", rows)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", data, "--output-dir", out, "--max-steps", "2",
                           "--per-device-train-batch-size", "2", "--save-strategy", "no")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["validation"] is None and report["data"]["train"]["per_source"] == {"left": 6, "right": 6}
    assert "## Per source" in (out / "report.md").read_text()


# ------------------------------------------------------------------ bad input


def _bad_cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (extra argv, substrings the one-line error must contain)."""
    malformed = write_jsonl(tmp / "malformed.jsonl", [GOOD, '{"prompt": "x", '])
    missing = write_jsonl(tmp / "missing.jsonl", [json.dumps({"source": "a", "prompt": "p"})])
    empty = write_jsonl(tmp / "empty.jsonl", [])
    yaml_bad = tmp / "bad.yaml"
    yaml_bad.write_text("max_steps: 2\nsources: [a, b\n", encoding="utf-8")
    yaml_unknown = tmp / "unknown.yaml"
    yaml_unknown.write_text("max_steps: 2\nmax_stesp: 3\n", encoding="utf-8")
    yaml_value = tmp / "value.yaml"
    yaml_value.write_text("output_dir: x\nmax_steps: lots\n", encoding="utf-8")
    yaml_source = tmp / "source.yaml"
    yaml_source.write_text("sources: [gsm8k, no_such_source]\n", encoding="utf-8")
    return {
        "malformed_json": (["--data", str(malformed)], [f"{malformed}:2", "malformed JSON"]),
        "missing_field": (["--data", str(missing)], [f"{missing}:1", "'response'"]),
        "empty_file": (["--data", str(empty)], [str(empty), "empty"]),
        "missing_data": (["--data", str(tmp / "nope.jsonl")], ["nope.jsonl"]),
        "bad_yaml": (["--config", str(yaml_bad)], [f"{yaml_bad}:", "invalid YAML"]),
        "unknown_yaml_key": (["--config", str(yaml_unknown)], [f"{yaml_unknown}:2", "max_stesp", "max_steps"]),
        "bad_yaml_value": (["--config", str(yaml_value)], [f"{yaml_value}:2", "max_steps", "lots"]),
        "unknown_source": (["--config", str(yaml_source)], ["no_such_source"]),
        "unknown_small_source": (["--max-examples-per-source", "2", "--small-sources", "zzz"], ["--small-sources", "zzz"]),
        "bad_choice": (["--similarity", "cosinus"], ["similarity", "cosinus"]),
        "bad_int": (["--max-steps", "two"], ["max_steps", "two"]),
        "bad_topk": (["--topk-dims", "many"], ["--topk-dims", "many"]),
        "bad_config_value": (["--zo-probes", "0"], ["--zo-probes", "zo_probes"]),
        "unknown_flag": (["--frobnicate", "3"], ["unrecognized", "--frobnicate"]),
        "missing_config": (["--config", str(tmp / "absent.yaml")], ["absent.yaml"]),
        "model_offline": (["--model", "colm-test-org/not-a-real-model"], ["not-a-real-model"]),
        "bad_model_path": (["--model", str(tmp / "no_model_dir")], ["no_model_dir"]),
        "pseudo_zero": (["--pseudo-sources", "0"], ["--pseudo-sources", "an integer >= 2"]),
        "pseudo_word": (["--pseudo-sources", "many"], ["--pseudo-sources", "'many'", "'auto'"]),
        # the default 20 warm-up steps in a run of --max-steps 1
        "pseudo_warmup": (["--pseudo-sources", "4"], ["--pseudo-source-warmup-steps", "never be used"]),
        "pseudo_too_many": (["--pseudo-sources", "50", "--pseudo-source-warmup-steps", "0", "--sources", "gsm8k",
                             "--max-examples-per-source", "4", "--per-device-train-batch-size", "1"],
                            ["--pseudo-sources", "50 clusters", "only 4"]),
    }


BAD_CASES = [
    "malformed_json", "missing_field", "empty_file", "missing_data", "bad_yaml", "unknown_yaml_key",
    "bad_yaml_value", "unknown_source", "unknown_small_source", "bad_choice", "bad_int", "bad_topk",
    "bad_config_value", "unknown_flag", "missing_config", "model_offline", "bad_model_path",
    "pseudo_zero", "pseudo_word", "pseudo_warmup", "pseudo_too_many",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_exit_2_and_no_output(case, tmp_path, capsys):
    argv, needles = _bad_cases(tmp_path)[case]
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--max-steps", "1", *argv)
    assert_usage_error(code, err, *needles)
    assert not out.exists()


def test_debug_flag_reraises(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="empty"):
        main(["--debug", "train", "--data", str(empty), "--output-dir", str(tmp_path / "o")])


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["evaluate", "--checkpoint", "{tmp}/none"], ["--checkpoint", "none"]),
        (["evaluate"], ["--checkpoint"]),
        (["evaluate", "--checkpoint", "{tmp}", "--data", "{tmp}/x.jsonl"], ["x.jsonl"]),
        (["evaluate", "--checkpoint", "{tmp}"], ["--checkpoint", "config.json"]),
        (["demo", "--steps", "0", "--output-dir", "{tmp}/demo"], ["--steps"]),
        (["demo", "--model-size", "huge", "--output-dir", "{tmp}/demo"], ["--model-size", "huge"]),
    ],
)
def test_evaluate_and_demo_bad_input(argv, needles, tmp_path, capsys):
    code, _, err = run_cli(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert_usage_error(code, err, *needles)
    assert not (tmp_path / "demo").exists()


# ------------------------------------------------------------------ demo


def test_demo_quick_writes_report_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--quick", "--output-dir", out)
    assert code == 0, err
    for name in ("report.md", "report.json", "val_loss.png", "per_source_loss.png", "selection_share.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert [a["name"] for a in report["arms"]] == ["random_b", "random_2b", "stratified_b_of_2b", "paper_b_of_2b"]
    assert all(a["time"]["steps"] == 3 for a in report["arms"])
    md = (out / "report.md").read_text()
    assert "random 2b" in md and "![validation loss](val_loss.png)" in md
    assert "CoLM b of 2b" in stdout and "worst source" in stdout


# ------------------------------------------------------------------ installed command


def _colm_exe() -> list[str]:
    exe = Path(sys.executable).with_name("colm")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "colm.cli"]


def test_console_script_reports_bad_data_without_traceback(tmp_path, cache_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD, "not json"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLM_CACHE": str(cache_dir)}
    proc = subprocess.run(
        [*_colm_exe(), "train", "--data", str(bad), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and f"{bad}:2" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_import_is_light_and_module_entry_point_works(tmp_path):
    code = "import sys, colm.cli; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "colm.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("colm ")
