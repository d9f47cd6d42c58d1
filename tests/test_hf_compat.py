"""colm's touchpoints with private parts of transformers.Trainer (colm.integrations._hf_compat):
the installed transformers has each member with the parameters colm passes, and the two loss
rules colm re-implements agree with what a Trainer step actually does."""
from __future__ import annotations

import inspect
import itertools

import pytest
import torch
import transformers
from accelerate import Accelerator
from trainer_helpers import collator, mixture, tiny_llama, training_args
from transformers import Trainer, TrainerCallback

from colm import CoresetConfig, CoresetTrainer
from colm.integrations import _hf_compat as hf

#: The parameters colm passes (or, for an override, receives), by member.
PARAMETERS = {
    "_get_dataloader": ["dataset", "description", "batch_size", "sampler_fn", "is_training"],
    "_get_train_sampler": ["train_dataset"],
    "_get_collator_with_removed_columns": ["data_collator", "description"],
    "_prepare_inputs": ["inputs"],
    "_get_num_items_in_batch": ["batch_samples", "device"],
    "_save_rng_state": ["output_dir"],
    "_maybe_log_save_evaluate": ["tr_loss", "grad_norm"],
    "get_batch_samples": ["epoch_iterator", "num_batches", "device"],
    "training_step": ["model", "inputs", "num_items_in_batch"],
    "compute_loss": ["model", "inputs", "return_outputs", "num_items_in_batch"],
}


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    return Trainer(model=tiny_llama(), args=training_args(tmp_path_factory.mktemp("compat")),
                   train_dataset=mixture({"a": 8}), data_collator=collator())


@pytest.mark.parametrize("name", [*hf.PRIVATE_MEMBERS, *hf.LOOP_MEMBERS])
def test_the_installed_transformers_has_every_member_colm_uses(trainer, name):
    missing = [line for line in hf.missing_members(trainer) if f"{name!r}" in line]
    assert not missing, missing[0]


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_members_take_the_parameters_colm_passes(name):
    params = list(inspect.signature(getattr(Trainer, name)).parameters)[1:]  # without self
    lacking = [p for p in PARAMETERS[name] if p not in params]
    assert not lacking, (
        f"transformers {transformers.__version__}: Trainer.{name} takes {params}, but colm passes "
        f"{PARAMETERS[name]} ({', '.join(lacking)} gone); update colm/integrations/_hf_compat.py"
    )


def test_colm_overrides_keep_the_trainer_signatures():
    for name in ("_get_collator_with_removed_columns", "_save_rng_state"):
        ours = inspect.signature(getattr(hf.PrivateOverrides, name))
        theirs = inspect.signature(getattr(Trainer, name))
        assert list(ours.parameters) == list(theirs.parameters), name


def _renamed(self):
    raise AttributeError("renamed in this release")


def test_a_missing_member_is_named_with_the_transformers_version(trainer):
    class Renamed(Trainer):
        # what a transformers release that renamed one member looks like from colm's side
        _get_num_items_in_batch = property(_renamed)

    stripped = Renamed.__new__(Renamed)
    stripped.__dict__.update(trainer.__dict__)
    lines = hf.missing_members(stripped)
    assert len(lines) == 1
    assert "'_get_num_items_in_batch'" in lines[0] and f"transformers {transformers.__version__}" in lines[0]


def test_the_loop_sets_the_members_colm_reads_while_training(tmp_path):
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            seen.append(hf.missing_members(trainer, training=True))

    trainer = CoresetTrainer(
        model=tiny_llama(), args=training_args(tmp_path, max_steps=1), train_dataset=mixture({"a": 16}),
        data_collator=collator(), coreset_config=CoresetConfig(pool_factor=2), callbacks=[Probe()],
    )
    trainer.train()
    assert seen == [[]], seen


class FixedLoss(Trainer):
    """compute_loss returns 3.0 (with a graph, so training_step can run backward)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return next(model.parameters()).sum() * 0 + 3.0


def test_the_accumulation_rule_is_what_training_step_does(tmp_path):
    trainer = FixedLoss(model=tiny_llama(), args=training_args(tmp_path, gradient_accumulation_steps=4),
                        train_dataset=mixture({"a": 8}), data_collator=collator())
    trainer.current_gradient_accumulation_steps = 4
    inputs = {"input_ids": torch.tensor([[5, 6, 7]])}
    cases = itertools.product([None, True, False], [True, False], [None, torch.tensor(7)], [None, lambda *a, **k: 0])
    for scaled_flag, accepts_kwargs, num_items, loss_func in cases:
        trainer.loss_is_scaled_for_ga = scaled_flag
        trainer.model_accepts_loss_kwargs = accepts_kwargs
        trainer.compute_loss_func = loss_func
        returned = trainer.training_step(trainer.model, dict(inputs), num_items).item()
        divided = returned == pytest.approx(3.0 / 4)
        assert divided or returned == pytest.approx(3.0)
        case = dict(loss_is_scaled_for_ga=scaled_flag, model_accepts_loss_kwargs=accepts_kwargs,
                    num_items=num_items is not None, compute_loss_func=loss_func is not None)
        assert hf.training_step_divides_loss(trainer, num_items) == divided, case
    trainer.model.zero_grad()


@pytest.mark.parametrize("average_tokens", [True, False])
def test_the_token_scale_is_what_compute_loss_does(tmp_path, monkeypatch, average_tokens):
    trainer = Trainer(model=tiny_llama(), args=training_args(tmp_path, average_tokens_across_devices=average_tokens),
                      train_dataset=mixture({"a": 8}), data_collator=collator())
    assert trainer.model_accepts_loss_kwargs
    # Two processes, as DDP would have them (the scale is what differs from one process).
    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    batch = collator()([{k: v for k, v in mixture({"a": 2})[i].items() if k != "source"} for i in range(2)])
    for num_items in (None, torch.tensor(11)):
        with torch.no_grad():
            theirs = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items)
            kwargs = {} if num_items is None else {"num_items_in_batch": num_items}
            model_loss = trainer.model(**batch, **kwargs).loss
        assert theirs.item() == pytest.approx(model_loss.item() * hf.token_loss_scale(trainer, num_items), rel=1e-6)


def test_a_trainer_on_a_transformers_without_a_member_fails_at_construction(tmp_path):
    class Renamed(CoresetTrainer):
        _prepare_inputs = property(_renamed)

    with pytest.raises(RuntimeError, match=rf"transformers {transformers.__version__}: Trainer has no '_prepare_inputs'"):
        Renamed(model=tiny_llama(), args=training_args(tmp_path), train_dataset=mixture({"a": 16}),
                data_collator=collator(), coreset_config=CoresetConfig(pool_factor=2))
