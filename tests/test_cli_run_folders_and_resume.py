"""`colm train` / `colm evaluate` under the failures a new user meets: two runs into one folder,
resuming a finished or half-saved run, settings that used to train something else, mismatched
models, truncated or empty data, and bugs that must not pass for bad input (issue 13)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import MICRO, assert_usage_error, run_cli, write_jsonl

from colm.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_env")  # tests/conftest.py


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir) -> Path:
    """A finished 2-step run with a checkpoint and a logged loss at every step (copy before use)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("COLM_CACHE", str(cache_dir))
        code = main(["train", *MICRO, "--save-steps", "1", "--output-dir", str(out)])
    assert code == 0
    return out


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def strict_json(path: Path):
    """json.loads that rejects NaN/Infinity, as strict JSON readers do."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# ------------------------------------------------------------------ one run per output folder


def test_a_second_run_into_a_training_runs_folder_is_refused(tmp_path, capsys, monkeypatch):
    """--overwrite-output-dir while another run trains used to delete that run's checkpoints."""
    from transformers import TrainerCallback

    from colm.cli import train as train_cli

    out = tmp_path / "run"
    second: list[subprocess.CompletedProcess] = []

    class SecondRunMidway(TrainerCallback):
        # Another process: a second in-process parse of TrainingArguments would reset the
        # first run's accelerate state, which separate runs never share.
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1 and not second:
                second.append(subprocess.run(
                    [sys.executable, "-m", "colm.cli", "train", *MICRO, "--output-dir", str(out),
                     "--overwrite-output-dir"], capture_output=True, text=True, timeout=300,
                ))

    make_trainer = train_cli.make_trainer

    def with_second_run(*args, **kwargs):
        trainer = make_trainer(*args, **kwargs)
        trainer.add_callback(SecondRunMidway())
        return trainer

    monkeypatch.setattr(train_cli, "make_trainer", with_second_run)
    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", out)
    assert code == 0, err
    assert second[0].returncode == 2, second[0].stderr
    assert_usage_error(2, second[0].stderr, f"--output-dir {out}", "another colm run", f"pid {os.getpid()}")
    # the first run is intact: its checkpoint and report, and the lock is gone with it
    assert json.loads((out / "report.json").read_text())["global_step"] == 2
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / ".colm.lock").exists()


def test_a_live_holder_is_named_and_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    hold = (
        "import os, sys\n"
        "from colm.cli.lock import OutputDirLock\n"
        "with OutputDirLock(sys.argv[1], command='holder'):\n"
        "    print('locked', flush=True)\n"
        "    if sys.argv[2] == 'kill':\n"
        "        os.kill(os.getpid(), 9)\n"
        "    sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out), "wait"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", out)
        assert_usage_error(code, err, "--output-dir", "another colm run", f"pid {holder.pid}")
    finally:
        holder.communicate("", timeout=60)
    assert not (out / ".colm.lock").exists()  # released on a normal exit

    killed = subprocess.run([sys.executable, "-c", hold, str(out), "kill"], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9 and (out / ".colm.lock").exists()  # kill -9: the file stays ...
    from colm.cli.lock import OutputDirLock

    with OutputDirLock(out) as lock:  # ... but its lock died with the process
        assert lock.taken_over is not None and lock.taken_over["command"] == "holder"


def test_demo_into_a_folder_in_use_is_refused(tmp_path, capsys):
    from colm.cli.lock import OutputDirLock

    with OutputDirLock(tmp_path / "demo", command="colm train --output-dir demo"):
        code, _, err = run_cli(capsys, "demo", "--quick", "--output-dir", tmp_path / "demo")
        assert_usage_error(code, err, "--output-dir", "another colm run", "colm train --output-dir demo")
        assert os.listdir(tmp_path / "demo") == [".colm.lock"]  # the demo wrote nothing


# ------------------------------------------------------------------ resume


def test_resume_of_a_finished_run_trains_nothing(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path)
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code, stdout, err = run_cli(capsys, "train", *MICRO, "--save-steps", "1", "--output-dir", out,
                                "--resume-from-checkpoint", "true")
    assert code == 0, err
    assert "already finished" in stdout and "checkpoint-2" in stdout and "--max-steps" in stdout
    after = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # no step past --max-steps, no rotated checkpoint, no rewritten model

    # killed after the final checkpoint, before the final model and report: still finished
    (out / "report.json").unlink()
    (out / "model.safetensors").unlink()
    code, stdout, err = run_cli(capsys, "train", *MICRO, "--output-dir", out, "--resume-from-checkpoint", "true")
    assert code == 0, err
    assert "already finished" in stdout and f"final weights are in {out / 'checkpoint-2'}" in stdout
    assert not (out / "report.json").exists()


def test_resume_skips_a_checkpoint_torn_by_a_kill(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path)
    torn = out / "checkpoint-2" / "trainer_state.json"
    torn.write_text('{"global_step": 2, "log_hist', encoding="utf-8")

    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", out,
                           "--resume-from-checkpoint", out / "checkpoint-2")
    assert_usage_error(code, err, str(torn), "not valid JSON")

    code, stdout, err = run_cli(capsys, "train", *MICRO, "--save-steps", "1", "--output-dir", out,
                                "--resume-from-checkpoint", "true")
    assert code == 0, err
    assert "resuming from checkpoint-1, not from the newer checkpoint-2" in stdout
    assert (out / "incomplete-checkpoint-2").is_dir()  # kept, but out of the Trainer's rotation
    report = json.loads((out / "report.json").read_text())
    assert report["global_step"] == 2 and report["resumed_from"] == str(out / "checkpoint-1")
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2


def test_a_damaged_selector_state_is_bad_input_not_a_bug(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path)
    state = next((out / "checkpoint-1").glob("colm_selector.*"))
    state.write_bytes(b"not a selector state")
    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", out,
                           "--resume-from-checkpoint", out / "checkpoint-1")
    assert_usage_error(code, err, "--resume-from-checkpoint", str(state))


def test_final_training_loss_after_a_resume_covers_the_whole_run(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path)
    code, _, err = run_cli(capsys, "train", *MICRO[2:], "--max-steps", "4", "--output-dir", out,
                           "--resume-from-checkpoint", "true")
    assert code == 0, err
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 4  # logging every step: steps 1-2 before the resume, 3-4 after
    report = json.loads((out / "report.json").read_text())
    assert report["train_loss"] == pytest.approx(sum(losses) / 4, rel=1e-6)


# ------------------------------------------------------------------ settings that trained something else


def _settings_cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    def yaml_file(name: str, text: str) -> str:
        path = tmp / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    dup = yaml_file("dup.yaml", "max_steps: 1\nlearning_rate: 0.001\nlearning-rate: 0.1\n")
    both = yaml_file("both.yaml", "pool_factor: 2\ncoreset:\n  zo_probes: 1\n  pool_factor: 4\n")
    null = yaml_file("null.yaml", "max_steps: null\n")
    small = write_jsonl(tmp / "small.jsonl", [json.dumps({"source": s, "prompt": f"{i}+{i}?",
                                                         "response": f"The answer is {2 * i}."})
                                             for s in ("a", "b") for i in range(3)])
    return {
        "max_steps_0": (["--max-steps", "0"], ["--max-steps", "-1"]),
        "lora_r_negative": (["--lora-r", "-1"], ["--lora-r", "full fine-tune"]),
        "yaml_duplicate_key": (["--config", dup], [f"{dup}:3", "learning-rate", "given twice", "line 2"]),
        "yaml_top_level_and_coreset": (["--config", both], [f"{both}:4", "pool_factor", "given twice", "coreset"]),
        "yaml_null_number": (["--config", null], [f"{null}:1", "max_steps", "null", "100"]),
        "pool_larger_than_data": (["--data", str(small), "--per-device-train-batch-size", "2", "--pool-factor", "4"],
                                  ["--pool-factor 4", "6 examples", "8 examples"]),
    }


@pytest.mark.parametrize("case", ["max_steps_0", "lora_r_negative", "yaml_duplicate_key",
                                  "yaml_top_level_and_coreset", "yaml_null_number", "pool_larger_than_data"])
def test_settings_that_used_to_train_something_else_are_refused(case, tmp_path, capsys):
    argv, needles = _settings_cases(tmp_path)[case]
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--max-steps", "1", "--save-strategy", "no", *argv)
    assert_usage_error(code, err, *needles)
    assert not out.exists()


def test_output_dir_errors_name_the_option_before_anything_loads(tmp_path, capsys, monkeypatch):
    from colm.models import loading as modeling

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(modeling, "load_model", no_model)
    a_file = write_jsonl(tmp_path / "file.jsonl", ["{}"])
    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", a_file / "run")
    assert_usage_error(code, err, f"--output-dir {a_file / 'run'}", "is a file, not a folder")
    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", a_file)
    assert_usage_error(code, err, f"--output-dir {a_file}", "not a folder")


# ------------------------------------------------------------------ evaluation


def test_evaluate_output_errors_name_the_option_before_anything_loads(tmp_path, capsys):
    a_file = write_jsonl(tmp_path / "file.jsonl", ["{}"])
    for output, needle in ((tmp_path, "is a folder"), (a_file / "e.json", "is a file, not a folder")):
        # the checkpoint folder holds no model: the output is checked first
        code, _, err = run_cli(capsys, "evaluate", "--checkpoint", tmp_path, "--output", output)
        assert_usage_error(code, err, f"--output {output}", needle)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, cache_dir) -> Path:
    """colm's tiny embedded model and tokenizer saved as a plain Hugging Face folder."""
    from colm.models.default import default_model, default_tokenizer

    folder = tmp_path_factory.mktemp("saved") / "model"
    tokenizer = default_tokenizer(cache_dir)
    default_model(tokenizer, size="tiny").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_model_and_tokenizer_that_do_not_belong_together_get_one_line(saved_model, tmp_path, capsys):
    from tiny_models import VOCAB
    from trainer_helpers import tiny_llama

    folder = tmp_path / "mismatched"
    shutil.copytree(saved_model, folder)
    tiny_llama().save_pretrained(folder)  # 96 embeddings; the folder's tokenizer has 4096 tokens
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", folder, "--sources", "svamp",
                           "--max-examples-per-source", "1")
    assert_usage_error(code, err, f"--checkpoint {folder}", "4096 tokens", f"only {VOCAB}")
    code, _, err = run_cli(capsys, "train", *MICRO, "--model", folder, "--output-dir", tmp_path / "out")
    assert_usage_error(code, err, f"--model {folder}", "4096 tokens")


def test_adapter_on_the_wrong_base_model_gets_one_line(tmp_path, capsys, cache_dir):
    import peft

    from colm.models.default import default_model, default_tokenizer

    adapter = tmp_path / "adapter"
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft.get_peft_model(default_model(default_tokenizer(cache_dir), size="tiny"), lora).save_pretrained(adapter)
    # trained on the tiny model, but the run file says small
    (adapter / "colm_run.json").write_text(json.dumps({"model": None, "model_size": "small"}))
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", adapter, "--sources", "svamp",
                           "--max-examples-per-source", "1")
    assert_usage_error(code, err, f"--checkpoint {adapter}", "does not fit its base model",
                       "embedded small model", "in the adapter but")


def test_empty_reference_is_neither_hit_nor_miss(cache_dir):
    from datasets import Dataset

    from colm.data import DEFAULT_TEMPLATE
    from colm.evaluation import generation_exact_match
    from colm.models.default import default_model, default_tokenizer

    tokenizer = default_tokenizer(cache_dir)
    raw = Dataset.from_list([
        {"source": "a", "prompt": "1+1?", "response": "The answer is 2."},
        {"source": "a", "prompt": "2+2?", "response": ""},
        {"source": "blank", "prompt": "3+3?", "response": "   "},
    ])
    result = generation_exact_match(default_model(tokenizer, size="tiny"), tokenizer, raw,
                                    template=DEFAULT_TEMPLATE, max_new_tokens=2)
    assert result["n"] == {"a": 1}
    assert result["n_without_reference"] == {"a": 1, "blank": 1}
    assert "blank" not in result["per_source"]  # no accuracy at all, rather than 0
    assert [p["correct"] for p in result["predictions"]][1:] == [None, None]


def test_a_source_truncated_away_is_reported_and_eval_json_stays_json(saved_model, tmp_path, capsys):
    long_prompt = " ".join(["many words in a long question"] * 40)
    data = write_jsonl(tmp_path / "eval.jsonl", [
        json.dumps({"source": "short", "prompt": "1+1?", "response": "The answer is 2."}),
        json.dumps({"source": "long", "prompt": long_prompt, "response": "The answer is 3."}),
        json.dumps({"source": "long", "prompt": long_prompt, "response": "The answer is 4."}),
    ])
    out = tmp_path / "e.json"
    code, stdout, err = run_cli(capsys, "evaluate", "--checkpoint", saved_model, "--data", data,
                                "--max-length", "32", "--output", out)
    assert code == 0, err
    result = strict_json(out)
    assert result["all_truncated"] == {"long": 2} and set(result["loss"]["per_source"]) == {"short"}
    row = next(line for line in stdout.splitlines() if line.startswith("long"))
    assert "all truncated" in row and "every example of long lost its answer" in stdout

    code, stdout, err = run_cli(capsys, "evaluate", "--checkpoint", saved_model, "--data", data,
                                "--sources", "long", "--max-length", "32", "--generate",
                                "--max-new-tokens", "2", "--output", out)
    assert code == 0, err
    result = strict_json(out)  # used to hold NaN
    assert result["loss"]["mean"] is None and "loss: none" in stdout


# ------------------------------------------------------------------ empty responses


def test_empty_responses_are_refused_when_all_and_counted_when_some(tmp_path, capsys):
    def rows(n_empty):
        return [json.dumps({"source": src, "prompt": f"{i}+{i}?",
                            "response": "" if i < n_empty else f"The answer is {2 * i}."})
                for src in ("a", "b") for i in range(4)]

    all_empty = write_jsonl(tmp_path / "all_empty.jsonl", rows(4))
    code, _, err = run_cli(capsys, "train", *MICRO, "--sources", "a", "b", "--data", all_empty,
                           "--output-dir", tmp_path / "refused")
    assert_usage_error(code, err, str(all_empty), "every training response is empty", "--allow-empty-responses")
    assert not (tmp_path / "refused").exists()

    some_empty = write_jsonl(tmp_path / "some_empty.jsonl", rows(1))
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *MICRO, "--sources", "a", "b", "--data", some_empty,
                           "--save-strategy", "no", "--output-dir", out)
    assert code == 0, err
    assert "warning: 2 of 8 training examples have an empty response (a: 1, b: 1)" in err
    assert json.loads((out / "report.json").read_text())["data"]["train"]["n_empty_response"] == 2
    assert "2 with an empty response" in (out / "report.md").read_text()

    code, _, err = run_cli(capsys, "train", *MICRO, "--sources", "a", "b", "--data", all_empty,
                           "--save-strategy", "no", "--allow-empty-responses", "--output-dir", tmp_path / "allowed")
    assert code == 0, err


# ------------------------------------------------------------------ bugs are not bad input


def test_an_internal_error_is_not_reported_as_bad_input(tmp_path, capsys, monkeypatch):
    from colm.data import prepare as dataprep

    def broken(*_a, **_k):
        raise ValueError("an internal check failed")

    monkeypatch.setattr(dataprep, "prepare_data", broken)
    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", tmp_path / "out")
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "internal error" in lines[0] and "ValueError: an internal check failed" in lines[0]
    assert "in broken" in lines[0] and "--debug" in lines[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="internal check"):
        main(["--debug", "train", *MICRO, "--output-dir", str(tmp_path / "out")])

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "x"))

    monkeypatch.setattr(dataprep, "prepare_data", disk_full)
    code, _, err = run_cli(capsys, "train", *MICRO, "--output-dir", tmp_path / "out")
    assert code == 1 and "internal error" not in err
    assert f"failed: {tmp_path / 'out' / 'x'}: no space left on device" in err  # where, and the OS's reason


def test_finite_json_turns_nan_into_null(tmp_path):
    from colm.files import atomic_write_json

    atomic_write_json(tmp_path / "x.json", {"a": math.nan, "b": [1.0, math.inf], "c": {"d": -math.inf}})
    assert strict_json(tmp_path / "x.json") == {"a": None, "b": [1.0, None], "c": {"d": None}}
