"""Models for scoring, for every method, without Spark: the weight files' names, the one
refusal of pickled ``.bin`` weights (they can run code when loaded) unless
``--allow-pickle``, the one device and dtype resolution, and loading a whole causal LM
(transformers' own class, safetensors, never remote code). Torch is imported only where used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longattn_spark.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def pickle_refused(path: str) -> InputError:
    """The error for pickled weights without ``--allow-pickle`` (``path``: the .bin file)."""
    return InputError(f"{path}: pickled .bin weights can run arbitrary code when loaded and are "
                      f"refused; convert the model to safetensors, or pass --allow-pickle "
                      f"(allow_pickle=True) if you trust this file")


def pickle_not_in_place(path: str, where: str) -> InputError:
    """A pickled checkpoint has no header to read remotely: only a local or mounted folder."""
    return InputError(f"{path}: a pickled .bin checkpoint can only be scored from a local or "
                      f"mounted folder; convert it to safetensors to read it from {where}")


def uses_safetensors(folder: Path, allow_pickle: bool) -> bool:
    """True: the folder's weights are safetensors; False: pickled .bin, only with
    ``allow_pickle`` (``pickle_refused`` otherwise)."""
    if any((folder / name).is_file() for name in (SAFETENSORS_INDEX, SAFETENSORS_SINGLE)):
        return True
    pickles = [name for name in (PICKLE_INDEX, PICKLE_SINGLE) if (folder / name).is_file()]
    if not pickles:
        raise InputError(f"{folder}: no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX} in the "
                         f"model folder")
    if not allow_pickle:
        raise pickle_refused(str(folder / pickles[0]))
    return False


# --- devices and dtypes --------------------------------------------------------------------------

def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a CUDA device must exist."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"device {device!r} is not a torch device (cpu, cuda, cuda:N, "
                         f"auto)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was requested but CUDA is not available")
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported (cpu, cuda, cuda:N, auto)")
    return resolved


def resolve_dtype(dtype: torch.dtype | str, device: torch.device,
                  error: type[Exception] = InputError) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on the CPU (the CPU also runs bfloat16 and
    float16, slower and less exact); else one of ``DTYPE_NAMES`` or its torch dtype."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    allowed = {name: getattr(torch, name) for name in DTYPE_NAMES}
    resolved = allowed.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in allowed.values():
        raise error(f"--dtype {dtype!r} is not supported; use one of {', '.join(allowed)} or "
                    f"auto")
    return resolved


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- whole causal LMs (prolong, lossgain, ...) ---------------------------------------------------

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


def weights_sha256(folder: Path, allow_pickle: bool) -> str:
    """sha256 over (name, dtype, shape, bytes) of every stored tensor, in name order
    (independent of sharding and file names): a whole model's fingerprint, read from a local
    folder (the driver streams the same hash from the headers: ``runtime.describe_causal_lm``).
    """
    import hashlib
    import json

    import torch
    from safetensors import safe_open

    use_safetensors = uses_safetensors(folder, allow_pickle)
    names = (SAFETENSORS_INDEX, SAFETENSORS_SINGLE) if use_safetensors else \
        (PICKLE_INDEX, PICKLE_SINGLE)
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
