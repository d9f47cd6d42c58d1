"""The selection core: pool features + source labels -> the coreset. Imports torch (and numpy,
numba for the CPU loops) only: no transformers, peft or datasets."""
