"""The windows a selection ranks, as one DataFrame: every scorer of the recipe joined by
window_id, the components its expressions read as columns, the windows table's category and
token count, why a window cannot be ranked, the recipe's filters and rank with their category
statistics, and the ordering key of the cut. Expressions become Spark Columns
(``recipes.spark``); nothing user-given is pasted into SQL text.

- The rows: every score of the recipe's scorers (a full outer join by window_id when there
  are several), left-joined to the windows table at its pinned version.
- ``excluded_reason`` (the first that applies): ``no_window``, ``no_n_tokens``,
  ``missing_score (<scorer>)`` (a scorer has no row for the window), ``missing_head``
  (``--heads`` beyond a row's per-head arrays), ``null_score`` / ``nan_score`` /
  ``infinite_score`` (a component an expression reads), and after ranking ``null_rank`` (the
  rank has no finite value, e.g. ``ln`` of 0). Usable windows have none.
- Category statistics (``z``, ``minmax``) over each category's usable windows: one grouped
  aggregate collected to the driver and broadcast back (``pct``: window functions).
- ``passed``: usable and every filter true; ``dropped_by``: the first filter that is not.
- ``sort_key``: the rank of the windows that passed, null for the others (the random baseline
  replaces it by a seeded hash of the window id); ``tiebreak``: a hash of the window id.
  Larger ranks first, then larger tiebreak, then smaller window_id: a total order, so every cut
  is reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from longattn_spark.recipes.checked import CheckedRecipe
from longattn_spark.recipes.expr import Component
from longattn_spark.recipes.spark import Statistics, column, component_columns
from longattn_spark.tables.components import component, components_map

#: per-head arrays of the components that ``--heads`` replaces by a mean over chosen heads
HEAD_ARRAYS = {"ds": "ds_heads", "variance": "var_heads"}


@dataclass(frozen=True)
class RankedInputs:
    """What the ranked rows are built from: the pinned tables as DataFrames, the recipe, the
    scorer_id of each of its scorers, and the select options that change the rows."""

    scores: DataFrame
    windows: DataFrame | None      # None: rank the scores alone (no tokens, no window check)
    recipe: CheckedRecipe
    scorer_ids: Mapping[str, str]
    heads: tuple[int, ...] = ()


def scorer_rows(inputs: RankedInputs, names: Mapping[Component, str], scorer: str
                ) -> DataFrame:
    """One scorer's rows: window_id, its category, and its components the recipe reads."""
    frame = inputs.scores.filter(F.col("scorer_id") == F.lit(inputs.scorer_ids[scorer]))
    values = components_map(frame)
    columns = [F.col("window_id"), F.col("category").alias(f"_cat_{scorer}"),
               F.lit(True).alias(f"_has_{scorer}")]
    missing_head = F.lit(False)
    for c, name in names.items():
        if c.scorer != scorer:
            continue
        if inputs.heads and c.name in HEAD_ARRAYS and HEAD_ARRAYS[c.name] in frame.columns:
            array = F.col(HEAD_ARRAYS[c.name])
            heads = F.array(*[F.lit(int(h)) for h in inputs.heads])
            columns.append((F.aggregate(heads, F.lit(0.0),
                                        lambda acc, h: acc + F.try_element_at(array, h + 1))
                            / F.lit(float(len(inputs.heads)))).alias(name))
            missing_head = missing_head | array.isNull() | F.exists(
                heads, lambda h: h >= F.size(array))
        else:
            columns.append(component(values, c.name).alias(name))
    columns.append(missing_head.alias(f"_head_{scorer}"))
    return frame.select(*columns)


def joined_rows(inputs: RankedInputs, names: Mapping[Component, str]) -> DataFrame:
    """The scorers' rows joined by window_id, left-joined to the windows (module docstring),
    with ``excluded_reason``."""
    scorers = [s.name for s in inputs.recipe.scorers]
    joined = None
    for scorer in scorers:
        part = scorer_rows(inputs, names, scorer)
        # a hash table of each later scorer's rows per shuffle partition instead of a sort
        # of both sides (benchmarks/recipe_select.py: 7% less time at 2M windows)
        joined = part if joined is None else joined.join(part.hint("SHUFFLE_HASH"),
                                                         "window_id", "full_outer")
    if inputs.windows is None:
        rows = joined.select("*", F.col("window_id").alias("_w_id"),
                             F.lit(None).cast("string").alias("_w_cat"),
                             F.lit(None).cast("int").alias("_n_tokens"))
    else:
        windows = inputs.windows.select(F.col("window_id").alias("_w_id"),
                                        F.col("category").alias("_w_cat"),
                                        F.col("n_tokens").alias("_n_tokens"))
        # a hash table of the windows side per shuffle partition, not a sort of both sides
        rows = joined.join(windows.hint("SHUFFLE_HASH"),
                           joined["window_id"] == windows["_w_id"], "left")
    category = F.coalesce(F.col("_w_cat"), *[F.col(f"_cat_{s}") for s in scorers])
    reason = F.when(F.col("_w_id").isNull(), F.lit("no_window"))
    if inputs.windows is not None:
        reason = reason.when(F.col("_n_tokens").isNull(), F.lit("no_n_tokens"))
    for scorer in scorers:
        reason = reason.when(F.col(f"_has_{scorer}").isNull(),
                             F.lit(f"missing_score ({scorer})"))
    for scorer in scorers:
        reason = reason.when(F.coalesce(F.col(f"_head_{scorer}"), F.lit(False)),
                             F.lit("missing_head"))
    values = [F.col(name) for name in names.values()]
    for test, label in ((lambda v: v.isNull(), "null_score"), (F.isnan, "nan_score"),
                        (lambda v: F.abs(v) == F.lit(float("inf")), "infinite_score")):
        hit = F.lit(False)
        for value in values:
            hit = hit | F.coalesce(test(value), F.lit(False))
        reason = reason.when(hit, F.lit(label))
    return rows.select(joined["window_id"], category.alias("category"),
                       F.col("_n_tokens").alias("n_tokens"), *names.values(),
                       reason.alias("excluded_reason"))


def with_statistics(spark, rows: DataFrame, recipe: CheckedRecipe,
                    names: Mapping[Component, str]) -> tuple[DataFrame, Statistics]:
    """``rows`` with the columns of every category statistic the recipe's expressions use,
    taken over the usable rows of each category."""
    stats = Statistics.of(recipe.expressions)
    usable = F.col("excluded_reason").isNull()
    aggregates = stats.aggregates(names, usable)
    if aggregates:
        collected = rows.groupBy("category").agg(*aggregates).collect()
        table = spark.createDataFrame(collected, rows.groupBy("category").agg(
            *aggregates).schema)
        rows = rows.join(F.broadcast(table), rows["category"].eqNullSafe(table["category"]),
                         "left").drop(table["category"])
    return stats.with_percentiles(rows, names, usable), stats


def ranked_rows(spark, inputs: RankedInputs, joined: DataFrame | None = None) -> DataFrame:
    """The ranked rows (module docstring): window_id, category, n_tokens, the recorded
    columns, rank, passed, dropped_by, lds, excluded_reason, sort_key, tiebreak.

    ``joined``: ``joined_rows`` of the same inputs, given when the caller has persisted it:
    the category statistics and the ranked rows then read the join once instead of each
    computing it (select: the join is most of a select's cost beside the write)."""
    recipe = inputs.recipe
    names = component_columns(recipe.referenced())
    if joined is None:
        joined = joined_rows(inputs, names)
    rows, stats = with_statistics(spark, joined, recipe, names)
    usable = F.col("excluded_reason").isNull()
    rank = column(recipe.rank.tree, names, stats)
    finite = rank.isNotNull() & ~F.isnan(rank) & (F.abs(rank) != F.lit(float("inf")))
    reason = F.when(usable & ~finite, F.lit("null_rank")).otherwise(F.col("excluded_reason"))
    dropped = F.lit(None).cast("string")
    for expression in reversed(recipe.where):
        holds = F.coalesce(column(expression.tree, names, stats), F.lit(False))
        dropped = F.when(~holds, F.lit(expression.text)).otherwise(dropped)
    ranked = usable & finite
    passed = ranked & dropped.isNull()
    recorded = {name: F.when(ranked, column(e.tree, names, stats))
                for name, e in recipe.record.items()}
    return rows.select(
        "window_id", "category", "n_tokens",
        *[(recorded[c] if c in recorded else F.lit(None).cast("double")).alias(c)
          for c in ("ds", "variance", "z_ds", "z_du")],
        F.when(ranked, rank).alias("rank"), F.when(usable, passed).alias("passed"),
        F.when(ranked, dropped).alias("dropped_by"), F.when(ranked, rank).alias("lds"),
        reason.alias("excluded_reason"),
        F.when(passed, rank).alias("sort_key"),
        F.xxhash64(F.col("window_id")).cast("double").alias("tiebreak"))


def referenced_names(recipe: CheckedRecipe) -> dict[Component, str]:
    """The column name of every component the recipe reads (``recipes.spark``)."""
    return component_columns(recipe.referenced())


def cut_statistics_columns() -> list[Any]:
    """Per category, over the windows that passed: their count and tokens, the largest
    window, and the range of the ordering key (what the cut arithmetic needs)."""
    passed = F.col("sort_key").isNotNull()
    return [F.count_if(passed).alias("n"),
            F.coalesce(F.sum(F.when(passed, F.col("n_tokens"))), F.lit(0)).alias("tokens"),
            F.max(F.when(passed, F.col("n_tokens"))).alias("max_window_tokens"),
            F.min("sort_key").alias("key_min"), F.max("sort_key").alias("key_max"),
            F.count(F.lit(1)).alias("windows"),
            F.count_if(F.col("excluded_reason").isNotNull()).alias("excluded")]
