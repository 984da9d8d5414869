"""``probe --rank/--where`` on an existing probe table of about 3,000 rows (issue 29).

Not timed: the demo corpus (standard-library code, docs, licences) is ingested with the
Llama-3 tokenizer at ``--window-size``, and a probe is written through the CLI with a
model-free recipe (one ``repetition`` scorer, rank ``-z(repetition.compression)``) at
``--per-category`` natural windows per category and the five default control kinds: about
(1 + 5) x 3 x per-category rows.

Timed, through the CLI entry (``longattn_spark.cli.run``), nothing scored or written:

- in the warm session (the one that wrote the probe), ``probe --table T --rank EXPR --where
  EXPR``, ``--repeats`` times: wall seconds of each call;
- in a fresh process (``.venv/bin/longattn-spark probe ...``, JVM start and Delta's jars
  included), ``--repeats`` times, after the warm session has stopped.

Goal (issue 29): a rerank of a 3,000-row probe in <= 10 s locally.

    .venv/bin/python benchmarks/probe_rerank.py [--per-category 167] [--window-size 512]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """name: rp-bench
description: "model-free: least repetitive first"
scorers:
  - method: repetition
rank: -z(repetition.compression)
"""
RANK = "-z(repetition.dup_10gram) - 0.5 * z(repetition.top_2gram)"
WHERE = "z(repetition.compression) < 3"


def cli(argv: list[str]) -> tuple[int, float, str]:
    """``longattn_spark.cli.run(argv)`` in this process: exit code, wall seconds, stdout."""
    from longattn_spark.cli import run

    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = run(argv)
    return code, time.perf_counter() - start, out.getvalue()


def reported_seconds(text: str) -> str:
    """The "seconds" line of the job's own summary box, if printed."""
    m = re.search(r"│ seconds\s+│ ([0-9.]+)", text)
    return m.group(1) if m else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=167)
    parser.add_argument("--window-size", type=int, default=512)
    parser.add_argument("--max-docs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default="", help="work folder (default: a temporary one)")
    args = parser.parse_args()

    from longattn_spark.config import IngestConfig, SparkSettings
    from longattn_spark.demo.corpus import build_demo_corpus
    from longattn_spark.ingest import ingest
    from longattn_spark.session import get_spark
    from longattn_spark.tables.refs import TableRef
    from longattn_spark.tokenizer import llama3_tokenizer_dir, load_tokenizer_spec

    work = Path(args.work or tempfile.mkdtemp(prefix="probe_rerank_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    lakehouse = str(work / "lakehouse")
    spark_flags = ["--lakehouse", lakehouse, "--catalog", "in-memory"]
    spark = get_spark(SparkSettings(lakehouse=lakehouse, catalog="in-memory"),
                      app_name="probe-rerank")
    t0 = time.perf_counter()
    try:
        tokenizer = llama3_tokenizer_dir()
        corpus = work / "corpus.jsonl"
        build_demo_corpus(corpus, max_docs_per_category=args.max_docs)
        windows = str(work / "windows")
        ingest(spark, IngestConfig(input=str(corpus), tokenizer=str(tokenizer),
                                   window_size=args.window_size, table=windows),
               load_tokenizer_spec(tokenizer))
        per_category = {r["category"]: r["count"] for r in
                        TableRef(windows).read(spark).groupBy("category").count().collect()}
        print(f"windows per category at W = {args.window_size}: {per_category}")

        recipe = work / "rp_bench.yaml"
        recipe.write_text(RECIPE)
        table = str(work / "probe")
        code, seconds, out = cli(["probe", "--windows", windows, "--table", table,
                                  "--recipe", str(recipe), "--per-category",
                                  str(args.per_category), *spark_flags])
        print(out)
        if code != 0:
            raise SystemExit(f"probe --recipe failed (exit {code})")
        probe_rows = TableRef(table).read(spark).count()
        kinds = {r["kind"]: r["count"] for r in
                 TableRef(table).read(spark).groupBy("kind").count().collect()}
        print(f"probe written in {seconds:.1f} s: {probe_rows:,} rows {kinds}")

        rerank = ["probe", "--table", table, "--rank", RANK, "--where", WHERE, *spark_flags]
        warm = []
        for i in range(args.repeats):
            code, seconds, out = cli(rerank)
            if i == 0:
                print(out)
            if code != 0:
                raise SystemExit(f"probe --rank failed (exit {code}):\n{out}")
            warm.append((seconds, reported_seconds(out)))
            print(f"rerank in the warm session #{i + 1}: {seconds:.2f} s wall "
                  f"(job's own summary: {reported_seconds(out)} s)")
    finally:
        spark.stop()

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    exe = str(Path(sys.executable).parent / "longattn-spark")
    fresh = []
    for i in range(args.repeats):
        start = time.perf_counter()
        done = subprocess.run([exe, *rerank], capture_output=True, text=True, env=env,
                              cwd=str(work))
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:])
            raise SystemExit(f"fresh-process rerank failed (exit {done.returncode})")
        fresh.append((seconds, reported_seconds(done.stdout)))
        print(f"rerank in a fresh process #{i + 1}: {seconds:.2f} s wall "
              f"(job's own summary: {reported_seconds(done.stdout)} s)")

    print(f"\nprobe_rerank: probe table of {probe_rows:,} rows "
          f"({args.per_category} natural per category, W = {args.window_size}), "
          f"--rank '{RANK}' --where '{WHERE}'")
    for name, runs in (("warm session", warm), ("fresh process", fresh)):
        walls = [w for w, _ in runs]
        print(f"  {name:<14} wall s: {', '.join(f'{w:.2f}' for w in walls)}; median "
              f"{statistics.median(walls):.2f} (goal <= 10); job's own: "
              f"{', '.join(s for _, s in runs)}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
