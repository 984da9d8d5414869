"""The score job: windows table -> per-window scores -> scores table.

``--method longattn`` (default): layer-0 attention scores (DS, variance). ``--method
prolong``: ProLong's LDS with the whole causal LM (``longattn_spark.prolong_udf`` holds its
driver-side description, tokenizer decision and executor UDF; ``ScorePlan`` is what each
method hands to the common streaming / MERGE / rejects machinery below).

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
  (``TaskContext.resources()["gpu"]``), else CUDA if present, else the CPU; a task given a GPU
  that finds no usable CUDA fails (it never falls back to the CPU with a dtype chosen for GPUs).
- The model is read from shared storage (``longattn_spark.model_files``): the driver reads
  config.json, the index and the safetensors headers and hashes the layer-0 tensor bytes as
  they stream past (the scorer_id), copying nothing; executors fetch only the needed files
  into a per-executor cache, or read a local / mounted folder in place.
- Before any task: the model folder's tokenizer (when it has one) must be the windows'
  tokenizer (``--allow-tokenizer-mismatch`` overrides); without one, the windows' tokenizer is
  recorded with the scorer.
- Each row the UDF returns says what the executor ran (device type, kernel, dtype, and a note
  when the Triton kernel fell back to torch). The driver counts it per micro-batch, prints
  fallbacks, shows both in the summary, and records every combination seen in the scorer's
  table property ``longattn.scorer.<scorer_id>`` (``executors``) before the commit that holds
  its rows.
- The scores table is partitioned by ``scorer_id`` and each MERGE is restricted to its own
  partition, so runs with different models can write one table at the same time.
- The stream checkpoint lives beside a path scores table, or under ``--checkpoint-location``
  (required when the scores table is a metastore / Unity Catalog name).
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

from longattn_spark import paths
from longattn_spark.config import LongAttnConfig, ScoreConfig, default_rejects_table
from longattn_spark.errors import ConfigError, InputError, TableError
from longattn_spark.model_files import ModelLocation, describe_model, locate_model
from longattn_spark.session import arrow_batch_rows, get_spark, on_cluster
from longattn_spark.tables import (
    IDS_OUT_OF_VOCAB,
    PROLONG_COMPONENTS,
    SCORE_REJECTS,
    SCORES,
    WRONG_LENGTH,
    TableRef,
    ensure_table,
    materialize,
    merge_new_rows,
    set_properties,
    table_properties,
)


OUT_SCHEMA = T.StructType([
    T.StructField("window_id", T.StringType(), False),
    T.StructField("category", T.StringType()),
    T.StructField("reason", T.StringType()),     # null: scored
    T.StructField("detail", T.StringType()),
    T.StructField("ds", T.DoubleType()),
    T.StructField("variance", T.DoubleType()),
    T.StructField("ds_heads", T.ArrayType(T.DoubleType(), False)),
    T.StructField("var_heads", T.ArrayType(T.DoubleType(), False)),
    # What the executor ran: device type (cpu, cuda), kernel (torch, triton), compute dtype,
    # and the scorer's note when the Triton kernel fell back to torch (null otherwise).
    T.StructField("device", T.StringType()),
    T.StructField("kernel", T.StringType()),
    T.StructField("dtype", T.StringType()),
    T.StructField("kernel_note", T.StringType()),
])
_OUT_ARROW = pa.schema([
    ("window_id", pa.string()), ("category", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()), ("ds", pa.float64()), ("variance", pa.float64()),
    ("ds_heads", pa.list_(pa.field("element", pa.float64(), False))),
    ("var_heads", pa.list_(pa.field("element", pa.float64(), False))),
    ("device", pa.string()), ("kernel", pa.string()), ("dtype", pa.string()),
    ("kernel_note", pa.string()),
])
RUN_FIELDS = ("device", "kernel", "dtype", "kernel_note")


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
    dtype_for_gpu: bool = False  # dtype auto-chosen for GPUs: a task on the CPU must not use it


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
    #: windows scored per "device/kernel/dtype" the executors reported
    ran: dict[str, int] = field(default_factory=dict)
    #: windows scored by the torch kernel after the Triton kernel fell back, and why
    kernel_fallbacks: int = 0
    fallback_notes: list[str] = field(default_factory=list)
    #: the tokenizer check: match, mismatch allowed, or no tokenizer in the model folder
    tokenizer_check: str = ""

    @property
    def windows_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.windows_per_second * self.seq_len


# --- executor side ---------------------------------------------------------------------------

_SCORERS: dict[tuple, object] = {}


def cached_scorer(settings: ScorerSettings, device: str):
    """The scorer for ``settings`` on ``device``, built once per Python worker process (an
    updated model, with other file sizes or mtimes, replaces its older version)."""
    key = (settings, device)
    if key not in _SCORERS:
        import torch

        from longattn_spark.scoring import Layer0Scorer

        for stale in [k for k in _SCORERS if k[0].location.model == settings.location.model
                      and k[0].location != settings.location]:
            del _SCORERS[stale]
        torch.set_num_threads(settings.threads)
        _SCORERS[key] = Layer0Scorer.from_pretrained(
            settings.location.executor_path(), device=device, dtype=settings.dtype,
            min_distance=settings.min_distance, rope_theta=settings.rope_theta,
            allow_pickle=settings.allow_pickle, kernel=settings.kernel)
    return _SCORERS[key]


def task_device(requested: str, dtype_for_gpu: bool = False, dtype: str = "") -> str:
    """The device this task scores on.

    ``cpu``: the CPU, whatever Spark assigned. A task Spark gave a GPU
    (``TaskContext.resources()["gpu"]``) scores on that GPU or fails when torch finds no usable
    CUDA device for it. ``auto`` without a GPU from Spark: CUDA if present, else the CPU, unless
    the dtype was chosen for GPUs (``dtype_for_gpu``): then it fails rather than run a GPU
    dtype on the CPU. ``cuda``/``cuda:N``: that device, or an error without CUDA."""
    if requested == "cpu":
        return "cpu"
    import torch
    from pyspark import TaskContext

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    addresses = list(gpus.addresses) if gpus is not None else []
    if addresses:
        address = addresses[0]
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not address.isdigit() or int(address) >= count:
            raise RuntimeError(
                f"Spark gave this task GPU {', '.join(addresses)}, but torch finds no usable "
                f"CUDA device {address} ({cuda_diagnosis()}); the task does not fall back to "
                f"the CPU. Fix the executors' CUDA setup, or pass --device cpu to score on "
                f"CPUs.")
        return requested if requested.startswith("cuda:") else f"cuda:{address}"
    if requested != "auto":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {requested}: this task finds no usable CUDA device "
                               f"({cuda_diagnosis()})")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if dtype_for_gpu:
        raise RuntimeError(
            f"--dtype auto chose {dtype or 'a GPU dtype'} because the executors have GPUs, but "
            f"this task was given no GPU and finds no usable CUDA device ({cuda_diagnosis()}); "
            f"it does not fall back to the CPU. Pass --task-gpus 1 so that every scoring task "
            f"gets a GPU, or --device cpu to score on CPUs.")
    return "cpu"


def cuda_diagnosis() -> str:
    import torch

    available = torch.cuda.is_available()
    return (f"torch {torch.__version__} built for CUDA {torch.version.cuda}, "
            f"cuda.is_available() {available}, "
            f"device_count {torch.cuda.device_count() if available else 0}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}")


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
    # What ran, per row: the kernel can switch to torch for good in the middle of a batch.
    kernels = np.full(len(window_ids), scorer.kernel, dtype=object)
    notes = np.full(len(window_ids), scorer.kernel_note or None, dtype=object)
    for begin in range(0, to_score.shape[0], batch_size):
        chunk = torch.from_numpy(to_score[begin:begin + batch_size])
        out = score_with_clear_oom(scorer, chunk, batch_size, seq_len)
        target = score_rows[begin:begin + batch_size]
        ds[target], variance[target] = out.ds, out.variance
        ds_heads[target], var_heads[target] = out.ds_heads, out.var_heads
        kernels[target], notes[target] = scorer.kernel, scorer.kernel_note or None
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
        pa.array([scorer.device.type] * len(window_ids), pa.string()),
        pa.array(kernels.tolist(), pa.string()),
        pa.array([str(scorer.dtype).removeprefix("torch.")] * len(window_ids), pa.string()),
        pa.array(notes.tolist(), pa.string()),
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


ArrowFn = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


def score_batches(settings: ScorerSettings, seq_len: int, expected_tokens: int | None,
                  batch_size: int) -> ArrowFn:
    """The mapInArrow function of the score job."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        device = task_device(settings.device, settings.dtype_for_gpu, settings.dtype)
        scorer = cached_scorer(settings, device)
        for batch in batches:
            yield score_record_batch(batch, scorer, seq_len, expected_tokens, batch_size)

    return run


# --- driver side -----------------------------------------------------------------------------

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
    validate_score_config(cfg)
    windows_ref = TableRef(cfg.windows)
    scores_ref = TableRef(cfg.table)
    rejects_ref = TableRef(cfg.rejects_table or default_rejects_table(cfg.table))
    # The model first: its errors (no folder, no config.json, bad headers, not a causal LM,
    # pickled weights) come before any Spark job, and nothing but small files and a streamed
    # hash of weight bytes is read here (layer 0 for LongAttn, every tensor for ProLong).
    prolong = cfg.method == "prolong"
    location = locate_model(spark, cfg.model, whole=prolong)
    if prolong:
        from longattn_spark import prolong_udf

        described = prolong_udf.describe_prolong_model(spark, location,
                                                       allow_pickle=cfg.allow_pickle)
    else:
        checkpoint = describe_model(spark, location, allow_pickle=cfg.allow_pickle)
    if not windows_ref.exists(spark):
        raise TableError(f"--windows {cfg.windows}: no such table (run ingest first)")
    sizes, window_tokenizers = _windows_facts(spark, windows_ref, cfg)
    if prolong:
        plan = prolong_udf.plan_prolong(spark, cfg, location, described, sizes,
                                        window_tokenizers, windows_ref, scores_ref, rejects_ref)
    else:
        plan = _plan_longattn(spark, cfg, location, checkpoint, sizes, window_tokenizers,
                              windows_ref, scores_ref, rejects_ref)
    scorer_id, seq_len, min_distance = plan.scorer_id, plan.seq_len, plan.min_distance
    summary, settings = plan.summary, plan.settings
    ensure_table(spark, scores_ref, SCORES)
    ensure_table(spark, rejects_ref, SCORE_REJECTS)
    record = _scorer_record(spark, scores_ref, plan.describe, cfg, settings, location,
                            scorer_id, seq_len, min_distance, plan.tokenizer_record)
    property_key = f"longattn.scorer.{scorer_id}"
    set_properties(spark, scores_ref, {property_key: json.dumps(record, sort_keys=True)})
    executors_seen = {_run_key(e) for e in record["executors"]}

    done_before = _scored_count(spark, scores_ref, scorer_id)
    profile = gpu_resource_profile(spark, cfg.task_gpus)
    started = time.perf_counter()
    reporter = _Progress(progress and not on_cluster())

    def commit(batch: DataFrame, batch_id: int) -> None:
        udf = plan.make_udf()
        if udf_wrapper is not None:
            udf = udf_wrapper(udf)
        todo = _unscored(spark, batch, scores_ref, rejects_ref, scorer_id)
        # Materialized, not cached: the plan reads the two tables written below, and Spark
        # drops cached data depending on a table when it is written (scoring twice); on a
        # cluster it goes to reliable storage, so losing an executor loses no scored rows.
        out, release = materialize(spark, todo.mapInArrow(udf, plan.out_schema,
                                                          profile=profile),
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
            scores = (plan.score_columns(out.filter(F.col("reason").isNull()))
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
        _count_runs(summary, ran, batch_id)
        reporter.update(summary)

    stream = _windows_stream(spark, windows_ref, cfg)
    checkpoint_dir = _checkpoint(spark, cfg, scores_ref, windows_ref, scorer_id)
    with arrow_batch_rows(spark, max(cfg.batch_size, 16)):
        query = (stream.writeStream.foreachBatch(commit)
                 .option("checkpointLocation", checkpoint_dir)
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


def _run_key(run: dict) -> tuple:
    return tuple(run.get(f) for f in RUN_FIELDS)


def _count_runs(summary: ScoreSummary, ran: dict[tuple, int], batch_id: int) -> None:
    """Add one micro-batch's executor reports to the summary; print new fallback notes."""
    for (device, kernel, dtype, note), n in sorted(ran.items(), key=str):
        name = f"{device}/{kernel}/{dtype}"
        summary.ran[name] = summary.ran.get(name, 0) + n
        if note:
            summary.kernel_fallbacks += n
            if note not in summary.fallback_notes:
                summary.fallback_notes.append(note)
                print(f"kernel fallback on the executors (micro-batch {batch_id}, {n} windows): "
                      f"{note}", flush=True)


def _scorer_record(spark: SparkSession, scores_ref: TableRef, described: dict,
                   cfg: ScoreConfig, settings, location: ModelLocation,
                   scorer_id: str, seq_len: int | None, min_distance: int | None,
                   tokenizer: dict) -> dict:
    """The ``longattn.scorer.<id>`` property: the scorer's configuration (``described``: from
    config.json and the headers), what was asked for, the tokenizers, and what the executors
    ran so far (kept from earlier runs; the windows' tokenizers are merged with earlier runs'
    too)."""
    summary = dict(described)
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
    return {**summary, "method": cfg.method, "scorer_id": scorer_id, "seq_len": seq_len,
            "min_distance": min_distance, "model": cfg.model, "model_folder": location.folder,
            "requested": {"device": cfg.device, "kernel": cfg.kernel, "dtype": cfg.dtype},
            "dtype": settings.dtype, "tokenizer": tokenizer, "executors": executors}


def _check_tokenizer(spark: SparkSession, cfg: ScoreConfig, window_tokenizers: list[str],
                     summary: ScoreSummary, unscored_tokenizers: Callable[[], list[str]]
                     ) -> dict:
    """The tokenizer-model check (before any task); returns what to record with the scorer.

    The model folder's tokenizer (when it has a tokenizer.json) must be the one that cut the
    windows still to score, or the job fails naming both identities, unless
    ``--allow-tokenizer-mismatch``. Without a tokenizer in the model folder, a warning."""
    from longattn_spark.tokenize import tokenizer_identity

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
    pending = sorted(t for t in unscored_tokenizers() if t != model_tokenizer)
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


def _unscored_tokenizers(spark: SparkSession, windows_ref: TableRef, scores_ref: TableRef,
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


def _plan_longattn(spark: SparkSession, cfg: ScoreConfig, location: ModelLocation, checkpoint,
                   sizes: list[int], window_tokenizers: list[str], windows_ref: TableRef,
                   scores_ref: TableRef, rejects_ref: TableRef) -> ScorePlan:
    seq_len, expected_tokens = _sequence_length(cfg, sizes)
    settings = _scorer_settings(spark, cfg, location)
    driver_scorer = _driver_scorer(checkpoint, settings)
    driver_scorer.bos_id  # noqa: B018 - fails here, before any task, without a BOS id
    driver_scorer.check_seq_len(seq_len)
    scorer_id = driver_scorer.scorer_id_for(seq_len)
    min_distance = driver_scorer.min_distance_for(seq_len)
    summary = ScoreSummary(scorer_id=scorer_id, seq_len=seq_len, min_distance=min_distance)
    tokenizer_record = _check_tokenizer(spark, cfg, window_tokenizers, summary, lambda: (
        _unscored_tokenizers(spark, windows_ref, scores_ref, rejects_ref, scorer_id, cfg)))

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
        out_schema=OUT_SCHEMA, score_columns=score_columns)


def _windows_facts(spark: SparkSession, windows_ref: TableRef, cfg: ScoreConfig
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


def _scorer_settings(spark: SparkSession, cfg: ScoreConfig, location: ModelLocation
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
        ("tokenizer", summary.tokenizer_check or "-"),
        ("ran on the executors", ", ".join(f"{name}: {n:,}" for name, n in
                                           sorted(summary.ran.items())) or "-"),
        ("kernel fallbacks (windows)", f"{summary.kernel_fallbacks:,}"
         + (f" ({'; '.join(summary.fallback_notes)})" if summary.fallback_notes else "")),
        ("seconds", f"{summary.seconds:.1f}"),
        ("windows/s", f"{summary.windows_per_second:,.2f}"),
        ("tokens/s", f"{summary.tokens_per_second:,.0f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
