"""What issue 29's two new computations cost, side by side in one run:

1. The repetition statistics (``scorers/repetition/stats.py``, per window, one core) against
   tokenizing the same text with the bare fast tokenizer (``encode_batch``, Rust threads on
   every core), per token. Ingest does more than the bare tokenizer (windows, Delta MERGE:
   ``benchmarks/ingest_throughput.py`` measured the job at 0.7-0.9x the tokenizer's tokens/s),
   so the ratio printed is an upper bound of the statistics' share of ingest's time per token.
   Goal: <= 5%.
2. Loss gain's copy components (``copied_targets`` and the three components, per window)
   against loss gain without them (the model's full and short passes plus the same means), on
   the real SmolLM2-135M at L = 1024 on the CPU. Goal: <= 1.05x.

    .venv/bin/python benchmarks/repetition_cost.py [--window 32768] [--lossgain-windows 4]

Texts: standard-library sources (the demo corpus's ``code``), the same on every machine.
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


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def repetition_vs_tokenizer(window: int, repeats: int) -> dict:
    from longattn_spark.scorers.repetition.stats import repetition_stats
    from longattn_spark.tokenizer import get_tokenizer, llama3_tokenizer_dir, load_tokenizer_spec

    tokenizer = get_tokenizer(load_tokenizer_spec(llama3_tokenizer_dir()))
    texts = code_text(8_000_000)
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    ids = np.concatenate([np.asarray(e.ids, dtype=np.int32) for e in encodings])
    windows = [ids[i:i + window] for i in range(0, ids.size - window + 1, window)]
    tokens = len(windows) * window
    tokenize = best_of(repeats, lambda: tokenizer.encode_batch(texts, add_special_tokens=False))
    stats = best_of(repeats, lambda: [repetition_stats(w) for w in windows])
    tokenized = int(ids.size)
    return {"windows": len(windows), "window": window, "tokens": tokens,
            "tokenizer_s_per_token": tokenize / tokenized,
            "repetition_s_per_token": stats / tokens,
            "ratio": (stats / tokens) / (tokenize / tokenized)}


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
    parser.add_argument("--lossgain-windows", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    r = repetition_vs_tokenizer(args.window, args.repeats)
    print(f"repetition statistics: {r['windows']} windows of {r['window']:,} tokens: "
          f"{r['repetition_s_per_token'] * 1e6:.3f} us/token; bare tokenizer "
          f"{r['tokenizer_s_per_token'] * 1e6:.3f} us/token; ratio {r['ratio']:.3f} "
          f"(goal <= 0.05 of ingest, whose time per token is above the tokenizer's)")
    c = copy_overhead(args.lossgain_windows, args.repeats)
    print(f"loss gain, {c['windows']} windows at L = {c['seq_len']} ({c['threads']} threads): "
          f"model passes {c['model_passes_s']:.2f} s, means {c['means_s'] * 1e3:.2f} ms, "
          f"means + copy components {c['means_and_copies_s'] * 1e3:.2f} ms; with copies / "
          f"without: {c['ratio']:.4f}x (goal <= 1.05x)")


if __name__ == "__main__":
    main()
