"""Exact n-gram codes of a token sequence (pure numpy + pandas), shared by the repetition
statistics (``scorers/repetition``) and loss gain's copy detection (``scorers/lossgain``).

``codes[n][i]`` is an integer equal for equal n-grams ``ids[i : i + n]`` and different for
different ones: n = 1 is ``pandas.factorize`` of the ids (codes numbered by first occurrence);
n > 1 factorizes the (n-1)-gram's code at i and the token code at i + n - 1 packed into one
int64. Every step is a hash-table pass (O(N)), and equal codes mean equal n-grams exactly:
there is no hash that could collide.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def ngram_codes(ids: np.ndarray, max_n: int, min_n: int = 1) -> dict[int, np.ndarray]:
    """``{n: codes}`` for n = ``min_n`` .. ``max_n`` (int64 arrays of ``len(ids) - n + 1``
    codes, empty when the sequence is shorter than n), numbered by first occurrence."""
    tokens = pd.factorize(np.asarray(ids, dtype=np.int64))[0]
    width = int(tokens.max()) + 1 if tokens.size else 1
    codes = tokens
    out = {1: tokens} if min_n <= 1 else {}
    for n in range(2, max_n + 1):
        if codes.size <= 1:
            codes = codes[:0]
        else:
            codes = pd.factorize(codes[:-1] * width + tokens[n - 1:])[0]
        if n >= min_n:
            out[n] = codes
    return out


def first_occurrence(codes: np.ndarray) -> np.ndarray:
    """For codes numbered by first occurrence (as ``ngram_codes`` gives them): the first
    index at which each code occurs, indexed by code."""
    first = np.full(int(codes.max()) + 1 if codes.size else 0, codes.size, dtype=np.int64)
    np.minimum.at(first, codes, np.arange(codes.size, dtype=np.int64))
    return first
