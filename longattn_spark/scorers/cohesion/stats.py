"""Cohesion of a window against its category's vocabulary (pure numpy; no model, no Spark).

Two unrelated texts of one category (two papers, two license files, two pydoc pages) share
the category's common tokens (LaTeX macros, legal phrases, the pydoc template) on both sides
of their join; what one text shares with itself across any point is its own rarer tokens
(its names, terms, identifiers). So the split Jaccard share of ``repetition.min_split_jaccard``
counts each distinct token by how rare it is in the category: its inverse document frequency,
measured over the category's windows.

**Vocabulary of a category** (``Vocabulary``): ``n`` windows of the category (the scored
table's, at most ``df_sample`` of them, chosen by the hash of their window_id: ``vocabulary.py``)
and, for each token, ``df[t]``, the number of them that hold it. The weight of a token:

    w(t) = ln((n + 1) / (df[t] + 1)) ** idf_power

(0 for a token in every window; ``ln(n + 1) ** idf_power`` for a token in none of them).

**``min_split_idf``** of a window of N ids x: for a split point p, the weighted Jaccard share
of distinct tokens between everything before p and everything from p on,

    sum of w(t) over t in set(x[:p]) & set(x[p:])  /  sum of w(t) over t in set(x),

and ``min_split_idf`` its lowest value over p in [M, N - M], M = max(N // 4, 1) (the middle
half, as ``min_split_jaccard``); 1.0 when N < 2 or when every distinct token weighs 0. O(N):
a distinct token is on both sides of p when its first position < p <= its last position.
Higher: more like one text. Tested against Python sets (tests/test_cohesion.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from longattn_spark.scorers.repetition.stats import split_margin

#: the components, in the order they are stored
COMPONENTS = ("min_split_idf",)


@dataclass(frozen=True)
class Vocabulary:
    """Document frequencies of one category: ``n`` windows; ``tokens`` (sorted, distinct)
    are held by ``df`` of them each (tokens held by none are not listed). Hashable: the
    executors' settings carry it; ``fingerprint`` names it in the scorer_id."""

    n: int
    tokens: bytes   # int64 little-endian, sorted
    df: bytes       # int64 little-endian, one per token

    @classmethod
    def of(cls, n: int, tokens: np.ndarray, df: np.ndarray) -> Vocabulary:
        order = np.argsort(tokens, kind="stable")
        return cls(int(n), np.asarray(tokens, "<i8")[order].tobytes(),
                   np.asarray(df, "<i8")[order].tobytes())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.frombuffer(self.tokens, "<i8"), np.frombuffer(self.df, "<i8")

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.n.to_bytes(8, "little") + self.tokens + self.df)
        return digest.hexdigest()[:16]


def vocabulary_of(windows: Iterable[np.ndarray]) -> Vocabulary:
    """The vocabulary of a set of windows' ids (the reference of ``vocabulary.py``'s Spark
    job, and how the benchmarks build one)."""
    n, seen = 0, []
    for ids in windows:
        n += 1
        seen.append(np.unique(np.asarray(ids, np.int64)))
    if not seen:
        return Vocabulary.of(0, np.zeros(0, np.int64), np.zeros(0, np.int64))
    tokens, df = np.unique(np.concatenate(seen), return_counts=True)
    return Vocabulary.of(n, tokens, df)


def token_weights(vocabulary: Vocabulary, tokens: np.ndarray, idf_power: float) -> np.ndarray:
    """w(t) (module docstring) of each of ``tokens``."""
    known, df = vocabulary.arrays()
    at = np.searchsorted(known, tokens)
    found = at < known.size
    found[found] = known[at[found]] == tokens[found]
    counts = np.zeros(tokens.size)
    counts[found] = df[at[found]]
    return np.log((vocabulary.n + 1) / (counts + 1)) ** idf_power


def min_split_idf(ids: np.ndarray, vocabulary: Vocabulary, idf_power: float) -> float:
    """``min_split_idf`` of one window (module docstring)."""
    ids = np.asarray(ids, np.int64)
    length = int(ids.size)
    margin = split_margin(length)
    if length - margin < margin:
        return 1.0
    distinct, codes = np.unique(ids, return_inverse=True)
    weights = token_weights(vocabulary, distinct, idf_power)
    total = float(weights.sum())
    if total <= 0:
        return 1.0
    positions = np.arange(length)
    first = np.full(distinct.size, length)
    last = np.full(distinct.size, -1)
    np.minimum.at(first, codes, positions)
    np.maximum.at(last, codes, positions)
    both = np.cumsum(np.bincount(first + 1, weights=weights, minlength=length + 1)
                     - np.bincount(last + 1, weights=weights, minlength=length + 1))
    return float(max(both[margin:length - margin + 1].min(), 0.0) / total)


def cohesion_stats(ids: np.ndarray, vocabulary: Vocabulary, idf_power: float
                   ) -> dict[str, float]:
    """Every component of one window, by name."""
    return {"min_split_idf": min_split_idf(ids, vocabulary, idf_power)}
