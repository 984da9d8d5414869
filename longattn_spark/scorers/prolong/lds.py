"""ProLong's long-dependency score (LDS), per window: the method and its pure arithmetic.

ProLong (Chen et al., ACL 2024, arXiv 2405.17915) asks a frozen causal LM how much easier a
C-token segment becomes after one earlier segment. This module computes exactly what the
released code computes (``October2001/ProLong`` at 9cf2f20, ``prolong/run.py``; see
``../shared/PROLONG.md``), applied to one window of the windows table instead of one whole
document, with the adaptations listed below. No Spark and no torch here: the model side
(``ProLongScorer``: loading, batched forward passes, KV reuse) is
:mod:`longattn_spark.scorers.prolong.scorer`, which re-exports the names of this module.

>>> scorer = ProLongScorer.from_pretrained("/models/opt-350m-safetensors")
>>> result = scorer.score_window(window_ids, window_id)     # result.score, result.reason, ...
>>> results = scorer.score_windows([ids_a, ids_b], ["a", "b"])   # batched across windows

What is computed (run.py line numbers)
--------------------------------------
- Segments (``construct_data``, 62-70): the window's ids are cut into consecutive C-token
  segments; a trailing partial segment is dropped. N_max = window_size // C (199); here the
  window *is* the document slice, so window_size = len(ids) unless the scorer was built with
  a fixed ``window_size`` (for re-tokenized text, PROLONG.md section 9). More than N_max
  segments -> an order-preserving random subset of N_max (``sample_preserve_order``, 56-60).
  i, j below index the kept list. N = segments kept.
- Alone perplexity (``compute_single_ppl`` 92-104, ``compute_ppl`` 72-89): PPL_i = exp(mean
  NLL of tokens 2..C of segment i given only its own earlier tokens); token 1 is never scored.
- Pair perplexity (``compute_pair_ppl`` 107-126): input seg_j + seg_i (2C tokens, seg_i at
  positions C..2C-1); PPL_ij = exp(mean NLL of the same C-1 tokens of seg_i). Candidates are
  all (i, j) with j < i, in the order ``[(i, j) for i in range(N) for j in range(i)]`` (111).
  With ``pairs`` S > 0: fewer than S candidates -> LDS = 0 before any pair is run (113-114),
  else ``random.sample(candidates, S)`` (115). S = -1: every candidate.
- ``compute_lds`` (148-172) / ``compute_de`` (128-146), float64:
  D_ij = PPL_i - PPL_ij; DST_ij = D_ij / PPL_i; DDI_ij = clip((i - j) / (N_max - 1), 0, 1);
  DSP_i over row i's m_i scored pairs (j ascending): p = softmax(D_i.), if any p == 0 then
  p = (p + 1e-12) / sum, H = -sum p ln p, DSP_i = clip((ln m_i - H) / ln m_i, 0, 1); m_i = 1
  gives 1, m_i = 0 gives 0. LDS = sum over scored pairs with DST_ij > threshold (strict) of
  (DST_ij + DDI_ij) * DSP_i, summed i ascending then j ascending; NaN -> 0 (170-171).

Adaptations (decided in PROLONG.md section 9, or required by the brief)
-----------------------------------------------------------------------
- Unit = one window; its ids are used as they are, with no BOS (run.py also adds none).
- Sampling is per window and deterministic. ``seed_rule`` ``"window-sha256"`` (default):
  ``rng = random.Random(int.from_bytes(sha256(window_id.encode("utf-8")).digest()[:8],
  "big"))``; the rng first draws the segment subset (only when there are more than N_max
  full segments), then the S pairs, with ``random.sample`` exactly as run.py does with its
  global ``random``. So a window's score does not depend on file order, batch composition,
  retries or the process (run.py's does: one ``random.seed(11)`` per process). The seed uses
  the window id only, not the scorer settings: two scorers that differ only in model,
  dtype or threshold draw the same pairs for a window (common random numbers); settings that
  change the draw (segment_size, pairs, window_size) change ``scorer_id`` anyway.
  ``seed_rule="fixed:11"`` seeds every window with ``random.Random(11)``, which reproduces
  run.py's draw for the first document of a file.
- Arithmetic: the model runs in ``dtype`` (float32 on the CPU; bfloat16/float16 allowed on a
  GPU); logits are upcast to float32 for the cross-entropy; the mean NLL and exp are float64;
  everything after the perplexities is float64 in run.py's order. run.py uses fp16 (see the
  differences below).
- Speed: the alone passes are batched across segments *and windows*; each pair reuses the KV
  cache of seg_j from seg_j's alone pass (its first C positions are exactly that pass), so a
  pair runs only seg_i's C tokens at positions C..2C-1 against the cached keys/values.
  Scores equal full 2C recomputation within float rounding. ``kv_reuse=False`` runs pairs
  the released way (full seg_j + seg_i forward, all 2C logits). The first scoring call
  checks KV reuse against full recomputation on a tiny probe and falls back to full
  recomputation (``kv_note`` says why) for a model where they disagree.
- Early exits give score 0 as released, with ``reason``: ``too_few_segments`` (N < 2: no
  candidate pair; run.py returns 0, via ZeroDivisionError when N_max = 1) and
  ``too_few_pairs`` (S > 0 and N(N-1)/2 < S). A NaN sum gives 0 with reason ``nan_score``.
  Exceptions are *not* turned into 0 (run.py:240-246 does): bad input raises a clear error.
- ``pairs`` must be -1 or > 0 (run.py treats every S <= 0 as "all pairs"; 0 is refused).

Where this differs from PROLONG.md (the code wins)
---------------------------------------------------
1. Short documents (PROLONG.md section 6 says "Empty documents, or documents shorter than C:
   data_list[-1] raises an IndexError"). Only a document of *zero* tokens raises there. A
   non-empty document shorter than C gives ``data_list = [partial]``, the partial slice is
   dropped, ``construct_data`` returns ``[]``, both passes are no-ops, ``compute_pair_ppl``
   returns early (0 < S) and ``compute_lds`` sums nothing: LDS = 0 with no exception, in
   run.py and mp.py alike. (Here: a window shorter than C is a ConfigError when the window is
   the unit, and ``too_few_segments`` when a fixed ``window_size`` was given.)
2. fp16 arithmetic (PROLONG.md section 3: "cross-entropy, the mean and the exp all run in the
   logits' dtype (fp16)"). The code takes whatever dtype ``model(...)[0]`` returns. Under
   the pinned transformers 4.36.0 that is fp16 for OPT (the default model:
   ``self.lm_head(outputs[0]).contiguous()``) but float32 for Llama and Mistral, whose
   ``*ForCausalLM.forward`` does ``logits = logits.float()``; for those the released
   perplexities are float32 computed from fp16 activations, and the 65504 overflow to inf
   does not happen.
3. Overflowed pairs (PROLONG.md section 4 says only "unsampled skipped, run.py:158"). The
   test at run.py:158 is ``pair_ppl[i][j] != float('inf')``, so a *sampled* pair whose fp16
   PPL overflowed to inf is skipped like an unsampled one: left out of row i's softmax and
   of m_i, and its DST is -inf, never above the threshold. (Not reachable in float32/64.)
4. N_max = 0 (C > window_size), not covered by PROLONG.md: ``dis_scale = 1 / (0 - 1) = -1``
   raises nothing; ``sample_preserve_order(data_list, 0)`` keeps no segment and LDS = 0.
   (Here: segment_size > window_size is a ConfigError.)
5. BOS/EOS off (PROLONG.md section 1): run.py sets ``add_bos_token``/``add_eos_token`` to
   False only when the slow tokenizer has those attributes (``hasattr``, 211-214). True for
   OPT's GPT2Tokenizer and LlamaTokenizer; a tokenizer without them keeps its specials.
6. ``scripts/run_multiprocess.sh`` (cited in PROLONG.md sections 1 and 5 for its defaults)
   passes ``--root_path $SAVE_FILE`` under ``set -u`` with SAVE_FILE never defined, so the
   script aborts as released; its knob values are as PROLONG.md says. mp.py also reuses the
   previous line's text for a JSONL line without a ``text`` key (mp.py:218-221).
PROLONG.md section 9 says the pairs are seeded "from the window's id (and the scorer
settings)"; this module seeds from the window id alone (see Adaptations), as the brief asked.
Everything else in PROLONG.md sections 1-8 matched the code (line numbers, defaults, the
N <= 32 -> 0 rule at S = 500, the row-coverage figures, which a 200-draw simulation
reproduced: 192.4 rows, 2.60 pairs per row, 58.9 single-pair rows holding 11.8% of pairs).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from longattn_spark.errors import ConfigError
from longattn_spark.scorers.identity import scorer_id

PROLONG_MATH_VERSION = "prolong-lds-1"
"""Bump when anything in how a score is computed changes (it is part of ``scorer_id``)."""
RELEASED_REFERENCE = "October2001/ProLong@9cf2f20:prolong/run.py"
DEFAULT_SEED_RULE = "window-sha256"
REASON_TOO_FEW_SEGMENTS = "too_few_segments"
REASON_TOO_FEW_PAIRS = "too_few_pairs"
REASON_NAN = "nan_score"
MAX_BATCH = 256
"""Sequences per forward call at most (run.py's single/pair batch size)."""

_CONFIG_KEYS_IGNORED = ("_name_or_path", "transformers_version")


@dataclass(frozen=True)
class ProLongResult:
    """ProLong's score of one window and what it is made of.

    ``score``: the LDS (0.0 on an early exit, as released). The means are over the pairs that
    entered the sum (DST > threshold; None when there is none): ``mean_strength`` of DST_ij,
    ``mean_distance`` of DDI_ij, ``mean_specificity`` of DSP_i (one value per kept pair).
    ``pairs_kept``: pairs in the sum; ``pairs_scored``: pairs run through the model;
    ``segments``: N, the C-token segments used; ``reason``: None, ``too_few_segments``,
    ``too_few_pairs`` or ``nan_score``.
    """

    window_id: str
    score: float
    mean_strength: float | None
    mean_distance: float | None
    mean_specificity: float | None
    pairs_kept: int
    pairs_scored: int
    segments: int
    reason: str | None


@dataclass(frozen=True)
class WindowPlan:
    """What the model must run for one window: its kept segments ``[N, C]`` and its pairs
    ``(i, j)`` in the order they were drawn; ``reason`` is set on an early exit (then no
    model pass is needed)."""

    window_id: str
    segments: np.ndarray
    pairs: list[tuple[int, int]]
    n_max: int
    reason: str | None


def check_seed_rule(seed_rule: str) -> str:
    """``window-sha256`` or ``fixed:<int>``, else ConfigError."""
    if seed_rule == DEFAULT_SEED_RULE:
        return seed_rule
    if isinstance(seed_rule, str) and seed_rule.startswith("fixed:"):
        try:
            int(seed_rule[len("fixed:"):])
            return seed_rule
        except ValueError:
            pass
    raise ConfigError(f"--seed-rule {seed_rule!r}: use {DEFAULT_SEED_RULE!r} (a generator "
                      f"per window seeded from sha256 of its id) or 'fixed:<int>'")


def window_rng(seed_rule: str, window_id: str) -> random.Random:
    """The generator that draws one window's segment subset and pairs (module docstring)."""
    if seed_rule == DEFAULT_SEED_RULE:
        digest = hashlib.sha256(str(window_id).encode("utf-8")).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))
    return random.Random(int(seed_rule[len("fixed:"):]))


def plan_window(ids: np.ndarray, window_id: str, *, segment_size: int, n_max: int,
                pairs: int, seed_rule: str) -> WindowPlan:
    """Segments and pairs of one window as ``construct_data`` + ``compute_pair_ppl`` choose
    them, with the window's own generator in place of run.py's global ``random``."""
    rng = window_rng(seed_rule, window_id)
    n_full = len(ids) // segment_size
    segments = np.asarray(ids[: n_full * segment_size], dtype=np.int64).reshape(
        n_full, segment_size)
    if n_full > n_max:
        kept = sorted(rng.sample(range(n_full), n_max))
        segments = segments[kept]
    n = segments.shape[0]
    if n < 2:
        return WindowPlan(window_id, segments, [], n_max, REASON_TOO_FEW_SEGMENTS)
    candidates = [(i, j) for i in range(n) for j in range(i)]
    if pairs > 0:
        if len(candidates) < pairs:
            return WindowPlan(window_id, segments, [], n_max, REASON_TOO_FEW_PAIRS)
        candidates = rng.sample(candidates, pairs)
    return WindowPlan(window_id, segments, candidates, n_max, None)


def dependency_specificity(drops: Sequence[float]) -> float:
    """DSP of one row from its raw PPL drops (``compute_de``, run.py:128-146), float64."""
    if len(drops) == 0:
        return 0.0
    if len(drops) == 1:
        return 1.0
    x = np.asarray(drops, dtype=np.float64)
    e_x = np.exp(x - np.max(x))
    p = e_x / e_x.sum(axis=0)
    if 0 in p:
        p = p + 1e-12
        p = p / np.sum(p)
    entropy = -np.sum(p * np.log(p))
    max_entropy = np.log(len(drops))
    return float(np.clip((max_entropy - entropy) / max_entropy, 0, 1))


def lds_from_perplexities(window_id: str, alone_ppl: Sequence[float],
                          pairs: Sequence[tuple[int, int]], pair_ppl: Sequence[float], *,
                          n_max: int, threshold: float) -> ProLongResult:
    """``compute_lds`` (run.py:148-172) over the scored pairs, plus the components."""
    rows: dict[int, list[tuple[int, float]]] = {}
    for (i, j), ppl in zip(pairs, pair_ppl):
        rows.setdefault(int(i), []).append((int(j), float(ppl)))
    specificity: dict[int, float] = {}
    for i, row in rows.items():
        row.sort()
        specificity[i] = dependency_specificity(
            [float(alone_ppl[i]) - ppl for _, ppl in row if ppl != math.inf])
    scale = 1 / (n_max - 1)
    total = 0.0
    strengths, distances, specificities = [], [], []
    for i in sorted(rows):
        single = float(alone_ppl[i])
        for j, ppl in rows[i]:
            strength = (single - ppl) / single
            if strength > threshold:
                distance = float(np.clip((i - j) * scale, 0, 1))
                total += (strength + distance) * specificity[i]
                strengths.append(strength)
                distances.append(distance)
                specificities.append(specificity[i])
    reason = None
    if math.isnan(total):
        total, reason = 0.0, REASON_NAN

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    return ProLongResult(window_id=window_id, score=float(total),
                         mean_strength=mean(strengths), mean_distance=mean(distances),
                         mean_specificity=mean(specificities), pairs_kept=len(strengths),
                         pairs_scored=len(pairs), segments=len(alone_ppl), reason=reason)


def identity_fields(raw_config: dict[str, Any], *, dtype: str, segment_size: int, pairs: int,
                    threshold: float, window_size: int | None, seed_rule: str,
                    weights_sha256: str, retokenized_with: str | None = None
                    ) -> dict[str, Any]:
    """``ProLongScorer.identity_fields`` without a loaded model (the score job's driver builds
    it from config.json and a streamed weights hash): everything that changes a score."""
    config = {k: v for k, v in raw_config.items() if k not in _CONFIG_KEYS_IGNORED}
    config_text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    fields = {
        "scorer": "prolong-lds",
        "math_version": PROLONG_MATH_VERSION,
        "arithmetic": f"model {dtype}; token NLL float32 (logits upcast);"
                      " mean NLL and exp float64; LDS float64 in run.py's order",
        "released_reference": RELEASED_REFERENCE,
        "model_type": str(raw_config.get("model_type")),
        "model_config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "model_weights_sha256": weights_sha256,
        "dtype": dtype,
        "segment_size": segment_size,
        "pairs": pairs,
        "threshold": repr(threshold),
        "window_size": "len(ids)" if window_size is None else window_size,
        "n_max": "window_size // segment_size",
        "seed_rule": seed_rule,
        "bos": "none (ids used as given)",
    }
    if retokenized_with is not None:
        fields["input_tokens"] = f"window text re-tokenized with {retokenized_with}"
    return fields


def scorer_id_of(fields: dict[str, Any]) -> str:
    """``pl-`` + 24 hex digits of sha256 over identity fields (canonical JSON)."""
    return scorer_id("pl", fields)


def checked_settings(segment_size: Any, pairs: Any, threshold: Any, window_size: Any = None
                     ) -> tuple[int, int, float, int | None]:
    """The scorer's settings checked as ``from_pretrained`` checks them (ConfigError)."""
    return _checked_settings(segment_size, pairs, threshold, window_size)


def _checked_settings(segment_size: Any, pairs: Any, threshold: Any, window_size: Any
                      ) -> tuple[int, int, float, int | None]:
    try:
        segment_size, pairs = int(segment_size), int(pairs)
        threshold = float(threshold)
        window_size = None if window_size is None else int(window_size)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"ProLong settings must be numbers ({exc})") from None
    if pairs == 0:
        raise ConfigError("--pairs 0 scores no pair: use a positive count (released default "
                          "500) or -1 for every pair")
    if pairs < -1:
        raise ConfigError(f"--pairs {pairs}: use a positive count or -1 for every pair")
    if segment_size < 2:
        raise ConfigError(f"--segment-size {segment_size}: must be >= 2 (the first token of "
                          f"a segment is never scored)")
    if math.isnan(threshold):
        raise ConfigError("--threshold nan: must be a number")
    if window_size is not None and segment_size > window_size:
        raise ConfigError(f"--segment-size {segment_size} is larger than --window-size "
                          f"{window_size}")
    return segment_size, pairs, threshold, window_size
