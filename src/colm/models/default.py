"""The embedded default: a small byte-level BPE tokenizer and a tiny Llama, built offline.

`colm` runs end to end with no download: the tokenizer is trained (about 2 s on 2 CPU
cores) on the train split of the math mixture shipped in `colm.data`, then cached; the
model is a freshly initialised `LlamaForCausalLM`. `load_model_and_tokenizer` picks between
this default, any Hugging Face causal LM (hub id or local folder) and a GGUF file (colm.models.gguf).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from colm.data.hub import hub_offline, looks_like_local_path
from colm.data.mixture import split_files
from colm.files import atomic_write_text, default_cache_dir
from colm.models.gguf import find_gguf, is_gguf_file, load_gguf

PAD, EOS = "<pad>", "<eos>"
#: Role markers are single special tokens so a chat turn boundary is never split.
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, EOS, *ROLE_TOKENS)
DEFAULT_VOCAB_SIZE = 4096
#: Each turn: role marker, newline, content, EOS. Without a trailing newline after EOS, the
#: supervised part of the final answer is exactly its content plus EOS.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
# Bump when the training recipe changes, so old caches are not reused.
_RECIPE_VERSION = 1
# Text the tokenizer learns from: the same framing as colm.data.DEFAULT_TEMPLATE.
_TRAIN_TEXT = "Question: {prompt}\nAnswer:\n{response}"

#: Llama shapes of the default model sizes (vocab comes from the tokenizer; embeddings tied).
MODEL_SIZES: dict[str, dict[str, int]] = {
    # ~1.18M parameters with the 4096-token default vocabulary
    "tiny": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256
    ),
    # ~3.7M
    "small": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512
    ),
    # ~10.4M
    "base": dict(
        hidden_size=384, num_hidden_layers=5, num_attention_heads=6, intermediate_size=1024
    ),
}


def default_tokenizer(
    cache_dir: str | os.PathLike | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """The default byte-level BPE tokenizer, trained on the shipped mixture once, then cached.

    The cache file is keyed by a hash of the training files and the settings, and written to a
    temporary file then renamed into place, so a concurrent or interrupted run never leaves a
    half-written tokenizer behind. A cache file that fails to load is retrained and replaced.

    Args:
        cache_dir: where to cache (default `default_cache_dir()`).
        vocab_size: vocabulary size including the special tokens.
    """
    files = split_files("train")
    key = _cache_key(files, vocab_size)
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / "tokenizers" / f"bpe{vocab_size}-{key}.json"
    backend = None
    if path.is_file():
        try:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_file(str(path))
        except Exception:  # damaged by hand or by a foreign writer: retrain below
            backend = None
    if backend is None:
        backend = _train_bpe(files, vocab_size)
        try:
            atomic_write_text(path, backend.to_str())
        except OSError as err:  # read-only home, full disk: still usable, just not cached
            warnings.warn(f"colm: could not cache the default tokenizer at {path}: {err}", stacklevel=2)
    return _wrap(backend, name=str(path))


def _cache_key(files: list[Path], vocab_size: int) -> str:
    import tokenizers

    digest = hashlib.sha256()
    settings = [_RECIPE_VERSION, vocab_size, SPECIAL_TOKENS, _TRAIN_TEXT, tokenizers.__version__]
    digest.update(json.dumps(settings).encode())
    for f in files:
        digest.update(f.name.encode())
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _training_texts(files: list[Path]):
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                yield _TRAIN_TEXT.format(prompt=record["prompt"], response=record["response"])


def _train_bpe(files: list[Path], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())  # byte-level: every byte is in the alphabet, no <unk>
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_texts(files), trainer=trainer)
    return backend


def _wrap(backend: Any, name: str) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )
    tokenizer.name_or_path = name
    return tokenizer


def default_model(tokenizer: Any, size: str = "tiny", seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by `size` ("tiny" | "small" | "base"; see MODEL_SIZES).

    Initialisation is seeded without touching the caller's global torch RNG state.
    """
    if size not in MODEL_SIZES:
        raise ValueError(f"size must be one of {sorted(MODEL_SIZES)}, got {size!r}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,  # at this scale the embedding is most of the model
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **MODEL_SIZES[size],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


# `from_pretrained` options that also concern the tokenizer; the rest (dtype, device_map, ...)
# are for the model only.
_SHARED_KWARGS = (
    "revision", "cache_dir", "token", "local_files_only", "trust_remote_code", "subfolder"
)


def load_model_and_tokenizer(
    model_id_or_path: str | os.PathLike | None = None,
    *,
    size: str = "tiny",
    seed: int = 0,
    colm_cache_dir: str | os.PathLike | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[PreTrainedModel, Any]:
    """The embedded default (None), a Hugging Face causal LM from a hub id or local folder, or a
    GGUF file (a `.gguf` path or a folder holding one; see `colm.models.gguf.load_gguf`, cached).

    Offline (HF_HUB_OFFLINE=1 or the Hub unreachable) only local files are used, so a model
    that is not there fails at once with a ValueError naming it, instead of retrying for ~20 s.
    A tokenizer without a pad token gets pad = eos.

    Args:
        model_id_or_path: hub id ("org/name"), a local folder, a `.gguf` file, or None for the
            default.
        size, seed: the default model's size and init seed (ignored for a pretrained model).
        colm_cache_dir: colm's cache: the default tokenizer (see `default_tokenizer`) and the
            converted GGUF files.
        **from_pretrained_kwargs: passed to `AutoModelForCausalLM.from_pretrained` (e.g. dtype,
            revision, cache_dir); the hub options among them (revision, cache_dir, token,
            local_files_only, trust_remote_code, subfolder) go to the tokenizer as well.
    """
    if model_id_or_path is None:
        tokenizer = default_tokenizer(colm_cache_dir)
        return default_model(tokenizer, size=size, seed=seed), tokenizer
    name = os.fspath(model_id_or_path)
    local = Path(name).expanduser()
    gguf_file = find_gguf(local) if local.exists() or is_gguf_file(local) else None
    if gguf_file is not None:
        model, tokenizer = load_gguf(gguf_file, cache_dir=colm_cache_dir, **from_pretrained_kwargs)
        return _with_pad_token(model, tokenizer, name)
    if not local.exists():
        if looks_like_local_path(name):
            raise ValueError(f"model {name!r}: no such local folder")
        if hub_offline():
            from_pretrained_kwargs["local_files_only"] = True
    source = str(local) if local.exists() else name
    try:
        shared = {k: v for k, v in from_pretrained_kwargs.items() if k in _SHARED_KWARGS}
        tokenizer = AutoTokenizer.from_pretrained(source, **shared)
        model = AutoModelForCausalLM.from_pretrained(source, **from_pretrained_kwargs)
    except OSError as err:
        hint = (
            "it is not in the local Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE=1 "
            "or no network); download it first or pass a local folder"
            if from_pretrained_kwargs.get("local_files_only")
            else "check the id or path"
        )
        raise ValueError(f"could not load model {name!r}: {hint} ({err})") from err
    return _with_pad_token(model, tokenizer, name)


def _with_pad_token(model: PreTrainedModel, tokenizer: Any, name: str) -> tuple[PreTrainedModel, Any]:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"model {name!r}: its tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
