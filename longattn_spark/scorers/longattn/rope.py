"""RoPE exactly as transformers computes it for the model's config.

Nothing here re-derives the rotary maths: the cos/sin tables come from the model type's own
rotary embedding class (``LlamaRotaryEmbedding`` ...), which picks its init function from
``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` by ``rope_type`` (``llama3``,
``linear``, ``dynamic``, ``yarn`` ...), and they are applied with the same module's
``apply_rotary_pos_emb``. A ``rope_theta`` override (the authors' released code scored with
one) replaces the base in the config before the tables are built.
"""

from __future__ import annotations

import copy
import importlib
from types import ModuleType
from typing import Any

import torch

from longattn_spark.errors import InputError
from longattn_spark.scorers.longattn.checkpoint import SUPPORTED_MODEL_TYPES


def modeling_module(model_type: str) -> ModuleType:
    """transformers' modeling module of a supported model_type (its RoPE, RMSNorm)."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(f"model_type {model_type!r} is not supported; supported: "
                         f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}")
    return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")


def config_with_rope_theta(config: Any, rope_theta: float | None) -> Any:
    """A copy of ``config`` whose RoPE base is ``rope_theta`` (the config itself if None)."""
    if rope_theta is None:
        return config
    if not rope_theta > 0:
        raise InputError(f"rope_theta must be > 0, got {rope_theta}")
    config = copy.deepcopy(config)
    parameters = getattr(config, "rope_parameters", None)
    if isinstance(parameters, dict):
        parameters["rope_theta"] = float(rope_theta)
    else:  # transformers 4.x keeps the base as a plain attribute
        config.rope_theta = float(rope_theta)
    return config


def rope_parameters(config: Any) -> dict[str, Any]:
    """The RoPE settings the tables are built from, as a JSON-able dict."""
    parameters = getattr(config, "rope_parameters", None)
    if isinstance(parameters, dict):
        return {key: parameters[key] for key in sorted(parameters)}
    legacy = dict(getattr(config, "rope_scaling", None) or {})
    legacy["rope_theta"] = getattr(config, "rope_theta", None)
    return {key: legacy[key] for key in sorted(legacy)}


class RotaryEmbedding:
    """The model's own rotary embedding for a config, on one device."""

    def __init__(self, config: Any, model_type: str, device: torch.device) -> None:
        module = modeling_module(model_type)
        prefix = SUPPORTED_MODEL_TYPES[model_type]
        self._rotary = getattr(module, f"{prefix}RotaryEmbedding")(config).to(device)
        self._apply = module.apply_rotary_pos_emb
        self.parameters = rope_parameters(config)

    def cos_sin(self, seq_len: int, dtype: torch.dtype,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[1, seq_len, head_dim]`` for positions ``0 .. seq_len-1``, in
        ``dtype`` as the model would hand them to its attention."""
        positions = torch.arange(seq_len, device=device).unsqueeze(0)
        like = torch.empty(0, dtype=dtype, device=device)
        with torch.no_grad():
            return self._rotary(like, positions)

    def apply(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
              sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``q [B, Hq, n, D]`` and ``k [B, Hkv, n, D]`` by ``cos/sin [1, n, D]``."""
        return self._apply(q, k, cos, sin)
