"""What issue 29's two new computations cost, side by side in one run:

1. The repetition statistics (``scorers/repetition/stats.py``) against ingest, per token, on
   the same text (standard-library sources, the demo corpus's ``code``) and the same cores:
   - ingest: the embedded Spark ingest job (``local[*]``: read, tokenize, window, Delta MERGE
     of windows and rejects), its session warmed up first, wall seconds per token;
   - the statistics: every window of the job's table, split over a process pool of one worker
     per core (as a score job's tasks would), wall seconds per token;
   - for reference, the bare fast tokenizer (``encode_batch``, Rust threads on every core) and
     where the statistics' time goes on one core (exact n-gram codes, zlib-ng, the shares,
     and the reference zlib at the same level for comparison).
   Goal: statistics <= 5% of ingest's time per token.
2. Loss gain's copy components (``copied_targets`` and the three components, per window)
   against loss gain without them (the model's full and short passes plus the same means), on
   the real SmolLM2-135M at L = 1024 on the CPU. Goal: <= 1.05x.

    .venv/bin/python benchmarks/repetition_cost.py [--window 32768] [--lossgain-windows 4]
        [--chars 16000000] [--skip-lossgain]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def code_text(chars: int) -> list[str]:
    from longattn_spark.demo.corpus import code_documents

    texts, total = [], 0
    for doc in code_documents(0):
        texts.append(doc["text"])
        total += len(doc["text"])
        if total >= chars:
            break
    return texts


def long_documents(texts: list[str], chars: int, doc_chars: int = 400_000) -> list[str]:
    """The texts joined into documents of about ``doc_chars`` characters (several 32k-token
    windows each: a module shorter than a window gives none), repeated up to ``chars``."""
    joined = "\n\n".join(texts)
    docs = [joined[i:i + doc_chars] for i in range(0, len(joined), doc_chars)]
    out: list[str] = []
    while sum(len(d) for d in out) < chars:
        out += docs
    return out


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def _stats_of(windows: list[np.ndarray]) -> int:
    from longattn_spark.scorers.repetition.stats import repetition_stats

    for w in windows:
        repetition_stats(w)
    return len(windows)


def repetition_vs_ingest(window: int, repeats: int, chars: int) -> dict:
    """Ingest job and statistics on the same text and cores (module docstring)."""
    import json
    import shutil
    import tempfile
    import zlib
    from concurrent.futures import ProcessPoolExecutor

    from longattn_spark.config import IngestConfig, SparkSettings
    from longattn_spark.ingest import ingest
    from zlib_ng import zlib_ng

    from longattn_spark.scorers.repetition.stats import (
        lag_match,
        min_split_jaccard,
        ngram_levels,
        repetition_stats,
    )
    from longattn_spark.session import get_spark
    from longattn_spark.tables.refs import TableRef
    from longattn_spark.tokenizer import get_tokenizer, llama3_tokenizer_dir, load_tokenizer_spec

    spec = load_tokenizer_spec(llama3_tokenizer_dir())
    texts = long_documents(code_text(chars), chars)
    work = Path(tempfile.mkdtemp(prefix="repetition-cost-"))
    cores = os.cpu_count() or 1
    try:
        spark = get_spark(SparkSettings(lakehouse=str(work / "lake"), catalog="in-memory"))
        source = work / "input.jsonl"
        source.write_text("".join(json.dumps({"id": f"d{i}", "text": t, "category": "code"})
                                  + "\n" for i, t in enumerate(texts)), encoding="utf-8")
        ingest_s, tokens = [], 0
        for r in range(repeats + 1):  # the first run warms the session up, untimed
            cfg = IngestConfig(input=str(source), tokenizer=str(llama3_tokenizer_dir()),
                               window_size=window, table=str(work / f"windows{r}"),
                               rejects_table=str(work / f"rejects{r}"))
            summary = ingest(spark, cfg, spec)
            tokens = summary.tokens
            if r:
                ingest_s.append(summary.seconds)
        rows = TableRef(str(work / "windows1")).read(spark).select("input_ids").collect()
        windows = [np.asarray(row["input_ids"], dtype=np.int32) for row in rows]
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    window_tokens = sum(w.size for w in windows)
    shares = [windows[i::cores] for i in range(cores)]
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_stats_of, shares))  # workers started and imports done, untimed
        pooled = best_of(repeats, lambda: list(pool.map(_stats_of, shares)))
    tokenizer = get_tokenizer(spec)
    tokenize = best_of(repeats, lambda: tokenizer.encode_batch(texts, add_special_tokens=False))
    big = [w for w in windows if w.size == window] or windows
    big_tokens = sum(w.size for w in big)
    bigrams = [(w.astype(np.int64), next(ngram_levels(w.astype(np.int64), 2)).codes)
               for w in big]
    one_core = {
        "all": best_of(repeats, lambda: [repetition_stats(w) for w in big]),
        "ngram levels n=2..10": best_of(repeats, lambda: [
            list(ngram_levels(w.astype(np.int64), 10)) for w in big]),
        "zlib-ng level 6 (compression)": best_of(repeats, lambda: [
            zlib_ng.compress(w.astype("<i4").tobytes(), 6) for w in big]),
        "reference zlib level 6 (for comparison)": best_of(repeats, lambda: [
            zlib.compress(w.astype("<i4").tobytes(), 6) for w in big]),
        "lag_match, bigram codes given": best_of(repeats, lambda: [
            lag_match(w, c) for w, c in bigrams]),
        "min_split_jaccard": best_of(repeats, lambda: [
            min_split_jaccard(w.astype(np.int64)) for w in big]),
    }
    return {"cores": cores, "windows": len(windows), "tokens": tokens,
            "window_tokens": window_tokens,
            "ingest_s_per_token": min(ingest_s) / tokens,
            "stats_s_per_token": pooled / window_tokens,
            "tokenizer_s_per_token": tokenize / tokens,
            "one_core_us_per_token": {k: v / big_tokens * 1e6 for k, v in one_core.items()},
            "ratio": (pooled / window_tokens) / (min(ingest_s) / tokens)}


def copy_overhead(n_windows: int, repeats: int) -> dict:
    import torch

    from longattn_spark.models.gguf import cached_smollm2
    from longattn_spark.scorers.lossgain.losses import (
        DEFAULT_COPY_NGRAM,
        copied_targets,
        lossgain_from_losses,
    )
    from longattn_spark.scorers.lossgain.scorer import LossGainScorer, model_inputs
    from longattn_spark.tokenizer import get_tokenizer, load_tokenizer_spec

    model = cached_smollm2()
    tokenizer = get_tokenizer(load_tokenizer_spec(model))
    seq_len, s = 1024, 256
    ids = tokenizer.encode("\n".join(code_text(400_000)), add_special_tokens=False).ids
    windows = [ids[i * seq_len:(i + 1) * seq_len] for i in range(n_windows)]
    scorer = LossGainScorer.from_pretrained(model)
    inputs = model_inputs(windows, scorer.bos_id, seq_len)
    x = inputs.numpy()
    passes, plain, copies = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        full, short = scorer.losses(inputs, s)
        passes.append(time.perf_counter() - start)
        plain.append(best_of(3, lambda: [lossgain_from_losses(full[b], short[b], s)
                                         for b in range(n_windows)]))
        copies.append(best_of(3, lambda: [lossgain_from_losses(
            full[b], short[b], s, copied_targets(x[b], s, DEFAULT_COPY_NGRAM))
            for b in range(n_windows)]))
    model_s, plain_s, copy_s = min(passes), min(plain), min(copies)
    return {"windows": n_windows, "seq_len": seq_len, "threads": torch.get_num_threads(),
            "model_passes_s": model_s, "means_s": plain_s, "means_and_copies_s": copy_s,
            "ratio": (model_s + copy_s) / (model_s + plain_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=32768)
    parser.add_argument("--chars", type=int, default=12_000_000,
                        help="characters of standard-library source to ingest")
    parser.add_argument("--lossgain-windows", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-lossgain", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    r = repetition_vs_ingest(args.window, args.repeats, args.chars)
    us = {k: f"{v:.3f}" for k, v in r["one_core_us_per_token"].items()}
    print(f"ingest job (local[*], {r['cores']} cores): {r['tokens']:,} tokens, "
          f"{r['ingest_s_per_token'] * 1e6:.3f} us/token wall; bare tokenizer "
          f"{r['tokenizer_s_per_token'] * 1e6:.3f} us/token wall")
    print(f"repetition statistics over the job's {r['windows']} windows, {r['cores']} "
          f"processes: {r['stats_s_per_token'] * 1e6:.3f} us/token wall; one core, windows of "
          f"{args.window:,}: {us}")
    print(f"statistics / ingest per token: {r['ratio']:.3f} (goal <= 0.05); statistics / "
          f"bare tokenizer: {r['stats_s_per_token'] / r['tokenizer_s_per_token']:.3f}")
    if args.skip_lossgain:
        return
    c = copy_overhead(args.lossgain_windows, args.repeats)
    print(f"loss gain, {c['windows']} windows at L = {c['seq_len']} ({c['threads']} threads): "
          f"model passes {c['model_passes_s']:.2f} s, means {c['means_s'] * 1e3:.2f} ms, "
          f"means + copy components {c['means_and_copies_s'] * 1e3:.2f} ms; with copies / "
          f"without: {c['ratio']:.4f}x (goal <= 1.05x)")


if __name__ == "__main__":
    main()
