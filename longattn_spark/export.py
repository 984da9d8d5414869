"""Export: the windows of a selection as sharded training files.

Formats (``--format``):

- ``jsonl``: one object per line, ``{"text": ..., "id": ..., "category": ...}``, ready for
  Megatron-LM's ``tools/preprocess_data.py --json-keys text`` or Hugging Face ``datasets``
  (``load_dataset("json", data_files=...)``). ``text`` is the window's ``input_ids`` decoded
  with ``--tokenizer`` (special tokens kept): **decoded ids, not the exact source span** of the
  document. Decoding is done on the executors (``mapInArrow``), the tokenizer built once per
  Python worker from its JSON, which travels with the task (``longattn_spark.tokenize``), so
  executors need no access to the driver's path. The tokenizer must be the one the windows
  were cut with (checked against the windows' ``tokenizer`` column).
- ``parquet``: ``id``, ``category``, ``input_ids`` (array<int>), the ids exactly as scored.

Layout of ``--output`` (a local folder or any Hadoop file system URI)::

    manifest.json                                  the current export; published last
    _attempts/<selection_id>-<time>-<token>/       one folder per export run
        part-00000-of-0000N.jsonl                  (or .parquet)

An export run writes its shards into a fresh attempt folder, then publishes ``manifest.json``,
replacing the previous one in one step. The manifest lists every shard file of the export
(path relative to ``--output``, rows = lines of a JSONL file, windows, tokens, bytes, and the
file system's checksum where it keeps one cheaply, e.g. HDFS), the selection, its parameters,
the Delta versions it read, and windows and tokens per category. **Readers trust only what
the current manifest lists** (:func:`read_export_manifest`, :func:`export_files`): a reader
sees the previous complete export or the new complete one, never a mix or an empty folder,
even while an export runs or after one was killed. Files that no manifest lists (the attempt
of a killed or running export) are not part of any export.

The manifest is replaced atomically: locally and on HDFS (and other file systems with an
atomic rename) it is written next to the shards and renamed over ``manifest.json``; on object
stores (``s3a``, ``gs``, ``wasb``, ``dbfs``, ...), where a rename is a copy, it is written in
place with one PUT, which becomes visible whole when closed. After publishing, attempt folders
other than the current one and the one it replaced are deleted (the replaced export stays
one more export, for readers that started on it), as are the shards of the earlier flat
layout (``part-*-of-*`` and ``_staging-*`` directly in ``--output``). One export at a time per
output folder: a second export started meanwhile may delete the first one's attempt.

Shards hold about equal numbers of windows: a window's shard is given by quantiles of
``xxhash64(window_id)`` over the kept windows (exact, so sizes differ by at most one window,
while the selection has fewer windows than the quantile accuracy of 100000; within 1e-5 of the
count otherwise). A shard that would be empty (fewer windows than ``--shards``) is not
written, and the file names count the shards written. A re-run writes a new attempt and
replaces the manifest: lines are never duplicated.

The windows table is read at the version the selection recorded (time travel), so the files
match the selection even after the windows table changed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from longattn_spark.config import ExportConfig, LongAttnConfig
from longattn_spark.errors import ConfigError, InputError, TableError
from longattn_spark.selection import load_sql, table_ref

SHARD_ACCURACY = 100_000
EXTENSIONS = {"jsonl": "jsonl", "parquet": "parquet"}
MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
ATTEMPTS = "_attempts"
# inside an attempt folder: Spark's own output before the shards get their names, and the
# manifest before it is renamed over MANIFEST
_SPARK_OUTPUT = "_spark"
_MANIFEST_DRAFT = "_manifest.json"
# the flat layout of earlier versions, deleted once a manifest of this layout is published
_LEGACY_SHARD = re.compile(r"^part-\d{5}-of-\d{5}\.(jsonl|parquet)$")
_LEGACY_STAGING_PREFIX = "_staging-"
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/")
# file systems where a rename is a copy but a written file appears whole when closed
OBJECT_STORES = frozenset({"s3", "s3a", "s3n", "gs", "oss", "cosn", "obs", "wasb", "wasbs",
                           "dbfs"})


# ---------------------------------------------------------------------------------------------
# Pure part
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportOptions:
    """Validated export options."""

    format: str
    shards: int
    output: str
    selection_id: str
    tokenizer: str
    batch_windows: int


def export_options(cfg: ExportConfig) -> ExportOptions:
    """Validate the export section of the configuration."""
    if cfg.format not in EXTENSIONS:
        raise ConfigError(f"--format must be jsonl or parquet, got {cfg.format!r}")
    if cfg.shards < 1:
        raise ConfigError(f"--shards must be at least 1, got {cfg.shards}")
    if cfg.batch_windows < 1:
        raise ConfigError(f"--batch-windows must be at least 1, got {cfg.batch_windows}")
    if not cfg.output.strip():
        raise ConfigError("--output is required: the folder to write the shards to")
    if cfg.format == "jsonl" and not cfg.tokenizer:
        raise InputError("--tokenizer is required for --format jsonl: the tokenizer folder "
                         "(tokenizer.json) that decodes the windows' ids to text")
    return ExportOptions(format=cfg.format, shards=int(cfg.shards),
                         output=output_location(cfg.output), selection_id=cfg.selection_id,
                         tokenizer=cfg.tokenizer, batch_windows=int(cfg.batch_windows))


def output_location(text: str) -> str:
    """A URI as given, a local path made absolute."""
    return text if _URI.match(text) else str(Path(text).expanduser().resolve())


def shard_percentages(shards: int) -> list[float]:
    """Quantiles that split the kept windows into ``shards`` equal parts."""
    return [i / shards for i in range(1, shards)]


def shard_file_name(index: int, count: int, fmt: str) -> str:
    return f"part-{index:05d}-of-{count:05d}.{EXTENSIONS[fmt]}"


def is_legacy_export_file(name: str) -> bool:
    """Shards and staging folders of the earlier flat layout (directly in ``--output``)."""
    return bool(_LEGACY_SHARD.match(name)) or name.startswith(_LEGACY_STAGING_PREFIX)


def attempt_folder(selection_id: str, now: datetime | None = None, token: str | None = None
                   ) -> str:
    """A fresh attempt folder, relative to ``--output``: ``_attempts/<id>-<time>-<token>``."""
    now = now or datetime.now(timezone.utc)
    token = token or uuid.uuid4().hex[:8]
    return f"{ATTEMPTS}/{selection_id}-{now:%Y%m%dT%H%M%SZ}-{token}"


def publish_method(scheme: str) -> str:
    """How ``manifest.json`` is replaced atomically on a file system: ``rename`` (POSIX rename
    over the old file, local), ``put`` (written in place, visible whole when closed: object
    stores) or ``rename-overwrite`` (Hadoop FileContext rename with OVERWRITE: atomic on HDFS;
    a delete and a rename where the file system has no atomic replace)."""
    if scheme == "file":
        return "rename"
    if scheme in OBJECT_STORES:
        return "put"
    return "rename-overwrite"


def build_manifest(*, options: ExportOptions, selection_id: str, info: Mapping[str, Any],
                   selection_table: str, windows_table: str, stats: list[Mapping[str, Any]],
                   tokenizer: str | None, attempt: str = "") -> dict[str, Any]:
    """manifest.json: the shard files, totals per category and per shard, and where the
    windows came from.

    ``stats`` rows: shard, category, windows, tokens (``export_stats.sql``); shards are
    numbered in the order of their shard value. ``attempt``: the folder (relative to
    ``--output``) holding the shards. Sizes and checksums are added by :func:`with_files` once
    the files are written.
    """
    shard_ids = sorted({int(r["shard"]) for r in stats})
    categories: dict[str, dict[str, int]] = {}
    shards = []
    for index, shard in enumerate(shard_ids):
        rows = [r for r in stats if int(r["shard"]) == shard]
        name = shard_file_name(index, len(shard_ids), options.format)
        windows = sum(int(r["windows"]) for r in rows)
        shards.append({"file": f"{attempt}/{name}" if attempt else name,
                       "rows": windows,
                       "windows": windows,
                       "tokens": sum(int(r["tokens"]) for r in rows)})
        for r in rows:
            c = categories.setdefault(r["category"], {"windows": 0, "tokens": 0})
            c["windows"] += int(r["windows"])
            c["tokens"] += int(r["tokens"])
    text = None
    if options.format == "jsonl":
        text = (f"decoded from input_ids with the tokenizer {tokenizer} (special tokens kept); "
                "not the exact source span of the document")
    return {
        "manifest_version": MANIFEST_VERSION,
        "format": options.format,
        "fields": ["text", "id", "category"] if options.format == "jsonl"
        else ["id", "category", "input_ids"],
        "text": text,
        "selection_id": selection_id,
        "selection_table": selection_table,
        "windows_table": windows_table,
        "windows_version": info["windows_version"],
        "scores_version": info["scores_version"],
        "scorer_id": info["scorer_id"],
        "params": json.loads(info["params"]) if info["params"] else None,
        "windows": sum(s["windows"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "categories": dict(sorted(categories.items())),
        "attempt": attempt or None,
        "previous_attempt": None,
        "shards": shards,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def with_files(manifest: Mapping[str, Any], files: Mapping[str, Mapping[str, Any]]
               ) -> dict[str, Any]:
    """The manifest with each shard's ``bytes`` (and ``checksum`` when known) from ``files``
    (keyed by the shard's ``file``)."""
    shards = []
    for shard in manifest["shards"]:
        found = files[shard["file"]]
        entry = {**shard, "bytes": int(found["bytes"])}
        if found.get("checksum"):
            entry["checksum"] = found["checksum"]
        shards.append(entry)
    return {**manifest, "shards": shards}


# ---------------------------------------------------------------------------------------------
# Reading an export: only what the current manifest lists
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportManifest:
    """The current manifest of an export folder: what a reader may read."""

    output: str
    content: Mapping[str, Any]

    @property
    def selection_id(self) -> str:
        return self.content["selection_id"]

    @property
    def format(self) -> str:
        return self.content["format"]

    @property
    def shards(self) -> list[Mapping[str, Any]]:
        return list(self.content["shards"])

    @property
    def rows(self) -> int:
        return sum(int(s.get("rows", s["windows"])) for s in self.content["shards"])

    @property
    def files(self) -> list[str]:
        """The shard files, as paths (local output) or URIs, in shard order."""
        return [join_location(self.output, s["file"]) for s in self.content["shards"]]


def join_location(output: str, relative: str) -> str:
    """``relative`` (``/``-separated) inside the folder ``output`` (a local path or a URI)."""
    if _URI.match(output):
        return output.rstrip("/") + "/" + relative
    return str(Path(output, *relative.split("/")))


def _relative_file(name: Any, output: str) -> str:
    parts = name.split("/") if isinstance(name, str) else []
    if (not parts or _URI.match(name) or name.startswith("/")
            or any(p in ("", ".", "..") for p in parts)):
        raise InputError(f"{output}/{MANIFEST}: shard file {name!r} is not a path inside the "
                         "export folder")
    return name


def parse_manifest(text: str, output: str) -> ExportManifest:
    """Check a manifest's text and wrap it (``output``: the export folder)."""
    try:
        content = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{output}/{MANIFEST}: not JSON ({exc})") from None
    if not isinstance(content, dict) or content.get("format") not in EXTENSIONS \
            or not isinstance(content.get("shards"), list) or "selection_id" not in content:
        raise InputError(f"{output}/{MANIFEST}: not an export manifest")
    for shard in content["shards"]:
        if not isinstance(shard, dict):
            raise InputError(f"{output}/{MANIFEST}: not an export manifest")
        _relative_file(shard.get("file"), output)
    return ExportManifest(output, content)


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
    if _URI.match(location):
        raise ConfigError(f"{location}: reading an export on a remote file system needs a "
                          "SparkSession (read_export_manifest(spark, ...))")
    return Path(location)


# ---------------------------------------------------------------------------------------------
# Decoding on the executors
# ---------------------------------------------------------------------------------------------

def decode_batches(spec) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """A ``mapInArrow`` function: batches of (id, category, input_ids, shard, shard_key) to
    (text, id, category, shard, shard_key). The tokenizer is built once per Python worker."""

    def decode(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        from longattn_spark.tokenize import get_tokenizer

        tokenizer = get_tokenizer(spec)
        for batch in batches:
            ids = [x if x is not None else [] for x in batch.column("input_ids").to_pylist()]
            texts = tokenizer.decode_batch(ids, skip_special_tokens=False) if ids else []
            yield pa.RecordBatch.from_arrays(
                [pa.array(texts, pa.string()), batch.column("id"), batch.column("category"),
                 batch.column("shard"), batch.column("shard_key")],
                names=["text", "id", "category", "shard", "shard_key"])

    return decode


DECODED_SCHEMA = "text string, id string, category string, shard int, shard_key double"


# ---------------------------------------------------------------------------------------------
# Files (Hadoop FileSystem: local folders, s3a, abfss, dbfs alike)
# ---------------------------------------------------------------------------------------------

class _Folder:
    """Listing, moving, reading and writing files in one folder through Hadoop's FileSystem.
    Names are ``/``-separated paths relative to the folder."""

    def __init__(self, spark, location: str) -> None:
        self._jvm = spark._jvm
        self._gateway = spark.sparkContext._gateway
        self._conf = spark._jsc.hadoopConfiguration()
        self._path_cls = self._jvm.org.apache.hadoop.fs.Path
        self.root = self._path_cls(location)
        fs = self.root.getFileSystem(self._conf)
        self.scheme = fs.getScheme()
        # the raw local file system does not leave .crc files next to ours
        self.fs = fs.getRawFileSystem() if self.scheme == "file" else fs

    def path(self, *names: str):
        p = self.root
        for name in names:
            for part in name.split("/"):
                p = self._path_cls(p, part)
        return p

    def ensure(self) -> None:
        if self.fs.exists(self.root) and not self.fs.getFileStatus(self.root).isDirectory():
            raise ConfigError(f"--output {self.root}: exists and is not a folder")
        self.fs.mkdirs(self.root)

    def names(self, *sub: str) -> list[str]:
        p = self.path(*sub)
        if not self.fs.exists(p):
            return []
        return [s.getPath().getName() for s in self.fs.listStatus(p)]

    def move(self, source, *names: str) -> None:
        if not self.fs.rename(source, self.path(*names)):
            raise TableError(f"--output {self.root}: could not move {source} to "
                             f"{'/'.join(names)}")

    def delete(self, *names: str) -> None:
        self.fs.delete(self.path(*names), True)

    def write_text(self, name: str, text: str) -> None:
        stream = self.fs.create(self.path(name), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def read_text(self, name: str) -> str | None:
        """The file's text, or None when it does not exist."""
        p = self.path(name)
        if not self.fs.exists(p):
            return None
        stream = self.fs.open(p)
        try:
            data = self._jvm.org.apache.hadoop.io.IOUtils.readFullyToByteArray(stream)
        finally:
            stream.close()
        return bytes(data).decode("utf-8")

    def file_info(self, name: str) -> dict[str, Any]:
        """Size in bytes, and the file system's checksum where it keeps one without reading
        the file (HDFS: MD5 of the block CRCs; none on the local file system)."""
        p = self.path(name)
        info: dict[str, Any] = {"bytes": int(self.fs.getFileStatus(p).getLen())}
        try:
            checksum = self.fs.getFileChecksum(p)
        except Exception:  # noqa: BLE001 - a checksum is optional
            checksum = None
        if checksum is not None:
            info["checksum"] = {"algorithm": str(checksum.getAlgorithmName()),
                                "value": bytes(checksum.getBytes()).hex()}
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
        source, target = self.path(draft), self.path(name)
        if method == "rename":
            if not self.fs.rename(source, target):
                raise TableError(f"--output {self.root}: could not rename {draft} to {name}")
            return
        from py4j.protocol import Py4JJavaError

        fs_pkg = self._jvm.org.apache.hadoop.fs
        rename = getattr(fs_pkg, "Options$Rename")
        options = self._gateway.new_array(rename, 1)
        options[0] = rename.OVERWRITE
        try:
            context = fs_pkg.FileContext.getFileContext(self.root.toUri(), self._conf)
            context.rename(source, target, options)
        except Py4JJavaError as exc:
            if "Unsupported" not in exc.java_exception.getClass().getName():
                raise
            # no FileContext for this file system: write in place
            self.write_text(name, text)
            self.delete(draft)


# ---------------------------------------------------------------------------------------------
# Spark part
# ---------------------------------------------------------------------------------------------

def chosen_selection_id(spark, selection_view: str, requested: str, table: str) -> str:
    """The requested selection id, or the one written last."""
    if requested:
        return requested
    rows = spark.sql(load_sql("export_latest_selection"),
                     args={"selection": selection_view}).collect()
    if not rows:
        raise TableError(f"--selection {table}: holds no selection; run the select job first")
    return rows[0]["selection_id"]


def selection_info(spark, selection_view: str, selection_id: str, table: str
                   ) -> dict[str, Any]:
    info = spark.sql(load_sql("export_selection_info"), args={
        "selection": selection_view, "selection_id": selection_id}).collect()[0].asDict()
    if not info["windows"]:
        raise TableError(f"--selection-id {selection_id}: not in the selection table {table}")
    if not info["selected"]:
        raise InputError(f"selection {selection_id} in {table} keeps no window; nothing to "
                         "export")
    return info


def shard_bounds(spark, selection_view: str, selection_id: str, shards: int) -> list[float]:
    if shards == 1:
        return []
    row = spark.sql(load_sql("export_shard_bounds"), args={
        "selection": selection_view, "selection_id": selection_id,
        "percentages": shard_percentages(shards), "accuracy": SHARD_ACCURACY}).collect()[0]
    return [float(b) for b in row["bounds"]]


def check_exported(stats: list[Mapping[str, Any]], info: Mapping[str, Any], windows: str,
                   tokenizer_identity: str | None) -> None:
    """Every kept window must be in the windows table, cut with the tokenizer that decodes it."""
    found = sum(int(r["windows"]) for r in stats)
    if found != info["selected"]:
        raise TableError(f"--windows {windows}: {info['selected'] - found} of the "
                         f"{info['selected']} selected windows are missing at version "
                         f"{info['windows_version']}")
    if tokenizer_identity is None:
        return
    used = sorted({t for r in stats for t in (r["tokenizers"] or [])})
    if any(t != tokenizer_identity for t in used):
        raise InputError(f"--tokenizer is {tokenizer_identity}, but the selected windows were "
                         f"cut with {', '.join(used)}; their ids would decode to wrong text")


def write_shards(spark, exported, options: ExportOptions, staging: str, spec) -> None:
    """Spark writes one file per shard into ``staging/shard=<n>/``."""
    frame = exported.repartition(options.shards, "shard")
    if options.format == "jsonl":
        frame = (frame.select("id", "category", "input_ids", "shard", "shard_key")
                 .mapInArrow(decode_batches(spec), DECODED_SCHEMA))
        columns = ["text", "id", "category", "shard"]
    else:
        columns = ["id", "category", "input_ids", "shard"]
    frame = frame.sortWithinPartitions("shard", "shard_key").select(*columns)
    writer = frame.write.mode("overwrite").partitionBy("shard")
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(key)
    spark.conf.set(key, str(options.batch_windows))
    try:
        if options.format == "jsonl":
            writer.json(staging)
        else:
            writer.parquet(staging)
    finally:
        spark.conf.set(key, previous)


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


def export_selection(spark, options: ExportOptions, selection, windows) -> dict[str, Any]:
    """Write the kept windows of a selection (TableRefs) and return the manifest."""
    spec = None
    if options.format == "jsonl":
        from longattn_spark.tokenize import load_tokenizer_spec

        spec = load_tokenizer_spec(options.tokenizer, spark)
    if not selection.exists(spark):
        raise TableError(f"--selection: table {selection} does not exist")
    selection_view = selection.sql_name(spark, selection.version(spark))
    selection_id = chosen_selection_id(spark, selection_view, options.selection_id,
                                       str(selection))
    info = selection_info(spark, selection_view, selection_id, str(selection))
    if not windows.exists(spark):
        raise TableError(f"--windows: table {windows} does not exist")
    shards = min(options.shards, int(info["selected"]))
    exported_df = spark.sql(load_sql("export_windows"), args={
        "selection": selection_view, "selection_id": selection_id,
        "windows": windows.sql_name(spark, int(info["windows_version"])),
        "bounds": shard_bounds(spark, selection_view, selection_id, shards)})
    view = f"longattn_export_{uuid.uuid4().hex[:10]}"
    exported_df.createOrReplaceTempView(view)
    try:
        stats = [r.asDict() for r in spark.sql(load_sql("export_stats"),
                                               args={"exported": view}).collect()]
    finally:
        spark.catalog.dropTempView(view)
    check_exported(stats, info, str(windows), spec.identity if spec else None)
    folder = _Folder(spark, options.output)
    folder.ensure()
    previous = current_attempt(folder)
    attempt = attempt_folder(selection_id)
    manifest = build_manifest(options=options, selection_id=selection_id, info=info,
                              selection_table=str(selection), windows_table=str(windows),
                              stats=stats, tokenizer=spec.identity if spec else None,
                              attempt=attempt)
    write_shards(spark, exported_df, options, str(folder.path(attempt, _SPARK_OUTPUT)), spec)
    name_shards(folder, attempt, sorted({int(r["shard"]) for r in stats}), options.format)
    manifest = with_files(manifest, {s["file"]: folder.file_info(s["file"])
                                     for s in manifest["shards"]})
    manifest["previous_attempt"] = previous
    publish_manifest(folder, manifest)
    clean_up(folder, {attempt, previous} - {None})
    return manifest


def run_export_job(cfg: LongAttnConfig) -> dict[str, Any]:
    """``longattn-spark export``: write a selection's windows as training files."""
    from longattn_spark.session import get_spark

    options = export_options(cfg.export)
    selection = table_ref(cfg.export.selection, "--selection")
    windows = table_ref(cfg.export.windows, "--windows")
    spark = get_spark(cfg.spark)
    manifest = export_selection(spark, options, selection, windows)
    print(f"exported selection {manifest['selection_id']}: {manifest['windows']:,} windows, "
          f"{manifest['tokens']:,} tokens in {len(manifest['shards'])} {options.format} "
          f"shards to {options.output}")
    for category, totals in manifest["categories"].items():
        print(f"  {category:<16}{totals['windows']:>10,} windows{totals['tokens']:>16,} tokens")
    return manifest
