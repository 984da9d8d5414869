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

Files: ``part-00000-of-0000N.jsonl`` (or ``.parquet``) and ``manifest.json`` (windows and
tokens per category and per shard, the selection, its parameters and the Delta versions it
read). Shards hold about equal numbers of windows: a window's shard is given by quantiles of
``xxhash64(window_id)`` over the kept windows (exact, so sizes differ by at most one window,
while the selection has fewer windows than the quantile accuracy of 100000; within 1e-5 of the
count otherwise). A shard that would be empty (fewer windows than ``--shards``) is not
written, and the file names count the shards written.

The windows table is read at the version the selection recorded (time travel), so the files
match the selection even after the windows table changed. Spark writes into a staging folder
inside the output folder; then the previous export's shards and manifest (files named as above,
nothing else) are deleted, the new shards moved in and the manifest written last, so re-running
into the same folder leaves no stale shard.
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
_EXPORT_FILE = re.compile(r"^(part-\d{5}-of-\d{5}\.(jsonl|parquet)|manifest\.json)$")
_STAGING_PREFIX = "_staging-"
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/")


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


def is_export_file(name: str) -> bool:
    """Files an export owns in its folder (and replaces on the next export)."""
    return bool(_EXPORT_FILE.match(name))


def build_manifest(*, options: ExportOptions, selection_id: str, info: Mapping[str, Any],
                   selection_table: str, windows_table: str, stats: list[Mapping[str, Any]],
                   tokenizer: str | None) -> dict[str, Any]:
    """manifest.json: totals per category and per shard, and where the windows came from.

    ``stats`` rows: shard, category, windows, tokens (``export_stats.sql``); shards are
    numbered in the order of their shard value.
    """
    shard_ids = sorted({int(r["shard"]) for r in stats})
    categories: dict[str, dict[str, int]] = {}
    shards = []
    for index, shard in enumerate(shard_ids):
        rows = [r for r in stats if int(r["shard"]) == shard]
        shards.append({"file": shard_file_name(index, len(shard_ids), options.format),
                       "windows": sum(int(r["windows"]) for r in rows),
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
        "shards": shards,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


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
    """Listing, moving and writing files in one folder through Hadoop's FileSystem."""

    def __init__(self, spark, location: str) -> None:
        jvm = spark._jvm
        self._path_cls = jvm.org.apache.hadoop.fs.Path
        self.root = self._path_cls(location)
        fs = self.root.getFileSystem(spark._jsc.hadoopConfiguration())
        # the raw local file system does not leave .crc files next to ours
        self.fs = fs.getRawFileSystem() if fs.getScheme() == "file" else fs

    def path(self, *names: str):
        p = self.root
        for name in names:
            p = self._path_cls(p, name)
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

    def move(self, source, name: str) -> None:
        if not self.fs.rename(source, self.path(name)):
            raise TableError(f"--output {self.root}: could not move {source} to {name}")

    def delete(self, *names: str) -> None:
        self.fs.delete(self.path(*names), True)

    def write_text(self, name: str, text: str) -> None:
        stream = self.fs.create(self.path(name), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()


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


def replace_export(folder: _Folder, staging_name: str, manifest: dict[str, Any],
                   shard_ids: list[int], fmt: str) -> None:
    """Swap the staged shards in for the previous export's files; the manifest comes last."""
    for name in folder.names():
        if is_export_file(name) or (name.startswith(_STAGING_PREFIX) and name != staging_name):
            folder.delete(name)
    suffix = ".json" if fmt == "jsonl" else ".parquet"
    for index, shard in enumerate(shard_ids):
        sub = (staging_name, f"shard={shard}")
        parts = [n for n in folder.names(*sub) if n.startswith("part-") and n.endswith(suffix)]
        if len(parts) != 1:
            raise TableError(f"--output {folder.root}: expected one file for shard {shard}, "
                             f"found {len(parts)}")
        folder.move(folder.path(*sub, parts[0]), shard_file_name(index, len(shard_ids), fmt))
    folder.write_text("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    folder.delete(staging_name)


def export_selection(spark, options: ExportOptions, selection, windows) -> dict[str, Any]:
    """Write the kept windows of a selection (TableRefs) and return the manifest."""
    spec = None
    if options.format == "jsonl":
        from longattn_spark.tokenize import load_tokenizer_spec

        spec = load_tokenizer_spec(options.tokenizer)
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
    manifest = build_manifest(options=options, selection_id=selection_id, info=info,
                              selection_table=str(selection), windows_table=str(windows),
                              stats=stats, tokenizer=spec.identity if spec else None)
    folder = _Folder(spark, options.output)
    folder.ensure()
    staging_name = f"{_STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    write_shards(spark, exported_df, options, str(folder.path(staging_name)), spec)
    replace_export(folder, staging_name, manifest,
                   sorted({int(r["shard"]) for r in stats}), options.format)
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
