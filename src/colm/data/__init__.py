"""Data mixtures: the shipped math mixture, loading, templating with label masking, collation.

    from colm.data import default_mixture_dir, load_mixture, tokenize_mixture, source_sizes
    ds = load_mixture(default_mixture_dir(), split="train")
    tokens, stats = tokenize_mixture(ds, tokenizer, max_length=512)

`prepare_data(DataArguments(...), tokenizer, seed=...)` (colm.data.prepare) does all of it as
`colm train` does: load, check (empty responses, chat template), tokenize with the on-disk cache.
The package folder also holds the data: `math_mixture/` (see its README.md for sources,
attribution and licenses).

Imports: anything but colm.models, colm.integrations, colm.training, colm.compare and colm.cli
(tests/test_layers.py checks it).
"""
from __future__ import annotations

from colm.data.collator import MixtureCollator
from colm.data.errors import DataError
from colm.data.loading import load_mixture, source_sizes
from colm.data.mixture import default_mixture_dir, source_of, split_files, split_of
from colm.data.templating import DEFAULT_TEMPLATE, IGNORE_INDEX, tokenize_mixture

__all__ = [
    "DEFAULT_TEMPLATE",
    "IGNORE_INDEX",
    "DataError",
    "MixtureCollator",
    "default_mixture_dir",
    "load_mixture",
    "source_of",
    "source_sizes",
    "split_files",
    "split_of",
    "tokenize_mixture",
]
