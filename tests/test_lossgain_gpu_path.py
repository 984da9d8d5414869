"""Loss gain's GPU path, the parts a CPU can check: the model runs PyTorch's fused attention
(SDPA, whose flash / memory-efficient kernels CUDA uses), and the batched short passes give
the per-block definition's losses however many blocks there are (one gather per block
length, no per-block op). Real tiny transformers models, no Spark."""

from __future__ import annotations

import numpy as np
import torch

from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.scorers.lossgain.losses import short_blocks
from longattn_spark.scorers.lossgain.scorer import LossGainScorer


def test_sdpa_and_many_blocks_match_the_definition(tmp_path):
    folder = write_smoke_test_model(tmp_path / "m", vocab_size=256, hidden_size=32,
                                    num_attention_heads=4, num_key_value_heads=2,
                                    num_hidden_layers=2, intermediate_size=64, dtype="float32")
    scorer = LossGainScorer.from_pretrained(folder, bos_id=1)
    assert scorer.attn_implementation == "sdpa"
    ids = torch.randint(2, 256, (2, 61), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1
    s = 4                                    # 14 short passes, the last one shorter
    full, short = scorer.losses(ids, s)
    blocks = short_blocks(61, s)
    assert len(blocks) == 14 and blocks[-1].length < blocks[0].length
    with torch.inference_mode():
        logits = scorer.model(input_ids=ids).logits.float()
        want_full = -logits.log_softmax(-1)[:, :-1].gather(2, ids[:, 1:, None])[..., 0]
        np.testing.assert_allclose(full[:, 2 * s:], want_full[:, 2 * s - 1:], rtol=1e-5,
                                   atol=1e-5)
        for b in blocks:                     # the definition, one pass per block
            seq = torch.cat([torch.ones(2, 1, dtype=torch.long), ids[:, b.start:b.stop]], 1)
            lp = scorer.model(input_ids=seq).logits.float().log_softmax(-1)
            positions = range(b.first_position, b.first_position + b.stop_target
                              - b.first_target)
            want = torch.stack([-lp[:, p].gather(1, seq[:, p + 1:p + 2])[:, 0]
                                for p in positions], 1)
            np.testing.assert_allclose(short[:, b.first_target:b.stop_target], want,
                                       rtol=1e-5, atol=1e-5)
