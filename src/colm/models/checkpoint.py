"""A trained model back from its folder: a saved model, a Trainer checkpoint-N, or a LoRA adapter
(whose base model is named in adapter_config.json, or recorded by `colm train` in colm_run.json).

Bad input raises colm.errors.InputError naming the folder (`--checkpoint` as the CLI calls it).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from colm.errors import InputError
from colm.models.loading import check_vocabulary

#: Written into a run's output dir: what `colm evaluate` needs to rebuild the base model of a
#: LoRA adapter trained on colm's embedded default (which has no Hub id to point to).
RUN_FILE = "colm_run.json"


def run_info(model_args: Any, data_args: Any, seed: int) -> dict[str, Any]:
    """What a later `colm evaluate` needs to know about how the model was trained."""
    return {
        "model": absolute_if_local(model_args.model),
        "model_size": model_args.model_size,
        "model_seed": seed,
        "lora_r": model_args.lora_r,
        "template": data_args.template,
        "use_chat_template": data_args.use_chat_template,
        "max_length": data_args.max_length,
        # The data, so `colm evaluate --checkpoint RUN` validates on the run's own by default.
        "data": absolute_if_local(data_args.data),
        "validation": _validation_of(data_args),
        "fields": {"source_field": data_args.source_field, "prompt_field": data_args.prompt_field,
                   "response_field": data_args.response_field, "messages_field": data_args.messages_field},
        "sources": data_args.sources,
    }


def _validation_of(data_args: Any) -> dict[str, Any]:
    """{"data": spec or None, "split": ...} of the run's validation data (colm.data.validation_data)."""
    from colm.data.validation_data import choose_validation

    choice = choose_validation(data_args.data, data_args.eval_data, data_args.eval_split, data_args.train_split)
    spec = choice.spec if choice.spec is None or not isinstance(choice.spec, str) else absolute_if_local(choice.spec)
    return {"data": spec, "split": choice.split}


def absolute_if_local(model: str | None) -> str | None:
    # A relative folder or .gguf path would break `colm evaluate` run from another directory.
    if model is not None and Path(model).expanduser().exists():
        return str(Path(model).expanduser().resolve())
    return model


def find_run_info(checkpoint: Path) -> dict[str, Any]:
    """colm_run.json in the checkpoint dir or its parent (a Trainer checkpoint-N); {} if none."""
    for folder in (checkpoint, checkpoint.parent):
        path = folder / RUN_FILE
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise InputError(f"{path}: malformed JSON ({err.msg})") from None
    return {}


def load_checkpoint(checkpoint: str | os.PathLike) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, run info) of a saved model folder, a Trainer checkpoint-N, or a LoRA
    adapter folder (its base: the adapter's base_model_name_or_path, or colm's embedded model
    recorded in colm_run.json)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        raise InputError(f"--checkpoint {checkpoint}: no such folder")
    info = find_run_info(path)
    has_adapter = (path / "adapter_config.json").is_file()
    has_model = (path / "config.json").is_file()
    if not (has_adapter or has_model):
        raise InputError(
            f"--checkpoint {checkpoint}: neither a model folder (config.json) nor a LoRA adapter "
            "(adapter_config.json); pass a `colm train` output dir or one of its checkpoint-N folders"
        )
    tok_dir = path if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file() else None
    if has_model:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path))
        except Exception as err:
            from colm.models.load_failures import describe_load_failure

            what = describe_load_failure(path, err)  # damaged weights, another model's config
            if what is None and not isinstance(err, (OSError, ValueError)):
                raise
            raise InputError(f"--checkpoint {checkpoint}: {what or f'could not load the model ({err})'}") from None
    else:
        model = _load_adapter(path, info)
    if tok_dir is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        except (OSError, ValueError) as err:
            raise InputError(f"--checkpoint {checkpoint}: could not load its tokenizer ({err})") from None
    elif info.get("model") is None and info:
        from colm.models.default import default_tokenizer

        tokenizer = default_tokenizer()
    else:
        raise InputError(f"--checkpoint {checkpoint}: no tokenizer files in the folder")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_vocabulary(model, tokenizer, f"--checkpoint {checkpoint}")
    from colm.models.load_failures import first_non_finite

    bad = first_non_finite(model)
    if bad is not None:  # evaluating it would print a table of nan as a result
        raise InputError(f"--checkpoint {checkpoint}: its weights are not finite numbers ({bad} holds "
                         "NaN or infinity): the run that saved them diverged")
    return model, tokenizer, info


def _load_adapter(path: Path, info: dict[str, Any]) -> Any:
    from peft import PeftModel

    config_file = path / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{config_file}: malformed JSON ({err})") from None
    base_id = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if info and info.get("model") is None:
        from colm.models.default import default_model, default_tokenizer

        size = info.get("model_size", "tiny")
        base = default_model(default_tokenizer(), size=size, seed=int(info.get("model_seed", 0)))
        base_name = f"colm's embedded {size} model (from {RUN_FILE})"
    elif base_id or info.get("model"):
        from colm.models.default import load_model_and_tokenizer

        base_name = str(info.get("model") or base_id)
        try:
            base, _ = load_model_and_tokenizer(base_name)
        except ValueError as err:
            raise InputError(f"--checkpoint {path}: the adapter's base model: {' '.join(str(err).split())}") from None
    else:
        raise InputError(
            f"--checkpoint {path}: LoRA adapter without a base model "
            f"(no base_model_name_or_path and no {RUN_FILE})"
        )
    try:
        return PeftModel.from_pretrained(base, str(path))
    except RuntimeError as err:
        mismatch = _first_size_mismatch(str(err))
        if mismatch is None:
            raise
        raise InputError(
            f"--checkpoint {path}: the LoRA adapter does not fit its base model {base_name} "
            f"({mismatch}): it was trained on another base model; point base_model_name_or_path in "
            f"adapter_config.json (or model/model_size in {RUN_FILE}) at the model it was trained on"
        ) from None


SIZE_MISMATCH = re.compile(
    r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
    r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)


def _first_size_mismatch(message: str) -> str | None:
    """'<param> is [a, b] in the adapter but [c, d] in the base' from torch's load error."""
    match = SIZE_MISMATCH.search(message)
    if match is None:
        return None
    name, saved, current = match.groups()
    return f"{name} is {saved} in the adapter but {current} in the base"
