"""Load the model and tokenizer that ModelArguments describe, and wrap it in LoRA when asked.

Bad input (a model that cannot be loaded, LoRA target names the model does not have, a tokenizer
that does not fit the model) raises colm.errors.InputError naming the option.
"""
from __future__ import annotations

from typing import Any

from colm.errors import InputError
from colm.models.arguments import ModelArguments


def load_model(model_args: ModelArguments, *, seed: int) -> tuple[Any, Any]:
    """(model, tokenizer) for ModelArguments; LoRA-wrapped when --lora-r > 0.

    The embedded default is built from $COLM_CACHE (tokenizer cache); a pretrained model
    offline that is not cached fails at once with a ValueError naming it.
    """
    from colm.models.default import load_model_and_tokenizer

    kwargs: dict[str, Any] = {}
    if model_args.model is not None:
        if model_args.dtype is not None:
            import torch

            kwargs["dtype"] = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
        if model_args.trust_remote_code:
            kwargs["trust_remote_code"] = True
    try:
        model, tokenizer = load_model_and_tokenizer(
            model_args.model, size=model_args.model_size, seed=seed, **kwargs
        )
    except ValueError as err:  # the library's "cannot load this model" (it names the model)
        raise InputError(f"--model: {' '.join(str(err).split())}") from None
    check_vocabulary(model, tokenizer, f"--model {model_args.model}")
    if model_args.lora_r > 0:
        model = seeded_lora(model, model_args, seed)
    return model, tokenizer


#: Added to the run's seed for the adapters' initialisation, so that their random stream is not
#: the one the embedded default model's weights were drawn from (seeded with the seed itself).
LORA_SEED_OFFSET = 0x9E3779B9


def seeded_lora(model: Any, model_args: Any, seed: int) -> Any:
    """`apply_lora` with the adapters initialised from `seed`, leaving the global RNG as it was.

    peft draws lora_A from the global torch RNG. Unseeded, that state is whatever came before:
    random at process start (torch seeds itself from the OS), else what the previous run of the
    process left, so `colm compare`'s first run in a process was not reproducible and the arms
    of one seed did not share their adapters' initialisation."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + LORA_SEED_OFFSET)
        return apply_lora(model, model_args)


def apply_lora(model: Any, model_args: Any) -> Any:
    """A peft LoRA model (only the adapters train). Bad target names raise InputError; the
    numbers are checked by the caller (the CLI: colm.cli.settings)."""
    from peft import LoraConfig, get_peft_model

    targets: Any = model_args.lora_target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    config = LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise InputError(f"--lora-target-modules: {' '.join(str(err).split())}") from None


def check_vocabulary(model: Any, tokenizer: Any, where: str) -> None:
    """Refuse a tokenizer that can produce ids the model has no embedding for.

    Such a pair fails deep inside the first forward pass with an IndexError; a model with more
    embeddings than tokens (padded vocabularies are common) is fine.
    """
    embeddings = model.get_input_embeddings()
    n_rows = getattr(embeddings, "num_embeddings", None)
    if n_rows is not None and len(tokenizer) > n_rows:
        raise InputError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model embeds only "
            f"{n_rows}: they do not belong together; pair the model with the tokenizer it was "
            "trained with"
        )
