"""colm inside training frameworks: transformers.Trainer and TRL, streams, distributed launch,
checkpoints and resume, pseudo-sources.

Imports: anything but colm.training, colm.compare and colm.cli (tests/test_layers.py checks it).
"""
