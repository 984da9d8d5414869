"""Reading a model's files without loading it: the public reader of safetensors headers and
tensors every method and the driver use.

- ``ModelReader``: the files of a ``ModelLocation`` on any filesystem. Python's own file
  access on the local disk, the driver JVM's Hadoop FileSystem elsewhere (ranges and hashes
  are done in the JVM, so tensor bytes never cross into Python). Over Spark Connect, which
  has no driver JVM and whose client may not see the server's disks, each read and the hash
  run in a one-task Spark job on an executor, over the folder scoring will read there.
- ``safetensors_header``, ``header_fields``, ``weight_map_by_file``: a safetensors file's
  header, one tensor's entry in it, and a checkpoint index, through any ``CheckpointReader``.
- ``safetensors_names``, ``read_safetensors``: a local file's tensor names and tensors
  (memory-mapped).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from longattn_spark import paths
from longattn_spark.errors import InputError
from longattn_spark.paths.hadoop import hadoop_fs
from longattn_spark.paths.uri import first_line
from longattn_spark.weights.location import ModelLocation, executor_file

if TYPE_CHECKING:
    import torch

_CHUNK = 8 * 2**20  # bytes per read when hashing tensor ranges on the local disk
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit

#: safetensors dtype codes -> torch dtype names (``torch.<name>``).
SAFETENSORS_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def in_folder(folder: Path | str, name: str) -> str:
    """``folder/name`` as text, for messages (``folder`` may be a URI)."""
    return f"{str(folder).rstrip('/')}/{name}"


class CheckpointReader(Protocol):
    """Read access to one model folder on some filesystem: what describing a model from its
    headers needs (``ModelReader``; tests pass their own)."""

    def names(self) -> Sequence[str]:
        """The file names directly in the folder."""

    def read(self, name: str) -> bytes:
        """The whole content of a small file (configs, indexes)."""

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """``length`` bytes of file ``name`` from byte ``start`` (safetensors headers)."""

    def sha256(self, parts: Sequence[bytes | tuple[str, int, int]]) -> str:
        """Hex SHA-256 of the concatenation of ``parts``: bytes as given, and
        ``(name, start, length)`` byte ranges of files, streamed (never held whole)."""


class ModelReader:
    """``CheckpointReader`` over the files of a ``ModelLocation``: Python's own file access on
    the local disk, the driver JVM's Hadoop FileSystem elsewhere (ranges and hashes are done
    in the JVM, so tensor bytes never cross into Python). Over Spark Connect, which has no
    driver JVM and whose client may not see the server's disks, each read and the hash run in
    a one-task Spark job on an executor, over the folder scoring will read there
    (``ModelLocation.executor_path``: in place, or fetched into the executor's cache)."""

    def __init__(self, spark, location: ModelLocation) -> None:
        self._spark = spark
        self._location = location
        self._files = {f.name: f for f in location.files}
        self._local = paths.is_local(spark, location.folder)
        self._on_executor = paths.is_connect(spark) and not paths.client_sees(location.folder)

    def names(self) -> list[str]:
        return list(self._files)

    def read(self, name: str) -> bytes:
        return paths.read_bytes(self._spark, self._files[name].path)

    def read_range(self, name: str, start: int, length: int) -> bytes:
        path = self._files[name].path
        if self._on_executor:
            location = self._location
            return self._executor_call(path, lambda: local_range(
                executor_file(location, name), start, length))
        if self._local:
            return local_range(paths.local_path(path), start, length)
        fs, hpath = hadoop_fs(self._spark, path, paths.where(self._spark, path))
        stream = fs.open(hpath)
        try:
            stream.seek(start)
            # py4j passes byte[] by value: a byte[] returned from the JVM arrives whole.
            data = bytes(self._spark.sparkContext._jvm.org.apache.commons.io.IOUtils
                         .toByteArray(stream, length))
        except Exception as exc:  # noqa: BLE001 - py4j: EOF, unreachable store, ...
            raise InputError(f"{paths.where(self._spark, path)}: cannot read bytes {start}.."
                             f"{start + length} ({first_line(exc)})") from None
        finally:
            stream.close()
        return data

    def sha256(self, parts: Sequence[bytes | tuple[str, int, int]]) -> str:
        if self._on_executor:
            location, names = self._location, sorted({p[0] for p in parts
                                                      if not isinstance(p, bytes)})
            return self._executor_call(location.folder, lambda: local_sha256(
                {n: executor_file(location, n) for n in names}, parts))
        if self._local:
            return local_sha256({n: paths.local_path(f.path) for n, f in self._files.items()},
                                parts)
        return self._jvm_sha256(parts)

    def _executor_call(self, path: str, call):
        from longattn_spark.paths.tasks import run_on_executor

        try:
            return run_on_executor(self._spark, call)
        except RuntimeError as exc:
            text = str(exc).removeprefix("InputError: ")
            raise InputError(f"{paths.where(self._spark, path)}: reading the model on an "
                             f"executor failed ({text})") from None

    def _jvm_sha256(self, parts: Sequence[bytes | tuple[str, int, int]]) -> str:
        """The hash computed in the driver's JVM: each byte range is copied from the Hadoop
        stream into a DigestOutputStream there, so tensor bytes never cross py4j."""
        jvm = self._spark.sparkContext._jvm
        digest = jvm.java.security.MessageDigest.getInstance("SHA-256")
        sink = jvm.java.security.DigestOutputStream(jvm.java.io.OutputStream.nullOutputStream(),
                                                    digest)
        for part in parts:
            if isinstance(part, bytes):
                digest.update(bytearray(part))
                continue
            name, start, length = part
            path = self._files[name].path
            fs, hpath = hadoop_fs(self._spark, path, paths.where(self._spark, path))
            stream = fs.open(hpath)
            try:
                stream.seek(start)
                copied = jvm.org.apache.commons.io.IOUtils.copyLarge(stream, sink, 0, length)
            except Exception as exc:  # noqa: BLE001 - py4j: EOF, unreachable store, ...
                raise InputError(f"{paths.where(self._spark, self._files[name].path)}: cannot "
                                 f"read the tensor data ({first_line(exc)})") from None
            finally:
                stream.close()
            if copied != length:
                raise InputError(f"{paths.where(self._spark, self._files[name].path)}: ends "
                                 f"before the tensor data its header describes")
        return bytes(digest.digest()).hex()


def local_range(path: str | Path, start: int, length: int) -> bytes:
    """``length`` bytes of a local file from ``start`` (fewer at its end)."""
    with Path(path).open("rb") as f:
        f.seek(start)
        return f.read(length)


def local_sha256(files: dict[str, str | Path],
                 parts: Sequence[bytes | tuple[str, int, int]]) -> str:
    """Hex SHA-256 of ``parts`` in order: bytes as they are, ``(name, start, length)`` as that
    byte range of the local file ``files[name]``, read in chunks."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            digest.update(part)
            continue
        name, start, length = part
        with Path(files[name]).open("rb") as f:
            f.seek(start)
            while length > 0:
                chunk = f.read(min(_CHUNK, length))
                if not chunk:
                    raise InputError(f"{files[name]}: ends before the tensor data its header "
                                     f"describes")
                digest.update(chunk)
                length -= len(chunk)
    return digest.hexdigest()


# --- safetensors ------------------------------------------------------------

def safetensors_header(reader: CheckpointReader, file: str, where: str
                       ) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, the parsed header) of a safetensors file."""
    path = in_folder(where, file)
    try:
        (size,) = struct.unpack("<Q", reader.read_range(file, 0, 8))
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"header of {size} bytes")
        header = json.loads(reader.read_range(file, 8, size))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the safetensors header ({exc})") from None
    header.pop("__metadata__", None)
    return 8 + size, header


def header_fields(entry: dict[str, Any], name: str, path: str, dtypes: dict[str, Any]
                  ) -> tuple[Any, tuple[int, ...], int, int]:
    """(``dtypes[entry's dtype code]``, shape, data begin, data end) of one safetensors header
    entry; one-line ``InputError`` naming the file and tensor when it is malformed or its
    dtype is not in ``dtypes``."""
    try:
        return (dtypes[entry["dtype"]], tuple(int(n) for n in entry["shape"]),
                *(int(n) for n in entry["data_offsets"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: tensor {name} has an unsupported or malformed header entry "
                         f"({type(exc).__name__}: {exc})") from None


def weight_map_by_file(data: bytes, where: str) -> dict[str, list[str]]:
    """{shard file: [tensor names]} from the bytes of a checkpoint index (``weight_map``);
    one-line ``InputError`` naming ``where`` when it is not one."""
    try:
        weight_map = json.loads(data)["weight_map"]
        items = list(weight_map.items())
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{where}: not a valid checkpoint index ({exc})") from None
    by_file: dict[str, list[str]] = {}
    for name, file_name in items:
        by_file.setdefault(file_name, []).append(name)
    return by_file


def safetensors_names(file_path: Path) -> list[str]:
    """The tensor names of a local safetensors file (from its header)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file_path), framework="pt") as handle:
            return list(handle.keys())
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{file_path}: cannot read the safetensors header ({exc})") from None


def read_safetensors(file_path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Tensors ``names`` of a local safetensors file, memory-mapped: only their own pages
    are ever loaded."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file_path), framework="pt", device="cpu") as handle:
            return {name: handle.get_tensor(name) for name in names}
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{file_path}: cannot read tensors {', '.join(names)} ({exc})") from None
