"""CoresetSFTTrainer: TRL's `SFTTrainer` with CoLM selection (`pip install 'colm[trl]'`).

Exactly `CoresetTrainerMixin` + `trl.SFTTrainer`, shipped because SFTTrainer is how most people
fine-tune: its dataset preparation (prompt/completion or chat rows, chat templates,
completion-only loss, truncation) runs unchanged, and keeps every column it does not use, so a
`source` column reaches the selector. Other TRL trainers take the same mixin:
`class MyTrainer(CoresetTrainerMixin, SomeTRLTrainer)`.

Refused with an error before any tokenization (colm.integrations.packing says why): `packing=True` and
`padding_free=True` while selection is on.
"""
from __future__ import annotations

try:
    from trl import SFTTrainer
except ImportError as err:  # the optional extra is not installed
    raise ImportError(
        "colm.CoresetSFTTrainer needs TRL: pip install 'colm[trl]' (or pip install 'trl>=1.0,<2')"
    ) from err

from colm.integrations.trainer import CoresetTrainerMixin


class CoresetSFTTrainer(CoresetTrainerMixin, SFTTrainer):
    """`trl.SFTTrainer` that trains each step on a coreset of a larger pool (CoLM).

    Args:
        coreset_config: the selection settings; None or `pool_factor=1` trains like SFTTrainer.
        log_selections: also write every step's selected example ids (row indices of the
            prepared `trainer.train_dataset`) to `<output_dir>/selections.jsonl`.
        source_sizes: examples per source (required for a streamed train_dataset).
        All other arguments are `trl.SFTTrainer`'s.
    """
