"""tail_attention_sums / ds_and_variance against a naive full-matrix implementation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from longattn_spark.scorers.longattn import ds_and_variance, tail_attention_sums

REL_TOL = 1e-5


def naive_ds_and_variance(q: torch.Tensor, k: torch.Tensor, min_distance: int,
                          scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DESIGN.md written out in float64: per query head, the full causal softmax matrix P,
    the matrix equal to P on R = {j <= n - k} and 0 elsewhere, its sum / L and its
    unbiased variance over all L² cells."""
    batch, q_heads, seq_len, head_dim = q.shape
    group = q_heads // k.shape[1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    n = torch.arange(seq_len).unsqueeze(1)
    j = torch.arange(seq_len).unsqueeze(0)
    causal = j <= n
    region = j <= n - min_distance
    ds = torch.zeros(batch, q_heads, dtype=torch.float64)
    var = torch.zeros(batch, q_heads, dtype=torch.float64)
    for b in range(batch):
        for h in range(q_heads):
            logits = (q[b, h].double() @ k[b, h // group].double().T) * scale
            p = torch.softmax(logits.masked_fill(~causal, -math.inf), dim=-1)
            m = torch.where(region, p, torch.zeros_like(p))
            ds[b, h] = m.sum() / seq_len
            var[b, h] = torch.var(m, unbiased=True)
    return ds, var


def random_qk(batch: int, q_heads: int, kv_heads: int, seq_len: int, head_dim: int,
              seed: int, spread: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random q/k whose logits spread over a few units, so the attention is far from flat."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, seq_len, head_dim, generator=generator) * spread
    k = torch.randn(batch, kv_heads, seq_len, head_dim, generator=generator)
    return q, k


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    scale = expected.abs().clamp_min(1e-300)
    worst = ((actual - expected).abs() / scale).max().item()
    assert worst <= tol, f"max relative error {worst:.3g} > {tol:g}"


@pytest.mark.parametrize("shape", [(1, 1, 1, 8, 4), (2, 4, 2, 37, 16), (1, 6, 3, 101, 32),
                                   (2, 8, 8, 64, 8), (1, 8, 1, 50, 16)])
@pytest.mark.parametrize(("block_size", "tile_columns"),
                         [(1, None), (5, 3), (16, None), (16, 7), (256, None), (256, 32)])
def test_matches_naive_reference(shape, block_size, tile_columns):
    """Several blocks and column tiles: tiles of 3 or 7 keys move the running max many times
    per row, so the online rescaling is exercised."""
    batch, q_heads, _, seq_len, _ = shape
    q, k = random_qk(*shape, seed=seq_len * 31 + block_size)
    for min_distance in sorted({0, 1, 3, seq_len // 4, seq_len - 1}):
        sum_p, sum_p2 = tail_attention_sums(q, k, min_distance, block_size=block_size,
                                            tile_columns=tile_columns)
        assert sum_p.dtype == torch.float64 and sum_p.shape == (batch, q_heads)
        ds, var = ds_and_variance(sum_p, sum_p2, seq_len)
        ds_ref, var_ref = naive_ds_and_variance(q, k, min_distance)
        assert_close_rel(ds, ds_ref, REL_TOL)
        assert_close_rel(var, var_ref, REL_TOL)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 2), kv_heads=st.integers(1, 3), group=st.integers(1, 3),
       seq_len=st.integers(8, 90), head_dim=st.sampled_from([4, 8, 16]),
       block_size=st.integers(1, 40), tile_columns=st.one_of(st.none(), st.integers(1, 50)),
       min_fraction=st.floats(0.0, 0.99), seed=st.integers(0, 10_000))
def test_matches_naive_reference_on_random_shapes(batch, kv_heads, group, seq_len, head_dim,
                                                  block_size, tile_columns, min_fraction,
                                                  seed):
    q, k = random_qk(batch, kv_heads * group, kv_heads, seq_len, head_dim, seed)
    min_distance = int(min_fraction * seq_len)
    sums = tail_attention_sums(q, k, min_distance, block_size=block_size,
                               tile_columns=tile_columns)
    ds, var = ds_and_variance(*sums, seq_len)
    ds_ref, var_ref = naive_ds_and_variance(q, k, min_distance)
    assert_close_rel(ds, ds_ref, REL_TOL)
    assert_close_rel(var, var_ref, REL_TOL)


def test_rising_keys_move_the_running_max_on_every_tile():
    """Key norms grow along the sequence, so each new tile of keys raises the row max and
    the sums kept so far must be rescaled correctly."""
    q, k = random_qk(1, 4, 2, 96, 16, seed=11, spread=1.0)
    k = k * torch.linspace(0.2, 4.0, 96).view(1, 1, 96, 1)
    ds_ref, var_ref = naive_ds_and_variance(q, k, 24)
    for tile_columns in (1, 5, 40):
        sums = tail_attention_sums(q, k, 24, block_size=8, tile_columns=tile_columns)
        ds, var = ds_and_variance(*sums, 96)
        assert_close_rel(ds, ds_ref, REL_TOL)
        assert_close_rel(var, var_ref, REL_TOL)


def test_query_head_uses_kv_head_of_its_group():
    """Query head h reads kv head h // (Hq / Hkv): with one kv head zeroed (flat attention
    for its group) the two groups' sums must differ exactly along that split."""
    q, k = random_qk(1, 4, 2, 40, 8, seed=3)
    k[:, 1] = 0.0
    sum_p, _ = tail_attention_sums(q, k, 10)
    flat = sum(max(0, n - 10 + 1) / (n + 1) for n in range(40))
    assert torch.allclose(sum_p[0, 2:], torch.full((2,), flat, dtype=torch.float64),
                          rtol=1e-6)
    assert (sum_p[0, :2] - flat).abs().min() > 1e-3


def test_explicit_scale_is_used():
    q, k = random_qk(1, 2, 1, 30, 8, seed=5)
    ds, var = ds_and_variance(*tail_attention_sums(q, k, 7, scale=0.05), 30)
    ds_ref, var_ref = naive_ds_and_variance(q, k, 7, scale=0.05)
    assert_close_rel(ds, ds_ref, REL_TOL)
    assert_close_rel(var, var_ref, REL_TOL)
    ds_default, _ = ds_and_variance(*tail_attention_sums(q, k, 7), 30)
    assert (ds_default - ds).abs().max() > 1e-3


def test_min_distance_at_least_seq_len_gives_zero_sums():
    q, k = random_qk(2, 2, 1, 16, 4, seed=1)
    for min_distance in (16, 40):
        sum_p, sum_p2 = tail_attention_sums(q, k, min_distance)
        assert sum_p.shape == (2, 2) and not sum_p.any() and not sum_p2.any()


def test_min_distance_zero_covers_every_causal_cell():
    """With k = 0 the region is the whole causal triangle: each row's P sums to 1."""
    q, k = random_qk(1, 3, 3, 25, 8, seed=2)
    sum_p, _ = tail_attention_sums(q, k, 0, block_size=4)
    assert torch.allclose(sum_p, torch.full_like(sum_p, 25.0), rtol=1e-6)


@pytest.mark.parametrize("bad", [
    {"min_distance": -1},
    {"block_size": 0},
    {"k_shape": (1, 3, 20, 8)},   # 4 query heads are not a multiple of 3 kv heads
    {"k_shape": (1, 2, 19, 8)},   # sequence lengths differ
    {"tile_columns": 0},
])
def test_rejects_invalid_arguments(bad):
    q = torch.randn(1, 4, 20, 8)
    k = torch.randn(*bad.get("k_shape", (1, 2, 20, 8)))
    with pytest.raises(ValueError):
        tail_attention_sums(q, k, bad.get("min_distance", 5),
                            block_size=bad.get("block_size", 8),
                            tile_columns=bad.get("tile_columns"))


def test_never_allocates_a_sequence_squared_buffer():
    """The largest single allocation stays at heads-in-group × block × L, far below L × L."""
    seq_len, block_size = 1024, 64
    q, k = random_qk(1, 2, 1, seq_len, 16, seed=0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                 acc_events=True) as prof:
        tail_attention_sums(q, k, seq_len // 4, block_size=block_size)
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert 0 < largest <= 2 * block_size * seq_len * 4
    assert largest < seq_len * seq_len * 4 // 4


def test_lower_precision_inputs_stay_close_to_float32():
    """bfloat16 q/k: matmul in bfloat16, statistics in float32 -> close to the float32 sums."""
    q, k = random_qk(1, 4, 2, 64, 16, seed=9, spread=1.0)
    ds32, var32 = ds_and_variance(*tail_attention_sums(q, k, 16), 64)
    ds16, var16 = ds_and_variance(*tail_attention_sums(q.bfloat16(), k.bfloat16(), 16), 64)
    assert_close_rel(ds16, ds32, 3e-2)
    assert_close_rel(var16, var32, 1e-1)
    assert not torch.equal(ds16, ds32)


def test_ds_and_variance_formula_on_hand_values():
    """L = 2: the cells of the masked matrix are (a, b, 0, 0) -> closed forms."""
    sum_p = torch.tensor([[1.5]], dtype=torch.float64)
    sum_p2 = torch.tensor([[1.25]], dtype=torch.float64)   # a = 1.0, b = 0.5
    ds, var = ds_and_variance(sum_p, sum_p2, 2)
    cells = torch.tensor([1.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    assert ds.item() == pytest.approx(0.75)
    assert var.item() == pytest.approx(torch.var(cells, unbiased=True).item(), rel=1e-12)
