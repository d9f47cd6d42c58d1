"""One run's preparation, shared by `colm train`, `colm compare` and `colm demo`: the model and
tokenizer, the data (tokenized, checked), and the seeds and batch sizes derived from the
TrainingArguments, all loaded and checked before anything is written."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from colm.data import prepare
from colm.data.arguments import DataArguments
from colm.data.prepare import PreparedData
from colm.models import loading
from colm.models.arguments import ModelArguments


@dataclass
class RunPlan:
    """What a run trains and validates on. `model` is None once the caller dropped it (a
    comparison builds a fresh model per arm x seed with `new_model`)."""

    model_args: ModelArguments
    model: Any
    tokenizer: Any
    data: PreparedData
    data_seed: int
    eval_batch_size: int

    @property
    def train_rows(self) -> dict[str, int]:
        """{source: training rows}: the natural mixture's weights."""
        return dict(self.data.train_stats["per_source"])

    def new_model(self, seed: int) -> Any:
        """A freshly loaded (and LoRA-wrapped) model initialised from `seed`."""
        return loading.load_model(self.model_args, seed=seed)[0]


def data_seed(targs: Any) -> int:
    """The seed of the data order and subsampling: --data-seed, else --seed (as the Trainer's)."""
    return targs.data_seed if targs.data_seed is not None else targs.seed


def eval_batch_size(targs: Any) -> int:
    """Validation rows per forward pass: --per-device-eval-batch-size, at least 8."""
    return max(8, targs.per_device_eval_batch_size)


def prepare_run(model_args: ModelArguments, data_args: DataArguments, targs: Any, *,
                model_seed: int | None = None, need_eval: bool = False) -> RunPlan:
    """Load the model (initialised from `model_seed`, default targs.seed) and prepare the data
    (subsampled and ordered with `data_seed(targs)`); `need_eval` refuses data without a
    validation split. Bad input raises InputError or DataError naming the option or file."""
    # Called through their modules, so a test can replace them where they are defined.
    model, tokenizer = loading.load_model(model_args, seed=targs.seed if model_seed is None else model_seed)
    seed = data_seed(targs)
    data = prepare.prepare_data(data_args, tokenizer, seed=seed, need_eval=need_eval)
    return RunPlan(model_args=model_args, model=model, tokenizer=tokenizer, data=data, data_seed=seed,
                   eval_batch_size=eval_batch_size(targs))
