"""Repetition statistics of one window's token ids (pure numpy; no model, no torch, no Spark).

The model-free gate of a selection (Gopher's repetition filters, Rae et al. 2021, and
FineWeb's, computed over tokens instead of characters). For a window of N token ids x
(the window's own ids, no BOS) and n-grams g_i = x[i : i + n], i = 0 .. N - n:

- ``top_{n}gram`` (n = 2, 3, 4): the share of the N tokens covered by the most frequent
  n-gram, i.e. |union of [i, i + n) over the occurrences i of that n-gram| / N. Among
  n-grams equally frequent, the one that occurs first. Text that repeats one short phrase
  scores high.
- ``dup_{n}gram`` (n = 5 .. 10): the share of the N tokens covered by n-grams that occur
  more than once in the window: |union of [i, i + n) over every i whose n-gram occurs at
  least twice| / N. Copy-paste, repeated passages and templates score high.
- ``distinct_10gram``: distinct 10-grams / (N - 9), the share of the window's 10-grams that
  are unique (1.0: no 10-gram repeats).
- ``compression``: bytes of the ids as little-endian int32 / bytes after zlib level 6, as
  zlib-ng compresses them (the ``zlib-ng`` package's library, ``ZLIB_NG_VERSION``: the zlib
  format at level 6, about 2.7 times faster here than the reference zlib, whose sizes differ by
  about 1%; one pinned library, so a value does not depend on the platform's libz). About 1.5
  for running text with a 50k vocabulary, higher the more the window repeats.
- ``lag_match``: how periodic the window is. The candidate lags are the (at most)
  ``LAG_CANDIDATES`` = 4 distances P with MIN_LAG = 16 <= P <= N // 2 that most often separate
  two consecutive occurrences of one bigram (x[u], x[u + 1]) = (x[t], x[t + 1]), u < t, with
  no occurrence between them (more often first, then the smaller P); ``lag_match`` is the
  largest, over the candidates, of |{t in [P, N) : x[t] = x[t - P]}| / (N - P), the share of
  the tokens past P equal to the token P before them; 0 without a candidate. A passage
  copied again and again, even with some of its tokens changed, gives a high value at its
  period (the probe's near-repeats, 15% of tokens replaced: about 0.8); natural text, whose
  repeats do not recur at one distance, stays low (at most 0.55 on ten of eleven probe
  categories, benchmarks/RESULTS.md), however much it repeats elsewhere.
- ``min_split_jaccard``: how much the window reads as one text across its middle half. For a
  split point p, the Jaccard share of distinct tokens between everything before p and
  everything from p on, |set(x[:p]) & set(x[p:])| / |set(x[:p]) | set(x[p:])|;
  ``min_split_jaccard`` is its lowest value over p in [M, N - M], M = max(N // 4, 1) (the
  middle half: near an end one side holds too few distinct tokens to share many, whatever
  the text); 1.0 when N < 2. Two unrelated texts joined in the middle half (a splice, a
  concatenation) share fewer distinct tokens across the join than one text does across any
  point. The union of the two sides is the window's whole vocabulary, so it is
  #{distinct tokens whose first position < p <= last position} / #{distinct tokens}.

A window shorter than n has no n-grams: its top / dup shares are 0 and distinct_10gram 1.

N-grams are compared exactly (integer codes from ``pandas.factorize``, no hash to collide).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from zlib_ng import zlib_ng

TOP_NS = (2, 3, 4)
DUP_NS = (5, 6, 7, 8, 9, 10)
DISTINCT_N = 10
ZLIB_LEVEL = 6
#: the library ``compression`` is measured with (scorer ids record it; executors check it)
ZLIB_NG_VERSION = zlib_ng.ZLIBNG_VERSION
MIN_LAG = 16
LAG_CANDIDATES = 4
#: ``min_split_jaccard`` splits in [N // 4, N - N // 4]
SPLIT_MARGIN_DIVISOR = 4

#: the components, in the order they are stored
COMPONENTS = (*(f"top_{n}gram" for n in TOP_NS), *(f"dup_{n}gram" for n in DUP_NS),
              f"distinct_{DISTINCT_N}gram", "compression", "lag_match", "min_split_jaccard")


def covered_share(starts: np.ndarray, n: int, length: int) -> float:
    """|union of [i, i + n) for i in ``starts``| / ``length``, for increasing ``starts``
    (as every level gives them): each span adds the tokens before the next one starts."""
    if length == 0 or starts.size == 0:
        return 0.0
    return float(np.minimum(np.diff(starts), n).sum() + n) / length


@dataclass(frozen=True)
class NgramLevel:
    """The n-grams of one n that can occur more than once: those at ``starts`` (every start
    for n = 2; for n > 2 the starts whose (n-1)-gram occurs more than once, since an n-gram
    can only repeat where its prefix does). ``codes`` number them exactly, by first
    occurrence; ``counts[c]`` is how often code c occurs; ``distinct`` counts the window's
    distinct n-grams, those outside ``starts`` included (each of them occurs once)."""

    n: int
    starts: np.ndarray
    codes: np.ndarray
    counts: np.ndarray
    distinct: int

    @cached_property
    def repeated(self) -> np.ndarray:
        """A mask over ``starts``: the n-gram there occurs more than once."""
        return self.counts[self.codes] > 1


def ngram_levels(ids: np.ndarray, max_n: int) -> Iterator[NgramLevel]:
    """``NgramLevel`` for n = 2 .. ``max_n`` (none for a window shorter than 2 tokens).

    Why not a full pass per n: natural text repeats few long n-grams, so after the bigrams
    each pass codes only the starts whose shorter n-gram repeats, a fraction of the window;
    a code and the next token are packed into one int64 and factorized (one hash-table pass,
    exact). Tested against plain Python (tests/test_repetition.py)."""
    length = int(ids.size)
    if length < 2:
        return
    tokens = ids if ids.min() >= 0 else pd.factorize(ids)[0]  # packing needs codes >= 0
    width = int(tokens.max()) + 1
    level = None
    for n in range(2, max_n + 1):
        if level is None:
            starts = np.arange(length - 1, dtype=np.int64)
            codes = pd.factorize(tokens[:-1] * width + tokens[1:])[0]
        else:
            keep = np.flatnonzero(level.repeated & (level.starts < length - n + 1))
            starts = level.starts[keep]  # the n-gram exists and its prefix repeats
            codes = pd.factorize(level.codes[keep] * width + tokens[starts + n - 1])[0]
        counts = np.bincount(codes) if codes.size else np.zeros(0, dtype=np.int64)
        level = NgramLevel(n, starts, codes, counts,
                           max(length - n + 1, 0) - codes.size + counts.size)
        yield level


def top_ngram_share(level: NgramLevel, length: int) -> float:
    """Share of the tokens covered by the most frequent n-gram (first to occur on ties)."""
    if length < level.n:
        return 0.0
    if level.counts.size == 0 or level.counts.max() < 2:
        return level.n / length  # every n-gram occurs once: the first one, at 0
    top = int(np.argmax(level.counts))  # codes are numbered by first occurrence
    return covered_share(level.starts[level.codes == top], level.n, length)


def compression_ratio(ids: np.ndarray) -> float:
    """Bytes of the ids as little-endian int32 over their zlib-ng (level 6) size."""
    raw = np.asarray(ids).astype("<i4").tobytes()
    return len(raw) / len(zlib_ng.compress(raw, ZLIB_LEVEL))


def repetition_stats(ids: np.ndarray) -> dict[str, float]:
    """Every component of one window (module docstring), by name."""
    ids = np.asarray(ids, dtype=np.int64)
    length = int(ids.size)
    out = {name: 0.0 for name in COMPONENTS}
    out[f"distinct_{DISTINCT_N}gram"] = 1.0
    bigram_codes = ids[:0]
    for level in ngram_levels(ids, max(DUP_NS)):
        n = level.n
        if n == 2:
            bigram_codes = level.codes  # over every start, in order
        if n in TOP_NS:
            out[f"top_{n}gram"] = top_ngram_share(level, length)
        if n in DUP_NS:
            out[f"dup_{n}gram"] = covered_share(level.starts[level.repeated], n, length)
        if n == DISTINCT_N and length >= n:
            out[f"distinct_{n}gram"] = level.distinct / (length - n + 1)
    out["compression"] = compression_ratio(ids)
    out["lag_match"] = lag_match(ids, bigram_codes)
    out["min_split_jaccard"] = min_split_jaccard(ids)
    return out


def split_margin(length: int) -> int:
    """M: ``min_split_jaccard`` splits the window at p in [M, length - M]."""
    return max(length // SPLIT_MARGIN_DIVISOR, 1)


def min_split_jaccard(ids: np.ndarray) -> float:
    """``min_split_jaccard`` of one window (module docstring), in O(N): a distinct token is
    on both sides of p when its first position < p <= its last position, so the count on
    both sides is a running sum of +1 one past each first position and -1 one past each last
    position; the union of the two sides is every distinct token."""
    length = int(ids.size)
    margin = split_margin(length)
    if length - margin < margin:
        return 1.0
    codes, uniques = pd.factorize(ids)
    positions = np.arange(length)
    first = np.full(uniques.size, length)
    last = np.full(uniques.size, -1)
    np.minimum.at(first, codes, positions)
    np.maximum.at(last, codes, positions)
    both = np.cumsum(np.bincount(first + 1, minlength=length + 1)
                     - np.bincount(last + 1, minlength=length + 1))  # both[p], p = 0 .. N
    return float(both[margin:length - margin + 1].min() / uniques.size)


def candidate_lags(bigram_codes: np.ndarray, length: int) -> np.ndarray:
    """The distances in [MIN_LAG, length // 2] that most often separate consecutive
    occurrences of one bigram, most frequent first (ties: smaller first), at most
    LAG_CANDIDATES of them; ``bigram_codes`` numbers the window's bigrams exactly (codes
    below their count, as factorize gives them)."""
    if bigram_codes.size <= np.iinfo(np.uint16).max + 1:
        bigram_codes = bigram_codes.astype(np.uint16)  # numpy sorts 16-bit keys by radix
    order = np.argsort(bigram_codes, kind="stable")  # each bigram's starts, in order
    same = bigram_codes[order[1:]] == bigram_codes[order[:-1]]
    gaps = (order[1:] - order[:-1])[same]
    gaps = gaps[(gaps >= MIN_LAG) & (gaps <= length // 2)]
    if gaps.size == 0:
        return gaps
    counts = np.bincount(gaps)
    top = np.argsort(-counts, kind="stable")[:LAG_CANDIDATES]
    return top[counts[top] > 0]


def lag_match(ids: np.ndarray, bigram_codes: np.ndarray) -> float:
    """``lag_match`` of one window (module docstring): the largest share of tokens equal to
    the token one candidate lag before them."""
    length = int(ids.size)
    best = 0.0
    for lag in candidate_lags(bigram_codes, length).tolist():
        best = max(best, np.count_nonzero(ids[lag:] == ids[:-lag]) / (length - lag))
    return float(best)
