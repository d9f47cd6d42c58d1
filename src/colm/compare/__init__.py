"""`colm compare`'s library: arms (presets and overrides), the compute budget, one arm x seed
trained and evaluated (run.py), paired statistics and the report. It stands on colm.training
(the trainer, step timer and peak memory every command shares).

Imports: anything but colm.cli (tests/test_layers.py checks it).
"""
