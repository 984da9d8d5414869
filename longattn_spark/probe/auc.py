"""AUC of natural over control windows, its bootstrap interval, the verdict line, and the
position-only reference of DS (pure: numpy).

- AUC (Mann-Whitney): the probability that a natural window scores above a control window,
  ties counting 1/2. 1.0: every natural window above every control; 0.5: no separation;
  0.0: every control above.
- Interval: a seeded percentile bootstrap. With ``rng = default_rng(seed)`` for the seed of
  :func:`bootstrap_seed`, draw ``I = rng.integers(0, n_natural, (B, n_natural))`` and then
  ``J = rng.integers(0, n_control, (B, n_control))``; replicate ``b`` is the AUC of
  ``natural[I[b]]`` over ``control[J[b]]``; the interval is ``np.percentile(aucs, [2.5,
  97.5])`` (linear interpolation). Naturals and controls are resampled separately.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

#: AUC below this: the score "does not separate" natural text from the controls
SEPARATES_AT = 0.6
SINK_TOKENS = 4


@dataclass(frozen=True)
class AucResult:
    auc: float
    lo: float
    hi: float
    n_natural: int
    n_control: int


def finite(values) -> np.ndarray:
    array = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return array[np.isfinite(array)]


def win_matrix(natural: np.ndarray, control: np.ndarray) -> np.ndarray:
    """``[n_natural, n_control]``: 1 where the natural window scores higher, 1/2 on ties."""
    diff = natural[:, None] - control[None, :]
    return (diff > 0).astype(np.float64) + 0.5 * (diff == 0)


def auc(natural, control) -> float:
    natural, control = np.asarray(natural, np.float64), np.asarray(control, np.float64)
    return float(win_matrix(natural, control).mean())


def bootstrap_seed(seed: int, *parts: str) -> int:
    digest = hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def auc_with_interval(natural, control, seed: int, replicates: int = 1000) -> AucResult:
    """AUC and its seeded bootstrap 95% interval (see the module docstring)."""
    natural, control = np.asarray(natural, np.float64), np.asarray(control, np.float64)
    n1, n2 = len(natural), len(control)
    if n1 == 0 or n2 == 0:
        raise ValueError("AUC needs at least one natural and one control value")
    wins = win_matrix(natural, control)
    replicated = bootstrap_means(wins, np.random.default_rng(seed), replicates)
    lo, hi = np.percentile(replicated, [2.5, 97.5])
    return AucResult(float(wins.mean()), float(lo), float(hi), n1, n2)


def bootstrap_means(wins: np.ndarray, rng: np.random.Generator, replicates: int
                    ) -> np.ndarray:
    """The mean of ``wins`` ([n_natural, n_control]) in each of ``replicates`` bootstrap
    draws, natural rows drawn first, then control columns, from ``rng``. Replicate b:
    mean of wins[I[b]][:, J[b]] = c1_b . wins . c2_b / (n1 n2), c = draw counts. A matrix of
    AUC differences (two rankings of the same windows) gives their paired interval."""
    n1, n2 = wins.shape
    draws_1 = rng.integers(0, n1, (replicates, n1))
    draws_2 = rng.integers(0, n2, (replicates, n2))
    counts_1 = np.zeros((replicates, n1))
    counts_2 = np.zeros((replicates, n2))
    rows = np.arange(replicates)[:, None]
    np.add.at(counts_1, (rows, draws_1), 1.0)
    np.add.at(counts_2, (rows, draws_2), 1.0)
    return np.einsum("bi,ij,bj->b", counts_1, wins, counts_2, optimize=True) / (n1 * n2)


def verdict(kind: str, result: AucResult | None, skipped: str | None = None) -> str:
    """The one-line verdict of one category and kind."""
    if result is None:
        return f"{kind}: skipped ({skipped})"
    where = f"AUC {result.auc:.3f} [{result.lo:.3f}, {result.hi:.3f}]"
    if result.auc < SEPARATES_AT:
        line = f"does not separate natural text from {kind} controls ({where})"
        if result.hi < 0.5:
            line += f"; it scores the {kind} controls higher"
        return line
    if result.lo <= 0.5:
        return (f"separates natural text from {kind} controls only weakly ({where}): the 95% "
                f"interval includes 0.5, so more windows are needed to tell it from chance")
    return f"separates natural text from {kind} controls ({where})"


def uniform_head_ds(seq_len: int, min_distance: int) -> float:
    """DS of a head that spreads its attention evenly over its prefix (query n gives 1/(n+1)
    to each of tokens 0..n): ``sum_{n>=k} (n - k + 1)/(n + 1) / L``. It depends only on L and
    k; at k = L/4 it tends to 3/4 - ln(4)/4 = 0.4034 as L grows."""
    n = np.arange(min_distance, seq_len, dtype=np.float64)
    return float(((n - min_distance + 1) / (n + 1)).sum() / seq_len)


def uniform_head_ds_limit(fraction: float = 0.25) -> float:
    """The large-L limit of :func:`uniform_head_ds` at k = fraction * L."""
    return 1 - fraction + fraction * math.log(fraction)
