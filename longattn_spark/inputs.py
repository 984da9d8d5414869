"""Resolving a stage's input tables, shared by select, report and export: table references
whose errors name the option they came from, pinned Delta versions, schema checks, and the
scorer to read from a scores table."""

from __future__ import annotations

from collections.abc import Mapping

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
