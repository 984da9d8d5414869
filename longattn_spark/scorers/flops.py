"""FLOP floors of the scorers: the least time a scoring method can take on a machine, from
the work it must do and the machine's measured rates (pure Python: no torch, no Spark).

A floor is work over rate: matrix-multiply FLOPs over the measured matmul rate (FLOP/s, e.g.
a large bfloat16 GEMM), exponentials over the measured exp2 rate. Elementwise work, memory
traffic and launch overhead are not in it, so a real run is always above its floor; the
"fraction of the floor" of a run is floor / measured time (1.0 would be a perfect run).

- **LongAttn, layer 0** (``layer0_floor``): the QKᵀ products over the causal half
  (2·D FLOPs per query head per cell, L(L+1)/2 cells), one exponential per causal cell and
  head, and the q/k projections (2·hidden·(Hq + Hkv)·D FLOPs per position). Tensor cores
  and the exponential units run at the same time, so the sums' floor is the larger of the
  QKᵀ and exp times (``serial_s`` adds them); the projections come on top. This is the
  definition of benchmarks/scorer_gpu.py and of issue 31. ``needed`` gives the same with
  only the work the score needs: query rows n >= k (rows below the minimum distance have
  no attention in R; the fused path skips them: at k = L/4, 1/16 of the cells and a quarter
  of the query projection), a stricter floor.
- **Loss gain** (``lossgain_floor``): the model's matmul FLOPs of the full pass over L
  tokens plus every short pass (``lossgain.losses.short_blocks``: one pass of BOS + up to
  2S tokens per block j >= 2), each pass's causal attention products (QKᵀ and PV), plus the
  LM head only at the target positions (t in [2S, L), once in the full pass and once in the
  short passes).
- **ProLong** (``prolong_floor``), as the scorer runs it with KV reuse: every segment of C
  tokens alone, then per pair the C tokens of segment i after segment j's cached keys
  (attention over C + its causal part), the LM head at the C positions of every pass.
- **One forward pass** (``forward_flops``): the unit of the "× one forward" ratios: L
  tokens, causal attention, the LM head at every position.

Model FLOPs are counted for Llama-shaped decoders (``DecoderShape``: Llama, Mistral, Qwen2;
q/k/v/o projections, a gated MLP of three matrices, a separate or tied LM head); norms,
RoPE, softmax and the embedding lookup are not matmuls and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DecoderShape:
    """What the FLOP count of a Llama-shaped decoder needs."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> DecoderShape:
        """From a config.json dict or a transformers config (``head_dim`` defaults to
        hidden / heads, ``num_key_value_heads`` to the heads)."""
        get = config.get if isinstance(config, Mapping) else (
            lambda key, default=None: getattr(config, key, default))
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        return cls(hidden=hidden, layers=int(get("num_hidden_layers")), heads=heads,
                   kv_heads=int(get("num_key_value_heads", None) or heads),
                   head_dim=int(get("head_dim", None) or hidden // heads),
                   intermediate=int(get("intermediate_size")), vocab=int(get("vocab_size")))

    @property
    def linear_flops_per_token(self) -> int:
        """FLOPs of the projections and the MLP of every layer for one token."""
        q_and_o = 2 * 2 * self.hidden * self.heads * self.head_dim
        k_and_v = 2 * 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = 2 * 3 * self.hidden * self.intermediate
        return self.layers * (q_and_o + k_and_v + mlp)

    def attention_flops(self, new_tokens: int, cached: int = 0) -> int:
        """QKᵀ and PV FLOPs of one sequence's pass over ``new_tokens`` tokens after
        ``cached`` tokens of cache, causal: token i attends to cached + i + 1 keys."""
        pairs = new_tokens * cached + new_tokens * (new_tokens + 1) // 2
        return self.layers * 2 * 2 * self.heads * self.head_dim * pairs

    def head_flops(self, positions: int) -> int:
        """FLOPs of the LM head at ``positions`` positions."""
        return 2 * self.hidden * self.vocab * positions


def layer0_flops(seq_len: int, *, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 min_distance: int | None = None, batch: int = 1) -> dict[str, dict[str, int]]:
    """Work of the layer-0 scorer on ``batch`` windows of L = ``seq_len``: ``causal_half``
    (every causal cell, q for every position: issue 31's definition) and ``needed`` (only
    query rows n >= k = ``min_distance``, default L // 4), each as ``qk_flops``, ``exps``
    and ``projection_flops``."""
    length = int(seq_len)
    k = length // 4 if min_distance is None else int(min_distance)
    k = max(0, min(k, length))
    cells = length * (length + 1) // 2
    needed_cells = cells - k * (k + 1) // 2
    per_position_q = 2 * hidden * heads * head_dim
    per_position_k = 2 * hidden * kv_heads * head_dim

    def work(cell_count: int, q_positions: int) -> dict[str, int]:
        return {"qk_flops": batch * heads * cell_count * 2 * head_dim,
                "exps": batch * heads * cell_count,
                "projection_flops": batch * (q_positions * per_position_q
                                             + length * per_position_k)}

    return {"causal_half": work(cells, length), "needed": work(needed_cells, length - k)}


def layer0_floor(seq_len: int, *, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 matmul_flops_per_s: float, exp_per_s: float, min_distance: int | None = None,
                 batch: int = 1) -> dict[str, dict[str, float]]:
    """Seconds: for ``causal_half`` and ``needed`` (``layer0_flops``), ``qk_s``, ``exp_s``,
    ``sums_s`` = max of the two, ``serial_s`` = their sum, ``projection_s`` and ``total_s`` =
    sums + projections."""
    _check_rates(matmul_flops_per_s, exp_per_s)
    out = {}
    for name, work in layer0_flops(seq_len, hidden=hidden, heads=heads, kv_heads=kv_heads,
                                   head_dim=head_dim, min_distance=min_distance,
                                   batch=batch).items():
        qk_s = work["qk_flops"] / matmul_flops_per_s
        exp_s = work["exps"] / exp_per_s
        projection_s = work["projection_flops"] / matmul_flops_per_s
        out[name] = {"qk_s": qk_s, "exp_s": exp_s, "sums_s": max(qk_s, exp_s),
                     "serial_s": qk_s + exp_s, "projection_s": projection_s,
                     "total_s": max(qk_s, exp_s) + projection_s}
    return out


def forward_flops(shape: DecoderShape, seq_len: int, batch: int = 1) -> int:
    """One plain forward pass with logits at every position, per ``batch`` windows."""
    length = int(seq_len)
    return batch * (shape.linear_flops_per_token * length + shape.attention_flops(length)
                    + shape.head_flops(length))


def lossgain_flops(shape: DecoderShape, seq_len: int, short_context: int, batch: int = 1
                   ) -> dict[str, int]:
    """Matmul FLOPs of loss gain per ``batch`` windows: ``full`` (the L-token pass, no
    head), ``short`` (every short pass, no head), ``head`` (the LM head at the targets of
    both), ``total``; ``lm_tokens`` and ``head_positions`` are the token counts."""
    from longattn_spark.scorers.lossgain.losses import short_blocks

    length, s = int(seq_len), int(short_context)
    blocks = short_blocks(length, s)
    full = shape.linear_flops_per_token * length + shape.attention_flops(length)
    short = sum(shape.linear_flops_per_token * b.length + shape.attention_flops(b.length)
                for b in blocks)
    targets = length - 2 * s
    short_targets = sum(b.stop_target - b.first_target for b in blocks)
    head = shape.head_flops(targets + short_targets)
    return {"full": batch * full, "short": batch * short, "head": batch * head,
            "total": batch * (full + short + head),
            "lm_tokens": batch * (length + sum(b.length for b in blocks)),
            "head_positions": batch * (targets + short_targets)}


def lossgain_floor(shape: DecoderShape, seq_len: int, short_context: int, *,
                   matmul_flops_per_s: float, batch: int = 1) -> float:
    """Seconds: ``lossgain_flops(...)["total"]`` over the matmul rate."""
    _check_rates(matmul_flops_per_s)
    return lossgain_flops(shape, seq_len, short_context, batch)["total"] / matmul_flops_per_s


def prolong_flops(shape: DecoderShape, window_tokens: int, segment_size: int, pairs: int,
                  batch: int = 1) -> dict[str, int]:
    """Matmul FLOPs of ProLong with KV reuse per ``batch`` windows of ``window_tokens``
    tokens: M = window_tokens // C segments alone, P = min(pairs, M(M-1)/2) pair passes of C
    tokens after a C-token cache (``pairs`` -1: every pair), the LM head at every position
    of every pass."""
    c = int(segment_size)
    segments = int(window_tokens) // c
    every = segments * (segments - 1) // 2
    pair_count = every if pairs < 0 else min(int(pairs), every)
    alone = segments * (shape.linear_flops_per_token * c + shape.attention_flops(c)
                        + shape.head_flops(c))
    paired = pair_count * (shape.linear_flops_per_token * c + shape.attention_flops(c, c)
                           + shape.head_flops(c))
    return {"alone": batch * alone, "pairs": batch * paired, "total": batch * (alone + paired),
            "segments": segments, "pair_passes": pair_count,
            "lm_tokens": batch * (segments + pair_count) * c}


def prolong_floor(shape: DecoderShape, window_tokens: int, segment_size: int, pairs: int, *,
                  matmul_flops_per_s: float, batch: int = 1) -> float:
    """Seconds: ``prolong_flops(...)["total"]`` over the matmul rate."""
    _check_rates(matmul_flops_per_s)
    return prolong_flops(shape, window_tokens, segment_size, pairs, batch)["total"] / \
        matmul_flops_per_s


def shape_dict(shape: DecoderShape) -> dict[str, int]:
    return asdict(shape)


def _check_rates(*rates: float) -> None:
    for rate in rates:
        if not rate > 0:
            raise ValueError(f"a measured rate must be > 0, got {rate!r}")
