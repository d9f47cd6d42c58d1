"""The trainer's glue: the source order it counts in, the per-source series it logs, where the
selection's time shows up for a callback, and how it reads its base trainer's arguments."""
from __future__ import annotations

import inspect
import json
import re
import time

from datasets import IterableDataset
from trainer_helpers import collator, mixture, tiny_llama, training_args
from transformers import Trainer, TrainerCallback

import colm.integrations.trainer as trainer_module
from colm import CoresetConfig, CoresetTrainer
from colm.data import source_sizes
from colm.data.sources import count_sources
from colm.integrations._hf_compat import PRIVATE_MEMBERS
from colm.integrations.trainer import SELECTIONS_FILE, init_argument, step_budget

# Shuffled rows whose sources first appear as chat, math, code, rare: not their name order.
ORDERED = {"math": 60, "chat": 50, "code": 40, "rare": 10}


def ordered_mixture():
    return mixture(ORDERED, seed=3)


def selected_ids(tmp_path, dataset, **trainer_kwargs) -> list[list[int]]:
    trainer = CoresetTrainer(
        model=tiny_llama(), args=training_args(tmp_path, max_steps=3), train_dataset=dataset,
        data_collator=collator(), coreset_config=CoresetConfig(pool_factor=2), log_selections=True,
        **trainer_kwargs,
    )
    trainer.train()
    return [json.loads(line)["selected_ids"] for line in open(tmp_path / SELECTIONS_FILE)]


def test_one_count_in_first_appearance_order_for_data_and_trainer(tmp_path):
    ds = ordered_mixture()
    first_seen = list(dict.fromkeys(ds["source"]))
    assert first_seen != sorted(first_seen)  # else the test could not tell the orders apart
    assert list(count_sources(ds["source"])) == first_seen
    assert list(source_sizes(ds)) == first_seen  # colm.data's public count: the same order
    trainer = CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path), train_dataset=ds,
                             data_collator=collator(), coreset_config=CoresetConfig(pool_factor=2))
    assert list(trainer.selector.source_sizes) == first_seen


def test_passing_colm_datas_counts_selects_what_the_trainer_counts(tmp_path):
    ds = ordered_mixture()
    counted = selected_ids(tmp_path / "counted", ds)
    assert selected_ids(tmp_path / "given", ds, source_sizes=source_sizes(ds)) == counted
    # The order is no detail: the random picks of each source are seeded by its position.
    by_name = dict(sorted(source_sizes(ds).items()))
    assert selected_ids(tmp_path / "by_name", ds, source_sizes=by_name) != counted


def loss_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


def test_every_source_is_logged_at_every_step_zero_included(tmp_path):
    sizes = {"big_a": 60, "big_b": 50, "rare": 3}  # rare is absent from most pools
    trainer = CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=6),
                             train_dataset=mixture(sizes), data_collator=collator(),
                             coreset_config=CoresetConfig(pool_factor=2))
    trainer.train()
    logs = loss_logs(trainer)
    assert len(logs) == 6
    for h in logs:
        per_source = {k: v for k, v in h.items() if k.startswith("coreset/selected/")}
        assert set(per_source) == {f"coreset/selected/{s}" for s in sizes}
        assert sum(per_source.values()) == 8  # the budget: 4 rows x 2 micro-batches
    assert any(h["coreset/selected/rare"] == 0 for h in logs)  # the zero case was exercised


def test_after_the_pseudo_source_fit_every_cluster_is_logged_at_every_step(tmp_path):
    config = CoresetConfig(pool_factor=2, pseudo_sources=4, pseudo_source_warmup_steps=2)
    trainer = CoresetTrainer(model=tiny_llama(), args=training_args(tmp_path, max_steps=6),
                             train_dataset=mixture({"a": 60, "b": 40}), data_collator=collator(),
                             coreset_config=config)
    trainer.train()
    logs = loss_logs(trainer)
    clusters = {f"coreset/selected/{name}" for name in trainer.selector.source_sizes}
    assert clusters == {f"coreset/selected/cluster_{i}" for i in range(4)}
    for step, h in enumerate(logs):
        keys = {k for k in h if k.startswith("coreset/selected/")}
        assert keys == ({"coreset/selected/warmup"} if step < 2 else clusters), (step, keys)


class StepEvents(TrainerCallback):
    """What a user's step-timing callback sees: on_step_begin .. on_step_end, per step."""

    def __init__(self, events):
        self.events = events

    def on_step_begin(self, args, state, control, **kw):
        self.events.append(("step_begin", time.perf_counter()))

    def on_step_end(self, args, state, control, **kw):
        self.events.append(("step_end", time.perf_counter()))


def test_the_selection_time_a_step_callback_misses_is_reported_as_prepare_ms(tmp_path, monkeypatch):
    events: list[tuple[str, float]] = []
    real = trainer_module.gradient_features
    pause = 0.2  # s: a scoring pass long enough to tell where it falls

    def slow_scoring(*args, **kwargs):
        events.append(("score", time.perf_counter()))
        time.sleep(pause)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "gradient_features", slow_scoring)
    trainer = CoresetTrainer(
        model=tiny_llama(), args=training_args(tmp_path, max_steps=3), train_dataset=mixture({"a": 60, "b": 50}),
        data_collator=collator(), callbacks=[StepEvents(events)],
        coreset_config=CoresetConfig(pool_factor=2, within_source="facility_location", feature="zo", zo_probes=1),
    )
    trainer.train()
    # Each step's scoring runs before the callbacks' on_step_begin (Trainer.get_batch_samples)...
    assert [name for name, _ in events] == ["score", "step_begin", "step_end"] * 3
    logs = loss_logs(trainer)
    for step, h in enumerate(logs):
        begin = events[3 * step + 1][1]
        previous_end = events[3 * step - 1][1] if step else 0.0
        # ...so it is reported on its own: prepare_ms holds the scoring pass (score_ms) and falls
        # between the previous step's end and this step's begin, outside the callback's window.
        assert h["coreset/prepare_ms"] >= h["coreset/score_ms"] >= pause * 1e3
        if step:
            assert h["coreset/prepare_ms"] <= (begin - previous_end) * 1e3


def test_step_budget():
    # (pool rows, unsupervised rows, micro-batches, pool_factor, world size)
    assert step_budget(16, 0, 2, 2, 1) == 8  # a full pool of 2 x 8: the optimizer's batch
    assert step_budget(15, 1, 2, 2, 1) == 8  # rows left out as unsupervised were loaded: same
    assert step_budget(6, 0, 2, 2, 1) == 3  # a short last step shrinks with its pool
    assert step_budget(3, 0, 3, 2, 1) == 3  # but keeps one row per micro-batch
    assert step_budget(10, 0, 1, 2, 4) == 8  # a multiple of the world size (4 ranks x 2)
    assert step_budget(7, 0, 1, 1, 4) == 7  # and never more than the pool


class _ForwardingTrainer(Trainer):
    """A base trainer that takes everything as *args/**kwargs and passes it on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)


def test_init_argument_binds_positions_and_keywords_by_the_signature():
    trainer_sig = inspect.signature(Trainer)
    model, targs, coll, data = object(), object(), object(), object()
    positional = (model, targs, coll, data)
    assert init_argument([trainer_sig], positional, {}, "args") is targs
    assert init_argument([trainer_sig], positional, {}, "train_dataset") is data
    assert init_argument([trainer_sig], (model,), {"train_dataset": data}, "train_dataset") is data
    assert init_argument([trainer_sig], (model,), {}, "args") is None
    # *args/**kwargs say nothing: the next signature (the Trainer's) binds them.
    forwarding = inspect.signature(_ForwardingTrainer)
    assert list(forwarding.parameters) == ["args", "kwargs"]  # a *args named like the Trainer's `args`
    assert init_argument([forwarding, trainer_sig], positional, {}, "train_dataset") is data
    assert init_argument([forwarding, trainer_sig], positional, {}, "args") is targs


def test_a_stream_passed_by_position_is_recognised_before_the_base_trainer_runs(tmp_path):
    rows = [dict(r) for r in mixture({"a": 16})]
    stream = IterableDataset.from_generator(lambda: iter(rows))
    args = training_args(tmp_path, max_steps=1)
    assert args.accelerator_config.dispatch_batches is not False
    CoresetTrainer(tiny_llama(), args, collator(), stream,
                   coreset_config=CoresetConfig(pool_factor=2), source_sizes={"a": 16})
    assert args.accelerator_config.dispatch_batches is False


def test_the_trainer_module_names_no_private_trainer_member():
    source = inspect.getsource(trainer_module)
    used = [name for name in PRIVATE_MEMBERS if re.search(rf"\b(self|super\(\)|trainer)\.{name}\b", source)]
    assert not used, f"integrations/trainer.py uses {used} directly; go through integrations/_hf_compat"
