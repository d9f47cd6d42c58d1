"""colm inside training frameworks: transformers.Trainer and TRL, streams, distributed launch,
checkpoints and resume, pseudo-sources."""
