"""Load a data mixture into one `datasets.Dataset` with a `source` column.

Accepted inputs (`spec`), the layouts `datasets.load_dataset` reads:
- one data file: JSON Lines (`*.jsonl`), JSON (`*.json`: JSON Lines, or one array of objects),
  Parquet (`*.parquet`) or CSV (`*.csv`, every column read as text), the text kinds optionally
  compressed (`.gz`, `.bz2`, `.xz`);
- a folder of such files, narrowed to one split by file name: `train.jsonl` +
  `validation.jsonl` (or `train-00000-of-00002.parquet` shards), or `<source>.<split>.jsonl.gz`
  as in the shipped mixture (`colm.data.mixture` says how names are read);
- a `datasets` dataset: an in-memory `Dataset`/`DatasetDict`, a folder written by
  `save_to_disk`, or a Hugging Face Hub id (offline: only a cached one, failing at once).

JSON Lines files are read by colm's own line reader (its errors name the file and 1-based line);
JSON arrays, Parquet and CSV by `datasets`' own loaders (errors name the file and 1-based row).

Every example is either prompt/response or chat (`messages`: a list of {role, content} with the
assistant's answer last). The result always uses the canonical column names `prompt`,
`response` (or `messages`) and `source`, whatever the input's field names were.

TRL's dataset formats are read without options: `prompt`/`completion` rows (the response field
defaults to `completion` when there is no `response`), and conversational `prompt`/`completion`
rows (both lists of {role, content}) become one `messages` conversation. A missing field's error
names the fields found and the option that maps them.

Rows without a source field belong to the source their file is named after (`gsm8k.train.jsonl`
-> gsm8k; `my_data/train.jsonl` -> my_data, the folder, so its validation file names the same
source); `LoadReport` tells the caller how many rows had the field, for the note a command
prints. A source field named explicitly (`source_field` other than "source") must be in every
row: its absence is a DataError at load.
"""
from __future__ import annotations

import bz2
import contextlib
import csv
import functools
import gzip
import io
import json
import lzma
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import datasets
import numpy as np
import pyarrow as pa

from colm.columns import SOURCE
from colm.data.errors import DataError
from colm.data.hub import datasets_offline, hub_offline, looks_like_local_path
from colm.data.mixture import default_source_of, kind_of, split_files, split_of, strip_suffix
from colm.data.sources import count_sources

MixtureSpec = Union[str, os.PathLike, datasets.Dataset, datasets.DatasetDict]  # noqa: UP007 (a runtime alias)

PROMPT, RESPONSE, MESSAGES = "prompt", "response", "messages"
TRL_COMPLETION = "completion"  # TRL's name for the response (prompt-completion datasets)
_MESSAGE_FEATURES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
# Files `save_to_disk` writes: a folder holding one of these is a saved dataset, not JSONL.
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class Fields:
    """Names of the input fields; the output always uses the canonical names."""

    source: str = SOURCE
    prompt: str = PROMPT
    response: str = RESPONSE
    messages: str = MESSAGES
    conversational: bool = False
    """TRL's conversational prompt/completion: both fields hold message lists, joined."""

    def resolved(self, present: Sequence[str], first: dict | None = None) -> Fields:
        """These names with TRL's defaults applied to the fields ``present`` in the input: the
        response is ``completion`` when the default ``response`` is absent and ``completion`` is
        there; list-valued prompt and completion (``first`` row) make a conversation."""
        response = self.response
        if response == RESPONSE and RESPONSE not in present and TRL_COMPLETION in present:
            response = TRL_COMPLETION
        conversational = (
            first is not None and self.prompt in present and response in present
            and isinstance(first.get(self.prompt), list) and isinstance(first.get(response), list)
        )
        return Fields(self.source, self.prompt, response, self.messages, conversational)


@dataclass
class LoadReport:
    """What `load_mixture` saw of the rows' fields (filled when passed as `report=`)."""

    source_field: str = SOURCE
    #: The fields (columns) of the first row read.
    fields: list[str] = field(default_factory=list)
    rows_with_source: int = 0
    rows_without_source: int = 0
    #: What was read, in words (file names or the dataset's name).
    read: list[str] = field(default_factory=list)

    @property
    def source_missing(self) -> bool:
        """No row carried the source field: every source came from a file or folder name."""
        return self.rows_with_source == 0 and self.rows_without_source > 0

    def source_note(self, sources: Sequence[str]) -> str:
        """One line for a command to print when no row had the source field."""
        others = [f for f in self.fields if f != self.source_field]
        return (f"no {self.source_field!r} field in the rows (their fields: {', '.join(others) or 'none'}): "
                f"every row's source is its file's name ({', '.join(sorted(sources))}); if a field "
                "names each row's source, pass --source-field FIELD (in Python source_field=)")


def field_hint() -> str:
    """Which options map other field names (CLI flag, then load_mixture argument)."""
    return (
        "map yours with --prompt-field/--response-field (prompt/response rows, e.g. "
        "--response-field completion) or --messages-field (chat rows); in Python "
        "load_mixture(prompt_field=..., response_field=..., messages_field=...)"
    )


def load_mixture(
    spec: MixtureSpec,
    *,
    split: str | None = None,
    source_field: str = SOURCE,
    prompt_field: str = PROMPT,
    response_field: str = RESPONSE,
    messages_field: str = MESSAGES,
    sources: Sequence[str] | None = None,
    max_examples_per_source: int | None = None,
    seed: int = 0,
    report: LoadReport | None = None,
) -> datasets.Dataset:
    """Load a mixture as a Dataset with columns prompt/response (or messages) and source.

    Args:
        spec: a JSONL(.gz) file, a folder of them, a saved or in-memory `datasets` dataset, or
            a Hub dataset id (see the module docstring).
        split: for a folder, keep only files of that split (`<split>.<ext>` or
            `<source>.<split>.<ext>`); for a DatasetDict or Hub id, the split to take (default
            "train"). Ignored for one file.
        source_field: per-example source name; where an example lacks it, the file name stem
            (`gsm8k` for `gsm8k.train.jsonl.gz`; the folder's name for `train.jsonl`) or the
            dataset's name is used. A name other than "source" must be in every example.
        prompt_field, response_field: input field names of prompt/response examples.
        messages_field: input field name of chat examples.
        sources: keep only these source names; an unknown name is a DataError listing the
            known ones.
        max_examples_per_source: keep at most this many examples of each source, drawn
            uniformly with `seed` and kept in their original order.
        seed: seed of that draw.
        report: a LoadReport to fill with the fields seen and how many rows had a source.

    Raises:
        DataError: for every kind of bad input, naming the file and 1-based line, or the field
            and what was expected.
    """
    fields = Fields(source_field, prompt_field, response_field, messages_field)
    seen = report if report is not None else LoadReport()
    seen.source_field = source_field
    if isinstance(spec, (datasets.Dataset, datasets.DatasetDict)):
        columns = _from_dataset(spec, fields, split, default_source="dataset", seen=seen)
    else:
        columns = _from_path_or_id(os.fspath(spec), fields, split, seen)
    columns = _filter_sources(columns, sources)
    if max_examples_per_source is not None:
        columns = _cap_per_source(columns, max_examples_per_source, seed)
    return _to_dataset(columns)


def source_sizes(dataset: datasets.Dataset) -> dict[str, int]:
    """Number of examples of each source, in order of first appearance (`colm.data.sources`
    says why; the trainer counts the same way, so passing these on selects the same rows).

    These dataset-level counts are what `CoresetSelector` needs to tell small sources apart.
    """
    if SOURCE not in dataset.column_names:
        raise DataError(f"dataset has no {SOURCE!r} column; columns are {dataset.column_names}")
    return count_sources(dataset[SOURCE])


# ---------------------------------------------------------------- resolving the spec


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `Dataset(Dict).save_to_disk`."""
    return path.is_dir() and any((path / marker).exists() for marker in _SAVED_MARKERS)


def _from_path_or_id(spec: str, fields: Fields, split: str | None, seen: LoadReport) -> dict[str, list]:
    path = Path(spec).expanduser()
    if path.is_file():
        if kind_of(path) is None:
            raise DataError(
                f"{path}: unsupported file type; expected JSON Lines (*.jsonl), JSON (*.json), "
                "Parquet (*.parquet) or CSV (*.csv), the text kinds optionally compressed (.gz, .bz2, .xz)"
            )
        return _read_file(path, fields, seen)
    if path.is_dir():
        if is_saved_dataset(path):
            try:
                loaded = datasets.load_from_disk(str(path))
            except Exception as err:  # corrupt or foreign folder: say which one
                raise DataError(f"{path}: could not load the saved dataset: {err}") from err
            return _from_dataset(loaded, fields, split, default_source=path.name, seen=seen)
        files = split_files(split, path)
        check_no_duplicates(files)
        columns: dict[str, list] = {}
        for file in files:
            _merge(columns, _read_file(file, fields, seen), file)
        return columns
    if looks_like_local_path(spec):
        raise DataError(f"{spec}: no such file or folder")
    return _from_dataset(_load_hub(spec, split), fields, split, default_source=spec.split("/")[-1], seen=seen)


def _read_file(path: Path, fields: Fields, seen: LoadReport) -> dict[str, list]:
    """One data file's rows as canonical columns, read by the loader its kind is for."""
    kind = kind_of(path)
    seen.read.append(str(path))
    if kind == "jsonl" or (kind == "json" and _first_byte(path) != b"["):
        return _read_files([path], fields, seen)
    loaded = _load_with_datasets(path, kind or "json")
    return _from_dataset(loaded, fields, None, default_source=default_source_of(path), seen=seen,
                         label=str(path), row_base=1)


def _merge(columns: dict[str, list], part: dict[str, list], path: Path) -> None:
    """Append one file's columns; every file of a split must hold the same kind of rows."""
    if not columns:
        columns.update(part)
        return
    if set(part) != set(columns):
        kind = "chat (messages)" if MESSAGES in part else "prompt/response"
        raise DataError(f"{path}: {kind} rows, but the files before it hold "
                        f"{'chat (messages)' if MESSAGES in columns else 'prompt/response'} rows; "
                        "one split must hold one kind")
    for key, values in part.items():
        columns[key].extend(values)


def _first_byte(path: Path) -> bytes:
    """The first non-blank byte of a (possibly compressed) file: `[` marks a JSON array."""
    with _open_binary(path) as handle:
        while chunk := handle.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""


_DATASETS_BUILDER = {"json": "json", "parquet": "parquet", "csv": "csv"}
_KIND_NAME = {"json": "a JSON array of objects", "parquet": "Parquet", "csv": "CSV"}


def _csv_header(path: Path) -> list[str]:
    with _open_binary(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        try:
            return next(csv.reader(text), [])
        except (UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"{path}:1: unreadable CSV header ({err})") from err


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """`datasets`' "Generating train split" bars say nothing a user needs; turned off meanwhile."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def _load_with_datasets(path: Path, kind: str) -> datasets.Dataset:
    """A JSON array, Parquet or CSV file read by `datasets.load_dataset`'s packaged loader (a
    local file: no network). CSV columns are all read as text: a response "42" stays a string."""
    kwargs: dict[str, Any] = {}
    if kind == "csv":
        header = _csv_header(path)
        if not header:
            raise DataError(f"{path}: empty file (no CSV header)")
        kwargs = {"features": datasets.Features({name: datasets.Value("string") for name in header}),
                  "keep_default_na": False}
    try:
        with datasets_offline(True), _quiet_datasets():
            return datasets.load_dataset(_DATASETS_BUILDER[kind], data_files=str(path), split="train", **kwargs)
    except Exception as err:  # a damaged file: datasets' reason, on one line
        reason = " ".join(str(err).split())[:300]
        raise DataError(f"{path}: could not read it as {_KIND_NAME[kind]} ({type(err).__name__}: {reason})") from err


@functools.lru_cache(maxsize=16)
def hub_split_names(name: str) -> tuple[tuple[str, ...], str | None]:
    """(the splits of a Hub dataset, None), read from the local datasets cache when the Hub is
    offline; ((), why) when they cannot be read. Asked once per process: every command chooses
    its validation data more than once (to train, and to record in colm_run.json), and two
    answers from a flaky network would disagree."""
    try:
        with datasets_offline(hub_offline()):
            return tuple(datasets.get_dataset_split_names(name)), None
    except Exception as err:
        return (), f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def _load_hub(name: str, split: str | None) -> datasets.Dataset | datasets.DatasetDict:
    offline = hub_offline()
    try:
        with datasets_offline(offline):
            return datasets.load_dataset(name, split=split)
    except Exception as err:
        where = (
            "it is not in the local datasets cache and the Hub is offline "
            "(HF_HUB_OFFLINE=1 or no network)"
            if offline
            else "check the name, or pass a JSONL file or folder"
        )
        raise DataError(
            f"{name!r} is neither a local file/folder nor a loadable Hugging Face dataset: "
            f"{where} ({type(err).__name__}: {err})"
        ) from err


# ---------------------------------------------------------------- JSON Lines


def check_no_duplicates(files: Sequence[Path]) -> None:
    """Refuse two files that hold one source's split (`a.train.jsonl` and `a.train.jsonl.gz`,
    or one file under two names): both would be loaded, every example twice."""
    seen: dict[Any, Path] = {}
    for path in files:
        stat = path.stat()
        for key in (("name", strip_suffix(path.name)), ("file", stat.st_dev, stat.st_ino)):
            first = seen.setdefault(key, path)
            if first is not path:
                split = split_of(path)
                what = (f"both {strip_suffix(path.name)!r}" + (f" (split {split!r})" if split else "")
                        if key[0] == "name" else "the same file")
                raise DataError(
                    f"{first} and {path} are {what}: its examples would be loaded twice; keep one "
                    "of them (or rename one if they are different sources)"
                )


# A JSON escape of a UTF-16 surrogate (U+D800-U+DFFF); a well-formed pair decodes to one
# character, a lone one stays a surrogate, which is not text and cannot be stored or tokenized.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any, name: str) -> tuple[str, int] | None:
    """(field, character index) of the first string in `value` holding a lone surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return name, err.start
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate(item, f"{name}.{key}" if name else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{name}[{i}]")
            if found:
                return found
    return None


_OPENERS: dict[str, Any] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _open_binary(path: Path) -> Any:
    return _OPENERS.get(path.suffix, open)(path, "rb")


def _open_lines(path: Path) -> Iterator[bytes]:
    with _open_binary(path) as handle:
        yield from handle


def _read_files(paths: Sequence[Path], fields: Fields, seen: LoadReport) -> dict[str, list]:
    """Stream every file line by line into canonical columns."""
    columns: dict[str, list] = {}
    for path in paths:
        before = len(columns.get(SOURCE, []))
        stem = default_source_of(path)
        line_no = 0
        try:
            for line_no, raw in enumerate(_open_lines(path), start=1):
                if not raw.strip():
                    continue  # blank lines (a trailing newline, say) carry no example
                record = _parse_line(raw, path, line_no)
                if not columns:  # the first record fixes the format, and TRL's names
                    fields = fields.resolved(list(record), record)
                    if not seen.fields:
                        seen.fields = list(record)
                _append(columns, record, fields, stem, f"{path}:{line_no}", seen)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as err:  # truncated or non-gzip .gz
            raise DataError(f"{path}: unreadable after line {line_no}: {err}") from err
        if len(columns.get(SOURCE, [])) == before:
            raise DataError(f"{path}: empty file (no JSON objects)")
    return columns


def _parse_line(raw: bytes, path: Path, line_no: int) -> dict[str, Any]:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}:{line_no}: not UTF-8 text ({err})") from err
    except json.JSONDecodeError as err:
        hint = ("; a .json file holds one object per line (JSON Lines) or one array of objects"
                if line_no == 1 and path.name.endswith((".json", ".json.gz", ".json.bz2", ".json.xz")) else "")
        raise DataError(
            f"{path}:{line_no}: malformed JSON ({err.msg} at column {err.colno}){hint}"
        ) from err
    if not isinstance(record, dict):
        raise DataError(
            f"{path}:{line_no}: expected a JSON object per line, got {type(record).__name__}"
        )
    if b"\\u" in raw and _SURROGATE_ESCAPE.search(raw):  # rare: only then look at every string
        found = _lone_surrogate(record, "")
        if found is not None:
            field, at = found
            raise DataError(
                f"{path}:{line_no}: field {field!r} holds a lone UTF-16 surrogate escape at "
                f"character {at} (\\ud800-\\udfff without its pair), which is not text; fix or "
                "drop the escape"
            )
    return record


def _append(columns: dict[str, list], record: dict, fields: Fields, stem: str, where: str,
            seen: LoadReport) -> None:
    """Check one record and add it to the columns; the first record fixes the format."""
    if not columns:
        if fields.conversational:
            columns.update({MESSAGES: [], SOURCE: []})
        elif fields.prompt in record:
            columns.update({PROMPT: [], RESPONSE: [], SOURCE: []})
        elif fields.messages in record:
            columns.update({MESSAGES: [], SOURCE: []})
        else:
            raise DataError(
                f"{where}: missing field {fields.prompt!r} (or {fields.messages!r} for chat "
                f"data); the object has fields {sorted(record)}; {field_hint()}"
            )
    if fields.conversational:
        columns[MESSAGES].append(_conversation(record, fields, where))
    elif PROMPT in columns:
        columns[PROMPT].append(_string_field(record, fields.prompt, where))
        columns[RESPONSE].append(_string_field(record, fields.response, where))
    else:
        columns[MESSAGES].append(_messages_field(record, fields.messages, where))
    value = record.get(fields.source)
    if value is None:
        seen.rows_without_source += 1
        if fields.source != SOURCE:  # a field the user named must be there
            raise DataError(f"{where}: missing field {fields.source!r} (--source-field); the object "
                            f"has fields {sorted(record)}")
    else:
        seen.rows_with_source += 1
    columns[SOURCE].append(_source_value(value, stem, fields.source, where))


def _conversation(record: dict, fields: Fields, where: str) -> list[dict[str, str]]:
    """TRL's conversational prompt/completion row as one conversation (prompt turns first)."""
    for name in (fields.prompt, fields.response):
        if not isinstance(record.get(name), list):
            raise DataError(
                f"{where}: field {name!r} must be a list of {{role, content}} objects like the "
                f"first row's (conversational prompt/completion); the object has fields {sorted(record)}"
            )
    joined = {fields.messages: list(record[fields.prompt]) + list(record[fields.response])}
    return _messages_field(joined, fields.messages, where)


def _string_field(record: dict, name: str, where: str) -> str:
    if name not in record:
        raise DataError(
            f"{where}: missing field {name!r}; the object has fields {sorted(record)}; "
            f"{field_hint()}"
        )
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _messages_field(record: dict, name: str, where: str) -> list[dict[str, str]]:
    if name not in record:
        raise DataError(f"{where}: missing field {name!r}; the object has fields {sorted(record)}")
    messages = record[name]
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{where}: field {name!r} must be a non-empty list of {{role, content}} objects"
        )
    out = []
    for i, message in enumerate(messages):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise DataError(
                f"{where}: {name}[{i}] must be an object with string 'role' and 'content', "
                f"got {message!r:.80}"
            )
        out.append({"role": message["role"], "content": message["content"]})
    if out[-1]["role"] != "assistant":
        raise DataError(
            f"{where}: the last message of {name!r} must have role 'assistant' (it is the "
            f"supervised answer), got {out[-1]['role']!r}"
        )
    return out


def _source_value(value: Any, default: str, name: str, where: str) -> str:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return str(value)


# ---------------------------------------------------------------- `datasets` inputs


def _from_dataset(
    data: datasets.Dataset | datasets.DatasetDict,
    fields: Fields,
    split: str | None,
    default_source: str,
    seen: LoadReport | None = None,
    label: str | None = None,
    row_base: int = 0,
) -> dict[str, list]:
    """Canonical columns of a dataset; errors say `label` (default: the dataset's name) and the
    row, numbered from `row_base` (0 as `datasets` indexes rows, 1 for a file's rows)."""
    seen = seen if seen is not None else LoadReport()
    if isinstance(data, datasets.DatasetDict):
        name = split or "train"
        if name not in data:
            raise DataError(
                f"dataset {default_source!r} has no split {name!r}; splits are {sorted(data)}"
            )
        data = data[name]
    cols = data.column_names
    if not seen.fields:
        seen.fields = list(cols)
    where = label or f"dataset {default_source!r}"
    fields = fields.resolved(cols, data[0] if len(data) else None)
    if fields.conversational:
        out = {MESSAGES: [_conversation(row, fields, f"{where}, row {i + row_base}")
                          for i, row in enumerate(data.select_columns([fields.prompt, fields.response]))]}
    elif fields.prompt in cols:
        for name in (fields.prompt, fields.response):
            if name not in cols:
                raise DataError(f"{where}: missing column {name!r}; columns are {cols}; {field_hint()}")
        # `dataset[col]` is a lazy Column in datasets>=4; lists are what the checks below need.
        out = {PROMPT: list(data[fields.prompt]), RESPONSE: list(data[fields.response])}
        for key in (PROMPT, RESPONSE):
            bad = next((i for i, v in enumerate(out[key]) if not isinstance(v, str)), None)
            if bad is not None:
                raise DataError(
                    f"{where}, row {bad + row_base}: column {key!r} must hold strings, got "
                    f"{type(out[key][bad]).__name__}"
                )
    elif fields.messages in cols:
        out = {
            MESSAGES: [
                _messages_field({fields.messages: m}, fields.messages, f"{where}, row {i + row_base}")
                for i, m in enumerate(data[fields.messages])
            ]
        }
    else:
        raise DataError(
            f"{where}: missing column {fields.prompt!r} (or {fields.messages!r} for chat data); "
            f"columns are {cols}; {field_hint()}"
        )
    if len(data) == 0:
        raise DataError(f"{where}: empty (no rows)")
    out[SOURCE] = _dataset_sources(data, fields.source, default_source, seen, where)
    return out


def _dataset_sources(data: datasets.Dataset, name: str, default: str, seen: LoadReport, where: str) -> list[str]:
    if name not in data.column_names:
        if name != SOURCE:  # a column the user named must be there
            raise DataError(f"{where}: missing column {name!r} (--source-field); columns are {data.column_names}")
        seen.rows_without_source += len(data)
        return [default] * len(data)
    feature = data.features[name]
    values = list(data[name])
    if isinstance(feature, datasets.ClassLabel):  # integer labels: use their names
        seen.rows_with_source += len(values)
        return [feature.int2str(v) for v in values]
    # An empty CSV cell reads as "": no source, like a missing JSON field.
    missing = sum(1 for v in values if v is None or v == "")
    seen.rows_without_source += missing
    seen.rows_with_source += len(values) - missing
    return [default if v is None or v == "" else str(v) for v in values]


# ---------------------------------------------------------------- selection


def _filter_sources(columns: dict[str, list], sources: Sequence[str] | None) -> dict[str, list]:
    if sources is None:
        return columns
    if isinstance(sources, str):  # a lone name would otherwise be read letter by letter
        sources = [sources]
    # "a,b" (a natural way to type a list on a command line or in YAML) means ["a", "b"]
    given = sources
    sources = [name.strip() for item in sources for name in str(item).split(",") if name.strip()]
    known = sorted(set(columns[SOURCE]))
    if not sources:  # an empty --sources kept nothing, and the error blamed truncation
        raise DataError(f"sources={list(given)!r} names no source; give one or more of {known}")
    unknown = [s for s in sources if s not in known]
    if unknown:
        raise DataError(f"unknown source name(s) {unknown} in sources=; known sources are {known}")
    wanted = set(sources)
    keep = [i for i, s in enumerate(columns[SOURCE]) if s in wanted]
    return {k: [v[i] for i in keep] for k, v in columns.items()}


def _cap_per_source(columns: dict[str, list], cap: int, seed: int) -> dict[str, list]:
    if cap < 1:
        raise DataError(f"max_examples_per_source must be a positive integer, got {cap}")
    rng = np.random.default_rng(seed)
    sources = np.asarray(columns[SOURCE], dtype=object)
    keep: list[np.ndarray] = []
    for name in sorted(set(columns[SOURCE])):  # sorted: the draw must not depend on set order
        idx = np.flatnonzero(sources == name)
        keep.append(idx if len(idx) <= cap else rng.choice(idx, size=cap, replace=False))
    order = np.sort(np.concatenate(keep))
    return {k: [v[i] for i in order] for k, v in columns.items()}


def _to_dataset(columns: dict[str, list]) -> datasets.Dataset:
    text = datasets.Value("string")
    if PROMPT in columns:
        features = datasets.Features({PROMPT: text, RESPONSE: text, SOURCE: text})
    else:
        features = datasets.Features({MESSAGES: _MESSAGE_FEATURES, SOURCE: text})
    # Arrow built directly from the checked columns: `Dataset.from_dict(features=...)` would
    # re-encode every value in Python (a quarter of the load time of the shipped mixture).
    table = pa.Table.from_pydict(columns, schema=features.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))
