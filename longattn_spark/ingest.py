"""The ingest job: raw documents -> tokens -> Algorithm 1 windows -> Delta tables.

Flow per commit chunk (a hash bucket of the documents):

1. ``sources.read_documents``: one row per input row, with a reason when it is no document;
2. duplicate ids ranked (``row_number`` over the id; the groups are one id each, small);
3. documents already in the tables for this tokenizer and window size are marked, not redone;
4. ``mapInArrow`` on the executors: tokenize in Arrow batches, cut windows, emit one status row
   per document and one row per window;
5. insert-only MERGE of windows and rejects on deterministic ids; a re-run adds nothing.

Every document read ends as windows, a ``too_short`` row or a reject row with its reason.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longattn_spark.config import IngestConfig, LongAttnConfig, default_rejects_table
from longattn_spark.errors import AccountingError, ConfigError
from longattn_spark.session import arrow_batch_rows, default_parallelism, get_spark
from longattn_spark.sources import count_input_rows, read_documents
from longattn_spark.tables import (
    REJECTS,
    WINDOWS,
    TableRef,
    ensure_table,
    materialize,
    merge_new_rows,
    retry_on_conflict,
)
from longattn_spark.tokenize import (
    TokenizerSpec,
    load_tokenizer_spec,
    tokenize_documents,
)
from longattn_spark.windowing import sliding_windows

ALREADY_INGESTED = "already_ingested"
WINDOWED = "windowed"
TOO_SHORT = "too_short"
CHANGED_TEXT = "changed_text"

OUT_SCHEMA = T.StructType([
    T.StructField("kind", T.StringType(), False),          # "doc" | "window"
    T.StructField("doc_id", T.StringType()),
    T.StructField("category", T.StringType()),
    T.StructField("source", T.StringType()),
    T.StructField("content_key", T.StringType()),
    T.StructField("doc_sha256", T.StringType()),
    T.StructField("occurrence", T.IntegerType()),
    T.StructField("status", T.StringType()),               # doc rows: windowed | reason
    T.StructField("detail", T.StringType()),
    T.StructField("doc_tokens", T.LongType()),
    T.StructField("window_id", T.StringType()),
    T.StructField("window_index", T.IntegerType()),
    T.StructField("token_start", T.IntegerType()),
    T.StructField("n_tokens", T.IntegerType()),
    T.StructField("input_ids", T.ArrayType(T.IntegerType(), False)),
    T.StructField("char_start", T.LongType()),
    T.StructField("char_end", T.LongType()),
])
_OUT_ARROW = pa.schema([
    ("kind", pa.string()), ("doc_id", pa.string()), ("category", pa.string()),
    ("source", pa.string()), ("content_key", pa.string()), ("doc_sha256", pa.string()),
    ("occurrence", pa.int32()),
    ("status", pa.string()), ("detail", pa.string()), ("doc_tokens", pa.int64()),
    ("window_id", pa.string()), ("window_index", pa.int32()), ("token_start", pa.int32()),
    ("n_tokens", pa.int32()), ("input_ids", pa.list_(pa.field("element", pa.int32(), False))),
    ("char_start", pa.int64()), ("char_end", pa.int64()),
])
_PASS_THROUGH = ("doc_id", "category", "source", "content_key", "doc_sha256", "occurrence")


@dataclass
class IngestSummary:
    """What one ingest run did.

    ``documents_read`` is counted from the source itself (lines, files, rows), independently
    of the per-document status rows that the tokenizing UDF emits (``status_rows``); the run is
    ``accounted`` only when the two agree and every status row is windowed, too short,
    rejected or already ingested."""

    documents_read: int = 0
    status_rows: int = 0
    windowed: int = 0
    too_short: int = 0
    already_ingested: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    tokens: int = 0
    window_tokens: int = 0
    windows_inserted: int = 0
    rejects_inserted: int = 0
    replaced: int = 0
    stale_rows_deleted: int = 0
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def missing(self) -> int:
        """Documents read from the source that have no status row (lost on the way)."""
        return self.documents_read - self.status_rows

    @property
    def accounted(self) -> bool:
        return (self.missing == 0 and self.windowed + self.too_short + self.rejected_total
                + self.already_ingested == self.status_rows)

    def add(self, other: IngestSummary) -> None:
        for name in ("status_rows", "windowed", "too_short", "already_ingested", "windows",
                     "tokens", "window_tokens", "windows_inserted", "rejects_inserted",
                     "replaced", "stale_rows_deleted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rejected = dict(Counter(self.rejected) + Counter(other.rejected))
        self.step_seconds = dict(Counter(self.step_seconds) + Counter(other.step_seconds))


def window_id(category: str, doc_id: str, doc_sha256: str, tokenizer: str, window_size: int,
              token_start: int) -> str:
    """Deterministic window id: the same document (category, id and text), tokenizer and
    window size always give the same ids; another corpus reusing the ids does not."""
    key = f"{category}\x1f{doc_id}\x1f{doc_sha256}\x1f{tokenizer}\x1f{window_size}\x1f{token_start}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def validate_ingest_config(cfg: IngestConfig) -> None:
    if not cfg.input:
        raise ConfigError("--input is required")
    if cfg.window_size < 8:
        raise ConfigError(f"--window-size must be at least 8, got {cfg.window_size}")
    for name in ("max_doc_bytes", "tokenize_chunk_chars", "batch_docs", "commit_chunks"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got "
                              f"{getattr(cfg, name)}")
    if cfg.partitions < 0:
        raise ConfigError(f"--partitions must be >= 0, got {cfg.partitions}")
    if cfg.on_changed not in ("reject", "replace"):
        raise ConfigError(f"--on-changed {cfg.on_changed!r}: use reject or replace")


def run_ingest_job(cfg: LongAttnConfig) -> IngestSummary:
    """``longattn-spark ingest``: validate everything cheap first, then run on Spark."""
    validate_ingest_config(cfg.ingest)
    spark = get_spark(cfg.spark, app_name="longattn-spark ingest")
    spec = load_tokenizer_spec(cfg.ingest.tokenizer, spark)
    summary = ingest(spark, cfg.ingest, spec)
    print_summary(summary, cfg.ingest)
    check_accounted(summary)
    return summary


def check_accounted(summary: IngestSummary) -> None:
    """Fail the job (non-zero exit) when a document read is in no table."""
    if summary.missing:
        raise AccountingError(
            f"{summary.missing:,} of {summary.documents_read:,} documents read from the input "
            f"have no windows, too_short or rejects row ({summary.status_rows:,} accounted "
            "for); re-run the job to retry them")
    if not summary.accounted:
        raise AccountingError("the per-document statuses do not add up to the documents read")


def ingest(spark: SparkSession, cfg: IngestConfig, spec: TokenizerSpec,
           udf_wrapper: Callable | None = None) -> IngestSummary:
    """Run the ingest of ``cfg.input`` into the windows and rejects tables.

    ``udf_wrapper`` wraps the tokenizing ``mapInArrow`` function (tests use it to inject
    faults on the executors)."""
    validate_ingest_config(cfg)
    windows_ref = TableRef(cfg.table)
    rejects_ref = TableRef(cfg.rejects_table or default_rejects_table(cfg.table))
    started = time.perf_counter()
    # The input first: a missing or unreachable --input fails here, before any table is made.
    docs = read_documents(spark, cfg).withColumn(
        "doc_sha256", F.when(F.col("text").isNotNull(), F.sha2(F.col("text"), 256)))
    ensure_table(spark, windows_ref, WINDOWS)
    ensure_table(spark, rejects_ref, REJECTS)
    partitions = cfg.partitions or default_parallelism(spark)
    summary = IngestSummary()
    with _step("count input") as timing:
        summary.documents_read = count_input_rows(spark, cfg)
    summary.step_seconds.update(timing)
    with arrow_batch_rows(spark, cfg.batch_docs):
        for chunk in range(cfg.commit_chunks):
            part = docs
            if cfg.commit_chunks > 1:
                part = docs.filter(F.pmod(F.xxhash64(_group_key()), F.lit(cfg.commit_chunks))
                                   == chunk)
            summary.add(_ingest_chunk(spark, part, cfg, spec, windows_ref, rejects_ref,
                                      partitions, udf_wrapper))
    summary.seconds = time.perf_counter() - started
    return summary


def _group_key():
    """Documents are grouped by (category, id): ids are unique within a category, and another
    corpus may reuse them; rows without an id or category by their file and content."""
    return F.coalesce(F.concat(F.lit("id:"), F.col("category"), F.lit("\u001f"),
                               F.col("doc_id")),
                      F.concat(F.lit("row:"), F.col("source"), F.lit(":"),
                               F.col("content_key")))


def _ingest_chunk(spark: SparkSession, docs: DataFrame, cfg: IngestConfig, spec: TokenizerSpec,
                  windows_ref: TableRef, rejects_ref: TableRef, partitions: int,
                  udf_wrapper: Callable | None) -> IngestSummary:
    ranked = _rank_duplicates(docs.withColumn("group_key", _group_key()), partitions)
    marked = _mark_already_ingested(spark, ranked, spec, cfg, windows_ref, rejects_ref)
    udf = window_batches(spec, cfg.window_size, cfg.tokenize_chunk_chars)
    if udf_wrapper is not None:
        udf = udf_wrapper(udf)
    # Materialized, not cached: the plan reads the windows and rejects tables (to skip
    # documents already done), and Spark drops cached data that depends on a table when that
    # table is written. Cut from its lineage, the result is computed once and cannot change
    # between the writes below; on a cluster it survives the loss of an executor.
    with _step("read, tokenize, window") as timing:
        out, release = materialize(spark, marked.mapInArrow(udf, OUT_SCHEMA), windows_ref)
        summary = _summarize(out)
    summary.step_seconds.update(timing)
    try:
        categories = _categories(out)
        rejects = _reject_rows(out, spec, cfg.window_size)
        with _step("write rejects") as timing:
            if summary.rejected_total or summary.too_short:
                written = merge_new_rows(spark, rejects_ref, REJECTS, rejects,
                                         partition_values=("category", categories))
                summary.rejects_inserted = written["numTargetRowsInserted"]
        windows = (out.filter(F.col("kind") == "window")
                   .withColumn("tokenizer", F.lit(spec.identity))
                   .withColumn("ingested_at", F.current_timestamp()))
        with _step("write windows") as timing2:
            if summary.windows:
                written = merge_new_rows(spark, windows_ref, WINDOWS, windows,
                                         partition_values=("category", categories))
                summary.windows_inserted = written["numTargetRowsInserted"]
        summary.step_seconds.update({**timing, **timing2})
        if cfg.on_changed == "replace":
            with _step("delete replaced versions") as timing3:
                summary.stale_rows_deleted = _delete_stale_versions(
                    spark, out, spec, cfg.window_size, windows_ref, rejects_ref, categories)
            summary.step_seconds.update(timing3)
    finally:
        release()
    return summary


def _categories(out: DataFrame) -> list[str | None]:
    """The categories a chunk writes: its MERGEs touch only those partitions, so ingests of
    other categories into the same tables run at the same time without conflicts."""
    return [r["category"] for r in out.select("category").distinct().collect()]


def _delete_stale_versions(spark: SparkSession, out: DataFrame, spec: TokenizerSpec,
                           window_size: int, windows_ref: TableRef, rejects_ref: TableRef,
                           categories: list[str | None]) -> int:
    """``--on-changed replace``: remove the windows and too_short rows of earlier texts of
    the documents this chunk holds (after the new version is committed, so a crash in
    between leaves the old version and the new one, and a re-run finishes the delete)."""
    current = (out.filter((F.col("kind") == "doc")
                          & F.col("status").isin(WINDOWED, TOO_SHORT, ALREADY_INGESTED))
               .select("category", "doc_id", "doc_sha256").distinct())
    deleted = 0
    for ref, extra in ((windows_ref, F.col("t.n_tokens") == F.lit(window_size)),
                       (rejects_ref, (F.col("t.reason") == F.lit(TOO_SHORT))
                        & (F.col("t.window_size") == F.lit(window_size)))):
        condition = ((F.col("t.category") == F.col("s.category"))
                     & (F.col("t.doc_id") == F.col("s.doc_id"))
                     & (F.col("t.tokenizer") == F.lit(spec.identity)) & extra
                     & ~F.col("t.doc_sha256").eqNullSafe(F.col("s.doc_sha256"))
                     & F.col("t.category").isin([c for c in categories if c is not None]))
        metrics = retry_on_conflict(
            lambda ref=ref, condition=condition: ref.delta_table(spark).alias("t")
            .merge(current.alias("s"), condition).whenMatchedDelete().execute()
            .collect()[0].asDict(), what=f"deleting replaced versions from {ref}")
        deleted += int(metrics.get("num_deleted_rows", 0))
    return deleted


@contextmanager
def _step(name: str) -> Iterator[dict[str, float]]:
    """Times one step of the job; the dict is filled when the block ends."""
    timing: dict[str, float] = {}
    started = time.perf_counter()
    try:
        yield timing
    finally:
        timing[name] = time.perf_counter() - started


def _rank_duplicates(docs: DataFrame, partitions: int) -> DataFrame:
    """Number the rows of each group (one document id). The document kept is a usable row
    (no reason), the longest text first, then by (source, content) so that the choice does
    not depend on how the input was split; the others are ``duplicate_id`` rejects naming
    where the kept one is."""
    by_group = Window.partitionBy("group_key").orderBy(
        F.col("reason").isNotNull(), F.length("text").desc_nulls_last(), "source",
        "content_key")
    ranked = (docs.repartition(partitions, "group_key")
              .withColumn("occurrence", F.row_number().over(by_group).cast("int"))
              .withColumn("first_source", F.first("source").over(by_group)))
    is_duplicate = (F.col("occurrence") > 1) & F.col("doc_id").isNotNull() & \
        F.col("reason").isNull()
    return (ranked
            .withColumn("detail", F.when(is_duplicate, F.concat(
                F.lit("doc_id also in "), F.col("first_source"),
                F.lit(" (occurrence "), F.col("occurrence").cast("string"), F.lit(")")))
                .otherwise(F.col("detail")))
            .withColumn("reason", F.when(is_duplicate, F.lit("duplicate_id"))
                        .otherwise(F.col("reason")))
            .withColumn("text", F.when(F.col("reason").isNull(), F.col("text")))
            .drop("first_source"))


def _mark_already_ingested(spark: SparkSession, docs: DataFrame, spec: TokenizerSpec,
                           cfg: IngestConfig, windows_ref: TableRef, rejects_ref: TableRef
                           ) -> DataFrame:
    """Compare each document with what the tables already hold for this tokenizer and window
    size (windows, or a too_short row), by (category, doc_id):

    - the same text (``doc_sha256``) is there: ``already_ingested``, not redone (a killed job
      resumes here);
    - another text is there: ``--on-changed reject`` (default) makes it a ``changed_text``
      reject naming both hashes; ``replace`` ingests it (the old version is deleted after).
    """
    def done(frame: DataFrame) -> DataFrame:
        return frame.select("category", "doc_id", "doc_sha256")

    done_windows = done(windows_ref.read(spark)
                        .filter((F.col("tokenizer") == spec.identity)
                                & (F.col("n_tokens") == cfg.window_size)))
    done_short = done(rejects_ref.read(spark)
                      .filter((F.col("tokenizer") == spec.identity)
                              & (F.col("window_size") == cfg.window_size)
                              & (F.col("reason") == TOO_SHORT)))
    known = (done_windows.unionByName(done_short)
             .groupBy("category", "doc_id")
             .agg(F.array_sort(F.collect_set("doc_sha256")).alias("_known")))
    joined = docs.join(known, ["category", "doc_id"], "left")
    usable = F.col("reason").isNull()
    has_known = F.coalesce(F.size("_known"), F.lit(0)) > 0
    same = usable & has_known & F.array_contains(F.col("_known"), F.col("doc_sha256"))
    changed = usable & has_known & ~same & F.lit(cfg.on_changed == "reject")
    changed_detail = F.concat(
        F.lit("text differs from the version already ingested (sha256 "),
        F.substring(F.col("doc_sha256"), 1, 12), F.lit(" now, "),
        F.substring(F.array_join(F.col("_known"), ","), 1, 12),
        F.lit(" before); pass --on-changed replace to replace it"))
    return (joined
            .withColumn("detail", F.when(changed, changed_detail).otherwise(F.col("detail")))
            .withColumn("reason", F.when(same, F.lit(ALREADY_INGESTED))
                        .when(changed, F.lit(CHANGED_TEXT)).otherwise(F.col("reason")))
            .withColumn("text", F.when(F.col("reason").isNull(), F.col("text")))
            .select("doc_id", "text", "category", "source", "content_key", "doc_sha256",
                    "occurrence", "reason", "detail"))


def window_batches(spec: TokenizerSpec, window_size: int, chunk_chars: int):
    """The mapInArrow function: input documents -> status rows and window rows."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from windows_of_batch(batch, spec, window_size, chunk_chars)

    return run


def windows_of_batch(batch: pa.RecordBatch, spec: TokenizerSpec, window_size: int,
                     chunk_chars: int, max_tokens_per_output: int = 8_000_000
                     ) -> Iterator[pa.RecordBatch]:
    """Tokenize the batch's documents and cut their windows (pure; no Spark needed)."""
    columns = {name: batch.column(name).to_pylist() for name in
               (*_PASS_THROUGH, "text", "reason", "detail")}
    builder = _OutputBuilder(max_tokens_per_output)
    to_tokenize = [i for i, reason in enumerate(columns["reason"]) if reason is None]
    for i, reason in enumerate(columns["reason"]):
        if reason is not None:
            builder.add_doc(_row(columns, i), reason, columns["detail"][i], None)
    texts = [columns["text"][i] for i in to_tokenize]
    for i, tokens in zip(to_tokenize, _tokenize_or_fail(spec, texts, chunk_chars)):
        row = _row(columns, i)
        if isinstance(tokens, Exception):
            builder.add_doc(row, "tokenizer_error", f"{type(tokens).__name__}: {tokens}", None)
            continue
        spans = sliding_windows(tokens.n_tokens, window_size)
        if not spans:
            builder.add_doc(row, TOO_SHORT, _too_short_detail(tokens.n_tokens, window_size),
                            tokens.n_tokens)
            continue
        builder.add_doc(row, WINDOWED, f"{len(spans)} windows", tokens.n_tokens)
        for index, (start, end) in enumerate(spans):
            char_start, char_end = tokens.char_span(start, end)
            wid = window_id(row["category"], row["doc_id"], row["doc_sha256"], spec.identity,
                            window_size, start)
            builder.add_window(row, wid, index, start, tokens.ids[start:end], char_start,
                               char_end)
        yield from builder.flush_if_full()
    yield from builder.flush()


def _row(columns: dict[str, list], i: int) -> dict:
    return {name: columns[name][i] for name in _PASS_THROUGH}


def _too_short_detail(n_tokens: int, window_size: int) -> str:
    if n_tokens == window_size:
        return (f"exactly {n_tokens} tokens = window size; Algorithm 1 as published gives no "
                "window for a span of exactly W")
    return f"{n_tokens} tokens < window size {window_size}"


def _tokenize_or_fail(spec: TokenizerSpec, texts: list[str], chunk_chars: int):
    """DocTokens per text; a text the tokenizer fails on becomes its exception (the others
    are still tokenized)."""
    try:
        batch = list(tokenize_documents(spec, texts, chunk_chars=chunk_chars))
    except Exception:  # noqa: BLE001 - any tokenizer failure: isolate the document below
        batch = None
    if batch is not None:
        yield from batch
        return
    for text in texts:
        try:
            yield next(tokenize_documents(spec, [text], chunk_chars=chunk_chars))
        except Exception as exc:  # noqa: BLE001 - becomes this document's rejects row
            yield exc


class _OutputBuilder:
    """Accumulates output rows column-wise; window ids stay numpy until the Arrow batch."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._reset()

    def _reset(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in _OUT_ARROW.names if
                                      name != "input_ids"}
        self.id_parts: list[np.ndarray] = []
        self.lengths: list[int] = []
        self.tokens = 0

    def add_doc(self, row: dict, status: str, detail: str | None, doc_tokens: int | None
                ) -> None:
        self._append(kind="doc", **row, status=status, detail=detail, doc_tokens=doc_tokens)
        self.lengths.append(-1)

    def add_window(self, row: dict, wid: str, index: int, start: int, ids: np.ndarray,
                   char_start: int, char_end: int) -> None:
        self._append(kind="window", **row, window_id=wid, window_index=index,
                     token_start=start, n_tokens=int(ids.shape[0]), char_start=char_start,
                     char_end=char_end)
        self.id_parts.append(ids)
        self.lengths.append(int(ids.shape[0]))
        self.tokens += int(ids.shape[0])

    def _append(self, **values) -> None:
        for name, column in self.cols.items():
            column.append(values.get(name))

    def flush_if_full(self) -> Iterator[pa.RecordBatch]:
        if self.tokens >= self.max_tokens:
            yield from self.flush()

    def flush(self) -> Iterator[pa.RecordBatch]:
        if not self.lengths:
            return
        lengths = np.asarray(self.lengths, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(np.maximum(lengths, 0), out=offsets[1:])
        values = (np.concatenate(self.id_parts) if self.id_parts
                  else np.zeros(0, dtype=np.int32))
        mask = pa.array(lengths < 0)
        input_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()),
                                             mask=mask, type=_OUT_ARROW.field("input_ids").type)
        arrays = [input_ids if name == "input_ids" else
                  pa.array(self.cols[name], type=_OUT_ARROW.field(name).type)
                  for name in _OUT_ARROW.names]
        self._reset()
        yield pa.RecordBatch.from_arrays(arrays, schema=_OUT_ARROW)


def _reject_rows(out: DataFrame, spec: TokenizerSpec, window_size: int) -> DataFrame:
    rejected = out.filter((F.col("kind") == "doc")
                          & ~F.col("status").isin(WINDOWED, ALREADY_INGESTED))
    reject_id = F.sha2(F.concat_ws(
        "\u001f", F.col("status"), F.coalesce(F.col("doc_id"), F.lit("")), F.col("source"),
        F.col("content_key"), F.col("occurrence").cast("string"), F.lit(spec.identity),
        F.lit(str(window_size))), 256).substr(1, 32)
    return rejected.select(
        reject_id.alias("reject_id"), "doc_id", "category", F.col("status").alias("reason"),
        "detail", "source", "doc_sha256", F.lit(spec.identity).alias("tokenizer"),
        F.lit(window_size).alias("window_size"),
        F.current_timestamp().alias("ingested_at"))


def _summarize(out: DataFrame) -> IngestSummary:
    rows = (out.groupBy("kind", "status")
            .agg(F.count(F.lit(1)).alias("rows"),
                 F.sum("doc_tokens").alias("doc_tokens"),
                 F.sum("n_tokens").alias("window_tokens"))
            .collect())
    summary = IngestSummary()
    for row in rows:
        if row["kind"] == "window":
            summary.windows += row["rows"]
            summary.window_tokens += row["window_tokens"] or 0
            continue
        summary.status_rows += row["rows"]
        summary.tokens += row["doc_tokens"] or 0
        status = row["status"]
        if status == WINDOWED:
            summary.windowed += row["rows"]
        elif status == TOO_SHORT:
            summary.too_short += row["rows"]
        elif status == ALREADY_INGESTED:
            summary.already_ingested += row["rows"]
        else:
            summary.rejected[status] = summary.rejected.get(status, 0) + row["rows"]
    return summary


def print_summary(summary: IngestSummary, cfg: IngestConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ingest {cfg.input} -> {cfg.table}", show_header=False)
    seconds = max(summary.seconds, 1e-9)
    changed = summary.rejected.get(CHANGED_TEXT, 0)
    lines = [
        ("documents read (from the input)", f"{summary.documents_read:,}"),
        ("windowed", f"{summary.windowed:,}"),
        ("too short", f"{summary.too_short:,}"),
        ("already ingested (skipped)", f"{summary.already_ingested:,}"),
        ("rejected", f"{summary.rejected_total:,}"),
        *[(f"  {reason}", f"{n:,}") for reason, n in sorted(summary.rejected.items())],
        ("changed texts", f"{changed:,} rejected" if cfg.on_changed == "reject" else
         f"replaced ({summary.stale_rows_deleted:,} old rows deleted)"),
        ("windows", f"{summary.windows:,} ({summary.windows_inserted:,} new)"),
        ("tokens (documents tokenized)", f"{summary.tokens:,}"),
        ("tokens in windows", f"{summary.window_tokens:,}"),
        ("seconds", f"{summary.seconds:.1f}"),
        *[(f"  {step}", f"{seconds:.1f}") for step, seconds in summary.step_seconds.items()],
        ("documents/s", f"{summary.documents_read / seconds:,.1f}"),
        ("tokens/s", f"{summary.tokens / seconds:,.0f}"),
        ("accounted", "yes: windowed + too short + rejected + skipped = documents read"
         if summary.accounted else
         f"NO: {summary.missing:,} documents read are in no table"),
    ]
    for name, value in lines:
        table.add_row(name, value)
    Console().print(table)
