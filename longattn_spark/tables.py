"""The one place for table schemas, table addressing and idempotent Delta writes.

A table argument containing ``/`` (or a URI scheme) is a Delta path; anything else is a
metastore / Unity Catalog name (``table``, ``schema.table``, ``catalog.schema.table``).
Every write is an insert-only MERGE on the table's key, so a re-run or a retried task never
duplicates a row.
"""

from __future__ import annotations

import hashlib
import importlib
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longattn_spark.errors import TableError
from longattn_spark.paths.uri import has_scheme
from longattn_spark.reasons import (  # noqa: F401 - the scores_rejects reasons
    IDS_OUT_OF_VOCAB,
    NON_FINITE_LOSS,
    NON_FINITE_SCORE,
    WRONG_LENGTH,
)

R = TypeVar("R")


def _f(name: str, dtype: T.DataType, comment: str, nullable: bool = True) -> T.StructField:
    return T.StructField(name, dtype, nullable, metadata={"comment": comment})


@dataclass(frozen=True)
class TableSpec:
    """Schema, key, partitioning and documentation of one kind of table."""

    kind: str
    schema: T.StructType
    keys: tuple[str, ...]
    partition_by: tuple[str, ...]
    comment: str
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.schema.fields]


WINDOWS = TableSpec(
    kind="windows",
    schema=T.StructType([
        _f("window_id", T.StringType(), "deterministic id: hash of category, doc_id, "
           "doc_sha256, tokenizer, window size and token_start", nullable=False),
        _f("doc_id", T.StringType(), "id of the source document (unique within its "
           "category)", nullable=False),
        _f("category", T.StringType(), "category (book, arxiv, code, ...)", nullable=False),
        _f("window_index", T.IntegerType(), "position of the window in Algorithm 1's output "
           "order for its document"),
        _f("token_start", T.IntegerType(), "first token of the window in the document's ids"),
        _f("n_tokens", T.IntegerType(), "tokens in the window (= window size)"),
        _f("input_ids", T.ArrayType(T.IntegerType(), False), "token ids of the window, "
           "without BOS"),
        _f("char_start", T.LongType(), "first character of the window in the document text"),
        _f("char_end", T.LongType(), "character after the window's last token"),
        _f("tokenizer", T.StringType(), "tokenizer identity: tok-<sha256 of the settings in "
           "tokenizer.json that change ids>, independent of its path"),
        _f("ingested_at", T.TimestampType(), "when the window was written"),
        _f("doc_sha256", T.StringType(), "SHA-256 of the document's text (UTF-8): the same id "
           "with another text is a changed document"),
    ]),
    keys=("window_id",),
    partition_by=("category",),
    comment="LongAttn windows: documents tokenized and cut by Algorithm 1 (paper, Appendix A)",
)

REJECTS = TableSpec(
    kind="rejects",
    schema=T.StructType([
        _f("reject_id", T.StringType(), "deterministic id of this reject row", nullable=False),
        _f("doc_id", T.StringType(), "id of the document (null when the row had none)"),
        _f("category", T.StringType(), "category, when known"),
        _f("reason", T.StringType(), "why no window came of it: too_short, too_large, "
           "malformed_json, missing_id, missing_text, empty_text, non_string_text, "
           "invalid_utf8, duplicate_id, missing_category, tokenizer_error, changed_text",
           nullable=False),
        _f("detail", T.StringType(), "human-readable detail (file, sizes, first characters)"),
        _f("source", T.StringType(), "input file or table the row came from"),
        _f("tokenizer", T.StringType(), "tokenizer identity of the run"),
        _f("window_size", T.IntegerType(), "window size of the run"),
        _f("ingested_at", T.TimestampType(), "when the row was written"),
        _f("doc_sha256", T.StringType(), "SHA-256 of the document's text, when it had one"),
    ]),
    keys=("reject_id",),
    partition_by=("category",),
    comment="Input documents that produced no window, each with its reason",
)


PROLONG_COMPONENTS = T.StructType([
    T.StructField("mean_strength", T.DoubleType()),
    T.StructField("mean_distance", T.DoubleType()),
    T.StructField("mean_specificity", T.DoubleType()),
    T.StructField("pairs_kept", T.IntegerType()),
    T.StructField("pairs_scored", T.IntegerType()),
    T.StructField("segments", T.IntegerType()),
    T.StructField("reason", T.StringType()),
])

#: ``--method lossgain``: the components of its ``score`` (mean gain), over targets t in [2S, L)
LOSSGAIN_COMPONENTS = T.StructType([
    T.StructField("key_share", T.DoubleType()),
    T.StructField("full_loss", T.DoubleType()),
    T.StructField("short_loss", T.DoubleType()),
    T.StructField("short_context", T.IntegerType()),
])

SCORES = TableSpec(
    kind="scores",
    schema=T.StructType([
        _f("window_id", T.StringType(), "window scored (windows.window_id)", nullable=False),
        _f("scorer_id", T.StringType(), "stable hash of everything that changes a score: model "
           "identity, layer, seq_len, min_distance, dtype, rope overrides, math version; see "
           "the table property longattn.scorer.<scorer_id>", nullable=False),
        _f("category", T.StringType(), "category of the window"),
        _f("ds", T.DoubleType(), "dependency strength: mean over query heads of "
           "sum_{j<=n-k} P[n,j] / L (layer-0 attention mass at distance >= k)"),
        _f("variance", T.DoubleType(), "mean over query heads of the unbiased variance of the "
           "L x L matrix equal to P where j <= n-k and 0 elsewhere; DU = -variance"),
        _f("ds_heads", T.ArrayType(T.DoubleType(), False), "ds of each query head"),
        _f("var_heads", T.ArrayType(T.DoubleType(), False), "variance of each query head"),
        _f("seq_len", T.IntegerType(), "L: tokens scored, BOS included"),
        _f("min_distance", T.IntegerType(), "k: minimum distance counted as long-range"),
        _f("model", T.StringType(), "model the scores came from"),
        _f("scored_at", T.TimestampType(), "when the score was written"),
        _f("method", T.StringType(), "scoring method: longattn (ds, variance) or prolong "
           "(score); null on rows written before the column existed means longattn"),
        _f("score", T.DoubleType(), "the method's own per-window score: ProLong's LDS; null "
           "for longattn, whose LDS is per category (select)"),
        _f("prolong", PROLONG_COMPONENTS, "ProLong's components of the score (null for "
           "longattn)"),
        _f("lossgain", LOSSGAIN_COMPONENTS, "loss gain's components (null for other methods): "
           "key_share = share of targets with gain > 2 and full loss < 2 nats, full_loss and "
           "short_loss = mean losses with the whole window and with a short context of "
           "short_context tokens; score = short_loss - full_loss"),
        _f("device", T.StringType(), "device type the executor scored on (cpu, cuda)"),
        _f("kernel", T.StringType(), "kernel the executor ran (torch, triton)"),
        _f("dtype", T.StringType(), "compute dtype the executor ran"),
    ]),
    keys=("window_id", "scorer_id"),
    partition_by=("scorer_id",),
    comment="Per-window scores (LongAttn layer-0 attention, ProLong) per window and scorer",
)

SCORE_REJECTS = TableSpec(
    kind="score_rejects",
    schema=T.StructType([
        _f("window_id", T.StringType(), "window that could not be scored", nullable=False),
        _f("scorer_id", T.StringType(), "scorer that rejected it", nullable=False),
        _f("category", T.StringType(), "category of the window"),
        _f("reason", T.StringType(), "wrong_length, ids_out_of_vocab, non_finite_score or "
           "non_finite_loss", nullable=False),
        _f("detail", T.StringType(), "human-readable detail"),
        _f("scored_at", T.TimestampType(), "when the row was written"),
    ]),
    keys=("window_id", "scorer_id"),
    partition_by=("scorer_id",),
    comment="Windows the score job could not score, with the reason",
)

SELECTION = TableSpec(
    kind="selection",
    schema=T.StructType([
        _f("selection_id", T.StringType(), "hash of the parameters and input table versions",
           nullable=False),
        _f("window_id", T.StringType(), "window (windows.window_id)", nullable=False),
        _f("category", T.StringType(), "category of the window"),
        _f("n_tokens", T.IntegerType(), "tokens in the window"),
        _f("ds", T.DoubleType(), "dependency strength (scores.ds)"),
        _f("variance", T.DoubleType(), "variance (scores.variance); DU = -variance"),
        _f("z_ds", T.DoubleType(), "normalized DS within the category (z-score or min-max)"),
        _f("z_du", T.DoubleType(), "normalized DU within the category (z-score of -variance, "
           "or min-max of variance for --normalize minmax)"),
        _f("lds", T.DoubleType(), "long-distance dependency score used for the cut"),
        _f("selected", T.BooleanType(), "whether the window is in the selection"),
        _f("excluded_reason", T.StringType(), "why the window could not be ranked (no_window, "
           "no_n_tokens, null_score, nan_score, infinite_score); null for usable windows"),
        _f("scorer_id", T.StringType(), "scorer whose scores were used"),
        _f("params", T.StringType(), "JSON of the selection parameters"),
        _f("windows_version", T.LongType(), "Delta version of the windows table read"),
        _f("scores_version", T.LongType(), "Delta version of the scores table read"),
        _f("selected_at", T.TimestampType(), "when the selection was made"),
    ]),
    keys=("selection_id", "window_id"),
    partition_by=("selection_id",),
    comment="LongAttn selections: per-category normalized scores and the cut",
)

#: Score columns a probe row carries: every column of a scores row but its key, its category
#: and where it ran (so a method that adds columns to SCORES adds them to PROBE too).
PROBE_SCORE_COLUMNS = tuple(
    f.name for f in SCORES.schema.fields
    if f.name not in ("window_id", "scorer_id", "category", "scored_at", "device", "kernel",
                      "dtype"))

PROBE = TableSpec(
    kind="probe",
    schema=T.StructType([
        _f("probe_id", T.StringType(), "hash of the windows table, sample, kinds, seed and "
           "score options of the probe run", nullable=False),
        _f("category", T.StringType(), "category of the natural window A", nullable=False),
        _f("kind", T.StringType(), "natural, or the control kind: splice, shuffle, repeat, "
           "concat", nullable=False),
        _f("window_id", T.StringType(), "the natural window A (windows.window_id) the row "
           "was derived from", nullable=False),
        _f("other_window_ids", T.ArrayType(T.StringType(), False), "windows whose tokens a "
           "splice or concat took (empty otherwise)"),
        _f("param", T.IntegerType(), "splice: s; shuffle: block b; repeat: period p; concat: "
           "number of pieces; null for natural"),
        _f("input_ids", T.ArrayType(T.IntegerType(), False), "the scored window's W tokens, "
           "without BOS (the scorer adds BOS as for windows)"),
        _f("scored_window_id", T.StringType(), "window_id in the probe's staging tables: "
           "<probe_id>/<kind>/<window_id>"),
        _f("scorer_id", T.StringType(), "scorer of every row of the table", nullable=False),
        *(SCORES.schema[name] for name in PROBE_SCORE_COLUMNS),
        _f("selection_score", T.DoubleType(), "longattn: LDS = z(DS) + alpha*z(DU) with the "
           "natural sample's per-category mean and stddev; other methods: score"),
        _f("probed_at", T.TimestampType(), "when the row was written"),
    ]),
    keys=("probe_id", "kind", "window_id"),
    partition_by=("probe_id",),
    comment="longattn-spark probe: natural windows and matched controls, scored by one scorer",
)

SPECS = {s.kind: s for s in (WINDOWS, REJECTS, SCORES, SCORE_REJECTS, SELECTION, PROBE)}

_NAME_PART = re.compile(r"^(`[^`]+`|[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class TableRef:
    """A table given on the command line: a Delta path or a metastore / UC name."""

    text: str

    def __post_init__(self) -> None:
        if not self.text or not self.text.strip():
            raise TableError("table argument is empty")
        if not self.is_path:
            parts = self.text.split(".")
            if len(parts) > 3 or not all(_NAME_PART.match(p) for p in parts):
                raise TableError(f"table name {self.text!r} is not a valid "
                                 "[catalog.][schema.]table name (use a path with '/' for a "
                                 "folder)")

    @property
    def is_path(self) -> bool:
        return "/" in self.text or has_scheme(self.text)

    @property
    def location(self) -> str:
        """Absolute path or URI of a path table."""
        if has_scheme(self.text):
            return self.text
        return str(Path(self.text).expanduser().resolve())

    def __str__(self) -> str:
        return self.location if self.is_path else self.text

    def exists(self, spark: SparkSession) -> bool:
        """Whether the table exists (for a path: holds a Delta table). SQL and DataFrame
        calls only, so that it works on Spark Connect as on a classic session."""
        if not self.is_path:
            return spark.catalog.tableExists(self.text)
        try:
            spark.read.format("delta").load(self.location).schema  # noqa: B018 - analysis only
        except AnalysisException:
            return False
        return True

    def read(self, spark: SparkSession, version: int | None = None) -> DataFrame:
        if not self.exists(spark):
            raise TableError(f"table {self} does not exist")
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.location) if self.is_path else reader.table(self.text)

    def version(self, spark: SparkSession) -> int:
        """Current Delta version (for recording what a job read)."""
        return int(spark.sql(f"DESCRIBE HISTORY {_sql_target(self)} LIMIT 1")
                   .collect()[0]["version"])

    def sql_name(self, spark: SparkSession, version: int | None = None) -> str:
        """A name usable in ``IDENTIFIER(:param)``: the table's own name, or for a path (or a
        pinned version) a temporary view over it."""
        if not self.is_path and version is None:
            return self.text
        digest = hashlib.sha1(f"{self}@{version}".encode()).hexdigest()[:12]
        view = f"longattn_{digest}"
        self.read(spark, version).createOrReplaceTempView(view)
        return view


def _type_signature(schema: T.StructType) -> dict[str, str]:
    return {f.name.lower(): f.dataType.simpleString() for f in schema.fields}


def schema_differences(expected: T.StructType, actual: T.StructType) -> list[str]:
    """Human-readable differences between two schemas (names case-insensitive, nullability
    ignored); empty when compatible."""
    exp, act = _type_signature(expected), _type_signature(actual)
    diffs = [f"missing column {c} {t}" for c, t in exp.items() if c not in act]
    diffs += [f"unexpected column {c} {t}" for c, t in act.items() if c not in exp]
    diffs += [f"column {c} is {act[c]}, expected {t}" for c, t in exp.items()
              if c in act and act[c] != t]
    return diffs


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
    partitioned = (f" PARTITIONED BY ({', '.join(map(_quote_identifier, spec.partition_by))})"
                   if spec.partition_by else "")
    listed = ", ".join(f"{_sql_string(k)} = {_sql_string(v)}" for k, v in properties.items())
    return (f"CREATE TABLE IF NOT EXISTS {_sql_target(ref)} ({columns}) USING DELTA"
            f"{partitioned} COMMENT {_sql_string(spec.comment)} TBLPROPERTIES ({listed})")


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
    _conflict_types()  # before the CREATE: py4j then raises delta-spark's typed exceptions
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
                                or _error_class(failure).startswith(CREATE_RACE_ERROR_CLASSES)):
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


def _error_class(exc: BaseException) -> str:
    """The Spark error class (condition) of ``exc``, '' when it has none."""
    condition = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    try:
        return (condition() if condition is not None else None) or ""
    except Exception:  # noqa: BLE001 - an exception without an error class
        return ""


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
    columns = ", ".join(f"{_quote_identifier(f.name)} {f.dataType.simpleString()} COMMENT "
                        f"{_sql_string(f.metadata.get('comment', ''))}" for f in missing)
    retry_on_conflict(lambda: spark.sql(
        f"ALTER TABLE {_sql_target(ref)} ADD COLUMNS ({columns})"),
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
    lit_key, lit_value = _sql_string(key), _sql_string(value)
    retry_on_conflict(lambda: spark.sql(
        f"ALTER TABLE {_sql_target(ref)} SET TBLPROPERTIES ({lit_key} = {lit_value})"),
        what=f"setting properties of {ref}")


def _sql_target(ref: TableRef) -> str:
    """The table in DDL that takes no parameters: ``delta.`path``` or a quoted name."""
    if ref.is_path:
        return "delta." + _quote_identifier(ref.location)
    return ".".join(_quote_identifier(p.strip("`")) for p in ref.text.split("."))


def _column_ddl(f: T.StructField) -> str:
    """One column of a CREATE TABLE: quoted name, type, NOT NULL, comment."""
    out = f"{_quote_identifier(f.name)} {_type_ddl(f.dataType)}"
    if not f.nullable:
        out += " NOT NULL"
    if f.metadata.get("comment"):
        out += f" COMMENT {_sql_string(f.metadata['comment'])}"
    return out


def _type_ddl(data_type: T.DataType) -> str:
    if isinstance(data_type, T.StructType):
        return "STRUCT<" + ", ".join(
            f"{_quote_identifier(f.name)}: {_type_ddl(f.dataType)}"
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
    statement = (f"MERGE INTO {_sql_target(ref)} AS t USING {_quote_identifier(view)} AS s "
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


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_identifier(part: str) -> str:
    return "`" + part.replace("`", "``") + "`"


def table_properties(spark: SparkSession, ref: TableRef) -> dict[str, str]:
    detail = spark.sql(f"DESCRIBE DETAIL {_sql_target(ref)}").collect()[0]
    return dict(detail["properties"] or {})


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
        clauses.append(f"t.{_quote_identifier(column)} = :filter{i}")
        args[f"filter{i}"] = value
    if partition_values is not None:
        column, values = partition_values
        text, part_args = in_values(f"t.{_quote_identifier(column)}", list(values), "part")
        clauses.append(text)
        args.update(part_args)
    clauses += [f"t.{_quote_identifier(k)} = s.{_quote_identifier(k)}" for k in spec.keys]
    metrics = merge_from(rows.select(*spec.column_names), ref, " AND ".join(clauses),
                         "WHEN NOT MATCHED THEN INSERT *", args, what=f"writing {ref}")
    return {"numTargetRowsInserted": int(metrics.get("num_inserted_rows", 0)), **metrics}


def _conflict_types() -> tuple[type[BaseException], ...]:
    """delta-spark's typed exceptions for optimistic-concurrency conflicts (importing
    ``delta.exceptions.captured`` makes py4j raise them instead of a generic error); none
    where delta-spark's Python package is not installed (Databricks serverless)."""
    try:
        importlib.import_module("delta.exceptions.captured")  # installs the conversion
    except ImportError:
        return ()
    from delta.exceptions import (
        ConcurrentAppendException,
        ConcurrentDeleteDeleteException,
        ConcurrentDeleteReadException,
        ConcurrentTransactionException,
        ConcurrentWriteException,
        DeltaConcurrentModificationException,
        MetadataChangedException,
        ProtocolChangedException,
    )

    return (ConcurrentAppendException, ConcurrentDeleteDeleteException,
            ConcurrentDeleteReadException, ConcurrentTransactionException,
            ConcurrentWriteException, DeltaConcurrentModificationException,
            MetadataChangedException, ProtocolChangedException)


def retry_on_conflict(action: Callable[[], R], what: str, attempts: int = 8) -> R:
    """Run ``action``, retrying Delta's optimistic-concurrency conflicts with back-off."""
    _conflict_types()  # before the action: py4j then raises delta-spark's typed exceptions
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:
            if not is_write_conflict(exc) or attempt + 1 == attempts:
                raise
            time.sleep(0.5 * 2 ** attempt * (1 + random.random()))
    raise AssertionError("unreachable")


#: Delta's error classes for optimistic-concurrency conflicts (what a Spark Connect client
#: sees; classic sessions also get delta-spark's typed exceptions).
CONFLICT_ERROR_CLASSES = ("DELTA_CONCURRENT_APPEND", "DELTA_CONCURRENT_DELETE_DELETE",
                          "DELTA_CONCURRENT_DELETE_READ", "DELTA_CONCURRENT_TRANSACTION",
                          "DELTA_CONCURRENT_WRITE", "DELTA_METADATA_CHANGED",
                          "DELTA_PROTOCOL_CHANGED")


def is_write_conflict(exc: BaseException) -> bool:
    if isinstance(exc, _conflict_types()):
        return True
    condition = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    try:
        name = condition() if condition is not None else None
    except Exception:  # noqa: BLE001 - an exception without an error class
        name = None
    return bool(name) and name.startswith(CONFLICT_ERROR_CLASSES)


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
        column = F.col(_quote_identifier(f.name))
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
