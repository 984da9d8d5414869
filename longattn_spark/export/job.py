"""``longattn-spark export``: the Spark part (the selection's kept windows, shard bounds,
decoding on the executors, Spark writing one file per shard), around the pure manifest
(:mod:`~longattn_spark.export.manifest`) and the folder's files
(:mod:`~longattn_spark.export.folder`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

from longattn_spark.console import StageRun, StepTimer, print_run
from longattn_spark.config import LongAttnConfig
from longattn_spark.errors import InputError, TableError
from longattn_spark.export.folder import (
    _Folder,
    clean_up,
    current_attempt,
    name_shards,
    publish_manifest,
)
from longattn_spark.export.manifest import (
    _SPARK_OUTPUT,
    ExportOptions,
    attempt_folder,
    build_manifest,
    check_exported,
    export_options,
    shard_percentages,
    with_files,
)
from longattn_spark.inputs import table_ref
from longattn_spark.session import arrow_batch_rows, get_spark
from longattn_spark.sqlfiles import load_sql

SHARD_ACCURACY = 100_000


def decode_batches(spec) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """A ``mapInArrow`` function: batches of (id, category, input_ids, shard, shard_key) to
    (text, id, category, shard, shard_key). The tokenizer is built once per Python worker."""

    def decode(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        from longattn_spark.tokenizer import get_tokenizer

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
    with arrow_batch_rows(spark, options.batch_windows):
        if options.format == "jsonl":
            writer.json(staging)
        else:
            writer.parquet(staging)


def export_selection(spark, options: ExportOptions, selection, windows) -> dict[str, Any]:
    """Write the kept windows of a selection (TableRefs) and return the manifest."""
    spec = None
    if options.format == "jsonl":
        from longattn_spark.tokenizer import load_tokenizer_spec

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
    options = export_options(cfg.export)
    selection = table_ref(cfg.export.selection, "--selection")
    windows = table_ref(cfg.export.windows, "--windows")
    timer = StepTimer()
    with timer.step("session"):
        spark = get_spark(cfg.spark)
    with timer.step("export"):
        manifest = export_selection(spark, options, selection, windows)
    print(f"exported selection {manifest['selection_id']}: {manifest['windows']:,} windows, "
          f"{manifest['tokens']:,} tokens in {len(manifest['shards'])} {options.format} "
          f"shards to {options.output}")
    for category, totals in manifest["categories"].items():
        print(f"  {category:<16}{totals['windows']:>10,} windows{totals['tokens']:>16,} tokens")
    print_run(StageRun(f"export {selection} -> {options.output}", [
        ("windows", f"{manifest['windows']:,}"), ("tokens", f"{manifest['tokens']:,}"),
        ("shards", f"{len(manifest['shards'])} {options.format}")],
        timer.seconds, timer.step_seconds))
    return manifest
