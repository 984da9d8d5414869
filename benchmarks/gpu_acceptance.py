"""Issue 31's GPU acceptance in one prepared call: every figure, its goal, measured or not.

    python3 benchmarks/gpu_acceptance.py --json $OUT/gpu_acceptance.json --commit SHA
    python3 benchmarks/gpu_acceptance.py --dry-run [--json /tmp/dry.json]   # CPU, tiny shapes

On one CUDA GPU (about 5 minutes on an H100 by its budget; at most 8), it measures, in order:

1. **Rates**: a bfloat16 matmul (8192³, cuBLAS) in FLOP/s and a Triton exp2 rate (the
   definitions of ``benchmarks/scorer_gpu.py``), the units of every floor below.
2. **Layer 0** at L = 32768, bfloat16, random weights of the Llama-3.1-8B and -70B shapes
   (layer 0 only, llama3 RoPE, vocabulary 128256), one window per call: end to end
   (``Layer0Scorer.score``: ids in, DS/variance/per-head arrays out) with ``kernel="fused"``
   (the new path), ``"triton"`` (today's: torch projections + the Triton sums) and
   ``"torch"`` (blockwise); projections + RoPE of both paths; the sums kernel; tokens/s; the
   FLOP floor (``scorers/flops.py``: QKᵀ over the causal half, one exp per causal cell, the
   q/k projections) and the fraction of it reached; the largest relative difference of the
   fused path's per-head scores from today's.
3. **Loss gain and ProLong** on SmolLM2-135M's shape (30 layers, 9/3 heads, hidden 576, MLP
   1536, vocabulary 49152, tied embeddings; random weights built with transformers'
   ``LlamaConfig``), bfloat16, batched windows at W = 8192 and 32768: one forward pass with
   logits (the unit), loss gain (S = W/4), ProLong (C = 128, 500 pairs, KV reuse): tokens/s,
   × one forward, and the fraction of each FLOP floor.
4. **The probe's cost**, without Spark: natural windows (2 categories) scored by the layer-0
   scorer (auto: the fused path), their controls built by ``probe/controls.py`` and scored in
   the same batches, the AUCs of ``probe/results.py``; against (1 + kinds) × scoring the
   natural sample.
5. **The GPU tests**: ``pytest -m gpu`` on tests/test_triton_sums.py,
   tests/test_fused_layer0.py and tests/test_gpu_scorers.py (``--noconftest``: the suite's
   conftest starts Spark's JVM settings; these files need neither).

It prints one table (figure, goal, measured, met) and writes the JSON (``--json``, default
``benchmarks/gpu_acceptance.json`` on a GPU) with the device, driver, torch / triton /
transformers versions, the commit (``--commit``, else git's, else "unknown") and a hash of
the code, after every section (a run cut short keeps what it measured).

It imports no pyspark, py4j or delta (the GPU machine has no Java or pyspark): an import of
them fails the run. ``--dry-run`` (also chosen when no CUDA device is visible) runs the same
code on the CPU with tiny shapes in seconds, the Triton kernels under
``TRITON_INTERPRET=1``; every figure of a dry run says it is not a GPU measurement, none is
judged against its goal, and it never writes ``benchmarks/gpu_acceptance.json``. The GPU
tests are only collected there (they import without Spark).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_JSON = REPO / "benchmarks" / "gpu_acceptance.json"
BLOCKED = ("pyspark", "py4j", "delta")
GPU_TEST_FILES = ("tests/test_triton_sums.py", "tests/test_fused_layer0.py",
                  "tests/test_gpu_scorers.py")

LAYER0_SHAPES = {
    "8b": {"name": "Llama-3.1-8B", "hidden": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128,
           "goal_tokens_per_s": 3_000_000},
    "70b": {"name": "Llama-3.1-70B", "hidden": 8192, "heads": 64, "kv_heads": 8,
            "head_dim": 128, "goal_tokens_per_s": 1_500_000},
}
LAYER0_VOCAB = 128256
SMOLLM2 = {"name": "SmolLM2-135M", "vocab_size": 49152, "hidden_size": 576,
           "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0,
           "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "bos_token_id": 1,
           "eos_token_id": 2}

# The dry run: the same code, tiny shapes, seconds on a CPU.
DRY_LAYER0_SHAPES = {
    "8b": {"name": "tiny (8B's place)", "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16,
           "goal_tokens_per_s": 3_000_000},
    "70b": {"name": "tiny (70B's place)", "hidden": 96, "heads": 8, "kv_heads": 2,
            "head_dim": 16, "goal_tokens_per_s": 1_500_000},
}
DRY_LM = {"name": "tiny (SmolLM2's place)", "vocab_size": 512, "hidden_size": 64,
          "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 8192, "rope_theta": 100000.0,
          "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "bos_token_id": 1,
          "eos_token_id": 2}

GOAL_FLOOR_LAYER0 = 0.60
GOAL_FLOOR_LOSSGAIN = 0.35
GOAL_LOSSGAIN_X_FORWARD = 2.3
GOAL_SPEEDUP_OVER_TORCH = 5.0
GOAL_SCORE_REL_DIFF = 1e-3
GOAL_PROBE_RATIO = 1.2
GOAL_PROBE_BUILD_SHARE = 0.2
GOAL_TOTAL_S = 480.0


class _NoSpark(importlib.abc.MetaPathFinder):
    """Fails any import of pyspark, py4j or delta: the GPU machine has none of them."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"gpu_acceptance.py imported {name!r}; the GPU machine has no "
                              f"Java or pyspark, so nothing here may import it")
        return None


@dataclass
class Settings:
    dry_run: bool
    device: str
    repeats: int
    seq_len: int
    layer0_shapes: dict
    layer0_vocab: int
    lm_shape: dict
    lm_windows: list[tuple[int, int]]
    prolong_segment: int
    prolong_pairs: int
    probe_window: int
    probe_per_category: int
    probe_batch: int
    torch_baseline: bool


class Run:
    """The figures and sections measured so far, written after every section."""

    def __init__(self, settings: Settings, json_path: Path | None, environment: dict) -> None:
        self.settings = settings
        self.json_path = json_path
        self.environment = environment
        self.started = time.perf_counter()
        self.figures: list[dict] = []
        self.sections: dict[str, dict] = {}

    def figure(self, key: str, label: str, goal: str, value: float | None, shown: str,
               met: bool | None, unit: str = "", error: bool = False) -> None:
        dry = self.settings.dry_run
        self.figures.append({
            "id": key, "figure": label, "goal": goal, "measured": value, "unit": unit,
            "shown": shown + (" (dry run)" if dry and value is not None else ""),
            "met": None if dry else met, "dry_run": dry, "gpu_measurement": not dry,
            "error": error, "device": self.environment["device"]})

    def section(self, name: str, result: dict) -> None:
        self.sections[name] = result
        self.write()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def as_json(self) -> dict:
        dry = self.settings.dry_run
        return {"schema": 1, "issue": 31, "dry_run": dry,
                "note": ("CPU dry run on tiny shapes: no figure here is a GPU measurement and "
                         "none is judged against its goal") if dry else
                        "measured on the GPU named in environment.device",
                "environment": self.environment, "settings": self.settings.__dict__,
                "elapsed_s": self.elapsed, "figures": self.figures, "sections": self.sections}

    def write(self) -> None:
        if self.json_path is None:
            return
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.json_path.with_suffix(".partial")
        tmp.write_text(json.dumps(self.as_json(), indent=1, default=str))
        tmp.replace(self.json_path)


# ---- measuring -------------------------------------------------------------------------

def timed_s(fn: Callable[[], object], repeats: int, cuda: bool) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up (CUDA events on a
    GPU, the wall clock on the CPU)."""
    import torch

    fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(max(1, repeats)):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure_rates(settings: Settings) -> dict:
    """bfloat16 matmul FLOP/s and exp2/s: on a GPU with scorer_gpu.py's own definitions
    (8192³ cuBLAS; Triton chains of dependent exp2); in a dry run small CPU stand-ins."""
    import torch

    if not settings.dry_run:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from scorer_gpu import measure_rates as gpu_rates

        rates = gpu_rates(max(settings.repeats, 5))
        return {"matmul_flops_per_s": rates.matmul_flops, "exp_per_s": rates.exp_per_s,
                "how": "bf16 8192^3 torch.mm (cuBLAS); Triton exp2 chains (scorer_gpu.py)"}
    n = 256
    a, b = torch.randn(n, n), torch.randn(n, n)
    matmul_s = timed_s(lambda: a @ b, 3, False)
    x = torch.rand(1 << 20)
    exp_s = timed_s(lambda: torch.exp2(x), 3, False)
    return {"matmul_flops_per_s": 2 * n ** 3 / matmul_s, "exp_per_s": x.numel() / exp_s,
            "how": "dry run: float32 256^3 matmul and torch.exp2 on the CPU"}


def rel_diff(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.abs(b)
    scale[scale == 0] = 1.0
    return float(np.max(np.abs(a - b) / scale))


def bench_layer0(run: Run, rates: dict, workdir: Path) -> None:
    import torch

    from longattn_spark.demo.smoke_model import write_random_layer0_checkpoint
    from longattn_spark.scorers import flops
    from longattn_spark.scorers.longattn import Layer0Scorer, load_layer0_checkpoint
    from longattn_spark.scorers.longattn.triton_sums import tail_attention_sums_triton

    s = run.settings
    cuda = s.device == "cuda"
    for key, shape in s.layer0_shapes.items():
        began = time.perf_counter()
        label = f"layer 0 {key.upper()}"
        try:
            folder = write_random_layer0_checkpoint(
                workdir / f"layer0-{key}", hidden_size=shape["hidden"],
                num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                head_dim=shape["head_dim"], vocab_size=s.layer0_vocab, device=s.device)
            checkpoint = load_layer0_checkpoint(folder)
            fused = Layer0Scorer(checkpoint, device=s.device, dtype=torch.bfloat16,
                                 kernel="fused")
            today = Layer0Scorer(checkpoint, device=s.device, dtype=torch.bfloat16,
                                 kernel="triton")
            ids = torch.randint(0, s.layer0_vocab, (1, s.seq_len), device=s.device)
            ids[:, 0] = fused.bos_id
            k = fused.min_distance_for(s.seq_len)
            scale = shape["head_dim"] ** -0.5
            with torch.inference_mode():
                proj_fused = timed_s(lambda: fused.fused_query_key(ids, k), s.repeats, cuda)
                proj_torch = timed_s(lambda: fused.rotated_query_key(ids), s.repeats, cuda)
                q, key_states = fused.fused_query_key(ids, k)
                sums = timed_s(lambda: tail_attention_sums_triton(q, key_states, k,
                                                                  scale=scale),
                               s.repeats, cuda)
                del q, key_states
                e2e_fused = timed_s(lambda: fused.score(ids), s.repeats, cuda)
                e2e_today = timed_s(lambda: today.score(ids), s.repeats, cuda)
                got, want = fused.score(ids), today.score(ids)
                e2e_torch = None
                if s.torch_baseline:
                    slow = Layer0Scorer(checkpoint, device=s.device, dtype=torch.bfloat16,
                                        kernel="torch")
                    e2e_torch = timed_s(lambda: slow.score(ids), max(1, s.repeats // 2), cuda)
                    del slow
            floors = flops.layer0_floor(
                s.seq_len, hidden=shape["hidden"], heads=shape["heads"],
                kv_heads=shape["kv_heads"], head_dim=shape["head_dim"],
                matmul_flops_per_s=rates["matmul_flops_per_s"], exp_per_s=rates["exp_per_s"])
            result = {
                "shape": shape, "seq_len": s.seq_len, "batch": 1, "dtype": "bfloat16",
                "kernel_fused": fused.kernel, "kernel_note_fused": fused.kernel_note,
                "kernel_today": today.kernel, "projections_fused_s": proj_fused,
                "projections_torch_s": proj_torch, "sums_triton_s": sums,
                "e2e_fused_s": e2e_fused, "e2e_triton_s": e2e_today, "e2e_torch_s": e2e_torch,
                "tokens_per_s_fused": s.seq_len / e2e_fused,
                "tokens_per_s_triton": s.seq_len / e2e_today,
                "floor": floors,
                "floor_fraction": floors["causal_half"]["total_s"] / e2e_fused,
                "floor_fraction_needed": floors["needed"]["total_s"] / e2e_fused,
                "sums_floor_fraction": floors["causal_half"]["sums_s"] / sums,
                "max_rel_diff_ds": rel_diff(got.ds_heads, want.ds_heads),
                "max_rel_diff_var": rel_diff(got.var_heads, want.var_heads),
                "seconds": time.perf_counter() - began}
            run.section(f"layer0_{key}", result)
            tps = result["tokens_per_s_fused"]
            goal = shape["goal_tokens_per_s"]
            run.figure(f"layer0_{key}_tokens_per_s", f"{label}: tokens/s (fused)",
                       f">= {goal:,}", tps, f"{tps:,.0f} ({e2e_fused * 1e3:.2f} ms; today's "
                       f"triton path {s.seq_len / e2e_today:,.0f})", tps >= goal, "tokens/s")
            frac = result["floor_fraction"]
            run.figure(f"layer0_{key}_floor_fraction", f"{label}: share of FLOP floor",
                       f">= {GOAL_FLOOR_LAYER0:.0%}", frac,
                       f"{frac:.0%} (floor {floors['causal_half']['total_s'] * 1e3:.2f} ms; "
                       f"needed-work floor {result['floor_fraction_needed']:.0%})",
                       frac >= GOAL_FLOOR_LAYER0)
            worst = max(result["max_rel_diff_ds"], result["max_rel_diff_var"])
            run.figure(f"layer0_{key}_scores_vs_today", f"{label}: fused vs today, rel. "
                       f"diff ds / var", f"<= {GOAL_SCORE_REL_DIFF:g}", worst,
                       f"{result['max_rel_diff_ds']:.1e} / {result['max_rel_diff_var']:.1e}",
                       worst <= GOAL_SCORE_REL_DIFF)
            if e2e_torch:
                speedup = e2e_torch / e2e_fused
                run.figure(f"layer0_{key}_speedup", f"{label}: x blockwise torch",
                           f">= {GOAL_SPEEDUP_OVER_TORCH:g}x", speedup, f"{speedup:.1f}x",
                           speedup >= GOAL_SPEEDUP_OVER_TORCH)
            del fused, today
        except Exception as exc:  # noqa: BLE001 - recorded; the other sections still run
            _failed(run, f"layer0_{key}", label, exc)
        _free(s)


def _lm(shape: dict, device: str, folder: Path):
    """A random Llama of ``shape`` (transformers' LlamaConfig and class), bfloat16, saved to
    ``folder`` (safetensors) and loaded back as the scorers load models."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    fields = {k: v for k, v in shape.items() if k != "name"}
    config = LlamaConfig(**fields)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                parameter.fill_(1.0)
            else:
                std = shape["hidden_size"] ** -0.5 if name.endswith(("q_proj.weight",
                                                                     "k_proj.weight")) else 0.02
                parameter.normal_(0.0, std, generator=generator)
    model.tie_weights()
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    del model
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device)
    loaded.eval().requires_grad_(False)
    return loaded


def bench_whole_lm(run: Run, rates: dict, workdir: Path) -> None:
    import torch

    from longattn_spark.scorers import flops
    from longattn_spark.scorers.lossgain.scorer import LossGainScorer
    from longattn_spark.scorers.prolong.scorer import DEFAULT_SEED_RULE, ProLongScorer

    s = run.settings
    cuda = s.device == "cuda"
    name = s.lm_shape["name"]
    folder = workdir / "lm"
    try:
        model = _lm(s.lm_shape, s.device, folder)
    except Exception as exc:  # noqa: BLE001
        _failed(run, "whole_lm", f"{name}-shaped model", exc)
        return
    shape = flops.DecoderShape.from_config(model.config)
    device = torch.device(s.device)
    bos = int(model.config.bos_token_id)
    lossgain = LossGainScorer(model, bos_id=bos, device=device, dtype=torch.bfloat16)
    prolong = ProLongScorer(model, path=folder, raw_config={}, device=device,
                            dtype=torch.bfloat16, segment_size=s.prolong_segment,
                            pairs=s.prolong_pairs, threshold=0.1, seed_rule=DEFAULT_SEED_RULE,
                            window_size=None, allow_pickle=False, kv_reuse=True,
                            batch_size=None, memory_budget_bytes=None)
    matmul = rates["matmul_flops_per_s"]
    for window, batch in s.lm_windows:
        label = f"W = {window} (batch {batch})"
        began = time.perf_counter()
        try:
            ids = torch.randint(0, shape.vocab, (batch, window), device=s.device)
            ids[:, 0] = bos
            windows = [row.cpu().numpy() for row in ids]
            names = [f"w{i}" for i in range(batch)]
            with torch.inference_mode():
                forward = timed_s(lambda: model(input_ids=ids, use_cache=False).logits,
                                  s.repeats, cuda)
                torch.cuda.empty_cache() if cuda else None
                gain = timed_s(lambda: lossgain.score(ids), s.repeats, cuda)
                pro = timed_s(lambda: prolong.score_windows(windows, names),
                              max(1, s.repeats // 2), cuda)
            short = window // 4
            floor_forward = flops.forward_flops(shape, window, batch) / matmul
            floor_gain = flops.lossgain_floor(shape, window, short, matmul_flops_per_s=matmul,
                                              batch=batch)
            floor_pro = flops.prolong_floor(shape, window, s.prolong_segment, s.prolong_pairs,
                                            matmul_flops_per_s=matmul, batch=batch)
            result = {
                "shape": flops.shape_dict(shape), "window": window, "batch": batch,
                "attn_implementation": lossgain.attn_implementation,
                "lossgain_split_head": lossgain._split, "prolong_kv_reuse": prolong.kv_reuse,
                "forward_s": forward, "lossgain_s": gain, "prolong_s": pro,
                "lossgain_x_forward": gain / forward, "prolong_x_forward": pro / forward,
                "tokens_per_s_forward": batch * window / forward,
                "tokens_per_s_lossgain": batch * window / gain,
                "tokens_per_s_prolong": batch * window / pro,
                "floor_forward_s": floor_forward, "floor_lossgain_s": floor_gain,
                "floor_prolong_s": floor_pro,
                "floor_fraction_forward": floor_forward / forward,
                "floor_fraction_lossgain": floor_gain / gain,
                "floor_fraction_prolong": floor_pro / pro,
                "lossgain_flops": flops.lossgain_flops(shape, window, short, batch),
                "prolong_flops": flops.prolong_flops(shape, window, s.prolong_segment,
                                                     s.prolong_pairs, batch),
                "seconds": time.perf_counter() - began}
            run.section(f"whole_lm_w{window}", result)
            ratio = result["lossgain_x_forward"]
            run.figure(f"lossgain_w{window}_x_forward", f"loss gain {label}: x forward",
                       f"<= {GOAL_LOSSGAIN_X_FORWARD:g}x", ratio,
                       f"{ratio:.2f}x ({result['tokens_per_s_lossgain']:,.0f} tokens/s)",
                       ratio <= GOAL_LOSSGAIN_X_FORWARD)
            frac = result["floor_fraction_lossgain"]
            run.figure(f"lossgain_w{window}_floor_fraction",
                       f"loss gain {label}: share of FLOP floor",
                       f">= {GOAL_FLOOR_LOSSGAIN:.0%}", frac,
                       f"{frac:.0%} (floor {floor_gain * 1e3:.1f} ms, measured "
                       f"{gain * 1e3:.1f} ms)", frac >= GOAL_FLOOR_LOSSGAIN)
            run.figure(f"prolong_w{window}", f"ProLong {label}: (comparison)", "-",
                       result["tokens_per_s_prolong"],
                       f"{result['tokens_per_s_prolong']:,.0f} tokens/s, "
                       f"{result['prolong_x_forward']:.2f}x forward, "
                       f"{result['floor_fraction_prolong']:.0%} of its floor", None, "tokens/s")
            del ids
        except Exception as exc:  # noqa: BLE001
            _failed(run, f"whole_lm_w{window}", label, exc)
        _free(s)
    del model, lossgain, prolong
    _free(s)


def bench_probe(run: Run, workdir: Path) -> None:
    import numpy as np
    import torch

    from longattn_spark.probe.controls import KINDS, SourceWindow, build_controls, default_block
    from longattn_spark.probe.results import NATURAL, probe_results
    from longattn_spark.scorers.longattn import Layer0Scorer, build_model_input

    s = run.settings
    cuda = s.device == "cuda"
    label = f"probe W = {s.probe_window}"
    began = time.perf_counter()
    try:
        folder = workdir / "lm"
        if not (folder / "config.json").is_file():
            _lm(s.lm_shape, s.device, folder)
        # the score job's choice on a GPU (auto: the fused path); the dry run asks for the
        # fused path by name (auto is the torch path on a CPU)
        scorer = Layer0Scorer.from_pretrained(folder, device=s.device, dtype="bfloat16",
                                              kernel="fused" if s.dry_run else "auto")
        window = s.probe_window
        k = window // 4
        rng = np.random.default_rng(0)
        natural = {cat: [SourceWindow(f"{cat}/doc{i}/0", f"{cat}-doc{i}",
                                      rng.integers(2, scorer.vocab_size, window)
                                      .astype(np.int32))
                         for i in range(s.probe_per_category)] for cat in ("books", "code")}

        def score_all(windows: list) -> list:
            rows = []
            for start in range(0, len(windows), s.probe_batch):
                chunk = windows[start:start + s.probe_batch]
                ids = build_model_input([w for w in chunk], scorer.bos_id, window)
                out = scorer.score(ids.to(scorer.device))
                rows += [(float(out.ds[i]), float(out.variance[i]), out.ds_heads[i].tolist(),
                          out.var_heads[i].tolist()) for i in range(len(chunk))]
            if cuda:
                torch.cuda.synchronize()
            return rows

        all_natural = [w.input_ids for ws in natural.values() for w in ws]
        score_all(all_natural[:s.probe_batch])  # warm-up (compiles), not counted
        t0 = time.perf_counter()
        natural_rows = score_all(all_natural)
        t_natural = time.perf_counter() - t0
        t0 = time.perf_counter()
        controls = {cat: build_controls(ws, ws, KINDS, seed=0, seq_len=window,
                                        min_distance=k, block=default_block(window, k))
                    for cat, ws in natural.items()}
        t_build = time.perf_counter() - t0
        control_list = [(cat, c) for cat, (cs, _) in controls.items() for c in cs]
        t0 = time.perf_counter()
        control_rows = score_all([c.input_ids for _, c in control_list])
        t_controls = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = []
        cats = [cat for cat, ws in natural.items() for _ in ws]
        ds_nat = np.array([r[0] for r in natural_rows])
        du_nat = -np.array([r[1] for r in natural_rows])
        stats = {}
        for cat in natural:
            mask = np.array([c == cat for c in cats])
            stats[cat] = (ds_nat[mask].mean(), ds_nat[mask].std(ddof=1),
                          du_nat[mask].mean(), du_nat[mask].std(ddof=1))

        def row(cat: str, kind: str, r: tuple) -> dict:
            m_ds, s_ds, m_du, s_du = stats[cat]
            lds = (r[0] - m_ds) / s_ds + 0.5 * (-r[1] - m_du) / s_du
            return {"category": cat, "kind": kind, "selection_score": float(lds), "ds": r[0],
                    "variance": r[1], "ds_heads": r[2], "var_heads": r[3]}

        rows = [row(cat, NATURAL, r) for cat, r in zip(cats, natural_rows)]
        rows += [row(cat, c.kind, r) for (cat, c), r in zip(control_list, control_rows)]
        results = probe_results(rows, KINDS, {cat: sk for cat, (_, sk) in controls.items()},
                                seed=0, score_columns=("ds", "variance", "ds_heads",
                                                       "var_heads"))
        t_auc = time.perf_counter() - t0
        probe_s = t_build + t_natural + t_controls + t_auc
        ratio = probe_s / ((1 + len(KINDS)) * t_natural)
        share = t_build / (t_natural + t_controls)
        result = {"kernel": scorer.kernel, "kernel_note": scorer.kernel_note, "window": window,
                  "natural_windows": len(all_natural), "controls": len(control_list),
                  "score_natural_s": t_natural, "build_controls_s": t_build,
                  "score_controls_s": t_controls, "aucs_s": t_auc, "probe_s": probe_s,
                  "probe_over_1_plus_kinds_x_score": ratio, "build_over_scoring": share,
                  "auc_selection_score": {cat: {kind: (r.result.auc if r.result else None)
                                                for kind, r in kinds.items()}
                                          for cat, kinds in results.items()},
                  "seconds": time.perf_counter() - began}
        run.section("probe", result)
        run.figure("probe_cost", f"{label}: cost / ((1+kinds) x natural)",
                   f"<= {GOAL_PROBE_RATIO:g}", ratio,
                   f"{ratio:.2f} (kernel {scorer.kernel})", ratio <= GOAL_PROBE_RATIO)
        run.figure("probe_build_share", f"{label}: controls built / scoring",
                   f"<= {GOAL_PROBE_BUILD_SHARE:g}", share, f"{share:.3f}",
                   share <= GOAL_PROBE_BUILD_SHARE)
    except Exception as exc:  # noqa: BLE001
        _failed(run, "probe", label, exc)
    _free(s)


def run_gpu_tests(run: Run, timeout_s: int) -> None:
    """``pytest -m gpu`` on the GPU test files in a child process that cannot import
    pyspark; a dry run only collects them."""
    s = run.settings
    label = "GPU tests (pytest -m gpu)"
    args = ["--noconftest", "-o", "addopts=", "-p", "no:cacheprovider", "-q", "-m", "gpu",
            "-rfEs", *GPU_TEST_FILES]
    if s.dry_run:
        args.append("--collect-only")
    script = ("import importlib.abc, sys\n"
              "class B(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              f"        if name.split('.')[0] in {BLOCKED!r}:\n"
              "            raise ImportError('no ' + name + ' on the GPU machine')\n"
              "sys.meta_path.insert(0, B())\n"
              "import pytest\n"
              f"sys.exit(pytest.main({args!r}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("TRITON_INTERPRET", None)
    began = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, text=True,
                              capture_output=True, timeout=timeout_s)
        output = (done.stdout + done.stderr)[-8000:]
        code = done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = f"timed out after {timeout_s} s: {exc}", -1
    tail = [line for line in output.strip().splitlines() if line.strip()]
    summary = tail[-1] if tail else ""
    counts = _pytest_counts(summary)
    run.section("gpu_tests", {"returncode": code, "summary": summary, "counts": counts,
                              "collect_only": s.dry_run, "output_tail": output,
                              "seconds": time.perf_counter() - began})
    if s.dry_run:
        import re

        found = re.search(r"(\d+)(?:/\d+)? tests? collected", summary)
        collected = int(found.group(1)) if found else 0
        run.figure("gpu_tests", label, "all pass", float(collected),
                   f"collected {collected} without pyspark, not run" if code == 0 else
                   f"collection failed: {summary}", None)
        return
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    passed = counts.get("passed", 0)
    run.figure("gpu_tests", label, "all pass", float(failed),
               f"{summary or 'no summary'}", code == 0 and failed == 0 and passed > 0)


def _pytest_counts(summary: str) -> dict[str, int]:
    import re

    return {name: int(n) for n, name in re.findall(r"(\d+) ([a-z ]+?)(?=,| in |$)", summary)}


def _failed(run: Run, key: str, label: str, exc: BaseException) -> None:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    print(f"\n{label}: FAILED: {text}\n{traceback.format_exc()[-3000:]}", file=sys.stderr)
    run.section(key, {"error": text})
    run.figure(key, label, "runs", None, f"failed: {text[:160]}", False, error=True)


def _free(settings: Settings) -> None:
    import gc

    import torch

    gc.collect()
    if settings.device == "cuda":
        torch.cuda.empty_cache()


# ---- where, what, when -----------------------------------------------------------------

def environment(commit: str | None, dry_run: bool) -> dict:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import transformers

    cuda = torch.cuda.is_available() and not dry_run
    driver = "none (CPU dry run)"
    if cuda:
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                     "--format=csv,noheader"], capture_output=True, text=True,
                                    timeout=30).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = "unknown"
    return {"device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
            "driver": driver, "cuda": torch.version.cuda, "torch": torch.__version__,
            "triton": triton_version, "transformers": transformers.__version__,
            "python": sys.version.split()[0], "commit": commit or _git_commit(),
            "code_sha256": code_sha256(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "triton_interpret": os.environ.get("TRITON_INTERPRET", "0")}


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, text=True, capture_output=True, check=True,
                               timeout=30).stdout.strip()
        return head + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git here: pass --commit)"


def code_sha256() -> str:
    """sha256 over the package's Python files and this script (path and bytes), in path
    order: ties the figures to the code where git is not there."""
    digest = hashlib.sha256()
    files = sorted((REPO / "longattn_spark").rglob("*.py")) + [Path(__file__).resolve()]
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def settings_for(args: argparse.Namespace, dry_run: bool) -> Settings:
    if dry_run:
        return Settings(dry_run=True, device="cpu", repeats=1, seq_len=args.dry_seq_len,
                        layer0_shapes=DRY_LAYER0_SHAPES, layer0_vocab=512, lm_shape=DRY_LM,
                        lm_windows=[(128, 2), (256, 1)], prolong_segment=16, prolong_pairs=10,
                        probe_window=64, probe_per_category=3, probe_batch=4,
                        torch_baseline=True)
    windows = [tuple(int(n) for n in item.split(":")) for item in args.lm_windows.split(",")]
    return Settings(dry_run=False, device="cuda", repeats=args.repeats, seq_len=args.seq_len,
                    layer0_shapes={k: LAYER0_SHAPES[k] for k in args.layer0.split(",") if k},
                    layer0_vocab=LAYER0_VOCAB, lm_shape=SMOLLM2, lm_windows=windows,
                    prolong_segment=128, prolong_pairs=500, probe_window=args.probe_window,
                    probe_per_category=args.probe_per_category, probe_batch=args.probe_batch,
                    torch_baseline=not args.no_torch_baseline)


def print_table(run: Run) -> None:
    rows = [(f["figure"], f["goal"], f["shown"],
             "dry run" if f["dry_run"] else ("-" if f["met"] is None else
                                             ("met" if f["met"] else "NOT met")))
            for f in run.figures]
    widths = [min(78, max([len(r[i]) for r in rows] + [len(h)]))
              for i, h in enumerate(("figure", "goal", "measured", "met"))]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(("figure", "goal", "measured", "met"), widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    env = run.environment
    print(f"\n{env['device']} | driver {env['driver']} | torch {env['torch']} | triton "
          f"{env['triton']} | transformers {env['transformers']} | commit {env['commit']} | "
          f"{run.elapsed:.0f} s")
    if run.settings.dry_run:
        print("DRY RUN on the CPU with tiny shapes: no figure above is a GPU measurement.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny shapes, Triton under its interpreter (also chosen "
                        "without a CUDA device)")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the figures (default on a GPU: "
                        "benchmarks/gpu_acceptance.json; a dry run writes only when given)")
    parser.add_argument("--commit", default=None, help="the commit measured (the GPU machine "
                        "has no git history)")
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--dry-seq-len", type=int, default=64)
    parser.add_argument("--layer0", default="8b,70b", help="layer-0 shapes: 8b, 70b")
    parser.add_argument("--lm-windows", default="8192:4,32768:1",
                        help="whole-LM windows as W:batch, comma separated")
    parser.add_argument("--probe-window", type=int, default=8192)
    parser.add_argument("--probe-per-category", type=int, default=200,
                        help="natural windows per category (2 categories; the CPU figure's "
                        "size)")
    parser.add_argument("--probe-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch-baseline", action="store_true",
                        help="skip the blockwise torch path's end-to-end time")
    parser.add_argument("--skip", default="", help="sections to skip: layer0, whole_lm, "
                        "probe, tests")
    parser.add_argument("--tests-timeout", type=int, default=240)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.meta_path.insert(0, _NoSpark())
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    dry_run = args.dry_run or not torch.cuda.is_available()
    if dry_run and not args.dry_run:
        print("no CUDA device is visible: running the dry run (tiny shapes on the CPU; "
              "no figure of it is a GPU measurement)")
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            print("triton is already imported without its interpreter: the fused path "
                  "cannot run on the CPU in this process", file=sys.stderr)
        os.environ["TRITON_INTERPRET"] = "1"
    json_path = args.json if args.json is not None else (None if dry_run else REAL_JSON)
    if dry_run and json_path is not None and json_path.resolve() == REAL_JSON.resolve():
        print(f"a dry run never writes {REAL_JSON.relative_to(REPO)} (it holds GPU figures "
              f"only); pass another --json", file=sys.stderr)
        return 2
    if dry_run:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    settings = settings_for(args, dry_run)
    run = Run(settings, json_path, environment(args.commit, dry_run))
    skip = {item.strip() for item in args.skip.split(",") if item.strip()}
    print(f"gpu_acceptance: {run.environment['device']}, torch {run.environment['torch']}, "
          f"triton {run.environment['triton']}" + (" -- DRY RUN" if dry_run else ""),
          flush=True)
    print("layer 0: " + "; ".join(f"{k.upper()} = {v['name']} (hidden {v['hidden']}, "
                                   f"{v['heads']}/{v['kv_heads']} heads x {v['head_dim']})"
                                   for k, v in settings.layer0_shapes.items())
          + f", L = {settings.seq_len}, bf16, one window per call; whole LM: "
          f"{settings.lm_shape['name']} shape, bf16", flush=True)
    rates = measure_rates(settings)
    run.section("rates", rates)
    print(f"rates: matmul {rates['matmul_flops_per_s'] / 1e12:.3f} TFLOP/s, exp2 "
          f"{rates['exp_per_s'] / 1e9:.2f} G/s ({run.elapsed:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-acceptance-") as tmp:
        work = Path(tmp)
        for name, step in (("layer0", lambda: bench_layer0(run, rates, work)),
                           ("whole_lm", lambda: bench_whole_lm(run, rates, work)),
                           ("probe", lambda: bench_probe(run, work))):
            if name in skip:
                continue
            step()
            print(f"{name} done ({run.elapsed:.0f} s)", flush=True)
    if "tests" not in skip:
        run_gpu_tests(run, args.tests_timeout)
        print(f"tests done ({run.elapsed:.0f} s)", flush=True)
    total = run.elapsed
    run.figure("total_seconds", "the whole call", f"<= {GOAL_TOTAL_S:.0f} s", total,
               f"{total:.0f} s", total <= GOAL_TOTAL_S, "s")
    run.write()
    print_table(run)
    return 1 if any(f["error"] for f in run.figures) else 0


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
