"""`colm evaluate`: per-source validation loss of a checkpoint, optionally generation exact-match.

Accepts a `colm train` output dir, one of its checkpoint-N folders, any saved Hugging Face causal
LM folder, or a LoRA adapter folder.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from colm.cli.errors import OneLineArgumentParser, UsageError


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="colm evaluate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Per-source validation loss of a checkpoint (a `colm train` output dir, a "
                    "checkpoint-N folder, a saved model or a LoRA adapter); with --generate, greedy "
                    "generation and exact match of the answer after 'The answer is'.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="model folder to evaluate")
    p.add_argument("--data", default=None,
                   help="validation data: a JSON Lines/JSON/Parquet/CSV file, a folder of split files, a "
                        "saved dataset or a Hub id (default: the validation data the run recorded; the "
                        "shipped math mixture for a run trained on it or a model colm did not train)")
    p.add_argument("--split", default=None,
                   help="split of a folder or dataset to use (default: the run's, else validation)")
    p.add_argument("--sources", nargs="+", default=None, help="evaluate these sources only")
    p.add_argument("--max-examples-per-source", type=int, default=None,
                   help="at most this many examples per source (drawn with --seed)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per example (default: the training run's, else 512)")
    p.add_argument("--template", default=None,
                   help="prompt template with {prompt} (default: the training run's, else colm's)")
    p.add_argument("--use-chat-template", choices=["true", "false"], default=None,
                   help="render prompt/response rows with the tokenizer's chat template, as "
                        "`colm train --use-chat-template` does (default: the training run's, else false)")
    p.add_argument("--source-field", default=None, help="default: the run's, else source")
    p.add_argument("--prompt-field", default=None, help="default: the run's, else prompt")
    p.add_argument("--response-field", default=None, help="default: the run's, else response")
    p.add_argument("--messages-field", default=None, help="default: the run's, else messages")
    p.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    p.add_argument("--generate", action="store_true",
                   help="also generate greedily and score exact match of the extracted answer")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation length limit")
    p.add_argument("--output", default=None, metavar="FILE.json",
                   help="write the results as JSON (default: <checkpoint>/eval.json; an earlier one "
                        "is replaced, and the command says so)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-source subsampling")
    p.add_argument("--disable-tqdm", action="store_true",
                   help="no progress bars (loading, tokenization, evaluation, generation); they are "
                        "drawn only on a terminal anyway")
    return p


def run(argv: Sequence[str]) -> int:
    ns = build_parser().parse_args(list(argv))
    from colm import phases

    phases.enable(not ns.disable_tqdm)
    ckpt, output = _check_options(ns)
    from colm.cli.report import text_table
    from colm.evaluation import checkpoint_natural_mixture, generation_exact_match, per_source_loss
    from colm.files import atomic_write_json
    from colm.models.checkpoint import find_run_info

    info = find_run_info(ckpt)
    max_length, template, chat = _rendering(ns, info)
    spec, split, raw, tokenized, stats, model, tokenizer = _load(ns, ckpt, info, max_length, template, chat)
    loss = per_source_loss(model, tokenized, pad_token_id=tokenizer.pad_token_id, batch_size=ns.batch_size)
    loss.update(checkpoint_natural_mixture(loss["per_source"], ckpt))
    result: dict[str, Any] = {"checkpoint": str(ckpt), "data": str(spec), "split": split,
                              "max_length": max_length, "use_chat_template": chat,
                              "data_stats": stats, "loss": loss}
    generation = None
    if ns.generate:
        generation = generation_exact_match(
            model, tokenizer, raw, template=template, max_new_tokens=ns.max_new_tokens,
            max_prompt_length=max_length, batch_size=ns.batch_size,
        )
        result["exact_match"] = {k: v for k, v in generation.items() if k != "predictions"}
        result["predictions"] = generation["predictions"]

    # A source none of whose examples has an answer token left at max_length has no loss: say
    # so by name instead of leaving it out of the table.
    all_truncated = truncated_away(raw, stats)
    result["all_truncated"] = all_truncated
    print(text_table(*result_rows(loss, generation, all_truncated)))
    for line in notes(loss, generation, stats, all_truncated, max_length):
        print(line)
    if output.exists():
        print(f"note: replacing the earlier {output} (pass --output FILE.json to keep both)")
    atomic_write_json(output, result)
    print(f"results: {output}")
    sys.stdout.flush()
    return 0


def _check_options(ns: argparse.Namespace) -> tuple[Path, Path]:
    """(checkpoint folder, output file), refused before anything loads when they cannot work."""
    for name in ("batch_size", "max_new_tokens"):
        if getattr(ns, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(ns, name)}")
    if ns.max_length is not None and ns.max_length < 2:
        raise UsageError(f"--max-length: must be >= 2, got {ns.max_length}")
    ckpt = Path(ns.checkpoint).expanduser()
    if not ckpt.is_dir():
        raise UsageError(f"--checkpoint {ns.checkpoint}: no such folder")
    output = Path(ns.output).expanduser() if ns.output else ckpt / "eval.json"
    check_writable_file(output, "--output" if ns.output else "--checkpoint")
    return ckpt, output


def _rendering(ns: argparse.Namespace, info: dict[str, Any]) -> tuple[int, str, bool]:
    """(max length, template, chat template?): the options, else the training run's, else colm's."""
    from colm.data import DEFAULT_TEMPLATE

    max_length = ns.max_length or int(info.get("max_length") or 512)
    template = ns.template or info.get("template") or DEFAULT_TEMPLATE
    chat = ns.use_chat_template == "true" if ns.use_chat_template is not None else bool(info.get("use_chat_template"))
    if chat and ns.template:
        raise UsageError("--template: prompts are rendered with the chat template (--use-chat-template, "
                         "or the training run's); give --use-chat-template false to use --template")
    return max_length, template, chat


def _load(ns: argparse.Namespace, ckpt: Path, info: dict[str, Any], max_length: int, template: str, chat: bool):
    """(spec, split, raw rows, tokenized rows, their stats, model on its device, tokenizer); the
    data first: a data error should not wait for a model to load."""
    import torch

    from colm.data import default_mixture_dir, load_mixture, tokenize_mixture
    from colm.data.chat import as_chat, check_chat_template
    from colm.data.prepare import data_cache_dir
    from colm.models.checkpoint import load_checkpoint

    spec, split, why = evaluation_data(ns, info, default_mixture_dir())
    split = None if Path(str(spec)).expanduser().is_file() else split
    fields = {name: getattr(ns, name) or (info.get("fields") or {}).get(name) or default
              for name, default in (("source_field", "source"), ("prompt_field", "prompt"),
                                    ("response_field", "response"), ("messages_field", "messages"))}
    print(f"colm evaluate: evaluating on {spec}" + (f" (split {split!r})" if split else "") + f": {why}", flush=True)
    raw = load_mixture(
        spec, split=split, **fields, sources=ns.sources if ns.sources is not None else info.get("sources"),
        max_examples_per_source=ns.max_examples_per_source, seed=ns.seed,
    )
    model, tokenizer, _ = load_checkpoint(ckpt)
    if chat:
        check_chat_template(tokenizer)
        raw = as_chat(raw)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    tokenized, stats = tokenize_mixture(
        raw, tokenizer, max_length=max_length, template=template, cache_dir=data_cache_dir()
    )
    return spec, split, raw, tokenized, stats, model, tokenizer


def evaluation_data(ns: Any, info: dict[str, Any], shipped: Path) -> tuple[Any, str, str]:
    """(spec, split, why) of the data to evaluate on: --data; else the run's recorded validation
    data; else the shipped mixture when the run trained on it (or colm did not train the model).
    A run that recorded training data but no validation data needs --data."""
    if ns.data is not None:
        return ns.data, ns.split or "validation", "--data"
    if "validation" not in info:  # not a colm run, or one from before runs recorded their data
        why = ("the model's folder records no colm run" if not info else "the run recorded no data")
        return shipped, ns.split or "validation", f"the shipped math mixture ({why}; pass --data for other data)"
    recorded = info["validation"]
    split = ns.split or recorded.get("split") or "validation"
    if recorded.get("data") is not None:
        same = Path(str(recorded["data"])).resolve() == shipped.resolve()
        return recorded["data"], split, ("the shipped math mixture, as the run trained on it" if same
                                         else "the run's own validation data")
    if info.get("data") is None:
        return shipped, ns.split or "validation", "the shipped math mixture, as the run trained on it"
    raise UsageError(f"--data: the run trained on {info['data']} without validation data, so there is nothing of "
                     "its own to evaluate on; pass --data (a file or folder of validation rows)")



def check_writable_file(path: Path, option: str) -> None:
    """Refuse, before anything loads, an output file that could not be written at the end."""
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(
                    f"{option} {path}: cannot write in {parent} (permission denied); choose another --output"
                )
            return


def truncated_away(raw: Any, stats: dict[str, Any]) -> dict[str, int]:
    """{source: examples} of the sources that lost every example to truncation."""
    from collections import Counter

    given = Counter(str(x) for x in raw["source"])
    kept = stats.get("per_source", {})
    return {src: n for src, n in sorted(given.items()) if not kept.get(src)}


def result_rows(loss: dict[str, Any], generation: dict[str, Any] | None, all_truncated: dict[str, int]):
    """(headers, rows) of the terminal table."""
    headers = ["source", "examples", "loss"] + (["exact match"] if generation else [])
    sources = set(loss["per_source"]) | set(all_truncated) | set((generation or {}).get("n", {}))
    sources |= set((generation or {}).get("n_without_reference", {}))
    rows = []
    for src in sorted(sources):
        value: Any = loss["per_source"].get(src, "all truncated" if src in all_truncated else "—")
        row: list[Any] = [src, loss["n_examples"].get(src, 0), value]
        if generation:
            row.append(generation["per_source"].get(src, "no reference"))
        rows.append(row)
    return headers, rows


def notes(loss, generation, stats, all_truncated, max_length) -> list[str]:
    """The lines under the table: what was left out, and the summary."""
    lines = []
    if all_truncated:
        lines.append(
            f"note: every example of {', '.join(all_truncated)} lost its answer to truncation at max "
            f"length {max_length}: no loss for {'it' if len(all_truncated) == 1 else 'them'} "
            "(raise --max-length to include them)"
        )
    others = stats.get("n_dropped", 0) - sum(all_truncated.values())
    if others > 0:
        lines.append(f"note: {others} {'more ' if all_truncated else ''}examples had no answer token "
                     f"left at max length {max_length} and are not in the loss (raise --max-length "
                     "to include them)")
    unscorable = (generation or {}).get("n_without_reference", {})
    if unscorable:
        lines.append(f"note: {sum(unscorable.values())} examples have no reference answer (empty, or "
                     "nothing after 'The answer is'): not scored for exact match")
    if loss.get("missing_sources"):  # trained, but not in this evaluation data: said, not dropped
        from colm.evaluation import coverage_note

        lines.append(f"note: {coverage_note(loss['per_source'], loss['train_rows'])}")
    if loss["per_source"]:
        natural = loss.get("natural")
        line = (f"loss: natural mixture {natural:.4f} (sources weighted by their share of the training rows), "
                if natural is not None else
                "loss: natural mixture unknown (no colm train report.json with the training rows), ")
        line += f"mean over sources {loss['mean']:.4f}, worst {loss['worst']:.4f} ({loss['worst_source']})"
    else:
        line = f"loss: none (no example has an answer token left at max length {max_length})"
    if generation:
        if generation["per_source"]:
            line += (f"; exact match: mean over sources {generation['mean']:.4f}, "
                     f"overall {generation['overall']:.4f}")
        else:
            line += "; exact match: none (no example has a reference answer)"
    lines.append(line)
    return lines
