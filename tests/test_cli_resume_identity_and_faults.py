"""`colm train` / `colm evaluate` after the third red team (issue 20): a resumed run is the same
run (or says what changed), a failed run says so and leaves nothing misleading, machine faults
are named, and nothing read (YAML, data, cache, model files) is trusted blindly."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_cli import assert_usage_error, run_cli, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_env")  # tests/conftest.py

# The reproduction: a 44-row, 3-source file, the tiny default model.
R = ["--max-length", "48", "--per-device-train-batch-size", "2", "--save-steps", "2", "--disable-tqdm", "true"]


def mixture(path: Path, sources: list[str], n: int = 44) -> Path:
    lines = []
    for i in range(n):
        a, b = i % 17 + 1, (i * 7) % 23 + 1
        lines.append(json.dumps({"source": sources[i % len(sources)], "prompt": f"What is {a}+{b}?",
                                 "response": f"{a}+{b}={a + b}. The answer is {a + b}."}))
    return write_jsonl(path, lines)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return mixture(tmp_path_factory.mktemp("data") / "good.jsonl", ["alpha", "beta", "gamma"])


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    return mixture(tmp_path_factory.mktemp("data") / "other.jsonl", ["delta", "eps", "zeta"])


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory, good, cache_dir) -> Path:
    """A finished 4-step run of `good` with checkpoints at steps 2 and 4 (copy before use)."""
    from colm.cli import main

    out = tmp_path_factory.mktemp("four") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("COLM_CACHE", str(cache_dir))
        assert main(["train", "--output-dir", str(out), "--data", str(good), *R, "--max-steps", "4"]) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def files_of(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ a run has an identity


@pytest.mark.parametrize("change, fields", [
    (["--data", "OTHER"], ["data: ", "data_sources: {alpha: 15, beta: 15, gamma: 14} -> {delta: 15, eps: 15, zeta: 14}"]),
    (["--pool-factor", "3"], ["coreset.pool_factor: 2 -> 3"]),
    (["--max-length", "64"], ["max_length: 48 -> 64"]),
    (["--per-device-train-batch-size", "4"], ["per_device_train_batch_size: 2 -> 4"]),
    (["--model-size", "small"], ["model_size: tiny -> small"]),
    (["--seed", "7", "--pool-factor", "3"], ["seed: 42 -> 7", "coreset.pool_factor: 2 -> 3",
                                             "--allow-changed-settings seed,coreset.pool_factor"]),
])
def test_a_resume_with_other_settings_is_refused_naming_each_field(four_steps, good, other, tmp_path, capsys,
                                                                    change, fields):
    out = copy_of(four_steps, tmp_path)
    before = files_of(out)
    change = [str(other) if c == "OTHER" else c for c in change]
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "6",
                           "--resume-from-checkpoint", "true", *change)
    assert_usage_error(code, err, "--resume-from-checkpoint", "trained with other settings",
                       "--allow-changed-settings", *fields)
    assert files_of(out) == before  # nothing was written, no step trained


def test_an_allowed_change_is_recorded_with_its_step_in_the_report(four_steps, good, tmp_path, capsys):
    out = copy_of(four_steps, tmp_path)
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-length", "64",
                           "--max-steps", "6", "--resume-from-checkpoint", "true",
                           "--allow-changed-settings", "max_length")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["changed_settings"] == [{"step": 4, "field": "max_length", "old": 48, "new": 64}]
    assert report["identity"]["max_length"] == 64 and report["global_step"] == 6
    markdown = (out / "report.md").read_text()
    assert "Settings changed on resume" in markdown and "| 4 | max_length | 48 | 64 |" in markdown
    # the next resume compares against the new settings, and keeps the history
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-length", "64",
                           "--max-steps", "8", "--resume-from-checkpoint", "true")
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["changed_settings"][0]["step"] == 4


def test_an_allowed_model_size_change_that_cannot_load_is_one_line(four_steps, good, tmp_path, capsys):
    out = copy_of(four_steps, tmp_path)
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "6",
                           "--resume-from-checkpoint", "true", "--model-size", "small",
                           "--allow-changed-settings", "model_size")
    assert_usage_error(code, err, "--resume-from-checkpoint", "in the checkpoint but", "--model-size")
    assert len(err) < 600  # not torch's page of size mismatches


def test_an_unknown_allowed_setting_is_a_usage_error(four_steps, good, tmp_path, capsys):
    out = copy_of(four_steps, tmp_path)
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "6",
                           "--resume-from-checkpoint", "true", "--allow-changed-settings", "pool_factr")
    assert_usage_error(code, err, "--allow-changed-settings", "pool_factr", "coreset.pool_factor")


def test_identity_compares_every_coreset_config_field_generically():
    """A renamed or added CoresetConfig field is compared without a change to the identity code."""
    from colm.cli.identity import differences

    old = {"coreset.seed": 0, "max_length": 48}
    new = {"coreset.selection_seed": 0, "max_length": 48}
    assert differences(old, new) == [("coreset.selection_seed", "(not recorded)", 0),
                                     ("coreset.seed", 0, "(not recorded)")]


# ------------------------------------------------------------------ a failed run says so


def test_a_diverging_run_fails_and_keeps_the_last_good_checkpoint(good, tmp_path, capsys):
    out = tmp_path / "nan"
    with_bar = R[: R.index("--disable-tqdm")]  # the progress bar must not end up after the error
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *with_bar, "--max-steps", "6",
                           "--save-steps", "1", "--logging-steps", "3", "--learning-rate", "1e30")
    assert code == 1, err
    line = err.strip().splitlines()[-1]
    assert "failed: training diverged" in line and "nan" in line and "Traceback" not in err
    assert "internal error" not in err
    assert not (out / "report.json").exists() and not (out / "model.safetensors").exists()
    saved = sorted(p.name for p in out.glob("checkpoint-*"))
    assert saved and f"the last good checkpoint is {out / saved[-1]}" in line
    import torch
    from safetensors.torch import load_file
    weights = load_file(out / saved[-1] / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())  # no checkpoint of NaN weights


def test_the_finite_check_reads_only_what_it_is_given():
    import torch

    from colm.integrations.non_finite import NonFiniteTrainingError, check_finite

    check_finite(3, torch.tensor(12.5), torch.tensor(1.0))
    check_finite(3, torch.tensor(12.5), None)
    with pytest.raises(NonFiniteTrainingError, match="gradient norm is nan at step 3"):
        check_finite(3, torch.tensor(12.5), torch.tensor(float("nan")))
    with pytest.raises(NonFiniteTrainingError, match="training loss is inf at step 4"):
        check_finite(4, torch.tensor(float("inf")), 2.0)


def test_a_negative_seed_is_a_usage_error_and_writes_nothing(good, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--output-dir", tmp_path / "s", "--data", good, *R,
                           "--max-steps", "2", "--seed", "-1")
    assert_usage_error(code, err, "--seed", "-1", "2**32 - 1")
    assert not (tmp_path / "s").exists()


def test_a_run_that_fails_before_its_first_step_does_not_block_the_next(good, tmp_path, capsys, monkeypatch):
    from colm.cli import train as train_cli

    out = tmp_path / "run"
    real = train_cli.make_trainer

    def broken(*args, **kwargs):
        raise RuntimeError("the Trainer could not start")

    monkeypatch.setattr(train_cli, "make_trainer", broken)
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "2")
    assert code == 1 and "the Trainer could not start" in err
    assert not out.exists() or sorted(os.listdir(out)) == [".colm.lock"]  # no run marker left behind
    monkeypatch.setattr(train_cli, "make_trainer", real)
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "2")
    assert code == 0, err


def test_a_run_killed_before_its_first_step_does_not_block_the_next(four_steps, good, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("colm_run.json", "colm_identity.json"):  # what a run writes before step 1
        shutil.copy(four_steps / name, out / name)
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "2")
    assert code == 0, err


def test_a_kill_during_the_first_save_gets_one_instruction(four_steps, good, tmp_path, capsys):
    out = copy_of(four_steps, tmp_path)
    # as a kill while checkpoint-2 was written: no trainer_state.json, no later files
    shutil.rmtree(out / "checkpoint-4")
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    for name in ("report.json", "report.md", "model.safetensors"):
        (out / name).unlink()
    plain = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "4")
    resume = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "4",
                     "--resume-from-checkpoint", "true")
    for code, _, err in (plain, resume):
        assert_usage_error(code, err, "no complete checkpoint", "pass --overwrite-output-dir to start over")
        assert "pass --resume-from-checkpoint" not in err
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "4",
                           "--overwrite-output-dir")
    assert code == 0, err


def test_the_final_loss_after_a_resume_equals_the_uninterrupted_runs(four_steps, good, tmp_path, capsys,
                                                                     monkeypatch):
    """The interruption comes before the first logging step (logging every 10 steps)."""
    from trainer_helpers import KilledAt, add_to_cli_trainer

    from colm.cli import train as train_cli

    uninterrupted = json.loads((four_steps / "report.json").read_text())["train_loss"]
    out = tmp_path / "run"
    real = add_to_cli_trainer(monkeypatch, KilledAt(3))
    code, _, _ = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "4")
    assert code == 130 and (out / "checkpoint-2" / "trainer_state.json").is_file()
    monkeypatch.setattr(train_cli, "make_trainer", real)
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "4",
                           "--resume-from-checkpoint", "true")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from"].endswith("checkpoint-2")
    assert report["train_loss"] == pytest.approx(uninterrupted, rel=1e-6)


# ------------------------------------------------------------------ machine faults are named


@pytest.mark.parametrize("how", ["os_error", "safetensors_error"])
def test_a_full_disk_at_a_checkpoint_is_named_and_earlier_checkpoints_stay(good, tmp_path, capsys,
                                                                           monkeypatch, how):
    from safetensors import SafetensorError
    from transformers import modeling_utils

    real = modeling_utils.safe_save_file

    def full_at_step_4(tensors, filename, *args, **kwargs):
        if "checkpoint-4" in str(filename):
            Path(filename).write_bytes(b"\0" * 10)  # a partial file, as a full disk leaves
            if how == "os_error":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                  "message: \"No space left on device\" }) (os error 28)")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_at_step_4)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "6")
    assert code == 1, err
    line = err.strip().splitlines()[-1]
    assert f"failed: saving checkpoint-4, {out / 'checkpoint-4'}: no space left on device" in line, line
    assert "latest: checkpoint-2" in line and "internal error" not in err
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2


def test_a_full_disk_at_the_final_model_is_named(good, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError
    from transformers import modeling_utils

    real = modeling_utils.safe_save_file

    def full_outside_checkpoints(tensors, filename, *args, **kwargs):
        if "checkpoint-" not in str(filename):
            raise SafetensorError("Error while serializing: IoError(...) (os error 28)")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_outside_checkpoints)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "2")
    assert code == 1, err
    assert f"failed: saving the final model, {out}: no space left on device" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("target, what", [("report.json", "writing report.json"),
                                          ("metrics.jsonl", "appending to metrics.jsonl")])
def test_a_refused_write_of_the_report_or_metrics_is_named(good, tmp_path, capsys, monkeypatch, target, what):
    from colm import files

    real_replace, real_open = os.replace, open

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == target:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_replace(src, dst, *args, **kwargs)

    def opener(path, mode="r", *args, **kwargs):
        if Path(path).name == target and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(files.os, "replace", replace)
    monkeypatch.setattr(files, "open", opener, raising=False)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "2")
    assert code == 1, err
    line = err.strip().splitlines()[-1]
    reason = "read-only file system" if target == "report.json" else "no space left on device"
    assert f"failed: {what}, {out / target}: {reason}" in line, line


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_really_full_disk_is_named_not_called_a_bug(good, tmp_path, capsys):
    """A 20 MB tmpfs: the first checkpoint (~14 MB) fits, the second does not. torch.save then
    reports only `unexpected pos`; colm asks the file system for the reason."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "run"
        code, _, err = run_cli(capsys, "train", "--output-dir", out, "--data", good, *R, "--max-steps", "6",
                               "--save-total-limit", "5")
        assert code == 1, err
        line = err.strip().splitlines()[-1]
        assert f"failed: saving checkpoint-4, {out / 'checkpoint-4'}: no space left on device" in line, line
        assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    finally:
        # lazy: the in-process run may still hold a file there until it is garbage-collected
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ------------------------------------------------------------------ nothing read is trusted blindly


def test_a_yaml_alias_bomb_is_refused_at_once_in_one_short_line(tmp_path, capsys):
    levels = ['  - &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcde", "bcdef"):
        levels.append(f"  - &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    config = tmp_path / "bomb.yaml"
    config.write_text("sources:\n" + "\n".join(levels) + "\n")
    assert config.stat().st_size < 300  # 9**6 values once expanded
    code, _, err = run_cli(capsys, "train", "--config", config, "--output-dir", tmp_path / "o")
    assert_usage_error(code, err, f"{config}:", "aliases")
    assert len(err) < 400  # the old error line printed every expanded value (39 MB)


@pytest.mark.parametrize("text, needles", [
    ('max_steps: !!python/object/apply:os.system ["echo hi"]\n', [":1:", "python/object/apply", "not allowed"]),
    ("sources: !custom x\n", [":1:", "'!custom'"]),
    ("lora_target_modules: " + "[" * 20 + "]" * 20 + "\n", [":1:", "nested more than"]),
])
def test_yaml_with_unsafe_tags_or_deep_nesting_is_bad_input(tmp_path, capsys, text, needles):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code, _, err = run_cli(capsys, "train", "--config", config, "--output-dir", tmp_path / "o")
    assert_usage_error(code, err, str(config), *needles)


def test_an_oversized_yaml_file_is_refused(tmp_path, capsys):
    from colm.cli.yaml_config import MAX_BYTES

    config = tmp_path / "big.yaml"
    config.write_text("# padding\n" * (MAX_BYTES // 10 + 1))
    code, _, err = run_cli(capsys, "train", "--config", config, "--output-dir", tmp_path / "o")
    assert_usage_error(code, err, str(config), "at most")


def test_a_lone_surrogate_in_jsonl_is_a_file_line_error(good, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    lines = good.read_text().splitlines()
    lines.insert(2, '{"source": "alpha", "prompt": "x \\ud800 y", "response": "z"}')
    write_jsonl(data, lines)
    code, _, err = run_cli(capsys, "train", "--output-dir", tmp_path / "o", "--data", data, *R, "--max-steps", "2")
    assert_usage_error(code, err, f"{data}:3:", "'prompt'", "surrogate")
    assert not (tmp_path / "o").exists()


def test_a_surrogate_pair_is_text(tmp_path):
    from colm.data.loading import load_mixture

    data = write_jsonl(tmp_path / "emoji.jsonl", [json.dumps({"prompt": "\U0001F600 x", "response": "y"})])
    assert "\\ud83d" in data.read_text()  # json.dumps escapes it as a pair
    assert load_mixture(data)[0]["prompt"] == "\U0001F600 x"


@pytest.mark.parametrize("second", ["a.train.jsonl.gz", "a.train.json", "link"])
def test_one_source_stored_twice_is_an_error_naming_both(good, tmp_path, capsys, second):
    import gzip

    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(good, folder / "a.train.jsonl")
    if second == "link":  # one file under two names (another source name, the same content)
        (folder / "b.train.jsonl").symlink_to(folder / "a.train.jsonl")
        second = "b.train.jsonl"
    elif second.endswith(".gz"):
        (folder / second).write_bytes(gzip.compress(good.read_bytes()))
    else:
        shutil.copy(good, folder / second)
    code, _, err = run_cli(capsys, "train", "--output-dir", tmp_path / "o", "--data", folder, *R, "--max-steps", "2")
    assert_usage_error(code, err, str(folder / "a.train.jsonl"), str(folder / second), "twice")


# ------------------------------------------------------------------ model files that cannot be read


@pytest.fixture(scope="module")
def saved_run(four_steps) -> Path:
    return four_steps


@pytest.mark.parametrize("damage, needles", [
    ("truncated", ["model.safetensors", "truncated or damaged"]),
    ("garbage", ["model.safetensors", "truncated or damaged"]),
    ("other_config", ["config.json", "another model", "model.embed_tokens.weight is [4096, 128]"]),
    ("nan_weights", ["not finite", "diverged"]),
])
def test_evaluate_on_damaged_or_mismatched_model_files_is_one_line(saved_run, good, tmp_path, capsys,
                                                                    damage, needles):
    folder = tmp_path / "model"
    shutil.copytree(saved_run, folder, ignore=shutil.ignore_patterns("checkpoint-*"))
    weights = folder / "model.safetensors"
    if damage == "truncated":
        raw = weights.read_bytes()
        weights.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"garbage" * 10)
    elif damage == "other_config":
        config = json.loads((folder / "config.json").read_text())
        config["hidden_size"] *= 2
        (folder / "config.json").write_text(json.dumps(config))
    else:
        from safetensors.torch import load_file, save_file

        tensors = load_file(weights)
        name = next(iter(tensors))
        tensors[name] = tensors[name] * float("nan")
        save_file(tensors, weights, metadata={"format": "pt"})
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", folder, "--data", good, "--max-length", "48")
    assert_usage_error(code, err, f"--checkpoint {folder}", *needles)
