"""Algorithm 1 (paper Appendix A, DESIGN.md) as properties of ``sliding_windows``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longattn_spark.ingest.windowing import sliding_windows


def published_windows(n: int, w: int) -> list[tuple[int, int]]:
    """The pseudocode of Algorithm 1, line by line, on a list of token positions."""
    data = list(range(n))
    if len(data) < w:
        return []
    left, right = 0, len(data)
    out = []
    while right - left > 3 * w:
        out.append(data[left:left + w])
        left = left + w
        out.append(data[right - w:right])
        right = right - w
    delta = right - left
    if w < delta <= 2 * w:
        out += [data[left:left + w], data[right - w:right]]
    elif 2 * w < delta <= 3 * w:
        m = left + (delta - w) // 2
        out += [data[left:left + w], data[m:m + w], data[right - w:right]]
    return [(chunk[0], chunk[-1] + 1) for chunk in out]


def expected_count(n: int, w: int) -> int:
    """Count implied by the DESIGN.md text: 2 per loop turn, then 2 or 3 (or 0)."""
    if n <= w:
        return 0
    loops = 0
    span = n
    while span > 3 * w:
        loops += 1
        span -= 2 * w
    return 2 * loops + (2 if span <= 2 * w else 3)


sizes = st.integers(min_value=1, max_value=64)


@settings(max_examples=400, deadline=None)
@given(w=sizes, n=st.integers(min_value=0, max_value=1000))
def test_matches_published_pseudocode(w, n):
    assert sliding_windows(n, w) == published_windows(n, w)


@settings(max_examples=400, deadline=None)
@given(w=sizes, n=st.integers(min_value=0, max_value=1000))
def test_every_window_has_length_w_and_lies_in_the_document(w, n):
    for start, end in sliding_windows(n, w):
        assert end - start == w
        assert 0 <= start < end <= n


@settings(max_examples=400, deadline=None)
@given(w=sizes, n=st.integers(min_value=0, max_value=1000))
def test_count_as_published(w, n):
    assert len(sliding_windows(n, w)) == expected_count(n, w)


@settings(max_examples=300, deadline=None)
@given(w=sizes, extra=st.integers(min_value=1, max_value=1000))
def test_order_is_front_back_pairs_then_the_remainder(w, extra):
    n = w + extra
    spans = sliding_windows(n, w)
    loops = (len(spans) - (2 if len(spans) % 2 == 0 else 3)) // 2
    for i in range(loops):
        assert spans[2 * i] == (i * w, (i + 1) * w)              # from the front
        assert spans[2 * i + 1] == (n - (i + 1) * w, n - i * w)  # from the back
    tail = spans[2 * loops:]
    left, right = loops * w, n - loops * w
    assert tail[0] == (left, left + w)
    assert tail[-1] == (right - w, right)
    if len(tail) == 3:
        assert tail[1][0] == left + (right - left - w) // 2


@settings(max_examples=300, deadline=None)
@given(w=sizes, extra=st.integers(min_value=1, max_value=1000))
def test_documents_longer_than_w_are_fully_covered(w, extra):
    n = w + extra
    covered = set()
    for start, end in sliding_windows(n, w):
        covered.update(range(start, end))
    assert covered == set(range(n))


@given(w=sizes)
def test_exactly_w_tokens_gives_no_window_as_published(w):
    assert sliding_windows(w, w) == []
    assert sliding_windows(w - 1, w) == []
    assert len(sliding_windows(w + 1, w)) == 2


@pytest.mark.parametrize("n,expected", [
    (32768 * 3, [(0, 32768), (32768, 65536), (65536, 98304)]),
    (32768 * 2, [(0, 32768), (32768, 65536)]),
    (32768 * 4, [(0, 32768), (98304, 131072), (32768, 65536), (65536, 98304)]),
    # 3W+1: one loop turn (front, back), then W+1 tokens are left: their front and back
    (32768 * 3 + 1, [(0, 32768), (65537, 98305), (32768, 65536), (32769, 65537)]),
])
def test_paper_scale_examples(n, expected):
    assert sliding_windows(n, 32768) == expected


def test_rejects_nonsense_sizes():
    with pytest.raises(ValueError, match="window_size"):
        sliding_windows(10, 0)
    with pytest.raises(ValueError, match="n_tokens"):
        sliding_windows(-1, 4)
