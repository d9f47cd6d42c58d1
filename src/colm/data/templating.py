"""Turn a loaded mixture into token ids with the prompt masked out of the loss.

Prompt/response examples: the prompt is rendered with a template (default
`DEFAULT_TEMPLATE`, "Question: {prompt}\\nAnswer:\\n"), then the response and the tokenizer's
EOS follow. The default ends in a newline rather than "Answer: " because byte-level BPE
tokenizers (GPT-2, Llama-3, Qwen, colm's own) would end the prompt on a lone-space token that
text rarely contains; a newline is a natural token boundary in every tokenizer.

Chat examples (`messages`) are rendered with the tokenizer's chat template; every message but
the final assistant one is context.

The context and the supervised part are tokenized SEPARATELY and concatenated. That makes the
mask boundary exact (no token straddles it) and matches inference, where the model sees the
tokenized context alone and generates from there.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import datasets
import numpy as np

from colm.data.errors import DataError
from colm.data.loading import MESSAGES, PROMPT, RESPONSE, SOURCE

#: The default prompt template; "{prompt}" is replaced by the example's prompt.
DEFAULT_TEMPLATE = "Question: {prompt}\nAnswer:\n"
#: Label of positions that do not count in the loss (Hugging Face convention).
IGNORE_INDEX = -100
_OUT = ("input_ids", "attention_mask", "labels", SOURCE)
# Per-example bookkeeping the map writes, turned into stats and then removed.
_BOOKKEEPING = ("_truncated", "_n_supervised", "_length")
# Narrow integer types: a third of the Arrow size of the int64 default; the collator widens.
_FEATURES = datasets.Features(
    {
        "input_ids": datasets.List(datasets.Value("int32")),
        "attention_mask": datasets.List(datasets.Value("int8")),
        "labels": datasets.List(datasets.Value("int32")),
        "_truncated": datasets.Value("bool"),
        "_n_supervised": datasets.Value("int32"),
        "_length": datasets.Value("int32"),
        SOURCE: datasets.Value("string"),
    }
)


def tokenize_mixture(
    dataset: datasets.Dataset,
    tokenizer: Any,
    *,
    max_length: int,
    template: str | None = None,
    batch_size: int = 1000,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Tokenize a mixture from `load_mixture` into input_ids / attention_mask / labels / source.

    Args:
        dataset: columns prompt/response (or messages) and source.
        tokenizer: a Hugging Face tokenizer with an EOS token (and a chat template for chat data).
        max_length: sequences longer than this keep their first `max_length` tokens. An example
            with no supervised token left after truncation is dropped.
        template: prompt template containing "{prompt}" (plain replacement, so other braces in
            the template are kept literally); default `DEFAULT_TEMPLATE`. Not used for chat data.
        batch_size: examples per `datasets.map` batch.

    Returns:
        The tokenized dataset (labels = -100 on context tokens, the token id on supervised
        tokens) and stats: n_input (examples given), n_examples (kept), n_truncated (longer
        than max_length, kept or dropped), n_dropped (no supervised token left), n_tokens,
        n_supervised_tokens, per_source (kept examples per source), max_length.
    """
    if max_length < 2:
        raise DataError(f"max_length must be at least 2, got {max_length}")
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token: it is needed to end each response")
    cols = dataset.column_names
    if SOURCE not in cols:
        raise DataError(f"dataset has no {SOURCE!r} column; columns are {cols} (use load_mixture)")
    if PROMPT in cols and RESPONSE in cols:
        template = DEFAULT_TEMPLATE if template is None else template
        if "{prompt}" not in template:
            raise DataError(f"template must contain '{{prompt}}', got {template!r}")
        encode = _prompt_response_encoder(tokenizer, template, max_length)
    elif MESSAGES in cols:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("chat data (messages) needs a tokenizer with a chat_template")
        encode = _chat_encoder(tokenizer, max_length)
    else:
        raise DataError(
            f"dataset needs columns {PROMPT!r} and {RESPONSE!r}, or {MESSAGES!r}; "
            f"columns are {cols}"
        )
    n_input = len(dataset)
    tokenized = dataset.map(
        encode,
        batched=True,
        with_indices=True,  # lets errors name the example
        batch_size=batch_size,
        remove_columns=[c for c in cols if c != SOURCE],
        desc="tokenizing",
        # Hashing a tokenizer for the cache key is slow and not a reliable identity (a retrained
        # tokenizer can look the same), so: an explicit fingerprint, and never a stale cache hit.
        new_fingerprint=_fingerprint(dataset, tokenizer, template, max_length),
        load_from_cache_file=False,
        features=_FEATURES,
    )
    book = tokenized.select_columns(list(_BOOKKEEPING)).with_format("numpy")[:]
    truncated = book["_truncated"].astype(bool)
    n_supervised = book["_n_supervised"].astype(np.int64)
    lengths = book["_length"].astype(np.int64)
    keep = n_supervised > 0
    tokenized = tokenized.remove_columns(list(_BOOKKEEPING))
    if not keep.all():
        tokenized = tokenized.select(np.flatnonzero(keep))
    stats = {
        "n_input": n_input,
        "n_examples": int(keep.sum()),
        "n_truncated": int(truncated.sum()),
        "n_dropped": int((~keep).sum()),
        "n_tokens": int(lengths[keep].sum()),
        "n_supervised_tokens": int(n_supervised[keep].sum()),
        "per_source": dict(sorted(Counter(list(tokenized[SOURCE])).items())),
        "max_length": max_length,
    }
    return tokenized.select_columns(list(_OUT)), stats


def _fingerprint(
    dataset: datasets.Dataset, tokenizer: Any, template: str | None, max_length: int
) -> str:
    from datasets.fingerprint import Hasher

    return Hasher.hash(
        [dataset._fingerprint, tokenizer.name_or_path, len(tokenizer), template, max_length,
         getattr(tokenizer, "chat_template", None), "colm.tokenize_mixture/1"]
    )


def _special_prefix(tokenizer: Any) -> list[int]:
    """Ids the tokenizer puts before a text (BOS for Llama-style ones, nothing for GPT-2 ones).

    Measured on a probe text instead of trusted from flags, because tokenizers differ in how
    they declare it. Suffixes (e.g. an EOS some tokenizers append) are dropped: colm appends
    the EOS after the response itself.
    """
    probe = "colm probe"
    plain = tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def _finish(context: list[list[int]], target: list[list[int]], max_length: int) -> dict[str, list]:
    """Concatenate context and target ids, mask the context, truncate, record bookkeeping."""
    out: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "labels", *_BOOKKEEPING)}
    for ctx, tgt in zip(context, target):
        ids = (ctx + tgt)[:max_length]
        labels = ([IGNORE_INDEX] * len(ctx) + tgt)[:max_length]
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
        out["_truncated"].append(len(ctx) + len(tgt) > max_length)
        out["_n_supervised"].append(max(0, len(ids) - len(ctx)))
        out["_length"].append(len(ids))
    return out


def _prompt_response_encoder(tokenizer: Any, template: str, max_length: int):
    prefix = _special_prefix(tokenizer)
    eos = tokenizer.eos_token_id

    def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        contexts = [template.replace("{prompt}", p) for p in batch[PROMPT]]
        ctx = tokenizer(contexts, add_special_tokens=False, verbose=False)["input_ids"]
        tgt = tokenizer(batch[RESPONSE], add_special_tokens=False, verbose=False)["input_ids"]
        return _finish([prefix + c for c in ctx], [t + [eos] for t in tgt], max_length)

    return encode


def _chat_encoder(tokenizer: Any, max_length: int):
    def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        contexts, completions = [], []
        for i, messages in enumerate(batch[MESSAGES]):
            if not messages or messages[-1]["role"] != "assistant":
                raise DataError(
                    f"chat example {indices[i]} (source {batch[SOURCE][i]!r}): the last message "
                    "must have role 'assistant'"
                )
            # The rendered context (with the assistant header) must be a prefix of the whole
            # conversation; templates that rewrite earlier turns cannot be masked exactly.
            context = tokenizer.apply_chat_template(
                messages[:-1], add_generation_prompt=True, tokenize=False
            )
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            if not full.startswith(context):
                raise DataError(
                    f"chat example {indices[i]} (source {batch[SOURCE][i]!r}): the chat template "
                    "does not render the conversation without its final answer "
                    "(add_generation_prompt=True) as a prefix of the full conversation, so the "
                    "answer cannot be masked exactly"
                )
            contexts.append(context)
            completions.append(full[len(context):])
        # Chat templates write BOS/EOS into the text themselves: no special tokens added here.
        ctx = tokenizer(contexts, add_special_tokens=False, verbose=False)["input_ids"]
        tgt = tokenizer(completions, add_special_tokens=False, verbose=False)["input_ids"]
        return _finish(ctx, tgt, max_length)

    return encode
