"""Conventions shared by the data layer, the feature extractors and the trainer, said once."""

#: Label of a position that takes no loss (prompt tokens, padding): Hugging Face's convention.
IGNORE_INDEX = -100
#: The column naming the source (dataset of the mixture) of each training example.
SOURCE = "source"
