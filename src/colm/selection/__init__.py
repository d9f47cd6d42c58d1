"""The selection core: pool features + source labels -> the coreset.

Imports: torch, numpy, numba and the standard library; of colm, only colm.config,
colm.errors, colm.field_types, colm.tagged_files and colm.selection (no transformers, peft or datasets;
tests/test_layers.py checks it).
"""
