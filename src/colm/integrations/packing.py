"""Selection scores, picks and weighs *examples*, so it needs one collated row per example.

Two settings break that, and are refused rather than trained wrongly:

* packing (TRL's `SFTConfig(packing=True)`) concatenates examples into fixed-length rows before
  the trainer sees them, and keeps only input_ids/labels: the `source` of each example is gone
  and a packed row mixes several examples;
* padding-free collation (TRL's `padding_free=True`, implied by `packing_strategy="bfd"`)
  flattens a micro-batch into one sequence, so the scoring pass cannot tell examples apart.

Any other collator that returns a different number of rows than it was given examples is
refused the same way when the pool is first collated.
"""
from __future__ import annotations

from typing import Any


def check_unpacked(args: Any, needs_rows: bool) -> None:
    """Raise ValueError when `args` (an SFTConfig or TrainingArguments) packs or flattens
    examples and the run needs per-example rows (selection, or loss_average="example")."""
    if not needs_rows or args is None:
        return
    if getattr(args, "packing", False):
        raise ValueError(
            "SFTConfig.packing=True concatenates examples into shared rows and drops their "
            "'source', so CoLM cannot select or weigh examples; set packing=False (pad each "
            "example instead) or train without selection (coreset_config=None)"
        )
    if getattr(args, "padding_free", False):
        raise ValueError(
            "SFTConfig.padding_free=True flattens each micro-batch into one sequence, so CoLM "
            "cannot score examples one by one; set padding_free=False or train without "
            "selection (coreset_config=None)"
        )


def check_one_row_per_example(n_examples: int, labels: Any) -> None:
    """Raise ValueError when the collator did not return one row per example."""
    n_rows = len(labels)
    if n_rows != n_examples:
        raise ValueError(
            f"the data collator returned {n_rows} row(s) for {n_examples} examples; CoLM needs "
            "one padded row per example (a packing or padding-free collator merges them): use a "
            "padding collator such as DataCollatorForSeq2Seq"
        )
