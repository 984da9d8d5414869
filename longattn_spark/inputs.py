"""Resolving a stage's input tables, shared by select, compare, report and export: table
references whose errors name the option they came from, pinned Delta versions, schema checks,
and the scorers of a scores table (their rows, methods and records)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from longattn_spark.errors import ConfigError, TableError
from longattn_spark.sqlfiles import load_sql


def table_ref(text: str, option: str):
    """A TableRef whose errors name the option it came from."""
    from longattn_spark.tables.refs import TableRef

    try:
        return TableRef(text)
    except TableError as exc:
        raise TableError(f"{option}: {exc}") from None


def existing_table(spark, ref, option: str, spec):
    """``ref``, checked to exist with the schema of a ``spec.kind`` table."""
    from longattn_spark.tables.writes import check_schema

    if not ref.exists(spark):
        raise TableError(f"{option} {ref}: no such Delta table")
    try:
        check_schema(spark, ref, spec)
    except TableError as exc:
        raise TableError(f"{option}: {exc}") from None
    return ref


def pinned_version(spark, ref, requested: int | None, option: str) -> int:
    """The Delta version to read: the requested one (checked to exist) or the current one."""
    if not ref.exists(spark):
        raise TableError(f"{option}: table {ref} does not exist")
    current = ref.version(spark)
    if requested is None or requested < 0:
        return current
    if requested > current:
        raise TableError(f"{option}-version {requested}: table {ref} is at version {current}")
    return requested


def scorer_counts(spark, scores_view: str) -> dict[str, int]:
    """Windows per scorer_id in a scores table (``select_scorer_ids.sql``)."""
    rows = spark.sql(load_sql("select_scorer_ids"), args={"scores": scores_view}).collect()
    return {r["scorer_id"]: int(r["windows"]) for r in rows}


def chosen_scorer_id(requested: str, available: Mapping[str, int], table: str) -> str:
    """The scorer to read: the requested one, or the only one in the table."""
    listing = ", ".join(f"{sid} ({n} windows)" for sid, n in sorted(available.items()))
    if requested:
        if requested not in available:
            raise ConfigError(f"--scorer-id {requested!r} has no scores in {table}; scorer_ids "
                              f"there: {listing}")
        return requested
    if len(available) > 1:
        raise ConfigError(f"scores table {table} holds several scorers; choose one with "
                          f"--scorer-id: {listing}")
    return next(iter(available))


@dataclass(frozen=True)
class StoredScorer:
    """A scorer of the scores table: its id, rows, method name, the ``--method`` spec that
    loads it (a plugin's ``package.module:attr``) and its recorded options."""

    scorer_id: str
    windows: int
    method: str
    spec: str
    options: Mapping[str, Any] | None


def stored_scorers(counts: Mapping[str, int], records: Mapping[str, dict],
                   methods: Mapping[str, str]) -> dict[str, StoredScorer]:
    """The table's scorers from their row counts, records and the ``method`` of their rows."""
    out = {}
    for sid, n in sorted(counts.items()):
        record = records.get(sid) or {}
        method = record.get("method") or methods.get(sid) or "longattn"
        out[sid] = StoredScorer(sid, n, method, record.get("method_plugin") or method,
                                record.get("options") if isinstance(record.get("options"),
                                                                    dict) else None)
    return out


def scorer_counts_and_methods(frame) -> tuple[dict[str, int], dict[str, str]]:
    """Rows per scorer_id and the method its rows name, of a scores table read as ``frame``
    (one aggregate; rows of releases before the ``method`` column are LongAttn's)."""
    from pyspark.sql import functions as F

    method = F.col("method") if "method" in frame.columns else F.lit(None).cast("string")
    rows = frame.groupBy("scorer_id").agg(F.count(F.lit(1)).alias("n"),
                                          F.first(method, ignorenulls=True).alias("m")).collect()
    return ({r["scorer_id"]: int(r["n"]) for r in rows},
            {r["scorer_id"]: r["m"] or "longattn" for r in rows})


def scorer_records(spark, scores) -> dict[str, dict]:
    """Every scorer's record written by the score job (the scores table's
    ``longattn.scorer.<scorer_id>`` properties), by scorer_id."""
    import json

    from longattn_spark.tables.refs import table_properties

    out = {}
    for key, text in table_properties(spark, scores).items():
        if key.startswith("longattn.scorer."):
            try:
                record = json.loads(text)
            except ValueError:
                continue
            if isinstance(record, dict):
                out[key.removeprefix("longattn.scorer.")] = record
    return out


def scorer_record(spark, scores, scorer_id: str) -> dict:
    """One scorer's record (``scorer_records``), or {} when the table has none."""
    return scorer_records(spark, scores).get(scorer_id, {})
