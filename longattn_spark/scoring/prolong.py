"""ProLong's long-dependency score (LDS), per window: a second scorer beside LongAttn's.

ProLong (Chen et al., ACL 2024, arXiv 2405.17915) asks a frozen causal LM how much easier a
C-token segment becomes after one earlier segment. This module computes exactly what the
released code computes (``October2001/ProLong`` at 9cf2f20, ``prolong/run.py``; see
``../shared/PROLONG.md``), applied to one window of the windows table instead of one whole
document, with the adaptations listed below. No Spark here.

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
import inspect
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longattn_spark.errors import ConfigError, InputError

PROLONG_MATH_VERSION = "prolong-lds-1"
"""Bump when anything in how a score is computed changes (it is part of ``scorer_id``)."""
RELEASED_REFERENCE = "October2001/ProLong@9cf2f20:prolong/run.py"
DEFAULT_SEED_RULE = "window-sha256"
REASON_TOO_FEW_SEGMENTS = "too_few_segments"
REASON_TOO_FEW_PAIRS = "too_few_pairs"
REASON_NAN = "nan_score"
MAX_BATCH = 256
"""Sequences per forward call at most (run.py's single/pair batch size)."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SAFETENSORS = ("model.safetensors.index.json", "model.safetensors")
_PICKLES = ("pytorch_model.bin.index.json", "pytorch_model.bin")
_CONFIG_KEYS_IGNORED = ("_name_or_path", "transformers_version")
_GIB = 1 << 30


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


# --------------------------------------------------------------------------------------
# Pure parts: seeding, segments and pairs, the LDS from perplexities
# --------------------------------------------------------------------------------------

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
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return "pl-" + hashlib.sha256(canonical.encode()).hexdigest()[:24]


def checked_settings(segment_size: Any, pairs: Any, threshold: Any, window_size: Any = None
                     ) -> tuple[int, int, float, int | None]:
    """The scorer's settings checked as ``from_pretrained`` checks them (ConfigError)."""
    return _checked_settings(segment_size, pairs, threshold, window_size)


# --------------------------------------------------------------------------------------
# The scorer
# --------------------------------------------------------------------------------------

class ProLongScorer:
    """ProLong LDS of windows with one causal LM (see the module docstring).

    Build it with ``from_pretrained``. ``scorer_id()`` hashes ``identity_fields()``:
    everything that changes a score (model config and weights, dtype, segment_size, pairs,
    threshold, window_size policy, seed_rule, math version). Device, batch size, memory
    budget and KV reuse change results only within float rounding and are not part of it.
    """

    def __init__(self, model: torch.nn.Module, *, path: Path, raw_config: dict[str, Any],
                 device: torch.device, dtype: torch.dtype, segment_size: int, pairs: int,
                 threshold: float, seed_rule: str, window_size: int | None,
                 allow_pickle: bool, kv_reuse: bool, batch_size: int | None,
                 memory_budget_bytes: int | None) -> None:
        self.model = model
        self.path = path
        self.raw_config = raw_config
        self.device = device
        self.dtype = dtype
        self.segment_size = segment_size
        self.pairs = pairs
        self.threshold = threshold
        self.seed_rule = seed_rule
        self.window_size = window_size
        self.allow_pickle = allow_pickle
        self.kv_reuse = kv_reuse
        self.kv_note = "" if kv_reuse else "kv_reuse=False: pairs recompute seg_j (released way)"
        self._kv_checked = not kv_reuse
        self.batch_size = batch_size
        default_budget = 8 * _GIB if device.type == "cuda" else _GIB
        self.memory_budget_bytes = int(memory_budget_bytes or default_budget)
        parameters = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in parameters else "past_key_values"
        self._position_ids = "position_ids" in parameters
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        output = model.get_output_embeddings()
        self._logits_width = int(getattr(output, "out_features", 0) or
                                 getattr(model.config, "vocab_size", self.vocab_size))
        self._weights_sha256: str | None = None
        self._tokenizer: Any = None
        #: the LM tokenizer's identity when the job re-tokenizes windows' text for this
        #: scorer (PROLONG.md section 9); part of the identity then. None: ids as given.
        self.retokenized_with: str | None = None

    # ---- construction -----------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "float32", segment_size: int = 128,
                        pairs: int = 500, threshold: float = 0.1, allow_pickle: bool = False,
                        seed_rule: str = DEFAULT_SEED_RULE, window_size: int | None = None,
                        kv_reuse: bool = True, batch_size: int | None = None,
                        memory_budget_bytes: int | None = None) -> ProLongScorer:
        """Load the causal LM in folder ``path`` (no remote code; safetensors unless
        ``allow_pickle``) and check the settings.

        ``segment_size`` C (>= 2), ``pairs`` S (> 0, or -1 for every pair), ``threshold``
        theta (strict; -inf or -1 keeps almost every pair), ``seed_rule`` (module
        docstring). ``window_size``: None -> each window is the unit and N_max =
        len(ids) // C; an int W -> N_max = W // C for every input (re-tokenized text may give
        more segments, subsampled to N_max in order). ``batch_size``: sequences per forward
        call (default: what ``memory_budget_bytes`` allows for the logits, at most 256).
        ``memory_budget_bytes`` (default 1 GiB on the CPU, 8 GiB on CUDA) bounds the logits
        of one call and the KV caches held for the pairs.
        """
        from longattn_spark.scoring.scorer import resolve_device

        segment_size, pairs, threshold, window_size = _checked_settings(
            segment_size, pairs, threshold, window_size)
        seed_rule = check_seed_rule(seed_rule)
        if batch_size is not None and int(batch_size) < 1:
            raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
        resolved_device = resolve_device(device)
        torch_dtype = _resolve_dtype(dtype, resolved_device)
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise InputError(f"model folder {folder} does not exist or is not a folder")
        raw_config, config = _causal_lm_config(folder)
        use_safetensors = _check_weight_files(folder, allow_pickle)
        model = _load_model(folder, config, torch_dtype, use_safetensors)
        model.to(resolved_device).eval()
        model.requires_grad_(False)
        return cls(model, path=folder, raw_config=raw_config, device=resolved_device,
                   dtype=torch_dtype, segment_size=segment_size, pairs=pairs,
                   threshold=threshold, seed_rule=seed_rule, window_size=window_size,
                   allow_pickle=allow_pickle, kv_reuse=bool(kv_reuse),
                   batch_size=None if batch_size is None else int(batch_size),
                   memory_budget_bytes=memory_budget_bytes)

    # ---- identity ---------------------------------------------------------------------

    def identity_fields(self) -> dict[str, Any]:
        """Everything that changes a score (JSON-able); ``scorer_id`` hashes it."""
        return identity_fields(self.raw_config, dtype=_dtype_name(self.dtype),
                               segment_size=self.segment_size, pairs=self.pairs,
                               threshold=self.threshold, window_size=self.window_size,
                               seed_rule=self.seed_rule, weights_sha256=self.weights_sha256(),
                               retokenized_with=self.retokenized_with)

    def scorer_id(self) -> str:
        """``pl-`` + 24 hex digits of sha256 over ``identity_fields()``."""
        return scorer_id_of(self.identity_fields())

    def weights_sha256(self) -> str:
        """sha256 over every stored tensor's name, dtype, shape and bytes, in name order
        (independent of sharding and file names). Reads the whole checkpoint once (cached):
        about 10 s for 16 GB."""
        if self._weights_sha256 is None:
            self._weights_sha256 = _weights_fingerprint(self.path, self.allow_pickle)
        return self._weights_sha256

    def config_summary(self) -> dict[str, Any]:
        """A JSON-able description of the scorer (e.g. for a table property)."""
        return {"scorer_id": self.scorer_id(), **self.identity_fields(),
                "model_path": str(self.path), "device": str(self.device),
                "kv_reuse": self.kv_reuse, "kv_note": self.kv_note,
                "batch_size": self.batch_size, "memory_budget_bytes": self.memory_budget_bytes,
                "vocab_size": self.vocab_size, "tokenizer_dir": str(self.tokenizer_dir or ""),
                "tokenizer_identity": self.tokenizer_identity}

    # ---- tokenizer (for the job's choice between window ids and re-tokenizing) --------

    @property
    def tokenizer_dir(self) -> Path | None:
        """The model folder when it holds a ``tokenizer.json``, else None."""
        return self.path if (self.path / "tokenizer.json").is_file() else None

    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer_dir is not None

    @property
    def tokenizer_identity(self) -> str | None:
        """The identity ``longattn_spark.tokenize`` gives the folder's tokenizer (what the
        windows table's ``tokenizer`` column stores), or None without a tokenizer.json. Equal
        identities mean the window ids can be scored as they are (PROLONG.md section 9)."""
        spec = self._tokenizer_spec()
        return None if spec is None else spec.identity

    @property
    def tokenizer_sha256(self) -> str | None:
        """``TokenizerSpec.sha256`` of the folder's tokenizer, or None without one."""
        spec = self._tokenizer_spec()
        return None if spec is None else spec.sha256

    def _tokenizer_spec(self) -> Any:
        if self.tokenizer_dir is None:
            return None
        if self._tokenizer is None:
            from longattn_spark.tokenize import load_tokenizer_spec

            self._tokenizer = load_tokenizer_spec(str(self.path))
        return self._tokenizer

    # ---- scoring ----------------------------------------------------------------------

    def score_window(self, ids: Sequence[int] | np.ndarray | torch.Tensor,
                     window_id: str) -> ProLongResult:
        """The ProLong score of one window (token ids, used as given: no BOS added)."""
        return self.score_windows([ids], [window_id])[0]

    def score_windows(self, windows: Sequence[Any], window_ids: Sequence[str]
                      ) -> list[ProLongResult]:
        """Scores of several windows, in order. Their segments go through the model
        together: alone passes and pair passes are batched across windows."""
        if len(windows) != len(window_ids):
            raise InputError(f"score_windows: {len(windows)} windows but "
                             f"{len(window_ids)} window ids")
        plans = [self.plan(ids, str(window_id)) for ids, window_id in zip(windows, window_ids)]
        runnable = [plan for plan in plans if plan.reason is None]
        results: dict[int, ProLongResult] = {}
        if runnable:
            offsets = np.cumsum([0] + [plan.segments.shape[0] for plan in runnable])
            segments = torch.from_numpy(np.concatenate([plan.segments for plan in runnable]))
            pair_i = np.concatenate([offsets[k] + np.array([i for i, _ in plan.pairs])
                                     for k, plan in enumerate(runnable)])
            pair_j = np.concatenate([offsets[k] + np.array([j for _, j in plan.pairs])
                                     for k, plan in enumerate(runnable)])
            alone, paired = self.perplexities(segments, pair_i, pair_j)
            pair_offset = 0
            for k, plan in enumerate(runnable):
                count = len(plan.pairs)
                results[id(plan)] = lds_from_perplexities(
                    plan.window_id, alone[offsets[k]:offsets[k + 1]], plan.pairs,
                    paired[pair_offset:pair_offset + count], n_max=plan.n_max,
                    threshold=self.threshold)
                pair_offset += count
        out = []
        for plan in plans:
            if plan.reason is None:
                out.append(results[id(plan)])
            else:
                out.append(ProLongResult(window_id=plan.window_id, score=0.0,
                                         mean_strength=None, mean_distance=None,
                                         mean_specificity=None, pairs_kept=0, pairs_scored=0,
                                         segments=int(plan.segments.shape[0]),
                                         reason=plan.reason))
        return out

    def plan(self, ids: Any, window_id: str) -> WindowPlan:
        """Check one window's ids and choose its segments and pairs (no model pass)."""
        array = _ids_array(ids, window_id)
        if array.size:
            low, high = int(array.min()), int(array.max())
            if low < 0 or high >= self.vocab_size:
                bad = low if low < 0 else high
                raise InputError(f"window {window_id!r}: token id {bad} is outside the "
                                 f"vocabulary of {self.path} (valid ids 0..{self.vocab_size - 1})")
        if self.window_size is None:
            if array.size < self.segment_size:
                raise ConfigError(f"--segment-size {self.segment_size} is larger than window "
                                  f"{window_id!r} ({array.size} tokens)")
            n_max = array.size // self.segment_size
        else:
            n_max = self.window_size // self.segment_size
        return plan_window(array, window_id, segment_size=self.segment_size, n_max=n_max,
                           pairs=self.pairs, seed_rule=self.seed_rule)

    @torch.inference_mode()
    def perplexities(self, segments: torch.Tensor, pair_i: np.ndarray, pair_j: np.ndarray,
                     *, kv_reuse: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(PPL of each segment alone ``[M]``, PPL of segment ``pair_i[k]`` after segment
        ``pair_j[k]`` ``[P]``), float64. ``segments``: LongTensor ``[M, C]``."""
        if kv_reuse is None:
            if not self._kv_checked:
                self._check_kv_reuse()
            kv_reuse = self.kv_reuse
        pair_i = np.asarray(pair_i, dtype=np.int64)
        pair_j = np.asarray(pair_j, dtype=np.int64)
        if kv_reuse:
            return self._perplexities_kv(segments, pair_i, pair_j)
        return self._perplexities_full(segments, pair_i, pair_j)

    # ---- model passes -----------------------------------------------------------------

    def _calls(self, tokens_per_sequence: int) -> int:
        """Sequences per forward call: batch_size, else what the memory budget allows for
        the logits (stored dtype, float32 copy, log-softmax), at most 256."""
        if self.batch_size is not None:
            return self.batch_size
        per_sequence = tokens_per_sequence * self._logits_width * (
            torch.finfo(self.dtype).bits // 8 + 8)
        return max(1, min(MAX_BATCH, self.memory_budget_bytes // max(1, per_sequence)))

    def _mean_nll(self, logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        """Mean NLL per row of ``targets [B, C-1]`` predicted by ``logits [B, C-1, V]``:
        float32 cross-entropy, float64 mean."""
        batch, positions, width = logits.shape
        nll = F.cross_entropy(logits.float().reshape(-1, width), targets.reshape(-1),
                              reduction="none").view(batch, positions)
        return nll.double().mean(dim=1).cpu().numpy()

    def _forward(self, input_ids: torch.Tensor, *, cache: Any = None, offset: int = 0,
                 use_cache: bool = False) -> Any:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": use_cache}
        if cache is not None:
            kwargs[self._cache_kw] = cache
            batch, length = input_ids.shape
            if self._position_ids:
                kwargs["position_ids"] = torch.arange(
                    offset, offset + length, device=self.device).unsqueeze(0).expand(batch, -1)
            else:
                kwargs["attention_mask"] = torch.ones(batch, offset + length, dtype=torch.long,
                                                      device=self.device)
        return self.model(**kwargs)

    def _perplexities_full(self, segments: torch.Tensor, pair_i: np.ndarray,
                           pair_j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The released way: alone passes, then each pair as a full seg_j + seg_i forward
        with all 2C logits."""
        c = self.segment_size
        alone_nll = np.empty(segments.shape[0])
        step = self._calls(c)
        for start in range(0, segments.shape[0], step):
            batch = segments[start:start + step].to(self.device)
            logits = self._forward(batch).logits
            alone_nll[start:start + step] = self._mean_nll(logits[:, :c - 1], batch[:, 1:])
        pair_nll = np.empty(pair_i.shape[0])
        step = self._calls(2 * c)
        for start in range(0, pair_i.shape[0], step):
            rows_i = torch.from_numpy(pair_i[start:start + step])
            rows_j = torch.from_numpy(pair_j[start:start + step])
            seg_i = segments[rows_i].to(self.device)
            batch = torch.cat([segments[rows_j].to(self.device), seg_i], dim=1)
            logits = self._forward(batch).logits
            pair_nll[start:start + step] = self._mean_nll(logits[:, c:2 * c - 1], seg_i[:, 1:])
        return np.exp(alone_nll), np.exp(pair_nll)

    def _perplexities_kv(self, segments: torch.Tensor, pair_i: np.ndarray,
                         pair_j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Alone passes in groups of segments whose KV caches are kept; then every pair whose
        j is in the group runs seg_i (C tokens, positions C..2C-1) on seg_j's cache."""
        c = self.segment_size
        total = segments.shape[0]
        alone_nll = np.empty(total)
        pair_nll = np.empty(pair_i.shape[0])
        order = np.lexsort((pair_i, pair_j))  # by j, then i
        sorted_j = pair_j[order]
        step = self._calls(c)
        group_limit: int | None = None
        group_start, next_pair = 0, 0
        while group_start < total:
            parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
            group_end = group_start
            while group_end < total and (group_limit is None or
                                         group_end - group_start < group_limit):
                end = min(group_end + step, total)
                batch = segments[group_end:end].to(self.device)
                out = self._forward(batch, use_cache=True)
                alone_nll[group_end:end] = self._mean_nll(out.logits[:, :c - 1], batch[:, 1:])
                layers = _cache_layers(_output_cache(out), end - group_end, c)
                del out
                parts.append(layers)
                if group_limit is None:
                    per_segment = sum(k.nbytes + v.nbytes for k, v in layers) / (end - group_end)
                    group_limit = max(step, int(self.memory_budget_bytes // (2 * per_segment)))
                group_end = end
            last_pair = int(np.searchsorted(sorted_j, group_end, side="left"))
            if last_pair > next_pair:
                stacked = [(torch.cat([part[n][0] for part in parts]),
                            torch.cat([part[n][1] for part in parts]))
                           for n in range(len(parts[0]))]
                del parts
                for start in range(next_pair, last_pair, step):
                    chosen = order[start:min(start + step, last_pair)]
                    local = torch.from_numpy(pair_j[chosen] - group_start).to(self.device)
                    cache = self._make_cache([(k.index_select(0, local), v.index_select(0, local))
                                              for k, v in stacked])
                    seg_i = segments[torch.from_numpy(pair_i[chosen])].to(self.device)
                    logits = self._forward(seg_i, cache=cache, offset=c, use_cache=True).logits
                    pair_nll[chosen] = self._mean_nll(logits[:, :c - 1], seg_i[:, 1:])
                    del cache, logits
                del stacked
            next_pair = last_pair
            group_start = group_end
        return np.exp(alone_nll), np.exp(pair_nll)

    def _make_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
        """A fresh cache holding ``layers`` (per layer keys/values ``[B, heads, C, dim]``), in
        the form this transformers version takes."""
        try:
            from transformers import DynamicCache
        except ImportError:  # very old transformers: legacy tuples
            return tuple((k, v) for k, v in layers)
        if "config" in inspect.signature(DynamicCache.__init__).parameters:
            cache = DynamicCache(config=self.model.config)
        else:
            cache = DynamicCache()
        for index, (keys, values) in enumerate(layers):
            cache.update(keys, values, index)
        return cache

    def _check_kv_reuse(self) -> None:
        """Once: KV reuse must give the pair perplexities of full recomputation on a small
        probe (3 segments, 3 pairs); otherwise this scorer recomputes (``kv_note``)."""
        self._kv_checked = True
        c = self.segment_size
        generator = torch.Generator().manual_seed(0)
        probe = torch.randint(0, self.vocab_size, (3, c), generator=generator)
        pair_i, pair_j = np.array([1, 2, 2]), np.array([0, 0, 1])
        try:
            _, reused = self._perplexities_kv(probe, pair_i, pair_j)
            _, full = self._perplexities_full(probe, pair_i, pair_j)
        except Exception as exc:  # noqa: BLE001 - any failure means: do not reuse
            self.kv_reuse = False
            self.kv_note = f"KV reuse failed on a probe ({type(exc).__name__}: {exc}); " \
                           f"pairs recompute seg_j"
            return
        tolerance = 1e-3 if self.dtype == torch.float32 else 5e-2
        worst = float(np.max(np.abs(np.log(reused) - np.log(full))))
        if not worst <= tolerance:
            self.kv_reuse = False
            self.kv_note = f"KV reuse differs from full recomputation on a probe (mean NLL " \
                           f"off by {worst:.2e}); pairs recompute seg_j"


# --------------------------------------------------------------------------------------
# Loading helpers
# --------------------------------------------------------------------------------------

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


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    resolved = _DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in _DTYPES.values():
        raise ConfigError(f"--dtype {dtype!r}: use one of {', '.join(_DTYPES)} or auto")
    return resolved


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _causal_lm_config(folder: Path) -> tuple[dict[str, Any], Any]:
    """config.json (raw) and its transformers config; it must be a causal LM that
    transformers knows without remote code."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_MASKED_LM_MAPPING,
    )

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{config_path}: no config.json in the model folder")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{config_path}: cannot read it as JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{config_path}: expected a JSON object")
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False,
                                            local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises ValueError/KeyError/OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{folder}: model_type {raw.get('model_type')!r} is not a model "
                         f"transformers knows without remote code ({first})") from None
    config_class = type(config)
    encoder = config_class in MODEL_FOR_MASKED_LM_MAPPING and not getattr(config, "is_decoder",
                                                                          False)
    if config_class not in MODEL_FOR_CAUSAL_LM_MAPPING or encoder:
        raise InputError(f"{folder}: model_type {config.model_type!r} is not a causal language "
                         f"model (ProLong needs one AutoModelForCausalLM can load)")
    return raw, config


def _check_weight_files(folder: Path, allow_pickle: bool) -> bool:
    """True: load safetensors; False: load pickled .bin (only with allow_pickle)."""
    if any((folder / name).is_file() for name in _SAFETENSORS):
        return True
    pickles = [name for name in _PICKLES if (folder / name).is_file()]
    if not pickles:
        raise InputError(f"{folder}: no model.safetensors or model.safetensors.index.json in "
                         f"the model folder")
    if not allow_pickle:
        raise InputError(f"{folder / pickles[0]}: pickled .bin weights can run arbitrary code "
                         f"when loaded and are refused; convert the model to safetensors, or "
                         f"pass --allow-pickle if you trust this file")
    return False


def _load_model(folder: Path, config: Any, dtype: torch.dtype,
                use_safetensors: bool) -> torch.nn.Module:
    import transformers
    from packaging.version import Version
    from transformers import AutoModelForCausalLM

    dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else \
        "torch_dtype"
    try:
        return AutoModelForCausalLM.from_pretrained(
            folder, config=config, trust_remote_code=False, local_files_only=True,
            use_safetensors=use_safetensors, **{dtype_key: dtype})
    except Exception as exc:  # noqa: BLE001 - loading fails in many ways; say where
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"{folder}: cannot load the causal LM ({type(exc).__name__}: "
                         f"{first})") from None


def _weights_fingerprint(folder: Path, allow_pickle: bool) -> str:
    """sha256 over (name, dtype, shape, bytes) of every stored tensor, in name order."""
    from safetensors import safe_open

    use_safetensors = _check_weight_files(folder, allow_pickle)
    names = _SAFETENSORS if use_safetensors else _PICKLES
    index, single = folder / names[0], folder / names[1]
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [single.name]
    tensors: dict[str, tuple[str, Any]] = {}
    for file_name in files:
        if use_safetensors:
            with safe_open(str(folder / file_name), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    tensors[name] = (file_name, None)
        else:
            state = torch.load(folder / file_name, map_location="cpu", weights_only=True,
                               mmap=True)
            for name, tensor in state.items():
                tensors[name] = (file_name, tensor)
    digest = hashlib.sha256()
    handles: dict[str, Any] = {}
    try:
        for name in sorted(tensors):
            file_name, tensor = tensors[name]
            if tensor is None:
                if file_name not in handles:
                    handles[file_name] = safe_open(str(folder / file_name), framework="pt",
                                                   device="cpu")
                tensor = handles[file_name].get_tensor(name)
            tensor = tensor.contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    finally:
        handles.clear()
    return digest.hexdigest()


def _ids_array(ids: Any, window_id: str) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    array = np.asarray(ids)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"window {window_id!r}: ids must be a 1-D sequence of integer token "
                         f"ids, got {array.dtype} of shape {array.shape}")
    return array.astype(np.int64, copy=False)


def _output_cache(output: Any) -> Any:
    """The cache a forward pass returned (``cache`` in transformers 5, else
    ``past_key_values``)."""
    keys = output.keys() if hasattr(output, "keys") else ()
    for name in ("cache", "past_key_values"):
        if name in keys and output[name] is not None:
            return output[name]
    raise RuntimeError("the model returned no KV cache (use_cache=True)")


def _cache_layers(cache: Any, batch: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) ``[batch, heads, length, dim]`` of a returned cache: a
    transformers 5 ``Cache`` (``.layers``), a 4.x ``DynamicCache`` (``key_cache``) or legacy
    tuples."""
    if hasattr(cache, "layers"):
        layers = [(layer.keys, layer.values) for layer in cache.layers]
    elif hasattr(cache, "key_cache"):
        layers = list(zip(cache.key_cache, cache.value_cache))
    elif hasattr(cache, "to_legacy_cache"):
        layers = [(item[0], item[1]) for item in cache.to_legacy_cache()]
    else:
        layers = [(item[0], item[1]) for item in cache]
    for keys, values in layers:
        for tensor in (keys, values):
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4 or \
                    tensor.shape[0] != batch or tensor.shape[-2] != length:
                raise RuntimeError("the model's KV cache is not [batch, heads, C, dim] per "
                                   "layer")
    return layers
