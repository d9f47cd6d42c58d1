"""Tiny models and mixtures for the trainer tests (built in-process, never downloaded)."""
from __future__ import annotations

import random

import torch
from datasets import Dataset
from tiny_models import BUILDERS
from transformers import DataCollatorForSeq2Seq, LlamaForCausalLM, TrainerCallback, TrainingArguments

PAD = 0  # tiny_models' pad_token_id


class TinyTokenizer:
    """Just enough of a tokenizer for DataCollatorForSeq2Seq (right padding with PAD)."""

    pad_token_id = PAD
    padding_side = "right"
    model_input_names = ["input_ids", "attention_mask"]

    def save_pretrained(self, output_dir, **_):
        return ()

    def pad(self, features, padding=True, max_length=None, pad_to_multiple_of=None, return_tensors="pt", **_):
        longest = max(len(f["input_ids"]) for f in features)
        out = {"input_ids": [], "attention_mask": []}
        for f in features:
            n = len(f["input_ids"])
            out["input_ids"].append(list(f["input_ids"]) + [PAD] * (longest - n))
            out["attention_mask"].append([1] * n + [0] * (longest - n))
        return {k: torch.tensor(v) for k, v in out.items()}


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """tiny_models' Llama (vocabulary VOCAB, pad PAD) in train mode, as the Trainer gets it."""
    torch.manual_seed(seed)
    return BUILDERS["llama"]()


def mixture(sizes: dict[str, int], seed: int = 0, min_len: int = 6, max_len: int = 14) -> Dataset:
    """Rows with input_ids/labels (prompt tokens masked) and a string `source`.

    Each source draws tokens from its own band of the vocabulary so sources differ in gradient.
    """
    rng = random.Random(seed)
    rows = []
    for s_idx, (name, count) in enumerate(sizes.items()):
        lo = 3 + 10 * s_idx
        for _ in range(count):
            n = rng.randint(min_len, max_len)
            ids = [rng.randint(lo, lo + 15) for _ in range(n)]
            prompt = rng.randint(1, n // 2)
            rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "source": name})
    rng.shuffle(rows)
    return Dataset.from_list(rows)


def separable(sizes: dict[str, int], seed: int = 0) -> Dataset:
    """Rows that repeat one token per source (random lengths and prompt cuts), with a string
    `source`: sources a model tells apart in its hidden states from its first step."""
    rng = random.Random(seed)
    rows = []
    for s_idx, (name, count) in enumerate(sizes.items()):
        for _ in range(count):
            n = rng.randint(6, 14)
            ids = [3 + 30 * s_idx] * n
            prompt = rng.randint(1, n // 2)
            rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "source": name})
    rng.shuffle(rows)
    return Dataset.from_list(rows)


def collator() -> DataCollatorForSeq2Seq:
    return DataCollatorForSeq2Seq(TinyTokenizer(), padding=True, label_pad_token_id=-100)


def training_args(out_dir, **overrides) -> TrainingArguments:
    base = dict(
        output_dir=str(out_dir), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        max_steps=6, learning_rate=5e-3, lr_scheduler_type="linear", warmup_steps=2,
        logging_steps=1, save_strategy="no", report_to=[], seed=7, data_seed=7,
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    base.update(overrides)
    return TrainingArguments(**base)


class StopAfter(TrainerCallback):
    """Interrupts training after `step` optimizer steps, as a killed job would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            control.should_training_stop = True


class KilledAt(TrainerCallback):
    """Raises KeyboardInterrupt (what Ctrl-C raises) at the end of optimizer step `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def add_to_cli_trainer(monkeypatch, callback):
    """Make `colm train` add `callback` to the trainer it builds; returns the original
    `make_trainer`, to put back with monkeypatch.setattr for a later run."""
    from colm.cli import train as train_cli

    real = train_cli.make_trainer

    def with_callback(*args, **kwargs):
        trainer = real(*args, **kwargs)
        trainer.add_callback(callback)
        return trainer

    monkeypatch.setattr(train_cli, "make_trainer", with_callback)
    return real
