"""colm.models.default: the embedded tokenizer (trained once, cached atomically) and tiny Llama."""
from __future__ import annotations

import time
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import colm.data.hub as hub
import colm.models.default as dm
from colm.data import default_mixture_dir, load_mixture, tokenize_mixture


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("colm-cache")


@pytest.fixture(scope="module")
def tokenizer(cache: Path) -> PreTrainedTokenizerFast:
    return dm.default_tokenizer(cache)  # trains once (~2 s) for the whole module


def cached_files(cache: Path) -> list[Path]:
    return sorted((cache / "tokenizers").iterdir())


def test_tokenizer_basics(tokenizer):
    assert len(tokenizer) == dm.DEFAULT_VOCAB_SIZE
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    text = "Question: What is 12 * 7?\nAnswer:\n12 * 7 = 84.\nThe answer is 84. é∑🙂"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: lossless, no <unk>
    assert len(ids) < len(text) / 2  # it learned merges for this kind of text
    assert len(tokenizer("<|user|>")["input_ids"]) == 1


def test_tokenizer_cache_is_reused(cache: Path, tokenizer, monkeypatch: pytest.MonkeyPatch):
    files = cached_files(cache)
    assert len(files) == 1 and files[0].suffix == ".json"
    monkeypatch.setattr(dm, "_train_bpe", lambda *a, **k: pytest.fail("retrained despite a cache"))
    start = time.perf_counter()
    again = dm.default_tokenizer(cache)
    assert time.perf_counter() - start < 1.0
    assert again.get_vocab() == tokenizer.get_vocab()
    assert cached_files(cache) == files  # no temp files left behind


def test_colm_cache_env_is_the_default(cache: Path, tokenizer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLM_CACHE", str(cache))
    assert dm.default_cache_dir() == cache
    monkeypatch.setattr(dm, "_train_bpe", lambda *a, **k: pytest.fail("ignored COLM_CACHE"))
    assert dm.default_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_interrupted_write_leaves_no_cache(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch):
    # Reuse the trained backend so the test does not train again.
    trained = Path(cached_files(cache)[0]).read_text()
    from tokenizers import Tokenizer

    monkeypatch.setattr(dm, "_train_bpe", lambda *a, **k: Tokenizer.from_str(trained))

    def crash(src, dst):
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(dm.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        dm.default_tokenizer(tmp_path)
    assert list((tmp_path / "tokenizers").iterdir()) == []  # neither a final nor a temp file
    monkeypatch.undo()


def test_corrupt_cache_is_replaced(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch):
    good = cached_files(cache)[0]
    target = tmp_path / "tokenizers" / good.name
    target.parent.mkdir()
    target.write_text('{"truncated": ')
    from tokenizers import Tokenizer

    monkeypatch.setattr(dm, "_train_bpe", lambda *a, **k: Tokenizer.from_str(good.read_text()))
    assert len(dm.default_tokenizer(tmp_path)) == dm.DEFAULT_VOCAB_SIZE
    assert target.read_text() == good.read_text()


def test_tokenizer_round_trips_through_save_pretrained(tmp_path: Path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.pad_token, loaded.eos_token) == ("<pad>", "<eos>")
    assert loaded.chat_template == tokenizer.chat_template


def test_chat_template_masks_the_final_answer(tokenizer):
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    ds = load_mixture(datasets.Dataset.from_list([{"messages": messages, "source": "chat"}]))
    out, _ = tokenize_mixture(ds, tokenizer, max_length=64)
    ex = out[0]
    answer = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != -100]
    assert tokenizer.decode(answer) == "4<eos>"


def test_shipped_mixture_tokenizes(tokenizer):
    ds = load_mixture(default_mixture_dir(), split="validation", max_examples_per_source=5)
    out, stats = tokenize_mixture(ds, tokenizer, max_length=256)
    assert stats["n_input"] == 14 * 5 and stats["n_examples"] >= 60 and len(stats["per_source"]) >= 13


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_tiny_model_size_and_forward(tokenizer):
    model = dm.default_model(tokenizer, "tiny")
    assert n_params(model) <= 1_200_000
    assert model.config.vocab_size == len(tokenizer)
    batch = tokenizer(["Question: 1+1?\nAnswer:\n2", "x"], return_tensors="pt", padding=True)
    out = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    assert out.logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(out.loss) and 6 < out.loss.item() < 11  # ~ln(4096) = 8.3 at init


def test_model_sizes_grow():
    class FakeTok:  # a vocabulary size is all the model needs
        pad_token_id, eos_token_id, bos_token_id = 0, 1, None

        def __len__(self):
            return dm.DEFAULT_VOCAB_SIZE

    counts = {size: n_params(dm.default_model(FakeTok(), size)) for size in ("tiny", "small", "base")}
    assert 0.9e6 < counts["tiny"] < 1.2e6 and 3e6 < counts["small"] < 5e6 and 9e6 < counts["base"] < 12e6
    with pytest.raises(ValueError, match="size must be one of"):
        dm.default_model(FakeTok(), "huge")


def test_model_init_is_seeded_and_leaves_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = dm.default_model(tokenizer, seed=7)
    assert torch.equal(torch.rand(1), expected)
    b = dm.default_model(tokenizer, seed=7)
    c = dm.default_model(tokenizer, seed=8)
    assert torch.equal(a.model.layers[0].self_attn.v_proj.weight, b.model.layers[0].self_attn.v_proj.weight)
    assert not torch.equal(a.model.layers[0].self_attn.v_proj.weight, c.model.layers[0].self_attn.v_proj.weight)


def test_load_default_and_local_folder(tmp_path: Path, cache: Path, tokenizer):
    model, tok = dm.load_model_and_tokenizer(None, colm_cache_dir=cache)
    assert n_params(model) <= 1_200_000 and tok.get_vocab() == tokenizer.get_vocab()
    # A saved model whose tokenizer has no pad token gets pad = eos.
    tok.pad_token = None
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = dm.load_model_and_tokenizer(tmp_path)
    assert loaded_tok.pad_token == loaded_tok.eos_token == "<eos>"
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_missing_model_offline_fails_fast():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="nobody-colm/no-such-model.*offline"):
        dm.load_model_and_tokenizer("nobody-colm/no-such-model")
    assert time.perf_counter() - start < 3


def test_unreachable_hub_counts_as_offline(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(hub, "env_offline", lambda: False)
    monkeypatch.setattr(hub, "_reachable_cache", {})
    start = time.perf_counter()
    assert hub.hub_reachable("http://127.0.0.1:9", timeout=1.0) is False  # closed port
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(ValueError, match="nobody-colm/no-such-model.*no network"):
        dm.load_model_and_tokenizer("nobody-colm/no-such-model")
    assert time.perf_counter() - start < 3


def test_missing_local_folder(tmp_path: Path):
    with pytest.raises(ValueError, match="no such local folder"):
        dm.load_model_and_tokenizer(str(tmp_path / "nope" / "model"))
