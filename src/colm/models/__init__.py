"""Model loading: the embedded default (tiny Llama + local tokenizer), any Hugging Face causal
LM, and GGUF files; `load_model(ModelArguments(...))` with LoRA (loading.py), and a trained
model back from its folder or LoRA adapter (checkpoint.py).

Imports: anything but colm.integrations, colm.training, colm.compare and colm.cli
(tests/test_layers.py checks it).
"""
