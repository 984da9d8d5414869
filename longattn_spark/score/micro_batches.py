"""Where the score job's micro-batches come from, and what makes a re-run resume.

- Classic sessions (``stream_batches``): the windows table as a Structured Streaming source
  with ``availableNow``, ``--files-per-batch`` files per micro-batch, each committed in
  ``foreachBatch``; the stream's checkpoint (``stream_checkpoint``: per scores table, scorer,
  windows table and category) records the micro-batches done.
- Spark Connect (``file_batches``): the windows table at its current version, cut by the
  client into the same micro-batches of data files, committed in turn.
- Either way each micro-batch is anti-joined with this scorer's scores and rejects already
  written (``unscored``), so a lost checkpoint, a retried batch or a killed run never scores a
  window twice or duplicates a row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longattn_spark import paths
from longattn_spark.config import ScoreConfig
from longattn_spark.errors import ConfigError
from longattn_spark.session import default_parallelism
from longattn_spark.tables.refs import TableRef


def each_micro_batch(spark: SparkSession, cfg: ScoreConfig, windows_ref: TableRef,
                     scores_ref: TableRef, scorer_id: str,
                     commit: Callable[[DataFrame, int], None]) -> None:
    """``commit(batch, batch_id)`` for every micro-batch of windows to score, in order: file
    batches over Spark Connect, the ``availableNow`` stream on a classic session."""
    if paths.is_connect(spark):
        for batch_id, batch in enumerate(file_batches(spark, windows_ref, cfg)):
            commit(batch, batch_id)
    else:
        stream_batches(spark, windows_ref, cfg, scores_ref, scorer_id, commit)


def stream_batches(spark: SparkSession, windows_ref: TableRef, cfg: ScoreConfig,
                   scores_ref: TableRef, scorer_id: str,
                   commit: Callable[[DataFrame, int], None]) -> None:
    """Classic sessions: the windows table as a Structured Streaming source with
    ``availableNow``, ``--files-per-batch`` files per micro-batch, ``commit`` in
    ``foreachBatch``; the stream's checkpoint records the micro-batches done."""
    reader = spark.readStream.format("delta").option("maxFilesPerTrigger",
                                                     str(cfg.files_per_batch))
    stream = reader.load(windows_ref.location) if windows_ref.is_path else \
        reader.table(windows_ref.text)
    query = (windows_to_score(stream, cfg).writeStream.foreachBatch(commit)
             .option("checkpointLocation",
                     stream_checkpoint(spark, cfg, scores_ref, windows_ref, scorer_id))
             .trigger(availableNow=True).start())
    try:
        query.awaitTermination()
    finally:
        if query.isActive:
            query.stop()


def file_batches(spark: SparkSession, ref: TableRef, cfg: ScoreConfig) -> Iterator[DataFrame]:
    """Spark Connect: the micro-batches, without a stream (a ``foreachBatch`` function runs
    on the server there, away from this client's summary): the windows table at its current
    version, ``--files-per-batch`` of its data files at a time (``_metadata.file_name``; a
    Delta data file's name is unique in its table), in name order. What is done is read back
    from the tables themselves: each batch is anti-joined with the scores and rejects already
    written for this scorer (``unscored``), so a killed run resumes where it stopped and a
    batch scored before is skipped."""
    version = ref.version(spark)
    frame = ref.read(spark, version)
    names = sorted({path.rstrip("/").rsplit("/", 1)[-1] for path in frame.inputFiles()})
    for start in range(0, len(names), cfg.files_per_batch):
        chunk = names[start:start + cfg.files_per_batch]
        yield windows_to_score(frame.filter(F.col("_metadata.file_name").isin(chunk)), cfg)


def windows_to_score(frame: DataFrame, cfg: ScoreConfig) -> DataFrame:
    """The columns scoring reads, of ``--category``'s windows when given."""
    if cfg.category:
        frame = frame.filter(F.col("category") == F.lit(cfg.category))
    return frame.select("window_id", "category", "n_tokens", "input_ids")


def unscored(spark: SparkSession, batch: DataFrame, scores_ref: TableRef,
             rejects_ref: TableRef, scorer_id: str) -> DataFrame:
    """The windows of ``batch`` this scorer has neither scored nor rejected yet, spread over
    the session's parallelism."""
    done = (scores_ref.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id))
            .select("window_id")
            .unionByName(rejects_ref.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id))
                         .select("window_id")))
    todo = batch.join(done, "window_id", "left_anti")
    partitions = max(1, default_parallelism(spark))
    return todo.repartition(partitions)


def stream_checkpoint(spark: SparkSession, cfg: ScoreConfig, scores_ref: TableRef,
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
