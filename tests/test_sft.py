"""CoLM through TRL's SFTTrainer (colm.CoresetSFTTrainer = CoresetTrainerMixin + SFTTrainer) on a
tiny Llama: prompt/completion and chat rows with a `source` column survive TRL's dataset
preparation, every step trains exactly the coreset chosen from its pool, small sources are kept
whole, resume is exact, and settings that merge examples are refused before tokenization."""
from __future__ import annotations

import json
import random

import pytest
import torch

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from trainer_helpers import tiny_llama  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from colm import CoresetConfig, CoresetSFTTrainer, CoresetTrainerMixin  # noqa: E402
from colm.integrations.trainer import SELECTIONS_FILE, SELECTOR_STATE_FILE  # noqa: E402

SIZES = {"big_a": 60, "big_b": 50, "rare": 10}
SPECIALS = ["<pad>", "<s>", "<eos>", "<|user|>", "<|assistant|>"]
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 ?:.\n"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (46 ids, inside tiny_llama's 96), built in-process."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="<eos>",
        additional_special_tokens=["<|user|>", "<|assistant|>"], chat_template=CHAT_TEMPLATE,
    )


def rows(chat: bool = False, seed: int = 0) -> Dataset:
    """Prompt/completion (or user/assistant) rows; each source writes with its own letters."""
    rng = random.Random(seed)
    out = []
    for s_idx, (name, count) in enumerate(SIZES.items()):
        letters = "abcdefghijklmnopqrstuvwxyz"[8 * s_idx : 8 * s_idx + 8]
        for _ in range(count):
            prompt = "".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) + "?"
            answer = "".join(rng.choice(letters + " ") for _ in range(rng.randint(3, 10)))
            if chat:
                out.append({"messages": [{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": answer}], "source": name})
            else:
                out.append({"prompt": prompt, "completion": answer, "source": name})
    rng.shuffle(out)
    return Dataset.from_list(out)


def sft_args(out_dir, **overrides) -> trl.SFTConfig:
    base = dict(
        output_dir=str(out_dir), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        max_steps=4, learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to=[],
        seed=7, data_seed=7, use_cpu=True, bf16=False, gradient_checkpointing=False,
        dataloader_num_workers=0, disable_tqdm=True, max_length=48,
    )
    base.update(overrides)
    return trl.SFTConfig(**base)


class Recording(CoresetSFTTrainer):
    """Remembers the input_ids and labels of every micro-batch the model trains on."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen = getattr(self, "seen", [])
        self.seen.append((self.state.global_step, inputs["input_ids"].clone(), inputs["labels"].clone(),
                          inputs["attention_mask"].clone()))
        return super().training_step(model, inputs, num_items_in_batch)


def make(out_dir, dataset=None, cls=CoresetSFTTrainer, **overrides):
    return cls(
        model=tiny_llama(), args=sft_args(out_dir, **overrides), train_dataset=dataset or rows(),
        processing_class=char_tokenizer(), coreset_config=CoresetConfig(pool_factor=2, zo_probes=2, within_source="facility_location", feature="zo"),
        log_selections=True,
    )


def selections(out_dir) -> list[dict]:
    return [json.loads(line) for line in open(out_dir / SELECTIONS_FILE)]


def test_sft_trains_exactly_the_selected_rows_with_small_sources_whole(tmp_path):
    trainer = make(tmp_path, cls=Recording)
    # TRL tokenized the rows and kept the source column
    assert {"input_ids", "source"} <= set(trainer.train_dataset.column_names)
    trainer.train()
    assert trainer.state.global_step == 4
    records = selections(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    prepared = trainer.train_dataset
    for step, rec in enumerate(records):
        assert len(rec["pool_ids"]) == 16 and len(rec["selected_ids"]) == 8
        assert set(rec["selected_ids"]) <= set(rec["pool_ids"])
        assert [prepared[i]["source"] for i in rec["selected_ids"]] == rec["selected_sources"]
        # the rare source is below the mean size: every pool row of it is trained
        assert rec["selected_sources"].count("rare") == rec["pool_sources"].get("rare", 0)
        trained = sorted(
            tuple(ids[mask.bool()].tolist())
            for s, batch_ids, _, batch_mask in trainer.seen if s == step
            for ids, mask in zip(batch_ids, batch_mask)
        )
        assert trained == sorted(tuple(prepared[i]["input_ids"]) for i in rec["selected_ids"])
    # completion-only loss: every trained row has masked prompt tokens and supervised ones
    for _, _, labels, mask in trainer.seen:
        for lab, m in zip(labels, mask):
            assert (lab[m.bool()] == -100).any() and (lab[m.bool()] != -100).any()
    assert sum(r["pool_sources"].get("rare", 0) for r in records) > 0  # the check above ran


def test_sft_chat_rows_with_a_peft_config(tmp_path):
    peft = pytest.importorskip("peft")
    trainer = CoresetSFTTrainer(
        model=tiny_llama(), args=sft_args(tmp_path, max_steps=2), train_dataset=rows(chat=True),
        processing_class=char_tokenizer(), coreset_config=CoresetConfig(pool_factor=2, zo_probes=2, within_source="facility_location", feature="zo"),
        peft_config=peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        log_selections=True,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert any("lora_B" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    for rec in selections(tmp_path):
        assert set(rec["selected_ids"]) <= set(rec["pool_ids"]) and len(rec["selected_ids"]) == 8
        assert rec["selected_sources"].count("rare") == rec["pool_sources"].get("rare", 0)


def test_sft_resume_equals_uninterrupted(tmp_path):
    full = make(tmp_path / "full", max_steps=4, save_strategy="steps", save_steps=2)
    full.train()

    class StopAt2(trl.trainer.sft_trainer.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            control.should_training_stop = state.global_step >= 2

    part = make(tmp_path / "part", max_steps=4, save_strategy="steps", save_steps=2)
    part.add_callback(StopAt2())
    part.train()
    assert (tmp_path / "part" / "checkpoint-2" / SELECTOR_STATE_FILE).is_file()
    resumed = make(tmp_path / "part", max_steps=4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    assert [r["selected_ids"] for r in selections(tmp_path / "part")] == \
        [r["selected_ids"] for r in selections(tmp_path / "full")]
    for (name, p1), (_, p2) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("setting, needle", [
    (dict(packing=True), "SFTConfig.packing=True"),
    (dict(padding_free=True, max_length=None), "SFTConfig.padding_free=True"),
])
def test_settings_that_merge_examples_are_refused_before_tokenizing(tmp_path, setting, needle):
    class NoPreparation(CoresetSFTTrainer):
        def _prepare_dataset(self, *a, **k):
            raise AssertionError("the dataset was prepared before the refusal")

    with pytest.raises(ValueError, match=needle):
        make(tmp_path, cls=NoPreparation, **setting)


def test_packing_without_selection_is_plain_sft(tmp_path):
    trainer = CoresetSFTTrainer(
        model=tiny_llama(), args=sft_args(tmp_path, max_steps=1, packing=True), train_dataset=rows(),
        processing_class=char_tokenizer(), coreset_config=None,
    )
    trainer.train()
    assert trainer.state.global_step == 1


def test_the_mixin_after_sft_trainer_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"put CoresetTrainerMixin first.*\(CoresetTrainerMixin, SFTTrainer\)"):
        class Wrong(trl.SFTTrainer, CoresetTrainerMixin):  # noqa: F841
            pass


def test_sft_on_a_streamed_dataset_with_declared_source_sizes(tmp_path):
    trainer = CoresetSFTTrainer(
        model=tiny_llama(), args=sft_args(tmp_path, max_steps=3), train_dataset=rows().to_iterable_dataset(),
        processing_class=char_tokenizer(), coreset_config=CoresetConfig(pool_factor=2, zo_probes=2, within_source="facility_location", feature="zo"),
        source_sizes=SIZES, log_selections=True,
    )
    trainer.train()
    records = selections(tmp_path)
    assert trainer.state.global_step == 3 and [r["pool_ids"][0] for r in records] == [0, 16, 32]
    for rec in records:
        assert rec["selected_sources"].count("rare") == rec["pool_sources"].get("rare", 0)


def test_pseudo_sources_cluster_the_prepared_rows(tmp_path):
    # SFTTrainer's rows carry a completion mask, not labels: the embedding pass goes through its
    # collator, like the pools, so every row has supervised positions to average over
    trainer = CoresetSFTTrainer(
        model=tiny_llama(), args=sft_args(tmp_path, max_steps=3), train_dataset=rows(), processing_class=char_tokenizer(),
        coreset_config=CoresetConfig(pool_factor=2, zo_probes=1, pseudo_sources=3, pseudo_source_warmup_steps=1, within_source="facility_location", feature="zo"),
        log_selections=True,
    )
    trainer.train()
    state = trainer.pseudo_sources.state
    assert state.fitted_at_step == 1 and sum(state.sizes().values()) == 120 and state.k == 3
    records = [json.loads(line) for line in open(tmp_path / SELECTIONS_FILE)]
    assert records[0]["pool_sources"] == {"warmup": 16}
    for rec in records[1:]:
        assert rec["selected_sources"] == [f"cluster_{int(state.assignment[i])}" for i in rec["selected_ids"]]
