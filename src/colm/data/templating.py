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

Speed: each batch of examples is rendered, tokenized in one call of the fast tokenizer's
backend (`token_ids`), and assembled with numpy index arithmetic (`sequences`) straight into
Arrow; with `cache_dir` the result is also cached on disk (`tokenized_cache`).
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from colm import phases
from colm.data import tokenized_cache
from colm.data.errors import DataError
from colm.data.loading import MESSAGES, PROMPT, RESPONSE, SOURCE
from colm.data.sequences import IGNORE_INDEX, Piece, Sequences, assemble
from colm.data.token_ids import token_ids

#: The default prompt template; "{prompt}" is replaced by the example's prompt.
DEFAULT_TEMPLATE = "Question: {prompt}\nAnswer:\n"
__all__ = ["DEFAULT_TEMPLATE", "IGNORE_INDEX", "context_ids", "tokenize_mixture"]
# Narrow integer types: a third of the Arrow size of the int64 default; the collator widens.
_FEATURES = datasets.Features(
    {
        "input_ids": datasets.List(datasets.Value("int32")),
        "attention_mask": datasets.List(datasets.Value("int8")),
        "labels": datasets.List(datasets.Value("int32")),
        SOURCE: datasets.Value("string"),
    }
)
# Turns a slice of the input table (and the index of its first row) into the row pieces.
Encoder = Callable[[pa.Table, int], list[Piece]]


def tokenize_mixture(
    dataset: datasets.Dataset,
    tokenizer: Any,
    *,
    max_length: int,
    template: str | None = None,
    batch_size: int = 1000,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Tokenize a mixture from `load_mixture` into input_ids / attention_mask / labels / source.

    Args:
        dataset: columns prompt/response (or messages) and source.
        tokenizer: a Hugging Face tokenizer with an EOS token (and a chat template for chat data).
        max_length: sequences longer than this keep their first `max_length` tokens. An example
            with no supervised token left after truncation is dropped.
        template: prompt template containing "{prompt}" (plain replacement, so other braces in
            the template are kept literally); default `DEFAULT_TEMPLATE`. Not used for chat data.
        batch_size: examples rendered and tokenized together (bounds the memory of the
            intermediate token lists; the result does not depend on it).
        cache_dir: if given, reuse the result cached there for the same data, tokenizer,
            template and max_length, or cache this one (see `colm.data.tokenized_cache`);
            a hit returns a dataset memory-mapped from the cache file.

    Returns:
        The tokenized dataset (labels = -100 on context tokens, the token id on supervised
        tokens) and stats: n_input (examples given), n_examples (kept), n_truncated (longer
        than max_length, kept or dropped), n_dropped (no supervised token left), n_tokens,
        n_supervised_tokens, per_source (kept examples per source), max_length.
    """
    if max_length < 2:
        raise DataError(f"max_length must be at least 2, got {max_length}")
    if batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size}")
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token: it is needed to end each response")
    cols = dataset.column_names
    if SOURCE not in cols:
        raise DataError(f"dataset has no {SOURCE!r} column; columns are {cols} (use load_mixture)")
    if PROMPT in cols and RESPONSE in cols:
        template = DEFAULT_TEMPLATE if template is None else template
        if "{prompt}" not in template:
            raise DataError(f"template must contain '{{prompt}}', got {template!r}")
        used, settings = [PROMPT, RESPONSE, SOURCE], {"template": template}
    elif MESSAGES in cols:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("chat data (messages) needs a tokenizer with a chat_template")
        used, settings = [MESSAGES, SOURCE], {"chat": True}
    else:
        raise DataError(
            f"dataset needs columns {PROMPT!r} and {RESPONSE!r}, or {MESSAGES!r}; "
            f"columns are {cols}"
        )
    # The rows in dataset order (an indices mapping from select/shuffle applied), used columns only.
    table = dataset.select_columns(used).with_format("arrow")[:]
    # The result's identity: its cache key and its `datasets` fingerprint (None: not cacheable).
    key = tokenized_cache.cache_key(table, tokenizer, {**settings, "max_length": max_length})
    if key is None:
        cache_dir = None
    if cache_dir is not None:
        cached = tokenized_cache.load(cache_dir, key)
        if cached is not None:
            return cached
    if MESSAGES in used:
        encode = _chat_encoder(tokenizer)
    else:
        encode = _prompt_response_encoder(tokenizer, template)

    n_input = len(table)
    batches = []
    truncated = np.zeros(n_input, dtype=bool)
    n_supervised = np.zeros(n_input, dtype=np.int64)
    lengths = np.zeros(n_input, dtype=np.int64)
    for start in phases.track(range(0, n_input, batch_size), "tokenizing", unit="batch"):
        part = table.slice(start, batch_size)
        rows = assemble(encode(part, start), max_length)
        span = slice(start, start + len(part))
        truncated[span], n_supervised[span], lengths[span] = (
            rows.full_lengths > max_length, rows.n_supervised, rows.lengths
        )
        kept = rows.n_supervised > 0
        batches.append(_record_batch(rows.select(kept), part.column(SOURCE).filter(pa.array(kept))))
    keep = n_supervised > 0
    out = pa.Table.from_batches(batches, schema=_FEATURES.arrow_schema)
    stats = {
        "n_input": n_input,
        "n_examples": int(keep.sum()),
        "n_truncated": int(truncated.sum()),
        "n_dropped": int((~keep).sum()),
        "n_tokens": int(lengths[keep].sum()),
        "n_supervised_tokens": int(n_supervised[keep].sum()),
        "per_source": dict(sorted(Counter(out.column(SOURCE).to_pylist()).items())),
        "max_length": max_length,
    }
    if cache_dir is not None:
        tokenized_cache.store(cache_dir, key, out, stats)
    tokenized = datasets.Dataset(out, info=datasets.DatasetInfo(features=_FEATURES), fingerprint=key)
    return tokenized, stats


def _record_batch(rows: Sequences, sources: pa.ChunkedArray) -> pa.RecordBatch:
    """Arrow columns of the kept rows, in the narrow types of `_FEATURES` (a checked cast:
    a value that does not fit raises instead of wrapping around)."""
    int32 = pa.int32()
    offsets = pa.array(rows.offsets, type=int32)
    ids = pa.ListArray.from_arrays(offsets, pa.array(rows.input_ids, type=int32))
    mask = pa.ListArray.from_arrays(offsets, pa.array(np.ones(len(rows.input_ids), dtype=np.int8)))
    labels = pa.ListArray.from_arrays(offsets, pa.array(rows.labels, type=int32))
    return pa.RecordBatch.from_arrays(
        [ids, mask, labels, sources.combine_chunks()], schema=_FEATURES.arrow_schema
    )


def context_ids(dataset: datasets.Dataset, tokenizer: Any, template: str | None = None) -> list[list[int]]:
    """Token ids of each example's context, exactly as `tokenize_mixture` renders it before the
    answer (the prompt in its template after the tokenizer's prefix, or the chat template up to
    and including the assistant header): what a model generates from at evaluation."""
    if MESSAGES in dataset.column_names:
        conversations = dataset[MESSAGES]
        texts = _render(tokenizer, [m[:-1] for m in conversations], True, lambda i: f"chat example {i}")
        prefix: list[int] = []  # chat templates write their own special tokens
    else:
        template = DEFAULT_TEMPLATE if template is None else template
        texts = [template.replace("{prompt}", p) for p in dataset[PROMPT]]
        prefix = _special_prefix(tokenizer)
    flat, lengths = token_ids(tokenizer, texts)
    ends = np.cumsum(lengths)
    return [prefix + flat[e - n:e].tolist() for e, n in zip(ends.tolist(), lengths.tolist())]


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


def _prompt_response_encoder(tokenizer: Any, template: str) -> Encoder:
    prefix = _special_prefix(tokenizer)
    eos = [tokenizer.eos_token_id]

    def encode(part: pa.Table, first: int) -> list[Piece]:
        n = len(part)
        contexts = [template.replace("{prompt}", p) for p in part.column(PROMPT).to_pylist()]
        context = Piece.packed(*token_ids(tokenizer, contexts), supervised=False)
        response = Piece.packed(*token_ids(tokenizer, part.column(RESPONSE).to_pylist()), supervised=True)
        return [
            Piece.constant(prefix, n, supervised=False), context,
            response, Piece.constant(eos, n, supervised=True),
        ]

    return encode


def _chat_encoder(tokenizer: Any) -> Encoder:
    def encode(part: pa.Table, first: int) -> list[Piece]:
        conversations = part.column(MESSAGES).to_pylist()
        sources = part.column(SOURCE).to_pylist()

        def where(i: int) -> str:
            return f"chat example {first + i} (source {sources[i]!r})"

        for i, messages in enumerate(conversations):
            if not messages or messages[-1]["role"] != "assistant":
                raise DataError(f"{where(i)}: the last message must have role 'assistant'")
            if len(messages) == 1:
                raise DataError(
                    f"{where(i)}: needs at least one message before the final assistant answer "
                    "(the chat template cannot render an empty context)"
                )
        contexts = _render(tokenizer, [m[:-1] for m in conversations], True, where)
        fulls = _render(tokenizer, conversations, False, where)
        completions = []
        for i, (context, full) in enumerate(zip(contexts, fulls)):
            # The rendered context (with the assistant header) must be a prefix of the whole
            # conversation; templates that rewrite earlier turns cannot be masked exactly.
            if not full.startswith(context):
                raise DataError(
                    f"{where(i)}: the chat template does not render the conversation without its "
                    "final answer (add_generation_prompt=True) as a prefix of the full "
                    "conversation, so the answer cannot be masked exactly"
                )
            completions.append(full[len(context):])
        # Chat templates write BOS/EOS into the text themselves: no special tokens added here.
        return [
            Piece.packed(*token_ids(tokenizer, contexts), supervised=False),
            Piece.packed(*token_ids(tokenizer, completions), supervised=True),
        ]

    return encode


def _render(
    tokenizer: Any, conversations: list[list[dict]], generation_prompt: bool,
    where: Callable[[int], str],
) -> list[str]:
    """The chat template applied to each conversation (one batched call)."""
    try:
        return tokenizer.apply_chat_template(
            conversations, add_generation_prompt=generation_prompt, tokenize=False
        )
    except Exception as err:
        failure = err
    for i, messages in enumerate(conversations):  # find the example that fails, to name it
        try:
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=generation_prompt, tokenize=False
            )
        except Exception as err:
            raise DataError(
                f"{where(i)}: the chat template fails on it ({type(err).__name__}: {err})"
            ) from err
    raise failure
