"""Loss gain, the pure part: which short passes a window needs, and the score from the
per-token losses. No torch and no Spark here (``scorer.py`` runs the model).

For a window, the model input is x = BOS + the window's first L-1 tokens (as LongAttn).

- ``l_full[t] = -log p(x[t] | x[0..t-1])`` from one pass over x, t = 1..L-1.
- Targets are grouped in blocks of S: block j holds t in [jS, (j+1)S) ∩ [1, L). For j >= 2,
  ``l_short[t]`` comes from a fresh pass (positions from 0) over BOS + x[(j-1)S .. (j+1)S-1]
  (cut at L): target t sees BOS and the previous S to 2S-1 tokens only.
- ``gain[t] = l_short[t] - l_full[t]`` for t in [2S, L).
- ``score`` = mean gain; ``key_share`` = share of those t with gain > 2 and l_full < 2
  (LongPPL's key-token thresholds, arXiv 2410.23771), ``full_loss`` = mean l_full,
  ``short_loss`` = mean l_short, over the same t.

S defaults to the min distance k = L // 4 and must satisfy 1 <= S < L/2 (otherwise no target
has a short pass).

Copies (the components that keep loss gain from ranking copy-paste first): with m =
``copy_ngram`` (default ``DEFAULT_COPY_NGRAM``), ``copy[t]`` for t in [2S, L) is true when
the m tokens x[t-m+1 .. t] (the target and the m - 1 tokens before it) also end at some
u <= t - S: an exact copy of text that only the far context holds. Over the same targets:

- ``copy_share`` = mean of copy[t];
- ``dependency_gain`` = sum of gain[t] over the targets that are not copies, divided by all
  targets (a copied target counts zero): what far context adds beyond copying;
- ``dependency_key_share`` = share of the targets that are key tokens (as ``key_share``) and
  not copies.

``copy`` is exact: n-grams are compared by exact integer codes (``longattn_spark.ngrams``),
and the earliest end of each m-gram decides (an m-gram ending at t is a copy iff its first
occurrence ends at or before t - S), in O(L) time and memory.

Breaks (the components that tell a window with a seam, a splice or a concatenation of
unrelated texts, from one text; math version ``lossgain-3``):

- ``min_cohesion``: at split points p = S, S + d, S + 2d, ... <= L - S (d = max(1, S // 16)),
  J(p) = |A & B| / |A | B| with A the distinct tokens of x[p-S : p] and B those of
  x[p : p+S]; ``min_cohesion`` = min over p of J(p). Text keeps re-using its names, terms and
  identifiers, so J stays high across every point of one text and drops where an unrelated
  text starts. Model-free (the ids only); a window's repeats score high, which the copy and
  repetition gates handle.
- ``loss_spike``: the means of l_short over every run of ``SPIKE_TARGETS`` consecutive
  targets in [2S, L) (all of them when fewer); ``loss_spike`` = their max minus their median.
  The start of an unrelated text is a burst the near context cannot predict.
- ``min_block_gain`` (math version ``lossgain-4``): the means of gain[t] over every run of S
  consecutive targets in [2S, L) (all of them when fewer); ``min_block_gain`` = their
  minimum. Where an unrelated text starts, the far context stops helping the S targets after
  the start; a start before 2S, which ``loss_spike`` cannot see (no target is there), leaves
  the first targets with a far context that is the other text.
- ``loss_roughness`` (math version ``lossgain-5``): m[i] = the mean of l_short over the run of
  ``ROUGHNESS_TARGETS`` (R) consecutive targets from the i-th target of [2S, L);
  ``loss_roughness`` = the mean of |m[i + R] - m[i]| over every i (0 when fewer than 2R
  targets): how much the near-context loss jumps between neighbouring runs of R targets. Text
  whose order was broken in many places (sentences or blocks shuffled) makes the near context
  fail, then recover, again and again; one text, or one seam, does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from longattn_spark.errors import ConfigError
from longattn_spark.ngrams import first_occurrence, ngram_codes
from longattn_spark.reasons import NON_FINITE_LOSS
from longattn_spark.scorers.identity import scorer_id

#: Bump when a change to the definition or the computation changes scores.
#: lossgain-2: the copy components (copy_share, dependency_gain, dependency_key_share) and
#: copy_ngram join the scores and the identity; score, key_share and the losses are unchanged.
#: lossgain-3: the break components (min_cohesion, loss_spike) join; the rest is unchanged.
#: lossgain-4: min_block_gain joins; the rest is unchanged.
#: lossgain-5: loss_roughness joins; the rest is unchanged.
LOSSGAIN_MATH_VERSION = "lossgain-5"
#: LongPPL's key-token thresholds (nats): gain > KEY_GAIN and l_full < KEY_LOSS.
KEY_GAIN = 2.0
KEY_LOSS = 2.0
#: tokens of the n-gram that makes a target a copy (``copy_ngram``)
DEFAULT_COPY_NGRAM = 8
#: consecutive targets per mean in ``loss_spike``
SPIKE_TARGETS = 16
#: consecutive targets per mean in ``loss_roughness``
ROUGHNESS_TARGETS = 8


@dataclass(frozen=True)
class ShortBlock:
    """One short pass of a window: its input is ``x[start:stop]`` after BOS; its targets are
    ``x[first_target:stop_target]``, read from the pass's logits at positions
    ``first_target - start .. stop_target - start - 1`` (BOS is position 0)."""

    j: int
    start: int
    stop: int
    first_target: int
    stop_target: int

    @property
    def length(self) -> int:
        """Tokens in the pass, BOS included."""
        return 1 + self.stop - self.start

    @property
    def first_position(self) -> int:
        """Position in the pass whose logits predict ``first_target``."""
        return self.first_target - self.start


@dataclass(frozen=True)
class LossGainResult:
    """One window's loss gain. ``reason`` is set (and the numbers are None) when a loss the
    score uses is not finite; such a window is a scores_rejects row, never a NaN score."""

    score: float | None
    key_share: float | None
    full_loss: float | None
    short_loss: float | None
    short_context: int
    targets: int
    reason: str | None = None
    detail: str | None = None
    copy_share: float | None = None
    dependency_gain: float | None = None
    dependency_key_share: float | None = None
    min_cohesion: float | None = None
    loss_spike: float | None = None
    min_block_gain: float | None = None
    loss_roughness: float | None = None


def checked_short_context(short_context: Any, seq_len: int) -> int:
    """S for sequences of L = ``seq_len`` tokens: ``short_context``, or L // 4 when 0.
    One-line ``ConfigError`` unless 1 <= S < L/2."""
    if isinstance(short_context, bool) or not isinstance(short_context, (int, np.integer)):
        raise ConfigError(f"--short-context {short_context!r}: must be an integer")
    value = int(short_context) or int(seq_len) // 4
    if value < 1 or 2 * value >= int(seq_len):
        shown = int(short_context) if short_context else f"0 (L // 4 = {value})"
        raise ConfigError(f"--short-context {shown}: must be >= 1 and < L/2 = {seq_len / 2:g} "
                          f"(L = {seq_len} tokens scored); with S >= L/2 no target has a short "
                          f"pass")
    return value


def short_blocks(seq_len: int, short_context: int) -> list[ShortBlock]:
    """The short passes of one window, in block order (the last may be shorter)."""
    length, s = int(seq_len), int(short_context)
    blocks = []
    j = 2
    while j * s < length:
        stop = min((j + 1) * s, length)
        blocks.append(ShortBlock(j=j, start=(j - 1) * s, stop=stop, first_target=j * s,
                                 stop_target=stop))
        j += 1
    return blocks


def copied_targets(x: np.ndarray, short_context: int, copy_ngram: int) -> np.ndarray:
    """``copy[t]`` (boolean, length L = len(x)) for the model input x (BOS first): true for
    t >= 2S whose m-gram x[t-m+1 .. t] also ends at some u <= t - S (module docstring);
    false before 2S and where t < m - 1."""
    x = np.asarray(x)
    length, s, m = int(x.size), int(short_context), int(copy_ngram)
    copied = np.zeros(length, dtype=bool)
    codes = ngram_codes(x, m, min_n=m)[m]  # codes[i]: the m-gram x[i : i + m]
    first_end = first_occurrence(codes) + (m - 1)
    targets = np.arange(max(2 * s, m - 1), length)
    copied[targets] = first_end[codes[targets - (m - 1)]] <= targets - s
    return copied


def cohesion_points(seq_len: int, short_context: int) -> range:
    """The split points p of ``min_cohesion``: S, S + d, ... <= L - S, d = max(1, S // 16)."""
    s = int(short_context)
    return range(s, int(seq_len) - s + 1, max(1, s // 16))


def min_cohesion(x: np.ndarray, short_context: int) -> float:
    """``min_cohesion`` of the model input x (module docstring), in O(L log L + P * S) for P
    split points, without sets: with prev[i] / next[i] the previous / next position of the
    token at i (-1 / L when none), over A = x[p-S : p] and B = x[p : p+S]:
    |A| = #{i in A : prev[i] < p - S} (each token counted at its first position in A),
    |B| = #{i in B : prev[i] < p}, and |A & B| = #{i in A : p <= next[i] < p + S} (a token
    of A, counted at its last position in A, whose next position falls in B)."""
    x = np.asarray(x)
    s = int(short_context)
    points = cohesion_points(x.size, s)
    if len(points) == 0:
        return 1.0
    order = np.argsort(x, kind="stable")
    same = np.flatnonzero(x[order][1:] == x[order][:-1])  # order[j], order[j+1]: one token
    prev = np.full(x.size, -1, dtype=np.int64)
    nxt = np.full(x.size, x.size, dtype=np.int64)
    prev[order[same + 1]] = order[same]
    nxt[order[same]] = order[same + 1]
    best = 1.0
    for p in points:
        left_prev, left_next, right_prev = prev[p - s:p], nxt[p - s:p], prev[p:p + s]
        left = np.count_nonzero(left_prev < p - s)
        right = np.count_nonzero(right_prev < p)
        both = np.count_nonzero((left_next >= p) & (left_next < p + s))
        best = min(best, both / (left + right - both))
    return float(best)


def run_means(values: np.ndarray, span: int) -> np.ndarray:
    """The means of every run of ``span`` consecutive values (one mean of all of them when
    there are fewer), in float64."""
    values = np.asarray(values, dtype=np.float64)
    span = min(int(span), values.size)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    return (sums[span:] - sums[:-span]) / span


def loss_spike(short_targets: np.ndarray) -> float:
    """``loss_spike`` of the short losses of the targets [2S, L) (module docstring)."""
    means = run_means(short_targets, SPIKE_TARGETS)
    return float(means.max() - np.median(means))


def min_block_gain(gain_targets: np.ndarray, short_context: int) -> float:
    """``min_block_gain`` of the gains of the targets [2S, L) (module docstring)."""
    return float(run_means(gain_targets, short_context).min())


def loss_roughness(short_targets: np.ndarray) -> float:
    """``loss_roughness`` of the short losses of the targets [2S, L) (module docstring)."""
    if np.asarray(short_targets).size < 2 * ROUGHNESS_TARGETS:
        return 0.0
    means = run_means(short_targets, ROUGHNESS_TARGETS)
    return float(np.abs(means[ROUGHNESS_TARGETS:] - means[:-ROUGHNESS_TARGETS]).mean())


def checked_copy_ngram(copy_ngram: Any) -> int:
    """``copy_ngram`` as an int >= 1 (one-line ``ConfigError`` otherwise)."""
    if isinstance(copy_ngram, bool) or not isinstance(copy_ngram, (int, np.integer)) \
            or copy_ngram < 1:
        raise ConfigError(f"copy_ngram {copy_ngram!r}: must be an integer >= 1")
    return int(copy_ngram)


def lossgain_from_losses(full: np.ndarray, short: np.ndarray, short_context: int,
                         copied: np.ndarray | None = None,
                         cohesion: float | None = None) -> LossGainResult:
    """The score from one window's losses, both indexed by target t (length L; entries
    before 2S are not read). Means are taken in float64. ``copied`` (``copied_targets``,
    length L) adds the copy components; ``cohesion`` (``min_cohesion`` of the window's ids)
    is passed through; ``loss_spike`` comes from the short losses."""
    s = int(short_context)
    full_t = np.asarray(full, dtype=np.float64)[2 * s:]
    short_t = np.asarray(short, dtype=np.float64)[2 * s:]
    targets = int(full_t.size)
    if targets == 0 or short_t.size != targets:
        raise ValueError(f"lossgain_from_losses: {targets} full and {short_t.size} short "
                         f"losses after 2S = {2 * s}")
    bad = ~(np.isfinite(full_t) & np.isfinite(short_t))
    if bad.any():
        first = int(np.argmax(bad)) + 2 * s
        return LossGainResult(score=None, key_share=None, full_loss=None, short_loss=None,
                              short_context=s, targets=targets, reason=NON_FINITE_LOSS,
                              detail=f"{int(bad.sum())} of {targets} targets have a non-finite "
                                     f"loss, first at t = {first} (full "
                                     f"{float(full[first])!r}, short {float(short[first])!r})")
    gain = short_t - full_t
    key = (gain > KEY_GAIN) & (full_t < KEY_LOSS)
    copies: dict[str, float] = {}
    if copied is not None:
        copy_t = np.asarray(copied, dtype=bool)[2 * s:]
        copies = {"copy_share": float(copy_t.mean()),
                  "dependency_gain": float(np.where(copy_t, 0.0, gain).sum() / targets),
                  "dependency_key_share": float((key & ~copy_t).mean())}
    return LossGainResult(score=float(gain.mean()), key_share=float(key.mean()),
                          full_loss=float(full_t.mean()), short_loss=float(short_t.mean()),
                          short_context=s, targets=targets, **copies,
                          min_cohesion=None if cohesion is None else float(cohesion),
                          loss_spike=loss_spike(short_t),
                          min_block_gain=min_block_gain(gain, s),
                          loss_roughness=loss_roughness(short_t))


def lm_tokens_per_window(seq_len: int, short_context: int) -> int:
    """Tokens the model runs per window: the full pass plus every short pass."""
    return int(seq_len) + sum(b.length for b in short_blocks(seq_len, short_context))


def identity_fields(raw_config: dict[str, Any], *, weights_sha256: str, seq_len: int,
                    short_context: int, dtype: str, bos_id: int,
                    copy_ngram: int = DEFAULT_COPY_NGRAM) -> dict[str, Any]:
    """Everything that changes a loss-gain score (JSON-able)."""
    return {"method": "lossgain", "math_version": LOSSGAIN_MATH_VERSION,
            "model_config": raw_config, "weights_sha256": weights_sha256,
            "seq_len": int(seq_len), "short_context": int(short_context), "dtype": dtype,
            "bos_id": int(bos_id), "key_gain": KEY_GAIN, "key_loss": KEY_LOSS,
            "copy_ngram": int(copy_ngram)}


def scorer_id_of(fields: dict[str, Any]) -> str:
    """``lg-`` + 24 hex digits of sha256 over the canonical JSON of ``fields``."""
    return scorer_id("lg", fields)
