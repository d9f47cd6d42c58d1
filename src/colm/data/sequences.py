"""Build training sequences from token pieces: concatenate, mask the context, truncate.

Each row is a run of pieces (a special prefix, the context ids, the supervised ids, an EOS),
given as flat id arrays with per-row lengths. The row is the pieces concatenated and cut to
`max_length`; its labels are IGNORE_INDEX on context pieces and the ids on supervised ones.
All of it is index arithmetic on numpy arrays: no Python loop over rows or tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from colm.columns import IGNORE_INDEX


@dataclass(frozen=True)
class Piece:
    """One part of every row: row i's ids are `ids[starts[i] : starts[i] + lengths[i]]`.

    `supervised` pieces keep their ids as labels; the others are masked with IGNORE_INDEX.
    """

    ids: np.ndarray  # [total] int64
    starts: np.ndarray  # [n_rows] int64
    lengths: np.ndarray  # [n_rows] int64
    supervised: bool

    @classmethod
    def packed(cls, ids: np.ndarray, lengths: np.ndarray, supervised: bool) -> Piece:
        """Rows stored back to back in `ids` (what `token_ids` returns)."""
        return cls(ids, exclusive_cumsum(lengths), lengths, supervised)

    @classmethod
    def constant(cls, ids: list[int], n_rows: int, supervised: bool) -> Piece:
        """The same ids in every row (a BOS prefix, an EOS suffix)."""
        return cls(
            np.asarray(ids, dtype=np.int64),
            np.zeros(n_rows, dtype=np.int64),
            np.full(n_rows, len(ids), dtype=np.int64),
            supervised,
        )


@dataclass(frozen=True)
class Sequences:
    """Rows stored back to back: row i is `input_ids[offsets[i] : offsets[i + 1]]`."""

    input_ids: np.ndarray  # [total] int64
    labels: np.ndarray  # [total] int64
    offsets: np.ndarray  # [n_rows + 1] int64
    full_lengths: np.ndarray  # [n_rows] length before truncation
    n_supervised: np.ndarray  # [n_rows] supervised tokens left after truncation

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def select(self, rows: np.ndarray) -> Sequences:
        """The rows where the boolean mask `rows` is True, in order."""
        lengths = self.lengths[rows]
        index = np.repeat(self.offsets[:-1][rows], lengths) + segment_arange(lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return Sequences(
            self.input_ids[index], self.labels[index], offsets,
            self.full_lengths[rows], self.n_supervised[rows],
        )


def assemble(pieces: list[Piece], max_length: int) -> Sequences:
    """Concatenate the pieces of each row in order, keeping the first `max_length` ids."""
    n_rows = len(pieces[0].lengths)
    full = np.zeros(n_rows, dtype=np.int64)
    kept = []  # per piece: its length after truncation, and where it starts in its row
    for piece in pieces:
        position = np.minimum(full, max_length)
        kept.append((np.clip(max_length - full, 0, piece.lengths), position))
        full = full + piece.lengths
    lengths = np.minimum(full, max_length)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    input_ids = np.empty(int(offsets[-1]), dtype=np.int64)
    labels = np.empty_like(input_ids)
    n_supervised = np.zeros(n_rows, dtype=np.int64)
    for piece, (length, position) in zip(pieces, kept):
        within = segment_arange(length)
        dest = np.repeat(offsets[:-1] + position, length) + within
        values = piece.ids[np.repeat(piece.starts, length) + within]
        input_ids[dest] = values
        labels[dest] = values if piece.supervised else IGNORE_INDEX
        if piece.supervised:
            n_supervised += length
    return Sequences(input_ids, labels, offsets, full, n_supervised)


def exclusive_cumsum(lengths: np.ndarray) -> np.ndarray:
    """Start of each segment when segments of these lengths are stored back to back."""
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def segment_arange(lengths: np.ndarray) -> np.ndarray:
    """0..lengths[0]-1, 0..lengths[1]-1, ... concatenated."""
    total = int(lengths.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(exclusive_cumsum(lengths), lengths)
