"""The score job: windows table -> per-window scores -> scores table.

The method (``--method``: ``longattn``, the default, ``prolong``, ... or a plugin) comes from
the one registry, ``longattn_spark.scorers``, and is used only through its interface
(``scorers.base.ScorerMethod``): the driver checks the options, the model and the windows
(``longattn_spark.score.plan`` for what every method shares) and the method plans; then this
module runs the common streaming / MERGE / rejects machinery with the one mapInArrow function
(``scorers.runtime.score_batches``) and folds what each micro-batch did into a
``ScoreSummary`` (``longattn_spark.score.summary``).

- On a classic session the windows table is read as a Structured Streaming source with
  ``availableNow``: each micro-batch is scored and committed (MERGE) before the next, and the
  stream's checkpoint (per scores table, scorer and windows table) records what is done, so a
  killed job resumes after the last committed micro-batch. Each micro-batch is also
  anti-joined with the scores already written for this scorer, so a lost checkpoint or a
  retried batch never duplicates a row and only windows without a score for this
  ``scorer_id`` are scored.
- Over Spark Connect (Databricks standard access mode, serverless) everything goes through
  the DataFrame API and SQL: no JVM, no DeltaTable API, no SparkContext. The client cuts the
  windows table (at its current version) into the same micro-batches of
  ``--files-per-batch`` data files and commits them in turn; the resume state is the tables
  themselves (the anti-join above), the model is read on an executor
  (``score.model_files``), and ``--checkpoint-location`` (required for table names) holds
  the staged rows of a micro-batch on a cluster.
- Scoring is a ``mapInArrow`` UDF. The scorer is cached per Python worker, keyed by its
  settings (the pattern of ``pyspark.ml.functions.predict_batch_udf``): a model loads once per
  executor process, not per task or batch. Token ids go from Arrow to an ``[N, L]`` array by
  numpy indexing, without a per-row Python loop. The device is the task's GPU
  (``TaskContext.resources()["gpu"]``), else CUDA if present, else the CPU; a task given a GPU
  that finds no usable CUDA fails (it never falls back to the CPU with a dtype chosen for GPUs).
- The model is read from shared storage (``longattn_spark.score.model_files``): the driver
  reads config.json, the index and the safetensors headers and hashes the tensor bytes the
  method reads as they stream past (the scorer_id), copying nothing; executors fetch only the
  needed files into a per-executor cache, or read a local / mounted folder in place.
- Before any task: the model folder's tokenizer (when it has one) must be the windows'
  tokenizer (``--allow-tokenizer-mismatch`` overrides); without one, the windows' tokenizer is
  recorded with the scorer.
- Each row the UDF returns says what the executor ran (device type, kernel, dtype, and a note
  when the method fell back, e.g. the Triton kernel to torch). The driver counts it per
  micro-batch, prints fallbacks, shows both in the summary, and records every combination
  seen in the scorer's table property ``longattn.scorer.<scorer_id>`` (``executors``) before
  the commit that holds its rows.
- The scores table is partitioned by ``scorer_id`` and each MERGE is restricted to its own
  partition, so runs with different models can write one table at the same time.
- The stream checkpoint lives beside a path scores table, or under ``--checkpoint-location``
  (required when the scores table is a metastore / Unity Catalog name).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longattn_spark import paths
from longattn_spark.config import LongAttnConfig, ScoreConfig, default_rejects_table
from longattn_spark.errors import ConfigError, TableError
from longattn_spark.score.model_files import ModelLocation
from longattn_spark.score.plan import (
    check_tokenizer,
    unscored_tokenizers,
    validate_score_config,
    windows_facts,
)
from longattn_spark.score.summary import Progress, ScoreSummary, count_runs, print_summary
from longattn_spark.scorers.base import MethodPlan, PlanContext, ScorerMethod
from longattn_spark.scorers.positions import extrapolation_note, trained_positions
from longattn_spark.scorers.runtime import RUN_FIELDS, ArrowFn, score_batches, udf_schema
from longattn_spark.session import (
    arrow_batch_rows,
    default_parallelism,
    get_spark,
    is_local_master,
    on_cluster,
)
from longattn_spark.tables import (
    SCORE_REJECTS,
    SCORES,
    TableRef,
    ensure_table,
    materialize,
    merge_new_rows,
    set_properties,
    table_properties,
)


def run_score_job(cfg: LongAttnConfig) -> ScoreSummary:
    """``longattn-spark score``."""
    validate_score_config(cfg.score)
    spark = get_spark(cfg.spark, app_name="longattn-spark score")
    summary = score_windows(spark, cfg.score)
    print_summary(summary, cfg.score)
    return summary


def score_windows(spark: SparkSession, cfg: ScoreConfig, progress: bool = True,
                  udf_wrapper: Callable[[ArrowFn], ArrowFn] | None = None) -> ScoreSummary:
    """Score every window of ``cfg.windows`` that has no score for this scorer yet.

    ``udf_wrapper`` (tests): applied to the mapInArrow function of every micro-batch, in
    micro-batch order, e.g. to make a task fail."""
    method = validate_score_config(cfg)
    windows_ref = TableRef(cfg.windows)
    scores_ref = TableRef(cfg.table)
    rejects_ref = TableRef(cfg.rejects_table or default_rejects_table(cfg.table))
    # The model first: its errors (no folder, no config.json, bad headers, not a causal LM,
    # pickled weights, --layer outside it) come before any Spark job, and nothing but small
    # files and a streamed hash of the weight bytes the method reads is read here.
    location = method.locate(spark, cfg)
    model = method.inspect(spark, cfg, location)
    if not windows_ref.exists(spark):
        raise TableError(f"--windows {cfg.windows}: no such table (run ingest first)")
    sizes, window_tokenizers = windows_facts(spark, windows_ref, cfg)
    summary = ScoreSummary(seq_len=sizes[0] if len(sizes) == 1 else 0)

    def checked_tokenizer(scorer_id: str) -> dict:
        record = check_tokenizer(spark, cfg, window_tokenizers, summary, lambda: (
            unscored_tokenizers(spark, windows_ref, scores_ref, rejects_ref, scorer_id, cfg)))
        context.tokenizer_check = summary.tokenizer_check
        return record

    context = PlanContext(spark=spark, cfg=cfg, location=location, model=model, sizes=sizes,
                          window_tokenizers=window_tokenizers,
                          check_tokenizer=checked_tokenizer)
    plan = method.plan(context)
    scorer_id, seq_len, min_distance = plan.scorer_id, plan.seq_len, plan.min_distance
    summary.scorer_id, summary.tokenizer_check = scorer_id, context.tokenizer_check
    summary.seq_len = seq_len or summary.seq_len
    summary.min_distance = min_distance or 0
    out_schema = udf_schema(method.out_fields)
    ensure_table(spark, scores_ref, SCORES)
    ensure_table(spark, rejects_ref, SCORE_REJECTS)
    record = _scorer_record(spark, scores_ref, method, plan, cfg, location)
    summary.position_note = record.get("positions_note") or ""
    if summary.position_note:
        print(f"warning: {summary.position_note}", flush=True)
    property_key = f"longattn.scorer.{scorer_id}"
    set_properties(spark, scores_ref, {property_key: json.dumps(record, sort_keys=True)})
    executors_seen = {_run_key(e) for e in record["executors"]}

    done_before = _scored_count(spark, scores_ref, scorer_id)
    profile = gpu_resource_profile(spark, cfg.task_gpus)
    started = time.perf_counter()
    reporter = Progress(progress and not on_cluster())

    def commit(batch: DataFrame, batch_id: int) -> None:
        udf = score_batches(cfg.method, plan.settings, cfg.batch_size)
        if udf_wrapper is not None:
            udf = udf_wrapper(udf)
        todo = _unscored(spark, batch, scores_ref, rejects_ref, scorer_id)
        # Materialized, not cached: the plan reads the two tables written below, and Spark
        # drops cached data depending on a table when it is written (scoring twice); on a
        # cluster it goes to reliable storage, so losing an executor loses no scored rows.
        out, release = materialize(spark, todo.mapInArrow(udf, out_schema, profile=profile),
                                   scores_ref, staging_root=cfg.checkpoint_location or None)
        try:
            groups = (out.groupBy("reason", *RUN_FIELDS).agg(F.count(F.lit(1)).alias("n"))
                      .collect())
            counts: dict[str | None, int] = {}
            ran: dict[tuple, int] = {}
            for row in groups:
                counts[row["reason"]] = counts.get(row["reason"], 0) + row["n"]
                if row["reason"] is None:
                    run = tuple(row[f] for f in RUN_FIELDS)
                    ran[run] = ran.get(run, 0) + row["n"]
            new_runs = [run for run in ran if run not in executors_seen]
            if new_runs:  # recorded before the commit that holds their rows
                executors_seen.update(new_runs)
                record["executors"] += [dict(zip(RUN_FIELDS, run, strict=True))
                                        for run in new_runs]
                set_properties(spark, scores_ref,
                               {property_key: json.dumps(record, sort_keys=True)})
            now = F.current_timestamp()
            scores = (scores_rows(out.filter(F.col("reason").isNull()), method, plan)
                      .withColumn("scorer_id", F.lit(scorer_id))
                      .withColumn("model", F.lit(cfg.model)).withColumn("scored_at", now))
            rejects = (out.filter(F.col("reason").isNotNull())
                       .withColumn("scorer_id", F.lit(scorer_id)).withColumn("scored_at", now))
            merge_new_rows(spark, scores_ref, SCORES, scores, {"scorer_id": scorer_id})
            merge_new_rows(spark, rejects_ref, SCORE_REJECTS, rejects, {"scorer_id": scorer_id})
        finally:
            release()
        summary.micro_batches += 1
        summary.scored += counts.pop(None, 0)
        for reason, n in counts.items():
            summary.rejected[reason] = summary.rejected.get(reason, 0) + n
        count_runs(summary, ran, batch_id)
        reporter.update(summary)

    with arrow_batch_rows(spark, max(cfg.batch_size, 16)):
        try:
            if paths.is_connect(spark):
                for batch_id, batch in enumerate(_file_batches(spark, windows_ref, cfg)):
                    commit(batch, batch_id)
            else:
                _stream_batches(spark, windows_ref, cfg, scores_ref, scorer_id, commit)
        finally:
            reporter.close()
    summary.seconds = time.perf_counter() - started
    summary.windows_total = _windows_count(spark, windows_ref, cfg)
    summary.already_scored = done_before
    return summary


def _run_key(run: dict) -> tuple:
    return tuple(run.get(f) for f in RUN_FIELDS)


def scores_rows(out: DataFrame, method: ScorerMethod, plan: MethodPlan) -> DataFrame:
    """The UDF's scored rows as scores-table rows: the method's columns as they are, the
    plan's constants, ``method``, and null in every other column of ``tables.SCORES``."""
    frame = out.withColumn("method", F.lit(method.name))
    for name, value in plan.constants.items():
        frame = frame.withColumn(name, F.lit(value).cast(SCORES.schema[name].dataType))
    present = set(frame.columns)
    for field in SCORES.schema.fields:
        if field.name not in present:
            frame = frame.withColumn(field.name, F.lit(None).cast(field.dataType))
    return frame


def _scorer_record(spark: SparkSession, scores_ref: TableRef, method: ScorerMethod,
                   plan: MethodPlan, cfg: ScoreConfig, location: ModelLocation) -> dict:
    """The ``longattn.scorer.<id>`` property: the scorer's configuration (``described``: from
    config.json and the headers), what was asked for, the tokenizers, and what the executors
    ran so far (kept from earlier runs; the windows' tokenizers are merged with earlier runs'
    too)."""
    scorer_id, tokenizer = plan.scorer_id, plan.tokenizer
    summary = dict(plan.describe)
    for driver_only in ("device", "kernel", "kernel_note", "block_size"):
        summary.pop(driver_only, None)  # the driver scores nothing: executors say what ran
    earlier = {}
    text = table_properties(spark, scores_ref).get(f"longattn.scorer.{scorer_id}")
    if text:
        try:
            earlier = json.loads(text)
        except ValueError:
            earlier = {}
    before = earlier.get("tokenizer") if isinstance(earlier.get("tokenizer"), dict) else {}
    tokenizer = dict(tokenizer)
    tokenizer["windows"] = sorted(set(tokenizer["windows"]) | set(before.get("windows", [])))
    if before.get("check") == "mismatch_allowed":
        tokenizer["check"] = "mismatch_allowed"
    executors = earlier.get("executors") if isinstance(earlier.get("executors"), list) else []
    plugin = {"method_plugin": cfg.method} if cfg.method != method.name else {}
    trained = trained_positions(plan.describe)
    positions = {"trained_positions": trained, "positions_note": extrapolation_note(
        trained, plan.seq_len, method=method.name, rope_theta=cfg.rope_theta or None)}
    return {**summary, **plugin, **positions, "method": method.name, "scorer_id": scorer_id,
            "seq_len": plan.seq_len, "min_distance": plan.min_distance, "model": cfg.model,
            "model_folder": location.folder,
            "requested": {"device": cfg.device, "kernel": cfg.kernel, "dtype": cfg.dtype},
            "dtype": plan.dtype, "tokenizer": tokenizer, "executors": executors}


def gpu_resource_profile(spark: SparkSession, task_gpus: float):
    """A stage-level ResourceProfile asking ``task_gpus`` GPUs per task for the scoring stage
    only, so tokenization and SQL stages are not bound to GPU slots (Spark >= 3.4 with
    dynamic allocation, or task-only profiles on standalone / YARN / Kubernetes). None when
    not asked for, or locally, where Spark has no stage-level scheduling."""
    if task_gpus <= 0:
        return None
    if is_local_master(spark):
        print("--task-gpus is ignored by a local master (no stage-level scheduling)")
        return None
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    requests = TaskResourceRequests().cpus(int(spark.conf.get("spark.task.cpus", "1")))
    return ResourceProfileBuilder().require(requests.resource("gpu", task_gpus)).build


def _stream_batches(spark: SparkSession, windows_ref: TableRef, cfg: ScoreConfig,
                    scores_ref: TableRef, scorer_id: str,
                    commit: Callable[[DataFrame, int], None]) -> None:
    """Classic sessions: the windows table as a Structured Streaming source with
    ``availableNow``, ``--files-per-batch`` files per micro-batch, ``commit`` in
    ``foreachBatch``; the stream's checkpoint records the micro-batches done."""
    reader = spark.readStream.format("delta").option("maxFilesPerTrigger",
                                                     str(cfg.files_per_batch))
    stream = reader.load(windows_ref.location) if windows_ref.is_path else \
        reader.table(windows_ref.text)
    query = (_windows_to_score(stream, cfg).writeStream.foreachBatch(commit)
             .option("checkpointLocation",
                     _checkpoint(spark, cfg, scores_ref, windows_ref, scorer_id))
             .trigger(availableNow=True).start())
    try:
        query.awaitTermination()
    finally:
        if query.isActive:
            query.stop()


def _file_batches(spark: SparkSession, ref: TableRef, cfg: ScoreConfig) -> Iterator[DataFrame]:
    """Spark Connect: the micro-batches, without a stream (a ``foreachBatch`` function runs
    on the server there, away from this client's summary): the windows table at its current
    version, ``--files-per-batch`` of its data files at a time (``_metadata.file_name``; a
    Delta data file's name is unique in its table), in name order. What is done is read back
    from the tables themselves: each batch is anti-joined with the scores and rejects already
    written for this scorer (``_unscored``), so a killed run resumes where it stopped and a
    batch scored before is skipped."""
    version = ref.version(spark)
    frame = ref.read(spark, version)
    names = sorted({path.rstrip("/").rsplit("/", 1)[-1] for path in frame.inputFiles()})
    for start in range(0, len(names), cfg.files_per_batch):
        chunk = names[start:start + cfg.files_per_batch]
        yield _windows_to_score(frame.filter(F.col("_metadata.file_name").isin(chunk)), cfg)


def _windows_to_score(frame: DataFrame, cfg: ScoreConfig) -> DataFrame:
    if cfg.category:
        frame = frame.filter(F.col("category") == F.lit(cfg.category))
    return frame.select("window_id", "category", "n_tokens", "input_ids")


def _unscored(spark: SparkSession, batch: DataFrame, scores_ref: TableRef,
              rejects_ref: TableRef, scorer_id: str) -> DataFrame:
    done = (scores_ref.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id))
            .select("window_id")
            .unionByName(rejects_ref.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id))
                         .select("window_id")))
    todo = batch.join(done, "window_id", "left_anti")
    partitions = max(1, default_parallelism(spark))
    return todo.repartition(partitions)


def _checkpoint(spark: SparkSession, cfg: ScoreConfig, scores_ref: TableRef,
                windows_ref: TableRef, scorer_id: str) -> str:
    """The stream's progress folder, one per (scorer, windows table, category filter):
    under ``--checkpoint-location`` when given (one per scores table too, so one location
    can serve several), else beside a path scores table's data, where the leading underscore
    keeps Delta's VACUUM away from it. Table names require ``--checkpoint-location``
    (``validate_score_config``)."""
    if cfg.checkpoint_location:
        source = hashlib.sha256(f"{scores_ref}\x1f{windows_ref}\x1f{cfg.category}".encode()
                                ).hexdigest()[:12]
        base = paths.for_spark(spark, cfg.checkpoint_location)
        return f"{base.rstrip('/')}/{scorer_id}-{source}"
    if not scores_ref.is_path:
        raise ConfigError(f"--table {cfg.table} is a table name: pass --checkpoint-location")
    source = hashlib.sha256(f"{windows_ref}\x1f{cfg.category}".encode()).hexdigest()[:12]
    return f"{scores_ref.location.rstrip('/')}/_longattn_checkpoints/{scorer_id}-{source}"


def _scored_count(spark: SparkSession, ref: TableRef, scorer_id: str) -> int:
    return ref.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id)).count()


def _windows_count(spark: SparkSession, ref: TableRef, cfg: ScoreConfig) -> int:
    frame = ref.read(spark)
    if cfg.category:
        frame = frame.filter(F.col("category") == F.lit(cfg.category))
    return frame.count()

