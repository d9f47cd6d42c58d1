"""Where the shipped math mixture lives, and how file names encode source and split.

A data file is JSON Lines, JSON, Parquet or CSV (`.jsonl`, `.json`, `.parquet`, `.csv`), the
text kinds optionally compressed (`.gz`, `.bz2`, `.xz`). Its name says its split in one of two
ways, the second being the layout `datasets.load_dataset` reads from a folder:

- `<source>.<split>.<ext>`, e.g. `gsm8k.train.jsonl.gz`: the source is the stem and the split
  the last dot-separated part before the extension (the shipped mixture);
- `<split>.<ext>` or a shard `<split>-00000-of-00002.<ext>`, e.g. `train.jsonl`,
  `validation.parquet`: the file holds one split of every source; the rows' own source field
  names their sources (`source_of` is None).

A name with no split in it (`mydata.jsonl`) is one source named by its stem.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from colm.data.errors import DataError

#: Compressions the text kinds may carry (read by gzip/bz2/lzma, or `datasets`' own extractors).
COMPRESSIONS = (".gz", ".bz2", ".xz")
#: Data file kinds by extension (before any compression suffix).
KINDS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
#: Every accepted file ending, longest first so `.jsonl.gz` wins over `.gz`.
DATA_SUFFIXES = tuple(sorted(
    [ext for ext in KINDS] + [ext + c for ext in KINDS if ext != ".parquet" for c in COMPRESSIONS],
    key=len, reverse=True))
#: File extensions read as JSON Lines by colm's own line reader (JSON arrays go to `datasets`).
JSONL_SUFFIXES = tuple(s for s in DATA_SUFFIXES if s.startswith((".jsonl", ".json")))
#: Split names recognised in a file name; anything else is part of the source name.
SPLIT_NAMES = ("train", "validation", "valid", "val", "dev", "eval", "test")
#: Names a validation split goes by; `--eval-split validation` (the default) takes any of them.
VALIDATION_NAMES = ("validation", "valid", "val", "dev", "eval")
# `train-00000-of-00002` (the Hub's shard names), `train_part1`: the split, then a separator.
_SPLIT_SHARD = re.compile(r"^(" + "|".join(SPLIT_NAMES) + r")(?:[-_][\w-]*)?$")


def default_mixture_dir() -> Path:
    """The folder of the 14-source math mixture shipped inside the package.

    See its README.md for the sources, their sizes, attribution and licenses.
    """
    folder = resources.files("colm.data") / "math_mixture"
    # Installed as regular files (wheel or editable install), so the Traversable is a path.
    path = Path(str(folder))
    if not path.is_dir():  # pragma: no cover - only a broken install gets here
        raise DataError(f"the shipped mixture is missing: {path} is not a folder; reinstall colm")
    return path


def is_jsonl(path: Path) -> bool:
    """Whether `path` has a JSON Lines (or JSON) extension."""
    return path.name.endswith(JSONL_SUFFIXES)


def kind_of(path: Path | str) -> str | None:
    """"jsonl", "json", "parquet" or "csv" by the file's extension; None for anything else."""
    name = Path(path).name
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix):
            for c in COMPRESSIONS:
                if suffix.endswith(c):
                    suffix = suffix[: -len(c)]
            return KINDS[suffix]
    return None


def is_data_file(path: Path) -> bool:
    """Whether `path` names a data file colm reads (see the module docstring)."""
    return kind_of(path) is not None


def strip_suffix(name: str) -> str:
    """The file name without its data extension (`gsm8k.train.jsonl.gz` -> `gsm8k.train`)."""
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _split_only(stem: str) -> str | None:
    match = _SPLIT_SHARD.match(stem)
    return match.group(1) if match else None


def split_of(path: Path | str) -> str | None:
    """The split named in a file name (`gsm8k.train.jsonl.gz`, `train.jsonl`,
    `train-00000-of-00002.parquet` -> "train"), or None."""
    stem = strip_suffix(Path(path).name)
    if _split_only(stem):
        return _split_only(stem)
    head, dot, last = stem.rpartition(".")
    return last if dot and head and last in SPLIT_NAMES else None


def source_of(path: Path | str) -> str | None:
    """The source name a file stands for (`gsm8k.train.jsonl.gz` -> "gsm8k"); None for a file
    named by its split alone (`train.jsonl`), whose rows say their own sources."""
    stem = strip_suffix(Path(path).name)
    if _split_only(stem):
        return None
    return stem.rpartition(".")[0] if split_of(path) else stem


def default_source_of(path: Path | str) -> str:
    """The source of a file's rows that carry no source field: the file's source name, or for
    a file named by its split alone its folder's name (`my_data/train.jsonl` -> "my_data"), so
    that the training and validation files of one folder name the same source."""
    return source_of(path) or Path(path).resolve().parent.name or "data"


def validation_split_in(present: list[str] | set[str], wanted: str) -> str | None:
    """The split of `present` that `--eval-split wanted` means: `wanted` itself, or for the
    default "validation" the first of its other names present (`val`, `dev`, ...)."""
    if wanted in present:
        return wanted
    if wanted == "validation":
        return next((name for name in VALIDATION_NAMES if name in present), None)
    return None


def split_files(split: str | None = "train", folder: Path | str | None = None) -> list[Path]:
    """The data files of one split in `folder` (default: the shipped mixture), sorted by name.

    `split=None` returns every data file, but refuses a folder whose files name more than one
    split: mixing train and validation silently is the mistake this guards against. A folder
    whose files name no split at all is training data: `split="train"` returns all its files.
    Raises DataError when nothing matches, saying which splits the folder has.
    """
    root = Path(folder) if folder is not None else default_mixture_dir()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    files = sorted(p for p in root.iterdir() if p.is_file() and is_data_file(p))
    if not files:
        raise DataError(
            f"{root}: no data files found (expected train/validation files or <source>.<split> files "
            "in JSON Lines, JSON, Parquet or CSV, e.g. train.jsonl, gsm8k.train.jsonl.gz)"
        )
    present = sorted({s for s in map(split_of, files) if s is not None})
    if split == "train" and not present:
        return files
    if split is None:
        if len(present) > 1:
            raise DataError(
                f"{root}: files of several splits {present}; pass split= one of them "
                "(e.g. split='train') so train and validation are not mixed"
            )
        return files
    chosen = [p for p in files if split_of(p) == split]
    if not chosen:
        raise DataError(
            f"{root}: no files for split {split!r} "
            f"(expected names like {split}.jsonl or <source>.{split}.jsonl.gz); "
            f"splits present: {present or 'none'}"
        )
    return chosen
