"""Getting the model files a scorer needs to the executors, straight from shared storage.

- **Driver** (``locate_model``): reads only small files through ``longattn_spark.paths`` (the
  Hadoop FileSystem the job reads; a scheme-less path is the cluster's default filesystem):
  the folder listing, config.json, the safetensors index. It decides which files scoring
  needs (``files_needed``) and records each one's fully qualified path, size and modification
  time in a ``ModelLocation``, which travels to the executors in the task closure.
  ``describe_model`` then validates the model from config.json and the safetensors headers and
  computes its fingerprint by streaming the layer-0 tensors' bytes through a hash (in the
  driver's JVM for remote filesystems): nothing is copied to the driver's disk.
- **Executors** (``ModelLocation.executor_path`` -> ``fetch_model``): a local folder (the
  local disk, or a mount every node sees: ``/Volumes``, ``/dbfs``) is read in place. Anything
  else (``hdfs://``, ``s3a://``, ``abfss://``, ``file:`` URIs, a scheme-less path on an HDFS
  default filesystem) is copied, only the needed files, into a per-executor cache folder named
  by the hash of every file's (path, size, mtime): an unchanged model is fetched once per
  executor, an updated one (another size or mtime) is fetched again. A file lock makes the
  Python workers of one executor copy once; the copy goes to a temporary folder renamed into
  place when complete, so a crashed copy is never used.

How a Python worker reads a Hadoop path without a JVM: it runs Hadoop's own ``FsShell
-copyToLocal`` in a subprocess through the executor's ``$SPARK_HOME/bin/spark-class`` (pyspark's
distribution has it and the Hadoop client jars; ``spark-env.sh`` and ``HADOOP_CONF_DIR`` apply
as for Spark itself), or ``hadoop fs`` when there is no spark-class. The driver's relevant
Hadoop settings (``fs.defaultFS`` and every ``spark.hadoop.*`` entry, prefix stripped) go to it
in a private ``-conf`` file, not on the command line, so credentials never show in ``ps``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from longattn_spark import paths
from longattn_spark.paths.shell import ShellFS, shell_error_line
from longattn_spark.errors import InputError
from longattn_spark.scorers.models import (
    PICKLE_INDEX,
    PICKLE_SINGLE,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
)

SMALL_FILES = ("config.json", "generation_config.json", "tokenizer_config.json")
CACHE_FOLDER = "longattn-model-cache"
_CHUNK = 8 * 2**20  # bytes per read when hashing tensor ranges on the local disk


@dataclass(frozen=True)
class ModelFile:
    """One file scoring needs: its name in the folder, fully qualified path, size, mtime."""

    name: str
    path: str
    length: int
    modified_ms: int


@dataclass(frozen=True)
class ModelLocation:
    """Where a model is and what of it scoring reads (hashable: part of the scorer's key)."""

    model: str                    # as given (--model)
    folder: str                   # fully qualified folder; a local path when in_place
    in_place: bool                # read where it is (local disk or a mount)
    files: tuple[ModelFile, ...]  # the files scoring needs
    hadoop_settings: tuple[tuple[str, str], ...] = ()  # for FsShell on the executors

    @property
    def key(self) -> str:
        return cache_key(self.files)

    def executor_path(self, cache_root: str | None = None) -> str:
        """The model folder as seen from the executor this runs on (fetched if remote)."""
        if self.in_place:
            return self.folder
        return fetch_model(self, cache_root)


# --- pure parts --------------------------------------------------------------------------------

def files_needed(file_names: Sequence[str], index: dict | None, layer: int = 0) -> list[str]:
    """The files of a checkpoint folder that LongAttn at ``layer`` reads: the small configs,
    and the shards holding layer ``layer``'s attention tensors and every tensor of the layers
    below it (pure: names in, names out)."""
    from longattn_spark.scorers.longattn.checkpoint import (
        NAME_PREFIXES,
        layer_role_names,
        lower_layer_names,
    )

    needed = [name for name in SMALL_FILES if name in file_names]
    if index is not None:
        weight_map = index.get("weight_map", {})
        wanted = {prefix + name for prefix in NAME_PREFIXES
                  for name in layer_role_names(layer).values()}
        wanted.update(name for prefix in NAME_PREFIXES
                      for name in lower_layer_names(weight_map, prefix, layer))
        shards = sorted({file for tensor, file in weight_map.items() if tensor in wanted})
        index_name = SAFETENSORS_INDEX if SAFETENSORS_INDEX in file_names else PICKLE_INDEX
        return needed + [index_name] + shards
    for single in (SAFETENSORS_SINGLE, PICKLE_SINGLE):
        if single in file_names:
            return needed + [single]
    return needed


#: Files of a model folder, besides its weights, that a whole-model load reads (config,
#: generation config, tokenizer files); no code (.py), since remote code is never run.
WHOLE_MODEL_SUFFIXES = (".json", ".txt", ".model", ".tiktoken")


def files_needed_whole(file_names: Sequence[str], index: dict | None) -> list[str]:
    """The files a whole causal LM needs (ProLong): every small config / tokenizer file
    (``WHOLE_MODEL_SUFFIXES``) and every weight file of one format: the safetensors index
    and all the shards it lists, or model.safetensors; pickled ``.bin`` only when there is
    no safetensors (pure: names in, names out)."""
    weight_names = {SAFETENSORS_INDEX, PICKLE_INDEX, SAFETENSORS_SINGLE, PICKLE_SINGLE}
    small = [name for name in sorted(file_names) if name.endswith(WHOLE_MODEL_SUFFIXES)
             and name not in weight_names]
    pickle_index_only = SAFETENSORS_INDEX not in file_names and SAFETENSORS_SINGLE in file_names
    if index is not None and not pickle_index_only:
        index_name = SAFETENSORS_INDEX if SAFETENSORS_INDEX in file_names else PICKLE_INDEX
        shards = sorted(set(index.get("weight_map", {}).values()))
        return small + [index_name] + shards
    for single in (SAFETENSORS_SINGLE, PICKLE_SINGLE):
        if single in file_names:
            return small + [single]
    return small


def cache_key(files: Sequence[ModelFile]) -> str:
    """Hex SHA-256 of every file's (name, path, size, mtime): the executor cache folder's
    name, so that another version of any file is another folder."""
    canonical = json.dumps(sorted((f.name, f.path, f.length, f.modified_ms) for f in files),
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_remote(spark, model: str) -> bool:
    """Whether executors must fetch ``model``: any URI (``file:`` included, which reads the
    executor's own disk through Hadoop), or a scheme-less path on a non-local default FS."""
    return paths.has_scheme(model) or not paths.is_local(spark, model)


# --- driver ------------------------------------------------------------------------------------

def locate_model(spark, model: str, option: str = "--model", *, whole: bool = False,
                 layer: int = 0) -> ModelLocation:
    """Check the model folder and list what scoring needs, reading small files only:
    LongAttn's files for ``layer`` (``files_needed``), or with ``whole`` every file a causal
    LM needs (``files_needed_whole``: ProLong and lossgain run the whole model).

    One-line ``InputError`` naming the path and its filesystem when the folder is missing, is
    not a folder, has no config.json, or lacks a shard its index lists."""
    if not model:
        raise InputError(f"{option} is required: a folder with config.json and safetensors")
    found = paths.status(spark, model)
    if found is None:
        raise InputError(f"{option} {paths.where(spark, model)}: no such folder")
    if not found.is_dir:
        raise InputError(f"{option} {paths.where(spark, model)}: not a folder (a model folder "
                         f"holds config.json and safetensors)")
    entries = {e.name: e for e in paths.list_dir(spark, model) if not e.is_dir}
    if "config.json" not in entries:
        raise InputError(f"{option} {paths.where(spark, model)}: no config.json in this folder")
    index = None
    for index_name in (SAFETENSORS_INDEX, PICKLE_INDEX):
        if index_name in entries:
            text = paths.read_bytes(spark, entries[index_name].path)
            try:
                index = json.loads(text)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InputError(f"{option} {paths.where(spark, entries[index_name].path)}: "
                                 f"not a valid checkpoint index ({exc})") from None
            break
    needed = files_needed_whole(sorted(entries), index) if whole else \
        files_needed(sorted(entries), index, layer)
    missing = [name for name in needed if name not in entries]
    if missing:
        raise InputError(f"{option} {paths.where(spark, model)}: {', '.join(missing)} listed in "
                         f"the checkpoint index but missing")
    if not is_remote(spark, model):
        return ModelLocation(model=model, folder=str(paths.local_path(found.path)),
                             in_place=True, files=tuple(
            ModelFile(n, entries[n].path, entries[n].length, entries[n].modified_ms)
            for n in needed))
    # Fetched: every path fully qualified, so that the executors' FsShell reads the same
    # filesystem whatever its default.
    return ModelLocation(model=model, folder=_qualified(found.path), in_place=False,
                         files=tuple(ModelFile(n, _qualified(entries[n].path), entries[n].length,
                                               entries[n].modified_ms) for n in needed),
                         hadoop_settings=hadoop_settings(spark))


def _qualified(path: str) -> str:
    return path if paths.has_scheme(path) else "file://" + path


hadoop_settings = paths.hadoop_settings


def describe_model(spark, location: ModelLocation, *, allow_pickle: bool = False,
                   layer: int = 0):
    """The model's ``Layer0Checkpoint`` (for scoring ``layer``) as the driver sees it,
    without copying weights: tensors on the meta device, fingerprint hashed from the
    streamed tensor bytes (see ``scorers.longattn.checkpoint.describe_layer0_checkpoint``). A
    local pickled checkpoint, which has no header to read, is loaded in place (only with
    ``allow_pickle``)."""
    from longattn_spark.scorers.longattn.checkpoint import (
        describe_layer0_checkpoint,
        load_layer0_checkpoint,
    )

    names = [f.name for f in location.files]
    is_pickle = not any(n in (SAFETENSORS_INDEX, SAFETENSORS_SINGLE) for n in names) and \
        any(n in (PICKLE_INDEX, PICKLE_SINGLE) for n in names)
    if location.in_place and is_pickle and allow_pickle:
        if paths.is_connect(spark) and not paths.client_sees(location.folder):
            raise InputError(f"--model {location.model}: a pickled checkpoint is loaded by the "
                             f"driver itself, which a Spark Connect client cannot do; convert "
                             f"it to safetensors (or score on a classic session)")
        return load_layer0_checkpoint(location.folder, allow_pickle=True, layer=layer)
    return describe_layer0_checkpoint(location.folder, _Reader(spark, location),
                                      allow_pickle=allow_pickle, layer=layer)


def executor_file(location: ModelLocation, name: str) -> Path:
    """On an executor: the local file ``name`` of ``location`` (fetched when remote)."""
    return Path(location.executor_path(), name)


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


class _Reader:
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
        fs, hpath = paths._hadoop_fs(self._spark, path)
        stream = fs.open(hpath)
        try:
            stream.seek(start)
            # py4j passes byte[] by value: a byte[] returned from the JVM arrives whole.
            data = bytes(self._spark.sparkContext._jvm.org.apache.commons.io.IOUtils
                         .toByteArray(stream, length))
        except Exception as exc:  # noqa: BLE001 - py4j: EOF, unreachable store, ...
            raise InputError(f"{paths.where(self._spark, path)}: cannot read bytes {start}.."
                             f"{start + length} ({paths._first_line(exc)})") from None
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
            fs, hpath = paths._hadoop_fs(self._spark, self._files[name].path)
            stream = fs.open(hpath)
            try:
                stream.seek(start)
                copied = jvm.org.apache.commons.io.IOUtils.copyLarge(stream, sink, 0, length)
            except Exception as exc:  # noqa: BLE001 - py4j: EOF, unreachable store, ...
                raise InputError(f"{paths.where(self._spark, self._files[name].path)}: cannot "
                                 f"read the tensor data ({paths._first_line(exc)})") from None
            finally:
                stream.close()
            if copied != length:
                raise InputError(f"{paths.where(self._spark, self._files[name].path)}: ends "
                                 f"before the tensor data its header describes")
        return bytes(digest.digest()).hex()


# --- executors ---------------------------------------------------------------------------------

def default_cache_root() -> Path:
    """The executor's first Spark local dir (``SPARK_LOCAL_DIRS``: per executor, removed with
    it), else the system temp folder; ``longattn-model-cache`` inside."""
    local_dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    return Path(local_dirs[0] if local_dirs else tempfile.gettempdir()) / CACHE_FOLDER


def fetch_model(location: ModelLocation, cache_root: str | Path | None = None) -> str:
    """The local folder holding ``location``'s files on this machine: fetched from the
    filesystem into ``cache_root/<cache key>`` once, under a file lock; the same folder for
    every later call while no file's path, size or mtime changes."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    key = location.key
    entry = root / key[:32]
    if entry.is_dir():
        return str(entry)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key[:32]}.lock"):
        if entry.is_dir():  # another worker fetched it while this one waited
            return str(entry)
        partial = root / f"{key[:32]}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            _copy_to_local(location, partial)
            for file in location.files:
                got = (partial / file.name).stat().st_size if (partial / file.name).is_file() \
                    else None
                if got != file.length:
                    raise RuntimeError(f"fetching model file {file.path}: expected "
                                       f"{file.length} bytes (as listed when the job started), "
                                       f"got {got}; was the model changed during the job?")
            os.rename(partial, entry)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return str(entry)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    import fcntl

    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _copy_to_local(location: ModelLocation, target: Path) -> None:
    """Copy every file of ``location`` into the folder ``target`` with Hadoop's FsShell."""
    done = ShellFS(location.hadoop_settings).run(
        "-copyToLocal", *[f.path for f in location.files], str(target) + "/", check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fetching the model {location.folder} to {target} with Hadoop's "
                           f"FsShell failed ({shell_error_line(done)})")
