"""The score job's driver-side checks shared by every method, before any task: the options
(then the method's own, ``ScorerMethod.validate``), the run's tables, the windows table's
facts, and the tokenizer check.

The model folder's tokenizer (when it has one) must be the windows' tokenizer
(``--allow-tokenizer-mismatch`` overrides); without one, the windows' tokenizer is recorded with
the scorer. Each method plans the rest itself (``longattn_spark.scorers``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from longattn_spark.config import ScoreConfig, default_rejects_table
from longattn_spark.errors import ConfigError, InputError
from longattn_spark.score.summary import ScoreSummary
from longattn_spark.scorers import get_method
from longattn_spark.tables.refs import TableRef

if TYPE_CHECKING:
    from longattn_spark.scorers.base import ScorerMethod


@dataclass(frozen=True)
class ScoreTables:
    """The tables of a score run: the windows read, the scores and rejects written."""

    windows: TableRef
    scores: TableRef
    rejects: TableRef

    @classmethod
    def of(cls, cfg: ScoreConfig) -> ScoreTables:
        return cls(TableRef(cfg.windows), TableRef(cfg.table),
                   TableRef(cfg.rejects_table or default_rejects_table(cfg.table)))


def validate_score_config(cfg: ScoreConfig) -> ScorerMethod:
    """The options every method shares, then the method's own (built from ``--option`` and
    its aliases: an unknown option or a bad value is one line here); returns the method."""
    method = get_method(cfg.method)
    if not cfg.model and method.needs_model:
        raise ConfigError(f"--model is required for --method {cfg.method}: a folder with "
                          f"config.json and safetensors")
    method.validate(cfg, method.options(cfg))
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
                          "from the checkpoint (every method runs transformers' own classes)")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"--device {cfg.device!r}: use auto, cpu, cuda or cuda:N")
    if not TableRef(cfg.table).is_path and not cfg.checkpoint_location:
        raise ConfigError(f"--table {cfg.table} is a table name (metastore / Unity Catalog), "
                          f"and a managed table's storage is not for other files: pass "
                          f"--checkpoint-location, a folder for the score stream's progress "
                          f"(e.g. /Volumes/<catalog>/<schema>/<volume>/checkpoints)")
    return method


def check_tokenizer(spark: SparkSession, cfg: ScoreConfig, window_tokenizers: list[str],
                    summary: ScoreSummary, still_to_score: Callable[[], list[str]]
                    ) -> dict:
    """The tokenizer-model check (before any task); returns what to record with the scorer.

    The model folder's tokenizer (when it has a tokenizer.json) must be the one that cut the
    windows still to score, or the job fails naming both identities, unless
    ``--allow-tokenizer-mismatch``. Without a tokenizer in the model folder, a warning."""
    from longattn_spark.tokenizer import tokenizer_identity

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


def windows_facts(spark: SparkSession, windows_ref: TableRef, cfg: ScoreConfig
                  ) -> tuple[list[int], list[str]]:
    """(the window sizes in the table, the tokenizers of the windows to score), in one pass."""
    frame = windows_ref.read(spark)
    tokenizer = F.col("tokenizer") if not cfg.category else \
        F.when(F.col("category") == F.lit(cfg.category), F.col("tokenizer"))
    row = frame.agg(F.collect_set("n_tokens").alias("sizes"),
                    F.collect_set(tokenizer).alias("tokenizers")).collect()[0]
    return sorted(row["sizes"] or []), sorted(row["tokenizers"] or [])
