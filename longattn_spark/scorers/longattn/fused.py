"""The fused GPU path to the scored layer's rotated queries and keys (kernel ``fused``).

What the torch path (``Layer0Scorer.rotated_query_key``) does in separate ops over the whole
window (embedding gather, ``.to(dtype)``, RMSNorm with its float32 temporaries, two
projections, a head transpose and transformers' ``apply_rotary_pos_emb``: about ten passes
over ``[L, hidden]`` and ``[L, H, d]`` tensors), this module does in three steps per chunk of
positions, in the compute dtype (bfloat16 on GPUs) with float32 arithmetic inside the
kernels and never a float32 tensor in memory:

1. ``_rms_norm_kernel`` (Triton): one row per program: the embedding row gathered by token
   id (layer 0) or the hidden state from the layers below, RMSNorm in float32 registers, the
   norm weight, stored once in the compute dtype.
2. One GEMM for queries and keys together (cuBLAS, ``torch.mm``/``addmm`` into one buffer):
   the weights are ``q_proj`` and ``k_proj`` concatenated, so the GQA-shaped keys are
   projected once per KV head. Query rows ``n < min_distance`` are never read by the sums
   (``triton_sums``: no key of theirs is in R), so positions below k get a key-only GEMM:
   at k = L/4 that skips a quarter of the query projection.
3. ``_rope_kernel`` (Triton): one read of the GEMM output and one write of the rotated
   ``q [B, Hq, L, D]`` and ``k [B, Hkv, L, D]`` (the layout the sums kernel was tuned for),
   with the model's own cos/sin tables (transformers' rotary class: ``llama3``, ``linear``,
   ``yarn`` ... scaling and its attention factor included).

Rounding is the torch path's: RMSNorm rounds ``x * rstd`` to the compute dtype before the
weight multiply, and RoPE rounds ``q * cos`` and ``rotate_half(q) * sin`` each to the compute
dtype before adding them, as transformers' modules do in bfloat16; in float32 no
multiply-add is fused (``enable_fp_fusion=False``), so RoPE gives the torch path's float32
values bit for bit. Differences left: the order of the RMSNorm's sum of squares, and cuBLAS's
choice of GEMM kernel for the concatenated shape (within float32 / bfloat16 rounding).

Why RoPE is a pass of its own and not rotated inside the sums kernel's tile loads: every
program of the sums kernel walks the key tiles of its whole causal prefix, so a key tile
rotated at load would be rotated again by each of the L / BLOCK_M row blocks that read it
(256 times at L = 32768), with its partner half and cos/sin tiles loaded beside it, in the
CUDA-core work that already bounds that kernel (the exponentials and the row statistics).
The pass here reads and writes each q/k element once: about 0.67 GB for the 8B shape at
L = 32768, a fraction of a millisecond of memory traffic. (Measured figures: none yet; see
benchmarks/gpu_acceptance.py.)

Importing this module never touches a GPU. With ``TRITON_INTERPRET=1`` set before triton is
imported, the kernels run on CPU tensors (tests/test_fused_layer0.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from longattn_spark.scorers.longattn.triton_sums import (
    _let_interpreter_run_on_numpy_2_4,
    triton,
)

if triton is not None:
    import triton.language as tl
else:  # pragma: no cover - triton is a dependency of torch on Linux
    tl = None

_CHUNK_ELEMENTS_CUDA = 1 << 27
"""Elements of (normed hidden + projected q/k) per chunk of positions on CUDA (256 MiB in
bfloat16): large enough for cuBLAS to run the GEMM at full rate (about 14,500 positions of
the 8B shape per chunk), small enough that the temporaries stay well below q and k."""
_CHUNK_ELEMENTS_CPU = 1 << 22
_BLOCK_POSITIONS = 32
"""Positions per program of the RoPE pass (x, its partner half, cos and sin tiles of
BLOCK_POSITIONS x D stay in registers: compiled for sm_90 without spills, see
tests/test_fused_layer0.py)."""
_ROPE_WARPS = 4


def _norm_warps(hidden_size: int) -> int:
    """Warps of the RMSNorm kernel: one row of up to 8192 float32 values in registers."""
    return 4 if hidden_size <= 2048 else 8


def fused_unavailable_reason(head_dim: int, rope_width: int, dtype: torch.dtype) -> str | None:
    """Why the fused path cannot run for these shapes (None: it can). The sums kernel needs a
    power-of-two head dim in [16, 256]; the RoPE pass rotates every component of a head, so
    partial rotary embeddings (cos/sin narrower than the head) are refused."""
    if triton is None:
        return "triton is not installed"
    if head_dim < 16 or head_dim & (head_dim - 1) or head_dim > 256:
        return f"head dim {head_dim} is not a power of two in [16, 256]"
    if rope_width != head_dim:
        return f"RoPE rotates {rope_width} of {head_dim} head components (partial rotary)"
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"dtype {dtype} is not float32, bfloat16 or float16"
    return None


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(X, IDS, W, OUT, stride_x, stride_out, n_cols, eps,
                         GATHER: tl.constexpr, BLOCK: tl.constexpr, OUT_16BIT: tl.constexpr):
        """OUT[row] = W * round(x * rsqrt(mean(x²) + eps)), x = X[IDS[row]] (GATHER) or
        X[row], rounded to OUT's dtype first (as ``F.embedding(...).to(dtype)``), float32
        math; the torch path's RMSNorm rounds ``x * rstd`` to the input dtype before the
        weight multiply, and so does this kernel."""
        row = tl.program_id(0).to(tl.int64)
        if GATHER:
            source = tl.load(IDS + row).to(tl.int64)
        else:
            source = row
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(X + source * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if OUT_16BIT:
            x = x.to(OUT.dtype.element_ty, fp_downcast_rounding="rtne").to(tl.float32)
        variance = tl.sum(x * x, 0) / n_cols
        y = x * tl.math.rsqrt(variance + eps)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if OUT_16BIT:
            y = y.to(OUT.dtype.element_ty, fp_downcast_rounding="rtne").to(tl.float32)
            out = (w * y).to(OUT.dtype.element_ty, fp_downcast_rounding="rtne")
        else:
            out = w * y
        tl.store(OUT + row * stride_out + cols, out, mask=mask)

    @triton.jit
    def _rope_kernel(X, COS, SIN, Q, K, stride_xr, stride_cos, stride_qh, stride_qn,
                     stride_kh, stride_kn, n_rows, pos0, q_from, n_q_heads,
                     HEAD_DIM: tl.constexpr, BLOCK_P: tl.constexpr, ROUND: tl.constexpr):
        """Rows [pid * BLOCK_P, +BLOCK_P) of head ``program_id(1)`` of the projected buffer X
        ([rows, (Hq + Hkv) * D], queries first), rotated as transformers'
        ``q * cos + rotate_half(q) * sin`` and stored into Q (query heads, positions
        >= q_from only) or K (key heads). Position of row r: pos0 + r."""
        head = tl.program_id(1)
        rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        pos = (pos0 + rows).to(tl.int64)
        first = q_from * (head < n_q_heads).to(tl.int64)  # key heads: every position
        ok = (rows < n_rows) & (pos >= first)
        d = tl.arange(0, HEAD_DIM)
        half = HEAD_DIM // 2
        partner = (d + half) % HEAD_DIM
        base = X + rows[:, None].to(tl.int64) * stride_xr + head * HEAD_DIM
        x = tl.load(base + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        xp = tl.load(base + partner[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        cos = tl.load(COS + pos[:, None] * stride_cos + d[None, :], mask=ok[:, None],
                      other=0.0).to(tl.float32)
        sin = tl.load(SIN + pos[:, None] * stride_cos + d[None, :], mask=ok[:, None],
                      other=0.0).to(tl.float32)
        t1 = x * cos
        t2 = xp * sin
        if ROUND:
            t1 = t1.to(Q.dtype.element_ty, fp_downcast_rounding="rtne").to(tl.float32)
            t2 = t2.to(Q.dtype.element_ty, fp_downcast_rounding="rtne").to(tl.float32)
        # rotate_half(q) = cat(-q[D/2:], q[:D/2]): the partner enters with - in the first half
        out = tl.where(d[None, :] < half, t1 - t2, t1 + t2)
        if ROUND:
            out = out.to(Q.dtype.element_ty, fp_downcast_rounding="rtne")
        if head < n_q_heads:
            ptrs = Q + head * stride_qh + pos[:, None] * stride_qn + d[None, :]
        else:
            ptrs = K + (head - n_q_heads) * stride_kh + pos[:, None] * stride_kn + d[None, :]
        tl.store(ptrs, out, mask=ok[:, None])


@dataclass
class FusedProjection:
    """The scored layer's input norm and q/k projections as the fused path holds them.

    ``qk_weight``: ``[(Hq + Hkv) * D, hidden]``, q_proj's rows then k_proj's (one tensor:
    the scorer's q/k weights are views of it, nothing is stored twice); ``qk_bias`` likewise
    or None. ``norm_weight``: the input RMSNorm's weight, all in the compute dtype.
    """

    norm_weight: torch.Tensor
    eps: float
    qk_weight: torch.Tensor
    qk_bias: torch.Tensor | None
    n_q_heads: int
    n_kv_heads: int
    head_dim: int

    def query_key(self, cos: torch.Tensor, sin: torch.Tensor, min_distance: int, *,
                  ids: torch.Tensor | None = None, embed: torch.Tensor | None = None,
                  hidden: torch.Tensor | None = None, chunk_rows: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated ``q [B, Hq, L, D]`` (rows ``n < min_distance`` zero: the sums never read
        them) and ``k [B, Hkv, L, D]`` in the compute dtype, from token ``ids [B, L]`` and
        the ``embed`` table (layer 0) or from the layers below's ``hidden [B, L, hidden]``.
        ``cos``/``sin``: ``[L, D]`` (or ``[1, L, D]``) in the compute dtype."""
        if (ids is None) == (hidden is None):
            raise ValueError("give either ids (with embed) or hidden")
        source = ids if ids is not None else hidden
        batch, seq_len = int(source.shape[0]), int(source.shape[1])
        dtype, device = self.qk_weight.dtype, self.qk_weight.device
        d, hq, hkv = self.head_dim, self.n_q_heads, self.n_kv_heads
        width = (hq + hkv) * d
        hidden_size = int(self.qk_weight.shape[1])
        cos, sin = cos.reshape(-1, cos.shape[-1]), sin.reshape(-1, sin.shape[-1])
        if cos.shape != (seq_len, d) or sin.shape != (seq_len, d):
            raise ValueError(f"cos/sin must be [{seq_len}, {d}], got {tuple(cos.shape)}")
        cos, sin = cos.contiguous(), sin.contiguous()
        q_from = max(0, min(int(min_distance), seq_len))
        q = torch.empty(batch, hq, seq_len, d, dtype=dtype, device=device)
        k = torch.empty(batch, hkv, seq_len, d, dtype=dtype, device=device)
        if chunk_rows is None:
            budget = _CHUNK_ELEMENTS_CUDA if device.type == "cuda" else _CHUNK_ELEMENTS_CPU
            chunk_rows = max(_BLOCK_POSITIONS, budget // (hidden_size + width)
                             // _BLOCK_POSITIONS * _BLOCK_POSITIONS)
        on_cuda = device.type == "cuda"
        if not on_cuda:
            _let_interpreter_run_on_numpy_2_4()
        k_weight = self.qk_weight[hq * d:]
        k_bias = None if self.qk_bias is None else self.qk_bias[hq * d:]
        norm_warps = _norm_warps(hidden_size)
        block_cols = triton.next_power_of_2(hidden_size)
        sixteen_bit = dtype != torch.float32
        with torch.cuda.device(device) if on_cuda else contextlib.nullcontext():
            for b in range(batch):
                for c0 in range(0, seq_len, chunk_rows):
                    c1 = min(c0 + chunk_rows, seq_len)
                    n = c1 - c0
                    normed = torch.empty(n, hidden_size, dtype=dtype, device=device)
                    if ids is not None:
                        rows_in = ids[b, c0:c1].contiguous()
                        table = embed
                    else:
                        rows_in = hidden[b, c0:c1]
                        if rows_in.stride(-1) != 1:
                            rows_in = rows_in.contiguous()
                        table = rows_in
                    if table.stride(-1) != 1:
                        raise ValueError("the embedding / hidden rows must be contiguous")
                    _rms_norm_kernel[(n,)](
                        table, rows_in, self.norm_weight, normed, table.stride(0),
                        normed.stride(0), hidden_size, float(self.eps),
                        GATHER=ids is not None, BLOCK=block_cols, OUT_16BIT=sixteen_bit,
                        num_warps=norm_warps)
                    projected = torch.empty(n, width, dtype=dtype, device=device)
                    split = min(max(q_from - c0, 0), n)  # rows [0, split) need keys only
                    if split < n:
                        _linear_into(normed[split:], self.qk_weight, self.qk_bias,
                                     projected[split:])
                    if split > 0:
                        _linear_into(normed[:split], k_weight, k_bias,
                                     projected[:split, hq * d:])
                    del normed
                    grid = (triton.cdiv(n, _BLOCK_POSITIONS), hq + hkv)
                    _rope_kernel[grid](
                        projected, cos, sin, q[b], k[b], projected.stride(0), cos.stride(0),
                        q.stride(1), q.stride(2), k.stride(1), k.stride(2), n, c0, q_from, hq,
                        HEAD_DIM=d, BLOCK_P=_BLOCK_POSITIONS, ROUND=sixteen_bit,
                        num_warps=_ROPE_WARPS, enable_fp_fusion=False)
                    del projected
        if q_from:
            q[:, :, :q_from].zero_()
        return q, k


def _linear_into(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 out: torch.Tensor) -> None:
    """out = x @ weightᵀ (+ bias), written in place (``out`` may be a column slice)."""
    if bias is None:
        torch.mm(x, weight.t(), out=out)
    else:
        torch.addmm(bias, x, weight.t(), out=out)
