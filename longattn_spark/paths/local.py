"""The local disk (and FUSE mounts such as Databricks' ``/Volumes``) through Python's ``os``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from longattn_spark.paths.uri import FileStatus, local_path


def file_uri(p: Path) -> str:
    """``file:/abs/path``, the form Spark's readers give local files."""
    return "file:" + str(p.resolve())


def _status_of(p: Path, st: os.stat_result, is_dir: bool) -> FileStatus:
    return FileStatus(file_uri(p), st.st_size, int(st.st_mtime * 1000), is_dir)


class LocalFS:
    """One filesystem's operations; every backend (local, Hadoop in the JVM, Hadoop's
    FsShell, Spark tasks) has these methods with these meanings."""

    def status(self, path: str) -> FileStatus | None:
        p = local_path(path)
        if not p.exists():
            return None
        return _status_of(p, p.stat(), p.is_dir())

    def list_dir(self, path: str) -> list[FileStatus]:
        entries = []
        with os.scandir(local_path(path)) as it:
            for entry in it:
                entries.append(_status_of(Path(entry.path), entry.stat(), entry.is_dir()))
        return sorted(entries, key=lambda e: e.name)

    def list_files_recursively(self, path: str) -> list[FileStatus]:
        out = []
        for root, _dirs, files in os.walk(local_path(path)):
            for name in files:
                p = Path(root) / name
                out.append(_status_of(p, p.stat(), False))
        return sorted(out, key=lambda e: e.path)

    def read_bytes(self, path: str) -> bytes:
        return local_path(path).read_bytes()

    def write_bytes(self, path: str, data: bytes) -> str:
        p = local_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return str(p.resolve())

    def delete(self, path: str) -> None:
        p = local_path(path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink()

    def mkdirs(self, path: str) -> None:
        local_path(path).mkdir(parents=True, exist_ok=True)

    def rename(self, source: str, target: str) -> bool:
        """Move ``source`` to ``target``; False when ``target`` exists or ``source`` does not."""
        src, dst = local_path(source), local_path(target)
        if dst.exists() or not src.exists():
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
        return True

    def replace(self, source: str, target: str) -> None:
        """Move the file ``source`` over ``target`` in one step (``rename(2)``)."""
        os.replace(local_path(source), local_path(target))

    def qualified(self, path: str) -> str:
        return file_uri(local_path(path))

    def checksum(self, path: str) -> dict | None:
        return None  # the local filesystem keeps none without reading the file
