"""A DataFrame computed once and cut from its lineage (``materialize``): where a plan reads a
table the job then writes, on a local session and on a cluster."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longattn_spark.tables.refs import TableRef, quote_identifier


def materialize(spark: SparkSession, frame: DataFrame, near: TableRef,
                staging_root: str | None = None) -> tuple[DataFrame, Callable[[], None]]:
    """``frame`` computed once and cut from its lineage, and a function that releases it.

    Used where a plan reads a table that the job then writes (Spark drops cached data that
    depends on a written table, and would compute it again). Locally a local checkpoint is
    enough. On a cluster, local checkpoints live on executors and die with them, so the rows
    go to reliable storage: Spark's checkpoint folder when one is set
    (``spark.checkpoint.dir``), else a staging folder under ``staging_root`` (the score job's
    --checkpoint-location) or beside the table written to (``<table>/_longattn_staging/<run>``;
    Delta ignores folders starting with ``_``).
    """
    if _is_local_master(spark):
        checkpointed = frame.localCheckpoint(eager=True)
        return checkpointed, checkpointed.unpersist
    checkpoint_dir = _checkpoint_dir(spark)
    if checkpoint_dir:
        return frame.checkpoint(eager=True), lambda: None
    if staging_root:
        location = staging_root
    else:
        location = near.location if near.is_path else _table_location(spark, near)
    staging = f"{location.rstrip('/')}/_longattn_staging/{uuid.uuid4().hex}"
    frame.write.mode("errorifexists").parquet(staging)
    staged = _with_non_null_elements(spark.read.parquet(staging), frame.schema)

    def release() -> None:
        from longattn_spark import paths

        paths.delete(spark, staging)

    return staged, release


def _with_non_null_elements(staged: DataFrame, schema: T.StructType) -> DataFrame:
    """Parquet read back declares every array's elements nullable; the arrays ``schema``
    declares without null elements (``input_ids``, per-head scores) get that back through
    ``array_compact`` (which drops nothing: they hold no null), so that a MERGE into a table
    declaring them non-null can insert them (Delta will not cast ``array<int>`` with
    nullable elements to one without)."""
    read = {f.name: f.dataType for f in staged.schema.fields}
    columns = []
    for f in schema.fields:
        column = F.col(quote_identifier(f.name))
        if (isinstance(f.dataType, T.ArrayType) and not f.dataType.containsNull
                and isinstance(read.get(f.name), T.ArrayType) and read[f.name].containsNull):
            column = F.array_compact(column)
        columns.append(column.alias(f.name))
    return staged.select(*columns)


def _is_local_master(spark: SparkSession) -> bool:
    from longattn_spark.session import is_local_master

    return is_local_master(spark)


def _checkpoint_dir(spark: SparkSession) -> str | None:
    try:
        configured = spark.conf.get("spark.checkpoint.dir", None)
    except Exception:  # noqa: BLE001
        configured = None
    if configured:
        return configured
    jsc = getattr(spark, "_jsc", None)
    if jsc is not None:
        found = jsc.sc().getCheckpointDir()
        if found.isDefined():
            return found.get()
    return None


def _table_location(spark: SparkSession, ref: TableRef) -> str:
    return spark.sql("DESCRIBE DETAIL IDENTIFIER(:t)", args={"t": ref.text}).collect()[0][
        "location"]
