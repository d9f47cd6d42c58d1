"""On-disk cache of tokenized mixtures, keyed by everything that determines their contents.

An entry is one Arrow stream file `<cache_dir>/tok-<key>.arrow`, memory-mapped when read, with
the tokenization stats in its schema metadata. The key hashes:

- the data: the content of the columns that are tokenized (not a file name or date, so an
  edited file, a different `--sources` or a re-drawn subsample is a different entry);
- the tokenizer: its serialized backend (vocabulary, merges, normalizer, pre-tokenizer,
  post-processor, added and special tokens), chat template, EOS, class and the
  transformers/tokenizers versions (a slow tokenizer: the files `save_pretrained` writes; one
  that cannot be saved is never cached); not its name, which a retrained tokenizer can share;
- the settings (prompt template or chat, max_length);
- the encoding: colm's version and the source of the modules that produce the entry, so
  changed code never reads entries the old code wrote.

Entries are written to a temporary file, flushed to disk, then renamed into place: a reader
sees a whole entry or none, and a killed writer leaves only a temporary file that is never
read (and is removed a day later). At most `MAX_ENTRIES` entries are kept, least recently used
first out.

An entry is not trusted: it records its key and a checksum of its content (every Arrow buffer
of every column), and a load checks both. A file whose content was changed (other token ids in a
well-formed file), cut short or damaged, or stored under another key, is discarded with one
warning and rebuilt, instead of training on it or failing mid-run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

# A logger, not warnings: the CLI silences library UserWarnings, and this one must be seen.
logger = logging.getLogger(__name__)
#: Entries kept; the least recently used beyond this are deleted after each write.
MAX_ENTRIES = 16
#: Age after which a leftover temporary file (from a killed writer) is deleted.
STALE_TEMP_S = 24 * 3600
_PREFIX, _SUFFIX = "tok-", ".arrow"
_META = b"colm_tokenized"
# Modules whose code decides what an entry holds.
_ENCODING_MODULES = (
    "colm.data.templating", "colm.data.sequences", "colm.data.token_ids", __name__,
)


def cache_key(data: pa.Table, tokenizer: Any, settings: dict[str, Any]) -> str | None:
    """Hex digest naming the entry for `data` tokenized by `tokenizer` with `settings`; None
    when the tokenizer cannot be serialized (it is then never cached)."""
    tokenizer_part = tokenizer_digest(tokenizer)
    if tokenizer_part is None:
        return None
    digest = hashlib.sha256()
    for part in (encoding_digest(), data_digest(data), tokenizer_part):
        digest.update(part.encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def data_digest(table: pa.Table) -> str:
    """Digest of a table's column names, types and values (not its chunking or metadata)."""
    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def tokenizer_digest(tokenizer: Any) -> str | None:
    """Digest of what a tokenizer does to text: its serialized form, not the Python object.
    None when it cannot be serialized."""
    import tokenizers
    import transformers

    digest = hashlib.sha256()
    backend = getattr(tokenizer, "_tokenizer", None)
    if hasattr(backend, "to_str"):  # a fast tokenizer: tokenizer.json holds all of it
        digest.update(backend.to_str().encode())
    else:  # a slow one: whatever files it saves (vocabulary, sentencepiece model, config)
        try:
            with tempfile.TemporaryDirectory() as folder:
                tokenizer.save_pretrained(folder)
                for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
                    digest.update(path.name.encode())
                    digest.update(path.read_bytes())
        except Exception:  # e.g. a custom class without save_vocabulary
            return None
    python_side = [
        type(tokenizer).__module__, type(tokenizer).__qualname__, tokenizer.eos_token_id,
        getattr(tokenizer, "chat_template", None), getattr(tokenizer, "split_special_tokens", None),
        transformers.__version__, tokenizers.__version__,
    ]
    digest.update(json.dumps(python_side, default=str).encode())
    return digest.hexdigest()


def encoding_digest() -> str:
    """Digest of colm's version and the source of the modules that produce an entry."""
    import importlib

    import colm

    digest = hashlib.sha256(colm.__version__.encode())
    for name in _ENCODING_MODULES:
        source = getattr(importlib.import_module(name), "__file__", None)
        if source and os.path.isfile(source):
            digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def content_digest(table: pa.Table) -> str:
    """Digest of every buffer of every column of a table read from an entry (zero-copy: the
    memory-mapped file is read once)."""
    digest = hashlib.sha256()
    for column in table.columns:
        for chunk in column.chunks:
            for buffer in chunk.buffers():
                if buffer is not None:
                    digest.update(buffer)
    return digest.hexdigest()


def _as_stored(table: pa.Table) -> pa.Table:
    """The table as a reader of the entry will see it: through the IPC stream format."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return pa.ipc.open_stream(sink.getvalue()).read_all()


class _Untrusted(ValueError):
    """An entry that must not be used; the message says why (for the one warning)."""


def entry_path(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir).expanduser() / f"{_PREFIX}{key}{_SUFFIX}"


def load(cache_dir: str | os.PathLike, key: str) -> tuple[datasets.Dataset, dict[str, Any]] | None:
    """The cached (dataset, stats) for `key`, memory-mapped; None when absent or unreadable."""
    path = entry_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        with pa.memory_map(str(path)) as source:
            stored = pa.ipc.open_stream(source)
            meta = json.loads(stored.schema.metadata[_META])
            table = stored.read_all()
        if meta.get("key") != key:
            raise _Untrusted(f"it was stored for another key ({meta.get('key')})")
        if table.num_rows != meta["n_rows"]:  # cut short at a record-batch boundary
            raise _Untrusted(f"{table.num_rows} rows instead of {meta['n_rows']}")
        if content_digest(table) != meta.get("checksum"):
            raise _Untrusted("its content does not match its checksum")
        dataset = datasets.Dataset.from_file(str(path))
    except Exception as err:  # damaged, edited or foreign: the caller rebuilds and replaces it
        why = str(err) if isinstance(err, _Untrusted) else f"unreadable ({type(err).__name__})"
        logger.warning("colm: discarding the cached tokenized data %s: %s; rebuilding it", path, why)
        return None
    try:
        os.utime(path)  # last use, for eviction
    except OSError:
        pass
    return dataset, meta["stats"]


def store(
    cache_dir: str | os.PathLike, key: str, table: pa.Table, stats: dict[str, Any]
) -> Path | None:
    """Write an entry atomically; on a disk error (read-only, full) warn and return None."""
    path = entry_path(cache_dir, key)
    checksum = content_digest(_as_stored(table.replace_schema_metadata(None)))
    record = {"key": key, "checksum": checksum, "n_rows": table.num_rows, "stats": stats}
    meta = {_META: json.dumps(record).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the entry from others sharing $COLM_CACHE
        with os.fdopen(fd, "wb") as handle:
            with pa.ipc.new_stream(handle, table.schema) as writer:
                writer.write_table(table)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        from colm.files import os_reason

        reason = (os_reason(err) or (str(err), None))[0]
        logger.warning("colm: not caching the tokenized data (training goes on without it): "
                       "writing %s: %s", path, reason)
        return None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    evict(path.parent, keep=path)
    return path


def evict(cache_dir: Path, keep: Path | None = None, max_entries: int = MAX_ENTRIES) -> None:
    """Delete the least recently used entries beyond `max_entries`, and stale temporary files."""
    try:
        entries = []
        for path in cache_dir.iterdir():
            name = path.name
            if name.startswith(f".{_PREFIX}") and name.endswith(".tmp"):
                if time.time() - path.stat().st_mtime > STALE_TEMP_S:
                    path.unlink(missing_ok=True)
            elif name.startswith(_PREFIX) and name.endswith(_SUFFIX) and path != keep:
                entries.append((path.stat().st_mtime, path))
        entries.sort(reverse=True)
        for _, path in entries[max_entries - (keep is not None):]:
            path.unlink(missing_ok=True)  # a process reading it keeps its memory map
    except OSError:  # a concurrent eviction got there first, or no permission: not an error
        pass
