"""``longattn-spark probe``: does a ranking separate natural windows from matched controls?

1. Before any Spark job (``probe.plan``): the ranking probed (``--recipe``, else the
   ``--method``'s default ranking), the options (kinds, per-category size, k < L/2 when L is
   known from the flags, the staging location) and the probe id, a hash of the windows
   table, the sample options, every scorer's score options and the ranking. A probe table
   holds one probe: one written by another probe is refused (its ``longattn.probe`` property
   says which).
2. Sample (``probe.sample``): the first ``--per-category`` windows of each category in seeded
   hash order, and twice as many donors.
3. Controls (``probe.controls``) as staging windows (``probe.staging``), built on the driver.
4. Every scorer of the recipe scores the staging windows into one staging scores table with
   the score stage itself (``score_windows``): the same code, the same scorer_ids as ``score``
   with those options.
5. Probe rows (``probe.rows``): provenance, tokens, every scorer's components (qualified by
   the scorer's name), and the probed ranking with the natural sample's per-category
   statistics; written by an insert-only MERGE on (probe_id, kind, window_id): a re-run adds
   nothing.
6. AUCs (``probe.results``) from the probe table's rows, printed and written as JSON; a row
   that failed a filter ranks last.

``probe --rank EXPR --where EXPR`` on an existing probe table ranks its rows another way from
the components it keeps, and prints the AUCs: nothing is scored or written (``rerank``).
"""

from __future__ import annotations

import json

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from longattn_spark.config import LongAttnConfig, ProbeConfig, ScoreConfig
from longattn_spark.console import StepTimer
from longattn_spark.errors import ConfigError, TableError
from longattn_spark.probe.controls import check_block, check_lengths, default_block
from longattn_spark.probe.plan import (
    PROPERTY,
    check_probe_table,
    probe_id_for,
    probe_record,
    score_signature,
    staging_location,
    validate_probe_config,
)
from longattn_spark.probe.ranking import compile_for_rows, rank_rows
from longattn_spark.probe.results import ProbeRun, probe_results
from longattn_spark.probe.rows import probe_rows
from longattn_spark.probe.sample import sample_windows
from longattn_spark.probe.staging import stage_windows, staged_rows
from longattn_spark.score.recipe import scorer_config
from longattn_spark.tables.refs import TableRef
from longattn_spark.tables.schemas import PROBE, PROBE_SCORE_COLUMNS
from longattn_spark.tables.writes import ensure_table, merge_new_rows, set_properties


def run_probe_job(cfg: LongAttnConfig) -> ProbeRun:
    """``longattn-spark probe``: a new probe, or with ``--rank``/``--where`` the rows of an
    existing one ranked another way."""
    from longattn_spark.probe.summary import print_probe, write_json
    from longattn_spark.session import get_spark, remote_url

    if not (cfg.probe.rank or cfg.probe.where):
        validate_probe_config(cfg.probe, cfg.score)
    if remote_url(cfg.spark):
        raise ConfigError(f"probe runs on a classic Spark session only (not yet tested over "
                          f"Spark Connect, {remote_url(cfg.spark)}); score, select and the "
                          f"other jobs run over Connect")
    spark = get_spark(cfg.spark, app_name="longattn-spark probe")
    if cfg.probe.rank or cfg.probe.where:
        run = rerank(spark, cfg.probe)
    else:
        run = probe(spark, cfg.probe, cfg.score)
    print_probe(run)
    if cfg.probe.json:
        write_json(run, cfg.probe.json)
    return run


def probe(spark: SparkSession, probe_cfg: ProbeConfig, score_cfg: ScoreConfig,
          progress: bool = True) -> ProbeRun:
    """Run a probe (see the module docstring) and return what it did and found."""
    from longattn_spark.score.job import score_windows

    kinds, recipe = validate_probe_config(probe_cfg, score_cfg)
    table = TableRef(probe_cfg.table)
    windows = TableRef(probe_cfg.windows)
    if not windows.exists(spark):
        raise TableError(f"--windows {probe_cfg.windows}: no such table (run ingest first)")
    windows_version = windows.version(spark)
    probe_id = probe_id_for(probe_cfg, score_cfg, recipe, kinds, windows_version)
    check_probe_table(spark, table, probe_id)
    timer = StepTimer()
    run = ProbeRun(probe_id=probe_id, table=str(table), kinds=kinds, recipe=recipe.name,
                   method="+".join(s.method for s in recipe.scorers))
    ensure_table(spark, table, PROBE)

    with timer.step("sample"):
        samples = sample_windows(spark, windows, probe_cfg.per_category, probe_cfg.seed)
    width = _window_size(samples, probe_cfg)
    seq_len = score_cfg.seq_len or width
    min_distance = score_cfg.min_distance or seq_len // 4
    check_lengths(seq_len, min_distance, width)
    block = probe_cfg.shuffle_block or default_block(width, min_distance)
    check_block(block, width, min_distance)
    run.seq_len, run.min_distance, run.window_size, run.block = (seq_len, min_distance,
                                                                  width, block)

    with timer.step("build controls"):
        staged, provenance = staged_rows(samples, kinds, probe_cfg.seed, seq_len,
                                         min_distance, block, probe_cfg.near_repeat_share,
                                         probe_id, run)
        staging = staging_location(probe_cfg, probe_id)
        staging_windows = TableRef(f"{staging}/windows")
        stage_windows(spark, staging_windows, spark.createDataFrame(staged))

    scorer_ids: dict[str, str] = {}
    staging_scores = f"{staging}/scores"
    for scorer in recipe.scorers:
        with timer.step(f"score ({scorer.name})"):
            if progress:
                print(f"probe {probe_id}: scoring its windows with {scorer.name} "
                      f"(--method {scorer.method})", flush=True)
            summary = score_windows(spark, _staging_score_config(
                scorer_config(score_cfg, scorer), staging_windows, staging), progress=progress)
        scorer_ids[scorer.name] = summary.scorer_id
        run.scored += summary.scored
        run.already_scored += summary.already_scored
        for reason, n in summary.rejected.items():
            run.rejected[reason] = run.rejected.get(reason, 0) + n
    run.scorer_id = "+".join(scorer_ids.values())
    check_probe_table(spark, table, probe_id, run.scorer_id)

    with timer.step("write"):
        rows = probe_rows(spark, TableRef(staging_scores), staging_windows, provenance,
                          scorer_ids, run.scorer_id, recipe)
        record = {"probe_id": probe_id, "scorer_id": run.scorer_id, "seed": probe_cfg.seed,
                  "scorer_ids": scorer_ids, "recipe": recipe.describe(),
                  "model": score_cfg.model, "method": run.method,
                  "windows": str(windows), "windows_version": windows_version,
                  "kinds": list(kinds), "near_repeat_share": probe_cfg.near_repeat_share,
                  "per_category": probe_cfg.per_category, "seq_len": seq_len,
                  "min_distance": min_distance, "window_size": width, "shuffle_block": block,
                  "alpha": probe_cfg.alpha, "bootstrap": probe_cfg.bootstrap,
                  "score": score_signature(score_cfg, recipe),
                  "skipped": run.skipped, "staging": staging}
        set_properties(spark, table, {PROPERTY: json.dumps(record, sort_keys=True)})
        metrics = merge_new_rows(spark, table, PROBE, rows, {"probe_id": probe_id})
        run.rows_written = metrics["numTargetRowsInserted"]

    with timer.step("auc"):
        rows = read_probe_rows(spark, table, probe_id)
        run.results = probe_results(rows, kinds, run.skipped, probe_cfg.seed,
                                    PROBE_SCORE_COLUMNS, probe_cfg.bootstrap)
    run.seconds, run.step_seconds = timer.seconds, dict(timer.step_seconds)
    return run


def rerank(spark: SparkSession, probe_cfg: ProbeConfig) -> ProbeRun:
    """``probe --rank EXPR --where EXPR``: the AUCs of the probe in ``--table`` ranked by
    these expressions over the components its rows keep; nothing is scored or written. A
    ``--where`` without ``--rank`` keeps the probe's own rank."""
    timer = StepTimer()
    table = TableRef(probe_cfg.table)
    if not table.exists(spark):
        raise TableError(f"--table {probe_cfg.table}: no such probe table; --rank/--where "
                         f"rank the rows of an existing probe (run probe --recipe or --method "
                         f"first)")
    with timer.step("read"):
        record = probe_record(spark, table)
        rows = read_probe_rows(spark, table, record["probe_id"])
    recorded = record.get("recipe") or {}
    rank_text = probe_cfg.rank or _recorded_rank(recorded)
    rank, where = compile_for_rows(rows, rank_text, probe_cfg.where,
                                   {"alpha": float(probe_cfg.alpha)})
    with timer.step("rank and auc"):
        values, passed = rank_rows(rows, rank, where)
        for row, value, ok in zip(rows, values, passed, strict=True):
            row["selection_score"] = None if value != value else float(value)
            row["passed"] = bool(ok)
        kinds = tuple(record["kinds"])
        run = ProbeRun(probe_id=record["probe_id"], table=str(table), kinds=kinds,
                       scorer_id=record.get("scorer_id", ""), method=record.get("method", ""),
                       recipe=f"--rank {rank_text}" + "".join(f" --where {w}"
                                                              for w in probe_cfg.where),
                       seq_len=record.get("seq_len", 0),
                       min_distance=record.get("min_distance", 0),
                       window_size=record.get("window_size", 0),
                       block=record.get("shuffle_block", 0), reranked=True)
        run.results = probe_results(rows, kinds, record.get("skipped", {}), record["seed"],
                                    PROBE_SCORE_COLUMNS, probe_cfg.bootstrap)
    run.seconds, run.step_seconds = timer.seconds, dict(timer.step_seconds)
    return run


def _recorded_rank(recorded: dict) -> str:
    """The rank of the recipe a probe table was written with (from its recorded text)."""
    import yaml

    text = recorded.get("text") or ""
    data = yaml.safe_load(text) if text else None
    if not isinstance(data, dict) or not data.get("rank"):
        raise ConfigError("--where needs --rank: this probe table records no recipe rank")
    return str(data["rank"])


def _window_size(samples, probe_cfg: ProbeConfig) -> int:
    sizes = {len(w.source.input_ids) for s in samples.values() for w in s.donors}
    if not sizes:
        raise TableError(f"--windows {probe_cfg.windows} holds no windows")
    if len(sizes) > 1:
        raise TableError(f"--windows {probe_cfg.windows}: the sampled windows have several "
                         f"sizes ({', '.join(map(str, sorted(sizes)))}); a probe compares "
                         "windows of one size")
    return sizes.pop()


def _staging_score_config(score_cfg: ScoreConfig, staging_windows: TableRef, staging: str
                          ) -> ScoreConfig:
    import dataclasses

    return dataclasses.replace(score_cfg, windows=str(staging_windows),
                               table=f"{staging}/scores",
                               rejects_table=f"{staging}/scores_rejects", category="",
                               checkpoint_location="")


def read_probe_rows(spark: SparkSession, table: TableRef, probe_id: str) -> list[dict]:
    """The rows of one probe, without their tokens (what the AUCs are computed from)."""
    frame = table.read(spark).filter(F.col("probe_id") == F.lit(probe_id)).drop("input_ids")
    return [r.asDict(recursive=True) for r in frame.collect()]
