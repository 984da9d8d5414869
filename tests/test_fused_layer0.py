"""The fused layer-N path (``kernel="fused"``: Triton RMSNorm, one GEMM for q and k, a Triton
RoPE pass, the Triton sums) against today's paths, on real tiny transformers checkpoints.

CPU tests run the real kernels under Triton's interpreter (``TRITON_INTERPRET=1``), which
must be set before triton is imported: as in tests/test_triton_sums.py the cases run in a
child process (this file run as a script) that writes its measurements to JSON, and the
parametrised tests read them. The pytest process never imports triton in interpreter mode.

- float32: scores of ``kernel="fused"`` equal the torch path's (``kernel="torch"``, the CPU
  default) within 1e-4 relative, and its rotated q/k the torch path's to float32 rounding:
  llama3 RoPE scaling with GQA groups of 3, Qwen2 with q/k biases, layer 1 (the hidden state
  from the layer below), odd lengths and partial tiles, batch 2, every k from 0 to L - 1,
  chunks of positions that straddle k (the split key-only / query+key GEMM).
- float16 (the interpreter rounds bfloat16 by truncation, not to nearest, so 16-bit rounding
  is checked in float16, where it rounds as a GPU does): the fused q/k equal the torch
  path's bit for bit but for a few last-place differences of the RMSNorm's sum order, and
  the scores equal ``kernel="triton"``'s (torch projections, the same sums kernel) within
  1e-3 relative.
- the self-check refuses a fused path whose numbers are wrong.

GPU tests (marker ``gpu``, skipped without CUDA): bfloat16 scores of the fused path equal
today's ``kernel="triton"`` path within 1e-3 relative, ``auto`` picks the fused path, and a
model the fused path cannot run falls back loudly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WORKER_TIMEOUT_S = 900
FP32_TOLERANCE = 1e-4
FP16_SCORE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class FusedCase:
    name: str
    model: str          # "llama3" (GQA 6/2, head dim 32, hidden 96) or "qwen2" (biases)
    stored: str         # dtype of the checkpoint's tensors
    dtype: str          # compute dtype
    seq_len: int
    batch: int = 2
    layer: int = 0
    min_distance: int | None = None   # None: L // 4
    chunk_rows: int | None = None     # FusedProjection chunks (None: the default)


CASES = [
    FusedCase("llama3-gqa3-L97", "llama3", "float32", "float32", 97),
    FusedCase("llama3-bf16-table-L70-k0", "llama3", "bfloat16", "float32", 70, min_distance=0),
    FusedCase("llama3-layer1-L97", "llama3", "float32", "float32", 97, layer=1),
    FusedCase("llama3-L97-k96", "llama3", "float32", "float32", 97, batch=1, min_distance=96),
    FusedCase("llama3-chunks-straddle-k", "llama3", "float32", "float32", 130,
              min_distance=40, chunk_rows=32),
    FusedCase("qwen2-bias-L130", "qwen2", "float32", "float32", 130, min_distance=7),
    FusedCase("qwen2-layer1-L64", "qwen2", "float32", "float32", 64, batch=1, layer=1),
    FusedCase("llama3-fp16-L97", "llama3", "float16", "float16", 97),
    FusedCase("qwen2-fp16-L130", "qwen2", "float16", "float16", 130),
]
VOCAB = 300


def write_model(folder: Path, kind: str, stored: str, seed: int = 0) -> Path:
    """A tiny real checkpoint (transformers' config and class, ``save_pretrained``), every
    weight random, norm weights included (a path that ignored them would pass with ones)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if kind == "llama3":
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
            head_dim=32, num_hidden_layers=2, intermediate_size=64,
            max_position_embeddings=4096, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
            bos_token_id=1, eos_token_id=2)
        model = LlamaForCausalLM(config)
    else:
        config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4,
                             num_key_value_heads=4, num_hidden_layers=2, intermediate_size=64,
                             max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
        model = Qwen2ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.dim() == 1:
                parameter.copy_((1.0 + 0.3 * noise) if "norm" in name else 0.5 * noise)
            else:
                scale = parameter.shape[-1] ** -0.5 if "proj" in name else 1.0
                parameter.copy_(noise * scale)
    model.to(getattr(torch, stored)).save_pretrained(folder)
    return folder


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def _run_case(case: FusedCase, folder: Path) -> dict:
    from longattn_spark.scorers.longattn import Layer0Scorer

    model = write_model(folder / f"{case.model}-{case.stored}", case.model, case.stored)
    common = dict(dtype=case.dtype, layer=case.layer, min_distance=case.min_distance)
    fused = Layer0Scorer.from_pretrained(model, kernel="fused", **common)
    reference = Layer0Scorer.from_pretrained(
        model, kernel="torch" if case.dtype == "float32" else "triton", **common)
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (case.batch, case.seq_len), generator=generator)
    ids[:, 0] = 1
    got, want = fused.score(ids), reference.score(ids)
    k = fused.min_distance_for(case.seq_len)
    with torch.inference_mode():
        if case.chunk_rows:
            cos, sin = fused.rope.cos_sin(case.seq_len, fused.dtype, fused.device)
            q, key = fused._fused.query_key(cos, sin, k, ids=ids, embed=fused._embed,
                                            chunk_rows=case.chunk_rows)
        else:
            q, key = fused.fused_query_key(ids, k)
        q_ref, key_ref = reference.rotated_query_key(ids)
    q_ref_tail, q_tail = q_ref[:, :, k:].double(), q[:, :, k:].double()
    largest = max(float(q_ref_tail.abs().max()) if q_ref_tail.numel() else 0.0,
                  float(key_ref.abs().max()))
    return {
        "case": asdict(case), "kernel": fused.kernel, "kernel_note": fused.kernel_note,
        "reference_kernel": reference.kernel, "min_distance": k,
        "ds_rel": _rel(got.ds_heads, want.ds_heads) if np.any(want.ds_heads) else
        float(np.max(np.abs(got.ds_heads - want.ds_heads))),
        "var_rel": _rel(got.var_heads, want.var_heads) if np.any(want.var_heads) else
        float(np.max(np.abs(got.var_heads - want.var_heads))),
        "q_max_abs": float((q_tail - q_ref_tail).abs().max()) if q_tail.numel() else 0.0,
        "k_max_abs": float((key.double() - key_ref.double()).abs().max()),
        "q_below_k_zero": bool((q[:, :, :k] == 0).all()),
        "qk_differing_share": float(((q_tail != q_ref_tail).sum() + (key != key_ref).sum())
                                    / (q_tail.numel() + key.numel())),
        "largest": largest,
        "ulp": float(torch.finfo(getattr(torch, case.dtype)).eps),
    }


def _self_check_refuses_a_wrong_path(folder: Path) -> dict:
    """The fused path with a norm weight twice what it should be: the self-check must say
    so (and name what differs)."""
    from longattn_spark.scorers.longattn import Layer0Scorer

    model = write_model(folder / "llama3-float32", "llama3", "float32")
    scorer = Layer0Scorer.from_pretrained(model, kernel="fused")
    healthy = scorer._fused_self_check()
    scorer._fused.norm_weight = scorer._fused.norm_weight * 2
    return {"healthy": healthy, "broken": scorer._fused_self_check()}


def _interpreter_worker(out_path: str, folder: str) -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    torch.set_num_threads(1)
    results = {}
    for case in CASES:
        try:
            results[case.name] = _run_case(case, Path(folder))
        except Exception as exc:  # noqa: BLE001 - reported by the case's test
            results[case.name] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        results["_self_check"] = _self_check_refuses_a_wrong_path(Path(folder))
    except Exception as exc:  # noqa: BLE001 - reported by the test
        results["_self_check"] = {"healthy": f"{type(exc).__name__}: {exc}", "broken": None}
    Path(out_path).write_text(json.dumps(results, indent=1))


@pytest.fixture(scope="module")
def interpreter_results(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("fused_interpreter")
    out = folder / "results.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    worker = subprocess.run([sys.executable, __file__, str(out), str(folder)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    if worker.returncode != 0:
        pytest.fail(f"interpreter worker failed:\n{worker.stderr[-6000:]}")
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fused_path_matches_todays_scores(case: FusedCase, interpreter_results: dict) -> None:
    result = interpreter_results[case.name]
    assert "error" not in result, result.get("error")
    assert result["kernel"] == "fused" and result["kernel_note"] == ""
    assert result["q_below_k_zero"]
    if case.dtype == "float32":
        assert result["reference_kernel"] == "torch"
        assert result["ds_rel"] <= FP32_TOLERANCE, result
        assert result["var_rel"] <= FP32_TOLERANCE, result
        # q/k: float32 rounding of the RMSNorm's sum order and the GEMM, nothing more
        limit = 16 * result["ulp"] * result["largest"]
        assert result["q_max_abs"] <= limit and result["k_max_abs"] <= limit, result
    else:
        assert result["reference_kernel"] == "triton"
        assert result["ds_rel"] <= FP16_SCORE_TOLERANCE, result
        assert result["var_rel"] <= FP16_SCORE_TOLERANCE, result
        # rounded as the torch path rounds: at most one last place, and rarely
        limit = 2 * result["ulp"] * result["largest"]
        assert result["q_max_abs"] <= limit and result["k_max_abs"] <= limit, result
        assert result["qk_differing_share"] <= 0.01, result


def test_self_check_refuses_wrong_numbers(interpreter_results: dict) -> None:
    check = interpreter_results["_self_check"]
    assert check["healthy"] is None
    assert check["broken"] and "self-check" in check["broken"] and "rotated q" in check["broken"]


def test_cpu_default_path_is_unchanged(tmp_path) -> None:
    """On the CPU ``auto`` is the torch path, with no note (the default CPU scores)."""
    from longattn_spark.scorers.longattn import Layer0Scorer

    model = write_model(tmp_path / "m", "llama3", "float32")
    scorer = Layer0Scorer.from_pretrained(model)
    assert (scorer.kernel, scorer.kernel_note, scorer._fused) == ("torch", "", None)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="checks the non-interpreter refusal")
def test_fused_on_cpu_is_refused_in_one_line(tmp_path) -> None:
    from longattn_spark.errors import InputError
    from longattn_spark.scorers.longattn import Layer0Scorer

    model = write_model(tmp_path / "m", "llama3", "float32")
    with pytest.raises(InputError, match="kernel 'fused' needs a CUDA device"):
        Layer0Scorer.from_pretrained(model, kernel="fused")


def test_fused_unavailable_reasons() -> None:
    from longattn_spark.scorers.longattn.fused import fused_unavailable_reason

    assert fused_unavailable_reason(128, 128, torch.bfloat16) is None
    assert "power of two" in fused_unavailable_reason(48, 48, torch.bfloat16)
    assert "partial rotary" in fused_unavailable_reason(64, 32, torch.float32)


def test_kernel_choice_reaches_the_cli() -> None:
    """--kernel is LongAttn's option (scorers/longattn/options.py): every kernel, fused
    included, is a value it takes, and anything else is one line naming the choices."""
    from longattn_spark.errors import ConfigError
    from longattn_spark.scorers import get_method
    from longattn_spark.scorers.longattn.kernels import KERNELS

    method = get_method("longattn")
    assert "fused" in KERNELS
    for kernel in KERNELS:
        assert method.options_from({"kernel": kernel}).kernel == kernel
    with pytest.raises(ConfigError, match="kernel"):
        method.options_from({"kernel": "cuda-magic"})


# ---- the compiled path, on the CPU: ahead-of-time for an H100 -------------------------

SM90_FUSED = {
    "8b": (4096, 32, 8, 128),    # hidden, query heads, KV heads, head dim
    "70b": (8192, 64, 8, 128),
    "smollm2": (576, 9, 3, 64),
}


def compile_for_sm90(kernel, args: dict, constexprs: dict, num_warps: int):
    """Compile a Triton kernel for sm_90 exactly as a launch with these arguments would be
    specialised (Triton's own argument specialisation), on a machine without a GPU."""
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import BaseBackend, GPUTarget
        from triton.compiler import ASTSource
        from triton.runtime.jit import native_specialize_impl
    except ImportError as exc:
        pytest.skip(f"this Triton has no ahead-of-time compile API: {exc}")
    signature, constants, attrs = {}, dict(constexprs), {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        kind, key = native_specialize_impl(BaseBackend, args[name], False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constants[name] = key
        elif key == "D":
            attrs[(index,)] = [["tt.divisibility", 16]]
    options = {"num_warps": num_warps, "num_stages": 1, "enable_fp_fusion": False}
    try:
        return triton.compile(ASTSource(kernel, signature, constants, attrs),
                              target=GPUTarget("cuda", 90, 32), options=options)
    except RuntimeError as exc:
        if "ptxas" in str(exc).lower() and "not found" in str(exc).lower():
            pytest.skip(f"no ptxas for sm_90: {exc}")
        raise


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles, not interprets")
@pytest.mark.parametrize("shape", list(SM90_FUSED), ids=list(SM90_FUSED))
def test_fused_kernels_compile_for_h100_without_spills(shape: str) -> None:
    """The kernels the interpreter cannot judge for registers: built for sm_90 as a bfloat16
    launch of the model shape would build them, with no value spilled to local memory."""
    from test_triton_sums import local_memory_bytes

    from longattn_spark.scorers.longattn import fused

    hidden, heads, kv_heads, head_dim = SM90_FUSED[shape]
    rows, seq_len, bf16 = 4096, 32768, torch.bfloat16
    table = torch.empty(1024, hidden, dtype=bf16)
    out = torch.empty(rows, hidden, dtype=bf16)
    norm = compile_for_sm90(fused._rms_norm_kernel, {
        "X": table, "IDS": torch.empty(rows, dtype=torch.long), "W": torch.empty(hidden,
                                                                               dtype=bf16),
        "OUT": out, "stride_x": hidden, "stride_out": hidden, "n_cols": hidden, "eps": 1e-5},
        {"GATHER": True, "BLOCK": 1 << (hidden - 1).bit_length(), "OUT_16BIT": True},
        fused._norm_warps(hidden))
    width = (heads + kv_heads) * head_dim
    q = torch.empty(heads, seq_len, head_dim, dtype=bf16)
    k = torch.empty(kv_heads, seq_len, head_dim, dtype=bf16)
    cos = torch.empty(seq_len, head_dim, dtype=bf16)
    rope = compile_for_sm90(fused._rope_kernel, {
        "X": torch.empty(rows, width, dtype=bf16), "COS": cos, "SIN": cos, "Q": q, "K": k,
        "stride_xr": width, "stride_cos": head_dim, "stride_qh": seq_len * head_dim,
        "stride_qn": head_dim, "stride_kh": seq_len * head_dim, "stride_kn": head_dim,
        "n_rows": rows, "pos0": 16384, "q_from": 8192, "n_q_heads": heads},
        {"HEAD_DIM": head_dim, "BLOCK_P": fused._BLOCK_POSITIONS, "ROUND": True},
        fused._ROPE_WARPS)
    for kernel in (norm, rope):
        assert local_memory_bytes(kernel.asm["cubin"]) == 0
        assert kernel.metadata.shared <= 227 * 1024


# ---- GPU (bfloat16) -------------------------------------------------------------------

GPU_SHAPES = [
    ("llama3", 4097, 2),   # GQA 3, odd L, batch 2
    ("qwen2", 2048, 1),    # q/k biases
]


@pytest.mark.gpu
@pytest.mark.parametrize("kind,seq_len,batch", GPU_SHAPES,
                         ids=[f"{k}-L{n}-b{b}" for k, n, b in GPU_SHAPES])
def test_gpu_fused_bf16_matches_todays_triton_path(tmp_path, kind, seq_len, batch) -> None:
    """bfloat16 on CUDA: the fused path's scores equal today's (torch projections + the
    Triton sums kernel) within 1e-3 relative, and ``auto`` chooses the fused path."""
    from longattn_spark.scorers.longattn import Layer0Scorer

    model = write_model(tmp_path / kind, kind, "bfloat16")
    auto = Layer0Scorer.from_pretrained(model, device="cuda", dtype="bfloat16")
    assert (auto.kernel, auto.kernel_note) == ("fused", "")
    today = Layer0Scorer.from_pretrained(model, device="cuda", dtype="bfloat16",
                                         kernel="triton")
    ids = torch.randint(0, VOCAB, (batch, seq_len), generator=torch.Generator().manual_seed(3))
    ids[:, 0] = 1
    got, want = auto.score(ids.cuda()), today.score(ids)
    assert auto.kernel == "fused"
    np.testing.assert_allclose(got.ds_heads, want.ds_heads, rtol=1e-3)
    np.testing.assert_allclose(got.var_heads, want.var_heads, rtol=1e-3)


@pytest.mark.gpu
def test_gpu_fallback_from_fused_is_loud(tmp_path) -> None:
    """A head dim the kernels have no tiles for: ``auto`` says the fused path was not used
    (a note the score job counts and prints) and still scores, with the torch kernel."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from longattn_spark.scorers.longattn import Layer0Scorer

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=96, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=48, num_hidden_layers=1,
                         intermediate_size=64, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "d48")
    scorer = Layer0Scorer.from_pretrained(tmp_path / "d48", device="cuda", dtype="bfloat16")
    assert scorer.kernel == "triton" and "fused path not used" in scorer.kernel_note
    out = scorer.score(torch.randint(0, VOCAB, (1, 256)))
    assert scorer.kernel == "torch" and "torch kernel used" in scorer.kernel_note
    assert np.isfinite(out.ds).all()


if __name__ == "__main__":
    _interpreter_worker(sys.argv[1], sys.argv[2])
