"""Repetition statistics (``--method repetition``) against a plain-Python reference, on
hand-made id sequences whose answers are known and on real token windows."""

from __future__ import annotations

import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from zlib_ng import zlib_ng

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
    out["compression"] = len(raw) / len(zlib_ng.compress(raw, 6))  # zlib level 6, zlib-ng's
    out["lag_match"] = reference_lag_match(ids)
    out["min_split_jaccard"] = reference_min_split_jaccard(ids)
    return out


def reference_min_split_jaccard(ids: list[int]) -> float:
    """The README's ``min_split_jaccard``: the sets before and after every point of the middle
    half, intersected and joined."""
    n_tokens = len(ids)
    margin = max(n_tokens // 4, 1)
    shares = [len(set(ids[:p]) & set(ids[p:])) / len(set(ids[:p]) | set(ids[p:]))
              for p in range(margin, n_tokens - margin + 1)]
    return min(shares, default=1.0)


def reference_lag_match(ids: list[int]) -> float:
    """The README's ``lag_match``: the last start of each bigram in a dict, the gaps between
    consecutive starts in a Counter, the four most frequent in [16, N // 2] (ties: smaller
    first), the best share of equal tokens at one of them."""
    n_tokens = len(ids)
    last: dict[tuple[int, int], int] = {}
    gaps: Counter = Counter()
    for t in range(n_tokens - 1):
        bigram = (ids[t], ids[t + 1])
        if bigram in last and 16 <= t - last[bigram] <= n_tokens // 2:
            gaps[t - last[bigram]] += 1
        last[bigram] = t
    lags = sorted(gaps, key=lambda lag: (-gaps[lag], lag))[:4]
    return max((sum(ids[t] == ids[t - lag] for t in range(lag, n_tokens)) / (n_tokens - lag)
                for lag in lags), default=0.0)


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


def test_a_period_gives_its_lag_match():
    """A passage of 40 distinct tokens six times: every token past 40 equals the token 40
    before it (lag_match 1.0). With every fifth token of each copy replaced by a new one, the
    replaced offsets moving by one from copy to copy, a token equals the one 40 before it
    when both are kept: 3 of every 5 offsets, 0.6 of the 200 tokens past the first copy."""
    passage = list(range(500, 540))
    ids = passage * 6
    assert repetition_stats(np.array(ids))["lag_match"] == 1.0
    fresh = iter(range(10_000, 20_000))
    changed = []
    for copy in range(6):
        changed += [next(fresh) if (i + copy) % 5 == 0 else tok for i, tok in enumerate(passage)]
    got = repetition_stats(np.array(changed))["lag_match"]
    assert got == pytest.approx(reference_lag_match(changed))
    assert got == pytest.approx(sum(changed[t] == changed[t - 40] for t in range(40, 240)) / 200)
    assert got == pytest.approx(3 / 5)


def test_repeats_that_do_not_recur_at_one_distance_have_no_period():
    """Text that repeats phrases at scattered distances (here: 30 bigrams each copied once
    at a distance of its own, 20 + 7i) has a low lag_match, whatever its duplicate shares;
    fewer than 16 tokens apart and beyond half the window do not count."""
    rng = np.random.default_rng(3)
    ids = [int(i) for i in rng.permutation(100_000)[:2000]]
    for i in range(30):
        start = 50 * i + 10
        ids[start + 20 + 7 * i:start + 22 + 7 * i] = ids[start:start + 2]
    got = repetition_stats(np.array(ids))
    assert got["lag_match"] == pytest.approx(reference_lag_match(ids))
    assert got["lag_match"] < 0.01
    short = [1, 2] + [int(i) for i in rng.permutation(1000)[:10] + 10] + [1, 2]  # gap 12
    assert repetition_stats(np.array(short))["lag_match"] == 0.0
    far = [1, 2] + list(range(100, 140)) + [1, 2]  # gap 42 > 44 // 2
    assert repetition_stats(np.array(far))["lag_match"] == 0.0


def test_a_seam_in_the_middle_half_lowers_min_split_jaccard():
    """A text of 20 recurring tokens (a cycle) after a text of tokens all its own, 400 tokens
    in all, the middle half [100, 300]. Joined at 150, no token is on both sides of the
    join: 0.0. Joined at 60, outside the middle half, the seam is not seen: at every point of
    the middle half the 20 recurring tokens are on both sides and the 60 of the first text
    before it, 20 of 80 distinct tokens: 0.25. One text alone: every token on both sides."""
    def joined(at: int) -> list[int]:
        return list(range(1000, 1000 + at)) + (list(range(20)) * 20)[:400 - at]

    for at, expected in ((150, 0.0), (60, 0.25)):
        got = repetition_stats(np.array(joined(at)))["min_split_jaccard"]
        assert got == pytest.approx(expected)
        assert got == pytest.approx(reference_min_split_jaccard(joined(at)))
    assert repetition_stats(np.array(list(range(20)) * 20))["min_split_jaccard"] == 1.0


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 9, 10, 11])
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
        if rng.random() < 0.5:  # a period with changed tokens: lag_match well above zero
            period = int(rng.integers(16, 60))
            ids = (ids[:period] * 8)[:len(ids) + 100]
            for t in rng.integers(0, len(ids), len(ids) // 6):
                ids[int(t)] = int(rng.integers(0, vocab))
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


def test_an_executor_with_another_zlib_ng_stops_with_one_line():
    """compression depends on zlib-ng's version: the scorer_id records the driver's, and a
    worker with another stops before it scores (its values would differ under that id)."""
    from longattn_spark.errors import ConfigError
    from longattn_spark.scorers.repetition.method import METHOD, RepetitionSettings
    from longattn_spark.scorers.repetition.stats import ZLIB_NG_VERSION
    from longattn_spark.scorers.settings import RunSettings

    run = RunSettings(location=None, device="cpu", dtype="float64", allow_pickle=False,
                      threads=1)
    assert METHOD.load(RepetitionSettings(run=run, zlib_ng=ZLIB_NG_VERSION), "cpu") is not None
    with pytest.raises(ConfigError) as err:
        METHOD.load(RepetitionSettings(run=run, zlib_ng="2.0.7"), "cpu")
    message = str(err.value)
    assert "\n" not in message
    assert f"zlib-ng library is {ZLIB_NG_VERSION}" in message and "is 2.0.7" in message
