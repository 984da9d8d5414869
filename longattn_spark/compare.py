"""``longattn-spark compare``: any two scorers (two methods, e.g. LongAttn and ProLong or
lossgain, or one method with two models or settings) on the same windows, which none of the
published anchors offers.

Per category: Spearman's rank correlation of the two scorers' values (what ``select`` ranks
by without a recipe: each method's own ranking, ``ScorerMethod.ranking``, e.g. LongAttn's LDS
``z(DS) + alpha * z(DU)``, loss gain's ``z(score)``), the overlap (Jaccard) of two selections'
kept sets, a scatter of one value against the other, and the windows the two rank furthest
apart. The values are the recipes' Column expressions (``select.ranked``); the rest is the SQL
of ``longattn_spark/sql/compare_*.sql``. The report draws the same section when its scores
table holds two scorers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from longattn_spark.config import CompareConfig, LongAttnConfig
from longattn_spark.errors import ConfigError, TableError
from longattn_spark.inputs import (
    StoredScorer,
    scorer_counts_and_methods,
    scorer_records,
    stored_scorers,
)
from longattn_spark.sqlfiles import load_sql
from longattn_spark.stats import category_order
from longattn_spark.tables.refs import TableRef


@dataclass(frozen=True)
class CategoryAgreement:
    """How two scorers agree on one category."""

    category: str | None
    windows: int                  # windows both scorers scored (finite values)
    spearman: float | None        # None with fewer than 2 windows or no spread
    kept_a: int | None = None     # with two selections: kept sets and their overlap
    kept_b: int | None = None
    kept_both: int | None = None
    jaccard: float | None = None


@dataclass(frozen=True)
class Disagreement:
    window_id: str
    category: str | None
    value_a: float
    value_b: float
    pct_a: float   # rank within the category as a fraction: 0 lowest, 1 highest
    pct_b: float
    gap: float


@dataclass
class Comparison:
    a: str
    b: str
    categories: list[CategoryAgreement]
    disagreements: list[Disagreement]
    scatter: list[tuple[str | None, float, float]] = field(default_factory=list)
    selections: tuple[str, str] | None = None
    #: what each value is: the scorer's method and its ranking, in the order (a, b)
    rankings: tuple[str, str] = ("", "")

    def value_name(self, which: str) -> str:
        """What the value of scorer ``which`` ("a" or "b") is: its method and ranking."""
        return self.rankings[0 if which == "a" else 1]


def scorer_pair(spark: SparkSession, scores: TableRef, a: str, b: str) -> tuple[str, str]:
    """(a, b): the two given, or the table's two scorers when none is given."""
    found = [r["scorer_id"] for r in scores.read(spark).select("scorer_id").distinct()
             .orderBy("scorer_id").collect()]
    if a and b:
        for option, value in (("--a", a), ("--b", b)):
            if value not in found:
                raise ConfigError(f"{option} {value}: no such scorer_id in {scores} (scorers: "
                                  f"{', '.join(found) or 'none'})")
        return a, b
    if len(found) != 2 or a or b:
        raise ConfigError(f"--a and --b: {scores} holds {len(found)} scorers "
                          f"({', '.join(found) or 'none'}); name the two to compare")
    return found[0], found[1]


def scorer_values(spark: SparkSession, scores, scorer: StoredScorer, alpha: float = 0.5
                  ) -> tuple[DataFrame, str]:
    """(window_id, category, value) of one scorer: its method's own ranking within each
    category over the scorer's rows, and a label saying what the value is."""
    from longattn_spark.recipes.checked import check_recipe, default_recipe
    from longattn_spark.select.ranked import RankedInputs, ranked_rows

    recipe = default_recipe(scorer.spec)
    if "alpha" in recipe.params_dict:
        recipe = recipe.with_params(alpha=float(alpha))
    checked = check_recipe(recipe)
    ranked = ranked_rows(spark, RankedInputs(scores=scores, windows=None, recipe=checked,
                                             scorer_ids={recipe.scorers[0].name:
                                                         scorer.scorer_id}))
    return (ranked.filter(F.col("rank").isNotNull())
            .select("window_id", "category", F.col("rank").alias("value")),
            f"{scorer.method}: {recipe.rank}")


def ranked_pairs(a: DataFrame, b: DataFrame) -> DataFrame:
    """The windows both scorers rank, with both values and their average ranks within the
    category (ties share the mean of their ranks, as Spearman's correlation defines them)."""
    pairs = (a.withColumnRenamed("value", "value_a")
             .join(b.select("window_id", F.col("value").alias("value_b")), "window_id"))
    out = pairs
    for side in ("a", "b"):
        value = f"value_{side}"
        ordered = Window.partitionBy("category").orderBy(value)
        out = out.withColumn(f"rank_{side}", F.rank().over(ordered) + (
            F.count(F.lit(1)).over(Window.partitionBy("category", value)) - 1) / 2.0)
    return out.withColumn("n", F.count(F.lit(1)).over(Window.partitionBy("category")))


def compare_scorers(spark: SparkSession, scores: TableRef | str, a: str, b: str, *,
                    alpha: float = 0.5, selection: TableRef | str | None = None,
                    selections: tuple[str, str] | None = None, disagreements: int = 10,
                    scatter_points: int = 2000, records: dict[str, dict] | None = None
                    ) -> Comparison:
    """Compare scorers ``a`` and ``b`` of the scores table (see the module docstring).
    Tables are ``TableRef``s or names usable in ``IDENTIFIER()`` (e.g. the report's views);
    ``records``: the scorers' records (``inputs.scorer_records``) when ``scores`` is a view
    (a plugin's rows name its method, its record the ``package.module:attr`` that loads it)."""
    frame = scores.read(spark) if isinstance(scores, TableRef) else spark.table(scores)
    counts, methods = scorer_counts_and_methods(frame)
    if records is None:
        records = scorer_records(spark, scores) if isinstance(scores, TableRef) else {}
    stored = stored_scorers(counts, records, methods)
    value_a, label_a = scorer_values(spark, frame, stored[a], alpha)
    value_b, label_b = scorer_values(spark, frame, stored[b], alpha)
    ranked = ranked_pairs(value_a, value_b).localCheckpoint(eager=True)
    ranked_view = "longattn_compare_" + hashlib.sha1(f"{id(ranked)}{a}{b}".encode()
                                                     ).hexdigest()[:10]
    ranked.createOrReplaceTempView(ranked_view)
    agreement = {r["category"]: CategoryAgreement(r["category"], int(r["windows"]),
                                                  _finite(r["spearman"]))
                 for r in spark.sql(load_sql("compare_spearman"),
                                    args={"ranked": ranked_view}).collect()}
    if selection is not None and selections is not None:
        selection_name = (selection.sql_name(spark) if isinstance(selection, TableRef)
                          else selection)
        kept = spark.sql(load_sql("compare_kept"), args={
            "selection": selection_name, "sel_a": selections[0],
            "sel_b": selections[1]}).collect()
        for r in kept:
            base = agreement.get(r["category"], CategoryAgreement(r["category"], 0, None))
            agreement[r["category"]] = CategoryAgreement(
                base.category, base.windows, base.spearman, int(r["kept_a"]),
                int(r["kept_b"]), int(r["kept_both"]), float(r["jaccard"]))
    worst = [Disagreement(r["window_id"], r["category"], float(r["value_a"]),
                          float(r["value_b"]), float(r["pct_a"]), float(r["pct_b"]),
                          float(r["gap"]))
             for r in spark.sql(load_sql("compare_disagreements"),
                                args={"ranked": ranked_view, "n": int(disagreements)}).collect()]
    sample = (ranked.orderBy(F.xxhash64("window_id"), "window_id").limit(scatter_points)
              .select("category", "value_a", "value_b").collect())
    spark.catalog.dropTempView(ranked_view)
    return Comparison(a=a, b=b, categories=[agreement[c] for c in sorted(
        agreement, key=category_order)], disagreements=worst,
        scatter=[(r["category"], float(r["value_a"]), float(r["value_b"])) for r in sample],
        selections=selections, rankings=(label_a, label_b))


def _finite(value) -> float | None:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)


def plot_scatter(comparison: Comparison) -> bytes:
    """PNG: one scorer's value against the other's, a colour per category (pure)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    categories = sorted({c for c, _, _ in comparison.scatter}, key=lambda c: c or "")
    for category in categories:
        points = [(x, y) for c, x, y in comparison.scatter if c == category]
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=8, alpha=0.6,
                   label=category or "(none)")
    ax.set_xlabel(f"{comparison.a} ({comparison.value_name('a')})")
    ax.set_ylabel(f"{comparison.b} ({comparison.value_name('b')})")
    if categories:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def parse_selections(text: str) -> tuple[str, str] | None:
    """``S1,S2`` -> (S1, S2); empty -> None."""
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--selections {text!r}: give two selection ids, S1,S2")
    return parts[0], parts[1]


def run_compare_job(cfg: LongAttnConfig) -> Comparison:
    """``longattn-spark compare``."""
    from longattn_spark.session import get_spark

    options: CompareConfig = cfg.compare
    selections = parse_selections(options.selections)
    spark = get_spark(cfg.spark, app_name="longattn-spark compare")
    scores = TableRef(options.scores)
    if not scores.exists(spark):
        raise TableError(f"--scores {options.scores}: no such table")
    selection = TableRef(options.selection) if selections else None
    if selection is not None and not selection.exists(spark):
        raise TableError(f"--selection {options.selection}: no such table")
    a, b = scorer_pair(spark, scores, options.a, options.b)
    comparison = compare_scorers(spark, scores, a, b, alpha=options.alpha, selection=selection,
                                 selections=selections, disagreements=options.disagreements)
    print_comparison(comparison)
    return comparison


def print_comparison(comparison: Comparison) -> None:
    from rich.table import Table

    from longattn_spark.console import make_console

    table = Table(title=f"compare {comparison.a} (a: {comparison.value_name('a')}) with "
                        f"{comparison.b} (b: {comparison.value_name('b')})")
    for column in ("category", "windows", "spearman", "kept a", "kept b", "kept both",
                   "jaccard"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for c in comparison.categories:
        table.add_row(c.category or "(none)", f"{c.windows:,}", _fmt(c.spearman),
                      *(_fmt(v) for v in (c.kept_a, c.kept_b, c.kept_both, c.jaccard)))
    console = make_console()  # COLUMNS, or wide in logs
    console.print(table)
    worst = Table(title="windows ranked furthest apart (rank as a fraction of the category)")
    for column in ("window_id", "category", "rank a", "rank b", "gap"):
        worst.add_column(column)
    for d in comparison.disagreements:
        worst.add_row(d.window_id, d.category or "", f"{d.pct_a:.3f}", f"{d.pct_b:.3f}",
                      f"{d.gap:.3f}")
    console.print(worst)


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}"
