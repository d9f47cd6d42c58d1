"""Where the shipped math mixture lives, and how file names encode source and split.

File names follow `<source>.<split>.jsonl[.gz]`, e.g. `gsm8k.train.jsonl.gz`: the source
name is the stem and the split is the last dot-separated part before the extension.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from colm.data.errors import DataError

#: File extensions read as JSON Lines (one JSON object per line).
JSONL_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")
#: Split names recognised in a file name; anything else is part of the source name.
SPLIT_NAMES = ("train", "validation", "valid", "val", "dev", "eval", "test")


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
    """Whether `path` has a JSON Lines extension."""
    return path.name.endswith(JSONL_SUFFIXES)


def _strip_suffix(name: str) -> str:
    for suffix in JSONL_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def split_of(path: Path | str) -> str | None:
    """The split named in a file name (`gsm8k.train.jsonl.gz` -> "train"), or None."""
    stem = _strip_suffix(Path(path).name)
    head, dot, last = stem.rpartition(".")
    return last if dot and head and last in SPLIT_NAMES else None


def source_of(path: Path | str) -> str:
    """The source name a file stands for (`gsm8k.train.jsonl.gz` -> "gsm8k")."""
    stem = _strip_suffix(Path(path).name)
    return stem.rpartition(".")[0] if split_of(path) else stem


def split_files(split: str | None = "train", folder: Path | str | None = None) -> list[Path]:
    """The JSONL files of one split in `folder` (default: the shipped mixture), sorted by name.

    `split=None` returns every JSONL file, but refuses a folder whose files name more than one
    split: mixing train and validation silently is the mistake this guards against.
    Raises DataError when nothing matches, saying which splits the folder has.
    """
    root = Path(folder) if folder is not None else default_mixture_dir()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    files = sorted(p for p in root.iterdir() if p.is_file() and is_jsonl(p))
    if not files:
        raise DataError(
            f"{root}: no data files found "
            "(expected *.jsonl or *.jsonl.gz, e.g. gsm8k.train.jsonl.gz)"
        )
    present = sorted({s for s in map(split_of, files) if s is not None})
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
            f"(expected names like <source>.{split}.jsonl.gz); "
            f"splits present: {present or 'none'}"
        )
    return chosen
