"""``longattn-spark probe``: does the scorer separate natural windows from matched controls?

1. Before any Spark job: the options (kinds, per-category size, k < L/2 when L is known from
   the flags, the staging location) and the probe id, a hash of the windows table, the sample
   options and every score option that changes a score. A probe table holds one probe: one
   written by another probe or scorer is refused (its ``longattn.probe`` property says which).
2. Sample (``probe.sample``): the first ``--per-category`` windows of each category in seeded
   hash order, and twice as many donors.
3. Controls (``probe.controls``), built on the driver: the sample is small (per category a few
   hundred windows of W tokens), and each control is a few numpy slices, so building them costs
   milliseconds against seconds of scoring; a distributed build would cost a shuffle and a task
   launch per category for nothing.
4. Natural windows and controls go to a staging windows table (window_id
   ``<probe_id>/<kind>/<A's window_id>``, same tokenizer, W tokens) and are scored by the score
   stage itself (``score_windows``) into a staging scores table, with exactly the score options
   given: the same code, the same scorer_id as ``score`` with those flags.
5. Probe rows: the staging scores joined to the controls' provenance, with the selection score
   (LongAttn: ``select_ranked.sql`` with the natural sample's per-category statistics from
   ``category_stats.sql``, as select computes the LDS; other methods: their score), written by
   an insert-only MERGE on (probe_id, kind, window_id): a re-run adds nothing.
6. AUCs (``probe.results``) from the probe table's rows, printed and written as JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longattn_spark.config import LongAttnConfig, ProbeConfig, ScoreConfig
from longattn_spark.console import StepTimer
from longattn_spark.errors import ConfigError, TableError
from longattn_spark.probe.controls import (
    Control,
    build_controls,
    check_block,
    check_lengths,
    default_block,
    parse_kinds,
)
from longattn_spark.probe.results import NATURAL, ProbeRun, probe_results
from longattn_spark.probe.sample import CategorySample, sample_windows
from longattn_spark.sqlfiles import load_sql
from longattn_spark.stats import category_stats_frame
from longattn_spark.tables.refs import TableRef, table_properties
from longattn_spark.tables.schemas import PROBE, PROBE_SCORE_COLUMNS, WINDOWS
from longattn_spark.tables.writes import ensure_table, merge_new_rows, set_properties

PROPERTY = "longattn.probe"
#: score options that change where or how fast a score is computed, never its value
OPERATIONAL = ("windows", "table", "rejects_table", "category", "checkpoint_location",
               "batch_size", "device", "kernel", "files_per_batch", "task_gpus")


def score_signature(score: ScoreConfig) -> dict[str, Any]:
    """The score options that change a score (every one but the operational ones)."""
    return {k: v for k, v in sorted(dataclasses.asdict(score).items()) if k not in OPERATIONAL}


def probe_id_for(probe: ProbeConfig, score: ScoreConfig, kinds: tuple[str, ...],
                 windows_version: int | None = None) -> str:
    """Deterministic id of a probe run: same windows table (and Delta version), sample
    options, seed and score options, same id."""
    payload = json.dumps({"windows": str(TableRef(probe.windows)), "seed": probe.seed,
                          "windows_version": windows_version,
                          "per_category": probe.per_category, "kinds": list(kinds),
                          "shuffle_block": probe.shuffle_block, "alpha": probe.alpha,
                          "score": score_signature(score)}, sort_keys=True, default=str)
    return "probe-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def validate_probe_config(probe: ProbeConfig, score: ScoreConfig) -> tuple[str, ...]:
    """The kinds; one-line errors for every option that can be checked without Spark."""
    kinds = parse_kinds(probe.kinds)
    if probe.per_category < 2:
        raise ConfigError(f"--per-category {probe.per_category}: must be at least 2")
    if probe.bootstrap < 100:
        raise ConfigError(f"--bootstrap {probe.bootstrap}: must be at least 100")
    if not score.model:
        raise ConfigError("--model is required: a folder with config.json and safetensors")
    if score.seq_len and score.min_distance:
        check_lengths(score.seq_len, score.min_distance, score.seq_len)
    if probe.shuffle_block < 0:
        raise ConfigError(f"--shuffle-block {probe.shuffle_block}: must be >= 0")
    if probe.shuffle_block and score.min_distance and probe.shuffle_block >= score.min_distance:
        raise ConfigError(f"--shuffle-block {probe.shuffle_block}: must be < k = "
                          f"{score.min_distance}")
    if not TableRef(probe.table).is_path and not probe.staging:
        raise ConfigError(f"--table {probe.table} is a table name: pass --staging, a folder "
                          "for the probe's staging tables")
    TableRef(probe.windows)
    return kinds


def staging_location(probe: ProbeConfig, probe_id: str) -> str:
    base = probe.staging or TableRef(probe.table).location.rstrip("/") + "_staging"
    return f"{base.rstrip('/')}/{probe_id}"


def check_probe_table(spark: SparkSession, ref: TableRef, probe_id: str,
                      scorer_id: str | None = None) -> None:
    """Refuse a probe table holding another probe (or, once known, another scorer)."""
    if not ref.exists(spark):
        return
    text = table_properties(spark, ref).get(PROPERTY)
    if not text:
        return
    recorded = json.loads(text)
    if recorded.get("probe_id") != probe_id:
        raise TableError(
            f"--table {ref} holds probe {recorded.get('probe_id')} (method "
            f"{recorded.get('method')}, model {recorded.get('model')}, seed "
            f"{recorded.get('seed')}, windows version {recorded.get('windows_version')}); "
            f"this run is probe {probe_id}: use another --table")
    if scorer_id and recorded.get("scorer_id") not in (None, scorer_id):
        raise TableError(f"--table {ref} was written by scorer {recorded.get('scorer_id')}; "
                         f"this run scored with {scorer_id} (did the model change?): use "
                         f"another --table")


def run_probe_job(cfg: LongAttnConfig) -> ProbeRun:
    """``longattn-spark probe``."""
    from longattn_spark.probe.summary import print_probe, write_json
    from longattn_spark.session import get_spark, remote_url

    validate_probe_config(cfg.probe, cfg.score)
    if remote_url(cfg.spark):
        raise ConfigError(f"probe runs on a classic Spark session only (not yet tested over "
                          f"Spark Connect, {remote_url(cfg.spark)}); score, select and the "
                          f"other jobs run over Connect")
    spark = get_spark(cfg.spark, app_name="longattn-spark probe")
    run = probe(spark, cfg.probe, cfg.score)
    print_probe(run)
    if cfg.probe.json:
        write_json(run, cfg.probe.json)
    return run


def probe(spark: SparkSession, probe_cfg: ProbeConfig, score_cfg: ScoreConfig,
          progress: bool = True) -> ProbeRun:
    """Run a probe (see the module docstring) and return what it did and found."""
    from longattn_spark.score.job import score_windows

    kinds = validate_probe_config(probe_cfg, score_cfg)
    table = TableRef(probe_cfg.table)
    windows = TableRef(probe_cfg.windows)
    if not windows.exists(spark):
        raise TableError(f"--windows {probe_cfg.windows}: no such table (run ingest first)")
    windows_version = windows.version(spark)
    probe_id = probe_id_for(probe_cfg, score_cfg, kinds, windows_version)
    check_probe_table(spark, table, probe_id)
    timer = StepTimer()
    run = ProbeRun(probe_id=probe_id, table=str(table), kinds=kinds)
    ensure_table(spark, table, PROBE)

    with timer.step("sample"):
        samples = sample_windows(spark, windows, probe_cfg.per_category, probe_cfg.seed)
    sizes = {len(w.source.input_ids) for s in samples.values() for w in s.donors}
    if not sizes:
        raise TableError(f"--windows {probe_cfg.windows} holds no windows")
    if len(sizes) > 1:
        raise TableError(f"--windows {probe_cfg.windows}: the sampled windows have several "
                         f"sizes ({', '.join(map(str, sorted(sizes)))}); a probe compares "
                         "windows of one size")
    width = sizes.pop()
    seq_len = score_cfg.seq_len or width
    min_distance = score_cfg.min_distance or seq_len // 4
    check_lengths(seq_len, min_distance, width)
    block = probe_cfg.shuffle_block or default_block(width, min_distance)
    check_block(block, width, min_distance)
    run.seq_len, run.min_distance, run.window_size, run.block = (seq_len, min_distance,
                                                                  width, block)

    with timer.step("build controls"):
        staged, provenance = _staged_rows(samples, kinds, probe_cfg.seed, seq_len,
                                          min_distance, block, probe_id, run)
        staging = staging_location(probe_cfg, probe_id)
        staging_windows = TableRef(f"{staging}/windows")
        _stage_windows(spark, staging_windows,
                       spark.createDataFrame(staged).select(*WINDOWS.column_names))

    with timer.step("score"):
        staging_scores = f"{staging}/scores"
        summary = score_windows(spark, dataclasses.replace(
            score_cfg, windows=str(staging_windows), table=staging_scores,
            rejects_table=f"{staging}/scores_rejects", category="", checkpoint_location=""),
            progress=progress)
    run.scorer_id, run.scored = summary.scorer_id, summary.scored
    run.already_scored, run.rejected = summary.already_scored, dict(summary.rejected)
    check_probe_table(spark, table, probe_id, run.scorer_id)

    with timer.step("write"):
        rows = _probe_rows(spark, TableRef(staging_scores), staging_windows, provenance,
                           probe_id, run.scorer_id, probe_cfg.alpha)
        record = {"probe_id": probe_id, "scorer_id": run.scorer_id, "seed": probe_cfg.seed,
                  "model": score_cfg.model, "method": score_cfg.method,
                  "windows": str(windows), "windows_version": windows_version,
                  "kinds": list(kinds),
                  "per_category": probe_cfg.per_category, "seq_len": seq_len,
                  "min_distance": min_distance, "window_size": width, "shuffle_block": block,
                  "alpha": probe_cfg.alpha, "bootstrap": probe_cfg.bootstrap,
                  "score": score_signature(score_cfg),
                  "skipped": run.skipped, "staging": staging}
        set_properties(spark, table, {PROPERTY: json.dumps(record, sort_keys=True)})
        metrics = merge_new_rows(spark, table, PROBE, rows, {"probe_id": probe_id})
        run.rows_written = metrics["numTargetRowsInserted"]

    with timer.step("auc"):
        probe_rows = read_probe_rows(spark, table, probe_id)
        run.method = next((r.get("method") for r in probe_rows if r.get("method")), "") or \
            score_cfg.method
        run.results = probe_results(probe_rows, kinds, run.skipped, probe_cfg.seed,
                                    PROBE_SCORE_COLUMNS, probe_cfg.bootstrap)
    run.seconds, run.step_seconds = timer.seconds, dict(timer.step_seconds)
    return run


def _stage_windows(spark: SparkSession, ref: TableRef, rows: DataFrame) -> None:
    """Write the staging windows by the insert-only MERGE: a re-run, a resumed run or two
    runs of the same probe at once never duplicate a staging window."""
    ensure_table(spark, ref, WINDOWS)
    merge_new_rows(spark, ref, WINDOWS, rows)


def read_probe_rows(spark: SparkSession, table: TableRef, probe_id: str) -> list[dict]:
    """The rows of one probe, without their tokens (what the AUCs are computed from)."""
    frame = table.read(spark).filter(F.col("probe_id") == F.lit(probe_id)).drop("input_ids")
    return [r.asDict(recursive=True) for r in frame.collect()]


def probe_record(spark: SparkSession, table: TableRef) -> dict[str, Any]:
    """The ``longattn.probe`` property of a probe table (its probe's options and skips)."""
    text = table_properties(spark, table).get(PROPERTY)
    if not text:
        raise TableError(f"{table} is not a probe table (no {PROPERTY} property)")
    return json.loads(text)


def _staged_rows(samples: dict[str, CategorySample], kinds: tuple[str, ...], seed: int,
                 seq_len: int, min_distance: int, block: int, probe_id: str, run: ProbeRun
                 ) -> tuple[pa.Table, list[dict]]:
    """The staging windows (natural and controls, as windows rows) and each row's
    provenance (kind, A, other windows, param), counting what was built and skipped."""
    windows: list[dict] = []
    provenance: list[dict] = []
    for category, sample in samples.items():
        run.natural[category] = len(sample.natural)
        if len(sample.natural) < 2:
            run.skipped[category] = {k: f"the category has {sample.windows_in_table} window(s); "
                                        "a probe needs at least 2" for k in kinds}
            continue
        by_id = {w.source.window_id: w for w in sample.natural}
        controls, skipped = build_controls([w.source for w in sample.natural],
                                           [w.source for w in sample.donors], kinds, seed,
                                           seq_len, min_distance, block)
        if skipped:
            run.skipped[category] = skipped
        naturals = [Control(NATURAL, w.source.window_id, (), None, w.source.input_ids)
                    for w in sample.natural]
        for c in naturals + controls:
            a = by_id[c.window_id]
            scored_id = f"{probe_id}/{c.kind}/{c.window_id}"
            windows.append({
                "window_id": scored_id, "doc_id": a.source.doc_id, "category": category,
                "window_index": a.window_index, "token_start": a.token_start,
                "n_tokens": len(c.input_ids), "input_ids": np.asarray(c.input_ids, np.int32),
                "char_start": None, "char_end": None, "tokenizer": a.tokenizer,
                "doc_sha256": a.doc_sha256 if c.kind == NATURAL else None})
            provenance.append({"scored_window_id": scored_id, "probe_id": probe_id,
                               "category": category, "kind": c.kind, "window_id": c.window_id,
                               "other_window_ids": list(c.other_window_ids),
                               "param": c.param})
            if c.kind != NATURAL:
                counts = run.controls.setdefault(category, {})
                counts[c.kind] = counts.get(c.kind, 0) + 1
    return _windows_arrow(windows), provenance


def _windows_arrow(rows: list[dict]) -> pa.Table:
    now = pa.scalar(time.time_ns() // 1000, pa.timestamp("us", tz="UTC"))
    ids = pa.array([r["input_ids"] for r in rows], pa.list_(pa.field("element", pa.int32(),
                                                                      nullable=False)))
    columns = {
        "window_id": pa.array([r["window_id"] for r in rows], pa.string()),
        "doc_id": pa.array([r["doc_id"] for r in rows], pa.string()),
        "category": pa.array([r["category"] for r in rows], pa.string()),
        "window_index": pa.array([r["window_index"] for r in rows], pa.int32()),
        "token_start": pa.array([r["token_start"] for r in rows], pa.int32()),
        "n_tokens": pa.array([r["n_tokens"] for r in rows], pa.int32()),
        "input_ids": ids,
        "char_start": pa.array([None] * len(rows), pa.int64()),
        "char_end": pa.array([None] * len(rows), pa.int64()),
        "tokenizer": pa.array([r["tokenizer"] for r in rows], pa.string()),
        "ingested_at": pa.array([now.as_py()] * len(rows), pa.timestamp("us", tz="UTC")),
        "doc_sha256": pa.array([r["doc_sha256"] for r in rows], pa.string()),
    }
    return pa.table(columns)


def _probe_rows(spark: SparkSession, scores: TableRef, staging_windows: TableRef,
                provenance: list[dict], probe_id: str, scorer_id: str, alpha: float
                ) -> DataFrame:
    """The probe table's rows: scores of this scorer joined to provenance and tokens, with
    the selection score (see the module docstring)."""
    meta = spark.createDataFrame(provenance, "scored_window_id string, probe_id string, "
                                 "category string, kind string, window_id string, "
                                 "other_window_ids array<string>, param int")
    score_frame = (scores.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id))
                   .withColumnRenamed("window_id", "scored_window_id").drop("category"))
    tokens = (staging_windows.read(spark)
              .select(F.col("window_id").alias("scored_window_id"), "input_ids"))
    joined = meta.join(score_frame, "scored_window_id").join(tokens, "scored_window_id")
    ranked = _selection_scores(spark, joined, alpha)
    return (joined.join(ranked, "scored_window_id", "left")
            .withColumn("probed_at", F.current_timestamp()).select(*PROBE.column_names))


def _selection_scores(spark: SparkSession, joined: DataFrame, alpha: float) -> DataFrame:
    """(scored_window_id, selection_score): select's LDS over the natural sample's statistics
    (``category_stats.sql`` over the natural rows, ``select_ranked.sql`` over all rows) for
    LongAttn rows; ``score`` for other methods."""
    import uuid

    method = F.coalesce(F.col("method"), F.lit("longattn"))
    longattn = method == F.lit("longattn")
    value = F.when(longattn, F.col("ds")).otherwise(F.col("score"))
    spread = F.when(longattn, F.col("variance")).otherwise(F.lit(0.0))
    usable = value.isNotNull() & spread.isNotNull() & ~F.isnan(value) & ~F.isnan(spread) & \
        (F.abs(value) != F.lit(float("inf"))) & (F.abs(spread) != F.lit(float("inf")))
    scored = joined.select(
        F.col("scored_window_id").alias("window_id"), "category", "kind",
        F.size("input_ids").alias("n_tokens"), value.alias("ds"), spread.alias("variance"),
        method.alias("method"),
        F.when(usable, F.lit(None).cast("string")).otherwise(F.lit("null_score"))
        .alias("excluded_reason"))
    prefix = f"longattn_probe_{uuid.uuid4().hex[:10]}"
    views = {"scored": f"{prefix}_scored", "natural": f"{prefix}_natural",
             "stats": f"{prefix}_stats"}
    scored.createOrReplaceTempView(views["scored"])
    scored.filter(F.col("kind") == F.lit(NATURAL)).createOrReplaceTempView(views["natural"])
    stats = [r for r in category_stats_frame(spark, views["natural"]).collect()
             if not r["is_total"]]
    spark.createDataFrame(stats, category_stats_frame(spark, views["natural"]).schema) \
        .createOrReplaceTempView(views["stats"])
    ranked = spark.sql(load_sql("select_ranked"), args={
        "scored": views["scored"], "stats": views["stats"], "normalize": "zscore",
        "alpha": float(alpha), "method": "lds", "seed": 0})
    out = ranked.select(
        F.col("window_id").alias("scored_window_id"),
        F.when(F.col("method") == F.lit("longattn"), F.col("lds"))
        .otherwise(F.col("ds")).alias("selection_score")).localCheckpoint(eager=True)
    for view in views.values():
        spark.catalog.dropTempView(view)
    return out
