"""colm.data: the shipped mixture, loading, errors that say where, exact label masking."""
from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import datasets
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from colm.data import (
    DEFAULT_TEMPLATE,
    DataError,
    MixtureCollator,
    default_mixture_dir,
    load_mixture,
    source_of,
    source_sizes,
    split_files,
    split_of,
    tokenize_mixture,
)

datasets.disable_progress_bars()

ROWS = {
    "alpha": [{"prompt": f"What is {i} plus {i}?", "response": f"{i} + {i} = {2 * i}. The answer is {2 * i}."} for i in range(5)],
    "beta": [{"prompt": f"Name the number {i}.", "response": f"It is {i}."} for i in range(3)],
}
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def write_jsonl(path: Path, records: list, *, raw_lines: list[str] | None = None) -> Path:
    lines = raw_lines if raw_lines is not None else [json.dumps(r) for r in records]
    text = "".join(line + "\n" for line in lines)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def mixture_dir(tmp_path: Path) -> Path:
    """alpha/beta train files (gz and plain, no `source` field) plus a validation file."""
    write_jsonl(tmp_path / "alpha.train.jsonl.gz", ROWS["alpha"])
    write_jsonl(tmp_path / "beta.train.jsonl", ROWS["beta"])
    write_jsonl(tmp_path / "alpha.validation.jsonl", ROWS["alpha"][:1])
    return tmp_path


def make_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained in-process; `bos` adds a BOS like Llama's."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    texts = [DEFAULT_TEMPLATE.format(prompt=r["prompt"]) + r["response"] for rows in ROWS.values() for r in rows]
    backend.train_from_iterator(texts * 20, trainer=trainer)
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<s>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
        chat_template=CHAT_TEMPLATE,
    )


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


# ---------------------------------------------------------------- shipped mixture


def test_shipped_mixture_is_in_the_package_with_its_licenses():
    root = default_mixture_dir()
    assert root.is_dir() and "colm" in root.parts
    readme = (root / "README.md").read_text()
    assert "license" in readme and "ODC-By" in readme and "attribution" in readme
    train, val = split_files("train"), split_files("validation")
    assert len(train) == len(val) == 14
    assert {source_of(p) for p in train} == {source_of(p) for p in val}


def test_shipped_validation_split_loads_with_readme_sizes():
    sizes = source_sizes(load_mixture(default_mixture_dir(), split="validation"))
    assert len(sizes) == 14
    assert sizes["gsm8k"] == 200 and sizes["numglue_1"] == 10 and sizes["aqua"] == 25


def test_file_name_parts():
    assert (source_of("gsm8k.train.jsonl.gz"), split_of("gsm8k.train.jsonl.gz")) == ("gsm8k", "train")
    assert (source_of("numglue_1.validation.jsonl"), split_of("numglue_1.validation.jsonl")) == ("numglue_1", "validation")
    assert (source_of("mydata.jsonl"), split_of("mydata.jsonl")) == ("mydata", None)
    assert (source_of("v1.2.jsonl"), split_of("v1.2.jsonl")) == ("v1.2", None)


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("name", ["alpha.train.jsonl.gz", "beta.train.jsonl"])
def test_single_file_plain_and_gzip_source_from_stem(mixture_dir: Path, name: str):
    ds = load_mixture(mixture_dir / name)
    stem = name.split(".")[0]
    assert ds.column_names == ["prompt", "response", "source"]
    assert list(ds["source"]) == [stem] * len(ROWS[stem])
    assert ds[0]["prompt"] == ROWS[stem][0]["prompt"] and ds[0]["response"] == ROWS[stem][0]["response"]


def test_folder_filtered_by_split(mixture_dir: Path):
    assert source_sizes(load_mixture(mixture_dir, split="train")) == {"alpha": 5, "beta": 3}
    assert source_sizes(load_mixture(mixture_dir, split="validation")) == {"alpha": 1}


def test_folder_of_several_splits_needs_a_split(mixture_dir: Path):
    with pytest.raises(DataError, match="split="):
        load_mixture(mixture_dir)


def test_folder_without_split_names_loads_every_file(tmp_path: Path):
    write_jsonl(tmp_path / "a.jsonl", ROWS["alpha"])
    write_jsonl(tmp_path / "b.jsonl.gz", ROWS["beta"])
    assert source_sizes(load_mixture(tmp_path)) == {"a": 5, "b": 3}


def test_source_field_wins_over_file_stem(tmp_path: Path):
    rows = [dict(r, source="gsm8k") for r in ROWS["alpha"][:2]] + ROWS["alpha"][2:]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert list(load_mixture(path)["source"]) == ["gsm8k", "gsm8k", "mixed", "mixed", "mixed"]


def test_custom_field_names(tmp_path: Path):
    rows = [{"q": r["prompt"], "a": r["response"], "origin": "x"} for r in ROWS["beta"]]
    ds = load_mixture(write_jsonl(tmp_path / "d.jsonl", rows), prompt_field="q", response_field="a", source_field="origin")
    assert ds.column_names == ["prompt", "response", "source"]
    assert ds[1] == {"prompt": ROWS["beta"][1]["prompt"], "response": ROWS["beta"][1]["response"], "source": "x"}


def test_filter_by_sources(mixture_dir: Path):
    ds = load_mixture(mixture_dir, split="train", sources=["beta"])
    assert source_sizes(ds) == {"beta": 3}


@pytest.mark.parametrize("spec", ["alpha,beta", ["alpha, beta"], ["alpha", "beta"]])
def test_sources_accept_comma_separated_names(mixture_dir: Path, spec):
    ds = load_mixture(mixture_dir, split="train", sources=spec)
    assert set(source_sizes(ds)) == {"alpha", "beta"}


def test_unknown_source_names_the_known_ones(mixture_dir: Path):
    with pytest.raises(DataError, match=r"gamma.*known sources are \['alpha', 'beta'\]"):
        load_mixture(mixture_dir, split="train", sources=["beta", "gamma"])


def test_max_examples_per_source_is_seeded(mixture_dir: Path):
    a = load_mixture(mixture_dir, split="train", max_examples_per_source=2, seed=1)
    b = load_mixture(mixture_dir, split="train", max_examples_per_source=2, seed=1)
    assert source_sizes(a) == {"alpha": 2, "beta": 2}
    assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize("as_dict", [False, True])
def test_saved_datasets_dataset(tmp_path: Path, as_dict: bool):
    rows = ROWS["alpha"] + [dict(r, source="b") for r in ROWS["beta"]]
    ds = datasets.Dataset.from_list([{"prompt": r["prompt"], "response": r["response"], "source": r.get("source", "a")} for r in rows])
    saved = datasets.DatasetDict({"train": ds, "test": ds.select([0])}) if as_dict else ds
    saved.save_to_disk(str(tmp_path / "saved"))
    loaded = load_mixture(tmp_path / "saved", split="train" if as_dict else None)
    assert source_sizes(loaded) == {"a": 5, "b": 3}
    assert load_mixture(ds).to_dict() == loaded.to_dict()  # in-memory Dataset too


def test_saved_dataset_without_source_column_uses_folder_name(tmp_path: Path):
    datasets.Dataset.from_list(ROWS["beta"]).save_to_disk(str(tmp_path / "beta_set"))
    assert source_sizes(load_mixture(tmp_path / "beta_set")) == {"beta_set": 3}


def test_uncached_hub_id_fails_fast_offline(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DataError, match="nobody-colm/no-such-dataset.*offline"):
        load_mixture("nobody-colm/no-such-dataset")
    assert time.perf_counter() - start < 3


def test_missing_local_path(tmp_path: Path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_mixture(str(tmp_path / "nope.jsonl"))


# ---------------------------------------------------------------- errors say where


def bad_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    """Write one bad input; return its path and the regex the error must match."""
    good = json.dumps(ROWS["alpha"][0])
    path = tmp_path / "bad.train.jsonl"
    if case == "malformed_json":
        write_jsonl(path, [], raw_lines=[good, '{"prompt": "x", "response": '])
        return path, rf"{path}:2: malformed JSON"
    if case == "not_an_object":
        write_jsonl(path, [], raw_lines=[good, "", '["a list"]'])  # blank line 2 still counts
        return path, rf"{path}:3: expected a JSON object per line, got list"
    if case == "missing_response":
        write_jsonl(path, [ROWS["alpha"][0], {"prompt": "x", "answer": "y"}])
        return path, rf"{path}:2: missing field 'response'; the object has fields \['answer', 'prompt'\]"
    if case == "missing_prompt":
        write_jsonl(path, [{"question": "x", "answer": "y"}])
        return path, rf"{path}:1: missing field 'prompt' \(or 'messages' for chat data\); the object has fields \['answer', 'question'\]"
    if case == "wrong_type":
        write_jsonl(path, [{"prompt": "x", "response": 3}])
        return path, rf"{path}:1: field 'response' must be a string, got int"
    if case == "empty_file":
        write_jsonl(path, [], raw_lines=["", "  "])
        return path, rf"{path}: empty file"
    if case == "empty_gzip":
        path = write_jsonl(tmp_path / "bad.train.jsonl.gz", [])
        return path, rf"{path}: empty file"
    if case == "corrupt_gzip":
        path = tmp_path / "bad.train.jsonl.gz"
        path.write_bytes(b"this is not gzip")
        return path, rf"{path}: unreadable"
    if case == "bad_messages":
        write_jsonl(path, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}])
        return path, rf"{path}:1: messages\[1\] must be an object with string 'role' and 'content'"
    if case == "chat_ends_with_user":
        write_jsonl(path, [{"messages": [{"role": "user", "content": "hi"}]}])
        return path, rf"{path}:1: the last message of 'messages' must have role 'assistant'"
    if case == "empty_folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no data here")
        return tmp_path / "empty", rf"{tmp_path / 'empty'}: no data files found"
    if case == "no_files_of_split":
        write_jsonl(tmp_path / "a.train.jsonl", ROWS["alpha"])
        return tmp_path, r"no files for split 'test'.*splits present: \['train'\]"
    raise AssertionError(case)


BAD_CASES = [
    "malformed_json", "not_an_object", "missing_response", "missing_prompt", "wrong_type", "empty_file",
    "empty_gzip", "corrupt_gzip", "bad_messages", "chat_ends_with_user", "empty_folder", "no_files_of_split",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_data_error_saying_where(tmp_path: Path, case: str):
    path, pattern = bad_case(tmp_path, case)
    with pytest.raises(DataError, match=pattern):
        load_mixture(path, split="test" if case == "no_files_of_split" else None)
    assert issubclass(DataError, ValueError)


def test_bad_column_of_saved_dataset_names_the_columns():
    ds = datasets.Dataset.from_list([{"question": "x", "answer": "y"}])
    with pytest.raises(DataError, match=r"missing column 'prompt'.*columns are \['question', 'answer'\]"):
        load_mixture(ds)


# ---------------------------------------------------------------- tokenization


def supervised(example: dict) -> list[int]:
    return [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]


def context(example: dict) -> list[int]:
    return [t for t, label in zip(example["input_ids"], example["labels"]) if label == -100]


@pytest.mark.parametrize("bos", [False, True])
def test_prompt_is_masked_exactly(mixture_dir: Path, bos: bool):
    tok = make_tokenizer(bos=bos)
    ds = load_mixture(mixture_dir, split="train")
    out, stats = tokenize_mixture(ds, tok, max_length=512)
    assert out.column_names == ["input_ids", "attention_mask", "labels", "source"]
    assert stats["n_examples"] == stats["n_input"] == 8 and stats["n_truncated"] == stats["n_dropped"] == 0
    assert stats["per_source"] == {"alpha": 5, "beta": 3}
    for ex, row in zip(out, ds):
        assert tok.decode(supervised(ex)) == row["response"] + "<eos>"
        expected_context = ("<s>" if bos else "") + DEFAULT_TEMPLATE.format(prompt=row["prompt"])
        assert tok.decode(context(ex)) == expected_context
        assert ex["labels"][-1] == tok.eos_token_id and ex["attention_mask"] == [1] * len(ex["input_ids"])
        # context ids are exactly what generation would see for the prompt alone
        n_ctx = len(context(ex))
        assert ex["input_ids"][:n_ctx] == tok(expected_context.removeprefix("<s>"))["input_ids"]


def test_custom_template(mixture_dir: Path, tokenizer):
    ds = load_mixture(mixture_dir, split="train", sources=["beta"])
    out, _ = tokenize_mixture(ds, tokenizer, max_length=512, template="Q: {prompt} {x}\nA:")
    assert tokenizer.decode(context(out[0])) == "Q: " + ds[0]["prompt"] + " {x}\nA:"
    with pytest.raises(DataError, match="template must contain"):
        tokenize_mixture(ds, tokenizer, max_length=64, template="no placeholder")


def test_truncation_counts_and_drops_unsupervised(tmp_path: Path, tokenizer):
    rows = [
        {"prompt": "short", "response": "fine"},
        {"prompt": "short", "response": "a long answer " * 20},  # truncated, keeps some answer
        {"prompt": "a very long question " * 20, "response": "lost"},  # answer cut off: dropped
    ]
    ds = load_mixture(write_jsonl(tmp_path / "t.jsonl", rows))
    out, stats = tokenize_mixture(ds, tokenizer, max_length=24)
    assert (stats["n_input"], stats["n_examples"], stats["n_truncated"], stats["n_dropped"]) == (3, 2, 2, 1)
    assert stats["per_source"] == {"t": 2}
    assert all(len(ids) <= 24 for ids in out["input_ids"])
    kept = out[1]
    assert len(kept["input_ids"]) == 24 and kept["labels"][-1] != tokenizer.eos_token_id
    assert tokenizer.decode(context(kept)) == DEFAULT_TEMPLATE.format(prompt="short")  # start kept
    assert stats["n_tokens"] == sum(len(x) for x in out["input_ids"])


CHATS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name 3."},
        {"role": "assistant", "content": "3."},
        {"role": "user", "content": "And 5 plus 5?"},
        {"role": "assistant", "content": "5 + 5 = 10."},
    ],
]


def test_chat_messages_mask_all_but_the_final_answer(tmp_path: Path, tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl.gz", [{"messages": m} for m in CHATS])
    ds = load_mixture(path)
    assert ds.column_names == ["messages", "source"]
    out, stats = tokenize_mixture(ds, tokenizer, max_length=256)
    assert stats["n_examples"] == 2
    for ex, messages in zip(out, CHATS):
        assert tokenizer.decode(supervised(ex)) == messages[-1]["content"] + "<eos>"
        prefix = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(context(ex)) == prefix
        # for this tokenizer the role markers are atomic, so split == joint tokenization
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        assert ex["input_ids"] == tokenizer(full, add_special_tokens=False)["input_ids"]


def test_chat_template_that_is_not_prefix_stable_is_refused(tmp_path: Path):
    tok = make_tokenizer()
    tok.chat_template = "{% if add_generation_prompt %}GEN{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    ds = load_mixture(write_jsonl(tmp_path / "c.jsonl", [{"messages": CHATS[0]}]))
    with pytest.raises(DataError, match="chat example 0 .*prefix"):
        tokenize_mixture(ds, tok, max_length=64)


def test_collator_pads_and_keeps_source(mixture_dir: Path, tokenizer):
    out, _ = tokenize_mixture(load_mixture(mixture_dir, split="train"), tokenizer, max_length=512)
    features = [out[0], out[6]]
    batch = MixtureCollator(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=8)(features)
    n0, n1 = len(features[0]["input_ids"]), len(features[1]["input_ids"])
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(n0, n1)
    assert batch["source"] == ["alpha", "beta"]
    assert batch["attention_mask"].sum(1).tolist() == [n0, n1]
    assert (batch["labels"][1, n1:] == -100).all() and (batch["input_ids"][1, n1:] == tokenizer.pad_token_id).all()
    assert torch.equal(batch["labels"][0, :n0], torch.tensor(features[0]["labels"]))
