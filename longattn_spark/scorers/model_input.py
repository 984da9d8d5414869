"""The model input every method that scores a window as a sequence uses: BOS, then the
window's first L - 1 token ids (L = seq_len), one row per window, built by numpy indexing
without a per-row Python loop where the ids come as one buffer (Arrow). Pure: numpy only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from longattn_spark.errors import InputError


def bos_and_ids(values: np.ndarray, starts: np.ndarray, bos_id: int, seq_len: int
                ) -> np.ndarray:
    """int64 ``[len(starts), seq_len]``: BOS, then the ``seq_len - 1`` ids of ``values`` from
    each of ``starts`` (every start must have that many ids after it)."""
    gather = starts[:, None] + np.arange(seq_len - 1, dtype=np.int64)[None, :]
    ids = np.empty((starts.shape[0], seq_len), dtype=np.int64)
    ids[:, 0] = bos_id
    ids[:, 1:] = values[gather] if starts.size else np.empty((0, seq_len - 1))
    return ids


def windows_with_bos(windows: Sequence[np.ndarray], bos_id: int, seq_len: int) -> np.ndarray:
    """int64 ``[len(windows), seq_len]``: BOS followed by each window's first ``seq_len - 1``
    ids; one-line ``InputError`` naming the first window with fewer ids (or not 1-D)."""
    for index, window in enumerate(windows):
        if window.ndim != 1 or window.shape[0] < seq_len - 1:
            size = window.shape[0] if window.ndim == 1 else tuple(window.shape)
            raise InputError(f"window {index} has {size} tokens; seq_len {seq_len} needs at "
                             f"least {seq_len - 1} after BOS")
    values = np.concatenate([np.asarray(window[:seq_len - 1], dtype=np.int64)
                             for window in windows]) if windows else np.empty(0, np.int64)
    starts = np.arange(len(windows), dtype=np.int64) * (seq_len - 1)
    return bos_and_ids(values, starts, bos_id, seq_len)
