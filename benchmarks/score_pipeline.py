"""Score job overhead: windows/s through the Spark score job against the library scorer
called directly in one process, on the same windows and model. Goal: ratio >= 0.85.

    .venv/bin/python benchmarks/score_pipeline.py [--seq-len 2048] [--windows 256]

The windows come from the demo corpus (standard-library sources etc.) ingested with the real
Llama-3 tokenizer; the model is a random Llama-shaped layer 0 (hidden 512, 8 query / 2 KV
heads of 64) written with ``write_smoke_test_model``: its scores mean nothing, its cost is real.
Both sides run on the CPU in float32 with every core busy: the direct scorer with torch's
threads, the job with one local task per core, one torch thread each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch

from longattn_spark.config import IngestConfig, ScoreConfig, SparkSettings
from longattn_spark.demo.corpus import build_demo_corpus
from longattn_spark.ingest import ingest
from longattn_spark.score.job import score_windows
from longattn_spark.scorers.longattn import Layer0Scorer, build_model_input
from longattn_spark.session import get_spark
from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.tables.refs import TableRef
from longattn_spark.tokenizer import llama3_tokenizer_dir, load_tokenizer_spec


def windows_table(spark, work: Path, seq_len: int, count: int) -> tuple[str, list]:
    corpus = work / "corpus.jsonl"
    build_demo_corpus(corpus, max_docs_per_category=40)
    table = str(work / "windows")
    ingest(spark, IngestConfig(input=str(corpus), tokenizer=str(llama3_tokenizer_dir()),
                               window_size=seq_len, table=table),
           load_tokenizer_spec(llama3_tokenizer_dir()))
    rows = (TableRef(table).read(spark).orderBy("window_id").limit(count)
            .select("window_id", "input_ids").collect())
    subset = str(work / "windows_subset")
    (TableRef(table).read(spark).join(spark.createDataFrame([(r["window_id"],) for r in rows],
                                                            "window_id string"), "window_id")
     .write.format("delta").partitionBy("category").save(subset))
    return subset, [r["input_ids"] for r in rows]


def direct_windows_per_second(model: Path, windows: list, seq_len: int, batch: int) -> float:
    scorer = Layer0Scorer.from_pretrained(model, device="cpu", dtype=torch.float32)
    ids = build_model_input(windows, bos_id=scorer.bos_id, seq_len=seq_len)
    scorer.score(ids[:1])  # warm-up
    started = time.perf_counter()
    for begin in range(0, ids.shape[0], batch):
        scorer.score(ids[begin:begin + batch])
    return ids.shape[0] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--windows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="score-bench-"))
    try:
        spark = get_spark(SparkSettings(lakehouse=str(work / "lake"), catalog="in-memory"))
        model = write_smoke_test_model(work / "model", hidden_size=512, num_attention_heads=8,
                                       num_key_value_heads=2, num_hidden_layers=1,
                                       intermediate_size=1024, dtype="float32")
        table, windows = windows_table(spark, work, args.seq_len, args.windows)
        cfg = ScoreConfig(windows=table, model=str(model), table=str(work / "scores"),
                          device="cpu", dtype="float32", batch_size=args.batch_size)
        score_windows(spark, ScoreConfig(**{**cfg.__dict__, "table": str(work / "warm")}),
                      progress=False)  # warm-up: JVM, Python workers, model cache
        job = score_windows(spark, cfg, progress=False)
        direct = direct_windows_per_second(model, windows, args.seq_len, args.batch_size)
        print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads direct); Spark {spark.version}, "
              f"{spark.sparkContext.master}")
        print(f"{len(windows)} windows of L={args.seq_len}, layer 0 hidden 512, 8/2 heads x 64, "
              f"float32 CPU, batch {args.batch_size}")
        print(f"{'':24}{'windows/s':>11}{'tokens/s':>12}")
        print(f"{'library scorer, direct':24}{direct:>11.2f}{direct * args.seq_len:>12,.0f}")
        print(f"{'Spark score job':24}{job.windows_per_second:>11.2f}"
              f"{job.tokens_per_second:>12,.0f}   ({job.seconds:.1f} s, "
              f"{job.micro_batches} commit(s))")
        print(f"ratio job / direct: {job.windows_per_second / direct:.2f}  (goal >= 0.85)")
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
