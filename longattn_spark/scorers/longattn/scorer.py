"""Layer0Scorer: DS and variance of windows from a model's attention at layer N (0: the
paper's layer 0).

Per window (DESIGN.md, "The method, exactly"): token embedding -> (at layer N > 0: layers
0 .. N-1 in full, transformers' own decoder-layer modules with SDPA attention, built from the
checkpoint's tensors) -> layer N's input RMSNorm (the model's eps) -> q_proj, k_proj (+ bias)
-> heads -> RoPE as the config says -> per query head the tail sums of the causal softmax
(``tail_attention_sums``, or the Triton kernel on CUDA) -> proportion and variance per head ->
their means over heads. Nothing else of the model is read or run.

Kernels (``kernel=``: ``torch``, ``triton``, ``fused``, ``auto``), their choice and their
fallbacks: ``kernels.py``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longattn_spark.devices import dtype_name as _dtype_name
from longattn_spark.devices import resolve_device, resolve_dtype
from longattn_spark.errors import InputError
from longattn_spark.scorers.identity import scorer_id as _scorer_id
from longattn_spark.scorers.longattn.attention_sums import (
    DEFAULT_BLOCK_SIZE,
    MATH_VERSION,
    ds_and_variance,
)
from longattn_spark.scorers.longattn.checkpoint import (
    SUPPORTED_MODEL_TYPES,
    Layer0Checkpoint,
    config_head_dim,
    load_layer0_checkpoint,
)
from longattn_spark.scorers.longattn.kernels import KernelPaths, resolve_triton_kernel
from longattn_spark.scorers.longattn.rope import (
    RotaryEmbedding,
    config_with_rope_theta,
    modeling_module,
)
from longattn_spark.scorers.model_input import windows_with_bos
from longattn_spark.weights.configs import bos_token_id

MIN_SEQ_LEN = 8
_PROJECTION_CHUNK_ELEMENTS = 1 << 24
"""Hidden-state elements per projection chunk: embedding, norm, q/k projection and RoPE run
over chunks of positions, so their temporaries stay ~64 MiB whatever the window length."""


@dataclass(frozen=True)
class ScoreOutput:
    """Scores of a batch of B windows, all float64 numpy arrays.

    ``ds``/``variance`` are ``[B]`` (means over query heads), ``ds_heads``/``var_heads`` are
    ``[B, n_query_heads]``. ``seq_len`` and ``min_distance`` are the L and k used.
    """

    ds: np.ndarray
    variance: np.ndarray
    ds_heads: np.ndarray
    var_heads: np.ndarray
    seq_len: int
    min_distance: int


def build_model_input(window_ids: Any, bos_id: int, seq_len: int) -> torch.Tensor:
    """LongTensor ``[B, seq_len]``: BOS followed by the first ``seq_len - 1`` tokens of each
    window.

    ``window_ids``: one window (1-D array, tensor or list of ints) or several (a 2-D array or
    tensor, or a sequence of 1-D windows of possibly different lengths). Every window must
    have at least ``seq_len - 1`` tokens.
    """
    if seq_len < 2:
        raise InputError(f"seq_len must be >= 2, got {seq_len}")
    rows = _windows_as_rows(window_ids)
    return torch.from_numpy(windows_with_bos([row.cpu().numpy() for row in rows], int(bos_id),
                                             seq_len))


def _windows_as_rows(window_ids: Any) -> list[torch.Tensor]:
    if isinstance(window_ids, torch.Tensor) or (isinstance(window_ids, np.ndarray)
                                                and window_ids.dtype != object):
        tensor = torch.as_tensor(window_ids)
        if tensor.dim() == 1:
            tensor = tensor.unsqueeze(0)
        if tensor.dim() != 2:
            raise InputError(f"window_ids must be 1-D or 2-D, got shape {tuple(tensor.shape)}")
        rows = list(tensor)
    else:
        items = list(window_ids)
        nested = bool(items) and not isinstance(items[0], (int, np.integer))
        rows = [torch.as_tensor(np.asarray(item)) for item in items] if nested else \
            [torch.as_tensor(np.asarray(items, dtype=np.int64))]
    if not rows:
        raise InputError("window_ids holds no window")
    for index, row in enumerate(rows):
        if row.dim() != 1 or (row.numel() and row.dtype.is_floating_point):
            raise InputError(f"window {index}: expected a 1-D sequence of integer token ids")
    return rows


class Layer0Scorer(KernelPaths):
    """Scores windows with one model's attention at layer N (see the module docstring).

    ``scorer_id`` identifies what this scorer computes with the sequence length left to the
    caller: it covers the model identity (a hash of the tensors read), the config
    fields that shape the layer's attention, the layer, the min_distance policy, the dtype,
    the RoPE settings after any override and ``MATH_VERSION``. Two scores with the same
    ``scorer_id`` *and* the same seq_len are comparable. ``scorer_id_for(seq_len)`` puts
    that seq_len and the min_distance it implies in the hash as well; the score job keys its
    rows on it. Device and kernel are not part of either id: they change results only
    within floating-point rounding.
    """

    def __init__(self, checkpoint: Layer0Checkpoint, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32, min_distance: int | None = None,
                 rope_theta: float | None = None, kernel: str = "auto",
                 block_size: int | None = None) -> None:
        self.checkpoint = checkpoint
        self.layer = int(checkpoint.layer)
        self.device = torch.device("meta") if checkpoint.described_only else \
            resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if min_distance is not None and int(min_distance) < 0:
            raise InputError(f"min_distance must be >= 0 (or None for L // 4), got "
                             f"{min_distance}")
        self.min_distance = None if min_distance is None else int(min_distance)
        self.rope_theta = None if rope_theta is None else float(rope_theta)
        self.block_size = int(block_size or DEFAULT_BLOCK_SIZE)
        if self.block_size < 1:
            raise InputError(f"block_size must be >= 1, got {block_size}")
        self.config = config_with_rope_theta(checkpoint.config, self.rope_theta)
        self.head_dim = config_head_dim(self.config)
        self.n_query_heads = int(self.config.num_attention_heads)
        self.n_kv_heads = int(self.config.num_key_value_heads)
        self.rope = RotaryEmbedding(self.config, checkpoint.model_type, self.device)
        self._kernel_requested = kernel
        try:  # the fused path needs the Triton sums as kernel "triton" does
            self._triton_sums, self.kernel_note = resolve_triton_kernel(
                "triton" if kernel == "fused" else kernel, self.device)
        except InputError as exc:
            if kernel != "fused":
                raise
            raise InputError(str(exc).replace("kernel 'triton'", "kernel 'fused'")) from None
        self.kernel = "torch" if self._triton_sums is None else "triton"
        self._fused: Any = None
        if kernel in ("fused", "auto") and self._triton_sums is not None:
            self._fused, why_not = self._fused_candidate()
            if why_not:
                self._refuse_fused(why_not)
        self._load_weights()
        if self._fused is not None:
            why_not = self._fused_self_check()
            if why_not:
                self._refuse_fused(why_not)
            else:
                self.kernel = "fused"

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32,
                        min_distance: int | None = None, rope_theta: float | None = None,
                        allow_pickle: bool = False, kernel: str = "auto",
                        block_size: int | None = None, layer: int = 0) -> Layer0Scorer:
        """A scorer of layer ``layer``'s attention for the checkpoint in folder ``path``
        (config.json + safetensors)."""
        checkpoint = load_layer0_checkpoint(path, allow_pickle=allow_pickle, layer=layer)
        return cls(checkpoint, device=device, dtype=dtype, min_distance=min_distance,
                   rope_theta=rope_theta, kernel=kernel, block_size=block_size)

    @classmethod
    def describing(cls, checkpoint: Layer0Checkpoint, dtype: torch.dtype | str = torch.float32,
                   min_distance: int | None = None, rope_theta: float | None = None
                   ) -> Layer0Scorer:
        """A scorer that only describes: ``scorer_id``, ``scorer_id_for``, ``config_summary``,
        ``bos_id``, ``vocab_size`` exactly as a scoring one would have them, for a checkpoint
        described from its headers (``describe_layer0_checkpoint``: tensors on the meta
        device, no weights read). ``score`` refuses."""
        if not checkpoint.described_only:
            checkpoint = dataclasses.replace(
                checkpoint, tensors={role: t.to("meta") for role, t in
                                     checkpoint.tensors.items()},
                _fingerprint=checkpoint.fingerprint())
        return cls(checkpoint, device="meta", dtype=dtype, min_distance=min_distance,
                   rope_theta=rope_theta, kernel="torch")

    def _load_weights(self) -> None:
        tensors = self.checkpoint.tensors
        on_device = {"device": self.device, "dtype": self.dtype}
        # The embedding keeps its stored dtype (rows are widened after lookup, which gives
        # the same values) so a bf16 vocabulary table is never copied on the CPU.
        self._embed = tensors["embed_tokens"].to(self.device)
        norm_class = getattr(modeling_module(self.checkpoint.model_type),
                             f"{SUPPORTED_MODEL_TYPES[self.checkpoint.model_type]}RMSNorm")
        self._norm = norm_class(self.config.hidden_size, eps=self.config.rms_norm_eps)
        self._norm.weight = torch.nn.Parameter(tensors["input_layernorm"].to(**on_device),
                                               requires_grad=False)
        self._q_weight = tensors["q_proj.weight"].to(**on_device)
        self._k_weight = tensors["k_proj.weight"].to(**on_device)
        self._q_bias = tensors["q_proj.bias"].to(**on_device) if "q_proj.bias" in tensors \
            else None
        self._k_bias = tensors["k_proj.bias"].to(**on_device) if "k_proj.bias" in tensors \
            else None
        if self._fused is not None:
            self._build_fused_weights()
        self._lower_layers = [] if self.device.type == "meta" else self._build_lower_layers()

    def _build_lower_layers(self) -> list[torch.nn.Module]:
        """Layers 0 .. N-1: transformers' decoder-layer modules of the model type, SDPA
        attention, weights from the checkpoint (every tensor of those layers, strictly)."""
        if self.layer == 0:
            return []
        model_type = self.checkpoint.model_type
        layer_class = getattr(modeling_module(model_type),
                              f"{SUPPORTED_MODEL_TYPES[model_type]}DecoderLayer")
        config = copy.deepcopy(self.config)
        config._attn_implementation = "sdpa"
        layers = []
        for index in range(self.layer):
            prefix = f"layers.{index}."
            state = {role[len(prefix):]: tensor for role, tensor in
                     self.checkpoint.tensors.items() if role.startswith(prefix)}
            with torch.device("meta"):
                module = layer_class(config, layer_idx=index)
            try:
                module.load_state_dict(state, strict=True, assign=True)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise InputError(f"{self.checkpoint.path}: layer {index}'s tensors do not fit "
                                 f"{layer_class.__name__} ({first})") from None
            layers.append(module.to(device=self.device, dtype=self.dtype).eval())
        return layers

    @property
    def bos_id(self) -> int:
        """The BOS token id from config.json (or generation_config.json)."""
        bos = _bos_token_id(self.checkpoint)
        if bos is None:
            raise InputError(f"{self.checkpoint.path}: neither config.json nor "
                             f"generation_config.json sets bos_token_id")
        return bos

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding table: valid ids are 0 .. vocab_size - 1."""
        return int(self._embed.shape[0])

    def min_distance_for(self, seq_len: int) -> int:
        """k for sequences of length ``seq_len``: the fixed min_distance, else L // 4."""
        return seq_len // 4 if self.min_distance is None else self.min_distance

    @property
    def scorer_id(self) -> str:
        """Id of this scorer with seq_len left to the caller (see the class docstring)."""
        policy = "L//4" if self.min_distance is None else self.min_distance
        return _stable_id({**self._identity(), "seq_len": "caller", "min_distance": policy})

    def scorer_id_for(self, seq_len: int) -> str:
        """Id of this scorer's scores for sequences of ``seq_len`` tokens (incl. BOS)."""
        seq_len = int(seq_len)
        return _stable_id({**self._identity(), "seq_len": seq_len,
                           "min_distance": self.min_distance_for(seq_len)})

    def _identity(self) -> dict[str, Any]:
        config = self.config
        return {
            "math_version": MATH_VERSION,
            "layer": self.layer,
            "model": self.checkpoint.fingerprint(),
            "model_type": self.checkpoint.model_type,
            "hidden_size": int(config.hidden_size),
            "num_attention_heads": self.n_query_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": float(config.rms_norm_eps),
            "max_position_embeddings": int(config.max_position_embeddings),
            "rope": self.rope.parameters,
            "dtype": _dtype_name(self.dtype),
        }

    def config_summary(self) -> dict[str, Any]:
        """A JSON-able description of the scorer (stored as a table property)."""
        return {
            "scorer_id": self.scorer_id,
            "math_version": MATH_VERSION,
            "model_path": str(self.checkpoint.path),
            "model_type": self.checkpoint.model_type,
            "model_fingerprint": self.checkpoint.fingerprint(),
            "layer": self.layer,
            "tensors_read": list(self.checkpoint.tensor_names_read),
            "files_read": list(self.checkpoint.files_read),
            "vocab_size": self.vocab_size,
            "bos_id": _bos_token_id(self.checkpoint),
            "hidden_size": int(self.config.hidden_size),
            "n_query_heads": self.n_query_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": float(self.config.rms_norm_eps),
            "max_position_embeddings": int(self.config.max_position_embeddings),
            "rope_parameters": self.rope.parameters,
            "rope_theta_override": self.rope_theta,
            "min_distance": "L//4" if self.min_distance is None else self.min_distance,
            "dtype": _dtype_name(self.dtype),
            "device": str(self.device),
            "kernel": self.kernel,
            "kernel_note": self.kernel_note,
            "block_size": self.block_size,
        }

    def score(self, ids: torch.Tensor) -> ScoreOutput:
        """DS and variance of each row of ``ids`` (LongTensor ``[B, L]``, scored as given:
        callers add BOS with ``build_model_input``)."""
        if self.device.type == "meta":
            raise InputError(f"this scorer of {self.checkpoint.path} only describes the model "
                             f"(built from its headers); load it with from_pretrained to score")
        ids = self._checked_ids(ids)
        seq_len = ids.shape[1]
        min_distance = self._checked_min_distance(seq_len)
        self._check_sliding_window(seq_len)
        with torch.inference_mode():
            q, k = self._query_key(ids, min_distance)
            sum_p, sum_p2 = self._tail_sums(q, k, min_distance)
            ds_heads, var_heads = ds_and_variance(sum_p, sum_p2, seq_len)
        ds_heads = ds_heads.cpu().numpy()
        var_heads = var_heads.cpu().numpy()
        return ScoreOutput(ds=ds_heads.mean(axis=1), variance=var_heads.mean(axis=1),
                           ds_heads=ds_heads, var_heads=var_heads, seq_len=seq_len,
                           min_distance=min_distance)

    def rotated_query_key(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scored layer's queries ``[B, Hq, L, D]`` and keys ``[B, Hkv, L, D]`` after
        RoPE, in the compute dtype, for already checked ids on this scorer's device."""
        batch, seq_len = ids.shape
        cos, sin = self.rope.cos_sin(seq_len, self.dtype, self.device)
        below = self._hidden_below(ids, cos, sin) if self._lower_layers else None
        q = torch.empty(batch, self.n_query_heads, seq_len, self.head_dim, dtype=self.dtype,
                        device=self.device)
        k = torch.empty(batch, self.n_kv_heads, seq_len, self.head_dim, dtype=self.dtype,
                        device=self.device)
        chunk = max(128, _PROJECTION_CHUNK_ELEMENTS // (batch * int(self.config.hidden_size)))
        for c0 in range(0, seq_len, chunk):
            c1 = min(c0 + chunk, seq_len)
            inputs = F.embedding(ids[:, c0:c1], self._embed).to(self.dtype) if below is None \
                else below[:, c0:c1]
            hidden = self._norm(inputs)
            q_chunk = self._heads(F.linear(hidden, self._q_weight, self._q_bias),
                                  self.n_query_heads)
            k_chunk = self._heads(F.linear(hidden, self._k_weight, self._k_bias),
                                  self.n_kv_heads)
            q[:, :, c0:c1], k[:, :, c0:c1] = self.rope.apply(
                q_chunk, k_chunk, cos[:, c0:c1], sin[:, c0:c1])
        return q, k

    def _hidden_below(self, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                      ) -> torch.Tensor:
        """The hidden states entering the scored layer: the embedding through layers
        0 .. N-1 (causal SDPA attention over the whole sequence)."""
        batch, seq_len = ids.shape
        hidden = F.embedding(ids, self._embed).to(self.dtype)
        positions = torch.arange(seq_len, device=self.device).unsqueeze(0).expand(batch, -1)
        for module in self._lower_layers:
            out = module(hidden, attention_mask=None, position_ids=positions,
                         position_embeddings=(cos, sin))
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def _heads(self, projected: torch.Tensor, n_heads: int) -> torch.Tensor:
        batch, positions, _ = projected.shape
        return projected.view(batch, positions, n_heads, self.head_dim).transpose(1, 2)

    def _checked_ids(self, ids: Any) -> torch.Tensor:
        ids = torch.as_tensor(ids)
        if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise InputError(f"ids must be an integer tensor [B, L], got {ids.dtype} of shape "
                             f"{tuple(ids.shape)}")
        batch, seq_len = ids.shape
        if batch < 1:
            raise InputError("ids holds no window (B = 0)")
        if seq_len < MIN_SEQ_LEN:
            raise InputError(f"seq_len {seq_len} is too short; the scorer needs L >= "
                             f"{MIN_SEQ_LEN}")
        ids = ids.to(device=self.device, dtype=torch.long)
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bool(bad.any()):
            row, position = (int(i) for i in bad.nonzero()[0])
            raise InputError(f"ids row {row}, position {position}: token id "
                             f"{int(ids[row, position])} is outside the vocabulary of "
                             f"{self.checkpoint.path} (valid ids 0..{self.vocab_size - 1})")
        return ids

    def check_seq_len(self, seq_len: int) -> None:
        """InputError when sequences of ``seq_len`` tokens cannot be scored (too short, no
        pair at distance >= k, longer than a sliding window up to layer N): for callers that
        want to fail before scoring anything."""
        if seq_len < MIN_SEQ_LEN:
            raise InputError(f"seq_len {seq_len} is too short; the scorer needs L >= "
                             f"{MIN_SEQ_LEN}")
        self._checked_min_distance(seq_len)
        self._check_sliding_window(seq_len)

    def _checked_min_distance(self, seq_len: int) -> int:
        min_distance = self.min_distance_for(seq_len)
        if min_distance >= seq_len:
            raise InputError(f"min_distance {min_distance} leaves no attention to score in "
                             f"sequences of {seq_len} tokens; it must be < seq_len")
        return min_distance

    def _check_sliding_window(self, seq_len: int) -> None:
        for layer in range(self.layer + 1):
            window = layer_sliding_window(self.config, self.checkpoint.model_type, layer)
            if window is not None and seq_len > window:
                raise InputError(f"{self.checkpoint.path}/config.json: layer {layer} uses "
                                 f"sliding-window attention ({window} tokens), which the "
                                 f"scorer does not implement; use seq_len <= {window} (got "
                                 f"{seq_len})")


def layer_sliding_window(config: Any, model_type: str, layer: int = 0) -> int | None:
    """The sliding window of layer ``layer``'s attention, or None when it attends to all of
    the past (as transformers decides it for these model types)."""
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    if model_type == "mistral":
        return int(window)
    layer_types = getattr(config, "layer_types", None)
    if model_type == "qwen2" and layer_types and len(layer_types) > layer and \
            layer_types[layer] == "sliding_attention":
        return int(window)
    return None


def _bos_token_id(checkpoint: Layer0Checkpoint) -> int | None:
    return bos_token_id(checkpoint.raw_config, checkpoint.generation_config)


def _stable_id(payload: dict[str, Any]) -> str:
    return _scorer_id("l0", payload)
