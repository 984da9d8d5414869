"""Probe cost against scoring the same natural windows, side by side on the demo corpus.

    .venv/bin/python benchmarks/probe_cost.py [--per-category 200] [--window-size 1024]

Issue 19's budget: probing N natural windows per category costs at most (1 + kinds) x scoring
those N windows, plus <= 20% for building the controls. Measured here:

0. a warm-up score run of 4 windows (Python workers, torch import), not counted;
1. ``score``: the score job (``score_windows``) on a windows table holding exactly the probe's
   natural sample (the same windows the probe draws: same seed, same hash order);
2. ``probe``: the whole probe run (sample, build controls and stage them, score natural +
   controls, write the probe table, AUCs), with its own step times.

Ratios: probe total / ((1 + kinds) x score), and (sample + build controls) / probe score step.
The model is the smoke-test model shape (random Llama layer 0, hidden 256, 8/2 heads): its
scores mean nothing, its cost is real. CPU, float32, ``local[*]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from longattn_spark.config import IngestConfig, ProbeConfig, ScoreConfig, SparkSettings  # noqa: E402
from longattn_spark.demo.corpus import build_demo_corpus  # noqa: E402
from longattn_spark.demo.smoke_model import write_smoke_test_model  # noqa: E402
from longattn_spark.ingest import ingest  # noqa: E402
from longattn_spark.tokenizer import llama3_tokenizer_dir, load_tokenizer_spec  # noqa: E402
from longattn_spark.probe.controls import parse_kinds  # noqa: E402
from longattn_spark.probe.job import probe  # noqa: E402
from longattn_spark.probe.sample import sample_windows  # noqa: E402
from longattn_spark.score.job import score_windows  # noqa: E402
from longattn_spark.session import get_spark  # noqa: E402
from longattn_spark.tables.refs import TableRef  # noqa: E402
from longattn_spark.tables.schemas import WINDOWS  # noqa: E402
from longattn_spark.tables.writes import ensure_table, merge_new_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=200)
    parser.add_argument("--window-size", type=int, default=1024)
    parser.add_argument("--kinds", default="splice,shuffle,repeat,concat")
    parser.add_argument("--max-docs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--work", default="")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="probe_cost_"))
    spark = get_spark(SparkSettings(master="local[*]", lakehouse=str(work / "lakehouse"),
                                    catalog="in-memory"), app_name="probe-cost")
    tokenizer = llama3_tokenizer_dir()
    corpus = work / "corpus.jsonl"
    build_demo_corpus(corpus, max_docs_per_category=args.max_docs)
    windows = str(work / "windows")
    ingest(spark, IngestConfig(input=str(corpus), tokenizer=str(tokenizer),
                               window_size=args.window_size, table=windows),
           load_tokenizer_spec(tokenizer))
    model = write_smoke_test_model(work / "model", tokenizer_dir=tokenizer, dtype="float32")
    per_category = {r["category"]: r["count"] for r in
                    TableRef(windows).read(spark).groupBy("category").count().collect()}

    # the probe's own natural sample, as a windows table of its own
    samples = sample_windows(spark, TableRef(windows), args.per_category, 0)
    ids = [w.source.window_id for s in samples.values() for w in s.natural]
    natural = str(work / "natural")
    ensure_table(spark, TableRef(natural), WINDOWS)
    merge_new_rows(spark, TableRef(natural), WINDOWS, TableRef(windows).read(spark).join(
        spark.createDataFrame([(i,) for i in ids], "window_id string"), "window_id"))
    score_cfg = ScoreConfig(model=str(model), device="cpu", dtype="float32",
                            batch_size=args.batch_size)

    # warm-up: the first scoring run of a session starts Python workers and imports torch
    warm = str(work / "warm")
    ensure_table(spark, TableRef(warm), WINDOWS)
    merge_new_rows(spark, TableRef(warm), WINDOWS, TableRef(windows).read(spark).limit(4))
    score_windows(spark, dataclasses.replace(score_cfg, windows=warm,
                                             table=str(work / "warm_scores")), progress=False)

    started = time.perf_counter()
    scored = score_windows(spark, dataclasses.replace(score_cfg, windows=natural,
                                                      table=str(work / "scores")),
                           progress=False)
    score_seconds = time.perf_counter() - started

    kinds = parse_kinds(args.kinds)
    started = time.perf_counter()
    run = probe(spark, ProbeConfig(windows=windows, table=str(work / "probe"),
                                   per_category=args.per_category, kinds=",".join(kinds)),
                score_cfg, progress=False)
    probe_seconds = time.perf_counter() - started

    budget = (1 + len(kinds)) * score_seconds
    building = run.step_seconds.get("sample", 0) + run.step_seconds.get("build controls", 0)
    print(f"work folder {work}; cores {os.cpu_count()}; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"windows per category {per_category}; natural sample {len(ids)} "
          f"({run.natural}); W = L = {run.seq_len}, k = {run.min_distance}")
    print(f"score job on the natural sample: {scored.scored} windows in {score_seconds:.1f} s")
    print(f"probe: {run.scored} windows scored, {probe_seconds:.1f} s; steps "
          + ", ".join(f"{k} {v:.1f} s" for k, v in run.step_seconds.items()))
    print(f"probe / ((1 + {len(kinds)}) x score) = {probe_seconds / budget:.2f} (goal <= 1.2)")
    print(f"probe score step / ((1 + {len(kinds)}) x score) = "
          f"{run.step_seconds['score'] / budget:.2f}")
    print(f"sample + build controls / probe score step = "
          f"{building / run.step_seconds['score']:.2f} (goal <= 0.2)")
    spark.stop()


if __name__ == "__main__":
    main()
