"""Per-source validation losses for `CoresetTrainer.evaluate()` (the Trainer and TRL trainers).

`Trainer.evaluate()` returns one `eval_loss` over all rows; colm exists to improve the loss of
every source, so the trainer adds what `colm train` reports, under the same names (the CLI's
`eval/...` tags are these keys as the logging integrations rewrite them):

- `eval_loss/<source>`: each source's token-mean NLL;
- `eval_loss_mean`, `eval_loss_worst`: the mean over sources and the worst source;
- `eval_loss_overall`: the token-weighted loss over every row;
- `eval_loss_natural`: the sources weighted by their share of the training rows (left out when no
  validation source is a training source: it is undefined then).

They come from a second pass over the validation rows that keeps each row's `source` (the
Trainer's loop drops the column before the model sees it): the rows are collated by the user's
collator, as training rows are, and scored without gradients. A dataset without a source column,
or without a length (a stream), gets no per-source keys; `eval_loss` is the Trainer's as ever.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import torch

from colm.columns import SOURCE
from colm.evaluation import summarize, with_natural
from colm.features import per_example_nll


def has_sources(dataset: Any) -> bool:
    """A sized dataset whose rows carry a source (a `datasets` column, or dict rows with the key)."""
    if dataset is None or not hasattr(dataset, "__len__") or len(dataset) == 0:
        return False
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return SOURCE in names
    first = dataset[0]
    return isinstance(first, Mapping) and SOURCE in first


@torch.no_grad()
def per_source_metrics(model: Any, dataset: Any, collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
                       batch_size: int, train_rows: Mapping[str, int], prefix: str = "eval") -> dict[str, float]:
    """The per-source keys of the module docstring for `dataset`, scored by `model`.

    `collate` turns rows into a batch on the model's device with "labels" (the trainer's own
    collation); `train_rows` ({source: training rows}) weighs the natural mixture."""
    if not has_sources(dataset):
        return {}
    was_training = model.training
    model.eval()
    nll: dict[str, float] = defaultdict(float)
    tokens: dict[str, int] = defaultdict(int)
    try:
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            batch = dict(collate(rows))
            labels = batch.pop("labels", None)
            if labels is None or len(labels) != len(rows):  # no labels, or packed rows: no per-row loss
                return {}
            logits = model(**batch).logits
            sums, counts = per_example_nll(logits, labels)  # [n], [n]
            for row, s, c in zip(rows, sums.tolist(), counts.tolist()):
                nll[str(row[SOURCE])] += s
                tokens[str(row[SOURCE])] += c
    finally:
        model.train(was_training)
    per_source = {s: nll[s] / tokens[s] for s in sorted(nll) if tokens[s] > 0}
    if not per_source:
        return {}
    result = with_natural(summarize(per_source) | {"overall": sum(nll.values()) / max(1, sum(tokens.values()))},
                          train_rows)
    out = {f"{prefix}_loss_mean": result["mean"], f"{prefix}_loss_worst": result["worst"],
           f"{prefix}_loss_overall": result["overall"]}
    if math.isfinite(result["natural"]):
        out[f"{prefix}_loss_natural"] = result["natural"]
    out.update({f"{prefix}_loss/{s}": v for s, v in per_source.items()})
    return out
