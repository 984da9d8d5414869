"""ProLongScorer against an independent port of the released code (October2001/ProLong,
prolong/run.py at 9cf2f20), on tiny random OPT and Llama models; determinism of the
sampled mode; early exits; bad input; identity.

The reference below is a straight port of run.py's construct_data / compute_ppl /
compute_single_ppl / compute_pair_ppl / compute_de / compute_lds: full forward passes of the
seg_j + seg_i concatenations (no KV reuse), float32 logits, the released label masking. It
calls nothing from longattn_spark.scorers.prolong.scorer.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import CrossEntropyLoss
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)

from longattn_spark.errors import ConfigError, InputError
from longattn_spark.scorers.prolong.scorer import (
    REASON_TOO_FEW_PAIRS,
    REASON_TOO_FEW_SEGMENTS,
    ProLongScorer,
    lds_from_perplexities,
)

REL_TOL = 1e-4
VOCAB = 256
W, C = 2048, 128
IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------
# Tiny models (init std 0.1: context moves the perplexities enough that DST, DDI and DSP
# are all far from degenerate)
# --------------------------------------------------------------------------------------

def tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    if kind == "opt":
        config = OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                           num_attention_heads=4, word_embed_proj_dim=32,
                           max_position_embeddings=512, init_std=0.1)
        model_class = OPTForCausalLM
    else:
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                             intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=512, initializer_range=0.1)
        model_class = LlamaForCausalLM
    torch.manual_seed(seed)
    return model_class(config).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run many small ops: one thread is faster, and far faster on a busy
    machine (two threads spin-wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prolong_models")
    folders = {}
    for kind in ("opt", "llama"):
        folders[kind] = root / kind
        tiny_model(kind).save_pretrained(folders[kind])
    folders["llama_seed1"] = root / "llama_seed1"
    tiny_model("llama", seed=1).save_pretrained(folders["llama_seed1"])
    return folders


def window(seed: int, length: int = W) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(0, VOCAB, length)]


# --------------------------------------------------------------------------------------
# Independent reference: run.py ported (args -> parameters, global random -> rng)
# --------------------------------------------------------------------------------------

class Released:
    def __init__(self, folder: Path, chunk_num: int, threshold: float) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.device = torch.device("cpu")
        self.chunk_num = chunk_num
        self.dlt_ppl_threshold = threshold

    @staticmethod
    def sample_preserve_order(array, sample_size, rng):
        indices = list(range(len(array)))
        assert sample_size <= len(indices)
        sampled_indices = sorted(rng.sample(indices, sample_size))
        return [array[i] for i in sampled_indices]

    def construct_data(self, tokenized_data, chunk_size, chunk_num, rng):
        data_list = [tokenized_data[i:i + chunk_size]
                     for i in range(0, len(tokenized_data), chunk_size)]
        if len(data_list[-1]) < chunk_size:
            data_list = data_list[:-1]
        if len(data_list) > chunk_num:
            data_list = self.sample_preserve_order(array=data_list, sample_size=chunk_num,
                                                   rng=rng)
        return data_list

    def compute_ppl(self, logits, labels, nums):
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous()
        loss_fct = CrossEntropyLoss(reduction="none")
        shift_logits = shift_logits.view(-1, self.model.config.vocab_size)
        shift_labels = shift_labels.view(-1)
        shift_labels = shift_labels.to(shift_logits.device)
        loss = loss_fct(shift_logits, shift_labels)
        loss = loss.view(labels.size(0), -1)
        batch_ppl = []
        for i, num in enumerate(nums):
            avg_loss = loss[i, -num:].mean()
            batch_ppl.append(torch.exp(avg_loss).float().cpu().item())
        return batch_ppl

    def compute_single_ppl(self, data_list, batch_size):
        single_ppl = [0 for _ in range(len(data_list))]
        with torch.no_grad():
            for i in range(0, len(data_list), batch_size):
                batch = data_list[i:i + batch_size]
                nums = [len(b) - 1 for b in batch]
                inputs = torch.tensor(batch).to(self.device)
                labels = inputs.clone()
                logits = self.model(input_ids=inputs)[0]
                single_ppl[i:i + batch_size] = self.compute_ppl(logits, labels, nums)
        return single_ppl

    def compute_pair_ppl(self, data_list, batch_size, sample_size, rng):
        pair_ppl = [[float("inf") for _ in range(len(data_list))] for _ in range(len(data_list))]
        with torch.no_grad():
            pairs = [(i, j) for i in range(len(data_list)) for j in range(i)]
            if sample_size > 0:
                if len(pairs) < sample_size:
                    return pair_ppl
                pairs = rng.sample(pairs, sample_size)
            for batch_start in range(0, len(pairs), batch_size):
                batch_pairs = pairs[batch_start:batch_start + batch_size]
                nums = [len(data_list[i]) - 1 for i, _ in batch_pairs]
                inputs = [data_list[j] + data_list[i] for i, j in batch_pairs]
                inputs = torch.tensor(inputs).to(self.device)
                labels = torch.tensor([[IGNORE_INDEX] * (len(data_list[j]) + 1) + data_list[i][1:]
                                       for i, j in batch_pairs]).to(self.device)
                logits = self.model(input_ids=inputs)[0]
                batch_ppl = self.compute_ppl(logits, labels, nums)
                for k, (i, j) in enumerate(batch_pairs):
                    pair_ppl[i][j] = batch_ppl[k]
        return pair_ppl

    @staticmethod
    def compute_de(logits):
        def _softmax(x):
            e_x = np.exp(x - np.max(x))
            return e_x / e_x.sum(axis=0)

        def _compute_entropy(x):
            if 0 in x:
                x += 1e-12
                x /= np.sum(x)
            return -np.sum(x * np.log(x))

        if len(logits) == 1:
            return 1
        max_entropy = np.log(len(logits))
        entropy = _compute_entropy(_softmax(logits))
        return np.clip((max_entropy - entropy) / max_entropy, 0, 1)

    def compute_lds(self, single_ppl, pair_ppl):
        dlt_ppl = [[0 for _ in range(len(single_ppl))] for _ in range(len(single_ppl))]
        dependency_entropy = [0 for _ in range(len(single_ppl))]
        dis_scale = 1 / (self.chunk_num - 1)
        lds = 0
        for i in range(len(single_ppl)):
            row_logits = []
            for j in range(i):
                dlt_ppl[i][j] = single_ppl[i] - pair_ppl[i][j]
                if pair_ppl[i][j] != float("inf"):
                    row_logits.append(dlt_ppl[i][j])
            if len(row_logits) > 0:
                dependency_entropy[i] = self.compute_de(logits=row_logits)
        kept = []  # (DST, DDI, DSP) of every pair in the sum, for the components
        for i in range(len(single_ppl)):
            for j in range(i):
                dlt_ppl[i][j] /= single_ppl[i]
                if dlt_ppl[i][j] > self.dlt_ppl_threshold:
                    distance_gain = np.clip((i - j) * dis_scale, 0, 1)
                    lds += (dlt_ppl[i][j] + distance_gain) * dependency_entropy[i]
                    kept.append((dlt_ppl[i][j], distance_gain, dependency_entropy[i]))
        if np.isnan(lds):
            lds = 0.
        return lds, kept

    def score(self, ids, sample_size, rng=None, batch_size=256):
        """run.py's per-document body (construct_data, then the try block)."""
        data_list = self.construct_data(list(ids), C, self.chunk_num, rng)
        try:
            single_ppl = self.compute_single_ppl(data_list, batch_size)
            pair_ppl = self.compute_pair_ppl(data_list, batch_size, sample_size, rng)
            lds, kept = self.compute_lds(single_ppl=single_ppl, pair_ppl=pair_ppl)
        except Exception:  # noqa: BLE001 - as released: any error -> LDS 0
            return 0.0, []
        return float(lds), kept


def assert_close(actual: float, expected: float, what: str) -> None:
    assert abs(actual - expected) <= REL_TOL * max(abs(expected), 1e-12), \
        f"{what}: {actual!r} != {expected!r}"


def assert_matches(result, lds: float, kept: list, segments: int, scored: int) -> None:
    assert result.reason is None
    assert result.segments == segments and result.pairs_scored == scored
    assert result.pairs_kept == len(kept) > 0
    assert_close(result.score, lds, "score")
    for k, name in enumerate(("mean_strength", "mean_distance", "mean_specificity")):
        assert_close(getattr(result, name), float(np.mean([row[k] for row in kept])), name)


# --------------------------------------------------------------------------------------
# Equal to the released computation
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_every_pair_matches_released(model_dirs, kind):
    """pairs=-1, threshold=-1 (continuous), W=2048, C=128: score and components within 1e-4
    relative, with KV reuse and with the released full recomputation."""
    ids = window(3)
    lds, kept = Released(model_dirs[kind], chunk_num=W // C, threshold=-1).score(ids, -1)
    assert len(kept) == 120
    for kv_reuse in (True, False):
        scorer = ProLongScorer.from_pretrained(model_dirs[kind], segment_size=C, pairs=-1,
                                               threshold=-1, kv_reuse=kv_reuse)
        result = scorer.score_window(ids, "doc-1#0")
        assert scorer.kv_reuse is kv_reuse, scorer.kv_note
        assert_matches(result, lds, kept, segments=16, scored=120)
    # sanity: the components are not degenerate, so the comparison means something (a mean
    # DST near 0 would be dominated by float32 rounding of the perplexities, ~1e-7)
    assert 0.05 < result.mean_specificity < 0.95
    assert abs(result.mean_strength) > 5e-3


def test_kv_groups_and_batches_match(model_dirs):
    """Tiny batches and a tiny memory budget force many cache groups and pair batches,
    across windows: same scores as the default batching and as full recomputation."""
    windows, ids = [window(2), window(3), window(4, 1000)], ["a", "b", "c"]
    default = ProLongScorer.from_pretrained(model_dirs["llama"], pairs=-1, threshold=-1)
    small = ProLongScorer.from_pretrained(model_dirs["llama"], pairs=-1, threshold=-1,
                                          batch_size=3, memory_budget_bytes=1)
    full = ProLongScorer.from_pretrained(model_dirs["llama"], pairs=-1, threshold=-1,
                                         kv_reuse=False, batch_size=5)
    expected = default.score_windows(windows, ids)
    for other in (small.score_windows(windows, ids), full.score_windows(windows, ids)):
        for got, want in zip(other, expected):
            assert got.pairs_kept == want.pairs_kept and got.segments == want.segments
            assert_close(got.score, want.score, "score")
    assert [r.segments for r in expected] == [16, 16, 7]


def test_sampled_matches_released_draw(model_dirs):
    """seed_rule='fixed:11' reproduces run.py's draw for a file's first document: segment
    subsampling (16 full segments, N_max = 1024 // 128 = 8) and then 20 of the 28 pairs."""
    ids = window(5)
    released = Released(model_dirs["opt"], chunk_num=1024 // C, threshold=-1)
    lds, kept = released.score(ids, 20, rng=random.Random(11))
    scorer = ProLongScorer.from_pretrained(model_dirs["opt"], pairs=20, threshold=-1,
                                           window_size=1024, seed_rule="fixed:11")
    assert_matches(scorer.score_window(ids, "any"), lds, kept, segments=8, scored=20)


def test_lds_formula_matches_released_compute_lds():
    """The pure LDS step on synthetic perplexities: sampled subsets, single-pair rows,
    softmax entries that underflow to exactly 0 (the 1e-12 path), threshold 0.1."""
    rng = np.random.default_rng(7)
    for trial in range(30):
        n, n_max = int(rng.integers(2, 12)), 16
        alone = list(rng.uniform(5, 50, n))
        candidates = [(i, j) for i in range(n) for j in range(i)]
        chosen = [candidates[k] for k in rng.permutation(len(candidates))[
            :int(rng.integers(1, len(candidates) + 1))]]
        pair = [float(alone[i] * rng.uniform(0.5, 1.3)) for i, _ in chosen]
        if trial % 3 == 0:  # huge drops: softmax probabilities of exactly 0
            pair = [p - 2000 * (k % 2) for k, p in enumerate(pair)]
        matrix = [[float("inf")] * n for _ in range(n)]
        for (i, j), p in zip(chosen, pair):
            matrix[i][j] = p
        released = Released.__new__(Released)
        released.chunk_num, released.dlt_ppl_threshold = n_max, 0.1
        lds, kept = released.compute_lds(alone, matrix)
        result = lds_from_perplexities("w", alone, chosen, pair, n_max=n_max, threshold=0.1)
        assert result.pairs_kept == len(kept)
        assert abs(result.score - lds) <= 1e-12 * max(1.0, abs(lds))
        if kept:
            assert result.mean_specificity == pytest.approx(np.mean([k[2] for k in kept]),
                                                            rel=1e-12)
    # DST exactly at the threshold is not kept (strict >, run.py:166): (10 - 9) / 10 == 0.1
    released = Released.__new__(Released)
    released.chunk_num, released.dlt_ppl_threshold = 4, 0.1
    inf = float("inf")
    lds, kept = released.compute_lds([10.0, 10.0, 10.0],
                                     [[inf] * 3, [9.0, inf, inf], [8.0, 9.0, inf]])
    result = lds_from_perplexities("w", [10.0, 10.0, 10.0], [(1, 0), (2, 0), (2, 1)],
                                   [9.0, 8.0, 9.0], n_max=4, threshold=0.1)
    assert result.pairs_kept == len(kept) == 1 and result.score == pytest.approx(lds, rel=1e-12)


# --------------------------------------------------------------------------------------
# Deterministic sampling
# --------------------------------------------------------------------------------------

def test_sampled_scores_are_deterministic(model_dirs):
    """pairs=50 of 120: a window's score depends only on its id and ids, not on batch order,
    batch composition, re-runs or the scorer instance."""
    windows = {f"doc-{k}#0": window(10 + k) for k in range(3)}
    names = list(windows)
    first = ProLongScorer.from_pretrained(model_dirs["llama"], pairs=50)
    batch = first.score_windows([windows[n] for n in names], names)
    again = first.score_windows([windows[n] for n in names], names)
    reordered = first.score_windows([windows[n] for n in reversed(names)], names[::-1])[::-1]
    alone = [first.score_window(windows[n], n) for n in names]
    fresh = ProLongScorer.from_pretrained(model_dirs["llama"], pairs=50)
    fresh_results = [fresh.score_window(windows[n], n) for n in names]
    for results in (again, reordered, alone, fresh_results):
        for got, want in zip(results, batch):
            assert got.window_id == want.window_id
            assert got.pairs_kept == want.pairs_kept and got.pairs_scored == 50
            assert got.score == pytest.approx(want.score, rel=1e-6)
    assert any(r.pairs_kept > 0 for r in batch)
    # the draw follows the window id: the same ids under another id draw other pairs
    ids = windows[names[0]]
    assert first.plan(ids, "x").pairs != first.plan(ids, "y").pairs
    assert first.plan(ids, "x").pairs == fresh.plan(ids, "x").pairs


# --------------------------------------------------------------------------------------
# Early exits, as released
# --------------------------------------------------------------------------------------

def test_too_few_pairs_scores_zero_without_pair_passes(model_dirs, monkeypatch):
    """W=2048, C=128: 16 segments, 120 candidate pairs < 500 -> 0 (run.py:113-114)."""
    ids = window(20)
    assert Released(model_dirs["opt"], chunk_num=16, threshold=0.1).score(
        ids, 500, rng=random.Random(0))[0] == 0
    scorer = ProLongScorer.from_pretrained(model_dirs["opt"])  # pairs=500 default
    monkeypatch.setattr(scorer, "perplexities", lambda *a, **k: pytest.fail("model ran"))
    result = scorer.score_window(ids, "short")
    assert (result.score, result.reason, result.segments, result.pairs_scored,
            result.pairs_kept) == (0.0, REASON_TOO_FEW_PAIRS, 16, 0, 0)
    assert result.mean_strength is None


def test_too_few_segments_scores_zero(model_dirs):
    scorer = ProLongScorer.from_pretrained(model_dirs["opt"], pairs=-1)
    # 255 tokens: one full segment, N_max = 1 (run.py: ZeroDivisionError -> 0)
    ids = window(21, 255)
    assert Released(model_dirs["opt"], chunk_num=1, threshold=0.1).score(ids, -1)[0] == 0
    result = scorer.score_window(ids, "one-segment")
    assert (result.score, result.reason, result.segments) == (0.0, REASON_TOO_FEW_SEGMENTS, 1)
    # a fixed window size: a re-tokenized text shorter than C has no segment at all
    fixed = ProLongScorer.from_pretrained(model_dirs["opt"], pairs=-1, window_size=W)
    result = fixed.score_window(window(22, 100), "tiny")
    assert (result.score, result.reason, result.segments) == (0.0, REASON_TOO_FEW_SEGMENTS, 0)
    # mixed batch: early exits keep their place among scored windows
    mixed = scorer.score_windows([window(21, 255), window(23, 512)], ["x", "y"])
    assert mixed[0].reason == REASON_TOO_FEW_SEGMENTS and mixed[1].reason is None
    assert mixed[1].pairs_scored == 6


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------

def test_pickled_only_folder_needs_allow_pickle(model_dirs, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    model = tiny_model("llama")
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(InputError) as caught:
        ProLongScorer.from_pretrained(folder)
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message and "--allow-pickle" in message
    ids = window(30)
    pickled = ProLongScorer.from_pretrained(folder, allow_pickle=True, pairs=-1, threshold=-1)
    safe = ProLongScorer.from_pretrained(model_dirs["llama"], pairs=-1, threshold=-1)
    assert pickled.score_window(ids, "w").score == pytest.approx(
        safe.score_window(ids, "w").score, rel=1e-6)


@pytest.mark.parametrize("kind", ["distilbert", "bert-encoder"])
def test_non_causal_model_is_refused(tmp_path, kind):
    folder = tmp_path / kind
    small = {"vocab_size": VOCAB, "max_position_embeddings": 64}
    if kind == "distilbert":
        DistilBertModel(DistilBertConfig(dim=32, hidden_dim=64, n_layers=1, n_heads=2,
                                         **small)).save_pretrained(folder)
    else:
        BertForMaskedLM(BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, **small)).save_pretrained(folder)
    with pytest.raises(InputError, match="not a causal language model") as caught:
        ProLongScorer.from_pretrained(folder)
    assert str(folder) in str(caught.value)


def test_unknown_model_type_and_missing_folder(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-model",
                                                    "auto_map": {"AutoConfig": "x.Y"}}))
    with pytest.raises(InputError, match="no-such-model") as caught:
        ProLongScorer.from_pretrained(folder)
    assert str(folder) in str(caught.value)
    with pytest.raises(InputError, match="does not exist"):
        ProLongScorer.from_pretrained(tmp_path / "missing")


def test_bad_settings(model_dirs):
    with pytest.raises(ConfigError, match="--pairs 0"):
        ProLongScorer.from_pretrained(model_dirs["opt"], pairs=0)
    with pytest.raises(ConfigError, match="--pairs -2"):
        ProLongScorer.from_pretrained(model_dirs["opt"], pairs=-2)
    with pytest.raises(ConfigError, match="--segment-size 1"):
        ProLongScorer.from_pretrained(model_dirs["opt"], segment_size=1)
    with pytest.raises(ConfigError, match="--segment-size 256 is larger than --window-size"):
        ProLongScorer.from_pretrained(model_dirs["opt"], segment_size=256, window_size=128)
    with pytest.raises(ConfigError, match="--seed-rule"):
        ProLongScorer.from_pretrained(model_dirs["opt"], seed_rule="process-global")
    with pytest.raises(ConfigError, match="--dtype"):
        ProLongScorer.from_pretrained(model_dirs["opt"], dtype="float8")
    scorer = ProLongScorer.from_pretrained(model_dirs["opt"])
    with pytest.raises(ConfigError, match="--segment-size 128 is larger than window 'w'"):
        scorer.score_window(window(40, 100), "w")
    with pytest.raises(InputError, match=f"window 'w': token id {VOCAB} is outside"):
        scorer.score_window([1, 2, VOCAB] * 100, "w")
    with pytest.raises(InputError, match="integer token ids"):
        scorer.score_window([0.5] * 300, "w")


# --------------------------------------------------------------------------------------
# Identity and tokenizer
# --------------------------------------------------------------------------------------

def test_scorer_id_covers_every_setting(model_dirs):
    base = ProLongScorer.from_pretrained(model_dirs["llama"])
    assert base.scorer_id() == ProLongScorer.from_pretrained(model_dirs["llama"]).scorer_id()
    assert base.scorer_id().startswith("pl-")
    fields = base.identity_fields()
    for key in ("model_config_sha256", "model_weights_sha256", "segment_size", "pairs",
                "threshold", "seed_rule", "math_version", "arithmetic", "dtype", "window_size"):
        assert key in fields
    variants = [
        ProLongScorer.from_pretrained(model_dirs["llama_seed1"]),
        ProLongScorer.from_pretrained(model_dirs["opt"]),
        ProLongScorer.from_pretrained(model_dirs["llama"], segment_size=64),
        ProLongScorer.from_pretrained(model_dirs["llama"], pairs=499),
        ProLongScorer.from_pretrained(model_dirs["llama"], threshold=0.2),
        ProLongScorer.from_pretrained(model_dirs["llama"], seed_rule="fixed:11"),
        ProLongScorer.from_pretrained(model_dirs["llama"], window_size=W),
        ProLongScorer.from_pretrained(model_dirs["llama"], dtype="bfloat16"),
    ]
    ids = {base.scorer_id()} | {v.scorer_id() for v in variants}
    assert len(ids) == len(variants) + 1
    # batching and KV reuse change rounding only: not part of the id
    assert ProLongScorer.from_pretrained(model_dirs["llama"], batch_size=7,
                                         kv_reuse=False).scorer_id() == base.scorer_id()


def write_tokenizer(folder: Path) -> None:
    """A tiny word-level tokenizer.json (the tokenizers library's own format)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({f"w{k}": k for k in range(VOCAB)}, unk_token="w0"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))


def test_tokenizer_dir(model_dirs, tmp_path):
    from longattn_spark.tokenizer import load_tokenizer_spec

    scorer = ProLongScorer.from_pretrained(model_dirs["opt"])
    assert scorer.tokenizer_dir is None and not scorer.has_tokenizer
    assert scorer.tokenizer_identity is None and scorer.tokenizer_sha256 is None
    folder = tmp_path / "with_tokenizer"
    shutil.copytree(model_dirs["opt"], folder)
    write_tokenizer(folder)
    moved = ProLongScorer.from_pretrained(folder)
    assert moved.tokenizer_dir == folder and moved.has_tokenizer
    spec = load_tokenizer_spec(str(folder))
    assert (moved.tokenizer_identity, moved.tokenizer_sha256) == (spec.identity, spec.sha256)
    assert moved.scorer_id() == scorer.scorer_id()


def test_kv_probe_failure_falls_back_to_recomputation(model_dirs, monkeypatch):
    scorer = ProLongScorer.from_pretrained(model_dirs["opt"], pairs=-1, threshold=-1)
    expected = ProLongScorer.from_pretrained(model_dirs["opt"], pairs=-1, threshold=-1,
                                             kv_reuse=False).score_window(window(50), "w")

    def broken(*args, **kwargs):
        raise RuntimeError("no cache for you")

    monkeypatch.setattr(scorer, "_perplexities_kv", broken)
    result = scorer.score_window(window(50), "w")
    assert scorer.kv_reuse is False and "no cache for you" in scorer.kv_note
    assert result.score == pytest.approx(expected.score, rel=1e-9)
