"""The export folder on its file system (through ``longattn_spark.paths``: the local disk,
Hadoop in the JVM, or Spark tasks on Spark Connect): reading the current export, naming the
shards Spark wrote, publishing the manifest in one step, and cleaning up."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from longattn_spark import paths
from longattn_spark.errors import ConfigError, InputError, TableError
from longattn_spark.export.manifest import (
    _MANIFEST_DRAFT,
    _SPARK_OUTPUT,
    ATTEMPTS,
    MANIFEST,
    ExportManifest,
    is_legacy_export_file,
    output_location,
    parse_manifest,
    publish_method,
    shard_file_name,
)


class _Folder:
    """Listing, moving, reading and writing files in one folder on its filesystem (through
    ``longattn_spark.paths``: the local disk, Hadoop in the JVM, or Spark tasks on Spark
    Connect). Names are ``/``-separated paths relative to the folder."""

    def __init__(self, spark, location: str) -> None:
        self._spark = spark
        self.root = location.rstrip("/") or "/"
        self.scheme = paths.scheme_of(location) or paths.scheme_of(paths.default_fs(spark)) \
            or "file"

    def path(self, *names: str) -> str:
        return paths.join(self.root, *names)

    def ensure(self) -> None:
        found = paths.status(self._spark, self.root)
        if found is not None and not found.is_dir:
            raise ConfigError(f"--output {self.root}: exists and is not a folder")
        paths.mkdirs(self._spark, self.root)

    def names(self, *sub: str) -> list[str]:
        p = self.path(*sub)
        if paths.status(self._spark, p) is None:
            return []
        return [e.name for e in paths.list_dir(self._spark, p)]

    def move(self, source: str, *names: str) -> None:
        if not paths.rename(self._spark, source, self.path(*names)):
            raise TableError(f"--output {self.root}: could not move {source} to "
                             f"{'/'.join(names)}")

    def delete(self, *names: str) -> None:
        paths.delete(self._spark, self.path(*names))

    def write_text(self, name: str, text: str) -> None:
        paths.write_bytes(self._spark, self.path(name), text.encode("utf-8"))

    def read_text(self, name: str) -> str | None:
        """The file's text, or None when it does not exist."""
        p = self.path(name)
        if paths.status(self._spark, p) is None:
            return None
        return paths.read_text(self._spark, p)

    def file_info(self, name: str) -> dict[str, Any]:
        """Size in bytes, and the file system's checksum where it keeps one without reading
        the file (HDFS: MD5 of the block CRCs; none on the local file system)."""
        p = self.path(name)
        info: dict[str, Any] = {"bytes": int(paths.status(self._spark, p).length)}
        checksum = paths.checksum(self._spark, p)
        if checksum is not None:
            info["checksum"] = checksum
        return info

    def publish_text(self, name: str, text: str, draft: str, method: str | None = None
                     ) -> None:
        """Replace the file ``name`` with ``text`` in one step: a reader sees the old file or
        the new one, whole (see :func:`publish_method`). ``draft``: where the text is written
        first when the replacement is a rename."""
        method = method or publish_method(self.scheme)
        if method == "put":
            self.write_text(name, text)
            return
        self.write_text(draft, text)
        paths.replace(self._spark, self.path(draft), self.path(name))


def read_export_manifest(spark, output: str) -> ExportManifest:
    """The current manifest of the export folder ``output``.

    ``spark`` None reads a local folder with Python; with a SparkSession the folder is read
    through Hadoop's FileSystem (any URI Spark can read). Raises InputError when the folder
    holds no published export.
    """
    location = output_location(output)
    if spark is None:
        local = _local_path(location)
        try:
            text = (local / MANIFEST).read_text(encoding="utf-8")
        except FileNotFoundError:
            text = None
    else:
        text = _Folder(spark, location).read_text(MANIFEST)
    if text is None:
        raise InputError(f"{location}: holds no complete export ({MANIFEST} is missing)")
    return parse_manifest(text, location)


def export_files(output: str, spark=None) -> list[str]:
    """The shard files of the current export of ``output``: exactly the files its manifest
    lists, nothing else in the folder (see :func:`read_export_manifest`)."""
    return read_export_manifest(spark, output).files


def _local_path(location: str) -> Path:
    if location.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(location).path))
    if paths.has_scheme(location):
        raise ConfigError(f"{location}: reading an export on a remote file system needs a "
                          "SparkSession (read_export_manifest(spark, ...))")
    return Path(location)


def name_shards(folder: _Folder, attempt: str, shard_ids: list[int], fmt: str) -> None:
    """Give the files Spark wrote into ``attempt/_spark/shard=<n>/`` their shard names, in
    the attempt folder, and drop Spark's folder."""
    suffix = ".json" if fmt == "jsonl" else ".parquet"
    for index, shard in enumerate(shard_ids):
        sub = (attempt, _SPARK_OUTPUT, f"shard={shard}")
        parts = [n for n in folder.names(*sub) if n.startswith("part-") and n.endswith(suffix)]
        if len(parts) != 1:
            raise TableError(f"--output {folder.root}: expected one file for shard {shard}, "
                             f"found {len(parts)}")
        folder.move(folder.path(*sub, parts[0]), attempt,
                    shard_file_name(index, len(shard_ids), fmt))
    folder.delete(attempt, _SPARK_OUTPUT)


def current_attempt(folder: _Folder) -> str | None:
    """The attempt folder of the export published now (None: none, or the flat layout)."""
    try:
        text = folder.read_text(MANIFEST)
        attempt = parse_manifest(text, str(folder.root)).content.get("attempt") if text else None
    except InputError:
        return None
    return attempt if isinstance(attempt, str) and attempt.startswith(f"{ATTEMPTS}/") else None


def publish_manifest(folder: _Folder, manifest: Mapping[str, Any]) -> None:
    """Make the export current: replace ``manifest.json`` in one step (the last write)."""
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    folder.publish_text(MANIFEST, text, draft=f"{manifest['attempt']}/{_MANIFEST_DRAFT}")


def clean_up(folder: _Folder, keep: set[str]) -> None:
    """After publishing: delete attempt folders not in ``keep`` (killed runs, exports older than
    the one just replaced) and the flat layout's shards and staging folders."""
    for name in folder.names(ATTEMPTS):
        if f"{ATTEMPTS}/{name}" not in keep:
            folder.delete(ATTEMPTS, name)
    for name in folder.names():
        if is_legacy_export_file(name):
            folder.delete(name)
