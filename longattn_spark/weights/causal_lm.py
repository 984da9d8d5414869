"""Whole causal LMs (ProLong, loss gain, any method that runs the whole model): checked and
described by the driver without loading them (``describe_causal_lm``: config.json and the
weight headers, every weight fingerprinted as it streams past), and loaded on an executor
(``load_causal_lm``: transformers' own class for the model_type, safetensors, never remote
code). Torch and transformers are imported only where used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longattn_spark.devices import resolve_device, resolve_dtype
from longattn_spark.errors import ConfigError, InputError
from longattn_spark.weights.files import (
    PICKLE_INDEX,
    PICKLE_SINGLE,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    pickle_not_in_place,
    pickle_refused,
    uses_safetensors,
)
from longattn_spark.weights.fingerprint import safetensors_sha256, weights_sha256
from longattn_spark.weights.location import ModelLocation
from longattn_spark.weights.reader import ModelReader

if TYPE_CHECKING:
    import torch


def causal_lm_config(folder: Path, method: str = "this method") -> tuple[dict[str, Any], Any]:
    """config.json (raw) and its transformers config; it must be a causal LM that
    transformers knows without remote code (one-line ``InputError`` otherwise)."""
    import json

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
                         f"model ({method} needs one AutoModelForCausalLM can load)")
    return raw, config


@dataclass
class CausalLM:
    """A causal LM loaded for scoring (eval mode, no gradients) and what it came from."""

    model: Any
    folder: Path
    raw_config: dict[str, Any]
    device: Any
    dtype: Any


def load_causal_lm(path: str | Path, *, device: str | torch.device = "cpu",
                   dtype: str | torch.dtype = "float32", allow_pickle: bool = False,
                   method: str = "this method") -> CausalLM:
    """The causal LM in folder ``path`` on ``device`` in ``dtype``: transformers' own class
    for its model_type (``AutoModelForCausalLM``), never remote code, safetensors unless
    ``allow_pickle``. One-line ``InputError`` for a folder that is none of that."""
    import transformers
    from packaging.version import Version
    from transformers import AutoModelForCausalLM

    resolved = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved, ConfigError)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(f"model folder {folder} does not exist or is not a folder")
    raw_config, config = causal_lm_config(folder, method)
    safetensors = uses_safetensors(folder, allow_pickle)
    dtype_key = "dtype" if Version(transformers.__version__) >= Version("4.56") else \
        "torch_dtype"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, config=config, trust_remote_code=False, local_files_only=True,
            use_safetensors=safetensors, **{dtype_key: torch_dtype})
    except Exception as exc:  # noqa: BLE001 - loading fails in many ways; say where
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"{folder}: cannot load the causal LM ({type(exc).__name__}: "
                         f"{first})") from None
    model.to(resolved).eval()
    model.requires_grad_(False)
    return CausalLM(model=model, folder=folder, raw_config=raw_config, device=resolved,
                    dtype=torch_dtype)


# --- the driver: described without loading it ----------------------------------------------

@dataclass(frozen=True)
class CausalLMDescription:
    """A whole causal LM as the driver knows it (config.json and the weight headers)."""

    raw_config: dict
    model_type: str
    vocab_size: int
    weights_sha256: str   # ``fingerprint.weights_sha256``, streamed from the headers


def describe_causal_lm(spark, location: ModelLocation, *, allow_pickle: bool,
                       method: str = "this method") -> CausalLMDescription:
    """Check a whole-model folder (a causal LM transformers knows without remote code;
    safetensors, or pickled ``.bin`` only with ``--allow-pickle`` and only in place) and
    fingerprint every weight from config.json, the index and the safetensors headers, the
    tensor bytes hashed as they stream past (``ModelReader.sha256``: Python reads on the local
    disk, the driver JVM's Hadoop streams elsewhere), so the driver neither loads the model nor
    copies its files. One-line ``InputError`` otherwise."""
    import tempfile

    reader = ModelReader(spark, location)
    names = set(reader.names())
    where = location.model
    with tempfile.TemporaryDirectory(prefix="longattn-config-") as work:
        Path(work, "config.json").write_bytes(reader.read("config.json"))
        try:
            raw, config = causal_lm_config(Path(work), method)
        except InputError as exc:
            raise InputError(str(exc).replace(str(Path(work, "config.json")),
                                              f"{where}/config.json").replace(work, where)
                             ) from None
    vocab_size = int(getattr(config, "vocab_size", 0) or 0)
    if SAFETENSORS_INDEX in names or SAFETENSORS_SINGLE in names:
        digest = safetensors_sha256(reader, names, where)
    else:
        pickles = [n for n in (PICKLE_INDEX, PICKLE_SINGLE) if n in names]
        if not pickles:
            raise InputError(f"--model {where}: no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX} "
                             f"in the model folder")
        if not allow_pickle:
            raise pickle_refused(f"--model {where}/{pickles[0]}")
        if not location.in_place:
            raise pickle_not_in_place(f"--model {where}/{pickles[0]}", where)
        digest = weights_sha256(Path(location.folder), True)
    return CausalLMDescription(raw_config=raw, model_type=str(raw.get("model_type")),
                               vocab_size=vocab_size, weights_sha256=digest)
