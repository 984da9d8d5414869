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

import time
from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from longattn_spark.config import IngestConfig, LongAttnConfig, default_rejects_table
from longattn_spark.errors import ConfigError
from longattn_spark.ingest.sources import count_input_rows, read_documents
from longattn_spark.console import step
from longattn_spark.ingest.summary import IngestSummary, check_accounted, print_summary
from longattn_spark.ingest.udf import (
    ALREADY_INGESTED,
    CHANGED_TEXT,
    OUT_SCHEMA,
    TOO_SHORT,
    WINDOWED,
    window_batches,
)
from longattn_spark.session import arrow_batch_rows, default_parallelism, get_spark
from longattn_spark.tables.refs import TableRef
from longattn_spark.tables.schemas import REJECTS, WINDOWS
from longattn_spark.tables.staging import materialize
from longattn_spark.tables.writes import ensure_table, in_values, merge_from, merge_new_rows
from longattn_spark.tokenizer import TokenizerSpec, load_tokenizer_spec


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
    with step("count input") as timing:
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
    with step("read, tokenize, window") as timing:
        out, release = materialize(spark, marked.mapInArrow(udf, OUT_SCHEMA), windows_ref)
        summary = _summarize(out)
    summary.step_seconds.update(timing)
    try:
        categories = _categories(out)
        rejects = _reject_rows(out, spec, cfg.window_size)
        with step("write rejects") as timing:
            if summary.rejected_total or summary.too_short:
                written = merge_new_rows(spark, rejects_ref, REJECTS, rejects,
                                         partition_values=("category", categories))
                summary.rejects_inserted = written["numTargetRowsInserted"]
        windows = (out.filter(F.col("kind") == "window")
                   .withColumn("tokenizer", F.lit(spec.identity))
                   .withColumn("ingested_at", F.current_timestamp()))
        with step("write windows") as timing2:
            if summary.windows:
                written = merge_new_rows(spark, windows_ref, WINDOWS, windows,
                                         partition_values=("category", categories))
                summary.windows_inserted = written["numTargetRowsInserted"]
        summary.step_seconds.update({**timing, **timing2})
        if cfg.on_changed == "replace":
            with step("delete replaced versions") as timing3:
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
    in_categories, args = in_values("t.category", [c for c in categories if c is not None],
                                    "category")
    args.update(tokenizer=spec.identity, window_size=window_size, too_short=TOO_SHORT)
    same_document = ("t.category = s.category AND t.doc_id = s.doc_id AND t.tokenizer = "
                     ":tokenizer AND NOT (t.doc_sha256 <=> s.doc_sha256) AND " + in_categories)
    deleted = 0
    for ref, extra in ((windows_ref, "t.n_tokens = :window_size"),
                       (rejects_ref, "t.reason = :too_short AND t.window_size = :window_size")):
        metrics = merge_from(current, ref, f"{same_document} AND {extra}",
                             "WHEN MATCHED THEN DELETE", args,
                             what=f"deleting replaced versions from {ref}")
        deleted += int(metrics.get("num_deleted_rows", 0))
    return deleted


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
