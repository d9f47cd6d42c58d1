"""Per-source validation loss and generation exact-match of a causal LM.

The loss is the token-level mean NLL over supervised tokens (labels != -100) of each source, the
same quantity the Trainer minimises, so a source's number does not depend on how its examples
were batched. The mean over sources weighs every source equally: on an imbalanced mixture that is
what tells whether rare sources are learned, and the worst source is reported with it. The
*natural-mixture* loss weighs each source by its share of the training rows instead: the loss a
large random batch of the training data estimates (`mixture_losses`), reported next to the mean.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from colm import phases
from colm.data import MixtureCollator
from colm.data.templating import context_ids
from colm.features import per_example_nll

_ANSWER = re.compile(r"the answer is\s*:?\s*(.*)", re.IGNORECASE)


@torch.no_grad()
def per_source_loss(model: Any, dataset: Any, *, pad_token_id: int, batch_size: int = 32) -> dict[str, Any]:
    """Validation loss per source of a tokenized mixture (input_ids, labels, source).

    Returns {"per_source": {source: loss}, "mean": mean over sources, "worst": max over sources,
    "worst_source", "overall": token-weighted loss, "n_examples": {source: n}, "n_tokens": {...}}.
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = [dataset[i] for i in range(len(dataset))]
    # Length-sorted batches waste little compute on padding; results do not depend on order.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    nll: dict[str, float] = defaultdict(float)
    tokens: dict[str, int] = defaultdict(int)
    examples: dict[str, int] = defaultdict(int)
    collate = MixtureCollator(pad_token_id)
    try:
        for start in phases.track(range(0, len(order), batch_size), "evaluating", unit="batch"):
            chunk = [rows[i] for i in order[start : start + batch_size]]
            batch = collate(chunk)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            sums, counts = per_example_nll(logits, batch["labels"].to(device))  # [n], [n]
            for src, s, c in zip(batch["source"], sums.tolist(), counts.tolist()):
                src = str(src)
                nll[src] += s
                tokens[src] += c
                examples[src] += 1
    finally:
        model.train(was_training)
    per_source = {s: nll[s] / tokens[s] for s in sorted(nll) if tokens[s] > 0}
    return summarize(per_source) | {
        "overall": sum(nll.values()) / max(1, sum(tokens.values())),
        "n_examples": dict(sorted(examples.items())),
        "n_tokens": dict(sorted(tokens.items())),
    }


def summarize(per_source: dict[str, float]) -> dict[str, Any]:
    """Mean over sources and the worst source of a {source: value} mapping (higher = worse)."""
    if not per_source:
        return {"per_source": {}, "mean": math.nan, "worst": math.nan, "worst_source": None}
    worst = max(per_source, key=per_source.get)
    return {
        "per_source": per_source,
        "mean": sum(per_source.values()) / len(per_source),
        "worst": per_source[worst],
        "worst_source": worst,
    }


def mixture_losses(per_source: Mapping[str, float], train_rows: Mapping[str, int]) -> dict[str, Any]:
    """The natural-mixture loss, the mean over sources and the worst source of per-source losses.

    Args:
        per_source: {source: validation loss}.
        train_rows: {source: training rows}; each evaluated source is weighted by its share of
            the training rows of the evaluated sources (a source with no training rows weighs 0).

    Returns {"natural", "mean", "worst", "worst_source", "weights": {source: training share},
    "natural_coverage": share of all training rows whose source was evaluated}.

    Raises:
        ValueError: no evaluated source has a training row (the natural mixture is undefined),
            or a negative row count.
    """
    if any(int(n) < 0 for n in train_rows.values()):
        raise ValueError(f"training row counts must be >= 0, got {dict(train_rows)}")
    rows = {s: int(train_rows.get(s, 0)) for s in per_source}
    evaluated, total = sum(rows.values()), sum(int(n) for n in train_rows.values())
    if per_source and evaluated == 0:
        raise ValueError(
            f"no evaluated source {sorted(per_source)} has training rows (training sources: "
            f"{sorted(train_rows)}): the natural-mixture loss is undefined"
        )
    base = summarize(dict(per_source))
    weights = {s: rows[s] / evaluated for s in per_source} if per_source else {}
    natural = sum(weights[s] * v for s, v in per_source.items()) if per_source else math.nan
    return {
        "natural": natural, "mean": base["mean"], "worst": base["worst"],
        "worst_source": base["worst_source"], "weights": weights,
        "natural_coverage": evaluated / total if total else math.nan,
        "missing_sources": unevaluated_sources(per_source, train_rows),
    }


def unevaluated_sources(per_source: Mapping[str, Any], train_rows: Mapping[str, int]) -> list[str]:
    """The trained sources (with training rows) that have no validation loss."""
    return sorted(s for s, n in train_rows.items() if int(n) > 0 and s not in per_source)


def coverage_note(per_source: Mapping[str, Any], train_rows: Mapping[str, int]) -> str | None:
    """One sentence naming the trained sources without a validation loss, and over which sources
    the mixture losses were computed instead (None when every trained source was evaluated)."""
    missing = unevaluated_sources(per_source, train_rows)
    if not missing:
        return None
    total = sum(int(n) for n in train_rows.values())
    lost = sum(int(train_rows[s]) for s in missing)
    evaluated = sorted(s for s in per_source)
    return (f"no validation loss for trained source(s) {', '.join(missing)} ({lost} of {total} training rows, "
            f"{100 * lost / total:.1f}%): no validation rows; the natural mixture, the mean over sources and "
            f"the worst source are over the {len(evaluated)} evaluated source(s) only "
            f"({', '.join(evaluated) or 'none'})")


def with_natural(result: dict[str, Any], train_rows: Mapping[str, int]) -> dict[str, Any]:
    """A `per_source_loss` result plus "natural" (the natural-mixture loss) and
    "natural_weights" (each source's share of the training rows `train_rows`)."""
    defined = natural_defined(result["per_source"], train_rows)
    got = mixture_losses(result["per_source"], train_rows) if defined else None
    return result | {"natural": got["natural"] if got else math.nan,
                     "natural_weights": got["weights"] if got else {},
                     "missing_sources": unevaluated_sources(result["per_source"], train_rows)}


def natural_defined(per_source: Mapping[str, float], train_rows: Mapping[str, int]) -> bool:
    """Whether some evaluated source has training rows (else the natural-mixture loss is
    undefined: NaN in results, and said so, never an error after training)."""
    return any(int(train_rows.get(s, 0)) > 0 for s in per_source)


# ---------------------------------------------------------------- generation


def extract_answer(text: str) -> str:
    """The final answer in "... The answer is X." (the shipped responses' convention),
    normalized: whitespace collapsed, a trailing period dropped, case folded. Without the
    phrase, the whole text normalized (short answer-only responses)."""
    matches = _ANSWER.findall(text)
    answer = matches[-1] if matches else text
    answer = answer.strip().splitlines()[0] if answer.strip() else ""
    answer = " ".join(answer.split()).rstrip(".").strip()
    return answer.casefold()


def prompt_ids(raw: Any, tokenizer: Any, template: str) -> list[list[int]]:
    """Token ids of each example's context, exactly as training renders it before the answer."""
    return context_ids(raw, tokenizer, template)


def references(raw: Any) -> list[str]:
    """The reference response of every example (prompt/response or chat)."""
    if "messages" in raw.column_names:
        return [m[-1]["content"] for m in raw["messages"]]
    return list(raw["response"])


@torch.no_grad()
def generation_exact_match(
    model: Any,
    tokenizer: Any,
    raw: Any,
    *,
    template: str,
    max_new_tokens: int = 64,
    max_prompt_length: int = 512,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Greedy generation on each prompt; exact match of the extracted answer, per source.

    Returns summary numbers (per_source accuracy, mean over sources, n per source) and the
    individual predictions. An example whose reference has no answer (empty, or nothing after
    "The answer is") cannot be matched: it is neither a hit nor a miss, only counted in
    `n_without_reference`, and a source with no scorable example has no accuracy.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    contexts = [ids[-max_prompt_length:] for ids in prompt_ids(raw, tokenizer, template)]
    refs = references(raw)
    sources = [str(s) for s in raw["source"]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    predictions: list[dict[str, Any]] = []
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    unscorable: dict[str, int] = defaultdict(int)
    try:
        for start in phases.track(range(0, len(contexts), batch_size), "generating", unit="batch"):
            chunk = contexts[start : start + batch_size]
            longest = max(len(c) for c in chunk)
            # Left padding: every prompt ends at the same position, where generation starts.
            ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for i, c in enumerate(chunk):
                ids[i, longest - len(c):] = torch.as_tensor(c)
                mask[i, longest - len(c):] = 1
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                max_new_tokens=max_new_tokens, pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(out[:, longest:], skip_special_tokens=True)
            for j, text in enumerate(texts):
                k = start + j
                pred, ref = extract_answer(text), extract_answer(refs[k])
                hit: bool | None = None
                if ref:
                    hit = pred == ref
                    correct[sources[k]] += int(hit)
                    total[sources[k]] += 1
                else:
                    unscorable[sources[k]] += 1
                predictions.append(
                    {"source": sources[k], "prediction": pred, "reference": ref, "correct": hit,
                     "generated": text}
                )
    finally:
        model.train(was_training)
    acc = {s: correct[s] / total[s] for s in sorted(total)}
    summary = summarize(acc)
    n_scored = sum(total.values())
    return {
        "per_source": acc,
        "mean": summary["mean"],
        "n": dict(sorted(total.items())),
        "n_without_reference": dict(sorted(unscorable.items())),
        "overall": sum(correct.values()) / n_scored if n_scored else math.nan,
        "predictions": predictions,
    }


def checkpoint_natural_mixture(per_source: dict[str, float], ckpt: str | os.PathLike) -> dict[str, Any]:
    """The natural-mixture loss (per-source loss weighted by the training rows' source shares),
    with the training counts from the run's report.json (the checkpoint's folder or its parent);
    {"natural": None, ...} when no such report names them."""
    ckpt = Path(ckpt)
    for folder in (ckpt, ckpt.parent):
        path = folder / "report.json"
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))["data"]["train"]["per_source"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        try:
            got = mixture_losses(per_source, rows)
        except ValueError:  # none of the evaluated sources was trained on
            break
        return {"natural": got["natural"], "natural_weights": got["weights"], "train_rows": rows,
                "train_rows_from": str(path), "missing_sources": got["missing_sources"]}
    return {"natural": None, "natural_weights": None, "train_rows": None, "train_rows_from": None}
