"""What a finished run's report computes from the run itself, not from its options: the mean
training loss over the whole run (resumed parts included) and the fitted pseudo-sources."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colm.files import read_jsonl


def whole_run_train_loss(
    metrics_path: str | Path, resumed_at: int | None, loss_this_call: float, steps_this_call: int,
    history: Sequence[dict[str, Any]] | None = None,
) -> float:
    """Mean training loss per optimizer step over the whole run, resumed parts included.

    The Trainer's own number covers only the steps of this `train()` call. Before a resume at
    step `resumed_at`, the logged losses in metrics.jsonl stand for the earlier steps, each
    weighted by the steps it averages (`loss_steps`; older files: the distance to the previous
    loss line). Steps between the last log and the checkpoint were never logged: they are left
    out rather than guessed. `history` (the Trainer's log_history, restored from the checkpoint's
    trainer_state.json, which is saved with the checkpoint) is preferred when given: metrics.jsonl
    can be cut short (a full disk, an edit) and would then cover only the resumed steps.
    """
    if resumed_at is None or (history is None and not Path(metrics_path).is_file()):
        return loss_this_call
    total, steps, previous = 0.0, 0, 0
    records = history if history is not None else read_jsonl(metrics_path)
    for rec in records:
        step = rec.get("step")
        if "loss" not in rec or not isinstance(step, int) or step > resumed_at:
            continue
        covered = rec.get("loss_steps", step - previous)
        previous = step
        if isinstance(covered, int) and covered > 0 and isinstance(rec["loss"], (int, float)):
            total += float(rec["loss"]) * covered
            steps += covered
    if steps_this_call > 0:
        total += loss_this_call * steps_this_call
        steps += steps_this_call
    return total / steps if steps else loss_this_call


def pseudo_sources_report(trainer: Any, train_dataset: Any) -> dict[str, Any] | None:
    """The fitted clusters for report.json, with how the data's own sources spread over them."""
    ps = getattr(trainer, "pseudo_sources", None)
    if ps is None:
        return None
    summary = ps.summary()
    if ps.state is not None and "source" in train_dataset.column_names:
        from collections import Counter

        pairs = Counter(zip(ps.state.assignment.tolist(), train_dataset["source"]))
        by_cluster: dict[str, dict[str, int]] = {}
        for (cluster, source), count in sorted(pairs.items(), key=lambda kv: (kv[0][0], -kv[1])):
            if cluster >= 0:
                by_cluster.setdefault(f"cluster_{cluster}", {})[source] = count
        summary["sources_per_cluster"] = by_cluster
    return summary
