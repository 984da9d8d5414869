"""A whole model's fingerprint: sha256 over (name, dtype, shape, bytes) of every stored
tensor, in name order, independent of sharding and file names (part of ProLong's and loss
gain's scorer_ids). Computed two ways that give the same hex digest: from a local folder
(``weights_sha256``, loading each tensor), and by the driver from the safetensors headers with
the tensor bytes hashed as they stream past (``safetensors_sha256``, nothing loaded)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from longattn_spark.devices import dtype_name
from longattn_spark.errors import InputError
from longattn_spark.weights.files import (
    PICKLE_INDEX,
    PICKLE_SINGLE,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    uses_safetensors,
)
from longattn_spark.weights.reader import (
    SAFETENSORS_DTYPE_NAMES,
    CheckpointReader,
    header_fields,
    safetensors_header,
    weight_map_by_file,
)


def weights_sha256(folder: Path, allow_pickle: bool) -> str:
    """sha256 over (name, dtype, shape, bytes) of every stored tensor, in name order
    (independent of sharding and file names): a whole model's fingerprint, read from a local
    folder (the driver streams the same hash from the headers: ``safetensors_sha256``).
    """
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
            digest.update(_tensor_prefix(name, dtype_name(tensor.dtype), tuple(tensor.shape)))
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    finally:
        handles.clear()
    return digest.hexdigest()


def safetensors_sha256(reader: CheckpointReader, names: set[str], where: str) -> str:
    """``weights_sha256`` of the safetensors checkpoint ``reader`` reads (``names``: its
    files), from the headers and the tensor bytes hashed as they stream past: the driver
    fingerprints a model without loading it or copying its files."""
    if SAFETENSORS_INDEX in names:
        files = sorted(weight_map_by_file(reader.read(SAFETENSORS_INDEX),
                                           f"{where}/{SAFETENSORS_INDEX}"))
    else:
        files = [SAFETENSORS_SINGLE]
    tensors: dict[str, tuple[str, str, tuple[int, ...], int, int]] = {}
    for file in files:
        if file not in names:
            raise InputError(f"--model {where}/{file}: listed in the checkpoint index but "
                             f"missing")
        start, header = safetensors_header(reader, file, where)
        for name, entry in header.items():
            dtype, shape, begin, end = header_fields(entry, name, f"--model {where}/{file}",
                                                     SAFETENSORS_DTYPE_NAMES)
            tensors[name] = (file, dtype, shape, start + begin, end - begin)
    parts: list[bytes | tuple[str, int, int]] = []
    for name in sorted(tensors):
        file, dtype, shape, offset, length = tensors[name]
        parts.append(_tensor_prefix(name, dtype, shape))
        if length:
            parts.append((file, offset, length))
    return reader.sha256(parts)


def _tensor_prefix(name: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    """What precedes a tensor's bytes in the hash: ``name|torch.<dtype>|<shape>|``."""
    return f"{name}|torch.{dtype}|{tuple(shape)}|".encode()
