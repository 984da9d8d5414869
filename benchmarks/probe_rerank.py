"""``probe --rank/--where`` on an existing probe table of about 3,000 rows (issue 29).

Not timed: the demo corpus (standard-library code, docs, licences) is ingested with the
Llama-3 tokenizer at ``--window-size``, and a probe is written through the CLI with a
model-free recipe (one ``repetition`` scorer, rank ``-z(repetition.compression)``) at
``--per-category`` natural windows per category and the five default control kinds: about
(1 + 5) x 3 x per-category rows.

Timed, through the CLI entry (``longattn_spark.cli.run``), nothing scored or written:

- in the warm session (the one that wrote the probe), ``probe --table T --rank EXPR --where
  EXPR``, ``--repeats`` times: wall seconds of each call, and its CPU seconds (this Python
  process + the session's JVM: less sensitive to a loaded machine than wall time);
- in a fresh process (``.venv/bin/longattn-spark probe ...``, JVM start and Delta's jars
  included), ``--repeats`` times, after the warm session has stopped; each after a baseline
  fresh process that only starts the session and runs ``spark.range(1).count()``.

Each call's own timer (the summary box: read, rank and auc) is printed beside its wall time.

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


def jvm_cpu_seconds(spark) -> float:
    """User + system CPU seconds of the session's JVM so far (Linux /proc)."""
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cli(argv: list[str], spark=None) -> tuple[int, float, float, str]:
    """``longattn_spark.cli.run(argv)`` in this process: exit code, wall seconds, CPU seconds
    (this Python process + the session's JVM; NaN without ``spark``), stdout."""
    from longattn_spark.cli import run

    out = io.StringIO()
    cpu0 = time.process_time() + (jvm_cpu_seconds(spark) if spark else float("nan"))
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = run(argv)
    wall = time.perf_counter() - start
    cpu = time.process_time() + (jvm_cpu_seconds(spark) if spark else float("nan")) - cpu0
    return code, wall, cpu, out.getvalue()


def reported_seconds(text: str) -> str:
    """The job's own timer from its summary box: total (read + rank and auc)."""
    got = {name: re.search(rf"│ +{name}\s+│ ([0-9.]+)", text)
           for name in ("seconds", "read", "rank and auc")}
    s, r, a = (m.group(1) if m else "?" for m in got.values())
    return f"{s} = read {r} + rank/auc {a}"


SESSION_ONLY = """
import sys
from longattn_spark.config import SparkSettings
from longattn_spark.session import get_spark
spark = get_spark(SparkSettings(lakehouse=sys.argv[1], catalog="in-memory"))
spark.range(1).count()
spark.stop()
"""


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
        code, seconds, _, out = cli(["probe", "--windows", windows, "--table", table,
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
        warm, warm_cpu = [], []
        for i in range(args.repeats):
            code, seconds, cpu, out = cli(rerank, spark)
            if i == 0:
                print(out)
            if code != 0:
                raise SystemExit(f"probe --rank failed (exit {code}):\n{out}")
            warm.append((seconds, reported_seconds(out)))
            warm_cpu.append(cpu)
            print(f"rerank in the warm session #{i + 1}: {seconds:.2f} s wall, {cpu:.2f} s CPU "
                  f"(job's own summary: {reported_seconds(out)} s)")
    finally:
        spark.stop()

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    exe = str(Path(sys.executable).parent / "longattn-spark")
    fresh, bare = [], []
    for i in range(args.repeats):
        # baseline: a fresh process that only starts the session and runs one tiny job
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", SESSION_ONLY, lakehouse], capture_output=True,
                       env=env, cwd=str(work), check=True)
        bare.append(time.perf_counter() - start)
        print(f"fresh process, session start + spark.range(1).count() only #{i + 1}: "
              f"{bare[-1]:.2f} s wall")
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
    print(f"  warm session CPU s (driver Python + JVM): "
          f"{', '.join(f'{c:.2f}' for c in warm_cpu)}; median {statistics.median(warm_cpu):.2f}")
    print(f"  fresh process, session only wall s: {', '.join(f'{w:.2f}' for w in bare)}; "
          f"median {statistics.median(bare):.2f}; fresh rerank minus session, medians: "
          f"{statistics.median([w for w, _ in fresh]) - statistics.median(bare):.2f}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
