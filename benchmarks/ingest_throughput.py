"""Ingest throughput: the Spark ingest job against the bare tokenizer, on the same texts.

Prints, from one run, for 1x and 4x the input: the bare tokenizer's tokens/s (one process,
``encode_batch`` over all texts, Rust threads on every core), the ingest job's tokens/s on the
embedded local Spark (tokenize + windows + Delta MERGE of windows and rejects, session already
started), and their ratio. Goal: ratio >= 0.7 and job throughput that grows linearly with the
input (the 4x run's tokens/s about the 1x run's).

    .venv/bin/python benchmarks/ingest_throughput.py [--corpus DIR] [--window-size 8192]

Texts: ../shared/corpus (Gutenberg books, arXiv) plus standard-library sources as code when
present, else the demo corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from longattn_spark.config import IngestConfig, SparkSettings
from longattn_spark.demo.corpus import build_demo_corpus, code_documents
from longattn_spark.ingest import ingest
from longattn_spark.session import get_spark
from longattn_spark.tokenizer import get_tokenizer, llama3_tokenizer_dir, load_tokenizer_spec


def base_documents(corpus: Path, tmp: Path) -> list[dict]:
    docs: list[dict] = []
    for name in ("books.jsonl", "arxiv.jsonl"):
        if (corpus / name).is_file():
            for line in (corpus / name).read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                docs.append({"id": str(record["id"]), "text": record["text"],
                             "category": record["category"]})
    if docs:
        docs += list(code_documents(min_chars=20000))[:20]
        return docs
    path = tmp / "demo.jsonl"
    build_demo_corpus(path)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def scaled(docs: list[dict], megabytes: float) -> list[dict]:
    """Copies of ``docs`` (new ids) until the texts reach ``megabytes`` of UTF-8."""
    out, size, copy = [], 0.0, 0
    while size < megabytes * 1e6:
        for doc in docs:
            out.append({**doc, "id": f"{doc['id']}#{copy}"})
            size += len(doc["text"].encode("utf-8"))
        copy += 1
    return out


def bare_tokens_per_second(spec, texts: list[str], batch: int = 64) -> tuple[int, float]:
    """``encode_batch`` in one process (Rust threads on every core), ``batch`` texts a call as
    the job's Arrow batches, so both hold the same encodings in memory at a time."""
    tokenizer = get_tokenizer(spec)
    started = time.perf_counter()
    tokens = 0
    for begin in range(0, len(texts), batch):
        encodings = tokenizer.encode_batch(texts[begin:begin + batch], add_special_tokens=False)
        tokens += sum(len(e.ids) for e in encodings)
    return tokens, tokens / (time.perf_counter() - started)


def job_tokens_per_second(spark, spec, docs: list[dict], workdir: Path, window_size: int
                          ) -> tuple[int, float, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "input.jsonl"
    with source.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    cfg = IngestConfig(input=str(source), tokenizer=str(llama3_tokenizer_dir()),
                       window_size=window_size, table=str(workdir / "windows"))
    summary = ingest(spark, cfg, spec)
    assert summary.accounted
    steps = ", ".join(f"{k} {v:.1f}" for k, v in summary.step_seconds.items())
    return summary.tokens, summary.tokens / summary.seconds, summary.seconds, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
    parser.add_argument("--window-size", type=int, default=8192)
    parser.add_argument("--scales", default="1,4")
    parser.add_argument("--base-mb", type=float, default=40.0,
                        help="size of the 1x input (the corpus is repeated to reach it)")
    args = parser.parse_args()

    spec = load_tokenizer_spec(llama3_tokenizer_dir())
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        spark = get_spark(SparkSettings(lakehouse=str(work / "lake"), catalog="in-memory"))
        docs = base_documents(Path(args.corpus), work)
        # warm-up: JVM, Python workers and the tokenizer cache, on a small slice
        job_tokens_per_second(spark, spec, docs[:4], work / "warmup", args.window_size)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"Spark {spark.version}, master {spark.sparkContext.master}; "
              f"window size {args.window_size}")
        print(f"{'input':>6} {'docs':>6} {'MB':>7} {'tokens':>11} {'bare tok/s':>12} "
              f"{'job tok/s':>12} {'job s':>7} {'ratio':>6}  job steps (s)")
        for factor in (int(s) for s in args.scales.split(",")):
            batch = scaled(docs, args.base_mb * factor)
            megabytes = sum(len(d["text"].encode("utf-8")) for d in batch) / 1e6
            bare_tokens, bare_rate = bare_tokens_per_second(spec, [d["text"] for d in batch])
            job_tokens, job_rate, seconds, steps = job_tokens_per_second(
                spark, spec, batch, work / f"x{factor}", args.window_size)
            assert job_tokens == bare_tokens, (job_tokens, bare_tokens)
            print(f"{factor:>5}x {len(batch):>6} {megabytes:>7.1f} {job_tokens:>11,} "
                  f"{bare_rate:>12,.0f} {job_rate:>12,.0f} {seconds:>7.1f} "
                  f"{job_rate / bare_rate:>6.2f}  {steps}")
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
