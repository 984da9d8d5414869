"""Attention-distance profile of layer 0: how much attention mass goes to each distance.

For one window, with ``P`` the causal softmax of ``q·kᵀ·scale`` per query head (as in
``attention_sums``), the mass of distance bucket ``[a, b)`` is

    mass[a, b) = Σ_h Σ_n Σ_{j : a <= n - j < b} P_h[n, j] / (H · L)

i.e. the fraction of all attention (every row of every head sums to 1) that looks back between
``a`` and ``b - 1`` tokens. The buckets sum to 1. When ``k`` is a bucket edge, the mass at
distances ``>= k`` is exactly the window's DS (``Σ_R P / L`` averaged over heads), which is why
the report puts ``k = L/4`` among the edges and can check the profile against the stored score.

Query rows are processed in blocks, one key/value head's group of query heads at a time, so the
largest temporary is ``group × rows × L`` float32 logits — never ``L × L`` per head for all
heads at once. Logits and softmax run in float32; the bucket sums run in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from longattn_spark.scorers.longattn.attention_sums import check_qk_shapes

SPACINGS = ("log", "linear")
BLOCK_ELEMENTS = 1 << 24
"""Float32 logits per block (64 MiB): rows per block = this / (group · L), at least 1."""


class DistanceProfile(NamedTuple):
    """``edges`` (int64, ``[n + 1]``, 0 first, L last): bucket ``i`` holds distances
    ``edges[i] <= n - j < edges[i + 1]``; ``mass`` (float64, ``[n]``) sums to 1."""

    edges: torch.Tensor
    mass: torch.Tensor


def distance_bucket_edges(seq_len: int, n_buckets: int, spacing: str = "log",
                          extra_edges: Sequence[int] = ()) -> torch.Tensor:
    """Bucket edges over the distances ``0 .. seq_len - 1``.

    ``log``: 0 then about ``n_buckets`` geometrically spaced edges from 1 to ``seq_len``
    (small distances collapse to one bucket per integer, so there may be fewer buckets);
    ``linear``: ``n_buckets`` buckets of (nearly) equal width. ``extra_edges`` (e.g. the
    minimum distance k) are added, so a bucket starts exactly there.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    if spacing == "log":
        steps = max(1, n_buckets - 1)
        inner = {round(math.exp(math.log(seq_len) * i / steps)) for i in range(steps + 1)}
        edges = {0, *inner}
    else:
        edges = {round(seq_len * i / n_buckets) for i in range(n_buckets + 1)}
    edges |= {int(e) for e in extra_edges if 0 < int(e) < seq_len}
    edges |= {0, seq_len}
    return torch.tensor(sorted(edges), dtype=torch.int64)


def attention_distance_profile(q: torch.Tensor, k: torch.Tensor, n_buckets: int = 24, *,
                               spacing: str = "log", extra_edges: Sequence[int] = (),
                               scale: float | None = None,
                               block_rows: int | None = None) -> DistanceProfile:
    """Fraction of layer-0 attention mass per distance bucket, averaged over the batch, the
    query heads and the query rows.

    q: ``[B, Hq, L, D]`` or ``[Hq, L, D]`` after RoPE; k: ``[B, Hkv, L, D]`` or
    ``[Hkv, L, D]``; query head ``h`` uses kv head ``h // (Hq // Hkv)``. ``scale`` defaults
    to ``1/sqrt(D)``. Buckets: see :func:`distance_bucket_edges`.
    """
    q, k = _batched(q), _batched(k)
    batch, q_heads, seq_len, head_dim = _checked_shapes(q, k)
    kv_heads = k.shape[1]
    group = q_heads // kv_heads
    scale = head_dim ** -0.5 if scale is None else float(scale)
    rows = block_rows or max(1, BLOCK_ELEMENTS // (group * seq_len))
    edges = distance_bucket_edges(seq_len, n_buckets, spacing, extra_edges)
    bucket_of_distance = _bucket_lookup(edges, q.device)
    totals = torch.zeros(len(edges) - 1, dtype=torch.float64, device=q.device)
    for b in range(batch):
        for h in range(kv_heads):
            queries = q[b, h * group:(h + 1) * group].to(torch.float32)
            keys = k[b, h].to(torch.float32)
            for r0 in range(0, seq_len, rows):
                r1 = min(r0 + rows, seq_len)
                totals += _block_bucket_mass(queries[:, r0:r1], keys[:r1], r0, scale,
                                             bucket_of_distance, len(totals))
    mass = totals / float(batch * q_heads * seq_len)
    return DistanceProfile(edges.cpu(), mass.cpu())


def mass_from(profile: DistanceProfile, distance: int) -> float:
    """Mass at distances ``>= distance``; exact when ``distance`` is a bucket edge (for
    ``distance = k`` it equals the DS of the window)."""
    starts = profile.edges[:-1]
    return float(profile.mass[starts >= distance].sum())


def _block_bucket_mass(queries: torch.Tensor, keys: torch.Tensor, r0: int, scale: float,
                       bucket_of_distance: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Attention mass per bucket of query rows ``r0 .. r0 + rows - 1`` (summed over the
    group's heads), float64 ``[n_buckets]``. Each row's buckets are summed separately (in
    float64, so a long row loses nothing), then the rows are added."""
    rows, cols = queries.shape[1], keys.shape[0]
    logits = torch.matmul(queries, keys.transpose(0, 1)).mul_(scale)
    distance = (torch.arange(r0, r0 + rows, device=queries.device)[:, None]
                - torch.arange(cols, device=queries.device)[None, :])
    logits.masked_fill_(distance < 0, float("-inf"))
    weights = torch.softmax(logits, dim=-1).sum(dim=0).to(torch.float64)
    buckets = bucket_of_distance[distance.clamp_(min=0)]
    per_row = torch.zeros(rows, n_buckets, dtype=torch.float64, device=queries.device)
    per_row.scatter_add_(1, buckets, weights)
    return per_row.sum(dim=0)


def _bucket_lookup(edges: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``lookup[d]`` = bucket index of distance ``d`` for ``d`` in ``0 .. L - 1``."""
    distances = torch.arange(int(edges[-1]), dtype=torch.int64)
    return (torch.bucketize(distances, edges, right=True) - 1).to(device)


def _batched(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected [B, H, L, D] or [H, L, D], got shape {tuple(x.shape)}")
    return x


def _checked_shapes(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int, int]:
    batch, q_heads, seq_len, head_dim = check_qk_shapes(q, k)
    if seq_len < 1:
        raise ValueError("q and k hold no position (L = 0)")
    return batch, q_heads, seq_len, head_dim
