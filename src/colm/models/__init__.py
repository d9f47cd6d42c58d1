"""Model loading: the embedded default (tiny Llama + local tokenizer), any Hugging Face causal
LM, and GGUF files.

Imports: anything but colm.integrations and colm.cli (tests/test_layers.py checks it).
"""
