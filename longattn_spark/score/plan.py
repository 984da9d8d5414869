"""The score job's driver-side decisions, before any task: the options, the model against the
windows, the tokenizer check, and for each method a ``ScorePlan`` (the scorer's identity, its
executor settings, the UDF and the method's own columns of a scores row).

Before any task: the model folder's tokenizer (when it has one) must be the windows'
tokenizer (``--allow-tokenizer-mismatch`` overrides); without one, the windows' tokenizer is
recorded with the scorer. ``--method prolong`` plans in ``longattn_spark.score.prolong_udf``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longattn_spark.config import ScoreConfig
from longattn_spark.errors import ConfigError, InputError, TableError
from longattn_spark.score.model_files import ModelLocation
from longattn_spark.score.schema import LONGATTN_OUT
from longattn_spark.score.summary import ScoreSummary
from longattn_spark.score.udf import ArrowFn, ScorerSettings, score_batches
from longattn_spark.tables import PROLONG_COMPONENTS, TableRef


def validate_score_config(cfg: ScoreConfig) -> None:
    if not cfg.model:
        raise ConfigError("--model is required: a folder with config.json and safetensors")
    if cfg.method not in ("longattn", "prolong"):
        raise ConfigError(f"--method {cfg.method!r}: use longattn or prolong")
    if cfg.method == "prolong":
        from longattn_spark.scoring.prolong import checked_settings

        checked_settings(cfg.segment_size, cfg.pairs, cfg.threshold)
    elif cfg.windows_tokenizer:
        raise ConfigError("--windows-tokenizer is for --method prolong (LongAttn scores the "
                          "window's ids and needs the windows' tokenizer in the model)")
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
    if not TableRef(cfg.table).is_path and not cfg.checkpoint_location:
        raise ConfigError(f"--table {cfg.table} is a table name (metastore / Unity Catalog), "
                          f"and a managed table's storage is not for other files: pass "
                          f"--checkpoint-location, a folder for the score stream's progress "
                          f"(e.g. /Volumes/<catalog>/<schema>/<volume>/checkpoints)")


def needs_classic_session(remote: str) -> str:
    """The one line a score run on Spark Connect gets, before any work."""
    return (f"score needs a classic Spark session (a dedicated GPU cluster: spark-submit, or "
            f"Databricks dedicated access mode), not Spark Connect ({remote}): it reads the "
            f"model through the driver's JVM and takes GPUs through a stage-level "
            f"ResourceProfile; run ingest, select, export and report on Spark Connect")


def check_tokenizer(spark: SparkSession, cfg: ScoreConfig, window_tokenizers: list[str],
                    summary: ScoreSummary, still_to_score: Callable[[], list[str]]
                    ) -> dict:
    """The tokenizer-model check (before any task); returns what to record with the scorer.

    The model folder's tokenizer (when it has a tokenizer.json) must be the one that cut the
    windows still to score, or the job fails naming both identities, unless
    ``--allow-tokenizer-mismatch``. Without a tokenizer in the model folder, a warning."""
    from longattn_spark.ingest.tokenize import tokenizer_identity

    model_tokenizer = tokenizer_identity(spark, cfg.model)
    record = {"model": model_tokenizer, "windows": sorted(window_tokenizers)}
    if model_tokenizer is None:
        seen = ", ".join(record["windows"]) or "none"
        print(f"warning: --model {cfg.model} has no tokenizer.json, so the windows' tokenizer "
              f"cannot be checked against the model's; recorded with the scorer: the windows' "
              f"tokenizer {seen}", flush=True)
        summary.tokenizer_check = f"not checked (no tokenizer in the model); windows: {seen}"
        return {**record, "check": "model_has_no_tokenizer"}
    if all(t == model_tokenizer for t in window_tokenizers):
        summary.tokenizer_check = f"{model_tokenizer} (model = windows)"
        return {**record, "check": "match"}
    pending = sorted(t for t in still_to_score() if t != model_tokenizer)
    if not pending:  # the other tokenizers' windows were all scored by an earlier run
        summary.tokenizer_check = f"{model_tokenizer} (model = windows still to score)"
        return {**record, "check": "match"}
    if not cfg.allow_tokenizer_mismatch:
        raise InputError(f"tokenizer mismatch: --model {cfg.model} has tokenizer "
                         f"{model_tokenizer}, but --windows {cfg.windows} holds windows to score "
                         f"cut by {', '.join(pending)}; re-ingest with the model's tokenizer, or "
                         f"pass --allow-tokenizer-mismatch")
    print(f"warning: scoring windows cut by {', '.join(pending)} with a model whose tokenizer is "
          f"{model_tokenizer} (--allow-tokenizer-mismatch)", flush=True)
    summary.tokenizer_check = (f"MISMATCH allowed: model {model_tokenizer}, windows "
                               f"{', '.join(pending)}")
    return {**record, "check": "mismatch_allowed"}


def unscored_tokenizers(spark: SparkSession, windows_ref: TableRef, scores_ref: TableRef,
                        rejects_ref: TableRef, scorer_id: str, cfg: ScoreConfig) -> list[str]:
    """The tokenizers of the windows this scorer has not scored (nor rejected) yet."""
    frame = windows_ref.read(spark)
    if cfg.category:
        frame = frame.filter(F.col("category") == F.lit(cfg.category))
    for ref in (scores_ref, rejects_ref):
        if ref.exists(spark):
            done = ref.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id))
            frame = frame.join(done.select("window_id"), "window_id", "left_anti")
    return [r["tokenizer"] for r in frame.select("tokenizer").distinct().collect()
            if r["tokenizer"] is not None]


@dataclass
class ScorePlan:
    """What the driver decided for one method before any task: the scorer's identity, its
    executor settings, the UDF and the method's own columns of a scores row."""

    scorer_id: str
    seq_len: int | None
    min_distance: int | None
    summary: ScoreSummary
    settings: object
    describe: dict                      # the scorer's configuration, for the table property
    tokenizer_record: dict
    make_udf: Callable[[], ArrowFn]
    out_schema: T.StructType
    score_columns: Callable[[DataFrame], DataFrame]


def plan_longattn(spark: SparkSession, cfg: ScoreConfig, location: ModelLocation, checkpoint,
                  sizes: list[int], window_tokenizers: list[str], windows_ref: TableRef,
                  scores_ref: TableRef, rejects_ref: TableRef) -> ScorePlan:
    seq_len, expected_tokens = _sequence_length(cfg, sizes)
    settings = scorer_settings(spark, cfg, location)
    driver_scorer = _driver_scorer(checkpoint, settings)
    driver_scorer.bos_id  # noqa: B018 - fails here, before any task, without a BOS id
    driver_scorer.check_seq_len(seq_len)
    scorer_id = driver_scorer.scorer_id_for(seq_len)
    min_distance = driver_scorer.min_distance_for(seq_len)
    summary = ScoreSummary(scorer_id=scorer_id, seq_len=seq_len, min_distance=min_distance)
    tokenizer_record = check_tokenizer(spark, cfg, window_tokenizers, summary, lambda: (
        unscored_tokenizers(spark, windows_ref, scores_ref, rejects_ref, scorer_id, cfg)))

    def score_columns(frame: DataFrame) -> DataFrame:
        return (frame.withColumn("seq_len", F.lit(seq_len))
                .withColumn("min_distance", F.lit(min_distance))
                .withColumn("method", F.lit("longattn"))
                .withColumn("score", F.lit(None).cast("double"))
                .withColumn("prolong", F.lit(None).cast(PROLONG_COMPONENTS)))

    return ScorePlan(
        scorer_id=scorer_id, seq_len=seq_len, min_distance=min_distance, summary=summary,
        settings=settings, describe=driver_scorer.config_summary(),
        tokenizer_record=tokenizer_record,
        make_udf=lambda: score_batches(settings, seq_len, expected_tokens, cfg.batch_size),
        out_schema=LONGATTN_OUT, score_columns=score_columns)


def windows_facts(spark: SparkSession, windows_ref: TableRef, cfg: ScoreConfig
                  ) -> tuple[list[int], list[str]]:
    """(the window sizes in the table, the tokenizers of the windows to score), in one pass."""
    frame = windows_ref.read(spark)
    tokenizer = F.col("tokenizer") if not cfg.category else \
        F.when(F.col("category") == F.lit(cfg.category), F.col("tokenizer"))
    row = frame.agg(F.collect_set("n_tokens").alias("sizes"),
                    F.collect_set(tokenizer).alias("tokenizers")).collect()[0]
    return sorted(row["sizes"] or []), sorted(row["tokenizers"] or [])


def _sequence_length(cfg: ScoreConfig, sizes: list[int]) -> tuple[int, int | None]:
    """(L, the window length every window must have or None): --seq-len, else the table's
    window size (+1 for BOS is not added: L = W scores BOS + the first W-1 tokens)."""
    if cfg.seq_len:
        return cfg.seq_len, None
    if not sizes:
        raise TableError(f"--windows {cfg.windows} holds no windows")
    if len(sizes) > 1:
        raise ConfigError(f"--windows {cfg.windows} holds windows of several sizes "
                          f"({', '.join(map(str, sorted(sizes)))}); pass --seq-len")
    return sizes[0], sizes[0]


def scorer_settings(spark: SparkSession, cfg: ScoreConfig, location: ModelLocation
                    ) -> ScorerSettings:
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if _executors_have_gpus(spark, cfg.device) else "float32"
    return ScorerSettings(location=location, device=cfg.device, dtype=dtype,
                          min_distance=cfg.min_distance or None,
                          rope_theta=cfg.rope_theta or None, kernel=cfg.kernel,
                          allow_pickle=cfg.allow_pickle, threads=_threads_per_task(spark),
                          dtype_for_gpu=cfg.dtype == "auto" and dtype != "float32")


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


def _driver_scorer(checkpoint, settings: ScorerSettings):
    """The scorer as the driver knows it, from config.json and the headers (no weights): its
    scorer_id, summary, BOS id and limits; it fails here, before any task, on a bad model."""
    from longattn_spark.scoring import Layer0Scorer

    return Layer0Scorer.describing(checkpoint, dtype=settings.dtype,
                                   min_distance=settings.min_distance,
                                   rope_theta=settings.rope_theta)

