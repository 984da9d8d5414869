"""The one path / filesystem module: paths behave as Spark's own readers treat them.

- A path with a scheme (``hdfs://``, ``s3a://``, ``abfss://``, ``dbfs:/``, ``file:``) is read
  on that filesystem.
- A path without a scheme means the cluster's default filesystem (Hadoop's ``fs.defaultFS``):
  HDFS on EMR, the local disk in the embedded default. ``file:`` forces the local disk.
- Every check and every file written goes through the filesystem the job reads, by one of
  four backends with the same operations:

  ========================  =================================================================
  ``local.LocalFS``         Python's ``os``, when the path is on this machine's disk
  ``hadoop.HadoopFS``       Hadoop's FileSystem in the driver's JVM (classic sessions)
  ``tasks.TaskFS``          Spark Connect: each operation runs in a one-task Spark job, on an
                            executor, with ``LocalFS`` or ``shell.ShellFS`` (Hadoop's FsShell);
                            on Databricks, Volumes and workspace files are FUSE mounts the
                            client sees, and ``LocalFS`` serves them directly
  ========================  =================================================================

Errors name the path and the filesystem it was looked up on, in one line.
"""

from __future__ import annotations

from longattn_spark.errors import InputError
from longattn_spark.paths.hadoop import has_jvm, hadoop_conf, hadoop_fs
from longattn_spark.paths.local import LocalFS, file_uri
from longattn_spark.paths.uri import (
    HIDDEN_PREFIXES,
    FileStatus,
    first_line,
    has_scheme,
    is_uri,
    join,
    local_path,
    parent,
    scheme_of,
)

__all__ = [
    "HIDDEN_PREFIXES", "FileStatus", "client_sees", "default_fs", "delete", "for_spark", "has_scheme",
    "is_connect", "is_local", "is_uri", "join", "list_dir", "list_files_recursively",
    "local_path", "mkdirs", "parent", "qualified", "read_bytes", "read_text", "rename",
    "replace", "require", "scheme_of", "status", "where", "write_bytes", "checksum",
    "hadoop_settings",
]

# Names older modules and tests use.
_first_line = first_line
_file_uri = file_uri


def _hadoop_fs(spark, path: str):
    return hadoop_fs(spark, path, where(spark, path))


def is_connect(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (no driver JVM in this process)."""
    return spark is not None and not has_jvm(spark) and \
        type(spark).__module__.startswith("pyspark.sql.connect")


def default_fs(spark) -> str:
    """The cluster's default filesystem URI (``fs.defaultFS``), ``file:///`` when unset. On
    Spark Connect only the session's ``spark.hadoop.fs.defaultFS`` is visible: scheme-less
    paths mean the server's local (or FUSE-mounted) disk unless it is set."""
    conf = hadoop_conf(spark)
    if conf is not None:
        return conf.get("fs.defaultFS") or "file:///"
    try:
        return spark.conf.get("spark.hadoop.fs.defaultFS", None) or "file:///"
    except Exception:  # noqa: BLE001 - a session without the key
        return "file:///"


def hadoop_settings(spark) -> tuple[tuple[str, str], ...]:
    """What a Hadoop client outside the driver (FsShell on an executor) needs from the
    session: ``fs.defaultFS`` and every ``spark.hadoop.*`` entry, without the prefix."""
    settings = {"fs.defaultFS": default_fs(spark)}
    if spark is None:
        return tuple(settings.items())
    entries = spark.sparkContext.getConf().getAll() if has_jvm(spark) else \
        spark.conf.getAll.items()
    for key, value in entries:
        if key.startswith("spark.hadoop.") and len(key) > len("spark.hadoop."):
            settings[key[len("spark.hadoop."):]] = value
    return tuple(sorted(settings.items()))


def is_local(spark, path: str) -> bool:
    """Whether ``path`` lives on the local disk as Spark would read it (on Spark Connect: the
    server's local disk)."""
    scheme = scheme_of(path)
    if scheme is not None:
        return scheme == "file"
    if spark is None:
        return True
    return default_fs(spark).lower().startswith("file:")


def for_spark(spark, path: str) -> str:
    """The path to hand to Spark's readers and writers: local paths absolute (a relative path
    means the driver's working folder, as a user typing it expects), others as given."""
    if is_local(spark, path):
        return str(local_path(path).resolve()) if scheme_of(path) is None else path
    return path


def where(spark, path: str) -> str:
    """``path on <filesystem>`` for error messages."""
    scheme = scheme_of(path)
    if scheme is not None:
        fs = "the local disk" if scheme == "file" else f"{scheme}://"
        return f"{path} (on {fs})"
    return f"{path} (on {'the local disk' if is_local(spark, path) else default_fs(spark)})"


#: FUSE mounts a Databricks client process sees itself (Unity Catalog Volumes, workspace
#: files, the DBFS root): on Spark Connect there, these are read and written directly.
DATABRICKS_FUSE = ("/Volumes/", "/Workspace/", "/dbfs/")


def client_sees(path: str) -> bool:
    """Whether this process reads ``path`` itself even on Spark Connect: a Databricks FUSE
    mount (``DATABRICKS_FUSE``) seen from a Databricks client."""
    import os

    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION")) and scheme_of(path) in (
        None, "file") and str(local_path(path)).startswith(DATABRICKS_FUSE)


def _backend(spark, path: str):
    """The filesystem operations for ``path`` in this session (see the module's table)."""
    if is_connect(spark) and not client_sees(path):
        from longattn_spark.paths.tasks import TaskFS

        return TaskFS(spark, local=is_local(spark, path), settings=hadoop_settings(spark),
                      where=lambda p: where(spark, p))
    if is_local(spark, path):
        return LocalFS()
    from longattn_spark.paths.hadoop import HadoopFS

    return HadoopFS(spark, lambda p: where(spark, p))


def status(spark, path: str) -> FileStatus | None:
    """The file or folder at ``path``, or None when there is nothing there."""
    return _backend(spark, path).status(path)


def list_dir(spark, path: str) -> list[FileStatus]:
    """The entries directly inside the folder ``path`` (one level, never the whole tree),
    sorted by name."""
    return _backend(spark, path).list_dir(path)


def list_files_recursively(spark, path: str) -> list[FileStatus]:
    """Every file under ``path`` (for listings Spark's readers skip, e.g. empty files)."""
    return _backend(spark, path).list_files_recursively(path)


def read_bytes(spark, path: str) -> bytes:
    """The whole content of a (small) file: tokenizer and model configs, indexes, manifests."""
    return _backend(spark, path).read_bytes(path)


def read_text(spark, path: str) -> str:
    return read_bytes(spark, path).decode("utf-8")


def write_bytes(spark, path: str, data: bytes) -> str:
    """Write ``data`` to the file ``path`` (parents created) on its filesystem, replacing it;
    returns where it went: the absolute path on the local disk, else the qualified URI."""
    return _backend(spark, path).write_bytes(path, data)


def delete(spark, path: str) -> None:
    """Delete ``path`` (recursively) on its filesystem; nothing there is not an error."""
    _backend(spark, path).delete(path)


def mkdirs(spark, path: str) -> None:
    _backend(spark, path).mkdirs(path)


def rename(spark, source: str, target: str) -> bool:
    """Move ``source`` to ``target`` (parents created); False when ``target`` exists."""
    return _backend(spark, source).rename(source, target)


def replace(spark, source: str, target: str) -> None:
    """Move the file ``source`` over ``target``: in one step on the local disk and HDFS."""
    _backend(spark, source).replace(source, target)


def checksum(spark, path: str) -> dict | None:
    """The filesystem's own checksum of the file if it keeps one (HDFS), else None."""
    return _backend(spark, path).checksum(path)


def qualified(spark, path: str) -> str:
    """``path`` fully qualified as Spark's readers report file paths (``file:/abs/...``,
    ``hdfs://host:port/...``), for matching against ``_metadata.file_path``."""
    if is_local(spark, path):
        return file_uri(local_path(path))
    return _backend(spark, path).qualified(path)


def require(spark, path: str, option: str, *, kind: str = "file or folder") -> FileStatus:
    """The status of ``path``, or a one-line InputError naming the option, the path and the
    filesystem it was looked up on."""
    if not path:
        raise InputError(f"{option} is required")
    try:
        found = status(spark, path)
    except InputError as exc:  # unreachable filesystem, unreadable path: name the option too
        raise InputError(f"{option} {exc}") from None
    if found is None:
        raise InputError(f"{option} {where(spark, path)}: no such {kind}")
    if kind == "folder" and not found.is_dir:
        raise InputError(f"{option} {where(spark, path)}: not a folder")
    return found
