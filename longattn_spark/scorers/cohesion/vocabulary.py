"""The categories' vocabularies (``stats.Vocabulary``) from the windows table, on the driver
before any scoring task: one Spark aggregation, collected (Spark IO; the math is ``stats.py``).

Which windows: of each category, the ``df_sample`` windows with the smallest
``xxhash64(window_id)`` (all of them in a smaller category). The cut is found on (category,
hash) pairs only, so the ids of the windows left out are never shuffled, and the same table
gives the same sample on every run and cluster: a killed score run plans the same vocabulary
again and resumes under the same scorer_id."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from longattn_spark.scorers.cohesion.stats import Vocabulary


def sampled_windows(windows: DataFrame, df_sample: int) -> DataFrame:
    """(category, input_ids) of at most ``df_sample`` windows per category, by the smallest
    hash of their window_id (ties of the 64-bit hash: every window at the cut)."""
    hashed = windows.select("category", F.xxhash64("window_id").alias("_h"))
    rank = Window.partitionBy("category").orderBy("_h")
    cuts = (hashed.withColumn("_r", F.row_number().over(rank))
            .where(F.col("_r") <= F.lit(df_sample))
            .groupBy("category").agg(F.max("_h").alias("_cut")))
    return (windows.select("category", "input_ids", F.xxhash64("window_id").alias("_h"))
            .join(F.broadcast(cuts), "category")
            .where(F.col("_h") <= F.col("_cut"))
            .select("category", "input_ids"))


def category_vocabularies(windows: DataFrame, df_sample: int) -> dict[str | None, Vocabulary]:
    """category -> its Vocabulary over the sampled windows (``sampled_windows``)."""
    sample = sampled_windows(windows, df_sample)
    counts = {r["category"]: int(r["count"])
              for r in sample.groupBy("category").count().collect()}
    df = (sample.select("category", F.explode(F.array_distinct("input_ids")).alias("token"))
          .groupBy("category", "token").count().toPandas())
    out = {}
    for category, n in counts.items():
        rows = df[df["category"].isna()] if category is None else df[df["category"] == category]
        out[category] = Vocabulary.of(n, rows["token"].to_numpy("int64"),
                                      rows["count"].to_numpy("int64"))
    return out
