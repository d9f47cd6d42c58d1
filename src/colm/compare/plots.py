"""PNG plots of arms trained side by side (`colm demo`): loss curves, per-source losses, selection
shares (matplotlib, headless Agg backend)."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colm.integrations.selection_log import share_series


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display needed, never opens a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    # Atomic like the reports: a temp file renamed into place.
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def loss_curves(arms: Sequence[dict[str, Any]], path: Path) -> None:
    """Validation loss vs optimizer step: the natural mixture (solid, sources weighted by their
    training-row share; when measured) and the mean over sources (dashed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, arm in enumerate(arms):
        color = f"C{i}"
        steps = [h["step"] for h in arm["history"]]
        if all("natural" in h for h in arm["history"]):
            ax.plot(steps, [h["natural"] for h in arm["history"]], "-o", color=color, ms=4,
                    label=f"{arm['label']}: natural mixture")
        ax.plot(steps, [h["mean"] for h in arm["history"]], "--", color=color, alpha=0.7,
                label=f"{arm['label']}: mean over sources")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (token NLL)")
    ax.set_title("Validation loss at equal optimizer steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def per_source_bars(arms: Sequence[dict[str, Any]], train_sizes: dict[str, int], path: Path) -> None:
    """Final validation loss per source, one bar per arm; sources by training-set size."""
    plt = _pyplot()
    sources = sorted(train_sizes, key=lambda s: -train_sizes[s])
    sources = [s for s in sources if any(s in a["final"]["per_source"] for a in arms)]
    width = 0.8 / max(1, len(arms))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * len(sources) + 2), 4.8))
    for i, arm in enumerate(arms):
        xs = [k + (i - (len(arms) - 1) / 2) * width for k in range(len(sources))]
        ys = [arm["final"]["per_source"].get(s, math.nan) for s in sources]
        ax.bar(xs, ys, width=width, label=arm["label"], color=f"C{i}")
    ax.set_xticks(range(len(sources)))
    ax.set_xticklabels([f"{s}\n({train_sizes[s]})" for s in sources], rotation=45, ha="right", fontsize=8)
    finite = [v for a in arms for v in a["final"]["per_source"].values() if math.isfinite(v)]
    if finite:  # start the axis near the data: the differences are what matter
        lo, hi = min(finite), max(finite)
        ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1e-9) - 0.05), hi + 0.1 * (hi - lo + 1e-9) + 0.05)
    ax.set_ylabel("final validation loss")
    ax.set_xlabel("source (training examples)")
    ax.set_title("Per-source validation loss after training")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def selection_shares(
    per_step: list[dict[str, Any]], train_sizes: dict[str, int], path: Path, *, window: int = 10,
    small: Sequence[str] = (),
) -> None:
    """Small multiples, one per source: its share among the selected examples over steps
    (moving window) against its share of the pool."""
    plt = _pyplot()
    sources = sorted(train_sizes, key=lambda s: -train_sizes[s])
    cols = 4
    rows = max(1, math.ceil(len(sources) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows), sharex=True, squeeze=False)
    for k, source in enumerate(sources):
        ax = axes[k // cols][k % cols]
        steps, sel, pool = share_series(per_step, source, window)
        ax.plot(steps, sel, color="C2", label="selected (coreset)")
        ax.plot(steps, pool, color="gray", ls="--", label="pool")
        tag = " (kept whole)" if source in small else ""
        ax.set_title(f"{source}{tag}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for k in range(len(sources), rows * cols):
        axes[k // cols][k % cols].axis("off")
    if len(sources) < rows * cols:  # the legend goes into the first empty panel
        axes[-1][-1].legend(handles, labels, loc="center", fontsize=9)
    else:
        fig.legend(handles, labels, loc="lower right", fontsize=8)
    fig.suptitle(f"Share of each source among selected vs pool examples ({window}-step moving window)",
                 fontsize=10)
    fig.supxlabel("optimizer step", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
