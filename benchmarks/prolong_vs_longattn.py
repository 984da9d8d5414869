"""ProLong (with and without KV reuse) against LongAttn's layer-0 scorer, per window, on the
same windows and the same model folder, in one run on the CPU.

    .venv/bin/python benchmarks/prolong_vs_longattn.py [--windows 4] [--seq-len 2048]
                                                       [--pairs 31] [--check]

Windows: ``--windows`` Gutenberg books from ``../shared/corpus/books.jsonl``, tokenized with
the real Llama-3 tokenizer (no special tokens); one window of ``--seq-len`` tokens per book,
starting 1000 tokens in (past the licence header). Model: a random Llama-shaped checkpoint
written by ``write_smoke_test_model`` (hidden 512, 4 layers, 8 query / 2 KV heads of 64,
MLP 1376, the full Llama-3 vocabulary of 128256 rows, tied embeddings, bfloat16 storage):
its scores mean nothing, its cost is real. Everything runs in float32 with torch's default
threads.

- ProLong, KV reuse: ``ProLongScorer`` as shipped (alone passes keep seg_j's KV cache; a
  pair runs seg_i's C tokens only).
- ProLong, released way: the same scorer with ``kv_reuse=False``: each pair is a full
  seg_j + seg_i forward pass with all 2C logits, as run.py does.
- LongAttn: ``Layer0Scorer`` on BOS + the window's first L-1 tokens (L = seq_len).

Pairs: at W = 2048 and C = 128 a window has N = 16 segments and only 120 candidate pairs,
so the released S = 500 would exit early (LDS = 0) on every window. The default S = 31
keeps the released ratio of pairs to segments (500 / 256 = 1.95 per segment at W = 32768),
so the pair passes weigh what they weigh in production; ``--pairs -1`` scores all 120.

Timing: after one small warm-up call per scorer, the three scorers take turns on each
window (so a change in the machine's load touches all three alike); each window is scored
by its own call. Wall-clock and process CPU seconds per window are printed (on a shared
machine CPU seconds are the steadier measure of work). ``--check`` also prints the largest
relative difference between the two ProLong modes' scores (float rounding only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import torch

from longattn_spark.scorers.longattn import Layer0Scorer, build_model_input
from longattn_spark.scorers.prolong.scorer import ProLongScorer
from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.tokenizer import llama3_tokenizer_dir

BOOKS = REPO.parent / "shared" / "corpus" / "books.jsonl"
SKIP_TOKENS = 1000
MODEL_SHAPE = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
               "num_key_value_heads": 2, "intermediate_size": 1376, "vocab_size": 128256}


def book_windows(count: int, seq_len: int) -> list[tuple[str, list[int]]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(llama3_tokenizer_dir() / "tokenizer.json"))
    windows = []
    with BOOKS.open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            # about 4 characters a token: enough text for the skip and one window
            text = record["text"][: 6 * (SKIP_TOKENS + seq_len)]
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            if len(ids) >= SKIP_TOKENS + seq_len:
                windows.append((f"{record['id']}#0", ids[SKIP_TOKENS:SKIP_TOKENS + seq_len]))
            if len(windows) == count:
                return windows
    raise SystemExit(f"{BOOKS}: fewer than {count} books with {SKIP_TOKENS + seq_len} tokens")


def timed(function, *args) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--segment-size", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=31)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if not BOOKS.is_file():
        raise SystemExit(f"{BOOKS} is missing (the development corpus)")
    windows = book_windows(args.windows, args.seq_len)
    c = args.segment_size
    n = args.seq_len // c
    pairs = n * (n - 1) // 2 if args.pairs == -1 else args.pairs
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, load average {load_average()}")
    print(f"windows: {len(windows)} x {args.seq_len} tokens (Llama-3 tokenizer, books.jsonl); "
          f"C = {c}, N = {n} segments, {pairs} pairs per window (--pairs {args.pairs})")
    print(f"model: random Llama {MODEL_SHAPE}, float32 on the CPU")
    totals = {name: [0.0, 0.0] for name in ("longattn", "reuse", "released")}
    with_reuse, without = [], []
    with tempfile.TemporaryDirectory() as work:
        folder = write_smoke_test_model(Path(work) / "model", dtype="bfloat16", **MODEL_SHAPE)
        settings = {"segment_size": c, "pairs": args.pairs}
        reuse = ProLongScorer.from_pretrained(folder, **settings)
        released = ProLongScorer.from_pretrained(folder, kv_reuse=False, **settings)
        longattn = Layer0Scorer.from_pretrained(folder, device="cpu", dtype=torch.float32)

        def score_longattn(window_id, ids):
            model_input = build_model_input([ids], bos_id=longattn.bos_id,
                                            seq_len=args.seq_len)
            return float(longattn.score(model_input).ds[0])

        # warm-up (not timed): one small call each; the first ProLong call also runs the
        # KV-reuse probe
        score_longattn(*windows[0])
        probe = torch.tensor([windows[0][1][:c], windows[0][1][c:2 * c]])
        for scorer in (reuse, released):
            scorer.perplexities(probe, np.array([1]), np.array([0]))
        for window_id, ids in windows:
            for name, function, sink in (
                    ("longattn", score_longattn, None),
                    ("reuse", lambda w, i: reuse.score_window(i, w), with_reuse),
                    ("released", lambda w, i: released.score_window(i, w), without)):
                wall, cpu, result = timed(function, window_id, ids)
                totals[name][0] += wall / len(windows)
                totals[name][1] += cpu / len(windows)
                if sink is not None:
                    sink.append(result)
    assert reuse.kv_reuse, reuse.kv_note
    tokens_reuse = n * c + pairs * c
    tokens_released = n * c + pairs * 2 * c
    print(f"batch sizes (sequences per forward call): {reuse._calls(c)} for C-token passes, "
          f"{released._calls(2 * c)} for 2C-token passes")
    print()
    print(f"{'scorer':<34} {'wall s/window':>13} {'CPU s/window':>13} {'LM tokens/window':>17}")
    for label, name, tokens in (("LongAttn (Layer0Scorer)", "longattn", args.seq_len),
                                ("ProLong, KV reuse", "reuse", tokens_reuse),
                                ("ProLong, released (no KV reuse)", "released",
                                 tokens_released)):
        wall, cpu = totals[name]
        print(f"{label:<34} {wall:>13.3f} {cpu:>13.3f} {tokens:>17,}")
    print()
    for label, top, bottom in (("ProLong released / ProLong KV reuse", "released", "reuse"),
                               ("ProLong KV reuse / LongAttn", "reuse", "longattn"),
                               ("ProLong released / LongAttn", "released", "longattn")):
        print(f"{label + ':':<38} wall {totals[top][0] / totals[bottom][0]:6.2f}x   "
              f"CPU {totals[top][1] / totals[bottom][1]:6.2f}x")
    print(f"(LM tokens, released / KV reuse: {tokens_released / tokens_reuse:.2f}x)")
    scores = [r.score for r in with_reuse]
    print(f"ProLong scores (KV reuse): min {min(scores):.4f}, max {max(scores):.4f}, "
          f"reasons {sorted({str(r.reason) for r in with_reuse})}")
    if args.check:
        worst = max(abs(a.score - b.score) / max(abs(b.score), 1e-12)
                    for a, b in zip(with_reuse, without))
        print(f"largest relative score difference, KV reuse vs released way: {worst:.2e}")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
