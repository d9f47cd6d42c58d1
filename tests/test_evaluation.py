"""Per-source validation loss equals Hugging Face's own loss, token-weighted within a source."""
from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trainer_helpers import PAD, tiny_llama

from colm.evaluation import per_source_loss


def test_per_source_loss_matches_hf_loss_token_weighted():
    model = tiny_llama()
    rows = [
        {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, 7, 8, 9, 10], "source": "a"},
        {"input_ids": [11, 12, 13, 14], "labels": [-100, 12, 13, 14], "source": "b"},
        {"input_ids": [15, 16, 17, 18, 19, 20, 21, 22], "labels": [-100] * 5 + [20, 21, 22], "source": "b"},
    ]
    got = per_source_loss(model, Dataset.from_list(rows), pad_token_id=PAD, batch_size=2)

    def hf(row):  # HF's mean over the row's supervised next tokens, and their count
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        return loss, int((labels[:, 1:] != -100).sum())

    (la, _), (l1, c1), (l2, c2) = map(hf, rows)
    assert got["per_source"]["a"] == pytest.approx(la, rel=1e-5)
    assert got["per_source"]["b"] == pytest.approx((l1 * c1 + l2 * c2) / (c1 + c2), rel=1e-5)
    assert got["n_examples"] == {"a": 1, "b": 2}
    assert got["worst"] == max(got["per_source"].values())


@pytest.mark.parametrize("chat", [False, True])
def test_generation_prompts_are_the_training_contexts(chat):
    # Generation starts from exactly the context training saw before the answer: the unmasked
    # prefix of every tokenized example (prompt template or chat template).
    from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
    from colm.data.templating import context_ids
    from colm.models.default import default_tokenizer

    tok = default_tokenizer()
    raw = load_mixture(default_mixture_dir(), split="validation", max_examples_per_source=2, seed=0)
    if chat:
        from colm.data.chat import as_chat

        tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
        raw = as_chat(raw)
    tokenized, stats = tokenize_mixture(raw, tok, max_length=4096)
    assert stats["n_dropped"] == 0
    contexts = context_ids(raw, tok)
    for ids, labels, ctx in zip(tokenized["input_ids"], tokenized["labels"], contexts):
        first_supervised = next(i for i, label in enumerate(labels) if label != -100)
        assert ids[:first_supervised] == ctx
