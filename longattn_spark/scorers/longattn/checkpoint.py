"""Read only what layer N's attention scores need from a local checkpoint folder.

The folder holds ``config.json`` and either ``model.safetensors`` or a sharded
``model.safetensors.index.json``. At layer 0 (the paper) only five or six tensors are read:
the token embedding, layer 0's input RMSNorm weight, and layer 0's ``q_proj`` / ``k_proj``
weights (plus their biases where the architecture has them). At layer N > 0, every tensor of
the layers below N as well (they run in full to give layer N its input), and still only
layer N's norm and q/k projections; nothing of the layers above N. No model is instantiated
and no other tensor is touched.

Memory: safetensors memory-maps the file, so a tensor read here occupies memory only for
its own pages once used (about 1× its size); tensors are kept in their stored dtype and
nothing else in the file is paged in. Pickled ``.bin`` checkpoints can execute code when
loaded and are refused unless the caller opts in with ``allow_pickle=True``; even then they
are read with ``torch.load(weights_only=True)`` and only the needed tensors are kept.

``describe_layer0_checkpoint`` builds the same ``Layer0Checkpoint`` from config.json and the
safetensors headers alone, through a ``weights.reader.CheckpointReader`` (any filesystem): its
tensors are on torch's ``meta`` device (dtype and shape, no data) and its fingerprint is
computed by hashing the tensors' byte ranges as they stream past, so a driver can validate a
model and compute its scorer_id without copying any weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from longattn_spark.errors import ConfigError, InputError
from longattn_spark.weights.configs import GENERATION_CONFIG, optional_json
from longattn_spark.weights.files import (
    PICKLE_INDEX,
    PICKLE_SINGLE,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    load_pickled_state_dict,
    pickle_not_in_place,
    pickle_refused,
)
from longattn_spark.weights.reader import (
    SAFETENSORS_DTYPE_NAMES,
    CheckpointReader,
    header_fields,
    in_folder,
    read_safetensors,
    safetensors_header,
    safetensors_names,
    weight_map_by_file,
)

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
"""What the scorer needs at layer 0 (its role) -> the tensor name below the model's prefix;
at layer N the same roles name layer N's tensors (``layer_role_names``)."""

OPTIONAL_ROLES = frozenset({"q_proj.bias", "k_proj.bias"})
NAME_PREFIXES = ("model.", "")  # *ForCausalLM checkpoints, then bare *Model checkpoints


def layer_role_names(layer: int) -> dict[str, str]:
    """``ROLE_NAMES`` for the attention of layer ``layer``."""
    return {role: name.replace("layers.0.", f"layers.{layer}.", 1)
            for role, name in ROLE_NAMES.items()}


def lower_layer_names(names, prefix: str, layer: int) -> list[str]:
    """The tensors of ``names`` that belong to layers ``0 .. layer - 1`` under ``prefix``
    (what runs in full before layer ``layer``)."""
    start = prefix + "layers."
    found = []
    for name in names:
        if name.startswith(start):
            index = name[len(start):].split(".", 1)[0]
            if index.isdigit() and int(index) < layer:
                found.append(name)
    return sorted(found)


def check_layer(layer: int, config: Any, where: str) -> None:
    """``ConfigError`` (one line) when the model has no layer ``layer``."""
    count = int(getattr(config, "num_hidden_layers", 0) or 0)
    if not 0 <= layer < count:
        raise ConfigError(f"--layer {layer}: {where} has {count} layers "
                          f"(0..{count - 1})")


#: safetensors dtype codes -> torch dtypes (those a layer's tensor can have).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    code: getattr(torch, SAFETENSORS_DTYPE_NAMES[code]) for code in ("F64", "F32", "F16", "BF16")
}


@dataclass
class Layer0Checkpoint:
    """The tensors of one checkpoint that scoring layer ``layer`` needs (layer 0: the paper's),
    in their stored dtype, on the CPU.

    ``tensors`` is keyed by role (see ``ROLE_NAMES``); ``tensor_names_read`` lists the names
    exactly as read from the checkpoint files, and ``files_read`` the files opened for them.
    """

    path: Path | str  # a local folder, or the URI it was described from
    raw_config: dict[str, Any]
    config: Any  # the model_type's transformers config class (LlamaConfig, ...)
    tensors: dict[str, torch.Tensor]
    tensor_names_read: tuple[str, ...]
    files_read: tuple[str, ...]
    generation_config: dict[str, Any] | None = None  # generation_config.json, when present
    _fingerprint: str | None = field(default=None, repr=False)
    #: the layer whose attention is scored; the roles ``layers.<i>.*`` (i < layer) hold the
    #: layers run in full before it
    layer: int = 0

    @property
    def model_type(self) -> str:
        return self.raw_config["model_type"]

    @property
    def has_qk_bias(self) -> bool:
        return "q_proj.bias" in self.tensors

    @property
    def bytes_read(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def described_only(self) -> bool:
        """Whether the tensors are shapes only (``describe_layer0_checkpoint``): no data."""
        return any(t.device.type == "meta" for t in self.tensors.values())

    def fingerprint(self) -> str:
        """sha256 over the roles, dtypes, shapes and bytes of the tensors read (cached): the
        model identity part of a scorer_id, independent of file layout and sharding."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for role in sorted(self.tensors):
                tensor = self.tensors[role].contiguous()
                digest.update(_fingerprint_prefix(role, tensor.dtype, tuple(tensor.shape)))
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def _fingerprint_prefix(role: str, dtype: torch.dtype, shape: tuple[int, ...]) -> bytes:
    return f"{role}|{dtype}|{tuple(shape)}|".encode()


def load_layer0_checkpoint(path: str | Path, *, allow_pickle: bool = False,
                           layer: int = 0) -> Layer0Checkpoint:
    """Read config.json and only the tensors that scoring layer ``layer``'s attention needs
    (module docstring) from the checkpoint in folder ``path``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(f"model folder {folder} does not exist or is not a folder")
    raw_config = read_config_json(folder)
    config = transformers_config(raw_config, folder)
    check_layer(layer, config, in_folder(folder, "config.json"))
    names_by_file, preloaded = _tensor_names_by_file(folder, allow_pickle)
    found = {name for names in names_by_file.values() for name in names}
    role_names = _resolve_role_names(found, folder, layer)
    tensors, read = _read_tensors(folder, names_by_file, role_names, preloaded)
    generation = folder / GENERATION_CONFIG
    checkpoint = Layer0Checkpoint(path=folder, raw_config=raw_config, config=config,
                                  tensors=tensors, tensor_names_read=tuple(sorted(read)),
                                  files_read=tuple(sorted(set(read.values()))),
                                  generation_config=optional_json(
                                      generation.read_bytes() if generation.is_file() else None),
                                  layer=layer)
    _check_shapes(checkpoint)
    return checkpoint


def describe_layer0_checkpoint(where: str, reader: CheckpointReader, *,
                               allow_pickle: bool = False, layer: int = 0) -> Layer0Checkpoint:
    """The ``Layer0Checkpoint`` of the safetensors checkpoint that ``reader`` reads, from
    config.json and the safetensors headers only: tensors on the ``meta`` device (dtype and
    shape), the same checks as ``load_layer0_checkpoint``, and the same fingerprint, hashed
    from the tensors' bytes as they stream past. ``where`` names the folder in errors.

    Pickled checkpoints cannot be described without loading them: refused (unless
    ``allow_pickle``, then with the advice to use a local folder)."""
    names = set(reader.names())
    if "config.json" not in names:
        raise InputError(f"{in_folder(where, 'config.json')}: no config.json in the model "
                         f"folder")
    raw_config = parse_config_json(reader.read("config.json"), in_folder(where, "config.json"))
    config = transformers_config(raw_config, where)
    check_layer(layer, config, in_folder(where, "config.json"))
    if SAFETENSORS_INDEX in names:
        names_by_file = weight_map_by_file(reader.read(SAFETENSORS_INDEX),
                                           in_folder(where, SAFETENSORS_INDEX))
    elif SAFETENSORS_SINGLE in names:
        names_by_file = {SAFETENSORS_SINGLE: list(
            safetensors_header(reader, SAFETENSORS_SINGLE, where)[1])}
    else:
        pickles = [n for n in (PICKLE_INDEX, PICKLE_SINGLE) if n in names]
        if pickles and not allow_pickle:
            raise pickle_refused(in_folder(where, pickles[0]))
        if pickles:
            raise pickle_not_in_place(in_folder(where, pickles[0]), where)
        raise InputError(f"{where}: no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX} in the "
                         f"model folder")
    found = {name for file_names in names_by_file.values() for name in file_names}
    role_names = _resolve_role_names(found, where, layer)
    file_of = {name: file for file, file_names in names_by_file.items() for name in file_names}
    headers: dict[str, tuple[int, dict[str, Any]]] = {}
    tensors: dict[str, torch.Tensor] = {}
    ranges: dict[str, tuple[str, int, int]] = {}
    read: dict[str, str] = {}
    for role, name in role_names.items():
        file = file_of[name]
        if file not in names:
            raise InputError(f"{in_folder(where, file)}: listed in the checkpoint index but "
                             f"missing")
        if file not in headers:
            headers[file] = safetensors_header(reader, file, where)
        data_start, header = headers[file]
        entry = header.get(name)
        if not isinstance(entry, dict):
            raise InputError(f"{in_folder(where, file)}: lacks tensor {name}")
        dtype, shape, begin, end = _header_entry(entry, name, in_folder(where, file))
        tensors[role] = torch.empty(shape, dtype=dtype, device="meta")
        ranges[role] = (file, data_start + begin, end - begin)
        read[name] = file
    generation = reader.read(GENERATION_CONFIG) if GENERATION_CONFIG in names else None
    checkpoint = Layer0Checkpoint(path=where, raw_config=raw_config, config=config,
                                  tensors=tensors, tensor_names_read=tuple(sorted(read)),
                                  files_read=tuple(sorted(set(read.values()))),
                                  generation_config=optional_json(generation), layer=layer)
    _check_shapes(checkpoint)
    parts: list[bytes | tuple[str, int, int]] = []
    for role in sorted(tensors):
        parts += [_fingerprint_prefix(role, tensors[role].dtype, tuple(tensors[role].shape)),
                  ranges[role]]
    checkpoint._fingerprint = reader.sha256(parts)
    return checkpoint


def _header_entry(entry: dict[str, Any], name: str, path: str
                  ) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    dtype, shape, begin, end = header_fields(entry, name, path, SAFETENSORS_DTYPES)
    expected = dtype.itemsize
    for n in shape:
        expected *= n
    if end - begin != expected or begin < 0:
        raise InputError(f"{path}: tensor {name} spans {end - begin} bytes, but {shape} of "
                         f"{dtype} needs {expected}")
    return dtype, shape, begin, end


def read_config_json(folder: Path) -> dict[str, Any]:
    """config.json as a dict, with a supported ``model_type``."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{config_path}: no config.json in the model folder")
    try:
        data = config_path.read_bytes()
    except OSError as exc:
        raise InputError(f"{config_path}: cannot read it ({exc})") from None
    return parse_config_json(data, str(config_path))


def parse_config_json(data: bytes, where: str) -> dict[str, Any]:
    """The content of a config.json as a dict, with a supported ``model_type``."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: cannot read it as JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a JSON object")
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(f"{where}: model_type {model_type!r} is not supported; "
                         f"supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}")
    return raw


def transformers_config(raw_config: dict[str, Any], folder: Path | str) -> Any:
    """The model_type's own transformers config class built from config.json (no remote
    code: ``auto_map`` entries are ignored)."""
    import transformers

    prefix = SUPPORTED_MODEL_TYPES[raw_config["model_type"]]
    config_class = getattr(transformers, f"{prefix}Config")
    try:
        return config_class.from_dict(dict(raw_config))
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"{in_folder(folder, 'config.json')}: not a valid {prefix} config "
                         f"({exc})") from None


def _tensor_names_by_file(folder: Path, allow_pickle: bool
                          ) -> tuple[dict[str, list[str]], dict[str, dict[str, torch.Tensor]]]:
    """Every tensor name in the checkpoint, grouped by the file that holds it; plus the
    state dict of an unindexed pickle file, which had to be loaded to learn its names."""
    if (folder / SAFETENSORS_INDEX).is_file():
        return _names_from_index(folder / SAFETENSORS_INDEX), {}
    if (folder / SAFETENSORS_SINGLE).is_file():
        return {SAFETENSORS_SINGLE: safetensors_names(folder / SAFETENSORS_SINGLE)}, {}
    pickles = [n for n in (PICKLE_INDEX, PICKLE_SINGLE) if (folder / n).is_file()]
    if pickles and not allow_pickle:
        raise pickle_refused(str(folder / pickles[0]))
    if PICKLE_INDEX in pickles:
        return _names_from_index(folder / PICKLE_INDEX), {}
    if PICKLE_SINGLE in pickles:
        state = load_pickled_state_dict(folder / PICKLE_SINGLE)
        return {PICKLE_SINGLE: list(state)}, {PICKLE_SINGLE: state}
    raise InputError(f"{folder}: no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX} in the model "
                     f"folder")


def _names_from_index(index_path: Path) -> dict[str, list[str]]:
    try:
        data = index_path.read_bytes()
    except OSError as exc:
        raise InputError(f"{index_path}: not a valid checkpoint index ({exc})") from None
    return weight_map_by_file(data, str(index_path))


def _resolve_role_names(found: set[str], folder: Path | str, layer: int = 0) -> dict[str, str]:
    """role -> full tensor name, for the first prefix that has every required tensor: layer
    ``layer``'s attention roles, and at layer > 0 every tensor of the layers below it (role:
    its name without the prefix)."""
    roles = layer_role_names(layer)
    required = [role for role in roles if role not in OPTIONAL_ROLES]
    for prefix in NAME_PREFIXES:
        if all(prefix + roles[role] in found for role in required):
            resolved = {role: prefix + suffix for role, suffix in roles.items()
                        if prefix + suffix in found}
            for name in lower_layer_names(found, prefix, layer):
                resolved[name[len(prefix):]] = name
            return resolved
    missing = [NAME_PREFIXES[0] + roles[r] for r in required
               if NAME_PREFIXES[0] + roles[r] not in found]
    raise InputError(f"{folder}: the checkpoint lacks layer-{layer} tensor(s) "
                     f"{', '.join(missing)}")


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
            loaded = read_safetensors(file_path, list(wanted))
        else:
            state = preloaded.get(file_name) or load_pickled_state_dict(file_path)
            missing = [name for name in wanted if name not in state]
            if missing:
                raise InputError(f"{file_path}: lacks tensor(s) {', '.join(missing)}")
            loaded = {name: state[name] for name in wanted}
        for name, tensor in loaded.items():
            tensors[wanted[name]] = tensor
            read[name] = file_name
    return tensors, read


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
            name = layer_role_names(checkpoint.layer)[role]
            raise InputError(f"{checkpoint.path}: {name} has shape {tuple(tensor.shape)}, "
                             f"expected {shape} from config.json")
    if config.num_attention_heads % config.num_key_value_heads:
        raise InputError(f"{in_folder(checkpoint.path, 'config.json')}: num_attention_heads "
                         f"{config.num_attention_heads} is not a multiple of "
                         f"num_key_value_heads {config.num_key_value_heads}")
    if ("q_proj.bias" in checkpoint.tensors) != ("k_proj.bias" in checkpoint.tensors):
        raise InputError(f"{checkpoint.path}: layer {checkpoint.layer} has a bias on only one "
                         f"of q_proj/k_proj")
    if _architecture_has_qk_bias(checkpoint.model_type, config) and not checkpoint.has_qk_bias:
        raise InputError(f"{checkpoint.path}: {checkpoint.model_type} layer {checkpoint.layer} "
                         f"needs q_proj/k_proj biases, but the checkpoint has none")


def config_head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _architecture_has_qk_bias(model_type: str, config: Any) -> bool:
    if model_type == "qwen2":
        return True
    return bool(getattr(config, "attention_bias", False))
