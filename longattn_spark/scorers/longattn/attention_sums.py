"""Per-head sums of layer-0 attention over the tail region, without an L×L matrix.

This module is the contract shared with the Triton kernel
(``longattn_spark.scorers.longattn.triton_sums.tail_attention_sums_triton``): both return, for every
query head, the sum of ``P[n, j]`` and of ``P[n, j]²`` over the region
``R = {(n, j) : j <= n - k}`` (0-based), where ``P`` is the row-wise causal softmax of
``q·kᵀ·scale``. ``ds_and_variance`` turns those two sums into the paper's per-head dependency
strength and variance (DESIGN.md, "The method, exactly").

How the torch version works: the query rows are cut into blocks of ``block_size``. A block
of rows ``[r0, r1)`` only needs keys ``0 .. r1-1``; rows ``n < k`` have no part of ``R`` and
are never computed. Those keys are walked in column tiles (on the CPU sized to stay in
cache; on CUDA one tile), keeping per row, in float32, a running max ``m`` and
``Z = Σ_{j<=n} e``, ``Σ_R e``, ``Σ_R e²`` with ``e = exp(s - m)``, rescaled when ``m`` grows
(online softmax). Within a block, the columns ``j <= r0 - k`` are in ``R`` for every row,
the next ``block`` columns are a strictly lower triangular band of ``R``, and the columns
past ``r0`` hold the causal diagonal, so only those two narrow bands need masks. The
per-row ratios ``Σ_R e / Z`` and ``Σ_R e² / Z²`` are added up in float64. Extra memory is
``O(heads of a kv group × block × tile)`` on the CPU and ``O(heads × block × L)`` on CUDA.
"""

from __future__ import annotations

import math

import torch

MATH_VERSION = 1
"""Version of the score definition (region, normalisation, variance formula). Bump it when
the numbers this package produces for the same inputs change on purpose; it is part of
every ``scorer_id``."""

DEFAULT_BLOCK_SIZE = 256

_CUDA_WORKSPACE_ELEMENTS = 1 << 28
"""Float32 logits held at once by the torch path on CUDA (1 GiB): batch entries × kv heads
are processed together up to this size, each row block in a single column tile."""

_CPU_TILE_ELEMENTS = 1 << 20
"""Float32 logits per column tile on the CPU (4 MiB): one kv head's group of query heads ×
block rows × tile columns. Small enough that the exp and the reductions after the matmul
read the tile from cache instead of memory (measured: benchmarks/scorer_cpu.py)."""


def tail_attention_sums(q: torch.Tensor, k: torch.Tensor, min_distance: int, *,
                        scale: float | None = None,
                        block_size: int = DEFAULT_BLOCK_SIZE,
                        tile_columns: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_R P and Σ_R P² per query head.

    q: ``[B, Hq, L, D]`` after RoPE; k: ``[B, Hkv, L, D]`` after RoPE. ``Hq % Hkv == 0`` and
    query head ``h`` uses kv head ``h // (Hq // Hkv)`` (transformers' ``repeat_kv`` order).
    ``scale`` defaults to ``1/sqrt(D)``. ``P`` is the row-wise causal softmax of
    ``q·kᵀ·scale`` over ``j <= n``. Returns ``(sum_p, sum_p2)``, float64 tensors ``[B, Hq]``:
    the sums over ``R = {(n, j): j <= n - min_distance}`` of ``P[n, j]`` and ``P[n, j]²``.

    The matmul runs in the input dtype (bfloat16/float16 on CUDA); the softmax statistics and
    the sums run in float32 and the per-row results are added in float64. ``tile_columns``
    (keys per tile) is chosen per device when None; any value >= 1 gives the same sums up to
    rounding.
    """
    batch, q_heads, seq_len, head_dim = _check_inputs(q, k, min_distance, block_size)
    if tile_columns is not None and tile_columns < 1:
        raise ValueError(f"tile_columns must be >= 1, got {tile_columns}")
    kv_heads = k.shape[1]
    group = q_heads // kv_heads
    scale = head_dim ** -0.5 if scale is None else float(scale)

    sum_p = torch.zeros(batch * kv_heads, group, dtype=torch.float64, device=q.device)
    sum_p2 = torch.zeros_like(sum_p)
    if min_distance < seq_len:
        grouped_q = q.reshape(batch * kv_heads, group, seq_len, head_dim)
        grouped_k = k.reshape(batch * kv_heads, seq_len, head_dim)
        step = _kv_heads_per_step(q.device, batch * kv_heads, group, block_size, seq_len)
        tile_cols = tile_columns or _tile_columns(q.device, group, block_size, seq_len)
        workspace = _Workspace(q, step * group * block_size * tile_cols, block_size)
        for s0 in range(0, batch * kv_heads, step):
            s1 = min(s0 + step, batch * kv_heads)
            for r0 in range(min_distance, seq_len, block_size):
                r1 = min(r0 + block_size, seq_len)
                p, p2 = _row_block_sums(grouped_q[s0:s1], grouped_k[s0:s1], r0, r1,
                                        min_distance, scale, tile_cols, workspace)
                sum_p[s0:s1] += p
                sum_p2[s0:s1] += p2
    return sum_p.view(batch, q_heads), sum_p2.view(batch, q_heads)


def ds_and_variance(sum_p: torch.Tensor, sum_p2: torch.Tensor,
                    seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head dependency strength and variance from the two tail sums (float64).

    proportion = Σ_R P / L; variance is the unbiased variance of the L×L matrix equal to P
    on R and 0 elsewhere: (Σ_R P² − (Σ_R P)² / L²) / (L² − 1).
    """
    sum_p = sum_p.to(torch.float64)
    sum_p2 = sum_p2.to(torch.float64)
    cells = float(seq_len) * float(seq_len)
    ds_heads = sum_p / seq_len
    var_heads = (sum_p2 - sum_p * sum_p / cells) / (cells - 1.0)
    return ds_heads, var_heads


def check_qk_shapes(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int, int]:
    """``(B, Hq, L, D)`` of q ``[B, Hq, L, D]`` and k ``[B, Hkv, L, D]`` with Hq a multiple of
    Hkv; ValueError naming the shapes otherwise."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [B, H, L, D]; got {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    batch, q_heads, seq_len, head_dim = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (batch, seq_len, head_dim):
        raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)} in B, L or D")
    if k.shape[1] == 0 or q_heads % k.shape[1] != 0:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of kv heads "
                         f"({k.shape[1]})")
    return batch, q_heads, seq_len, head_dim


def _check_inputs(q: torch.Tensor, k: torch.Tensor, min_distance: int,
                  block_size: int) -> tuple[int, int, int, int]:
    batch, q_heads, seq_len, head_dim = check_qk_shapes(q, k)
    if q.dtype != k.dtype or q.device != k.device:
        raise ValueError(f"q and k differ in dtype or device: {q.dtype}/{q.device} vs "
                         f"{k.dtype}/{k.device}")
    if min_distance < 0:
        raise ValueError(f"min_distance must be >= 0, got {min_distance}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return batch, q_heads, seq_len, head_dim


def _kv_heads_per_step(device: torch.device, entries: int, group: int, block_size: int,
                       seq_len: int) -> int:
    """How many (batch, kv head) entries share one workspace: 1 on CPU, as many as fit in
    the workspace budget on CUDA (fewer, larger kernels)."""
    if device.type != "cuda":
        return 1
    per_entry = group * block_size * seq_len
    return max(1, min(entries, _CUDA_WORKSPACE_ELEMENTS // per_entry))


def _tile_columns(device: torch.device, group: int, block_size: int, seq_len: int) -> int:
    """Key columns per tile: all of them on CUDA, a cache-sized slice on the CPU."""
    if device.type == "cuda":
        return seq_len
    return max(block_size, min(seq_len, _CPU_TILE_ELEMENTS // (group * block_size)))


class _Workspace:
    """Reusable buffers and masks of one call, so that the row loop allocates nothing big."""

    def __init__(self, like: torch.Tensor, elements: int, block_size: int) -> None:
        device = like.device
        self.logits = torch.empty(elements, dtype=torch.float32, device=device)
        self.raw = (None if like.dtype == torch.float32
                    else torch.empty(elements, dtype=like.dtype, device=device))
        self.future = torch.ones(block_size, block_size, dtype=torch.bool,
                                 device=device).triu_(1)
        self.band = torch.ones(block_size, block_size, dtype=torch.float32,
                               device=device).tril_(-1)

    def logits_view(self, entries: int, rows: int, cols: int) -> torch.Tensor:
        return self.logits[: entries * rows * cols].view(entries, rows, cols)

    def raw_view(self, entries: int, rows: int, cols: int) -> torch.Tensor:
        assert self.raw is not None
        return self.raw[: entries * rows * cols].view(entries, rows, cols)


def _scaled_logits(q_rows: torch.Tensor, k_t: torch.Tensor, scale: float,
                   workspace: _Workspace) -> torch.Tensor:
    """float32 ``q_rows @ k_t * scale`` written into the workspace ([entries, rows, cols]).

    float32 inputs: one baddbmm with ``alpha=scale`` straight into the buffer. Lower
    precision inputs: the matmul runs in that dtype, its result is widened to float32 and
    scaled there (as transformers' eager attention scales before its float32 softmax)."""
    entries, rows, cols = q_rows.shape[0], q_rows.shape[1], k_t.shape[2]
    logits = workspace.logits_view(entries, rows, cols)
    if workspace.raw is None:
        return torch.baddbmm(logits, q_rows, k_t, beta=0.0, alpha=scale, out=logits)
    raw = torch.bmm(q_rows, k_t, out=workspace.raw_view(entries, rows, cols))
    return logits.copy_(raw).mul_(scale)


class _RowStats:
    """Per-row float32 softmax statistics of one row block, in the frame of the running max:
    ``Z = Σ_{j<=n} e``, ``tail = Σ_R e`` and ``tail_sq = Σ_R e²`` with ``e = exp(s - max)``."""

    def __init__(self, rows: int, device: torch.device) -> None:
        self.max = torch.full((rows,), -math.inf, device=device)
        self.normaliser = torch.zeros(rows, device=device)
        self.tail = torch.zeros(rows, device=device)
        self.tail_sq = torch.zeros(rows, device=device)
        self.started = False

    def exp_in_frame(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [rows, cols] -> exp(logits - running max) in place, after moving the
        running max up to this tile's and rescaling the sums kept so far."""
        new_max = torch.maximum(self.max, logits.amax(dim=-1))
        if self.started:
            factor = torch.exp(self.max - new_max)
            self.normaliser.mul_(factor)
            self.tail.mul_(factor)
            self.tail_sq.mul_(factor.square_())
        self.max, self.started = new_max, True
        return logits.sub_(new_max.unsqueeze(-1)).exp_()


def _row_block_sums(q: torch.Tensor, k: torch.Tensor, r0: int, r1: int, min_distance: int,
                    scale: float, tile_cols: int,
                    workspace: _Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``[entries, group]`` sums of P and P² over R for query rows ``[r0, r1)``.

    q: ``[entries, group, L, D]``, k: ``[entries, L, D]``; requires ``r0 >= min_distance``.
    The first tile holds column 0, which every row may attend to, so every row's running
    max is finite from the first tile on.
    """
    entries, group = q.shape[0], q.shape[1]
    rows = r1 - r0
    q_rows = q[:, :, r0:r1].reshape(entries, group * rows, q.shape[-1])
    stats = _RowStats(entries * group * rows, q.device)
    full_cols = r0 - min_distance + 1  # columns j <= r0 - k: in R for every row of the block
    band_end = full_cols + min(rows, r1 - full_cols)  # then: in R iff (j - full_cols) < row
    for c0 in range(0, r1, tile_cols):
        c1 = min(c0 + tile_cols, r1)
        logits = _scaled_logits(q_rows, k[:, c0:c1].transpose(1, 2), scale, workspace)
        strip = logits.view(entries, group, rows, c1 - c0)
        if c1 > r0 + 1:  # the tile reaches past r0: hide each row's future
            d0 = max(c0, r0)
            strip[..., d0 - c0:].masked_fill_(workspace.future[:rows, d0 - r0:c1 - r0],
                                              -math.inf)
        flat = stats.exp_in_frame(logits.view(-1, c1 - c0))
        full = flat[:, :max(0, min(c1, full_cols) - c0)]
        full_e = full.sum(dim=-1)
        stats.normaliser += full_e + flat[:, full.shape[1]:].sum(dim=-1)
        stats.tail += full_e
        stats.tail_sq += torch.linalg.vector_norm(full, dim=-1).square_()
        b0, b1 = max(c0, full_cols), min(c1, band_end)
        if b0 < b1:
            band = strip[..., b0 - c0:b1 - c0] * workspace.band[:rows, b0 - full_cols:
                                                                 b1 - full_cols]
            band = band.reshape(flat.shape[0], b1 - b0)
            stats.tail += band.sum(dim=-1)
            stats.tail_sq += band.square_().sum(dim=-1)
    row_p = (stats.tail / stats.normaliser).to(torch.float64)
    row_p2 = (stats.tail_sq / stats.normaliser.square()).to(torch.float64)
    return (row_p.view(entries, group, rows).sum(dim=-1),
            row_p2.view(entries, group, rows).sum(dim=-1))
