"""ProLong's scorer: a frozen causal LM run over a window's segments and segment pairs, its
perplexities turned into the LDS by :mod:`longattn_spark.scorers.prolong.lds` (the method,
what is computed and how it differs from the released code). No Spark here.

>>> scorer = ProLongScorer.from_pretrained("/models/opt-350m-safetensors")
>>> result = scorer.score_window(window_ids, window_id)     # result.score, result.reason, ...
>>> results = scorer.score_windows([ids_a, ids_b], ["a", "b"])   # batched across windows
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longattn_spark.devices import dtype_name
from longattn_spark.errors import ConfigError, InputError
from longattn_spark.scorers.prolong.lds import (
    DEFAULT_SEED_RULE,
    MAX_BATCH,
    PROLONG_MATH_VERSION,
    REASON_NAN,
    REASON_TOO_FEW_PAIRS,
    REASON_TOO_FEW_SEGMENTS,
    RELEASED_REFERENCE,
    ProLongResult,
    WindowPlan,
    _checked_settings,
    check_seed_rule,
    checked_settings,
    dependency_specificity,
    identity_fields,
    lds_from_perplexities,
    plan_window,
    scorer_id_of,
    window_rng,
)
from longattn_spark.weights.causal_lm import load_causal_lm
from longattn_spark.weights.fingerprint import weights_sha256

__all__ = [
    "DEFAULT_SEED_RULE", "MAX_BATCH", "PROLONG_MATH_VERSION", "REASON_NAN", "REASON_TOO_FEW_PAIRS",
    "REASON_TOO_FEW_SEGMENTS", "RELEASED_REFERENCE", "ProLongResult", "ProLongScorer",
    "WindowPlan", "check_seed_rule", "checked_settings", "dependency_specificity",
    "identity_fields", "lds_from_perplexities", "plan_window", "scorer_id_of", "window_rng",
]

_GIB = 1 << 30


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
        segment_size, pairs, threshold, window_size = _checked_settings(
            segment_size, pairs, threshold, window_size)
        seed_rule = check_seed_rule(seed_rule)
        if batch_size is not None and int(batch_size) < 1:
            raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
        lm = load_causal_lm(path, device=device, dtype=dtype, allow_pickle=allow_pickle,
                            method="ProLong")
        model, folder, raw_config = lm.model, lm.folder, lm.raw_config
        resolved_device, torch_dtype = lm.device, lm.dtype
        return cls(model, path=folder, raw_config=raw_config, device=resolved_device,
                   dtype=torch_dtype, segment_size=segment_size, pairs=pairs,
                   threshold=threshold, seed_rule=seed_rule, window_size=window_size,
                   allow_pickle=allow_pickle, kv_reuse=bool(kv_reuse),
                   batch_size=None if batch_size is None else int(batch_size),
                   memory_budget_bytes=memory_budget_bytes)

    # ---- identity ---------------------------------------------------------------------

    def identity_fields(self) -> dict[str, Any]:
        """Everything that changes a score (JSON-able); ``scorer_id`` hashes it."""
        return identity_fields(self.raw_config, dtype=dtype_name(self.dtype),
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
            self._weights_sha256 = weights_sha256(self.path, self.allow_pickle)
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
        """The identity ``longattn_spark.tokenizer`` gives the folder's tokenizer (what the
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
            from longattn_spark.tokenizer import load_tokenizer_spec

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
