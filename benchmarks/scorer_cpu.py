"""CPU speed and memory of the layer-0 scorer against the naive full-matrix method.

    .venv/bin/python benchmarks/scorer_cpu.py                 # L = 4096, 8192
    .venv/bin/python benchmarks/scorer_cpu.py --llama8b-32k   # one 32k window, 8B-shaped layer 0

Default mode. Inputs: random q ``[1, 8, L, 128]`` and k ``[1, 2, L, 128]`` (8 query heads of
dim 128, GQA 4:1 as in Llama-3) fed directly to the attention sums, k = L // 4.
- scorer: ``tail_attention_sums`` (what ``Layer0Scorer.score`` runs after the projections);
- naive: per query head, the full L×L logits, causal mask, softmax, the region mask and
  ``torch.var`` over the L×L matrix — what the authors' code does (it materialises the
  attention matrix; it even holds all heads at once, so this per-head loop is the kinder
  comparison).
Each method runs in a fresh subprocess; its time is the best of a few runs and its peak
extra memory is the peak RSS during the first run above the RSS just before it (the kernel's
peak counter is reset first, /proc/self/clear_refs). The floor is this machine's minimum for
the causal half of QKᵀ at the measured float32 matmul rate plus one exp per causal cell at
the measured in-place ``torch.exp`` rate, both measured in the same run. Also: the full
``Layer0Scorer.score`` (embedding, RMSNorm, q/k projections, RoPE, sums) of a random
hidden-1024 checkpoint, per window.

``--llama8b-32k``: a random checkpoint shaped like Llama-3.1-8B's layer 0 (hidden 4096, 32
query heads, 8 KV heads, head dim 128, llama3 RoPE, bfloat16 storage) but with the vocabulary
cut to 32768 rows to keep the file small; it is loaded with ``Layer0Scorer.from_pretrained``
and one 32768-token window is scored on the CPU in float32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from longattn_spark.demo.smoke_model import write_random_layer0_checkpoint

HEADS, KV_HEADS, HEAD_DIM = 8, 2, 128
E2E_HIDDEN, E2E_VOCAB = 1024, 32000
LLAMA8B = {"hidden": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128, "vocab": 32768,
           "seq_len": 32768}
MIB = 1 << 20


def proc_status_bytes(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1)) * 1024


def load_average() -> str:
    """Other processes share these cores: the load average says how much."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (VmHWM); return the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return proc_status_bytes("VmRSS")


def best_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def machine_rates(seq_len: int) -> dict[str, float]:
    """float32 matmul FLOP/s ([1024, 128] @ [128, L], the problem's inner dimension) and
    torch.exp elements/s (2 Mi float32 into a preallocated output), best of a few runs."""
    a = torch.randn(1024, HEAD_DIM)
    b = torch.randn(HEAD_DIM, seq_len)
    out = torch.empty(1024, seq_len)
    matmul = best_seconds(lambda: torch.mm(a, b, out=out), repeats=10)
    x = torch.rand(1 << 21) * -10.0
    y = torch.empty_like(x)
    exp = best_seconds(lambda: torch.exp(x, out=y), repeats=30)
    return {"matmul_flops": 2 * 1024 * HEAD_DIM * seq_len / matmul,
            "exp_per_s": x.numel() / exp}


def floor_seconds(seq_len: int, heads: int, rates: dict[str, float]) -> float:
    cells = heads * seq_len * (seq_len + 1) / 2
    return cells * 2 * HEAD_DIM / rates["matmul_flops"] + cells / rates["exp_per_s"]


def random_qk(seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, HEADS, seq_len, HEAD_DIM, generator=generator)
    k = torch.randn(1, KV_HEADS, seq_len, HEAD_DIM, generator=generator)
    return q, k


def naive_scores(q: torch.Tensor, k: torch.Tensor, min_distance: int):
    """Per head: full L×L attention, region mask, sum and torch.var over L² cells."""
    _, heads, seq_len, head_dim = q.shape
    group = heads // k.shape[1]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).triu_(1)
    region = torch.ones(seq_len, seq_len, dtype=torch.bool).tril_(-min_distance)
    ds, var = [], []
    for h in range(heads):
        logits = (q[0, h] @ k[0, h // group].T) * head_dim ** -0.5
        probs = torch.softmax(logits.masked_fill_(causal, -math.inf), dim=-1)
        masked = probs * region
        ds.append(float(masked.sum()) / seq_len)
        var.append(float(torch.var(masked)))
        del logits, probs, masked
    return ds, var


def child_sums(method: str, seq_len: int, block_size: int | None) -> dict:
    from longattn_spark.scorers.longattn import tail_attention_sums
    from longattn_spark.scorers.longattn.attention_sums import DEFAULT_BLOCK_SIZE

    q, k = random_qk(seq_len)
    small_q, small_k = random_qk(256)
    block = block_size or DEFAULT_BLOCK_SIZE
    if method == "scorer":
        def run():
            return tail_attention_sums(q, k, seq_len // 4, block_size=block)
        tail_attention_sums(small_q, small_k, 64, block_size=block)
        repeats = 3
    else:
        def run():
            return naive_scores(q, k, seq_len // 4)
        naive_scores(small_q, small_k, 64)
        repeats = 1
    before = reset_peak_rss()
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    peak_extra = proc_status_bytes("VmHWM") - before
    more = best_seconds(run, repeats=repeats - 1, warmup=0) if repeats > 1 else math.inf
    rates = machine_rates(seq_len) if method == "scorer" else {}
    return {"seconds": min(first, more), "peak_extra": peak_extra, "rates": rates}


def child_e2e(folder: str, seq_len: int, block_size: int | None, repeats: int) -> dict:
    import transformers.models.llama.modeling_llama  # noqa: F401 - imported before measuring

    from longattn_spark.scorers.longattn import Layer0Scorer, load_layer0_checkpoint

    before_load = reset_peak_rss()
    start = time.perf_counter()
    checkpoint = load_layer0_checkpoint(folder)
    checkpoint.fingerprint()  # reads every byte of the tensors, as scorer_id does
    load_seconds = time.perf_counter() - start
    load_peak_extra = proc_status_bytes("VmHWM") - before_load
    scorer = Layer0Scorer(checkpoint, block_size=block_size)
    ready_peak_extra = proc_status_bytes("VmHWM") - before_load
    ids = torch.randint(2, scorer.vocab_size, (1, seq_len),
                        generator=torch.Generator().manual_seed(1))
    scorer.score(ids[:, :256])
    before = reset_peak_rss()
    start = time.perf_counter()
    out = scorer.score(ids)
    first = time.perf_counter() - start
    peak_extra = proc_status_bytes("VmHWM") - before
    more = best_seconds(lambda: scorer.score(ids), repeats=repeats - 1, warmup=0) \
        if repeats > 1 else math.inf
    return {"seconds": min(first, more), "peak_extra": peak_extra,
            "peak_rss": proc_status_bytes("VmHWM"), "load_seconds": load_seconds,
            "load_peak_extra": load_peak_extra, "ready_peak_extra": ready_peak_extra,
            "layer0_bytes": scorer.checkpoint.bytes_read,
            "ds": float(out.ds[0]), "variance": float(out.variance[0])}


def run_child(**kwargs) -> dict:
    command = [sys.executable, __file__, "--child", json.dumps(kwargs)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"child {kwargs} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def default_mode(lengths: list[int], block_size: int | None, skip_naive: bool) -> None:
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"inputs: random q [1, {HEADS}, L, {HEAD_DIM}] and k [1, {KV_HEADS}, L, {HEAD_DIM}]"
          f" fed directly to the attention sums, k = L // 4, float32")
    print(f"load average (1, 5, 15 min) at start: {load_average()}")
    for seq_len in lengths:
        ours = run_child(mode="sums", method="scorer", seq_len=seq_len, block_size=block_size)
        rates = ours["rates"]
        floor = floor_seconds(seq_len, HEADS, rates)
        print(f"L={seq_len}: machine matmul {rates['matmul_flops'] / 1e9:.1f} GFLOP/s, "
              f"exp {rates['exp_per_s'] / 1e9:.2f} Gexp/s -> floor {floor:.3f} s/window")
        print(f"  scorer: {ours['seconds']:.3f} s/window, peak extra memory "
              f"{ours['peak_extra'] / MIB:.1f} MiB, {ours['seconds'] / floor:.2f}x the floor")
        if not skip_naive:
            naive = run_child(mode="sums", method="naive", seq_len=seq_len,
                              block_size=block_size)
            print(f"  naive:  {naive['seconds']:.3f} s/window, peak extra memory "
                  f"{naive['peak_extra'] / MIB:.1f} MiB")
            print(f"  ratios: scorer is {naive['seconds'] / ours['seconds']:.1f}x faster, "
                  f"uses 1/{naive['peak_extra'] / max(ours['peak_extra'], 1):.1f} of the "
                  f"naive peak extra memory")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_layer0_checkpoint(
            Path(tmp) / "e2e", hidden_size=E2E_HIDDEN, num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, vocab_size=E2E_VOCAB)
        for seq_len in lengths:
            e2e = run_child(mode="e2e", folder=str(folder), seq_len=seq_len,
                            block_size=block_size, repeats=3)
            print(f"end-to-end Layer0Scorer.score, L={seq_len} (random checkpoint: hidden "
                  f"{E2E_HIDDEN}, {HEADS} heads x {HEAD_DIM}, {KV_HEADS} kv heads, vocab "
                  f"{E2E_VOCAB}, bf16 stored, fp32 compute): {e2e['seconds']:.3f} s/window, "
                  f"peak extra memory {e2e['peak_extra'] / MIB:.1f} MiB")
    print(f"load average (1, 5, 15 min) at end: {load_average()}")


def llama8b_mode(block_size: int | None) -> None:
    shape = LLAMA8B
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_layer0_checkpoint(
            Path(tmp) / "llama8b", hidden_size=shape["hidden"],
            num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
            head_dim=shape["head_dim"], vocab_size=shape["vocab"])
        start_load = load_average()
        result = run_child(mode="e2e", folder=str(folder), seq_len=shape["seq_len"],
                           block_size=block_size, repeats=1)
    rates = machine_rates(8192)
    floor = floor_seconds(shape["seq_len"], shape["heads"], rates)
    print(f"Llama-3.1-8B-shaped layer 0 (hidden {shape['hidden']}, {shape['heads']} heads, "
          f"{shape['kv_heads']} KV heads, head dim {shape['head_dim']}, llama3 RoPE; random "
          f"bf16 weights, vocab reduced to {shape['vocab']}), one {shape['seq_len']}-token "
          f"window, float32 on {torch.get_num_threads()} CPU threads")
    print(f"  load (read and hash the layer-0 tensors): {result['load_seconds']:.2f} s, peak "
          f"extra memory {result['load_peak_extra'] / MIB:.1f} MiB for "
          f"{result['layer0_bytes'] / MIB:.1f} MiB of layer-0 tensors "
          f"({result['load_peak_extra'] / result['layer0_bytes']:.2f}x); with the scorer's "
          f"float32 copies of the q/k/norm weights: {result['ready_peak_extra'] / MIB:.1f} MiB")
    print(f"  score: {result['seconds']:.1f} s/window, peak extra memory "
          f"{result['peak_extra'] / MIB:.0f} MiB, peak RSS of the process "
          f"{result['peak_rss'] / MIB:.0f} MiB; floor {floor:.1f} s "
          f"({result['seconds'] / floor:.2f}x); ds {result['ds']:.4f}, variance "
          f"{result['variance']:.3e}")
    print(f"load average (1, 5, 15 min) at start: {start_load}; at end: {load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--llama8b-32k", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        if spec.pop("mode") == "sums":
            print(json.dumps(child_sums(**spec)))
        else:
            print(json.dumps(child_e2e(**spec)))
    elif args.llama8b_32k:
        llama8b_mode(args.block_size)
    else:
        default_mode(args.lengths, args.block_size, args.skip_naive)


if __name__ == "__main__":
    main()
