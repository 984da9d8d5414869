"""Where a model is (``ModelLocation``: the files scoring needs, each with its fully qualified
path, size and modification time) and how an executor gets them (``fetch_model``).

A local folder (the local disk, or a mount every node sees: ``/Volumes``, ``/dbfs``) is read
in place. Anything else (``hdfs://``, ``s3a://``, ``abfss://``, ``file:`` URIs, a scheme-less
path on an HDFS default filesystem) is copied, only the needed files, into a per-executor
cache folder named by the hash of every file's (path, size, mtime): an unchanged model is
fetched once per executor, an updated one (another size or mtime) is fetched again. A file
lock makes the Python workers of one executor copy once; the copy goes to a temporary folder
renamed into place when complete, so a crashed copy is never used.

How a Python worker reads a Hadoop path without a JVM: it runs Hadoop's own ``FsShell
-copyToLocal`` in a subprocess (``longattn_spark.paths.shell``) with the driver's Hadoop
settings, which travel in the ``ModelLocation`` (see ``weights.locate`` for the driver's side).
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

from longattn_spark.paths.shell import ShellFS, shell_error_line

CACHE_FOLDER = "longattn-model-cache"


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


def cache_key(files: Sequence[ModelFile]) -> str:
    """Hex SHA-256 of every file's (name, path, size, mtime): the executor cache folder's
    name, so that another version of any file is another folder."""
    canonical = json.dumps(sorted((f.name, f.path, f.length, f.modified_ms) for f in files),
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def executor_file(location: ModelLocation, name: str) -> Path:
    """On an executor: the local file ``name`` of ``location`` (fetched when remote)."""
    return Path(location.executor_path(), name)


# --- executors: the cache ------------------------------------------------------------------

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
