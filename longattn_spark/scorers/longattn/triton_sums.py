"""Fused Triton kernel for LongAttn's per-head attention sums, never writing P to memory.

For one (batch, query head) the scorer needs two numbers over the tail region
R = {(n, j) : j <= n - min_distance} of the causal softmax matrix P (DESIGN.md):

    sum_p  = sum over R of P[n, j]
    sum_p2 = sum over R of P[n, j] ** 2

P[n, j] = exp(s[n, j] - M_n) / Z_n needs the row's final max M_n and normaliser Z_n, which a
single pass over the key tiles only knows at the end. The kernel therefore keeps, per query
row and in the online-softmax frame of the running max m,

    l = sum over j <= n        of exp(s - m)
    a = sum over j in R(n)     of exp(s - m)
    b = sum over j in R(n)     of exp(2 (s - m))

and rescales a by exp(m_old - m_new) and b by its square whenever the max grows. At the end
the row contributes a / l to sum_p and b / l**2 to sum_p2. One pass, one exp per causal
entry (the square is a multiply), no L x L tensor.

Work layout, per program: one block of BLOCK_M query positions for every query head of one
KV group. The group's heads are stacked along the tile's M dimension (GROUP * BLOCK_M rows,
GROUP = n_rep rounded up to a power of two), so each key tile is loaded once for all the
query heads that share it (grouped-query attention). Key tiles are walked in four ranges,
so only the few tiles that straddle the tail boundary or the diagonal pay for masks:

    [0, full_hi)        wholly inside R for every row   -> l, a, b; no mask
    [full_hi, r_hi)     straddles j = n - min_distance  -> l, a, b; tail and causal masks
    [r_hi, causal_lo)   wholly outside R, below diagonal -> l; no mask
    [causal_lo, end)    straddles the diagonal          -> l; causal mask

Tiles outside R add nothing to a and b, but a and b still take the exp(m_old - m_new)
rescale there: they live in the frame of the running max, which any later tile may raise.

Tiles above the diagonal are never visited, and neither are the row blocks whose rows are
all n < min_distance (no key of theirs is in R, so they would add exactly 0: at k = L/4 that
is 1/16 of the causal cells); query rows n < min_distance are never read, so a caller may
leave them unset. Per-row results are reduced to per-(block, head) partials in a
[num_blocks, B, Hq] float32 buffer (num_blocks counts the visited blocks only) that torch
sums in float64: deterministic, no atomics.

Importing this module never touches a GPU; :func:`triton_available` says whether the
kernel can run. With ``TRITON_INTERPRET=1`` set before triton is imported, the kernel runs
on CPU tensors through Triton's interpreter (used by the CI tests).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def triton_available() -> bool:
    """True when Triton is installed and can launch the kernel on this machine's CUDA GPU.

    The scorer calls this to choose between the kernel and the blockwise torch path; it is
    False on a machine without CUDA (the torch path is used there). Never raises.
    """
    if triton is None or not torch.cuda.is_available():
        return False
    try:
        triton.runtime.driver.active.get_current_target()
    except Exception:  # noqa: BLE001 - a driver that cannot start fails in many ways
        return False
    return True


@functools.cache
def _let_interpreter_run_on_numpy_2_4() -> None:
    """Make Triton's CPU interpreter work with NumPy >= 2.4.

    Triton 3.6's interpreter turns loop bounds into Python ints with ``int(array)`` on
    one-element arrays, which NumPy 2.4 refuses (triton-lang/triton#9171, fixed upstream after
    3.6), so every kernel with a runtime loop bound fails under ``TRITON_INTERPRET=1``. When
    this NumPy refuses that form, apply the upstream fix: ``int(array.squeeze())``. Only
    called on the interpreter path; compiled launches never touch the interpreter.
    """
    import numpy as np
    from triton.runtime import interpreter

    try:
        int(np.zeros(1))
        return
    except TypeError:
        pass
    patch_lang_tensor = interpreter._patch_lang_tensor

    def patch_with_squeeze(tensor, scope):
        patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_with_squeeze


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options. The stacked tile has next_pow2(n_rep) * block_m rows."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_config(head_dim: int, n_rep: int, dtype: torch.dtype) -> KernelConfig:
    """The configuration used when the caller gives none.

    16-bit inputs: 128 stacked rows x 64 keys, 8 warps, 3 stages: each key tile is reused
    by 128 query rows, the float32 score tile stays in registers and the Q tile plus three
    key tiles fit in shared memory, for head dims up to 128. Float32 inputs multiply on
    CUDA cores (IEEE, not TF32), which needs the smallest tiles: with Triton 3.9's ptxas
    (sm_90) these spill least (0 bytes for a group of 1, 152-296 bytes a thread for groups
    of 4-8; tests/test_triton_sums.py compiles them). ``benchmarks/scorer_gpu.py --sweep``
    times the alternatives on a real GPU.
    """
    group = 1 << (n_rep - 1).bit_length()
    if dtype == torch.float32:
        block_m = max(16, 64 // group)
        return KernelConfig(block_m, max(16, 1024 // (group * block_m)), 8, 2)
    return KernelConfig(max(16, 128 // group), 64, 8, 3)


@dataclass
class KernelLaunch:
    """Everything one launch of ``_tail_sums_kernel`` needs, and the buffers it writes."""

    grid: tuple[int, int]
    args: dict[str, object]
    constexprs: dict[str, object]
    config: KernelConfig
    part_p: torch.Tensor
    part_p2: torch.Tensor


if triton is not None:

    @triton.jit
    def _walk_key_tiles(
        q, k_base, stride_kn, stride_kd,
        m_i, l_i, a_i, b_i,
        pos, tail_end, lo, hi, seq_len, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
        TAIL: tl.constexpr, MASKED: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        DOT_FP32: tl.constexpr,
    ):
        """Fold key tiles [lo, hi) into the running row statistics.

        pos: each row's query position n; tail_end: n - min_distance, its last key in R.
        TAIL: 0 = tiles outside R (no new a, b terms, but a and b are still rescaled when
        the running max grows), 1 = tiles wholly inside R, 2 = tiles straddling the tail
        boundary (a, b terms masked by j <= tail_end).
        MASKED: apply the causal mask j <= n and the ragged-end load mask j < seq_len.
        DOT_FP32: q is already float32; upcast each key tile to match.
        """
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        kt_ptrs = k_base + (lo + offs_n)[None, :] * stride_kn + offs_d[:, None] * stride_kd
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n
            if MASKED:
                kt = tl.load(kt_ptrs, mask=cols[None, :] < seq_len, other=0.0)
            else:
                kt = tl.load(kt_ptrs)
            if DOT_FP32:
                kt = kt.to(tl.float32)
            s = tl.dot(q, kt, input_precision=INPUT_PRECISION)
            if MASKED:
                s = tl.where(cols[None, :] <= pos[:, None], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            row_sum = tl.sum(p, 1)
            l_i = l_i * alpha + row_sum
            if TAIL == 0:
                a_i = a_i * alpha
                b_i = b_i * (alpha * alpha)
            elif TAIL == 1:
                a_i = a_i * alpha + row_sum
                b_i = b_i * (alpha * alpha) + tl.sum(p * p, 1)
            else:
                p_tail = tl.where(cols[None, :] <= tail_end[:, None], p, 0.0)
                a_i = a_i * alpha + tl.sum(p_tail, 1)
                b_i = b_i * (alpha * alpha) + tl.sum(p_tail * p_tail, 1)
            m_i = m_new
            kt_ptrs += BLOCK_N * stride_kn
        return m_i, l_i, a_i, b_i

    @triton.jit
    def _tail_sums_kernel(
        Q, K, PartP, PartP2,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        batch, num_kv_heads, n_rep, seq_len, min_distance, qk_scale,
        HEAD_DIM: tl.constexpr, GROUP: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        DOT_FP32: tl.constexpr,
    ):
        """One program: query rows [m0, m0 + BLOCK_M) of the n_rep query heads of one KV head.

        Row r of the stacked tile is query head (r // BLOCK_M) of the group at position
        m0 + r % BLOCK_M. Writes PartP/PartP2[block, b, h] for the group's heads.
        DOT_FP32 upcasts the operands and multiplies in IEEE float32: the same products as a
        16-bit dot with float32 accumulation, for the CPU interpreter, which has no
        bfloat16 dot.
        """
        # Longest causal rows start first. The grid holds only the blocks with a row at or
        # past min_distance: rows n < min_distance have no key in R and add exactly 0.
        block = tl.cdiv(seq_len, BLOCK_M) - 1 - tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // num_kv_heads
        kv_head = pid_bh % num_kv_heads
        m0 = block * BLOCK_M

        rows = tl.arange(0, GROUP * BLOCK_M)
        group_head = rows // BLOCK_M
        pos = m0 + rows % BLOCK_M
        tail_end = pos - min_distance
        row_valid = (group_head < n_rep) & (pos < seq_len) & (pos >= min_distance)
        q_head = (kv_head * n_rep + group_head).to(tl.int64)
        offs_d = tl.arange(0, HEAD_DIM)
        q_ptrs = (Q + b.to(tl.int64) * stride_qb + q_head[:, None] * stride_qh
                  + pos[:, None].to(tl.int64) * stride_qn + offs_d[None, :] * stride_qd)
        q = tl.load(q_ptrs, mask=row_valid[:, None], other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
        k_base = K + b.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh

        m_i = tl.full([GROUP * BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([GROUP * BLOCK_M], tl.float32)
        a_i = tl.zeros([GROUP * BLOCK_M], tl.float32)
        b_i = tl.zeros([GROUP * BLOCK_M], tl.float32)

        # Key-range boundaries (see the module docstring); all start on multiples of BLOCK_N.
        end = tl.minimum(m0 + BLOCK_M, seq_len)
        full_hi = (tl.maximum(m0 - min_distance + 1, 0) // BLOCK_N) * BLOCK_N
        r_hi = tl.cdiv(tl.maximum(m0 + BLOCK_M - min_distance, 0), BLOCK_N) * BLOCK_N
        r_hi = tl.minimum(r_hi, end)
        causal_lo = tl.maximum(((m0 + 1) // BLOCK_N) * BLOCK_N, r_hi)

        m_i, l_i, a_i, b_i = _walk_key_tiles(
            q, k_base, stride_kn, stride_kd, m_i, l_i, a_i, b_i,
            pos, tail_end, 0, full_hi, seq_len, qk_scale,
            HEAD_DIM, BLOCK_N, 1, False, INPUT_PRECISION, DOT_FP32)
        m_i, l_i, a_i, b_i = _walk_key_tiles(
            q, k_base, stride_kn, stride_kd, m_i, l_i, a_i, b_i,
            pos, tail_end, full_hi, r_hi, seq_len, qk_scale,
            HEAD_DIM, BLOCK_N, 2, True, INPUT_PRECISION, DOT_FP32)
        m_i, l_i, a_i, b_i = _walk_key_tiles(
            q, k_base, stride_kn, stride_kd, m_i, l_i, a_i, b_i,
            pos, tail_end, r_hi, causal_lo, seq_len, qk_scale,
            HEAD_DIM, BLOCK_N, 0, False, INPUT_PRECISION, DOT_FP32)
        m_i, l_i, a_i, b_i = _walk_key_tiles(
            q, k_base, stride_kn, stride_kd, m_i, l_i, a_i, b_i,
            pos, tail_end, causal_lo, end, seq_len, qk_scale,
            HEAD_DIM, BLOCK_N, 0, True, INPUT_PRECISION, DOT_FP32)

        inv_l = 1.0 / l_i
        row_p = tl.where(row_valid, a_i * inv_l, 0.0)
        row_p2 = tl.where(row_valid, b_i * (inv_l * inv_l), 0.0)
        head_p = tl.sum(tl.reshape(row_p, (GROUP, BLOCK_M)), 1)
        head_p2 = tl.sum(tl.reshape(row_p2, (GROUP, BLOCK_M)), 1)

        heads = tl.arange(0, GROUP)
        num_heads = num_kv_heads * n_rep
        out = (tl.program_id(0) * batch + b).to(tl.int64) * num_heads + kv_head * n_rep + heads
        tl.store(PartP + out, head_p, mask=heads < n_rep)
        tl.store(PartP2 + out, head_p2, mask=heads < n_rep)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, min_distance: int) -> None:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [B, H, L, D]; got {tuple(q.shape)} and {tuple(k.shape)}")
    bq, hq, lq, dq = q.shape
    bk, hk, lk, dk = k.shape
    if (bq, lq, dq) != (bk, lk, dk):
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch, length "
                         "or head dim")
    if hq % hk != 0:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hk})")
    if q.dtype != k.dtype or q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"q and k must share one dtype of {_SUPPORTED_DTYPES}; "
                         f"got {q.dtype}, {k.dtype}")
    if dq < 16 or dq & (dq - 1) or dq > 256:
        raise ValueError(f"head dim must be a power of two in [16, 256]; got {dq}")
    if min_distance < 0:
        raise ValueError(f"min_distance must be >= 0; got {min_distance}")
    if q.device != k.device:
        raise ValueError(f"q and k are on different devices ({q.device}, {k.device})")
    if q.device.type != "cuda" and not _interpreting():
        raise RuntimeError("the Triton kernel needs CUDA tensors "
                           "(or TRITON_INTERPRET=1 for CPU tensors)")


def plan_launch(
    q: torch.Tensor,
    k: torch.Tensor,
    min_distance: int,
    *,
    scale: float | None = None,
    config: KernelConfig | None = None,
    interpreter: bool = False,
) -> KernelLaunch:
    """Grid, arguments and output buffers for one launch, without launching.

    ``interpreter``: the launch is for Triton's CPU interpreter, which has no bfloat16 dot
    (its docs say to upcast to float32), so bfloat16 operands are multiplied as float32:
    the same products, which bfloat16 x bfloat16 -> float32 computes exactly.
    """
    batch, num_heads, seq_len, head_dim = q.shape
    num_kv_heads = k.shape[1]
    n_rep = num_heads // num_kv_heads
    config = config or default_config(head_dim, n_rep, q.dtype)
    for name in ("block_m", "block_n"):
        value = getattr(config, name)
        if value < 16 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= 16; got {value}")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"scale must be > 0 (the row max is taken before scaling); got {scale}")
    dot_fp32 = interpreter and q.dtype == torch.bfloat16
    # Only the row blocks holding a query n >= min_distance (the rest add exactly 0).
    num_blocks = max(1, -(-seq_len // config.block_m) - min(min_distance, seq_len)
                     // config.block_m)
    part_p = torch.empty(num_blocks, batch, num_heads, dtype=torch.float32, device=q.device)
    part_p2 = torch.empty_like(part_p)
    stride_names = ("stride_{}b", "stride_{}h", "stride_{}n", "stride_{}d")
    args: dict[str, object] = {"Q": q, "K": k, "PartP": part_p, "PartP2": part_p2}
    args |= {name.format("q"): stride for name, stride in zip(stride_names, q.stride())}
    args |= {name.format("k"): stride for name, stride in zip(stride_names, k.stride())}
    args |= {"batch": batch, "num_kv_heads": num_kv_heads, "n_rep": n_rep, "seq_len": seq_len,
             "min_distance": min_distance, "qk_scale": scale * _LOG2E}
    constexprs = {
        "HEAD_DIM": head_dim, "GROUP": 1 << (n_rep - 1).bit_length(),
        "BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
        "INPUT_PRECISION": "ieee" if q.dtype == torch.float32 or dot_fp32 else "tf32",
        "DOT_FP32": dot_fp32,
    }
    return KernelLaunch((num_blocks, batch * num_kv_heads), args, constexprs, config,
                        part_p, part_p2)


def tail_attention_sums_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    min_distance: int,
    *,
    scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (batch, query head) Σ_R P and Σ_R P² of the causal softmax, as float64 [B, Hq].

    q: [B, Hq, L, D] and k: [B, Hkv, L, D] after RoPE, one of float32 / bfloat16 / float16,
    any strides. Query head h reads key head h // (Hq // Hkv) (transformers' repeat_kv
    order). P = softmax(q·kᵀ·scale) over j <= n; R = {(n, j) : j <= n - min_distance};
    scale defaults to 1/sqrt(D). Scores are accumulated in float32 (float32 inputs use
    exact IEEE products, not TF32). Unset block sizes and launch options come from
    :func:`default_config`; block_m and block_n must be powers of two >= 16.
    """
    if triton is None:
        raise RuntimeError("triton is not installed; "
                           "use scoring.attention_sums.tail_attention_sums")
    _check_inputs(q, k, min_distance)
    batch, num_heads, seq_len, head_dim = q.shape
    if min_distance >= seq_len:
        zeros = torch.zeros(batch, num_heads, dtype=torch.float64, device=q.device)
        return zeros, zeros.clone()
    default = default_config(head_dim, num_heads // k.shape[1], q.dtype)
    config = KernelConfig(block_m or default.block_m, block_n or default.block_n,
                          num_warps or default.num_warps, num_stages or default.num_stages)
    on_cuda = q.device.type == "cuda"
    if not on_cuda:
        _let_interpreter_run_on_numpy_2_4()
    launch = plan_launch(q, k, min_distance, scale=scale, config=config, interpreter=not on_cuda)
    with torch.cuda.device(q.device) if on_cuda else contextlib.nullcontext():
        _tail_sums_kernel[launch.grid](**launch.args, **launch.constexprs,
                                       num_warps=config.num_warps, num_stages=config.num_stages)
    return (launch.part_p.sum(0, dtype=torch.float64),
            launch.part_p2.sum(0, dtype=torch.float64))
