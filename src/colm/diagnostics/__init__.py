"""Training diagnostics that need no training framework: the gradient noise scale.

Imports: torch and the standard library; of colm, only colm.errors and colm.diagnostics
(tests/test_layers.py checks it).
"""
