"""Pure path arithmetic: schemes, local paths, joining (no filesystem is touched)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

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


def is_uri(text: str) -> bool:
    """Whether ``text`` starts with a URI scheme (``s3a://``, ``dbfs:/``, ``file:``)."""
    return has_scheme(text)


def local_path(path: str) -> Path:
    """A local path (``file:`` URIs and scheme-less paths) as a ``Path``."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    elif path.startswith("file:"):
        path = path[len("file:"):]
    return Path(path).expanduser()


def join(folder: str, *names: str) -> str:
    """``folder/name/...`` (``names`` may hold ``/``-separated relative paths)."""
    out = folder.rstrip("/")
    for name in names:
        out += "/" + name.strip("/")
    return out


def parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0] or "/"


def first_line(exc: BaseException) -> str:
    """The one line of an exception worth showing a user (py4j and FsShell add noise)."""
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip().removeprefix(": ")  # py4j puts the Java exception after ": "
        if line and not line.startswith(("An error occurred", "Traceback")):
            return line[:300]
    return type(exc).__name__
