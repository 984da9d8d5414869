"""The input the cluster and Connect overhead benchmarks share: the demo corpus (standard-library
sources, pydoc pages, license files) and the random smoke-test Llama with the real Llama-3
tokenizer, written into ``work``."""

from __future__ import annotations

from pathlib import Path

from longattn_spark.demo.corpus import build_demo_corpus
from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.tokenizer import llama3_tokenizer_dir


def write_demo_input(work: Path, docs_per_category: int, window_size: int) -> tuple[Path, Path]:
    """(docs.jsonl, model folder) under ``work``; prints what the input is."""
    docs = work / "docs.jsonl"
    counts = build_demo_corpus(docs, max_docs_per_category=docs_per_category)
    model = write_smoke_test_model(work / "model", tokenizer_dir=llama3_tokenizer_dir())
    print(f"input: {sum(counts.values())} documents {counts}, "
          f"{docs.stat().st_size / 1e6:.1f} MB; window size {window_size}", flush=True)
    return docs, Path(model)
