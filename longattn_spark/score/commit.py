"""One micro-batch of the score job, committed: its windows not yet scored by this scorer go
through the method's mapInArrow UDF (``scorers.executor.score_batches``), the result is
materialized once (on a cluster, on reliable storage), its outcome counted, what the executors
ran recorded with the scorer, and its scores and rejects written by insert-only MERGEs
restricted to this scorer's partition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longattn_spark.config import ScoreConfig
from longattn_spark.score.micro_batches import unscored
from longattn_spark.score.plan import ScoreTables
from longattn_spark.score.record import ScorerRecord
from longattn_spark.score.summary import Progress, ScoreSummary, count_runs
from longattn_spark.scorers.base import MethodPlan, ScorerMethod
from longattn_spark.scorers.executor import RUN_FIELDS, ArrowFn, score_batches, udf_schema
from longattn_spark.tables.schemas import SCORE_REJECTS, SCORES
from longattn_spark.tables.staging import materialize
from longattn_spark.tables.writes import merge_new_rows


class MicroBatchCommit:
    """The score job's ``foreachBatch`` function (module docstring); ``udf_wrapper`` (tests)
    wraps the mapInArrow function of every micro-batch, e.g. to make a task fail."""

    def __init__(self, spark: SparkSession, cfg: ScoreConfig, method: ScorerMethod,
                 plan: MethodPlan, tables: ScoreTables, record: ScorerRecord,
                 summary: ScoreSummary, reporter: Progress, profile: Any = None,
                 udf_wrapper: Callable[[ArrowFn], ArrowFn] | None = None) -> None:
        self.spark, self.cfg, self.method, self.plan = spark, cfg, method, plan
        self.tables, self.record, self.summary = tables, record, summary
        self.reporter, self.profile, self.udf_wrapper = reporter, profile, udf_wrapper
        self.out_schema = udf_schema(method.out_fields)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        # Materialized, not cached: the plan reads the two tables written below, and Spark
        # drops cached data depending on a table when it is written (scoring twice); on a
        # cluster it goes to reliable storage, so losing an executor loses no scored rows.
        out, release = materialize(self.spark, self.scored(batch), self.tables.scores,
                                   staging_root=self.cfg.checkpoint_location or None)
        try:
            counts, ran = outcomes(out)
            self.record.add_runs(ran)
            self.write(out)
        finally:
            release()
        self.account(counts, ran, batch_id)

    def scored(self, batch: DataFrame) -> DataFrame:
        """The UDF's rows for the windows of ``batch`` this scorer has not done yet."""
        udf = score_batches(self.cfg.method, self.plan.settings, self.cfg.batch_size)
        if self.udf_wrapper is not None:
            udf = self.udf_wrapper(udf)
        todo = unscored(self.spark, batch, self.tables.scores, self.tables.rejects,
                        self.plan.scorer_id)
        return todo.mapInArrow(udf, self.out_schema, profile=self.profile)

    def write(self, out: DataFrame) -> None:
        """The scored rows into the scores table, the rest into the rejects table."""
        scorer_id, now = self.plan.scorer_id, F.current_timestamp()
        scores = (scores_rows(out.filter(F.col("reason").isNull()), self.method, self.plan)
                  .withColumn("scorer_id", F.lit(scorer_id))
                  .withColumn("model", F.lit(self.cfg.model or None).cast("string"))
                  .withColumn("scored_at", now))
        rejects = (out.filter(F.col("reason").isNotNull())
                   .withColumn("scorer_id", F.lit(scorer_id)).withColumn("scored_at", now))
        merge_new_rows(self.spark, self.tables.scores, SCORES, scores, {"scorer_id": scorer_id})
        merge_new_rows(self.spark, self.tables.rejects, SCORE_REJECTS, rejects,
                       {"scorer_id": scorer_id})

    def account(self, counts: dict[str | None, int], ran: dict[tuple, int],
                batch_id: int) -> None:
        """The micro-batch's outcome added to the run's summary, and shown."""
        summary = self.summary
        summary.micro_batches += 1
        summary.scored += counts.pop(None, 0)
        for reason, n in counts.items():
            summary.rejected[reason] = summary.rejected.get(reason, 0) + n
        count_runs(summary, ran, batch_id)
        self.reporter.update(summary)


def outcomes(out: DataFrame) -> tuple[dict[str | None, int], dict[tuple, int]]:
    """(rows per reject reason, None for scored; scored rows per ``RUN_FIELDS`` combination)
    of a micro-batch's UDF rows, in one aggregate."""
    groups = out.groupBy("reason", *RUN_FIELDS).agg(F.count(F.lit(1)).alias("n")).collect()
    counts: dict[str | None, int] = {}
    ran: dict[tuple, int] = {}
    for row in groups:
        counts[row["reason"]] = counts.get(row["reason"], 0) + row["n"]
        if row["reason"] is None:
            run = tuple(row[f] for f in RUN_FIELDS)
            ran[run] = ran.get(run, 0) + row["n"]
    return counts, ran


def scores_rows(out: DataFrame, method: ScorerMethod, plan: MethodPlan) -> DataFrame:
    """The UDF's scored rows as scores-table rows: the method's columns as they are, the
    plan's constants, ``method``, and null in every other column of ``tables.schemas.SCORES``."""
    frame = out.withColumn("method", F.lit(method.name))
    for name, value in plan.constants.items():
        frame = frame.withColumn(name, F.lit(value).cast(SCORES.schema[name].dataType))
    present = set(frame.columns)
    for field in SCORES.schema.fields:
        if field.name not in present:
            frame = frame.withColumn(field.name, F.lit(None).cast(field.dataType))
    return frame
