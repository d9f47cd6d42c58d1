"""TRL's dataset formats load without flags: prompt/completion rows (the CLI trains on them),
conversational prompt/completion and messages rows; a missing field's error names the fields found
and the flag that maps them."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from colm.cli import main
from colm.data import load_mixture
from colm.data.errors import DataError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def completion_rows(n: int = 6) -> list[dict]:
    return [{"source": src, "prompt": f"{i} + {i}?", "completion": f"The answer is {2 * i}."}
            for src in ("left", "right") for i in range(n)]


def test_prompt_completion_rows_read_as_prompt_response(tmp_path):
    data = load_mixture(write_jsonl(tmp_path / "trl.jsonl", completion_rows(2)))
    assert data.column_names == ["prompt", "response", "source"]
    assert data[0]["response"] == "The answer is 0." and data[0]["prompt"] == "0 + 0?"


def test_an_explicit_response_field_still_wins(tmp_path):
    rows = [{"prompt": "p", "completion": "not this", "answer": "this"}]
    data = load_mixture(write_jsonl(tmp_path / "x.jsonl", rows), response_field="answer")
    assert data[0]["response"] == "this"


def test_conversational_prompt_completion_becomes_one_conversation(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
             "completion": [{"role": "assistant", "content": "4"}]}]
    for spec in (write_jsonl(tmp_path / "chat.jsonl", rows), datasets.Dataset.from_list(rows)):
        data = load_mixture(spec)
        assert data.column_names == ["messages", "source"]
        assert [m["role"] for m in data[0]["messages"]] == ["system", "user", "assistant"]
        assert data[0]["messages"][-1]["content"] == "4"


def test_messages_rows_and_datasets_prompt_completion(tmp_path):
    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    assert load_mixture(write_jsonl(tmp_path / "m.jsonl", chat)).column_names == ["messages", "source"]
    data = load_mixture(datasets.Dataset.from_list(completion_rows(1)))
    assert data["response"] == ["The answer is 0.", "The answer is 0."]


def test_missing_response_names_fields_found_and_the_flag(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "p", "answer": "a"}])
    with pytest.raises(DataError) as err:
        load_mixture(path)
    message = str(err.value)
    assert f"{path}:1: missing field 'response'" in message
    assert "['answer', 'prompt']" in message and "--response-field" in message
    with pytest.raises(DataError, match=r"columns are \['question', 'answer'\].*--prompt-field"):
        load_mixture(datasets.Dataset.from_list([{"question": "q", "answer": "a"}]))


def test_colm_train_on_prompt_completion_rows_without_flags(tmp_path, monkeypatch, cache_dir, capsys):
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLM_CACHE", str(cache_dir))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "run"
        code = main(["train", "--data", str(write_jsonl(tmp_path / "trl.jsonl", completion_rows())),
                     "--output-dir", str(out), "--max-steps", "2", "--per-device-train-batch-size", "2",
                     "--save-strategy", "no"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["train"]["per_source"] == {"left": 6, "right": 6}
