"""What a probe run is, decided before any Spark job: the ranking it probes (a recipe, or
the ``--method``'s default ranking), its options checked (kinds, sample size, k < L/2 when L
is known from the flags, the staging location), its identity, and the probe table it may
write (a probe table holds one probe; its ``longattn.probe`` property says which)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from pyspark.sql import SparkSession

from longattn_spark.config import ProbeConfig, ScoreConfig
from longattn_spark.errors import ConfigError, TableError
from longattn_spark.probe.controls import check_lengths, check_share, parse_kinds
from longattn_spark.recipes.checked import CheckedRecipe, check_recipe
from longattn_spark.score.recipe import score_recipe
from longattn_spark.scorers.options import options_as_dict
from longattn_spark.tables.refs import TableRef, table_properties

PROPERTY = "longattn.probe"
#: score options that change where or how fast a score is computed, never its value
OPERATIONAL = ("windows", "table", "rejects_table", "category", "checkpoint_location",
               "batch_size", "device", "files_per_batch", "task_gpus", "options", "option",
               "recipe", "method")


def probe_recipe(probe: ProbeConfig, score: ScoreConfig) -> CheckedRecipe:
    """The ranking probed: ``--recipe`` (its scorers scored, its filters and rank applied),
    else the ``--method``'s default ranking with its ``--option``s; ``--alpha`` sets the
    recipe's ``alpha`` when it has one."""
    recipe = score_recipe(score)
    if "alpha" in recipe.recipe.params_dict:
        return check_recipe(recipe.recipe.with_params(alpha=float(probe.alpha)))
    return recipe


def score_signature(score: ScoreConfig, recipe: CheckedRecipe) -> dict[str, Any]:
    """What changes the probe's scores: the shared score options but the operational ones,
    and each scorer's method and options but the operational ones."""
    shared = {k: v for k, v in sorted(dataclasses.asdict(score).items())
              if k not in OPERATIONAL}
    scorers = [{"name": s.name, "method": s.method, "model": s.model,
                "options": options_as_dict(recipe.options[s.name], operational=False)}
               for s in recipe.scorers]
    return {**shared, "scorers": scorers}


def ranking_signature(recipe: CheckedRecipe) -> dict[str, Any]:
    """What changes the probed ranking (not its scores): filters, rank and parameters."""
    r = recipe.recipe
    return {"rank": r.rank, "where": list(r.where), "params": dict(r.params),
            "draw": r.draw}


def probe_id_for(probe: ProbeConfig, score: ScoreConfig, recipe: CheckedRecipe,
                 kinds: tuple[str, ...], windows_version: int | None = None) -> str:
    """Deterministic id of a probe run: same windows table (and Delta version), sample
    options, seed, scorers and recipe, same id."""
    payload = json.dumps({"windows": str(TableRef(probe.windows)), "seed": probe.seed,
                          "windows_version": windows_version,
                          "per_category": probe.per_category, "kinds": list(kinds),
                          "shuffle_block": probe.shuffle_block,
                          "near_repeat_share": probe.near_repeat_share
                          if "nearrepeat" in kinds else None,
                          "ranking": ranking_signature(recipe),
                          "score": score_signature(score, recipe)},
                         sort_keys=True, default=str)
    return "probe-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def validate_probe_config(probe: ProbeConfig, score: ScoreConfig
                          ) -> tuple[tuple[str, ...], CheckedRecipe]:
    """The kinds and the probed recipe; one-line errors for every option that can be checked
    without Spark."""
    kinds = parse_kinds(probe.kinds)
    if probe.per_category < 2:
        raise ConfigError(f"--per-category {probe.per_category}: must be at least 2")
    if probe.bootstrap < 100:
        raise ConfigError(f"--bootstrap {probe.bootstrap}: must be at least 100")
    check_share(probe.near_repeat_share)
    recipe = probe_recipe(probe, score)
    for scorer in recipe.scorers:
        if recipe.methods[scorer.name].needs_model and not (scorer.model or score.model):
            raise ConfigError(f"--model is required: scorer {scorer.name} (--method "
                              f"{scorer.method}) reads a model folder")
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
    return kinds, recipe


def staging_location(probe: ProbeConfig, probe_id: str) -> str:
    base = probe.staging or TableRef(probe.table).location.rstrip("/") + "_staging"
    return f"{base.rstrip('/')}/{probe_id}"


def check_probe_table(spark: SparkSession, ref: TableRef, probe_id: str,
                      scorer_id: str | None = None) -> None:
    """Refuse a probe table holding another probe (or, once known, other scorers)."""
    if not ref.exists(spark):
        return
    text = table_properties(spark, ref).get(PROPERTY)
    if not text:
        return
    recorded = json.loads(text)
    if recorded.get("probe_id") != probe_id:
        recipe = (recorded.get("recipe") or {}).get("name") or recorded.get("method")
        raise TableError(
            f"--table {ref} holds probe {recorded.get('probe_id')} (recipe {recipe}, model "
            f"{recorded.get('model')}, seed {recorded.get('seed')}, windows version "
            f"{recorded.get('windows_version')}); this run is probe {probe_id}: use another "
            f"--table, or probe --rank/--where to rank that probe's rows another way")
    if scorer_id and recorded.get("scorer_id") not in (None, scorer_id):
        raise TableError(f"--table {ref} was written by scorer {recorded.get('scorer_id')}; "
                         f"this run scored with {scorer_id} (did the model change?): use "
                         f"another --table")


def probe_record(spark: SparkSession, table: TableRef) -> dict[str, Any]:
    """The ``longattn.probe`` property of a probe table (its probe's options and skips)."""
    text = table_properties(spark, table).get(PROPERTY)
    if not text:
        raise TableError(f"{table} is not a probe table (no {PROPERTY} property)")
    return json.loads(text)
