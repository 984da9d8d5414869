"""GPU speed of the layer-0 scorer: the fused Triton kernel against the blockwise torch path.

    .venv/bin/python benchmarks/scorer_gpu.py                       # 8B and 70B shapes, L = 32768
    .venv/bin/python benchmarks/scorer_gpu.py --models 8b --sweep   # also time kernel tile configs
    .venv/bin/python benchmarks/scorer_gpu.py --json results.json   # keep the figures

For each model shape a random layer 0 is written as a checkpoint (config.json +
model.safetensors with only the tensors scoring reads: embedding, input RMSNorm, q_proj,
k_proj; llama3 RoPE; bfloat16), loaded with ``Layer0Scorer.from_pretrained`` twice on the GPU
(``kernel="triton"`` and ``kernel="torch"``) and timed on random windows of L tokens:

- projections + RoPE: ``Layer0Scorer.rotated_query_key`` (embedding, RMSNorm, q/k
  projections, RoPE);
- sums: ``tail_attention_sums_triton`` and the blockwise ``tail_attention_sums`` on the same
  q, k (k = L // 4);
- end to end: ``Layer0Scorer.score`` (ids on the GPU in, numpy scores out), per window.

The floor comes from rates measured in the same run on the same GPU: a large bfloat16
matmul (cuBLAS) for the FLOP rate, and a Triton kernel of dependent ``exp2`` chains (the
instruction the kernel uses) for the exp rate. The sums need 2·D FLOPs of QKᵀ and one exp
per causal cell and head; tensor cores and the exp units run concurrently, so the floor of
the sums is the larger of the two times (the serial sum is printed too). The end-to-end
floor adds the projection FLOPs at the matmul rate.

Whole-LM scorers (unless ``--skip-whole-lm``): a random Llama-3.2-1B-shaped causal LM
(hidden 2048, 16 layers, 32/8 heads, MLP 8192, vocabulary 128256, bfloat16) is timed on the
same kind of windows for ProLong (C = 128, 500 pairs, KV reuse), loss gain (S = L // 4) and
one plain forward pass with logits, the unit of the loss-gain goal (<= 2.3x).

Times are medians over ``--repeats`` runs after one warm-up (which compiles the kernel),
measured with CUDA events. The script exits with a message on a machine without CUDA.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from longattn_spark.demo.smoke_model import write_random_layer0_checkpoint

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODELS = {
    "8b": {"name": "Llama-3.1-8B", "hidden": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128},
    "70b": {"name": "Llama-3.1-70B", "hidden": 8192, "heads": 64, "kv_heads": 8, "head_dim": 128},
}
VOCAB = 128256
GOALS_TOKENS_PER_S = {"8b": 2_000_000, "70b": 1_000_000}
GOAL_SPEEDUP = 5.0


@dataclass
class Rates:
    matmul_flops: float
    exp_per_s: float


@dataclass
class ModelResult:
    model: str
    seq_len: int
    batch: int
    projections_ms: float
    sums_triton_ms: float
    sums_torch_ms: float
    e2e_triton_ms: float
    e2e_torch_ms: float
    floor_qk_ms: float
    floor_exp_ms: float
    floor_projection_ms: float
    max_rel_diff_ds: float
    max_rel_diff_variance: float
    default_config: dict
    sweep: list[dict]


def require_cuda() -> None:
    if not torch.cuda.is_available():
        sys.exit("scorer_gpu.py needs a CUDA GPU and none is visible to torch "
                 f"(torch {torch.__version__}); run it on a GPU machine.")
    from longattn_spark.scorers.longattn.triton_sums import triton_available

    if not triton_available():
        sys.exit("scorer_gpu.py needs Triton able to launch on this GPU; "
                 "longattn_spark.scorers.longattn.triton_sums.triton_available() is False.")


def timed_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` runs after one warm-up run (CUDA
    events on a GPU; the wall clock otherwise)."""
    fn()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if not cuda:
            start_s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start_s) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


if triton is not None:

    @triton.jit
    def _exp2_chains(x_ptr, n_iter, BLOCK: tl.constexpr):
        """n_iter dependent exp2 per element; BLOCK / (32 * num_warps) chains per thread."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs)
        for _ in range(n_iter):
            x = tl.math.exp2(-x)  # stays in [0.5, 1]: no overflow, no denormals
        tl.store(x_ptr + offs, x)


def measure_rates(repeats: int) -> Rates:
    """bfloat16 matmul FLOP/s (8192³, cuBLAS) and Triton exp2 per second on this GPU."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    matmul_ms = timed_ms(lambda: torch.mm(a, b, out=out), repeats=max(repeats, 10))

    block, n_iter = 1024, 4096
    elements = torch.cuda.get_device_properties(0).multi_processor_count * 2048 * 8
    x = torch.rand(elements, device="cuda")
    grid = (elements // block,)
    exp_ms = timed_ms(lambda: _exp2_chains[grid](x, n_iter, BLOCK=block, num_warps=4),
                      repeats=max(repeats, 10))
    return Rates(matmul_flops=2 * n**3 / (matmul_ms / 1e3),
                 exp_per_s=elements * n_iter / (exp_ms / 1e3))


def max_rel_diff(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(((a - b).abs() / b.abs()).max())


def sweep_configs(q: torch.Tensor, k: torch.Tensor, min_distance: int, repeats: int) -> list[dict]:
    """Milliseconds of the sums kernel for each tile configuration that compiles and fits."""
    from longattn_spark.scorers.longattn.triton_sums import tail_attention_sums_triton

    group = 1 << (q.shape[1] // k.shape[1] - 1).bit_length()
    rows = []
    for stacked_rows in (64, 128, 256):
        block_m = stacked_rows // group
        if block_m < 16:
            continue
        for block_n in (32, 64, 128):
            for num_warps in (4, 8):
                for num_stages in (2, 3, 4):
                    config = {"block_m": block_m, "block_n": block_n,
                              "num_warps": num_warps, "num_stages": num_stages}
                    try:
                        ms = timed_ms(lambda config=config: tail_attention_sums_triton(
                            q, k, min_distance, **config), repeats)
                    except Exception as exc:  # noqa: BLE001 - out of resources, compile limits
                        rows.append({**config, "ms": None, "error": type(exc).__name__})
                        continue
                    rows.append({**config, "ms": ms})
    return sorted(rows, key=lambda r: math.inf if r["ms"] is None else r["ms"])


def bench_model(shape: dict, seq_len: int, batch: int, repeats: int, rates: Rates,
                sweep: bool, workdir: Path, vocab: int = VOCAB,
                device: str = "cuda") -> ModelResult:
    """Time one model shape; ``vocab`` and ``device`` exist for dry runs of this script on
    small shapes (CPU + TRITON_INTERPRET=1), the report always uses the defaults."""
    from longattn_spark.scorers.longattn import (
        Layer0Scorer,
        load_layer0_checkpoint,
        tail_attention_sums,
    )
    from longattn_spark.scorers.longattn.triton_sums import (
        default_config,
        tail_attention_sums_triton,
    )

    folder = write_random_layer0_checkpoint(
        workdir / shape["name"], hidden_size=shape["hidden"], num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"], head_dim=shape["head_dim"], vocab_size=vocab,
        device=device)
    checkpoint = load_layer0_checkpoint(folder)
    fast = Layer0Scorer(checkpoint, device=device, dtype=torch.bfloat16, kernel="triton")
    slow = Layer0Scorer(checkpoint, device=device, dtype=torch.bfloat16, kernel="torch")
    ids = torch.randint(0, vocab, (batch, seq_len), device=device)
    ids[:, 0] = fast.bos_id
    min_distance = seq_len // 4
    scale = shape["head_dim"] ** -0.5

    with torch.inference_mode():
        projections_ms = timed_ms(lambda: fast.rotated_query_key(ids), repeats)
        q, k = fast.rotated_query_key(ids)
        sums_triton_ms = timed_ms(
            lambda: tail_attention_sums_triton(q, k, min_distance, scale=scale), repeats)
        sums_torch_ms = timed_ms(lambda: tail_attention_sums(q, k, min_distance, scale=scale),
                                 max(1, repeats // 2))
        e2e_triton_ms = timed_ms(lambda: fast.score(ids), repeats)
        e2e_torch_ms = timed_ms(lambda: slow.score(ids), max(1, repeats // 2))
        got, ref = fast.score(ids), slow.score(ids)
        sweep_rows = sweep_configs(q, k, min_distance, repeats) if sweep else []
    assert fast.kernel == "triton" and slow.kernel == "torch", (fast.kernel_note, slow.kernel_note)

    cells = shape["heads"] * seq_len * (seq_len + 1) / 2 * batch
    projected = (shape["heads"] + shape["kv_heads"]) * shape["head_dim"]
    projection_flops = 2 * batch * seq_len * shape["hidden"] * projected
    return ModelResult(
        model=shape["name"], seq_len=seq_len, batch=batch,
        projections_ms=projections_ms / batch, sums_triton_ms=sums_triton_ms / batch,
        sums_torch_ms=sums_torch_ms / batch, e2e_triton_ms=e2e_triton_ms / batch,
        e2e_torch_ms=e2e_torch_ms / batch,
        floor_qk_ms=cells * 2 * shape["head_dim"] / rates.matmul_flops * 1e3 / batch,
        floor_exp_ms=cells / rates.exp_per_s * 1e3 / batch,
        floor_projection_ms=projection_flops / rates.matmul_flops * 1e3 / batch,
        max_rel_diff_ds=max_rel_diff(got.ds_heads, ref.ds_heads),
        max_rel_diff_variance=max_rel_diff(got.var_heads, ref.var_heads),
        default_config=asdict(default_config(shape["head_dim"], shape["heads"] // shape["kv_heads"],
                                             torch.bfloat16)),
        sweep=sweep_rows)


def report(key: str, r: ModelResult) -> None:
    tokens = r.seq_len
    sums_floor = max(r.floor_qk_ms, r.floor_exp_ms)
    e2e_floor = sums_floor + r.floor_projection_ms
    tps = tokens / (r.e2e_triton_ms / 1e3)
    speedup = r.e2e_torch_ms / r.e2e_triton_ms
    print(f"\n{r.model} layer 0, L = {r.seq_len}, batch {r.batch}, bfloat16 (per window)")
    print(f"  {'':34s}{'ms':>10s}{'tokens/s':>14s}")
    print(f"  {'projections + RoPE':34s}{r.projections_ms:10.2f}")
    print(f"  {'sums, Triton kernel':34s}{r.sums_triton_ms:10.2f}")
    print(f"  {'sums, blockwise torch':34s}{r.sums_torch_ms:10.2f}")
    print(f"  {'end to end, Triton':34s}{r.e2e_triton_ms:10.2f}{tps:14,.0f}")
    print(f"  {'end to end, blockwise torch':34s}{r.e2e_torch_ms:10.2f}"
          f"{tokens / (r.e2e_torch_ms / 1e3):14,.0f}")
    print(f"  speed-up over torch: sums {r.sums_torch_ms / r.sums_triton_ms:.1f}x, "
          f"end to end {speedup:.1f}x (goal >= {GOAL_SPEEDUP:.0f}x)")
    print(f"  floor of the sums: QK^T {r.floor_qk_ms:.2f} ms, exp {r.floor_exp_ms:.2f} ms -> "
          f"max {sums_floor:.2f} ms (serial sum {r.floor_qk_ms + r.floor_exp_ms:.2f} ms); "
          f"kernel at {sums_floor / r.sums_triton_ms:.0%} of it")
    print(f"  floor end to end: + projections {r.floor_projection_ms:.2f} ms = {e2e_floor:.2f} ms; "
          f"scorer at {e2e_floor / r.e2e_triton_ms:.0%} of it")
    print(f"  Triton vs torch scores: max rel. diff ds_heads {r.max_rel_diff_ds:.1e}, "
          f"var_heads {r.max_rel_diff_variance:.1e}")
    goal = GOALS_TOKENS_PER_S[key]
    met = "met" if tps >= goal and speedup >= GOAL_SPEEDUP else "NOT met"
    print(f"  goal >= {goal:,} tokens/s and >= {GOAL_SPEEDUP:.0f}x torch: {met}")
    if r.sweep:
        print(f"  kernel tile sweep, sums only (default: {r.default_config}):")
        print("    block_m block_n warps stages   ms")
        for row in r.sweep:
            ms = "failed: " + row["error"] if row["ms"] is None else f"{row['ms']:.2f}"
            print(f"    {row['block_m']:7d} {row['block_n']:7d} {row['num_warps']:5d} "
                  f"{row['num_stages']:6d}   {ms}")


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                                capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, text=True,
                               capture_output=True, check=True).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "triton": triton.__version__, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


WHOLE_LM = {"name": "Llama-3.2-1B", "hidden_size": 2048, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192,
            "vocab_size": 128256}


def bench_whole_lm(seq_len: int, batch: int, repeats: int, workdir: Path,
                   device: str = "cuda", shape: dict | None = None) -> dict:
    """Per-window milliseconds of the whole-LM scorers, ProLong (C = 128, 500 pairs, KV
    reuse) and loss gain (S = L // 4), and of one plain forward pass (logits included) of the
    same random Llama-3.2-1B-shaped model over the same windows, bfloat16. ``shape`` and
    ``device`` exist for dry runs on small shapes; the report uses the defaults."""
    from transformers import AutoModelForCausalLM

    from longattn_spark.demo.smoke_model import write_smoke_test_model
    from longattn_spark.scorers.lossgain import lm_tokens_per_window
    from longattn_spark.scorers.lossgain.scorer import LossGainScorer
    from longattn_spark.scorers.prolong.scorer import DEFAULT_SEED_RULE, ProLongScorer

    shape = dict(shape or WHOLE_LM)
    name = shape.pop("name")
    folder = write_smoke_test_model(workdir / name, dtype="bfloat16", **shape)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    model.requires_grad_(False)
    bos = int(model.config.bos_token_id)
    ids = torch.randint(0, shape["vocab_size"], (batch, seq_len), device=device)
    ids[:, 0] = bos
    segment, pairs = 128, 500
    lossgain = LossGainScorer(model, bos_id=bos, device=torch.device(device),
                              dtype=torch.bfloat16)
    prolong = ProLongScorer(model, path=folder, raw_config={}, device=torch.device(device),
                            dtype=torch.bfloat16, segment_size=segment, pairs=pairs,
                            threshold=0.1, seed_rule=DEFAULT_SEED_RULE, window_size=None,
                            allow_pickle=False, kv_reuse=True, batch_size=None,
                            memory_budget_bytes=None)
    windows = [row.cpu().numpy() for row in ids]
    names = [f"w{i}" for i in range(batch)]
    with torch.inference_mode():
        forward_ms = timed_ms(lambda: model(input_ids=ids, use_cache=False).logits, repeats)
        lossgain_ms = timed_ms(lambda: lossgain.score(ids), repeats)
        prolong_ms = timed_ms(lambda: prolong.score_windows(windows, names), max(1, repeats // 2))
    n_segments = seq_len // segment
    return {"model": name, "seq_len": seq_len, "batch": batch, "dtype": "bfloat16",
            "forward_ms": forward_ms / batch, "lossgain_ms": lossgain_ms / batch,
            "prolong_ms": prolong_ms / batch, "forward_tokens": seq_len,
            "lossgain_tokens": lm_tokens_per_window(seq_len, seq_len // 4),
            "prolong_tokens": n_segments * segment + min(pairs, n_segments * (n_segments - 1)
                                                         // 2) * segment,
            "prolong_kv_reuse": prolong.kv_reuse, "lossgain_split_head": lossgain._split}


def report_whole_lm(r: dict) -> None:
    print(f"\n{r['model']}-shaped random model, whole-LM scorers, L = {r['seq_len']}, batch "
          f"{r['batch']}, {r['dtype']} (per window)")
    print(f"  {'':34s}{'ms':>10s}{'LM tokens':>12s}{'x forward':>11s}")
    for label, key in (("one forward pass (logits)", "forward"), ("lossgain (S = L/4)", "lossgain"),
                       ("prolong (C 128, 500 pairs)", "prolong")):
        print(f"  {label:34s}{r[key + '_ms']:10.2f}{r[key + '_tokens']:12,}"
              f"{r[key + '_ms'] / r['forward_ms']:11.2f}")
    met = "met" if r["lossgain_ms"] <= 2.3 * r["forward_ms"] else "NOT met"
    print(f"  goal lossgain <= 2.3x one forward pass: {met}; prolong KV reuse "
          f"{r['prolong_kv_reuse']}, lossgain head applied to the needed positions only: "
          f"{r['lossgain_split_head']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="8b,70b", help="comma-separated: 8b, 70b")
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1, help="windows scored per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="also time kernel tile configs")
    parser.add_argument("--json", type=Path, help="write all figures to this file")
    parser.add_argument("--skip-whole-lm", action="store_true",
                        help="skip the whole-LM scorers (prolong, lossgain) and their forward "
                        "pass")
    args = parser.parse_args()
    keys = [key.strip().lower() for key in args.models.split(",") if key.strip()]
    unknown = [key for key in keys if key not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    require_cuda()

    env = environment()
    print(" | ".join(f"{k} {v}" for k, v in env.items()))
    rates = measure_rates(args.repeats)
    print(f"measured: bf16 matmul {rates.matmul_flops / 1e12:.0f} TFLOP/s, "
          f"exp2 {rates.exp_per_s / 1e12:.2f} T/s")
    results = {}
    with tempfile.TemporaryDirectory(prefix="longattn-gpu-bench-") as tmp:
        for key in keys:
            results[key] = bench_model(MODELS[key], args.seq_len, args.batch, args.repeats,
                                       rates, args.sweep, Path(tmp))
            report(key, results[key])
            torch.cuda.empty_cache()
        if not args.skip_whole_lm:
            results["whole_lm"] = bench_whole_lm(args.seq_len, args.batch, args.repeats,
                                                 Path(tmp))
            report_whole_lm(results["whole_lm"])
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rates": asdict(rates),
                                         "results": {k: v if isinstance(v, dict) else
                                                     asdict(v) for k, v in results.items()}},
                                        indent=1))


if __name__ == "__main__":
    main()
