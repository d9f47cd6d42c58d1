"""selections.jsonl: what CoresetTrainer selected at every step, written and read here.

One JSON line per optimizer step: `step`, `selected_ids` and `selected_sources` (the coreset),
`pool_ids` and `pool_sources` ({source: examples in the pool}), and the selector's `stats`.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from colm.files import read_jsonl

SELECTIONS_FILE = "selections.jsonl"


def append_selection(output_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one step's record to `<output_dir>/selections.jsonl`."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, SELECTIONS_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def selection_summary(path: str | Path) -> dict[str, Any] | None:
    """Per-source share of the selected examples vs share of the pool, over a selections.jsonl.

    Returns None when the file does not exist (no selection ran). Shares are over all steps;
    `per_step` keeps each step's counts for plots.
    """
    path = Path(path)
    if not path.is_file():
        return None
    selected: Counter[str] = Counter()
    pool: Counter[str] = Counter()
    per_step: list[dict[str, Any]] = []
    for rec in read_jsonl(path):
        sel = Counter(rec.get("selected_sources", []))
        pl = Counter(rec.get("pool_sources", {}))
        selected.update(sel)
        pool.update(pl)
        per_step.append({"step": rec.get("step"), "selected": dict(sel), "pool": dict(pl)})
    n_sel, n_pool = sum(selected.values()), sum(pool.values())
    sources = sorted(set(selected) | set(pool))
    per_source = {
        s: {
            "selected": selected[s],
            "pool": pool[s],
            "selected_share": selected[s] / n_sel if n_sel else math.nan,
            "pool_share": pool[s] / n_pool if n_pool else math.nan,
            # Fraction of this source's pool examples that were trained on.
            "kept_fraction": selected[s] / pool[s] if pool[s] else math.nan,
        }
        for s in sources
    }
    return {"steps": len(per_step), "n_selected": n_sel, "n_pool": n_pool,
            "per_source": per_source, "per_step": per_step}


def share_series(
    per_step: list[dict[str, Any]], source: str, window: int
) -> tuple[list[int], list[float], list[float]]:
    """Moving-window share of `source` among selected and among pool examples, per step."""
    steps, sel, pool = [], [], []
    acc: dict[str, list[int]] = defaultdict(list)
    for rec in per_step:
        acc["sel_s"].append(rec["selected"].get(source, 0))
        acc["sel_n"].append(sum(rec["selected"].values()))
        acc["pool_s"].append(rec["pool"].get(source, 0))
        acc["pool_n"].append(sum(rec["pool"].values()))
        lo = max(0, len(acc["sel_s"]) - window)
        steps.append(rec["step"])
        sel.append(sum(acc["sel_s"][lo:]) / max(1, sum(acc["sel_n"][lo:])))
        pool.append(sum(acc["pool_s"][lo:]) / max(1, sum(acc["pool_n"][lo:])))
    return steps, sel, pool
