"""Read only what layer 0's attention scores need from a local checkpoint folder.

The folder holds ``config.json`` and either ``model.safetensors`` or a sharded
``model.safetensors.index.json``. Only five or six tensors are read: the token embedding,
layer 0's input RMSNorm weight, and layer 0's ``q_proj`` / ``k_proj`` weights (plus their
biases where the architecture has them). No model is instantiated and no other tensor is
touched.

Memory: safetensors memory-maps the file, so a tensor read here occupies memory only for
its own pages once used (about 1× its size); tensors are kept in their stored dtype and
nothing else in the file is paged in. Pickled ``.bin`` checkpoints can execute code when
loaded and are refused unless the caller opts in with ``allow_pickle=True``; even then they
are read with ``torch.load(weights_only=True)`` and only the needed tensors are kept.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from longattn_spark.errors import InputError

SUPPORTED_MODEL_TYPES: dict[str, str] = {"llama": "Llama", "mistral": "Mistral",
                                          "qwen2": "Qwen2"}
"""model_type in config.json -> the class-name prefix of its transformers modeling module."""

ROLE_NAMES: dict[str, str] = {
    "embed_tokens": "embed_tokens.weight",
    "input_layernorm": "layers.0.input_layernorm.weight",
    "q_proj.weight": "layers.0.self_attn.q_proj.weight",
    "q_proj.bias": "layers.0.self_attn.q_proj.bias",
    "k_proj.weight": "layers.0.self_attn.k_proj.weight",
    "k_proj.bias": "layers.0.self_attn.k_proj.bias",
}
"""What the scorer needs (its role) -> the tensor name below the model's prefix."""

OPTIONAL_ROLES = frozenset({"q_proj.bias", "k_proj.bias"})
NAME_PREFIXES = ("model.", "")  # *ForCausalLM checkpoints, then bare *Model checkpoints

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


@dataclass
class Layer0Checkpoint:
    """The layer-0 tensors of one checkpoint, in their stored dtype, on the CPU.

    ``tensors`` is keyed by role (see ``ROLE_NAMES``); ``tensor_names_read`` lists the names
    exactly as read from the checkpoint files, and ``files_read`` the files opened for them.
    """

    path: Path
    raw_config: dict[str, Any]
    config: Any  # the model_type's transformers config class (LlamaConfig, ...)
    tensors: dict[str, torch.Tensor]
    tensor_names_read: tuple[str, ...]
    files_read: tuple[str, ...]
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def model_type(self) -> str:
        return self.raw_config["model_type"]

    @property
    def has_qk_bias(self) -> bool:
        return "q_proj.bias" in self.tensors

    @property
    def bytes_read(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def fingerprint(self) -> str:
        """sha256 over the roles, dtypes, shapes and bytes of the tensors read (cached): the
        model identity part of a scorer_id, independent of file layout and sharding."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for role in sorted(self.tensors):
                tensor = self.tensors[role].contiguous()
                digest.update(f"{role}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def load_layer0_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> Layer0Checkpoint:
    """Read config.json and only the layer-0 tensors of the checkpoint in folder ``path``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(f"model folder {folder} does not exist or is not a folder")
    raw_config = read_config_json(folder)
    config = transformers_config(raw_config, folder)
    names_by_file, preloaded = _tensor_names_by_file(folder, allow_pickle)
    found = {name for names in names_by_file.values() for name in names}
    role_names = _resolve_role_names(found, folder)
    tensors, read = _read_tensors(folder, names_by_file, role_names, preloaded)
    checkpoint = Layer0Checkpoint(path=folder, raw_config=raw_config, config=config,
                                  tensors=tensors, tensor_names_read=tuple(sorted(read)),
                                  files_read=tuple(sorted(set(read.values()))))
    _check_shapes(checkpoint)
    return checkpoint


def read_config_json(folder: Path) -> dict[str, Any]:
    """config.json as a dict, with a supported ``model_type``."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{config_path}: no config.json in the model folder")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{config_path}: cannot read it as JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{config_path}: expected a JSON object")
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(f"{config_path}: model_type {model_type!r} is not supported; "
                         f"supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}")
    return raw


def transformers_config(raw_config: dict[str, Any], folder: Path) -> Any:
    """The model_type's own transformers config class built from config.json (no remote
    code: ``auto_map`` entries are ignored)."""
    import transformers

    prefix = SUPPORTED_MODEL_TYPES[raw_config["model_type"]]
    config_class = getattr(transformers, f"{prefix}Config")
    try:
        return config_class.from_dict(dict(raw_config))
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"{folder / 'config.json'}: not a valid {prefix} config "
                         f"({exc})") from None


def _tensor_names_by_file(folder: Path, allow_pickle: bool
                          ) -> tuple[dict[str, list[str]], dict[str, dict[str, torch.Tensor]]]:
    """Every tensor name in the checkpoint, grouped by the file that holds it; plus the
    state dict of an unindexed pickle file, which had to be loaded to learn its names."""
    if (folder / SAFETENSORS_INDEX).is_file():
        return _names_from_index(folder / SAFETENSORS_INDEX), {}
    if (folder / SAFETENSORS_SINGLE).is_file():
        return {SAFETENSORS_SINGLE: _safetensors_keys(folder / SAFETENSORS_SINGLE)}, {}
    pickles = [n for n in (PICKLE_INDEX, PICKLE_SINGLE) if (folder / n).is_file()]
    if pickles and not allow_pickle:
        raise InputError(
            f"{folder / pickles[0]}: pickled .bin checkpoints can run arbitrary code when "
            f"loaded and are refused; convert the model to safetensors, or opt in with "
            f"allow_pickle=True (--allow-pickle) if you trust this file")
    if PICKLE_INDEX in pickles:
        return _names_from_index(folder / PICKLE_INDEX), {}
    if PICKLE_SINGLE in pickles:
        state = _load_pickle(folder / PICKLE_SINGLE)
        return {PICKLE_SINGLE: list(state)}, {PICKLE_SINGLE: state}
    raise InputError(f"{folder}: no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX} in the model "
                     f"folder")


def _names_from_index(index_path: Path) -> dict[str, list[str]]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{index_path}: not a valid checkpoint index ({exc})") from None
    by_file: dict[str, list[str]] = {}
    for name, file_name in weight_map.items():
        by_file.setdefault(file_name, []).append(name)
    return by_file


def _safetensors_keys(file_path: Path) -> list[str]:
    try:
        with safe_open(str(file_path), framework="pt") as handle:
            return list(handle.keys())
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{file_path}: cannot read the safetensors header ({exc})") from None


def _resolve_role_names(found: set[str], folder: Path) -> dict[str, str]:
    """role -> full tensor name, for the first prefix that has every required tensor."""
    required = [role for role in ROLE_NAMES if role not in OPTIONAL_ROLES]
    for prefix in NAME_PREFIXES:
        if all(prefix + ROLE_NAMES[role] in found for role in required):
            return {role: prefix + suffix for role, suffix in ROLE_NAMES.items()
                    if prefix + suffix in found}
    missing = [NAME_PREFIXES[0] + ROLE_NAMES[r] for r in required
               if NAME_PREFIXES[0] + ROLE_NAMES[r] not in found]
    raise InputError(f"{folder}: the checkpoint lacks layer-0 tensor(s) {', '.join(missing)}")


def _read_tensors(folder: Path, names_by_file: dict[str, list[str]], role_names: dict[str, str],
                  preloaded: dict[str, dict[str, torch.Tensor]]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors by role, and {tensor name: file} of what was read."""
    file_of = {name: file_name for file_name, names in names_by_file.items() for name in names}
    wanted_by_file: dict[str, dict[str, str]] = {}
    for role, name in role_names.items():
        wanted_by_file.setdefault(file_of[name], {})[name] = role
    tensors: dict[str, torch.Tensor] = {}
    read: dict[str, str] = {}
    for file_name, wanted in sorted(wanted_by_file.items()):
        file_path = folder / file_name
        if not file_path.is_file():
            raise InputError(f"{file_path}: listed in the checkpoint index but missing")
        if file_name.endswith(".safetensors"):
            loaded = _read_safetensors(file_path, list(wanted))
        else:
            state = preloaded.get(file_name) or _load_pickle(file_path)
            missing = [name for name in wanted if name not in state]
            if missing:
                raise InputError(f"{file_path}: lacks tensor(s) {', '.join(missing)}")
            loaded = {name: state[name] for name in wanted}
        for name, tensor in loaded.items():
            tensors[wanted[name]] = tensor
            read[name] = file_name
    return tensors, read


def _read_safetensors(file_path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Memory-mapped tensors: only their own pages are ever loaded."""
    try:
        with safe_open(str(file_path), framework="pt", device="cpu") as handle:
            return {name: handle.get_tensor(name) for name in names}
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{file_path}: cannot read tensors {', '.join(names)} ({exc})") from None


def _load_pickle(file_path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, memory-mapped where the file format allows it; only called
    after the caller opted in with allow_pickle=True."""
    try:
        try:
            state = torch.load(file_path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            state = torch.load(file_path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise InputError(f"{file_path}: cannot load it as a weights-only state dict "
                         f"({exc})") from None
    if not isinstance(state, dict):
        raise InputError(f"{file_path}: expected a state dict of tensors")
    return state


def _check_shapes(checkpoint: Layer0Checkpoint) -> None:
    """The tensors read must have the shapes config.json promises."""
    config = checkpoint.config
    head_dim = config_head_dim(config)
    hidden = config.hidden_size
    expected = {
        "input_layernorm": (hidden,),
        "q_proj.weight": (config.num_attention_heads * head_dim, hidden),
        "k_proj.weight": (config.num_key_value_heads * head_dim, hidden),
        "q_proj.bias": (config.num_attention_heads * head_dim,),
        "k_proj.bias": (config.num_key_value_heads * head_dim,),
    }
    embed = checkpoint.tensors["embed_tokens"]
    if embed.dim() != 2 or embed.shape[1] != hidden:
        raise InputError(f"{checkpoint.path}: embed_tokens has shape {tuple(embed.shape)}, "
                         f"expected [vocab, {hidden}] from config.json")
    for role, shape in expected.items():
        tensor = checkpoint.tensors.get(role)
        if tensor is not None and tuple(tensor.shape) != shape:
            raise InputError(f"{checkpoint.path}: {ROLE_NAMES[role]} has shape "
                             f"{tuple(tensor.shape)}, expected {shape} from config.json")
    if config.num_attention_heads % config.num_key_value_heads:
        raise InputError(f"{checkpoint.path / 'config.json'}: num_attention_heads "
                         f"{config.num_attention_heads} is not a multiple of "
                         f"num_key_value_heads {config.num_key_value_heads}")
    if ("q_proj.bias" in checkpoint.tensors) != ("k_proj.bias" in checkpoint.tensors):
        raise InputError(f"{checkpoint.path}: layer 0 has a bias on only one of q_proj/k_proj")
    if _architecture_has_qk_bias(checkpoint.model_type, config) and not checkpoint.has_qk_bias:
        raise InputError(f"{checkpoint.path}: {checkpoint.model_type} layer 0 needs q_proj/"
                         f"k_proj biases, but the checkpoint has none")


def config_head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _architecture_has_qk_bias(model_type: str, config: Any) -> bool:
    if model_type == "qwen2":
        return True
    return bool(getattr(config, "attention_bias", False))
