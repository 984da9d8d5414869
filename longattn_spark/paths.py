"""The one path / filesystem module: paths behave as Spark's own readers treat them.

- A path with a scheme (``hdfs://``, ``s3a://``, ``abfss://``, ``dbfs:/``, ``file:``) is read
  on that filesystem.
- A path without a scheme means the cluster's default filesystem (Hadoop's ``fs.defaultFS``):
  HDFS on EMR, the local disk in the embedded default. ``file:`` forces the local disk.
- Every existence or format check goes through the same Hadoop FileSystem that the job then
  reads (through the driver's JVM on a classic session); only when that filesystem is the local
  disk is Python's own ``os`` used, which is the same thing and needs no JVM round trip.

Errors name the path and the filesystem it was looked up on, in one line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from longattn_spark.errors import InputError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
#: Files Spark, Hadoop and Delta write beside data: never documents, never model files.
HIDDEN_PREFIXES = ("_", ".")


@dataclass(frozen=True)
class FileStatus:
    """One entry of a filesystem: its fully qualified path (``file:/...`` for the local
    disk, as Spark's readers write it), size, mtime and kind."""

    path: str
    length: int
    modified_ms: int
    is_dir: bool

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def scheme_of(path: str) -> str | None:
    """The URI scheme of ``path`` (lower case), or None for a scheme-less path."""
    if path.startswith("/"):
        return None
    match = _SCHEME.match(path)
    if match is None or len(match.group(1)) == 1:  # C:\... is a drive, not a scheme
        return None
    return match.group(1).lower()


def has_scheme(path: str) -> bool:
    return scheme_of(path) is not None


def default_fs(spark) -> str:
    """The cluster's default filesystem URI (``fs.defaultFS``), ``file:///`` when unset."""
    conf = _hadoop_conf(spark)
    if conf is not None:
        return conf.get("fs.defaultFS") or "file:///"
    try:
        return spark.conf.get("spark.hadoop.fs.defaultFS", None) or "file:///"
    except Exception:  # noqa: BLE001 - a session without the key
        return "file:///"


def is_local(spark, path: str) -> bool:
    """Whether ``path`` lives on this machine's disk as Spark would read it."""
    scheme = scheme_of(path)
    if scheme is not None:
        return scheme == "file"
    if spark is None:
        return True
    return default_fs(spark).lower().startswith("file:")


def local_path(path: str) -> Path:
    """A local path (``file:`` URIs and scheme-less paths) as a ``Path``."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    elif path.startswith("file:"):
        path = path[len("file:"):]
    return Path(path).expanduser()


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


def status(spark, path: str) -> FileStatus | None:
    """The file or folder at ``path``, or None when there is nothing there."""
    if is_local(spark, path):
        p = local_path(path)
        if not p.exists():
            return None
        st = p.stat()
        return FileStatus(_file_uri(p), st.st_size, int(st.st_mtime * 1000), p.is_dir())
    fs, hpath = _hadoop_fs(spark, path)
    try:
        if not fs.exists(hpath):
            return None
        return _status_of(fs.getFileStatus(hpath))
    except Exception as exc:  # noqa: BLE001 - py4j: unreachable host, no credentials, ...
        raise InputError(f"{where(spark, path)}: cannot be read ({_first_line(exc)})") from None


def list_dir(spark, path: str) -> list[FileStatus]:
    """The entries directly inside the folder ``path`` (one level, never the whole tree),
    sorted by name."""
    if is_local(spark, path):
        p = local_path(path)
        entries = []
        with os.scandir(p) as it:
            for entry in it:
                st = entry.stat()
                entries.append(FileStatus(_file_uri(Path(entry.path)), st.st_size,
                                          int(st.st_mtime * 1000), entry.is_dir()))
        return sorted(entries, key=lambda e: e.name)
    fs, hpath = _hadoop_fs(spark, path)
    try:
        return sorted((_status_of(s) for s in fs.listStatus(hpath)), key=lambda e: e.name)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{where(spark, path)}: cannot be listed ({_first_line(exc)})") from None


def list_files_recursively(spark, path: str) -> list[FileStatus]:
    """Every file under ``path`` (for listings Spark's readers skip, e.g. empty files)."""
    if is_local(spark, path):
        out = []
        for root, _dirs, files in os.walk(local_path(path)):
            for name in files:
                p = Path(root) / name
                st = p.stat()
                out.append(FileStatus(_file_uri(p), st.st_size, int(st.st_mtime * 1000), False))
        return sorted(out, key=lambda e: e.path)
    fs, hpath = _hadoop_fs(spark, path)
    files = fs.listFiles(hpath, True)
    out = []
    while files.hasNext():
        out.append(_status_of(files.next()))
    return sorted(out, key=lambda e: e.path)


def read_bytes(spark, path: str, max_bytes: int = 1 << 30) -> bytes:
    """The whole content of a (small) file: tokenizer and model configs, indexes."""
    if is_local(spark, path):
        return local_path(path).read_bytes()[:max_bytes + 1]
    fs, hpath = _hadoop_fs(spark, path)
    jvm = _jvm(spark)
    stream = fs.open(hpath)
    try:
        data = jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
    finally:
        stream.close()
    return bytes(data)


def read_text(spark, path: str) -> str:
    return read_bytes(spark, path).decode("utf-8")


def join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


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


def _file_uri(p: Path) -> str:
    """``file:/abs/path``, the form Spark's readers give local files."""
    return "file:" + str(p.resolve())


# --- Hadoop through the driver's JVM (classic sessions) ------------------------------------

def _jvm(spark):
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:
        from longattn_spark.errors import ConfigError

        raise ConfigError("this filesystem operation needs a classic Spark session (Spark "
                          "Connect has no driver JVM gateway)")
    return jvm


def _hadoop_conf(spark):
    """The session's Hadoop configuration (classic sessions only; None otherwise)."""
    if spark is None or getattr(spark, "_jsc", None) is None:
        return None
    return spark._jsc.hadoopConfiguration()


def _hadoop_fs(spark, path: str):
    jvm = _jvm(spark)
    conf = _hadoop_conf(spark)
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    try:
        fs = hpath.getFileSystem(conf)
    except Exception as exc:  # noqa: BLE001 - no FileSystem for the scheme, bad authority
        raise InputError(f"{where(spark, path)}: this cluster cannot reach that filesystem "
                         f"({_first_line(exc)})") from None
    return fs, hpath


def _status_of(st) -> FileStatus:
    return FileStatus(st.getPath().toString(), int(st.getLen()), int(st.getModificationTime()),
                      bool(st.isDirectory()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip().removeprefix(": ")  # py4j puts the Java exception after ": "
        if line and not line.startswith(("An error occurred", "Traceback")):
            return line[:300]
    return type(exc).__name__


def qualified(spark, path: str) -> str:
    """``path`` fully qualified as Spark's readers report file paths (``file:/abs/...``,
    ``hdfs://host:port/...``), for matching against ``_metadata.file_path``."""
    if is_local(spark, path):
        return _file_uri(local_path(path))
    fs, hpath = _hadoop_fs(spark, path)
    return fs.makeQualified(hpath).toString()


def delete(spark, path: str) -> None:
    """Delete ``path`` (recursively) on its filesystem; nothing there is not an error."""
    if is_local(spark, path):
        import shutil

        p = local_path(path)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
        return
    fs, hpath = _hadoop_fs(spark, path)
    fs.delete(hpath, True)


def write_bytes(spark, path: str, data: bytes) -> str:
    """Write ``data`` to the file ``path`` (parents created) on its filesystem, replacing it;
    returns the file's qualified path."""
    if is_local(spark, path):
        p = local_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return str(p.resolve())
    fs, hpath = _hadoop_fs(spark, path)
    stream = fs.create(hpath, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()
    return fs.makeQualified(hpath).toString()
