"""The score job: windows table -> per-window scores -> scores table.

The method (``--method``: ``longattn``, the default, ``prolong``, ... or a plugin) comes from
the one registry, ``longattn_spark.scorers``, and is used only through its interface
(``scorers.base.ScorerMethod``): the driver checks the options, the model and the windows
(``longattn_spark.score.plan`` for what every method shares) and the method plans; then this
module runs the common streaming / MERGE / rejects machinery with the one mapInArrow function
(``scorers.executor.score_batches``) and folds what each micro-batch did into a
``ScoreSummary`` (``longattn_spark.score.summary``). Its steps: ``plan_scorer`` (model,
windows, plan), the tables and the scorer's record (``score.record``), then every micro-batch
(``score.micro_batches``) committed by ``score.commit.MicroBatchCommit``.

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
  (``longattn_spark.weights``), and ``--checkpoint-location`` (required for table names) holds
  the staged rows of a micro-batch on a cluster.
- Scoring is a ``mapInArrow`` UDF. The scorer is cached per Python worker, keyed by its
  settings (the pattern of ``pyspark.ml.functions.predict_batch_udf``): a model loads once per
  executor process, not per task or batch. Token ids go from Arrow to an ``[N, L]`` array by
  numpy indexing, without a per-row Python loop. The device is the task's GPU
  (``TaskContext.resources()["gpu"]``), else CUDA if present, else the CPU; a task given a GPU
  that finds no usable CUDA fails (it never falls back to the CPU with a dtype chosen for GPUs).
- The model is read from shared storage (``longattn_spark.weights``): the driver
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

import time
from collections.abc import Callable

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from longattn_spark.config import LongAttnConfig, ScoreConfig
from longattn_spark.errors import TableError
from longattn_spark.score.commit import MicroBatchCommit
from longattn_spark.score.micro_batches import each_micro_batch
from longattn_spark.score.plan import (
    ScoreTables,
    check_tokenizer,
    unscored_tokenizers,
    validate_score_config,
    windows_facts,
)
from longattn_spark.score.recipe import score_recipe, scorer_config
from longattn_spark.score.record import ScorerRecord
from longattn_spark.score.summary import Progress, ScoreSummary, print_summary
from longattn_spark.scorers.base import MethodPlan, PlanContext, ScorerMethod
from longattn_spark.scorers.executor import ArrowFn
from longattn_spark.session import arrow_batch_rows, get_spark, is_local_master
from longattn_spark.tables.refs import TableRef
from longattn_spark.tables.schemas import SCORE_REJECTS, SCORES
from longattn_spark.tables.writes import ensure_table
from longattn_spark.weights.location import ModelLocation


def run_score_job(cfg: LongAttnConfig) -> list[ScoreSummary]:
    """``longattn-spark score``: the ``--method`` with its options, or with ``--recipe`` every
    scorer the recipe names, one after the other (each resumable on its own)."""
    recipe = score_recipe(cfg.score)
    configs = [scorer_config(cfg.score, s) for s in recipe.scorers] if cfg.score.recipe \
        else [cfg.score]
    for scorer_cfg in configs:
        validate_score_config(scorer_cfg)
    spark = get_spark(cfg.spark, app_name="longattn-spark score")
    summaries = []
    for scorer, scorer_cfg in zip(recipe.scorers, configs, strict=True):
        if cfg.score.recipe:
            print(f"recipe {recipe.name}: scorer {scorer.name} (--method {scorer.method})",
                  flush=True)
        summary = score_windows(spark, scorer_cfg)
        print_summary(summary, scorer_cfg)
        summaries.append(summary)
    return summaries


def score_windows(spark: SparkSession, cfg: ScoreConfig, progress: bool = True,
                  udf_wrapper: Callable[[ArrowFn], ArrowFn] | None = None) -> ScoreSummary:
    """Score every window of ``cfg.windows`` that has no score for this scorer yet.

    ``udf_wrapper`` (tests): applied to the mapInArrow function of every micro-batch, in
    micro-batch order, e.g. to make a task fail."""
    method = validate_score_config(cfg)
    tables = ScoreTables.of(cfg)
    plan, location, summary = plan_scorer(spark, cfg, method, tables)
    ensure_table(spark, tables.scores, SCORES)
    ensure_table(spark, tables.rejects, SCORE_REJECTS)
    record = ScorerRecord.written(spark, tables.scores, method, plan, cfg, location)
    summary.position_note = record.record.get("positions_note") or ""
    if summary.position_note:
        print(f"warning: {summary.position_note}", flush=True)
    done_before = _scored_count(spark, tables.scores, plan.scorer_id)
    windows_total = _windows_count(spark, tables.windows, cfg)
    to_score = windows_total - done_before - _scored_count(spark, tables.rejects,
                                                           plan.scorer_id)
    # a method without torch runs on the CPU cores: no stage-level GPU request for it
    profile = gpu_resource_profile(spark, cfg.task_gpus) if method.uses_torch else None
    started = time.perf_counter()
    reporter = Progress(progress, to_score, f"score {plan.scorer_id}")
    commit = MicroBatchCommit(spark, cfg, method, plan, tables, record, summary, reporter,
                              profile, udf_wrapper)
    with arrow_batch_rows(spark, max(cfg.batch_size, 16)):
        try:
            each_micro_batch(spark, cfg, tables.windows, tables.scores, plan.scorer_id, commit)
        finally:
            reporter.close()
    summary.seconds = time.perf_counter() - started
    summary.windows_total = windows_total
    summary.already_scored = done_before
    return summary


def plan_scorer(spark: SparkSession, cfg: ScoreConfig, method: ScorerMethod,
                tables: ScoreTables) -> tuple[MethodPlan, ModelLocation, ScoreSummary]:
    """(the method's plan, the model's location, the run's summary so far), before any task.

    The model first: its errors (no folder, no config.json, bad headers, not a causal LM,
    pickled weights, --layer outside it) come before any Spark job, and nothing but small
    files and a streamed hash of the weight bytes the method reads is read here. Then the
    windows table's sizes and tokenizers, and the method's plan with the shared tokenizer
    check."""
    options = method.options(cfg)
    location = method.locate(spark, cfg, options)
    model = method.inspect(spark, cfg, options, location)
    if not tables.windows.exists(spark):
        raise TableError(f"--windows {cfg.windows}: no such table (run ingest first)")
    sizes, window_tokenizers = windows_facts(spark, tables.windows, cfg)
    summary = ScoreSummary(seq_len=sizes[0] if len(sizes) == 1 else 0)

    def checked_tokenizer(scorer_id: str) -> dict:
        record = check_tokenizer(spark, cfg, window_tokenizers, summary, lambda: (
            unscored_tokenizers(spark, tables.windows, tables.scores, tables.rejects,
                                scorer_id, cfg)))
        context.tokenizer_check = summary.tokenizer_check
        return record

    context = PlanContext(spark=spark, cfg=cfg, options=options, location=location,
                          model=model, sizes=sizes,
                          window_tokenizers=window_tokenizers,
                          check_tokenizer=checked_tokenizer)
    plan = method.plan(context)
    summary.scorer_id, summary.tokenizer_check = plan.scorer_id, context.tokenizer_check
    summary.seq_len = plan.seq_len or summary.seq_len
    summary.min_distance = plan.min_distance or 0
    return plan, location, summary


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


def _scored_count(spark: SparkSession, ref: TableRef, scorer_id: str) -> int:
    return ref.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id)).count()


def _windows_count(spark: SparkSession, ref: TableRef, cfg: ScoreConfig) -> int:
    frame = ref.read(spark)
    if cfg.category:
        frame = frame.filter(F.col("category") == F.lit(cfg.category))
    return frame.count()
