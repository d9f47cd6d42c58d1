"""Where a run's validation rows come from, and whether their sources are the training ones.

One precedence rule for every command (`train`, `compare`, `evaluate`, `demo`):

1. `--eval-data` (`eval_data`), when given: the user said so;
2. else the validation split of `--data` itself: a folder's `validation.*` (or `val`, `dev`,
   `eval`) files or `<source>.validation.*` files, a `save_to_disk` DatasetDict's split, or a
   Hub dataset's split of that name;
3. else none: the run trains and reports no validation loss.

`--eval-split` names the split (default "validation", which also takes its other names). The
choice is said in one line ("validating on ...") at the start of every run.

The natural-mixture loss weighs each validation source by its share of the training rows, so it
needs validation sources that are training sources. `match_sources` says, before training, when
they are not, and mends the one harmless case: rows of a single file with no source field on
both sides (`--data a.jsonl --eval-data b.jsonl`), which are one source named twice.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colm.data.hub import looks_like_local_path
from colm.data.mixture import default_mixture_dir, is_data_file, split_of, validation_split_in


@dataclass(frozen=True)
class ValidationChoice:
    """The validation data of a run: `spec` and `split` for `load_mixture` (spec None: none)."""

    spec: Any
    split: str | None
    why: str

    def line(self) -> str:
        """The "validating on ..." line every command prints at its start."""
        if self.spec is None:
            return f"validating on nothing: {self.why}"
        where = f"{self.spec}" + (f" (split {self.split!r})" if self.split else "")
        return f"validating on {where}: {self.why}"


def _splits_of(path: Path) -> list[str]:
    """The splits a folder of data files or a saved DatasetDict holds (none for anything else)."""
    if not path.is_dir():
        return []
    saved = path / "dataset_dict.json"
    if saved.is_file():
        try:
            return list(json.loads(saved.read_text(encoding="utf-8")).get("splits", []))
        except (OSError, ValueError):
            return []  # a damaged file: loading the training split says what is wrong
    return sorted({s for p in path.iterdir() if p.is_file() and is_data_file(p) and (s := split_of(p))})


def choose_validation(data: Any, eval_data: Any, eval_split: str = "validation",
                      train_split: str | None = None) -> ValidationChoice:
    """The validation data by the module's precedence rule; `data` None is the shipped mixture.
    --data's own split is not taken when it is the split the run trains on (`train_split`)."""
    folder = Path(os.fspath(data)).expanduser() if isinstance(data, (str, os.PathLike)) else None
    if data is None:
        folder = default_mixture_dir()
    own = validation_split_in(_splits_of(folder), eval_split) if folder is not None else None
    if eval_data is not None:
        eval_path = Path(os.fspath(eval_data)).expanduser() if isinstance(eval_data, (str, os.PathLike)) else None
        split: str | None = eval_split
        if eval_path is not None and eval_path.is_file():
            split = None  # one file is one split
        elif eval_path is not None and eval_path.is_dir():
            present = _splits_of(eval_path)
            split = (validation_split_in(present, eval_split) or eval_split) if present else None
        why = "--eval-data" + (f" (it wins over --data's own {own!r} split)" if own else "")
        return ValidationChoice(eval_data, split, why)
    if own is not None and own == train_split:
        return _trains_on_it(own)
    if own is not None:
        return ValidationChoice(str(folder), own, "the --data folder's own validation split")
    if isinstance(data, str) and folder is not None and not folder.exists() and not looks_like_local_path(data):
        from colm.data.loading import hub_split_names  # datasets' Hub machinery: only for a Hub id

        splits, problem = hub_split_names(data)
        hub_own = validation_split_in(list(splits), eval_split)
        if hub_own is not None and hub_own == train_split:
            return _trains_on_it(hub_own)
        if hub_own is not None:
            return ValidationChoice(data, hub_own, "the Hub dataset's own validation split")
        if problem is not None:
            return ValidationChoice(None, None, f"could not read the splits of Hub dataset {data!r} ({problem}); "
                                                "no validation loss is reported unless --eval-data is given")
    what = "the --data file" if folder is not None and folder.is_file() else "--data"
    return ValidationChoice(None, None, f"{what} has no {eval_split!r} split and no --eval-data was given "
                                        "(no validation loss is reported)")


def _trains_on_it(split: str) -> ValidationChoice:
    return ValidationChoice(None, None, f"--data's validation split {split!r} is the split the run trains on "
                                        "(--train-split), so it cannot measure generalisation; no validation "
                                        "loss is reported unless --eval-data is given")


def match_sources(train_sources: list[str], eval_dataset: Any, eval_source_missing: bool,
                  fields: list[str] | None = None) -> tuple[Any, str | None]:
    """(validation dataset, a note or None) after checking its sources against training's.

    Validation rows without a source field, against training data of one source: they are that
    source (renamed, noted). Validation sources that are no training source: a note saying the
    natural-mixture loss is undefined for them (the run still reports per-source and mean losses);
    `fields` (the validation rows' fields) are listed in it, to find the one naming the source.
    """
    eval_sources = sorted(set(map(str, eval_dataset["source"])))
    known = set(train_sources)
    if known & set(eval_sources):
        extra = [s for s in eval_sources if s not in known]
        if not extra:
            return eval_dataset, None
        return eval_dataset, (f"validation source(s) {extra} have no training rows: reported per source, "
                              "weighted 0 in the natural-mixture loss")
    if eval_source_missing and len(train_sources) == 1:
        only = train_sources[0]
        renamed = eval_dataset.remove_columns("source").add_column("source", [only] * len(eval_dataset))
        return renamed, (f"the validation rows carry no source field: they are scored as the training "
                         f"data's one source {only!r}")
    return eval_dataset, (f"no validation source {eval_sources} is a training source {sorted(known)}: "
                          "the natural-mixture loss is undefined; the per-source losses and their mean are "
                          "still reported. If another field names each row's source, pass --source-field FIELD"
                          + (f" (the validation rows' fields: {', '.join(fields)})" if fields else ""))
