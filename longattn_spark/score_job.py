"""The score job: windows table -> layer-0 attention scores (DS, variance) -> scores table.

- The windows table is read as a Structured Streaming source with ``availableNow``: each
  micro-batch is scored and committed (MERGE) before the next, and the stream's checkpoint
  (per scores table, scorer and windows table) records what is done, so a killed job resumes
  after the last committed micro-batch. Each micro-batch is also anti-joined with the scores
  already written for this scorer, so a lost checkpoint or a retried batch never duplicates a
  row and only windows without a score for this ``scorer_id`` are scored.
- Scoring is a ``mapInArrow`` UDF. The scorer is cached per Python worker, keyed by its
  settings (the pattern of ``pyspark.ml.functions.predict_batch_udf``): a model loads once per
  executor process, not per task or batch. Token ids go from Arrow to an ``[N, L]`` array by
  numpy indexing, without a per-row Python loop. The device is the task's GPU
  (``TaskContext.resources()["gpu"]``), else CUDA if present, else the CPU.
- The scores table is partitioned by ``scorer_id`` and each MERGE is restricted to its own
  partition, so runs with different models can write one table at the same time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longattn_spark.config import LongAttnConfig, ScoreConfig, default_rejects_table
from longattn_spark.errors import ConfigError, TableError
from longattn_spark.model_files import ModelLocation, locate_model
from longattn_spark.session import arrow_batch_rows, get_spark, on_cluster
from longattn_spark.tables import (
    SCORE_REJECTS,
    SCORES,
    TableRef,
    ensure_table,
    merge_new_rows,
    set_properties,
)

WRONG_LENGTH = "wrong_length"
IDS_OUT_OF_VOCAB = "ids_out_of_vocab"

OUT_SCHEMA = T.StructType([
    T.StructField("window_id", T.StringType(), False),
    T.StructField("category", T.StringType()),
    T.StructField("reason", T.StringType()),     # null: scored
    T.StructField("detail", T.StringType()),
    T.StructField("ds", T.DoubleType()),
    T.StructField("variance", T.DoubleType()),
    T.StructField("ds_heads", T.ArrayType(T.DoubleType(), False)),
    T.StructField("var_heads", T.ArrayType(T.DoubleType(), False)),
])
_OUT_ARROW = pa.schema([
    ("window_id", pa.string()), ("category", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()), ("ds", pa.float64()), ("variance", pa.float64()),
    ("ds_heads", pa.list_(pa.field("element", pa.float64(), False))),
    ("var_heads", pa.list_(pa.field("element", pa.float64(), False))),
])


@dataclass(frozen=True)
class ScorerSettings:
    """Everything an executor needs to build (and cache) the scorer."""

    location: ModelLocation
    device: str
    dtype: str
    min_distance: int | None
    rope_theta: float | None
    kernel: str
    allow_pickle: bool
    threads: int


@dataclass(frozen=True)
class FaultInjection:
    """Test hook for a task that dies mid-way: from micro-batch ``from_micro_batch`` on, the
    UDF raises after ``after_batches`` Arrow batches, on the task's first attempt only (a
    retried attempt succeeds)."""

    from_micro_batch: int
    after_batches: int = 0
    message: str = "injected fault"


@dataclass
class ScoreSummary:
    scorer_id: str = ""
    seq_len: int = 0
    min_distance: int = 0
    windows_total: int = 0
    already_scored: int = 0
    scored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    micro_batches: int = 0
    seconds: float = 0.0

    @property
    def windows_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.windows_per_second * self.seq_len


# --- executor side ---------------------------------------------------------------------------

_SCORERS: dict[tuple, object] = {}


def cached_scorer(settings: ScorerSettings, device: str):
    """The scorer for ``settings`` on ``device``, built once per Python worker process."""
    key = (settings, device)
    if key not in _SCORERS:
        import torch

        from longattn_spark.scoring import Layer0Scorer

        torch.set_num_threads(settings.threads)
        _SCORERS[key] = Layer0Scorer.from_pretrained(
            settings.location.executor_path(), device=device, dtype=settings.dtype,
            min_distance=settings.min_distance, rope_theta=settings.rope_theta,
            allow_pickle=settings.allow_pickle, kernel=settings.kernel)
    return _SCORERS[key]


def task_device(requested: str) -> str:
    """``auto``: the GPU Spark assigned to this task, else CUDA if present, else the CPU."""
    if requested != "auto":
        return requested
    from pyspark import TaskContext

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    if gpus is not None and gpus.addresses:
        return f"cuda:{gpus.addresses[0]}"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_input_matrix(input_ids: pa.ListArray, seq_len: int, bos_id: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(ids ``[N, seq_len]`` = BOS + the first seq_len-1 tokens of each long-enough row,
    boolean mask of those rows), by numpy indexing into the Arrow buffers."""
    offsets = input_ids.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = input_ids.values.to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    ok = lengths >= seq_len - 1
    starts = offsets[:-1][ok]
    gather = starts[:, None] + np.arange(seq_len - 1, dtype=np.int64)[None, :]
    ids = np.empty((starts.shape[0], seq_len), dtype=np.int64)
    ids[:, 0] = bos_id
    ids[:, 1:] = values[gather] if starts.size else np.empty((0, seq_len - 1))
    return ids, ok


def score_record_batch(batch: pa.RecordBatch, scorer, seq_len: int, expected_tokens: int | None,
                       batch_size: int) -> pa.RecordBatch:
    """Score one Arrow batch of windows; rows that cannot be scored get a reason."""
    import torch

    window_ids = batch.column("window_id").to_pylist()
    categories = batch.column("category").to_pylist()
    n_tokens = batch.column("n_tokens").to_numpy(zero_copy_only=False)
    input_ids = batch.column("input_ids")
    ids, long_enough = model_input_matrix(input_ids, seq_len, scorer.bos_id)
    lengths = np.diff(input_ids.offsets.to_numpy(zero_copy_only=False))
    reasons: list[str | None] = [None] * len(window_ids)
    details: list[str | None] = [None] * len(window_ids)
    for i in np.flatnonzero(~long_enough | (lengths != n_tokens)
                            | ((lengths != expected_tokens) if expected_tokens else False)):
        reasons[i] = WRONG_LENGTH
        details[i] = (f"{lengths[i]} token ids (n_tokens column {n_tokens[i]}); scoring needs "
                      f"{expected_tokens or seq_len - 1}")
    values = input_ids.values.to_numpy(zero_copy_only=False)
    outside = (values < 0) | (values >= scorer.vocab_size)
    bad_rows = np.flatnonzero(_rows_with_any(outside, input_ids.offsets.to_numpy(
        zero_copy_only=False)))
    for i in bad_rows:
        if reasons[i] is None:
            row = values[input_ids.offsets[i].as_py():input_ids.offsets[i + 1].as_py()]
            bad = row[(row < 0) | (row >= scorer.vocab_size)]
            reasons[i] = IDS_OUT_OF_VOCAB
            details[i] = (f"{bad.size} ids outside 0..{scorer.vocab_size - 1}, e.g. "
                          f"{int(bad[0])}")
    rows = np.flatnonzero(long_enough)
    keep = np.array([reasons[i] is None for i in rows], dtype=bool)
    to_score, score_rows = ids[keep], rows[keep]
    n_heads = scorer.n_query_heads
    ds = np.full(len(window_ids), np.nan)
    variance = np.full(len(window_ids), np.nan)
    ds_heads = np.zeros((len(window_ids), n_heads))
    var_heads = np.zeros((len(window_ids), n_heads))
    for begin in range(0, to_score.shape[0], batch_size):
        chunk = torch.from_numpy(to_score[begin:begin + batch_size])
        out = score_with_clear_oom(scorer, chunk, batch_size, seq_len)
        target = score_rows[begin:begin + batch_size]
        ds[target], variance[target] = out.ds, out.variance
        ds_heads[target], var_heads[target] = out.ds_heads, out.var_heads
    scored = np.array([r is None for r in reasons], dtype=bool)
    heads_offsets = np.concatenate([[0], np.cumsum(np.where(scored, n_heads, 0))]).astype(
        np.int32)
    return pa.RecordBatch.from_arrays([
        pa.array(window_ids, pa.string()), pa.array(categories, pa.string()),
        pa.array(reasons, pa.string()), pa.array(details, pa.string()),
        pa.array(np.where(scored, ds, np.nan), mask=~scored),
        pa.array(np.where(scored, variance, np.nan), mask=~scored),
        pa.ListArray.from_arrays(pa.array(heads_offsets), pa.array(ds_heads[scored].ravel()),
                                 mask=pa.array(~scored), type=_OUT_ARROW.field("ds_heads").type),
        pa.ListArray.from_arrays(pa.array(heads_offsets), pa.array(var_heads[scored].ravel()),
                                 mask=pa.array(~scored), type=_OUT_ARROW.field("var_heads").type),
    ], schema=_OUT_ARROW)


def _rows_with_any(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per list row (Arrow offsets), whether any of its ``flags`` is set."""
    counts = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return counts[offsets[1:]] - counts[offsets[:-1]] > 0


def score_with_clear_oom(scorer, ids, batch_size: int, seq_len: int):
    """``scorer.score(ids)``; CUDA running out of memory names the settings to lower."""
    import torch

    try:
        return scorer.score(ids)
    except torch.cuda.OutOfMemoryError as exc:
        raise MemoryError(oom_message(batch_size, seq_len, str(scorer.device), exc)) from None


def oom_message(batch_size: int, seq_len: int, device: str, exc: Exception) -> str:
    return (f"CUDA out of memory on {device} scoring --batch-size {batch_size} windows of "
            f"--seq-len {seq_len}: lower --batch-size (or --seq-len). ({str(exc)[:200]})")


def score_batches(settings: ScorerSettings, seq_len: int, expected_tokens: int | None,
                  batch_size: int, fault: FaultInjection | None = None
                  ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function of the score job."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        scorer = cached_scorer(settings, task_device(settings.device))
        context = TaskContext.get()
        first_attempt = context is None or context.attemptNumber() == 0
        for count, batch in enumerate(batches):
            if fault is not None and first_attempt and count >= fault.after_batches:
                raise RuntimeError(fault.message)
            yield score_record_batch(batch, scorer, seq_len, expected_tokens, batch_size)

    return run


# --- driver side -----------------------------------------------------------------------------

def validate_score_config(cfg: ScoreConfig) -> None:
    if not cfg.model:
        raise ConfigError("--model is required: a folder with config.json and safetensors")
    if cfg.seq_len and cfg.seq_len < 8:
        raise ConfigError(f"--seq-len must be at least 8, got {cfg.seq_len}")
    if cfg.min_distance < 0:
        raise ConfigError(f"--min-distance must be >= 0, got {cfg.min_distance}")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.files_per_batch < 1:
        raise ConfigError(f"--files-per-batch must be >= 1, got {cfg.files_per_batch}")
    if cfg.trust_remote_code:
        raise ConfigError("--trust-remote-code is not supported: the scorer runs no model code "
                          "from the checkpoint (layer 0 is computed by this package)")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"--device {cfg.device!r}: use auto, cpu, cuda or cuda:N")


def run_score_job(cfg: LongAttnConfig) -> ScoreSummary:
    """``longattn-spark score``."""
    validate_score_config(cfg.score)
    spark = get_spark(cfg.spark, app_name="longattn-spark score")
    summary = score_windows(spark, cfg.score)
    print_summary(summary, cfg.score)
    return summary


def score_windows(spark: SparkSession, cfg: ScoreConfig, fault: FaultInjection | None = None,
                  progress: bool = True) -> ScoreSummary:
    """Score every window of ``cfg.windows`` that has no score for this scorer yet."""
    validate_score_config(cfg)
    windows_ref = TableRef(cfg.windows)
    if not windows_ref.exists(spark):
        raise TableError(f"--windows {cfg.windows}: no such table (run ingest first)")
    scores_ref = TableRef(cfg.table)
    rejects_ref = TableRef(cfg.rejects_table or default_rejects_table(cfg.table))
    seq_len, expected_tokens = _sequence_length(spark, windows_ref, cfg)
    location = locate_model(spark, cfg.model)
    settings = _scorer_settings(spark, cfg, location)
    driver_scorer = _driver_scorer(settings)  # fails here, before any task, on a bad model
    scorer_id = driver_scorer.scorer_id_for(seq_len)
    ensure_table(spark, scores_ref, SCORES)
    ensure_table(spark, rejects_ref, SCORE_REJECTS)
    set_properties(spark, scores_ref, {f"longattn.scorer.{scorer_id}": json.dumps(
        {**driver_scorer.config_summary(), "scorer_id": scorer_id, "seq_len": seq_len,
         "min_distance": driver_scorer.min_distance_for(seq_len), "model": cfg.model})})

    summary = ScoreSummary(scorer_id=scorer_id, seq_len=seq_len,
                           min_distance=driver_scorer.min_distance_for(seq_len))
    done_before = _scored_count(spark, scores_ref, scorer_id)
    profile = gpu_resource_profile(spark, cfg.task_gpus)
    started = time.perf_counter()
    reporter = _Progress(progress and not on_cluster())

    def commit(batch: DataFrame, batch_id: int) -> None:
        armed = fault if fault is not None and batch_id >= fault.from_micro_batch else None
        udf = score_batches(settings, seq_len, expected_tokens, cfg.batch_size, armed)
        todo = _unscored(spark, batch, scores_ref, rejects_ref, scorer_id)
        # Checkpointed, not cached: the plan reads the two tables written below, and Spark
        # drops cached data depending on a table when it is written (scoring twice).
        out = todo.mapInArrow(udf, OUT_SCHEMA, profile=profile).localCheckpoint(eager=True)
        try:
            now = F.current_timestamp()
            scores = (out.filter(F.col("reason").isNull())
                      .withColumn("scorer_id", F.lit(scorer_id))
                      .withColumn("seq_len", F.lit(seq_len))
                      .withColumn("min_distance", F.lit(summary.min_distance))
                      .withColumn("model", F.lit(cfg.model)).withColumn("scored_at", now))
            rejects = (out.filter(F.col("reason").isNotNull())
                       .withColumn("scorer_id", F.lit(scorer_id)).withColumn("scored_at", now))
            counts = {r["reason"]: r["n"] for r in
                      out.groupBy("reason").agg(F.count(F.lit(1)).alias("n")).collect()}
            merge_new_rows(spark, scores_ref, SCORES, scores, {"scorer_id": scorer_id})
            merge_new_rows(spark, rejects_ref, SCORE_REJECTS, rejects, {"scorer_id": scorer_id})
        finally:
            out.unpersist()
        summary.micro_batches += 1
        summary.scored += counts.pop(None, 0)
        for reason, n in counts.items():
            summary.rejected[reason] = summary.rejected.get(reason, 0) + n
        reporter.update(summary)

    stream = _windows_stream(spark, windows_ref, cfg)
    checkpoint = _checkpoint(spark, scores_ref, windows_ref, scorer_id, cfg.category)
    with arrow_batch_rows(spark, max(cfg.batch_size, 16)):
        query = (stream.writeStream.foreachBatch(commit)
                 .option("checkpointLocation", checkpoint)
                 .trigger(availableNow=True).start())
        try:
            query.awaitTermination()
        finally:
            reporter.close()
            if query.isActive:
                query.stop()
    summary.seconds = time.perf_counter() - started
    summary.windows_total = _windows_count(spark, windows_ref, cfg)
    summary.already_scored = done_before
    return summary


def gpu_resource_profile(spark: SparkSession, task_gpus: float):
    """A stage-level ResourceProfile asking ``task_gpus`` GPUs per task for the scoring stage
    only, so tokenization and SQL stages are not bound to GPU slots (Spark >= 3.4 with
    dynamic allocation, or task-only profiles on standalone / YARN / Kubernetes). None when
    not asked for, or locally, where Spark has no stage-level scheduling."""
    if task_gpus <= 0:
        return None
    if spark.sparkContext.master.startswith("local"):
        print("--task-gpus is ignored by a local master (no stage-level scheduling)")
        return None
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    requests = TaskResourceRequests().cpus(int(spark.conf.get("spark.task.cpus", "1")))
    return ResourceProfileBuilder().require(requests.resource("gpu", task_gpus)).build


def _sequence_length(spark: SparkSession, windows_ref: TableRef, cfg: ScoreConfig
                     ) -> tuple[int, int | None]:
    """(L, the window length every window must have or None): --seq-len, else the table's
    window size (+1 for BOS is not added: L = W scores BOS + the first W-1 tokens)."""
    sizes = [r["n_tokens"] for r in windows_ref.read(spark).select("n_tokens").distinct()
             .limit(5).collect() if r["n_tokens"] is not None]
    if cfg.seq_len:
        return cfg.seq_len, None
    if not sizes:
        raise TableError(f"--windows {cfg.windows} holds no windows")
    if len(sizes) > 1:
        raise ConfigError(f"--windows {cfg.windows} holds windows of several sizes "
                          f"({', '.join(map(str, sorted(sizes)))}); pass --seq-len")
    return sizes[0], sizes[0]


def _scorer_settings(spark: SparkSession, cfg: ScoreConfig, location: ModelLocation
                     ) -> ScorerSettings:
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if _executors_have_gpus(spark, cfg.device) else "float32"
    return ScorerSettings(location=location, device=cfg.device, dtype=dtype,
                          min_distance=cfg.min_distance or None,
                          rope_theta=cfg.rope_theta or None, kernel=cfg.kernel,
                          allow_pickle=cfg.allow_pickle, threads=_threads_per_task(spark))


def _executors_have_gpus(spark: SparkSession, device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device == "cpu":
        return False
    if spark.conf.get("spark.executor.resource.gpu.amount", None):
        return True
    import torch

    return spark.sparkContext.master.startswith("local") and torch.cuda.is_available()


def _threads_per_task(spark: SparkSession) -> int:
    """Torch threads per task: locally the cores shared by the concurrent tasks."""
    if not spark.sparkContext.master.startswith("local"):
        return int(spark.conf.get("spark.task.cpus", "1"))
    return max(1, (os.cpu_count() or 1) // max(1, spark.sparkContext.defaultParallelism))


def _driver_scorer(settings: ScorerSettings):
    from longattn_spark.scoring import Layer0Scorer

    return Layer0Scorer.from_pretrained(settings.location.local_dir, device="cpu",
                                        dtype=settings.dtype,
                                        min_distance=settings.min_distance,
                                        rope_theta=settings.rope_theta,
                                        allow_pickle=settings.allow_pickle, kernel="torch")


def _windows_stream(spark: SparkSession, ref: TableRef, cfg: ScoreConfig) -> DataFrame:
    reader = spark.readStream.format("delta").option("maxFilesPerTrigger",
                                                     str(cfg.files_per_batch))
    stream = reader.load(ref.location) if ref.is_path else reader.table(ref.text)
    if cfg.category:
        stream = stream.filter(F.col("category") == F.lit(cfg.category))
    return stream.select("window_id", "category", "n_tokens", "input_ids")


def _unscored(spark: SparkSession, batch: DataFrame, scores_ref: TableRef,
              rejects_ref: TableRef, scorer_id: str) -> DataFrame:
    done = (scores_ref.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id))
            .select("window_id")
            .unionByName(rejects_ref.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id))
                         .select("window_id")))
    todo = batch.join(done, "window_id", "left_anti")
    partitions = max(1, spark.sparkContext.defaultParallelism)
    return todo.repartition(partitions)


def _checkpoint(spark: SparkSession, scores_ref: TableRef, windows_ref: TableRef,
                scorer_id: str, category: str) -> str:
    """Stream progress lives beside the scores table's data, one folder per (scorer, windows
    table, category filter); the leading underscore keeps Delta's VACUUM away from it."""
    location = scores_ref.location if scores_ref.is_path else \
        scores_ref.delta_table(spark).detail().collect()[0]["location"]
    source = hashlib.sha256(f"{windows_ref}\x1f{category}".encode()).hexdigest()[:12]
    return f"{location.rstrip('/')}/_longattn_checkpoints/{scorer_id}-{source}"


def _scored_count(spark: SparkSession, ref: TableRef, scorer_id: str) -> int:
    return ref.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id)).count()


def _windows_count(spark: SparkSession, ref: TableRef, cfg: ScoreConfig) -> int:
    frame = ref.read(spark)
    if cfg.category:
        frame = frame.filter(F.col("category") == F.lit(cfg.category))
    return frame.count()


class _Progress:
    """A rich progress line for local runs (windows scored so far)."""

    def __init__(self, enabled: bool) -> None:
        self._progress = None
        if enabled:
            from rich.progress import (
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                      TimeElapsedColumn(), transient=True)
            self._task = self._progress.add_task("scoring", total=None)
            self._progress.start()

    def update(self, summary: ScoreSummary) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=(
                f"scored {summary.scored:,} windows in {summary.micro_batches} commits, "
                f"rejected {sum(summary.rejected.values()):,}"))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def print_summary(summary: ScoreSummary, cfg: ScoreConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"score {cfg.windows} -> {cfg.table}", show_header=False)
    rows = [
        ("scorer_id", summary.scorer_id),
        ("seq_len / min_distance", f"{summary.seq_len} / {summary.min_distance}"),
        ("windows in table", f"{summary.windows_total:,}"),
        ("already scored (skipped)", f"{summary.already_scored:,}"),
        ("scored now", f"{summary.scored:,}"),
        ("rejected", f"{sum(summary.rejected.values()):,}"),
        *[(f"  {reason}", f"{n:,}") for reason, n in sorted(summary.rejected.items())],
        ("commits", f"{summary.micro_batches}"),
        ("seconds", f"{summary.seconds:.1f}"),
        ("windows/s", f"{summary.windows_per_second:,.2f}"),
        ("tokens/s", f"{summary.tokens_per_second:,.0f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
