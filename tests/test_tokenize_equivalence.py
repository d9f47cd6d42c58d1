"""tokenize_mixture (batched, backend-direct, numpy assembly) gives exactly what the simple
per-example algorithm gives: same ids, labels, masks, sources, dropped rows and stats.

The reference below is the original per-example encoder: one `tokenizer(text)` call per text,
concatenation and truncation in Python lists. It runs on a sample of the shipped mixture with
a BPE tokenizer trained on that sample, for the template and chat paths, with truncation, a BOS
prefix, special-token strings inside the text, and the general (non-backend) path.
"""
from __future__ import annotations

from collections import Counter

import datasets
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from colm.data import DEFAULT_TEMPLATE, default_mixture_dir, load_mixture, tokenize_mixture
from colm.data.token_ids import rust_backend

datasets.disable_progress_bars()

SPECIALS = ["<pad>", "<eos>", "<s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
# Rows that reach the corners: an empty response, special-token text inside prompt and
# response, a prompt long enough to lose its answer at small max_length, non-ASCII text.
EDGE_ROWS = [
    {"prompt": "Say nothing.", "response": "", "source": "edge"},
    {"prompt": "What does <|user|> mean?", "response": "It marks a turn.<eos> Done.", "source": "edge"},
    {"prompt": "Add these: " + " + ".join(map(str, range(200))), "response": "19900", "source": "edge"},
    {"prompt": "Ünïcödé → λ?", "response": "λ = 2π · r ✓", "source": "edge"},
]


@pytest.fixture(scope="module")
def sample() -> datasets.Dataset:
    shipped = load_mixture(default_mixture_dir(), split="train", max_examples_per_source=12, seed=3)
    rows = shipped.to_list() + EDGE_ROWS
    return datasets.Dataset.from_list(rows)


def train_tokenizer(texts: list[str], bos: bool) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<s>",
        additional_special_tokens=SPECIALS[3:], chat_template=CHAT_TEMPLATE,
    )


@pytest.fixture(scope="module", params=[False, True], ids=["no_bos", "bos"])
def tokenizer(request, sample) -> PreTrainedTokenizerFast:
    texts = [DEFAULT_TEMPLATE.format(prompt=p) + r for p, r in zip(sample["prompt"], sample["response"])]
    return train_tokenizer(texts, bos=request.param)


class OverridingTokenizer(PreTrainedTokenizerFast):
    """A subclass that changes how it encodes: it must take the general path, not the backend."""

    def _encode_plus(self, *args, **kwargs):
        return super()._encode_plus(*args, **kwargs)


# ---------------------------------------------------------------- the reference


def reference(dataset: datasets.Dataset, tok, max_length: int, template: str = DEFAULT_TEMPLATE):
    """The original algorithm, one example at a time."""
    probe = "colm probe"
    plain = tok(probe, add_special_tokens=False)["input_ids"]
    full = tok(probe, add_special_tokens=True)["input_ids"]
    prefix = next(
        (full[:s] for s in range(len(full) - len(plain) + 1) if full[s : s + len(plain)] == plain), []
    )
    rows, counts = [], Counter(n_input=0, n_truncated=0, n_dropped=0, n_tokens=0, n_supervised_tokens=0)
    for row in dataset.to_list():
        if "messages" in row:
            messages = row["messages"]
            context = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
            completion = tok.apply_chat_template(messages, tokenize=False)[len(context):]
            ctx = tok(context, add_special_tokens=False)["input_ids"]
            tgt = tok(completion, add_special_tokens=False)["input_ids"]
        else:
            text = template.replace("{prompt}", row["prompt"])
            ctx = prefix + tok(text, add_special_tokens=False)["input_ids"]
            tgt = tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (ctx + tgt)[:max_length]
        labels = ([-100] * len(ctx) + tgt)[:max_length]
        n_supervised = max(0, len(ids) - len(ctx))
        counts["n_input"] += 1
        counts["n_truncated"] += len(ctx) + len(tgt) > max_length
        if n_supervised == 0:
            counts["n_dropped"] += 1
            continue
        counts["n_tokens"] += len(ids)
        counts["n_supervised_tokens"] += n_supervised
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "source": row["source"]})
    stats = {
        "n_input": counts["n_input"], "n_examples": len(rows), "n_truncated": counts["n_truncated"],
        "n_dropped": counts["n_dropped"], "n_tokens": counts["n_tokens"],
        "n_supervised_tokens": counts["n_supervised_tokens"],
        "per_source": dict(sorted(Counter(r["source"] for r in rows).items())), "max_length": max_length,
    }
    return rows, stats


def assert_same(dataset, tok, max_length, **kwargs):
    out, stats = tokenize_mixture(dataset, tok, max_length=max_length, **kwargs)
    rows, expected = reference(dataset, tok, max_length, kwargs.get("template", DEFAULT_TEMPLATE))
    assert stats == expected
    assert out.to_list() == rows
    assert out.features == datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        "attention_mask": datasets.List(datasets.Value("int8")),
        "labels": datasets.List(datasets.Value("int32")),
        "source": datasets.Value("string"),
    })
    return stats


# ---------------------------------------------------------------- prompt / response


@pytest.mark.parametrize("max_length", [40, 96, 4096])
def test_template_path_matches_reference(sample, tokenizer, max_length):
    assert rust_backend(tokenizer) is not None  # the fast path is what is being compared
    stats = assert_same(sample, tokenizer, max_length)
    if max_length == 40:  # the sample does reach truncation and dropping
        assert stats["n_truncated"] > 0 and stats["n_dropped"] > 0
    else:
        assert stats["n_examples"] > 0


def test_custom_template_small_batches_and_a_shuffled_selection(sample, tokenizer):
    subset = sample.shuffle(seed=1).select(range(60))  # an indices mapping, rows out of file order
    assert_same(subset, tokenizer, 64, template="### Q {x}\n{prompt}\n### A\n", batch_size=7)


def test_general_path_of_an_overriding_tokenizer_matches_reference(sample, tokenizer):
    tok = OverridingTokenizer(
        tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<s>",
        additional_special_tokens=SPECIALS[3:], chat_template=CHAT_TEMPLATE,
    )
    assert rust_backend(tok) is None
    assert_same(sample, tok, 64)


# The chat path goes first in the two tests below: the template path's probe for a special
# prefix calls `tokenizer(...)`, which would apply these settings before the backend is used.


def test_truncation_set_on_the_backend_is_ignored_like_tokenizer_call_does(sample, tokenizer):
    tokenizer.backend_tokenizer.enable_truncation(5)
    try:
        assert_same(conversations(sample.select(range(40))), tokenizer, 512)
        tokenizer.backend_tokenizer.enable_truncation(5)
        assert_same(sample.select(range(40)), tokenizer, 512)
    finally:
        tokenizer.backend_tokenizer.no_truncation()


def test_split_special_tokens_is_honoured(sample, tokenizer):
    tokenizer.split_special_tokens = True
    try:
        edge = sample.filter(lambda row: row["source"] == "edge")
        assert_same(conversations(edge), tokenizer, 512)
        assert_same(edge, tokenizer, 512)
        out, _ = tokenize_mixture(edge.select([1]), tokenizer, max_length=512)
        # "<|user|>" in the prompt was split into ordinary tokens, not encoded as the marker
        assert tokenizer.convert_tokens_to_ids("<|user|>") not in out[0]["input_ids"]
    finally:
        tokenizer.split_special_tokens = False


def test_empty_dataset(tokenizer):
    empty = datasets.Dataset.from_dict({"prompt": [], "response": [], "source": []})
    stats = assert_same(empty, tokenizer, 32)
    assert stats["n_input"] == stats["n_examples"] == 0 and stats["per_source"] == {}


# ---------------------------------------------------------------- chat


def conversations(sample: datasets.Dataset) -> datasets.Dataset:
    rows = []
    for i, row in enumerate(sample.to_list()):
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        if i % 3 == 1:  # a system turn and an earlier exchange: all context
            messages = [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is 1 + 1?"},
                {"role": "assistant", "content": "2"},
                *messages,
            ]
        rows.append({"messages": messages, "source": row["source"]})
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("max_length", [48, 4096])
def test_chat_path_matches_reference(sample, tokenizer, max_length):
    stats = assert_same(conversations(sample), tokenizer, max_length, batch_size=50)
    assert stats["n_examples"] > 0
