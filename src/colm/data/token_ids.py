"""Token ids of many texts at once, as flat numpy arrays, equal to `tokenizer(texts)`'s.

`token_ids(tokenizer, texts)` returns what
`tokenizer(texts, add_special_tokens=False)["input_ids"]` returns, packed as one flat id array
plus per-text lengths. For a plain fast tokenizer it calls the Rust backend directly:
`encode_batch_fast` (no character offsets computed) on all texts at once, which the backend
spreads over every core, and skips the per-text dicts transformers builds around each
encoding. Any other tokenizer (a slow Python one, or a class that overrides how it encodes)
goes through its own `__call__`, so its behaviour is kept whatever it does.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

# Methods whose transformers implementation the fast path reproduces: a subclass overriding
# any of them may encode differently, so it takes the general path.
_ENCODING_METHODS = (
    "__call__", "_call_one", "encode_plus", "batch_encode_plus", "_encode_plus",
    "_batch_encode_plus", "set_truncation_and_padding",
)


def token_ids(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lengths): the ids of every text concatenated (int64) and each text's length.

    Equal to `tokenizer(texts, add_special_tokens=False)["input_ids"]`, flattened.
    """
    backend = rust_backend(tokenizer)
    if backend is None:
        ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    else:
        _disable_truncation_and_padding(backend)
        # What `tokenizer(...)` does with `split_special_tokens` before encoding.
        split = bool(getattr(tokenizer, "split_special_tokens", False))
        if backend.encode_special_tokens != split:
            backend.encode_special_tokens = split
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
        ids = [e.ids for e in encode(list(texts), add_special_tokens=False)]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def rust_backend(tokenizer: Any) -> Any | None:
    """The `tokenizers.Tokenizer` behind `tokenizer` when calling it directly gives the same
    ids as calling `tokenizer`; None otherwise."""
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        return None
    cls = type(tokenizer)
    for name in _ENCODING_METHODS:
        if getattr(cls, name, None) is not getattr(PreTrainedTokenizerFast, name, None):
            return None
    if hasattr(tokenizer, "_switch_to_input_mode"):  # seq2seq tokenizers with two modes
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    return backend if hasattr(backend, "encode_batch") else None


def _disable_truncation_and_padding(backend: Any) -> None:
    # A tokenizer.json may carry truncation or padding settings; `tokenizer(texts)` without
    # truncation/padding arguments switches them off before encoding, and so does this.
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
