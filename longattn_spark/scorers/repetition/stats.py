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
- ``compression``: bytes of the ids as little-endian int32 / bytes after ``zlib`` level 6;
  about 1.5 for running text with a 50k vocabulary, higher the more the window repeats.
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

A window shorter than n has no n-grams: its top / dup shares are 0 and distinct_10gram 1.

N-grams are compared exactly (``longattn_spark.ngrams``: integer codes, no hash to collide).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from longattn_spark.ngrams import ngram_codes

TOP_NS = (2, 3, 4)
DUP_NS = (5, 6, 7, 8, 9, 10)
DISTINCT_N = 10
ZLIB_LEVEL = 6
MIN_LAG = 16
LAG_CANDIDATES = 4

#: the components, in the order they are stored
COMPONENTS = (*(f"top_{n}gram" for n in TOP_NS), *(f"dup_{n}gram" for n in DUP_NS),
              f"distinct_{DISTINCT_N}gram", "compression", "lag_match")


def covered_share(starts: np.ndarray, n: int, length: int) -> float:
    """|union of [i, i + n) for i in ``starts``| / ``length``."""
    if length == 0 or starts.size == 0:
        return 0.0
    edges = np.bincount(starts, minlength=length + 1)
    edges[n:] -= np.bincount(starts, minlength=length + 1 - n)
    return float(np.count_nonzero(np.cumsum(edges[:length]))) / length


def top_ngram_share(codes: np.ndarray, n: int, length: int) -> float:
    """Share of the tokens covered by the most frequent n-gram (first to occur on ties)."""
    if codes.size == 0:
        return 0.0
    counts = np.bincount(codes)
    top = int(np.argmax(counts))  # factorize numbers codes by first occurrence
    return covered_share(np.flatnonzero(codes == top), n, length)


def compression_ratio(ids: np.ndarray) -> float:
    """Bytes of the ids as little-endian int32 over their zlib (level 6) size."""
    raw = np.asarray(ids).astype("<i4").tobytes()
    return len(raw) / len(zlib.compress(raw, ZLIB_LEVEL))


def repetition_stats(ids: np.ndarray) -> dict[str, float]:
    """Every component of one window (module docstring), by name."""
    ids = np.asarray(ids, dtype=np.int64)
    length = int(ids.size)
    codes = ngram_codes(ids, DUP_NS[0])
    out: dict[str, float] = {}
    for n in TOP_NS:
        out[f"top_{n}gram"] = top_ngram_share(codes[n], n, length)
    for n, starts, distinct in repeated_ngram_starts(codes[1], codes[DUP_NS[0]],
                                                         DUP_NS):
        out[f"dup_{n}gram"] = covered_share(starts, n, length)
        if n == DISTINCT_N:
            out[f"distinct_{n}gram"] = distinct / (length - n + 1) if length >= n else 1.0
    out["compression"] = compression_ratio(ids)
    out["lag_match"] = lag_match(ids, codes[2])
    return out


def candidate_lags(bigram_codes: np.ndarray, length: int) -> np.ndarray:
    """The distances in [MIN_LAG, length // 2] that most often separate consecutive
    occurrences of one bigram, most frequent first (ties: smaller first), at most
    LAG_CANDIDATES of them; ``bigram_codes`` numbers the window's bigrams exactly."""
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


def repeated_ngram_starts(tokens: np.ndarray, first_codes: np.ndarray, ns: tuple[int, ...]):
    """For each n of the consecutive ``ns``: (n, the starts of the n-grams that occur more
    than once, the number of distinct n-grams), from the window's token codes and the exact
    codes of its ``ns[0]``-grams (``ngram_codes``).

    Why not a full pass per n: an n-gram can only repeat where its (n-1)-gram does, so each
    n after the first is coded over those candidate starts alone (the (n-1)-gram's code there
    and the next token, factorized: equal codes are equal n-grams among the candidates, and a
    start outside them holds an n-gram that occurs once). Natural text repeats few long
    n-grams, so the passes after the first shrink to a fraction of the window; the result is
    that of ``ngram_codes`` over every start (tested against plain Python)."""
    length = int(tokens.size)
    width = int(tokens.max()) + 1 if tokens.size else 1
    starts = np.arange(first_codes.size, dtype=np.int64)
    codes = first_codes
    for step, n in enumerate(ns):
        if step:
            keep = starts + n <= length  # the n-gram at a start exists
            starts, codes = starts[keep], codes[keep]
            codes = pd.factorize(codes * width + tokens[starts + n - 1])[0]
        counts = np.bincount(codes) if codes.size else np.zeros(0, dtype=np.int64)
        repeated = counts[codes] > 1
        distinct = max(length - n + 1, 0) - codes.size + counts.size
        starts, codes = starts[repeated], codes[repeated]
        yield n, starts, distinct
