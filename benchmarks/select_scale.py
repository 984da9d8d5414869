"""How the select job scales: 1M and 10M synthetic scores, local Spark against pandas.

For each size, synthetic windows (no input_ids) and scores of one scorer in three categories
are generated with ``spark.range`` and written as Delta tables (not timed). Then, timed:

- Spark: ``run_select_job`` (the select command: pinned reads, join, per-category statistics,
  LDS, the cut, the Delta write of every row, the summary read back).
- pandas: the same computation on the same files (pyarrow reads of the tables' Parquet files,
  join, per-category z-scores, LDS, an exact cut, a Parquet write of every row with the
  selection table's columns).

Two cuts are timed: ``--keep-fraction 0.5`` (percentile_approx, the default) and
``--token-budget`` at half the tokens (the exact histogram cut). A small warm-up selection runs
first so that neither size pays the JVM's first-query costs. Goals: Spark's time grows at most
12x from 1M to 10M rows, and is within 3x of pandas at 10M.

    .venv/bin/python benchmarks/select_scale.py [--sizes 1000000 10000000] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

CATEGORY_SQL = ("CASE WHEN id % 10 < 5 THEN 'book' WHEN id % 10 < 8 THEN 'arxiv' "
                "ELSE 'code' END")
WINDOW_TOKENS = 32768


def build_tables(spark, root: Path, rows: int) -> tuple[str, str]:
    """Windows and scores Delta tables of ``rows`` windows (schemas from tables.py)."""
    from longattn_spark.tables.refs import TableRef
    from longattn_spark.tables.schemas import SCORES, WINDOWS
    from longattn_spark.tables.writes import ensure_table

    windows, scores = str(root / f"windows_{rows}"), str(root / f"scores_{rows}")
    base = spark.range(rows).selectExpr(
        "substr(sha2(CAST(id AS STRING), 256), 1, 32) AS window_id", f"{CATEGORY_SQL} AS category",
        "id")
    w = base.selectExpr(
        "window_id", "concat('doc-', id) AS doc_id", "category", "0 AS window_index",
        "CAST(id AS INT) AS token_start", f"{WINDOW_TOKENS} AS n_tokens",
        "CAST(NULL AS ARRAY<INT>) AS input_ids", "CAST(0 AS BIGINT) AS char_start",
        "CAST(0 AS BIGINT) AS char_end", "'bench@0' AS tokenizer",
        "current_timestamp() AS ingested_at")
    s = base.selectExpr(
        "window_id", "'bench' AS scorer_id", "category", "0.18 + 0.41 * rand(1) AS ds",
        "pow(10, -7 + 1.7 * rand(2)) AS variance", "CAST(NULL AS ARRAY<DOUBLE>) AS ds_heads",
        "CAST(NULL AS ARRAY<DOUBLE>) AS var_heads", f"{WINDOW_TOKENS} AS seq_len",
        f"{WINDOW_TOKENS // 4} AS min_distance", "'bench' AS model",
        "current_timestamp() AS scored_at", "'longattn' AS method")
    # as the score job writes a LongAttn row: its components map holds ds and variance
    s = s.selectExpr("*", "map('ds', ds, 'variance', variance) AS components")
    for ref, spec, frame in ((TableRef(windows), WINDOWS, w), (TableRef(scores), SCORES, s)):
        ensure_table(spark, ref, spec)
        with_nulls(frame, spec).write.format("delta").mode("append").save(ref.location)
    return windows, scores


def with_nulls(frame, spec):
    """``frame`` with the spec's columns in order; the ones it lacks as typed NULLs (the
    schemas gain columns: doc_sha256, method, score, the components map, ...)."""
    from pyspark.sql import functions as F

    have = set(frame.columns)
    return frame.select(*[F.col(f.name) if f.name in have
                          else F.lit(None).cast(f.dataType).alias(f.name)
                          for f in spec.schema.fields])


def time_spark(spark_settings, windows: str, scores: str, selection: str, cut: list[str]
               ) -> float:
    from longattn_spark.cli import parse_config
    from longattn_spark.select import run_select_job

    _, cfg = parse_config(["select", "--windows", windows, "--scores", scores,
                           "--table", selection, *cut])
    cfg.spark = spark_settings
    start = time.perf_counter()
    run_select_job(cfg)
    return time.perf_counter() - start


def pandas_select(windows: str, scores: str, out: Path, keep_fraction: float | None,
                  token_budget: int | None) -> float:
    """The same selection in pandas; returns seconds."""
    import numpy as np
    import pandas as pd
    import pyarrow.dataset as ds

    start = time.perf_counter()
    s = ds.dataset(scores, format="parquet", partitioning="hive").to_table(
        columns=["window_id", "ds", "variance"], filter=ds.field("scorer_id") == "bench"
    ).to_pandas()
    w = ds.dataset(windows, format="parquet", partitioning="hive").to_table(
        columns=["window_id", "category", "n_tokens"]).to_pandas()
    df = s.merge(w, on="window_id", how="left")
    df["category"] = df["category"].astype(str)
    df["usable"] = np.isfinite(df["ds"]) & np.isfinite(df["variance"]) & df["n_tokens"].notna()
    u = df[df["usable"]]
    g = u.groupby("category")
    for col, out_col, sign in (("ds", "z_ds", 1.0), ("variance", "z_du", -1.0)):
        sd = g[col].transform("std")
        df.loc[df["usable"], out_col] = (sign * (u[col] - g[col].transform("mean")) / sd).where(
            sd > 0, 0.0)
    df["lds"] = df["z_ds"] + 0.5 * df["z_du"]
    df = df.sort_values(["category", "lds"], ascending=[True, False])
    by_category = df.groupby("category")
    if keep_fraction is not None:
        rank = by_category.cumcount() + 1
        n = by_category["lds"].transform("count")
        df["selected"] = rank <= np.floor(keep_fraction * n)
    else:
        category_tokens = df[df["usable"]].groupby("category")["n_tokens"].sum()
        total = int(category_tokens.sum())
        budgets = {c: token_budget * int(t) // total for c, t in category_tokens.items()}
        df["selected"] = by_category["n_tokens"].cumsum() <= df["category"].map(budgets)
    df["excluded_reason"] = np.where(df["usable"], None, "null_score")
    for column, value in (("selection_id", "0" * 24), ("scorer_id", "bench"),
                          ("params", '{"alpha": 0.5}'), ("windows_version", 1),
                          ("scores_version", 1), ("selected_at", pd.Timestamp.now())):
        df[column] = value
    df.drop(columns="usable").to_parquet(out)
    return time.perf_counter() - start


def work_session(folder: str, name: str, conf: dict[str, str] | None = None):
    """The benchmark's work folder (``folder`` or a temporary one), Spark settings with a
    lakehouse in it (and ``conf`` as extra Spark settings), and the session."""
    from longattn_spark.config import SparkSettings
    from longattn_spark.session import get_spark

    root = Path(folder or tempfile.mkdtemp(prefix=name.replace("-", "_") + "_")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    settings = SparkSettings(lakehouse=str(root / "lakehouse"), catalog="in-memory",
                             spark_conf=dict(conf or {}))
    return root, settings, get_spark(settings, app_name=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--dir", default="", help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated tables")
    args = parser.parse_args()

    root, settings, spark = work_session(args.dir, "select-scale")
    cores = spark.sparkContext.defaultParallelism
    try:
        warm_w, warm_s = build_tables(spark, root, 20_000)
        time_spark(settings, warm_w, warm_s, str(root / "sel_warm"), ["--keep-fraction", "0.5"])
        results = []
        for rows in args.sizes:
            windows, scores = build_tables(spark, root, rows)
            budget = rows * WINDOW_TOKENS // 2
            for name, cut, kf, tb in (
                    ("keep-fraction 0.5 (approx)", ["--keep-fraction", "0.5"], 0.5, None),
                    ("token-budget 50% (exact)", ["--token-budget", str(budget)], None, budget)):
                tag = "kf" if kf else "tb"
                spark_s = time_spark(settings, windows, scores,
                                     str(root / f"sel_{rows}_{tag}"), cut)
                pandas_s = pandas_select(windows, scores, root / f"pandas_{rows}_{tag}.parquet",
                                         kf, tb)
                results.append((rows, name, spark_s, pandas_s))
        print(f"\nselect_scale: local Spark ({cores} cores) vs pandas, same Delta tables")
        print(f"{'rows':>12}  {'cut':<28}{'spark s':>10}{'pandas s':>10}{'spark/pandas':>14}")
        for rows, name, spark_s, pandas_s in results:
            print(f"{rows:>12,}  {name:<28}{spark_s:>10.1f}{pandas_s:>10.1f}"
                  f"{spark_s / pandas_s:>14.2f}")
        sizes = sorted(set(args.sizes))
        if len(sizes) >= 2:
            small, large = sizes[0], sizes[-1]
            for name in dict.fromkeys(r[1] for r in results):
                t = {r[0]: (r[2], r[3]) for r in results if r[1] == name}
                print(f"growth {small:,} -> {large:,} rows ({large / small:.0f}x data), {name}: "
                      f"spark {t[large][0] / t[small][0]:.1f}x, "
                      f"pandas {t[large][1] / t[small][1]:.1f}x")
    finally:
        spark.stop()
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
