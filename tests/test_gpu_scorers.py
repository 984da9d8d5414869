"""Every scorer on a CUDA device gives the CPU's numbers (marker ``gpu``: skipped without one).

The layer-0 kernel has its own GPU tests (tests/test_triton_sums.py); these run each method's
scorer end to end on the GPU, with token ids handed over on the GPU as well as from the host
(the first GPU run of ``benchmarks/scorer_gpu.py`` found loss gain failing on ids already on
the GPU). This module imports no Spark, so it also runs on a GPU machine without Java.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.scorers.longattn import Layer0Scorer
from longattn_spark.scorers.lossgain.scorer import LossGainScorer
from longattn_spark.scorers.prolong.scorer import ProLongScorer

pytestmark = pytest.mark.gpu

VOCAB = 512
BOS = 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_smoke_test_model(tmp_path_factory.mktemp("gpu_scorers") / "llama",
                                  vocab_size=VOCAB, hidden_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, num_hidden_layers=2,
                                  intermediate_size=128, dtype="float32")


def random_windows(count: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, VOCAB, (count, length))


def with_bos(windows: np.ndarray) -> torch.Tensor:
    ids = torch.as_tensor(windows, dtype=torch.long)
    return torch.cat([torch.full((ids.shape[0], 1), BOS), ids[:, :-1]], dim=1)


@pytest.mark.parametrize("ids_on", ["cpu", "cuda"])
def test_lossgain_on_gpu_matches_cpu(model_dir, ids_on):
    inputs = with_bos(random_windows(2, 256, seed=0))
    cpu = LossGainScorer.from_pretrained(model_dir, bos_id=BOS)
    gpu = LossGainScorer.from_pretrained(model_dir, device="cuda", bos_id=BOS)
    expected_full, expected_short = cpu.losses(inputs, 64)
    full, short = gpu.losses(inputs.to(ids_on), 64)
    np.testing.assert_allclose(full, expected_full, rtol=1e-4, atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(short, expected_short, rtol=1e-4, atol=1e-4, equal_nan=True)
    got = [r.score for r in gpu.score(inputs.to(ids_on), 64)]
    want = [r.score for r in cpu.score(inputs, 64)]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("kv_reuse", [True, False])
def test_prolong_on_gpu_matches_cpu(model_dir, kv_reuse):
    windows = list(random_windows(2, 1024, seed=1))
    names = ["w0", "w1"]
    settings = dict(segment_size=128, pairs=-1, threshold=-1, kv_reuse=kv_reuse)
    cpu = ProLongScorer.from_pretrained(model_dir, **settings)
    gpu = ProLongScorer.from_pretrained(model_dir, device="cuda", **settings)
    for got, want in zip(gpu.score_windows(windows, names), cpu.score_windows(windows, names)):
        assert (got.window_id, got.pairs_scored, got.segments) == (
            want.window_id, want.pairs_scored, want.segments)
        assert got.pairs_scored == 28
        np.testing.assert_allclose([got.score, got.mean_strength, got.mean_specificity],
                                   [want.score, want.mean_strength, want.mean_specificity],
                                   rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kernel", ["triton", "torch"])
def test_layer0_on_gpu_matches_cpu(model_dir, kernel):
    ids = with_bos(random_windows(2, 1024, seed=2))
    cpu = Layer0Scorer.from_pretrained(model_dir, kernel="torch")
    gpu = Layer0Scorer.from_pretrained(model_dir, device="cuda", kernel=kernel)
    assert gpu.kernel == kernel
    got, want = gpu.score(ids.cuda()), cpu.score(ids)
    np.testing.assert_allclose(got.ds_heads, want.ds_heads, rtol=1e-4)
    np.testing.assert_allclose(got.var_heads, want.var_heads, rtol=1e-3)
