"""One Arrow batch of windows as the executors see it (``WindowBatch``): numpy views of its
ids, the reject reason of each row, the checks every method shares (length, ids outside the
vocabulary) and the BOS + ids model inputs; and ``Reject``, what a method returns for a window
it finds it cannot score after all. No Spark: numpy and pyarrow."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from longattn_spark.reasons import IDS_OUT_OF_VOCAB, WRONG_LENGTH
from longattn_spark.scorers.model_input import bos_and_ids


@dataclass
class WindowBatch:
    """One Arrow batch of windows as numpy views, and the reject reason of each row (None:
    still to score). Methods read ``ids(i)`` or the Arrow buffers and call ``reject``."""

    window_ids: list[str]
    categories: list[str | None]
    n_tokens: np.ndarray
    input_ids: pa.ListArray
    offsets: np.ndarray          # int64 [n + 1] into values
    values: np.ndarray           # every row's ids, concatenated
    lengths: np.ndarray          # ids per row
    nulls: np.ndarray            # input_ids is null
    reasons: list[str | None] = field(default_factory=list)
    details: list[str | None] = field(default_factory=list)

    @classmethod
    def from_arrow(cls, batch: pa.RecordBatch) -> WindowBatch:
        input_ids = batch.column("input_ids")
        offsets = input_ids.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        n = batch.num_rows
        return cls(window_ids=[str(w) for w in batch.column("window_id").to_pylist()],
                   categories=batch.column("category").to_pylist(),
                   n_tokens=batch.column("n_tokens").to_numpy(zero_copy_only=False),
                   input_ids=input_ids, offsets=offsets,
                   values=input_ids.values.to_numpy(zero_copy_only=False),
                   lengths=np.diff(offsets),
                   nulls=input_ids.is_null().to_numpy(zero_copy_only=False),
                   reasons=[None] * n, details=[None] * n)

    def __len__(self) -> int:
        return len(self.window_ids)

    def ids(self, i: int) -> np.ndarray:
        """Row ``i``'s token ids (int64)."""
        return self.values[self.offsets[i]:self.offsets[i + 1]].astype(np.int64)

    def reject(self, i: int, reason: str, detail: str) -> None:
        """Row ``i`` is not scored: a scores_rejects row (the first reason given stays)."""
        if self.reasons[i] is None:
            self.reasons[i], self.details[i] = reason, detail

    def pending(self) -> list[int]:
        """The rows not rejected, in order."""
        return [i for i, reason in enumerate(self.reasons) if reason is None]

    def rows_not_n_tokens(self) -> np.ndarray:
        """Boolean mask of the rows whose ids are null or not ``n_tokens`` of them."""
        return self.nulls | (self.lengths != self.n_tokens)

    def rows_with_ids_outside(self, vocab_size: int) -> np.ndarray:
        """Rows holding any id < 0 or >= ``vocab_size``."""
        outside = (self.values < 0) | (self.values >= vocab_size)
        counts = np.concatenate([[0], np.cumsum(outside, dtype=np.int64)])
        return np.flatnonzero(counts[self.offsets[1:]] - counts[self.offsets[:-1]] > 0)

    def model_inputs(self, seq_len: int, expected_tokens: int | None, bos_id: int,
                     vocab_size: int, what: str = "") -> np.ndarray:
        """The ``[n, seq_len]`` inputs BOS + the first ``seq_len - 1`` ids of each window (as
        LongAttn scores them), after rejecting windows of the wrong length (fewer than
        ``seq_len - 1`` ids, not ``n_tokens`` of them, or not ``expected_tokens`` when given)
        and windows with ids outside ``0 .. vocab_size - 1`` (``what``: see
        ``reject_ids_outside``). Rows of rejected windows are unused."""
        ids, long_enough = model_input_matrix(self.input_ids, seq_len, bos_id)
        wrong = ~long_enough | self.rows_not_n_tokens()
        if expected_tokens:
            wrong |= self.lengths != expected_tokens
        for i in np.flatnonzero(wrong):
            self.reject(i, WRONG_LENGTH, f"{self.lengths[i]} token ids (n_tokens column "
                                         f"{self.n_tokens[i]}); scoring needs "
                                         f"{expected_tokens or seq_len - 1}")
        self.reject_ids_outside(vocab_size, IDS_OUT_OF_VOCAB, what)
        matrix = np.full((len(self), seq_len), bos_id, dtype=np.int64)
        matrix[long_enough] = ids
        return matrix

    def reject_ids_outside(self, vocab_size: int, reason: str, what: str = "") -> None:
        """Reject every row holding an id outside ``0 .. vocab_size - 1`` (``what``: a word
        before "0..", e.g. "the model's")."""
        for i in self.rows_with_ids_outside(vocab_size):
            row = self.ids(i)
            bad = row[(row < 0) | (row >= vocab_size)]
            self.reject(i, reason, f"{bad.size} ids outside {what + ' ' if what else ''}"
                                   f"0..{vocab_size - 1}, e.g. {int(bad[0])}")


@dataclass(frozen=True)
class Reject:
    """What ``score_rows`` returns for a window it found it cannot score after all (e.g. a
    non-finite loss): a scores_rejects row with this reason (from ``longattn_spark.reasons``)."""

    reason: str
    detail: str


def model_input_matrix(input_ids: pa.ListArray, seq_len: int, bos_id: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(ids ``[N, seq_len]`` = BOS + the first seq_len-1 tokens of each long-enough row,
    boolean mask of those rows), by numpy indexing into the Arrow buffers."""
    offsets = input_ids.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = input_ids.values.to_numpy(zero_copy_only=False)
    ok = np.diff(offsets) >= seq_len - 1
    return bos_and_ids(values, offsets[:-1][ok], bos_id, seq_len), ok
