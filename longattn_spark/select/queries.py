"""The selection's Spark part: the ranked rows of a recipe (:mod:`longattn_spark.select.
ranked`), the cut passes of :mod:`longattn_spark.select.cut` over them (the statements of
``longattn_spark/sql/select_*.sql``, run over temporary views), and the write.

No step gathers a category into one task (except the window functions a ``pct()`` in a recipe
asks for). Per-category statistics are grouped aggregates collected to the driver (a few
numbers per category) and broadcast back. The approximate cut is a grouped
``percentile_approx`` and one grouped count of the windows above and at it; the exact cut is
found by histogram refinement (:func:`exact_cuts`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from longattn_spark.select.cut import (
    DEFAULT_BUCKETS,
    DEFAULT_CANDIDATE_LIMIT,
    HASH_MAX,
    HASH_MIN,
    MAX_REFINEMENTS,
    Bracket,
    Cut,
    CutStats,
    SelectOptions,
    Target,
    approx_cut,
    check_mix_categories,
    cut_from_candidates,
    initial_bracket,
    keep_counts,
    narrowed_bracket,
    token_budgets,
)
from longattn_spark.select.summary import with_budgets
from longattn_spark.sqlfiles import load_sql
from longattn_spark.stats import CategorySummary, selection_summary

_SELECTION_ID = re.compile(r"^[0-9a-f]{24}$")


@dataclass(frozen=True)
class SelectionInputs:
    """The tables a selection reads, pinned to Delta versions, and the scorer used."""

    windows: Any  # TableRef
    scores: Any  # TableRef
    windows_version: int
    scores_version: int
    scorer_id: str               # the recipe's scorer_ids joined by "+" (one: its id)
    recipe: Any = None           # recipes.checked.CheckedRecipe
    scorer_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)


class _Views:
    """Temporary views of one selection run, named uniquely and dropped at the end."""

    def __init__(self, spark) -> None:
        self.spark = spark
        self.prefix = f"longattn_sel_{uuid.uuid4().hex[:10]}"
        self.names: list[str] = []

    def add(self, name: str, df) -> str:
        view = f"{self.prefix}_{name}"
        df.createOrReplaceTempView(view)
        self.names.append(view)
        return view

    def sql(self, name: str, statement: str, **args: Any) -> str:
        return self.add(name, self.spark.sql(load_sql(statement), args=args))

    def drop(self) -> None:
        for view in self.names:
            self.spark.catalog.dropTempView(view)


def _scores_view(views: _Views, inputs: SelectionInputs) -> str:
    """The scores table at its pinned version, with ``method`` and ``score`` as NULL when
    that version predates them, so the statements read any scorer's rows."""
    from pyspark.sql import functions as F

    frame = inputs.scores.read(views.spark, inputs.scores_version)
    present = {c.lower() for c in frame.columns}
    for column, kind in (("method", "string"), ("score", "double")):
        if column not in present:
            frame = frame.withColumn(column, F.lit(None).cast(kind))
    return views.add("scores", frame)


@dataclass(frozen=True)
class StoredHeads:
    """What the rows of one scorer hold per head (``select_heads_stored.sql``)."""

    n_rows: int
    other_method: int  # rows of a method without per-head scores
    min_heads: int | None  # fewest heads a row stores (None: no row stores them)
    max_heads: int | None
    short_window: str | None  # a window storing ``min_heads``


def stored_heads(spark, inputs: SelectionInputs, scorer_id: str) -> StoredHeads:
    """How many per-head scores a scorer's rows store (one aggregate over its rows)."""
    views = _Views(spark)
    try:
        row = spark.sql(load_sql("select_heads_stored"), args={
            "scores": _scores_view(views, inputs), "scorer_id": scorer_id}).collect()[0]
        return StoredHeads(int(row["n_rows"]), int(row["other_method"]),
                           None if row["min_heads"] is None else int(row["min_heads"]),
                           None if row["max_heads"] is None else int(row["max_heads"]),
                           row["short_window"])
    finally:
        views.drop()


def _rows_view(views: _Views, name: str, rows: list[dict[str, Any]], schema: str) -> str:
    return views.add(name, views.spark.createDataFrame(rows, schema=schema))


_BRACKET_SCHEMA = "category string, stage int, lo double, hi double, pinned_key double"
_CUT_SCHEMA = ("category string, mode string, threshold double, key double, tiebreak double, "
               "window_id string")


def exact_cuts(views: _Views, ranked: str, targets: Mapping[str, Target],
               stats: Mapping[str, CutStats], bounds: Mapping[str, tuple[float, float]],
               buckets: int = DEFAULT_BUCKETS, candidate_limit: int = DEFAULT_CANDIDATE_LIMIT
               ) -> dict[str, Cut]:
    """Exact cut per category by histogram refinement.

    Each pass is one grouped aggregate (``select_cut_histogram.sql``) over the windows inside
    the categories' brackets: every task counts its own windows and tokens per (category,
    bucket), and only those partial counts are shuffled, so a category is never pulled into one
    task. The driver walks the bucket counts from the top and narrows each bracket to the bucket
    holding the cut (by a factor of about ``buckets`` per pass), until a bracket holds at most
    ``candidate_limit`` windows; those are collected and the cut is placed exactly, in the
    total order (sort_key desc, tiebreak desc, window_id asc). Ties larger than the limit are
    split on the tiebreak hash (stage 2).
    """
    cuts: dict[str, Cut] = {}
    brackets: dict[str, Bracket] = {}
    for category, target in targets.items():
        st = stats[category]
        start = initial_bracket(category, target, st.n, st.tokens, bounds[category])
        if isinstance(start, Cut):
            cuts[category] = start
        else:
            brackets[category] = start
    return {**cuts, **refined_cuts(views, ranked, targets, brackets, buckets, candidate_limit)}


def refined_cuts(views: _Views, ranked: str, targets: Mapping[str, Target],
                 brackets: Mapping[str, Bracket], buckets: int = DEFAULT_BUCKETS,
                 candidate_limit: int = DEFAULT_CANDIDATE_LIMIT) -> dict[str, Cut]:
    """Narrow each bracket by histogram passes until it is small enough to collect, then
    place the cut exactly among its windows (see :func:`exact_cuts`)."""
    cuts: dict[str, Cut] = {}
    brackets = dict(brackets)
    for _ in range(MAX_REFINEMENTS):
        pending = [b for b in brackets.values() if not b.ready(candidate_limit)]
        if not pending:
            break
        histogram = _bracket_rows(views, ranked, pending, "select_cut_histogram",
                                  buckets=buckets)
        for b in pending:
            brackets[b.category] = narrowed_bracket(b, targets[b.category],
                                                    histogram.get(b.category, []))
    else:
        raise RuntimeError(f"exact cut did not converge in {MAX_REFINEMENTS} passes")
    if brackets:
        candidates = _bracket_rows(views, ranked, list(brackets.values()), None)
        for category, b in brackets.items():
            cuts[category] = cut_from_candidates(b, targets[category],
                                                 candidates.get(category, []))
    return cuts


def _bracket_rows(views: _Views, ranked: str, brackets: list[Bracket], statement: str | None,
                  **args: Any) -> dict[str, list[dict[str, Any]]]:
    """Rows of ``statement`` over the windows inside ``brackets`` (the windows themselves
    when ``statement`` is None), grouped by category."""
    rows = [{"category": b.category, "stage": b.stage, "lo": b.lo, "hi": b.hi,
             "pinned_key": b.pinned_key} for b in brackets]
    bracket_view = _rows_view(views, f"brackets_{uuid.uuid4().hex[:6]}", rows, _BRACKET_SCHEMA)
    bracketed = views.sql(f"bracketed_{uuid.uuid4().hex[:6]}", "select_bracketed",
                          ranked=ranked, brackets=bracket_view)
    query = (views.spark.sql(load_sql(statement), args={"bracketed": bracketed, **args})
             if statement else views.spark.table(bracketed))
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in query.collect():
        grouped.setdefault(r["category"], []).append(r.asDict())
    return grouped


def approx_cuts(views: _Views, ranked: str, options: SelectOptions,
                stats: Mapping[str, CutStats], **refine: Any) -> dict[str, Cut]:
    """Keep-fraction cut from a grouped ``percentile_approx`` of the LDS, ties at the
    threshold split in the exact cut's order (see :func:`approx_cut`)."""
    rows = views.spark.sql(load_sql("select_cut_approx"), args={
        "ranked": ranked, "percentage": round(1.0 - options.keep_fraction, 12),
        "accuracy": options.accuracy}).collect()
    keep = keep_counts(options.keep_fraction, {c: s.n for c, s in stats.items()})
    cuts: dict[str, Cut] = {}
    brackets: dict[str, Bracket] = {}
    for r in rows:
        category = r["category"]
        if category not in keep:
            continue
        cut = approx_cut(category, keep[category], float(r["threshold"]), int(r["above"]),
                         int(r["tied"]))
        if isinstance(cut, Bracket):
            brackets[category] = cut
        else:
            cuts[category] = cut
    targets = {c: Target("count", keep[c]) for c in brackets}
    return {**cuts, **refined_cuts(views, ranked, targets, brackets, **refine)}


def rank_cuts(views: _Views, ranked: str, options: SelectOptions,
              stats: Mapping[str, CutStats], **refine: Any) -> dict[str, Cut]:
    """The cut of every category by rank (--min-lds is applied on top, in
    select_flagged.sql)."""
    usable = {c: s for c, s in stats.items() if c is not None and s.n > 0}
    if options.keep_fraction >= 1 or not (options.keep_fraction or options.token_budget):
        return {c: Cut(c, "all") for c in usable}
    if options.keep_fraction and not options.exact:
        return approx_cuts(views, ranked, options, usable, **refine)
    if options.keep_fraction:
        counts = keep_counts(options.keep_fraction, {c: s.n for c, s in usable.items()})
        targets = {c: Target("count", k) for c, k in counts.items()}
    else:
        budgets = token_budgets(options, {c: s.tokens for c, s in usable.items()})
        targets = {c: Target("tokens", b) for c, b in budgets.items()}
    bounds = {c: s.key_bounds() for c, s in usable.items()}
    return exact_cuts(views, ranked, targets, usable, bounds, **refine)


def random_cuts(views: _Views, ranked_random: str, flagged_lds: str, options: SelectOptions,
                stats: Mapping[str, CutStats], **refine: Any) -> dict[str, Cut]:
    """The random baseline: per category as many windows (or tokens, with a token budget) as
    the rank's cut keeps, in seeded hash order."""
    totals = views.spark.sql(load_sql("select_totals"),
                             args={"flagged": flagged_lds}).collect()
    measure = "tokens" if options.token_budget else "count"
    targets = {r["category"]: Target(measure, int(r["tokens_selected"] if options.token_budget
                                                  else r["selected"]))
               for r in totals if r["category"] is not None and stats[r["category"]].n > 0}
    usable = {c: stats[c] for c in targets}
    bounds = {c: (HASH_MIN, HASH_MAX) for c in usable}
    return exact_cuts(views, ranked_random, targets, usable, bounds, **refine)


def _cuts_view(views: _Views, name: str, cuts: Mapping[str, Cut]) -> str:
    return _rows_view(views, name, [dataclasses.asdict(c) for c in cuts.values()], _CUT_SCHEMA)


@contextlib.contextmanager
def selection_rows(spark, inputs: SelectionInputs, options: SelectOptions, selection_id: str,
                   params: str, buckets: int = DEFAULT_BUCKETS,
                   candidate_limit: int = DEFAULT_CANDIDATE_LIMIT) -> Iterator[Any]:
    """The rows of the selection table (a DataFrame with SELECTION's columns), valid inside the
    ``with`` block; the joined scores and the ranked rows are cached meanwhile."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from longattn_spark.select.ranked import (
        RankedInputs,
        cut_statistics_columns,
        joined_rows,
        ranked_rows,
        referenced_names,
    )

    views = _Views(spark)
    ranked_df = joined = None
    refine = {"buckets": buckets, "candidate_limit": candidate_limit}
    recipe = inputs.recipe
    try:
        ranked_inputs = RankedInputs(
            scores=inputs.scores.read(spark, inputs.scores_version),
            windows=inputs.windows.read(spark, inputs.windows_version), recipe=recipe,
            scorer_ids=inputs.scorer_ids, heads=options.heads)
        if len(recipe.scorers) > 1:
            # several scorers: their full outer join, read by the category statistics and by
            # the ranked rows, is computed once. One scorer's rows (a scan and a hash join) are
            # computed twice as they always were: the statistics' sums then add in the same
            # order as the previous release's, bit for bit (tests/test_selection.py).
            joined = joined_rows(ranked_inputs, referenced_names(recipe)).persist(
                StorageLevel.MEMORY_AND_DISK)
        ranked_df = ranked_rows(spark, ranked_inputs, joined).persist(
            StorageLevel.MEMORY_AND_DISK)
        ranked = views.add("ranked", ranked_df)
        stats = _cut_stats(ranked_df.groupBy("category").agg(*cut_statistics_columns()))
        if joined is not None:  # ranked_df is cached now: free the memory for its blocks
            joined.unpersist()
            joined = None
        check_mix_categories(options.mix, {c: s for c, s in stats.items() if s.n > 0})
        cuts = _cuts_view(views, "cuts", rank_cuts(views, ranked, options, stats, **refine))
        min_lds = options.min_lds if options.min_lds is not None else float("-inf")
        flagged = views.sql("flagged", "select_flagged", ranked=ranked, cuts=cuts,
                            min_lds=min_lds)
        if options.method == "random" or recipe.recipe.draw == "random":
            drawn = ranked_df.withColumn("sort_key", F.when(
                F.col("sort_key").isNotNull(),
                F.xxhash64(F.col("window_id"), F.lit(int(options.seed)).cast("bigint"))
                .cast("double")))  # the seed as BIGINT: the hash differs by type
            ranked = views.add("ranked_random", drawn)
            cuts = _cuts_view(views, "cuts_random",
                              random_cuts(views, ranked, flagged, options, stats, **refine))
            flagged = views.sql("flagged_random", "select_flagged", ranked=ranked, cuts=cuts,
                                min_lds=float("-inf"))
        yield selection_frame(spark.table(flagged), inputs, selection_id, params)
    finally:
        # unpersist first: on Spark Connect a DataFrame is a plan naming its views
        for cached in (ranked_df, joined):
            if cached is not None:
                cached.unpersist()
        views.drop()


def selection_frame(flagged, inputs: SelectionInputs, selection_id: str, params: str):
    """The selection table's rows from the flagged rows (SELECTION's columns)."""
    from pyspark.sql import functions as F

    recipe = inputs.recipe.recipe
    scorer_ids = F.create_map(*[x for name, sid in inputs.scorer_ids.items()
                                for x in (F.lit(name), F.lit(sid))])
    return flagged.select(
        F.lit(selection_id).alias("selection_id"), "window_id", "category", "n_tokens", "ds",
        "variance", "z_ds", "z_du", "lds", "selected", "excluded_reason",
        F.lit(inputs.scorer_id).alias("scorer_id"), F.lit(params).alias("params"),
        F.lit(inputs.windows_version).cast("bigint").alias("windows_version"),
        F.lit(inputs.scores_version).cast("bigint").alias("scores_version"),
        F.current_timestamp().alias("selected_at"), "rank", "passed", "dropped_by",
        F.lit(recipe.name).alias("recipe"), F.lit(recipe.sha256).alias("recipe_sha256"),
        scorer_ids.alias("scorer_ids"))


def _cut_stats(frame) -> dict[str | None, CutStats]:
    return {r["category"]: CutStats.from_mapping(r) for r in frame.collect()}


def selection_present(spark, table, selection_id: str) -> bool:
    return bool(spark.sql(load_sql("select_exists"), args={
        "selection": table.sql_name(spark), "selection_id": selection_id}).collect())


def read_summary(spark, table, selection_id: str, options: SelectOptions
                 ) -> tuple[CategorySummary, ...]:
    """Per-category summary of a selection, read back from the selection table."""
    return with_budgets(selection_summary(spark, table.sql_name(spark), selection_id), options)


def write_selection(spark, table, rows, selection_id: str) -> None:
    """Write one selection as its own partition, replacing it if present (idempotent)."""
    from longattn_spark.tables.retries import retry_on_conflict
    from longattn_spark.tables.schemas import SELECTION

    if not _SELECTION_ID.match(selection_id):
        raise ValueError(f"not a selection id: {selection_id!r}")
    writer = (rows.select(*SELECTION.column_names).write.format("delta").mode("overwrite")
              .option("replaceWhere", f"selection_id = '{selection_id}'"))
    if table.is_path:
        retry_on_conflict(lambda: writer.save(table.location), what=f"writing {table}")
    else:
        retry_on_conflict(lambda: writer.saveAsTable(table.text), what=f"writing {table}")
