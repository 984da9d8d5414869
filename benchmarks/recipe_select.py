"""Selecting by a recipe over two scorers against today's LDS selection, same windows (issue 29).

For each size, ``select_scale.build_tables`` writes synthetic windows (no input_ids) and one
LongAttn scorer's rows (scorer_id ``bench``); then rows of two more scorers are appended to the
same scores table, as the score job writes them (not timed):

- ``bench-rp``, method ``repetition``: its thirteen components in the ``components`` map
  (``compression``, ``dup_5gram``, ...), ``score`` = compression;
- ``bench-lg``, method ``lossgain``: its eleven components in the map (``score``,
  ``short_loss``, ``full_loss``, ``copy_share``, ``min_cohesion``, ...), the ``score`` column
  and the ``lossgain`` struct.

Timed, alternating on the same tables, each into a fresh selection table (``run_select_job``
as ``select_scale.time_spark``: pinned reads, join(s), per-category statistics, the cut, the
Delta write of every row, the summary read back):

- LDS: ``--scorer-id bench --keep-fraction 0.5`` (the LongAttn scorer's own ranking);
- recipe: ``--recipe recommended --scorer-id repetition=bench-rp,lossgain=bench-lg
  --keep-fraction 0.5`` (two scorers joined by window_id, two filters, a rank of four
  z-scores).

Each select's wall seconds and CPU seconds (this Python process + the session's JVM, from
/proc: less sensitive to a loaded machine) are printed. A warm-up of both at 20,000 rows
runs first. Goal (issue 29): recipe <= 1.5x LDS at 10M.
Also checked: the recipe's selection table holds one row per window.

    .venv/bin/python benchmarks/recipe_select.py [--sizes 1000000 10000000] [--rounds 2 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from select_scale import build_tables, with_nulls, work_session  # noqa: E402

REPETITION = {  # component -> SQL over a uniform u in [0, 1) per window (plausible ranges)
    "top_2gram": "0.02 + 0.10 * {u}", "top_3gram": "0.01 + 0.06 * {u}",
    "top_4gram": "0.005 + 0.04 * {u}", "dup_5gram": "0.02 + 0.30 * pow({u}, 3)",
    "dup_6gram": "0.015 + 0.28 * pow({u}, 3)", "dup_7gram": "0.012 + 0.26 * pow({u}, 3)",
    "dup_8gram": "0.010 + 0.24 * pow({u}, 3)", "dup_9gram": "0.008 + 0.22 * pow({u}, 3)",
    "dup_10gram": "0.006 + 0.20 * pow({u}, 3)", "distinct_10gram": "1 - 0.2 * pow({u}, 3)",
    "compression": "1.35 + 0.6 * pow({u}, 2)", "lag_match": "0.02 + 0.5 * pow({u}, 4)",
    "min_split_jaccard": "0.10 + 0.35 * {u}",
}


def add_recipe_scorers(spark, scores: str, rows: int) -> None:
    """Append the repetition and lossgain scorers' rows for windows 0 .. rows-1."""
    from longattn_spark.tables.refs import TableRef
    from longattn_spark.tables.schemas import SCORES

    from select_scale import CATEGORY_SQL

    base = spark.range(rows).selectExpr(
        "substr(sha2(CAST(id AS STRING), 256), 1, 32) AS window_id",
        f"{CATEGORY_SQL} AS category", "rand(11) AS u1", "rand(12) AS u2", "rand(13) AS u3",
        "rand(14) AS u4", "rand(15) AS u5", "rand(16) AS u6")
    common = ["window_id", "category", "current_timestamp() AS scored_at",
              "CAST(32768 AS INT) AS seq_len", "'cpu' AS device", "'float64' AS dtype"]
    rp_map = ", ".join(f"'{name}', CAST({expr.format(u='u1')} AS DOUBLE)"
                       for name, expr in REPETITION.items())
    rp = base.selectExpr(*common, "'bench-rp' AS scorer_id", "'repetition' AS method",
                         "'numpy' AS kernel", f"map({rp_map}) AS components"
                         ).selectExpr("*", "components['compression'] AS score")
    lg = base.selectExpr(
        *[c for c in common if "dtype" not in c], "'bench-lg' AS scorer_id",
        "'lossgain' AS method", "'torch' AS kernel", "'bfloat16' AS dtype",
        "'bench' AS model", "2.6 + 1.6 * u2 AS short_loss", "0.02 + 0.45 * u3 AS score",
        "0.12 * pow(u4, 4) AS copy_share", "0.01 + 0.10 * u4 AS key_share",
        "0.05 + 0.25 * u5 AS min_cohesion", "0.4 + 2.5 * pow(u6, 2) AS loss_spike",
        "score - 0.05 - 0.1 * u6 AS min_block_gain", "0.3 + 0.4 * pow(u5, 2) AS loss_roughness"
    ).selectExpr(
        "*", "short_loss - score AS full_loss", "score * (1 - copy_share) AS dependency_gain",
        "key_share * (1 - copy_share) AS dependency_key_share",
    ).selectExpr(
        "*", "named_struct('key_share', key_share, 'full_loss', full_loss, "
        "'short_loss', short_loss, 'short_context', 1024) AS lossgain",
        "map('score', score, 'key_share', key_share, 'full_loss', full_loss, "
        "'short_loss', short_loss, 'copy_share', copy_share, 'dependency_gain', "
        "dependency_gain, 'dependency_key_share', dependency_key_share, 'min_cohesion', "
        "min_cohesion, 'loss_spike', loss_spike, 'min_block_gain', min_block_gain, "
        "'loss_roughness', loss_roughness) AS components")
    location = TableRef(scores).location
    with_nulls(rp.unionByName(lg, allowMissingColumns=True), SCORES).write.format(
        "delta").mode("append").save(location)


def cpu_seconds(spark) -> float:
    """CPU seconds so far of this Python process and the session's JVM (Linux /proc)."""
    import os

    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return time.process_time() + (int(fields[11]) + int(fields[12])) / os.sysconf(
        "SC_CLK_TCK")


def time_select(spark, settings, windows: str, scores: str, selection: str, flags: list[str]
                ) -> tuple[float, float]:
    """Wall and CPU (driver Python + JVM) seconds of one ``run_select_job``."""
    from longattn_spark.cli import parse_config
    from longattn_spark.select import run_select_job

    _, cfg = parse_config(["select", "--windows", windows, "--scores", scores,
                           "--table", selection, *flags])
    cfg.spark = settings
    cpu = cpu_seconds(spark)
    start = time.perf_counter()
    run_select_job(cfg)
    return time.perf_counter() - start, cpu_seconds(spark) - cpu


LDS = ["--scorer-id", "bench", "--keep-fraction", "0.5"]
RECIPE = ["--recipe", "recommended", "--scorer-id", "repetition=bench-rp,lossgain=bench-lg",
          "--keep-fraction", "0.5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--rounds", type=int, nargs="+", default=[2, 1],
                        help="alternating LDS/recipe pairs per size (the last repeats)")
    parser.add_argument("--max-small-s", type=float, default=60.0,
                        help="skip the larger sizes when a select at a smaller one took longer")
    parser.add_argument("--dir", default="", help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated tables")
    parser.add_argument("--also-recipe", default="",
                        help="a recipe (name or YAML file) also timed in each round, after "
                             "the pair, against the same LDS (e.g. an earlier recipe)")
    parser.add_argument("--recipe", default="recommended",
                        help="the recipe timed against LDS (name or YAML file)")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra Spark setting of the embedded session (repeatable)")
    args = parser.parse_args()
    RECIPE[1] = args.recipe

    root, settings, spark = work_session(args.dir, "recipe-select",
                                         dict(c.split("=", 1) for c in args.conf))
    cores = spark.sparkContext.defaultParallelism
    results: list[tuple[int, int, float, float, int]] = []
    t0 = time.perf_counter()
    try:
        warm_w, warm_s = build_tables(spark, root, 20_000)
        add_recipe_scorers(spark, warm_s, 20_000)
        time_select(spark, settings, warm_w, warm_s, str(root / "sel_warm_lds"), LDS)
        time_select(spark, settings, warm_w, warm_s, str(root / "sel_warm_recipe"), RECIPE)
        for i, rows in enumerate(args.sizes):
            if results and max(max(r[2], r[3]) for r in results) > args.max_small_s:
                print(f"skipping {rows:,} rows: a select at a smaller size took over "
                      f"{args.max_small_s:.0f} s")
                break
            build = time.perf_counter()
            windows, scores = build_tables(spark, root, rows)
            add_recipe_scorers(spark, scores, rows)
            print(f"[{rows:,} rows] tables written in {time.perf_counter() - build:.1f} s")
            rounds = args.rounds[min(i, len(args.rounds) - 1)]
            for r in range(rounds):
                # alternate which goes first, so neither always follows the other
                order = (("lds", LDS), ("recipe", RECIPE))[::1 if r % 2 == 0 else -1]
                seconds, cpu = {}, {}
                for tag, flags in order:
                    sel = str(root / f"sel_{rows}_{tag}_{r}")
                    seconds[tag], cpu[tag] = time_select(spark, settings, windows, scores, sel,
                                                         flags)
                    if tag == "recipe":
                        n_sel = spark.read.format("delta").load(sel).count()
                results.append((rows, r, seconds["lds"], seconds["recipe"], n_sel, cpu["lds"],
                                cpu["recipe"]))
                if args.also_recipe:
                    flags = ["--recipe", args.also_recipe, *RECIPE[2:]]
                    also, also_cpu = time_select(spark, settings, windows, scores,
                                                 str(root / f"sel_{rows}_also_{r}"), flags)
                    print(f"[{rows:,} rows] round {r + 1}: {args.also_recipe} {also:.1f} s "
                          f"({also_cpu:.1f} s CPU), ratio to this round's LDS wall "
                          f"{also / seconds['lds']:.2f}, CPU {also_cpu / cpu['lds']:.2f}")
                print(f"[{rows:,} rows] round {r + 1}: LDS {seconds['lds']:.1f} s "
                      f"({cpu['lds']:.1f} s CPU), recipe {seconds['recipe']:.1f} s "
                      f"({cpu['recipe']:.1f} s CPU), ratio wall "
                      f"{seconds['recipe'] / seconds['lds']:.2f}, CPU "
                      f"{cpu['recipe'] / cpu['lds']:.2f}; recipe selection rows "
                      f"{n_sel:,} ({'=' if n_sel == rows else '!='} windows {rows:,})")
        print(f"\nrecipe_select: local Spark ({cores} cores), recipe {args.recipe!r} over 2 "
              f"scorers vs LDS over 1, same windows, --keep-fraction 0.5")
        print(f"{'rows':>12}{'round':>7}{'LDS s':>9}{'recipe s':>10}{'recipe/LDS':>12}"
              f"{'LDS CPU':>9}{'rec CPU':>9}{'CPU ratio':>11}{'recipe rows':>13}")
        for rows, r, lds, rec, n_sel, c_lds, c_rec in results:
            print(f"{rows:>12,}{r + 1:>7}{lds:>9.1f}{rec:>10.1f}{rec / lds:>12.2f}"
                  f"{c_lds:>9.1f}{c_rec:>9.1f}{c_rec / c_lds:>11.2f}{n_sel:>13,}")
        for rows in dict.fromkeys(r[0] for r in results):
            mine = [r for r in results if r[0] == rows]
            lds, rec = sum(r[2] for r in mine), sum(r[3] for r in mine)
            c_lds, c_rec = sum(r[5] for r in mine), sum(r[6] for r in mine)
            print(f"{rows:>12,} rows: recipe / LDS over {len(mine)} round(s) = {rec / lds:.2f} "
                  f"wall, {c_rec / c_lds:.2f} CPU (goal at 10M: <= 1.5); rows check "
                  f"{'ok' if all(r[4] == rows for r in mine) else 'FAILED'}")
        print(f"total {time.perf_counter() - t0:.0f} s")
    finally:
        spark.stop()
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
