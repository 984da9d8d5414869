"""Filesystem work for Spark Connect sessions, which have no driver JVM: each operation runs
inside a one-task Spark job, on an executor, with Python's ``os`` for local and FUSE paths
(``file:``, Databricks' ``/Volumes``) and Hadoop's FsShell for any other filesystem. The
client never touches the server's disks itself."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

from longattn_spark.errors import InputError
from longattn_spark.paths.local import LocalFS
from longattn_spark.paths.shell import ShellFS
from longattn_spark.paths.uri import FileStatus, first_line, has_scheme

_OPERATIONS = ("status", "list_dir", "list_files_recursively", "read_bytes", "write_bytes",
               "delete", "mkdirs", "rename", "replace", "qualified", "checksum")


def run_on_executor(spark, call: Callable[[], Any]) -> Any:
    """``call()`` evaluated in one Spark task; its result comes back pickled. An exception
    there is raised here as ``RuntimeError`` with its type and first line."""

    def task(batches):
        import pyarrow as pa

        for _ in batches:
            pass
        try:
            outcome = ("ok", call())
        except Exception as exc:  # noqa: BLE001 - sent back to the client, raised there
            outcome = ("error", f"{type(exc).__name__}: {first_line(exc)}")
        yield pa.RecordBatch.from_pydict({"outcome": [pickle.dumps(outcome)]},
                                         schema=pa.schema([("outcome", pa.binary())]))

    rows = spark.range(0, 1, 1, 1).mapInArrow(task, "outcome binary").collect()
    status, value = pickle.loads(rows[0]["outcome"])
    if status == "error":
        raise RuntimeError(value)
    return value


def _absolute(path: str) -> str:
    import os

    return path if has_scheme(path) or path.startswith("/") else os.path.abspath(path)


class TaskFS:
    """The operations of ``paths.local.LocalFS``, each run in a Spark task (see module)."""

    def __init__(self, spark, *, local: bool, settings: Sequence[tuple[str, str]],
                 where: Callable[[str], str]) -> None:
        self._spark = spark
        self._local = local
        self._settings = tuple(settings)
        self._where = where

    def _call(self, method: str, path: str, *args: Any) -> Any:
        local, settings = self._local, self._settings
        if local:  # a relative path means the client's working folder, as the user typed it
            path = _absolute(path)
            args = tuple(_absolute(a) if method in ("rename", "replace") else a for a in args)

        def call() -> Any:
            fs = LocalFS() if local else ShellFS(settings)
            return getattr(fs, method)(path, *args)

        try:
            return run_on_executor(self._spark, call)
        except RuntimeError as exc:
            raise InputError(f"{self._where(path)}: {method.replace('_', ' ')} failed on an "
                             f"executor ({exc})") from None

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method not in _OPERATIONS:
            raise AttributeError(method)
        return lambda path, *args: self._call(method, path, *args)


__all__ = ["TaskFS", "run_on_executor", "FileStatus"]
