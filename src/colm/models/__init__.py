"""Model loading: the embedded default (tiny Llama + local tokenizer), any Hugging Face causal
LM, and GGUF files."""
