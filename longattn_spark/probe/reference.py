"""Position-only references for the probe's DS (what DS is when attention ignores content).

- :func:`longattn_spark.probe.auc.uniform_head_ds`: a head spreading attention evenly over its
  prefix has DS ~ 0.403 at k = L/4, whatever the text.
- :func:`far_attention_sink_share`: of the attention mass at distance >= k (the mass DS
  counts), the share that goes to the first ``sink`` tokens (BOS and its neighbours, the
  "attention sink"). Near 1, DS measures how much a head parks attention on the first tokens,
  which is a function of position, not of what the text depends on.
"""

from __future__ import annotations

import torch

BLOCK_ELEMENTS = 1 << 24


def far_attention_sink_share(q: torch.Tensor, k: torch.Tensor, min_distance: int,
                             sink: int = 4) -> tuple[float, float]:
    """(share of far attention that goes to keys ``0 .. sink-1``, far mass per query row).

    q: ``[Hq, L, D]``, k: ``[Hkv, L, D]`` after RoPE (query head h uses kv head
    h // (Hq / Hkv)); causal softmax in float32 per head, sums in float64. Far: key j with
    j <= n - k for query n. Both numbers are over all query heads and rows."""
    q_heads, seq_len, head_dim = q.shape
    group = q_heads // k.shape[0]
    scale = head_dim ** -0.5
    rows = max(1, BLOCK_ELEMENTS // (group * seq_len))
    far = torch.zeros((), dtype=torch.float64)
    to_sink = torch.zeros((), dtype=torch.float64)
    keys_at = torch.arange(seq_len, device=q.device)
    for h in range(k.shape[0]):
        queries = q[h * group:(h + 1) * group].to(torch.float32)
        keys = k[h].to(torch.float32)
        for r0 in range(min_distance, seq_len, rows):
            r1 = min(r0 + rows, seq_len)
            logits = torch.matmul(queries[:, r0:r1], keys[:r1].T) * scale
            n = torch.arange(r0, r1, device=q.device)[:, None]
            logits = logits.masked_fill(keys_at[None, :r1] > n, float("-inf"))
            weights = torch.softmax(logits, dim=-1).to(torch.float64)
            is_far = keys_at[None, :r1] <= n - min_distance
            far += (weights * is_far).sum().cpu()
            to_sink += (weights * (is_far & (keys_at[None, :r1] < sink))).sum().cpu()
    total = float(far)
    return (float(to_sink) / total if total > 0 else float("nan"),
            total / (q_heads * seq_len))
