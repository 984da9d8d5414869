"""The probe table's rows: each staged window's provenance, its tokens, and the scores of
every scorer of the probe, with their components merged into one map qualified by the
scorer's name (``lossgain.dependency_gain``); a single-scorer probe also keeps that scorer's
typed columns (``ds``, ``variance``, per-head arrays, ``score``, ...). Then the probed
ranking (``probe.ranking``, on the driver: a probe holds a few thousand rows) as
``selection_score`` and ``passed``."""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longattn_spark.probe.ranking import rank_rows
from longattn_spark.recipes.checked import CheckedRecipe
from longattn_spark.tables.components import components_map
from longattn_spark.tables.refs import TableRef
from longattn_spark.tables.schemas import PROBE, PROBE_SCORE_COLUMNS

_PROVENANCE = ("scored_window_id string, probe_id string, category string, kind string, "
               "window_id string, other_window_ids array<string>, param int")


def scored_rows(spark: SparkSession, scores: TableRef, scorer_ids: Mapping[str, str]
                ) -> DataFrame:
    """One row per staged window every scorer scored: ``scored_window_id``, ``components``
    (qualified), and the first scorer's typed columns when there is one scorer."""
    joined = None
    names = list(scorer_ids)
    for i, (name, scorer_id) in enumerate(scorer_ids.items()):
        frame = scores.read(spark).filter(F.col("scorer_id") == F.lit(scorer_id))
        qualified = F.transform_keys(components_map(frame), _prefixed(name))
        keep = [c for c in PROBE_SCORE_COLUMNS if c in frame.columns] if len(names) == 1 \
            else []
        part = frame.select(F.col("window_id").alias("scored_window_id"),
                            qualified.alias(f"_c{i}"), *keep)
        joined = part if joined is None else joined.join(part, "scored_window_id")
    merged = F.map_concat(*[F.col(f"_c{i}") for i in range(len(names))]) if len(names) > 1 \
        else F.col("_c0")
    return joined.withColumn("components", merged).drop(*[f"_c{i}" for i in range(len(names))])


def _prefixed(name: str):
    """``transform_keys``' function: a component's key qualified by its scorer's name."""
    return lambda key, _value: F.concat(F.lit(f"{name}."), key)


def probe_rows(spark: SparkSession, scores: TableRef, staging_windows: TableRef,
               provenance: list[dict], scorer_ids: Mapping[str, str], scorer_id: str,
               recipe: CheckedRecipe) -> DataFrame:
    """The probe table's rows of one probe (module docstring)."""
    meta = spark.createDataFrame(provenance, _PROVENANCE)
    tokens = (staging_windows.read(spark)
              .select(F.col("window_id").alias("scored_window_id"), "input_ids"))
    joined = meta.join(scored_rows(spark, scores, scorer_ids), "scored_window_id") \
        .localCheckpoint(eager=True)
    ranked = selection_scores(spark, joined, recipe)
    out = (joined.join(tokens, "scored_window_id").join(ranked, "scored_window_id", "left")
           .withColumn("scorer_id", F.lit(scorer_id))
           .withColumn("probed_at", F.current_timestamp()))
    for field in PROBE.schema.fields:
        if field.name not in out.columns:
            out = out.withColumn(field.name, F.lit(None).cast(field.dataType))
    return out.select(*PROBE.column_names)


def selection_scores(spark: SparkSession, joined: DataFrame, recipe: CheckedRecipe
                     ) -> DataFrame:
    """(scored_window_id, selection_score, passed): the recipe's rank and filters over the
    rows, with the natural rows' category statistics (``probe.ranking``)."""
    rows = [r.asDict(recursive=True) for r in
            joined.select("scored_window_id", "category", "kind", "components").collect()]
    values, passed = rank_rows(rows, recipe.rank, recipe.where)
    out = [(r["scored_window_id"], None if v != v else float(v), bool(p))
           for r, v, p in zip(rows, values, passed, strict=True)]
    return spark.createDataFrame(out, "scored_window_id string, selection_score double, "
                                      "passed boolean")
