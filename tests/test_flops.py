"""The FLOP floors of ``longattn_spark.scorers.flops`` against numbers worked out by hand for a
small shape, and the model FLOP count against torch's own FLOP counter on a real (tiny,
random) Llama. No Spark, no GPU."""

from __future__ import annotations

import pytest
import torch

from longattn_spark.scorers import flops
from longattn_spark.scorers.lossgain.losses import lm_tokens_per_window

# hidden 8, 2 layers, 2 query heads / 1 KV head of dim 4, MLP 16, vocabulary 10
SMALL = flops.DecoderShape(hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4,
                           intermediate=16, vocab=10)


def test_decoder_shape_counts_by_hand():
    # per layer: q and o 2·2·8·(2·4) = 256, k and v 2·2·8·(1·4) = 128, MLP 2·3·8·16 = 768
    assert SMALL.linear_flops_per_token == 2 * (256 + 128 + 768) == 2304
    # per causal pair and layer: QKᵀ and PV, 2 FLOPs per multiply-add, 2 heads × dim 4 = 32
    assert SMALL.attention_flops(8) == 2 * 32 * 36 == 2304          # 8 tokens: 36 pairs
    assert SMALL.attention_flops(4, cached=4) == 2 * 32 * 26 == 1664  # 4·4 + 10 pairs
    assert SMALL.head_flops(3) == 2 * 8 * 10 * 3 == 480


def test_lossgain_floor_by_hand():
    # L = 8, S = 2: targets t in [4, 8); short passes j = 2 (x[2:6], targets 4, 5) and
    # j = 3 (x[4:8], targets 6, 7), each BOS + 4 tokens = 5 tokens, 15 causal pairs.
    got = flops.lossgain_flops(SMALL, 8, 2)
    full = 2304 * 8 + 64 * 36            # 20,736
    short = 2 * (2304 * 5 + 64 * 15)     # 24,960
    head = 160 * (4 + 4)                 # the head at the 4 targets of each side: 1,280
    assert got == {"full": full, "short": short, "head": head, "total": 46_976,
                   "lm_tokens": 18, "head_positions": 8}
    assert got["lm_tokens"] == lm_tokens_per_window(8, 2)
    assert flops.lossgain_floor(SMALL, 8, 2, matmul_flops_per_s=1000.0) == \
        pytest.approx(46.976)
    assert flops.lossgain_flops(SMALL, 8, 2, batch=3)["total"] == 3 * 46_976
    # one forward pass with logits everywhere: 18,432 + 2,304 + 1,280
    assert flops.forward_flops(SMALL, 8) == 22_016


def test_layer0_floor_by_hand():
    # L = 8, k = L // 4 = 2: 36 causal cells, of which rows n >= 2 hold 36 - 3 = 33.
    work = flops.layer0_flops(8, hidden=8, heads=2, kv_heads=1, head_dim=4)
    assert work["causal_half"] == {"qk_flops": 2 * 36 * 8, "exps": 72,
                                   "projection_flops": 8 * 128 + 8 * 64}
    assert work["needed"] == {"qk_flops": 2 * 33 * 8, "exps": 66,
                              "projection_flops": 6 * 128 + 8 * 64}
    floor = flops.layer0_floor(8, hidden=8, heads=2, kv_heads=1, head_dim=4,
                               matmul_flops_per_s=100.0, exp_per_s=10.0)["causal_half"]
    assert floor == pytest.approx({"qk_s": 5.76, "exp_s": 7.2, "sums_s": 7.2,
                                   "serial_s": 12.96, "projection_s": 15.36,
                                   "total_s": 22.56})
    with pytest.raises(ValueError, match="rate"):
        flops.layer0_floor(8, hidden=8, heads=2, kv_heads=1, head_dim=4,
                           matmul_flops_per_s=0.0, exp_per_s=1.0)


def test_layer0_floor_of_the_8b_shape_is_the_issues():
    """Issue 31: QKᵀ 4.4 TFLOP and 1.7e10 exponentials for the 8B shape at L = 32768, and the
    projections were 1.8 ms of matmul work at the H200's measured 775 TFLOP/s."""
    work = flops.layer0_flops(32768, hidden=4096, heads=32, kv_heads=8, head_dim=128)
    half = work["causal_half"]
    assert half["qk_flops"] == pytest.approx(4.40e12, rel=1e-2)
    assert half["exps"] == pytest.approx(1.72e10, rel=1e-2)
    assert half["projection_flops"] / 775e12 == pytest.approx(1.77e-3, rel=1e-2)
    # rows below k = L/4 hold 1/16 of the cells; the query projection skips a quarter
    assert work["needed"]["exps"] / half["exps"] == pytest.approx(15 / 16, rel=1e-4)


def test_prolong_floor_by_hand():
    # 16 tokens, C = 4: 4 segments alone; 3 of the 6 pairs, each 4 tokens after a 4-token cache
    got = flops.prolong_flops(SMALL, 16, 4, 3)
    alone = 4 * (2304 * 4 + 64 * 10 + 160 * 4)     # 41,984
    pairs = 3 * (2304 * 4 + 64 * 26 + 160 * 4)     # 34,560
    assert got == {"alone": alone, "pairs": pairs, "total": 76_544, "segments": 4,
                   "pair_passes": 3, "lm_tokens": 28}
    assert flops.prolong_flops(SMALL, 16, 4, -1)["pair_passes"] == 6
    assert flops.prolong_floor(SMALL, 16, 4, 3, matmul_flops_per_s=2.0) == 38_272


def test_shape_from_config_and_torch_flop_counter():
    """The linear, attention and head FLOPs against torch's FlopCounterMode on a real tiny
    Llama (eager attention, which multiplies the whole L x L square: 4·H·D·L² per layer)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=50, hidden_size=24, num_attention_heads=6,
                         num_key_value_heads=2, num_hidden_layers=3, intermediate_size=40,
                         max_position_embeddings=64, tie_word_embeddings=True)
    config._attn_implementation = "eager"
    shape = flops.DecoderShape.from_config(config)
    assert shape == flops.DecoderShape(hidden=24, layers=3, heads=6, kv_heads=2, head_dim=4,
                                       intermediate=40, vocab=50)
    assert flops.DecoderShape.from_config(config.to_dict()) == shape
    model = LlamaForCausalLM(config).eval()
    length = 11
    ids = torch.randint(0, 50, (1, length))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, use_cache=False)
    square_attention = shape.layers * 4 * shape.heads * shape.head_dim * length * length
    assert counter.get_total_flops() == (shape.linear_flops_per_token * length
                                         + square_attention + shape.head_flops(length))
    # and the causal count is the square's lower triangle with its diagonal
    assert shape.attention_flops(length) * 2 * length == square_attention * (length + 1)
