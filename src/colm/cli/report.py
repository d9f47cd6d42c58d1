"""report.json / report.md of a run (the selection statistics they summarize come from
colm.integrations.selection_log, the whole-run training loss and the pseudo-sources from
colm.training.run_summary)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colm.files import atomic_write_json, atomic_write_text


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (floats to 4 significant decimals)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table for the terminal."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4f}"
        return str(v)

    cells = [[str(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for k, r in enumerate(cells):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def mib(n_bytes: float | None) -> str:
    return "n/a" if not n_bytes else f"{n_bytes / 2**20:.0f} MiB"


def train_markdown(report: dict[str, Any]) -> str:
    """report.md of `colm train`."""
    cfg = report["config"]
    lines = [f"# colm train report: {report['output_dir']}", ""]
    model = cfg["model"]["model"] or f"colm embedded default ({cfg['model']['model_size']})"
    lora = f"LoRA r={cfg['model']['lora_r']}" if cfg["model"]["lora_r"] else "full fine-tune"
    sel = "off (--no-coreset)" if cfg["coreset"] is None else f"CoLM, pool_factor={cfg['coreset']['pool_factor']}"
    t = cfg["training"]
    lines += [
        f"- model: {model}, {lora}",
        f"- selection: {sel}",
        f"- optimizer steps: {report['global_step']}; batch {t['per_device_train_batch_size']} x "
        f"accumulation {t['gradient_accumulation_steps']}; learning rate {t['learning_rate']}",
        f"- time per step: {report['time']['mean_s']:.3f} s mean, {report['time']['median_s']:.3f} s median "
        f"({report['time']['steps']} steps)",
        f"- peak memory: {mib(report['memory']['peak_bytes'])} ({report['memory']['description']})",
        f"- final training loss: {report.get('train_loss')}",
        *([f"- resumed from {report['resumed_from']} (the numbers cover the whole run)"]
          if report.get("resumed_from") else []),
        "",
        "## Data",
        "",
    ]
    for name in ("train", "validation"):
        st = report["data"].get(name)
        if st:
            empty = f", {st['n_empty_response']} with an empty response" if st.get("n_empty_response") else ""
            lines.append(
                f"- {name}: {st['n_examples']} examples kept of {st['n_input']} "
                f"({st['n_truncated']} truncated at {st['max_length']} tokens, {st['n_dropped']} dropped "
                f"with no answer token left{empty}); {st['n_tokens']} tokens, "
                f"{st['n_supervised_tokens']} supervised"
            )
    lines.append("")
    val = report.get("validation") or {}
    shares = (report.get("selection") or {}).get("per_source", {})
    train_sizes = report["data"]["train"]["per_source"]
    headers = ["source", "train examples"]
    if shares:
        headers += ["pool share", "selected share"]
    if val:
        headers += ["validation loss"]
    whole = kept_whole_sources(cfg["coreset"], train_sizes)
    rows = []
    for s in sorted(train_sizes, key=lambda s: -train_sizes[s]):
        row: list[Any] = [f"{s} *" if s in whole else s, train_sizes[s]]
        if shares:
            row += _shares_of(shares, s)
        if val:
            row.append(val["per_source"].get(s, math.nan))
        rows.append(row)
    lines += ["## Per source", "", table(headers, rows), ""]
    if whole:
        lines += ["\\* kept whole: every pool row of these small sources is trained, the selection picks "
                  "among the rest.", ""]
    if val:
        natural = val.get("natural")
        lines += [
            "Validation loss: "
            + (f"natural mixture {natural:.4f} (each source weighted by its share of the training "
               "rows: the loss a large random batch optimizes), " if natural is not None and math.isfinite(natural)
               else "natural mixture undefined (no validation source is a training source), ")
            + f"mean over sources {val['mean']:.4f}, worst {val['worst']:.4f} "
            f"({val['worst_source']}), token-weighted {val['overall']:.4f}.", "",
        ]
        if val.get("missing_sources"):  # a trained source without validation rows is said, not dropped
            from colm.evaluation import coverage_note

            lines += [f"**Note:** {coverage_note(val['per_source'], train_sizes)}.", ""]
    lines += pseudo_sources_markdown(report.get("pseudo_sources"), shares)
    lines += ["## Files", "", "- metrics.jsonl: every Trainer log line",
              "- selections.jsonl: every step's pool and selected examples (with selection on)",
              "- report.json: this report, machine-readable", ""]
    return "\n".join(lines)


def kept_whole_sources(coreset: dict[str, Any] | None, train_sizes: dict[str, int]) -> set[str]:
    """The sources a run's selection keeps whole: its CoresetConfig's small sources (none without
    a pool or with pseudo-sources, whose clusters are reported on their own)."""
    from colm.selection.budget import small_sources

    if not coreset or coreset.get("pool_factor", 1) < 2 or coreset.get("pseudo_sources"):
        return set()
    try:
        return set(map(str, small_sources(coreset.get("small_sources", "below_mean"), train_sizes)))
    except ValueError:
        return set()


def _shares_of(shares: dict[str, Any], source: str) -> list[float]:
    """[pool share, selected share] of `source` over the run's selections: 0 for a source (or
    cluster) that never reached a pool, since the shares are over every pool that was drawn."""
    sh = shares.get(source)
    if sh is None:
        return [0.0, 0.0] if shares else [math.nan, math.nan]
    return [sh.get("pool_share", math.nan), sh.get("selected_share", math.nan)]


def pseudo_sources_markdown(summary: dict[str, Any] | None, shares: dict[str, Any]) -> list[str]:
    """The report.md section on the clusters used as sources (none without --pseudo-sources)."""
    if not summary:
        return []
    lines = ["## Pseudo-sources", ""]
    if not summary.get("fitted"):
        return lines + [f"Not fitted: the run ended within its {summary['warmup_steps']} warm-up steps.", ""]
    ari = summary.get("ari_vs_source")
    lines += [
        f"{summary['k']} k-means clusters of the model's hidden states ({summary['rows']} rows), fitted "
        f"after {summary['fitted_at_step']} warm-up steps (embedding {summary['embed_s']:.1f} s, k-means "
        f"{summary['kmeans_s']:.1f} s); small clusters (kept whole): {', '.join(summary['small']) or 'none'}."
        + (f" Adjusted Rand index against the data's source column: {ari:.3f}." if ari is not None else ""),
        "",
    ]
    per_cluster = summary.get("sources_per_cluster") or {}
    headers = ["cluster", "rows", "pool share", "selected share"] + (["largest sources"] if per_cluster else [])
    rows = []
    for name, size in summary["sizes"].items():
        row: list[Any] = [name, size, *_shares_of(shares, name)]
        if per_cluster:
            top = list(per_cluster.get(name, {}).items())[:3]
            row.append(", ".join(f"{src} {n}" for src, n in top))
        rows.append(row)
    return lines + [table(headers, rows), ""]


def write_report(out_dir: str | Path, report: dict[str, Any], markdown: str) -> None:
    """report.json and report.md, each atomically."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", markdown)
