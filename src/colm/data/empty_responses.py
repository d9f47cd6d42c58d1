"""Training examples with an empty response.

Such an example supervises one token, the end-of-sequence the templating appends, so it teaches
the model to stop answering at once. A few are usually harmless and are counted in the report
with a warning; a mixture where every response is empty (typically a wrong --response-field) is
refused unless --allow-empty-responses says it is meant.
"""
from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from colm.data.errors import DataError
from colm.data.loading import MESSAGES, RESPONSE, SOURCE


def empty_responses(raw: Any) -> dict[str, int]:
    """{source: examples} whose response (or final chat message) is empty or only whitespace."""
    if RESPONSE in raw.column_names:
        answers = raw[RESPONSE]
    elif MESSAGES in raw.column_names:
        answers = [m[-1].get("content") if m else "" for m in raw[MESSAGES]]
    else:
        return {}
    counts = Counter(
        str(src) for src, text in zip(raw[SOURCE], answers) if not str(text or "").strip()
    )
    return dict(sorted(counts.items()))


def check_empty_responses(raw: Any, spec: Any, *, allow: bool, prog: str = "colm train") -> dict[str, int]:
    """Count the empty responses of the training data; refuse all-empty data unless `allow`,
    warn (on stderr) when only some are empty. Returns {source: examples}."""
    counts = empty_responses(raw)
    n_empty, n_total = sum(counts.values()), len(raw)
    if n_empty and n_empty == n_total and not allow:
        raise DataError(
            f"{spec}: every training response is empty ({n_total} examples), so training would "
            "only teach the model to end its answer at once; check --response-field (or "
            "--messages-field), or pass --allow-empty-responses to train on them anyway"
        )
    if n_empty:
        shown = ", ".join(f"{src}: {n}" for src, n in counts.items())
        sys.stderr.write(
            f"{prog}: warning: {n_empty} of {n_total} training examples have an empty response "
            f"({shown}); they train only on the end-of-sequence token\n"
        )
    return counts
