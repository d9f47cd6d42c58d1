"""Tiny GGUF files written in-process with the `gguf` package's writer (never downloaded).

`write_tiny_llama` saves a seeded 2-layer Llama (hidden 32, vocabulary 262) with F32 tensors and a
byte-level BPE tokenizer in llama.cpp's metadata layout, and returns the model it was written from,
so a test can compare what transformers reads back against it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HEADS, KV_HEADS, LAYERS, HIDDEN = 4, 2, 2, 32
# byte-level with 3 merges: about one token per character, so a math example needs a long context
CONTEXT = 1024
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # bos, -, eos
MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"))
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)
# llama.cpp token types
_NORMAL, _CONTROL = 1, 3


def byte_level_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): the specials, the 256 byte symbols of byte-level BPE, then
    one token per merge."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [*SPECIALS, *bytes_to_unicode().values(), *("".join(m) for m in MERGES)]
    types = [_CONTROL] * len(SPECIALS) + [_NORMAL] * (len(tokens) - len(SPECIALS))
    return tokens, types, [" ".join(m) for m in MERGES]


def _rotary_pairs_interleaved(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """q/k rows as llama.cpp stores them: within each head, the two rotary halves interleaved
    (row i of the first half next to row i of the second). transformers undoes this on load."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_llama(path: str | Path, *, architecture: str = "llama", seed: int = 0) -> torch.nn.Module:
    """Write a tiny Llama GGUF file at `path`; returns the reference model (fp32, eval mode).

    `architecture` is the `general.architecture` written (and the prefix of the hyperparameter
    keys); anything but "llama" makes a file transformers cannot load.
    """
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens, types, merges = byte_level_vocab()
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=2, rms_norm_eps=1e-5, rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms initialise to 1; perturb them so a mix-up of norms would show
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    weights = {name: t.numpy() for name, t in model.state_dict().items()}

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("colm-tiny-test")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(64)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)  # no padding id: colm must fall back to pad = eos
    writer.add_chat_template(CHAT_TEMPLATE)

    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])  # tied: no output.weight
    for i in range(LAYERS):
        layer = f"model.layers.{i}."
        for gguf_name, hf_name in (
            ("attn_norm", "input_layernorm"), ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"), ("ffn_norm", "post_attention_layernorm"),
            ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
        ):
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", weights[f"{layer}{hf_name}.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight",
                          _rotary_pairs_interleaved(weights[f"{layer}self_attn.q_proj.weight"], HEADS))
        writer.add_tensor(f"blk.{i}.attn_k.weight",
                          _rotary_pairs_interleaved(weights[f"{layer}self_attn.k_proj.weight"], KV_HEADS))
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
