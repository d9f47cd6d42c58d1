"""Load, check and tokenize the training and validation mixtures that DataArguments describe.

    from colm.data.arguments import DataArguments
    from colm.data.prepare import prepare_data
    data = prepare_data(DataArguments(data="my_mixture/", max_length=512), tokenizer, seed=0)
    data.train, data.eval           # tokenized: input_ids, labels, source
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colm.data.arguments import DataArguments
from colm.data.chat import as_chat, check_chat_template
from colm.data.empty_responses import check_empty_responses
from colm.data.errors import DataError
from colm.data.loading import LoadReport, load_mixture
from colm.data.mixture import default_mixture_dir
from colm.data.templating import tokenize_mixture
from colm.data.validation_data import choose_validation, match_sources
from colm.field_types import env_switch

#: Environment variable: 0 (or off/false/no) tokenizes afresh, neither reading nor writing the
#: cache of tokenized data.
DATA_CACHE_ENV = "COLM_DATA_CACHE"


def data_cache_dir() -> Path | None:
    """Where commands cache tokenized data: `default_cache_dir()/tokenized` ($COLM_CACHE, else
    ~/.cache/colm); None when $COLM_DATA_CACHE turns the cache off."""
    if not env_switch(DATA_CACHE_ENV, True):
        return None
    from colm.files import default_cache_dir

    return default_cache_dir() / "tokenized"


@dataclass
class PreparedData:
    """Raw and tokenized splits with their statistics (eval parts None without validation)."""

    train_raw: Any
    train: Any
    train_stats: dict[str, Any]
    eval_raw: Any
    eval: Any
    eval_stats: dict[str, Any] | None
    eval_spec: str | None


def _load(spec: Any, split: str | None, data_args: DataArguments, cap: int | None, seed: int,
          report: LoadReport | None = None):
    return load_mixture(
        spec, split=split,
        source_field=data_args.source_field, prompt_field=data_args.prompt_field,
        response_field=data_args.response_field, messages_field=data_args.messages_field,
        sources=data_args.sources, max_examples_per_source=cap, seed=seed, report=report,
    )


def eval_spec_for(data_args: DataArguments) -> tuple[Any, str | None]:
    """(spec, split) of the validation data by colm.data.validation_data's precedence rule:
    --eval-data, else --data's own validation split, else (None, None)."""
    choice = choose_validation(data_args.data, data_args.eval_data, data_args.eval_split, data_args.train_split)
    return choice.spec, choice.split


def prepare_data(data_args: DataArguments, tokenizer: Any, *, seed: int, need_eval: bool = False) -> PreparedData:
    """Load, filter and tokenize train (and validation) data; every problem is a DataError
    naming the file and line or the field."""
    spec = data_args.data if data_args.data is not None else default_mixture_dir()
    split = data_args.train_split
    if Path(str(spec)).expanduser().is_file():
        split = None  # one file is one split
    seen = LoadReport()
    train_raw = _load(spec, split, data_args, data_args.max_examples_per_source, seed, seen)
    train_sources = list(dict.fromkeys(map(str, train_raw["source"])))
    if seen.source_missing and data_args.data is not None:
        print(f"colm: note: {seen.source_note(train_sources)}", flush=True)
    empty = check_empty_responses(train_raw, spec, allow=data_args.allow_empty_responses)
    if data_args.use_chat_template:
        check_chat_template(tokenizer)
        train_raw = as_chat(train_raw)
    train, train_stats = tokenize_mixture(
        train_raw, tokenizer, max_length=data_args.max_length, template=data_args.template,
        cache_dir=data_cache_dir(),
    )
    train_stats["n_empty_response"] = sum(empty.values())
    if train_stats["n_examples"] == 0:
        raise DataError(f"{spec}: no training example has a supervised token left after truncation "
                        f"to --max-length {data_args.max_length}")
    choice = choose_validation(data_args.data, data_args.eval_data, data_args.eval_split, data_args.train_split)
    eval_spec, eval_split = choice.spec, choice.split
    if eval_spec is None:
        if need_eval:
            raise DataError(f"no validation data: {choice.why.split(' (')[0]}; pass --eval-data (a file "
                            "or folder), or put a validation file next to the training one (validation.jsonl)")
        print(f"colm: {choice.line()}", flush=True)
        return PreparedData(train_raw, train, train_stats, None, None, None, None)
    print(f"colm: {choice.line()}", flush=True)
    eval_seen = LoadReport()
    eval_raw = _load(eval_spec, eval_split, data_args, data_args.max_eval_examples_per_source, seed, eval_seen)
    eval_raw, note = match_sources(train_sources, eval_raw, eval_seen.source_missing, eval_seen.fields)
    if note is not None:
        print(f"colm: note: {note}", flush=True)
    if data_args.use_chat_template:
        eval_raw = as_chat(eval_raw)
    evald, eval_stats = tokenize_mixture(
        eval_raw, tokenizer, max_length=data_args.max_length, template=data_args.template,
        cache_dir=data_cache_dir(),
    )
    return PreparedData(train_raw, train, train_stats, eval_raw, evald, eval_stats, str(eval_spec))
