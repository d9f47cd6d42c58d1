"""Tiny causal LMs built in-process from configs (never downloaded) and padded batches.

Every model has 2 decoder layers, hidden size 32 and a 96-token vocabulary (< 100k parameters),
seeded so tests are deterministic. LoRA versions wrap the attention projections with
``init_lora_weights=False`` so lora_B is non-zero and the adapter changes the output.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

VOCAB = 96
HIDDEN = 32
LAYERS = 2
HEADS = 4


def _common() -> dict:
    return dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, intermediate_size=64, max_position_embeddings=64,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(**_common(), num_key_value_heads=2))


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    return Qwen2ForCausalLM(Qwen2Config(**_common(), num_key_value_heads=2))


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM
    return MistralForCausalLM(MistralConfig(**_common(), num_key_value_heads=2, sliding_window=None))


def _phi():
    from transformers import PhiConfig, PhiForCausalLM
    return PhiForCausalLM(PhiConfig(**_common(), partial_rotary_factor=0.5))


def _phi3():
    from transformers import Phi3Config, Phi3ForCausalLM
    return Phi3ForCausalLM(Phi3Config(**_common()))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                      n_positions=64, pad_token_id=0, bos_token_id=1,
                                      eos_token_id=2))


def _gpt_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    return GPTNeoXForCausalLM(GPTNeoXConfig(**_common(), rotary_pct=0.5))


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "llama": _llama,
    "qwen2": _qwen2,
    "mistral": _mistral,
    "phi": _phi,
    "phi3": _phi3,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
}
"""Architecture name -> builder of a freshly initialized tiny model."""

LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value", "dense"],
}
"""Attention projections LoRA wraps, per architecture."""

ARCHS = tuple(BUILDERS)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Run a test module with one intra-op thread, then restore the previous count.

    Import it into a test module to activate it. Tiny tensors gain nothing from threads, and on
    shared cores OpenMP spin-waiting made the feature tests ~8x slower (74 s vs 8 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_model(arch: str, lora: bool = False, seed: int = 0) -> nn.Module:
    """A tiny ``arch`` causal LM in fp32 eval mode; ``lora`` wraps it with a peft LoRA adapter
    (r=4, dropout 0.1 so that eval mode matters, non-zero lora_B)."""
    torch.manual_seed(seed)
    model = BUILDERS[arch]().float()
    if lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=LORA_TARGETS[arch],
                            init_lora_weights=False, fan_in_fan_out=(arch == "gpt2"))
        torch.manual_seed(seed + 1)
        model = get_peft_model(model, config)
    model.eval()
    return model


def padded_batch(n: int = 4, T: int = 12, vocab: int = VOCAB, seed: int = 0,
                 pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch: random lengths in [T//2, T] (row 0 full length), padding id ``pad_id``
    with attention 0, labels = input_ids with -100 on padding and on a random prompt prefix."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (n, T), generator=gen)
    attention_mask = torch.zeros(n, T, dtype=torch.long)
    labels = torch.full((n, T), -100, dtype=torch.long)
    for i in range(n):
        length = T if i == 0 else int(torch.randint(T // 2, T + 1, (1,), generator=gen))
        prompt = int(torch.randint(1, length // 2 + 1, (1,), generator=gen))
        attention_mask[i, :length] = 1
        input_ids[i, length:] = pad_id
        labels[i, prompt:length] = input_ids[i, prompt:length]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def reference_gradients(model: nn.Module, batch: dict[str, torch.Tensor],
                        param: torch.nn.Parameter) -> torch.Tensor:
    """Per-example gradients ``[n, param.numel()]`` of the per-example loss with respect to
    ``param``, one example at a time through the whole model (the slow, obvious reference)."""
    from colm.features import per_example_loss

    rows = []
    for i in range(batch["input_ids"].shape[0]):
        logits = model(input_ids=batch["input_ids"][i:i + 1],
                       attention_mask=batch["attention_mask"][i:i + 1]).logits
        loss = per_example_loss(logits, batch["labels"][i:i + 1])[0]
        rows.append(torch.autograd.grad(loss, param)[0].reshape(-1))
    return torch.stack(rows)
