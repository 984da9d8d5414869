"""Writing tables, every write safe to repeat and to run beside another job: creating a table
(two jobs may create it at once), adding the nullable columns a newer version has, recording
table properties, and the insert-only MERGE on the table's key; each retried on Delta's write
conflicts (``retries``)."""

from __future__ import annotations

import random
import time
import uuid

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from longattn_spark.errors import TableError
from longattn_spark.tables.refs import (
    TableRef,
    quote_identifier,
    sql_string,
    sql_target,
    table_properties,
)
from longattn_spark.tables.retries import (
    conflict_types,
    error_class,
    is_write_conflict,
    retry_on_conflict,
)
from longattn_spark.tables.schemas import TableSpec, schema_differences

#: How long a job waits for another job's creation of the same table to land (its first
#: commit, its catalog entry) before calling the table broken.
CREATE_RACE_WAIT_S = 60.0

#: Errors of a CREATE TABLE that lost a race against another creator of the same table:
#: Delta found the location holding a ``_delta_log`` without a commit yet
#: (``assertPathEmpty``), or the catalog entry appeared between the check and the create.
#: Optimistic-concurrency conflicts on the first commit (``DELTA_PROTOCOL_CHANGED``, "multiple
#: writers are writing to an empty directory") count too (``is_write_conflict``).
CREATE_RACE_ERROR_CLASSES = ("DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION",
                             "TABLE_OR_VIEW_ALREADY_EXISTS", "DELTA_TABLE_ALREADY_EXISTS")


def ensure_table(spark: SparkSession, ref: TableRef, spec: TableSpec,
                 properties: dict[str, str] | None = None) -> None:
    """Create the table if it is missing; if it exists, fail unless its schema matches.

    Created with ``CREATE TABLE ... USING DELTA`` (not delta-spark's builder), which works
    on Spark Connect without Delta's Connect plugin. DDL cannot say that an array holds no
    null, so array columns are created with nullable elements. Several jobs may create the
    same table at once: see ``_create_table``."""
    if ref.exists(spark):
        add_missing_columns(spark, ref, spec)
        check_schema(spark, ref, spec)
        return
    if not ref.is_path:
        parts = ref.text.split(".")
        if len(parts) >= 2:
            spark.sql("CREATE SCHEMA IF NOT EXISTS IDENTIFIER(:schema)",
                      args={"schema": ".".join(parts[:-1])})
    _create_table(spark, ref, _create_statement(ref, spec, properties))
    check_schema(spark, ref, spec)


def _create_statement(ref: TableRef, spec: TableSpec,
                      properties: dict[str, str] | None) -> str:
    properties = {"longattn.kind": spec.kind, **spec.properties, **(properties or {})}
    columns = ", ".join(_column_ddl(f) for f in spec.schema.fields)
    partitioned = (f" PARTITIONED BY ({', '.join(map(quote_identifier, spec.partition_by))})"
                   if spec.partition_by else "")
    listed = ", ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in properties.items())
    return (f"CREATE TABLE IF NOT EXISTS {sql_target(ref)} ({columns}) USING DELTA"
            f"{partitioned} COMMENT {sql_string(spec.comment)} TBLPROPERTIES ({listed})")


def _create_table(spark: SparkSession, ref: TableRef, create: str) -> None:
    """Run ``create`` (CREATE TABLE IF NOT EXISTS) until the table is readable, tolerating
    another job creating the same table at the same moment.

    For a path, Spark's IF NOT EXISTS counts any non-empty folder as an existing table, so a
    creator that comes second while the first one's ``_delta_log`` exists but its first
    commit has not landed yet runs a no-op CREATE and then finds no table; or Delta refuses
    its own creation (``CREATE_RACE_ERROR_CLASSES``, a conflict on version 0). In both cases
    the table the other job is creating appears within moments: wait for it, with a bounded
    back-off, and retry the CREATE (a no-op once it is there). Anything else is raised (or,
    for a folder that holds something other than a Delta table, named by ``check_schema``)."""
    conflict_types()  # before the CREATE: py4j then raises delta-spark's typed exceptions
    deadline = time.monotonic() + CREATE_RACE_WAIT_S
    delay = 0.05
    while True:
        try:
            spark.sql(create)
            failure = None
        except Exception as exc:  # noqa: BLE001 - classified below
            failure = exc
        if ref.exists(spark):
            return
        if not _creation_in_flight(spark, ref, failure):
            if failure is not None:
                raise failure
            return  # the path holds something that is not a Delta table: check_schema says
        if time.monotonic() > deadline:
            raise TableError(_creation_stuck(ref, failure))
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 1.0)


def _creation_in_flight(spark: SparkSession, ref: TableRef,
                        failure: BaseException | None) -> bool:
    """Whether another creation of ``ref`` is landing: our CREATE lost a race (Delta's error
    classes), or (a path) its ``_delta_log`` folder exists without a readable commit."""
    if failure is not None and (is_write_conflict(failure)
                                or error_class(failure).startswith(CREATE_RACE_ERROR_CLASSES)):
        return True
    if not ref.is_path:
        return False
    from longattn_spark import paths

    found = paths.status(spark, paths.join(ref.location, "_delta_log"))
    return found is not None and found.is_dir


def _creation_stuck(ref: TableRef, failure: BaseException | None) -> str:
    waited = f"{CREATE_RACE_WAIT_S:g} s"
    if ref.is_path:
        return (f"table {ref} has a _delta_log folder but no readable commit after {waited}: "
                "a creation of it is still running or died; if no job is creating it, remove "
                f"{ref.location.rstrip('/')}/_delta_log and run again")
    detail = str(failure).splitlines()[0] if failure is not None else "not in the catalog"
    return f"creating table {ref} did not finish after {waited}: {detail}"



def add_missing_columns(spark: SparkSession, ref: TableRef, spec: TableSpec) -> list[str]:
    """Migrate a table written by an earlier version: add the nullable columns of ``spec``
    that it lacks (``ALTER TABLE ... ADD COLUMNS``); rows already there read them as null.
    Any other difference is left for ``check_schema`` to refuse."""
    try:
        actual = {f.name.lower() for f in ref.read(spark).schema.fields}
        kind = table_properties(spark, ref).get("longattn.kind")
    except Exception:  # noqa: BLE001 - unreadable: check_schema names the problem
        return []
    missing = [f for f in spec.schema.fields if f.name.lower() not in actual]
    if kind != spec.kind or not missing or any(not f.nullable for f in missing):
        return []  # not a table of ours, or not one an added column can fix
    columns = ", ".join(f"{quote_identifier(f.name)} {f.dataType.simpleString()} COMMENT "
                        f"{sql_string(f.metadata.get('comment', ''))}" for f in missing)
    retry_on_conflict(lambda: spark.sql(
        f"ALTER TABLE {sql_target(ref)} ADD COLUMNS ({columns})"),
        what=f"adding columns to {ref}")
    names = [f.name for f in missing]
    print(f"migrated {spec.kind} table {ref}: added column(s) {', '.join(names)}")
    return names


def check_schema(spark: SparkSession, ref: TableRef, spec: TableSpec) -> None:
    try:
        actual = ref.read(spark).schema
    except Exception as exc:  # noqa: BLE001 - not a Delta table, unreadable: all one error
        raise TableError(f"table {ref} exists but cannot be read as a Delta {spec.kind} "
                         f"table: {str(exc).splitlines()[0]}") from None
    diffs = schema_differences(spec.schema, actual)
    if diffs:
        raise TableError(f"table {ref} exists with another schema than a {spec.kind} table "
                         f"({'; '.join(diffs)}); nothing was written. Use another table or "
                         "drop it.")


def set_properties(spark: SparkSession, ref: TableRef, properties: dict[str, str]) -> None:
    """Record table properties (``ALTER TABLE ... SET TBLPROPERTIES``); properties that
    already have the value are left alone, so a re-run commits nothing."""
    current = table_properties(spark, ref)
    for key, value in properties.items():
        if current.get(key) != value:
            _set_property(spark, ref, key, value)


def _set_property(spark: SparkSession, ref: TableRef, key: str, value: str) -> None:
    # TBLPROPERTIES keys and values are literals; Spark's parser accepts them only inline, so
    # both are escaped as SQL string literals (never pasted raw) and the table goes through
    # IDENTIFIER() or a quoted delta.`path`.
    lit_key, lit_value = sql_string(key), sql_string(value)
    retry_on_conflict(lambda: spark.sql(
        f"ALTER TABLE {sql_target(ref)} SET TBLPROPERTIES ({lit_key} = {lit_value})"),
        what=f"setting properties of {ref}")



def _column_ddl(f: T.StructField) -> str:
    """One column of a CREATE TABLE: quoted name, type, NOT NULL, comment."""
    out = f"{quote_identifier(f.name)} {_type_ddl(f.dataType)}"
    if not f.nullable:
        out += " NOT NULL"
    if f.metadata.get("comment"):
        out += f" COMMENT {sql_string(f.metadata['comment'])}"
    return out


def _type_ddl(data_type: T.DataType) -> str:
    if isinstance(data_type, T.StructType):
        return "STRUCT<" + ", ".join(
            f"{quote_identifier(f.name)}: {_type_ddl(f.dataType)}"
            + ("" if f.nullable else " NOT NULL") for f in data_type.fields) + ">"
    if isinstance(data_type, T.ArrayType):
        return f"ARRAY<{_type_ddl(data_type.elementType)}>"
    if isinstance(data_type, T.MapType):
        return f"MAP<{_type_ddl(data_type.keyType)}, {_type_ddl(data_type.valueType)}>"
    return data_type.simpleString()


def merge_from(rows: DataFrame, ref: TableRef, on: str, action: str,
               args: dict | None = None, what: str = "") -> dict[str, int]:
    """``MERGE INTO <ref> AS t USING <rows> AS s ON <on> <action>`` as SQL, with ``rows`` as
    a temporary view of its own session and the values in ``on`` as named parameters
    (``args``); retried on Delta's write conflicts. Returns Delta's MERGE metrics."""
    session = rows.sparkSession
    view = f"longattn_merge_{uuid.uuid4().hex[:12]}"
    rows.createOrReplaceTempView(view)
    statement = (f"MERGE INTO {sql_target(ref)} AS t USING {quote_identifier(view)} AS s "
                 f"ON {on} {action}")
    try:
        return retry_on_conflict(lambda: session.sql(statement, args=args or {}).collect()[0]
                                 .asDict(), what=what or f"writing {ref}")
    finally:
        session.catalog.dropTempView(view)


def in_values(column: str, values: list, prefix: str) -> tuple[str, dict]:
    """SQL ``column IN (:p0, ...)`` (``OR column IS NULL`` when None is among ``values``) and
    its parameters; FALSE for no values."""
    known = [v for v in values if v is not None]
    args = {f"{prefix}{i}": v for i, v in enumerate(known)}
    text = f"{column} IN ({', '.join(':' + k for k in args)})" if known else "FALSE"
    if len(known) < len(values):
        text = f"({text} OR {column} IS NULL)"
    return text, args



def merge_new_rows(spark: SparkSession, ref: TableRef, spec: TableSpec, rows: DataFrame,
                   target_filter: dict[str, str] | None = None,
                   partition_values: tuple[str, list] | None = None) -> dict[str, int]:
    """Insert the rows whose key is not yet in the table (insert-only MERGE).

    When every key is already there Delta commits nothing, so a re-run leaves the table, its
    version included, exactly as it was; the MERGE is atomic, so a concurrent writer cannot
    make a duplicate either.

    ``target_filter`` (column -> value, e.g. ``{"scorer_id": sid}``) narrows the target to one
    partition, and ``partition_values`` (column, values) to the partitions the rows go to, so
    that concurrent writers of other partitions do not conflict.
    Returns Delta's MERGE metrics (``num_inserted_rows``, ...) plus ``numTargetRowsInserted``.
    """
    clauses, args = [], {}
    for i, (column, value) in enumerate((target_filter or {}).items()):
        clauses.append(f"t.{quote_identifier(column)} = :filter{i}")
        args[f"filter{i}"] = value
    if partition_values is not None:
        column, values = partition_values
        text, part_args = in_values(f"t.{quote_identifier(column)}", list(values), "part")
        clauses.append(text)
        args.update(part_args)
    clauses += [f"t.{quote_identifier(k)} = s.{quote_identifier(k)}" for k in spec.keys]
    metrics = merge_from(rows.select(*spec.column_names), ref, " AND ".join(clauses),
                         "WHEN NOT MATCHED THEN INSERT *", args, what=f"writing {ref}")
    return {"numTargetRowsInserted": int(metrics.get("num_inserted_rows", 0)), **metrics}
