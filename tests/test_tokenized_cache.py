"""The tokenized-data cache: a repeat hits (no tokenization runs) and returns identical data;
any change to data, tokenizer, template or max_length misses; a killed or failed write never
leaves an entry that is read as valid."""
from __future__ import annotations

import os
import time
from pathlib import Path

import datasets
import pytest
from test_data import CHATS, ROWS, make_tokenizer
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizer, PreTrainedTokenizerFast

from colm.data import templating, tokenize_mixture, tokenized_cache
from colm.data.prepare import data_cache_dir

datasets.disable_progress_bars()
# Short enough that the fixture data has truncated and dropped rows.
ML = 12


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def data() -> datasets.Dataset:
    rows = [dict(r, source=name) for name, rs in ROWS.items() for r in rs]
    return datasets.Dataset.from_list(rows)


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Counts tokenizer passes; a cache hit makes none."""
    counted: list[int] = []
    real = templating.token_ids

    def counting(tokenizer, texts):
        counted.append(len(texts))
        return real(tokenizer, texts)

    monkeypatch.setattr(templating, "token_ids", counting)
    return counted


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("tok-*.arrow"))


def test_repeat_hits_and_returns_identical_data(tmp_path, tokenizer, data, calls):
    first, stats = tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=tmp_path)
    assert calls and len(entries(tmp_path)) == 1
    calls.clear()
    again, again_stats = tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=tmp_path)
    assert calls == []  # nothing was tokenized
    assert again_stats == stats and stats["n_truncated"] > 0 and stats["n_dropped"] > 0
    assert again.features == first.features
    assert again.to_dict() == first.to_dict()
    assert [Path(f["filename"]) for f in again.cache_files] == entries(tmp_path)  # memory-mapped


def test_same_content_from_another_object_hits(tmp_path, tokenizer, data, calls):
    tokenize_mixture(data, tokenizer, max_length=64, cache_dir=tmp_path)
    calls.clear()
    # a tokenizer rebuilt from its serialized form, data rebuilt row by row and chunked apart
    twin = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),
        pad_token="<pad>", eos_token="<eos>", bos_token="<s>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
        chat_template=tokenizer.chat_template,
    )
    twin.name_or_path = "somewhere/else"
    rebuilt = datasets.concatenate_datasets([data.select(range(3)), datasets.Dataset.from_list(data.to_list()[3:])])
    tokenize_mixture(rebuilt, twin, max_length=64, cache_dir=tmp_path)
    assert calls == [] and len(entries(tmp_path)) == 1


def retrained(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Same class, name, size and special tokens; one merge rule fewer."""
    import json

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["model"]["merges"] = spec["model"]["merges"][:-1]
    other = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), pad_token="<pad>", eos_token="<eos>",
        bos_token="<s>", additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
        chat_template=tokenizer.chat_template,
    )
    other.name_or_path = tokenizer.name_or_path
    assert len(other) == len(tokenizer)
    return other


CHANGES = {
    "max_length": lambda d, t: (d, t, dict(max_length=ML + 1)),
    "template": lambda d, t: (d, t, dict(template="Q: {prompt}\nA:\n")),
    "tokenizer": lambda d, t: (d, retrained(t), {}),
    "data": lambda d, t: (d.map(lambda r, i: {"response": r["response"] + ("!" if i == 4 else "")}, with_indices=True), t, {}),
    "source": lambda d, t: (d.map(lambda r, i: {"source": "gamma" if i == 0 else r["source"]}, with_indices=True), t, {}),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_any_change_misses(tmp_path, tokenizer, data, calls, change):
    tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=tmp_path)
    calls.clear()
    changed_data, changed_tok, kwargs = CHANGES[change](data, tokenizer)
    out, _ = tokenize_mixture(changed_data, changed_tok, **{"max_length": ML, **kwargs}, cache_dir=tmp_path)
    assert calls, "tokenized again"
    assert len(entries(tmp_path)) == 2
    fresh, _ = tokenize_mixture(changed_data, changed_tok, **{"max_length": ML, **kwargs})
    assert out.to_dict() == fresh.to_dict()


def chat_data() -> datasets.Dataset:
    return datasets.Dataset.from_list([{"messages": m, "source": "chat"} for m in CHATS])


def test_chat_template_change_misses(tmp_path, calls):
    tok = make_tokenizer()
    tokenize_mixture(chat_data(), tok, max_length=64, cache_dir=tmp_path)
    tok.chat_template = tok.chat_template.replace("'|>\n'", "'|>\n\n'")
    calls.clear()
    tokenize_mixture(chat_data(), tok, max_length=64, cache_dir=tmp_path)
    assert calls and len(entries(tmp_path)) == 2


def test_killed_writer_leaves_no_entry_and_its_temp_file_is_ignored(tmp_path, tokenizer, data, calls, monkeypatch):
    def killed(fd):
        raise KeyboardInterrupt  # as if the process were stopped between writing and renaming

    with monkeypatch.context() as patch:
        patch.setattr(tokenized_cache.os, "fsync", killed)
        with pytest.raises(KeyboardInterrupt):
            tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither an entry nor a temporary file
    # a SIGKILL leaves its temporary file behind: it is never read as an entry
    leftover = tmp_path / ".tok-0123.arrow.x.tmp"
    leftover.write_bytes(b"partial")
    calls.clear()
    tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=tmp_path)
    assert calls and len(entries(tmp_path)) == 1 and leftover.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "fewer_batches"])
def test_damaged_entry_is_rebuilt(tmp_path, tokenizer, data, calls, damage):
    first, stats = tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=tmp_path, batch_size=3)
    (entry,) = entries(tmp_path)
    raw = entry.read_bytes()
    if damage == "truncated":
        entry.write_bytes(raw[: len(raw) * 2 // 3])
    elif damage == "garbage":
        entry.write_bytes(b"not arrow at all")
    else:  # a whole stream holding only its first record batch: readable, but short
        import pyarrow as pa

        with pa.ipc.open_stream(raw) as reader:
            schema, batch = reader.schema, reader.read_next_batch()
        with pa.OSFile(str(entry), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            writer.write_batch(batch)
    calls.clear()
    again, again_stats = tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=tmp_path)
    assert calls, "a damaged entry is not a hit"
    assert again.to_dict() == first.to_dict() and again_stats == stats
    calls.clear()
    tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=tmp_path)
    assert calls == []  # the rebuilt entry replaced the damaged one


def test_unwritable_cache_warns_and_still_returns_the_data(tmp_path, tokenizer, data, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out, stats = tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=blocker / "cache")
    assert stats["n_examples"] == len(out) > 0
    (warning,) = [r.getMessage() for r in caplog.records if "not caching" in r.getMessage()]
    assert "not a directory" in warning and str(blocker) in warning  # the OS's reason, where


def _rewrite_entry(entry: Path, change) -> None:
    """Rewrite an entry's record batches through `change(batch)`, keeping its schema (and so its
    recorded key, row count and checksum): a well-formed file that holds something else."""
    import pyarrow as pa

    with pa.ipc.open_stream(entry.read_bytes()) as reader:
        schema, batches = reader.schema, [change(b) for b in reader]
    with pa.OSFile(str(entry), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _other_token_ids(batch):
    import pyarrow as pa
    import pyarrow.compute as pc

    i = batch.schema.get_field_index("input_ids")
    ids = batch.column(i)
    field = batch.schema.field(i)
    shifted = pa.ListArray.from_arrays(ids.offsets, pc.add(ids.flatten(), 1)).cast(field.type)
    return batch.set_column(i, field, shifted)


@pytest.mark.parametrize("tamper", ["other_token_ids", "another_key", "flipped_byte"])
def test_an_entry_that_does_not_match_its_checksum_or_key_is_discarded_and_rebuilt(
    tmp_path, tokenizer, data, calls, caplog, tamper
):
    first, stats = tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=tmp_path)
    (entry,) = entries(tmp_path)
    if tamper == "other_token_ids":  # well-formed, same rows and metadata, other ids
        _rewrite_entry(entry, _other_token_ids)
        why = "does not match its checksum"
    elif tamper == "another_key":  # a valid entry, stored under this data's name
        other = datasets.Dataset.from_dict({"prompt": ["x y"], "response": ["z"], "source": ["s"]})
        tokenize_mixture(other, tokenizer, max_length=ML, cache_dir=tmp_path)
        (foreign,) = [p for p in entries(tmp_path) if p != entry]
        os.replace(foreign, entry)
        why = "stored for another key"
    else:  # one byte of token data flipped in place: the file still parses
        raw = bytearray(entry.read_bytes())
        raw[len(raw) - 64] ^= 0xFF
        entry.write_bytes(bytes(raw))
        why = "does not match its checksum"
    calls.clear()
    caplog.clear()
    again, again_stats = tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=tmp_path)
    assert calls, "a tampered entry is not a hit"
    assert again.to_dict() == first.to_dict() and again_stats == stats
    warned = [r.getMessage() for r in caplog.records if "discarding the cached" in r.getMessage()]
    assert len(warned) == 1 and why in warned[0] and str(entry) in warned[0], warned
    calls.clear()
    caplog.clear()
    tokenize_mixture(data, tokenizer, max_length=ML, cache_dir=tmp_path)
    assert calls == [] and not caplog.records  # rebuilt once, then trusted


def test_least_recently_used_entries_are_evicted(tmp_path, tokenizer, data):
    for max_length in (20, 21, 22):
        tokenize_mixture(data, tokenizer, max_length=max_length, cache_dir=tmp_path)
    old, middle, new = sorted(entries(tmp_path), key=lambda p: p.stat().st_mtime)
    now = time.time()
    os.utime(old, (now - 30, now - 30))
    os.utime(middle, (now - 20, now - 20))
    tokenize_mixture(data, tokenizer, max_length=20, cache_dir=tmp_path)  # a hit: now the newest
    stale_temp = tmp_path / ".tok-dead.arrow.1.tmp"
    stale_temp.write_bytes(b"x")
    os.utime(stale_temp, (now - 2 * tokenized_cache.STALE_TEMP_S,) * 2)
    tokenized_cache.evict(tmp_path, max_entries=2)
    assert set(entries(tmp_path)) == {old, new}  # `middle` was least recently used
    assert not stale_temp.exists()


def test_cli_cache_folder_and_switch(monkeypatch, tmp_path):
    monkeypatch.setenv("COLM_CACHE", str(tmp_path))
    monkeypatch.delenv("COLM_DATA_CACHE", raising=False)
    assert data_cache_dir() == tmp_path / "tokenized"
    for off in ("0", "off", "false", "no"):
        monkeypatch.setenv("COLM_DATA_CACHE", off)
        assert data_cache_dir() is None


def test_second_prepare_of_a_command_hits_unless_switched_off(monkeypatch, tmp_path, tokenizer, calls):
    from test_data import write_jsonl

    from colm.data.arguments import DataArguments
    from colm.data.prepare import prepare_data as prepare

    for name, rows in ROWS.items():
        write_jsonl(tmp_path / f"{name}.train.jsonl", rows)
        write_jsonl(tmp_path / f"{name}.validation.jsonl", rows[:2])
    monkeypatch.setenv("COLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COLM_DATA_CACHE", raising=False)
    args = DataArguments(data=str(tmp_path), max_length=64)
    first = prepare(args, tokenizer, seed=0)
    assert len(entries(tmp_path / "cache" / "tokenized")) == 2  # train and validation
    calls.clear()
    second = prepare(args, tokenizer, seed=0)
    assert calls == []
    assert second.train.to_dict() == first.train.to_dict() and second.eval_stats == first.eval_stats
    monkeypatch.setenv("COLM_DATA_CACHE", "0")
    prepare(args, tokenizer, seed=0)
    assert calls  # tokenized afresh


class CharTokenizer(PreTrainedTokenizer):
    """A slow (pure Python) tokenizer: one id per character of its alphabet."""

    def __init__(self, alphabet: str = "", **kwargs):
        self.vocab = {c: i for i, c in enumerate(["<pad>", "<eos>", *dict.fromkeys(alphabet)])}
        self.inverse = {i: c for c, i in self.vocab.items()}
        super().__init__(pad_token="<pad>", eos_token="<eos>", **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab, **self.added_tokens_encoder)

    def _tokenize(self, text, **kwargs):
        return list(text)

    def _convert_token_to_id(self, token):
        return self.vocab.get(token, 0)

    def _convert_id_to_token(self, index):
        return self.inverse.get(index, "<pad>")


class UnsavableCharTokenizer(CharTokenizer):
    def save_vocabulary(self, save_directory, filename_prefix=None):
        raise NotImplementedError("no files to save")


def test_slow_tokenizer_is_keyed_by_its_saved_files(tmp_path, data, calls):
    from test_tokenize_equivalence import reference

    alphabet = "".join(sorted(set("".join(list(data["prompt"]) + list(data["response"])) + "QuestionAnswer:\n")))
    slow = CharTokenizer(alphabet)
    out, stats = tokenize_mixture(data, slow, max_length=40, cache_dir=tmp_path)
    rows, expected = reference(data, slow, 40)
    assert stats == expected and out.to_list() == rows
    calls.clear()
    tokenize_mixture(data, CharTokenizer(alphabet), max_length=40, cache_dir=tmp_path)  # same files
    assert calls == []
    tokenize_mixture(data, CharTokenizer(alphabet[::-1]), max_length=40, cache_dir=tmp_path)  # other ids
    assert calls and len(entries(tmp_path)) == 2


def test_tokenizer_that_cannot_be_saved_is_tokenized_but_not_cached(tmp_path, data):
    out, stats = tokenize_mixture(data, UnsavableCharTokenizer("abc"), max_length=40, cache_dir=tmp_path)
    assert stats["n_examples"] == len(out) > 0
    assert entries(tmp_path) == []
