"""Repetition statistics (``--method repetition``) against a plain-Python reference, on
hand-made id sequences whose answers are known and on real token windows."""

from __future__ import annotations

import sysconfig
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from longattn_spark.scorers.repetition.stats import COMPONENTS, repetition_stats


def reference_stats(ids: list[int]) -> dict[str, float]:
    """The README's definitions, written out with tuples, Counters and sets."""
    n_tokens = len(ids)
    out: dict[str, float] = {}

    def grams(n: int) -> list[tuple[int, ...]]:
        return [tuple(ids[i:i + n]) for i in range(n_tokens - n + 1)]

    def covered(starts: list[int], n: int) -> float:
        positions = {p for i in starts for p in range(i, i + n)}
        return len(positions) / n_tokens if n_tokens else 0.0

    for n in (2, 3, 4):
        g = grams(n)
        counts = Counter(g)
        if not g:
            out[f"top_{n}gram"] = 0.0
            continue
        best = max(counts.values())
        top = next(x for x in g if counts[x] == best)  # the first to occur among the most
        out[f"top_{n}gram"] = covered([i for i, x in enumerate(g) if x == top], n)
    for n in range(5, 11):
        g = grams(n)
        counts = Counter(g)
        out[f"dup_{n}gram"] = covered([i for i, x in enumerate(g) if counts[x] > 1], n)
    g = grams(10)
    out["distinct_10gram"] = len(set(g)) / len(g) if g else 1.0
    raw = b"".join(int(i).to_bytes(4, "little", signed=True) for i in ids)
    out["compression"] = len(raw) / len(zlib.compress(raw, 6))
    return out


def test_no_repeats_at_all():
    ids = list(range(1000, 1200))
    stats = repetition_stats(np.array(ids))
    assert stats["dup_5gram"] == 0.0 and stats["dup_10gram"] == 0.0
    assert stats["distinct_10gram"] == 1.0
    assert stats["top_2gram"] == pytest.approx(2 / 200)  # one bigram, once
    assert stats == pytest.approx(reference_stats(ids))


def test_an_exact_repeat_is_covered_whole():
    passage = list(range(100, 160))  # 60 distinct tokens, repeated: every 10-gram twice
    ids = passage * 2
    stats = repetition_stats(np.array(ids))
    assert stats["dup_10gram"] == 1.0 and stats["dup_5gram"] == 1.0
    assert stats["distinct_10gram"] == pytest.approx(60 / 111)  # 51 of the first copy + 9 across
    assert stats == pytest.approx(reference_stats(ids))


def test_one_copied_span():
    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.permutation(5000)[:300]]  # all distinct
    ids[250:258] = ids[10:18]  # one 8-gram copied: covers 16 tokens for n <= 8, none above
    stats = repetition_stats(np.array(ids))
    assert stats["dup_8gram"] == pytest.approx(16 / 300)
    assert stats["dup_9gram"] == 0.0
    assert stats["dup_5gram"] == pytest.approx(16 / 300)
    assert stats == pytest.approx(reference_stats(ids))


def test_one_phrase_repeated():
    ids = [7, 8] * 50  # "7 8" bigram 50 times covers every token; "8 7" 49 times
    stats = repetition_stats(np.array(ids))
    assert stats["top_2gram"] == 1.0
    assert stats == pytest.approx(reference_stats(ids))


@pytest.mark.parametrize("length", [0, 1, 4, 9, 10, 11])
def test_shorter_than_the_ngrams(length):
    ids = list(range(length))
    stats = repetition_stats(np.array(ids, dtype=np.int64))
    assert stats["dup_10gram"] == 0.0 and stats["distinct_10gram"] == 1.0
    assert stats == pytest.approx(reference_stats(ids))


def test_random_sequences_equal_the_reference():
    rng = np.random.default_rng(1)
    for _ in range(60):
        vocab = int(rng.integers(2, 40))
        ids = [int(i) for i in rng.integers(0, vocab, int(rng.integers(11, 300)))]
        assert repetition_stats(np.array(ids)) == pytest.approx(reference_stats(ids)), ids


def test_real_token_windows_equal_the_reference(llama3_tokenizer_dir):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(llama3_tokenizer_dir / "tokenizer.json"))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("typing.py", "argparse.py"):
        text = (stdlib / name).read_text(encoding="utf-8")
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        for start in (0, 4000):
            window = ids[start:start + 2048]
            got = repetition_stats(np.array(window))
            assert list(got) == list(COMPONENTS)
            assert got == pytest.approx(reference_stats(window))
            assert 1.0 < got["compression"] < 10.0
