"""Algorithm 1 of the LongAttn paper (Appendix A): cutting a document's tokens into windows.

A pure function of the document length, so it is tested without a tokenizer or Spark.
"""

from __future__ import annotations


def sliding_windows(n_tokens: int, window_size: int) -> list[tuple[int, int]]:
    """The (start, end) token spans of Algorithm 1, in the published order.

    With ``l = 0``, ``r = n_tokens`` and ``W = window_size``: while ``r - l > 3W`` take
    ``[l, l+W)`` then ``[r-W, r)`` and move both ends in by ``W``; then, with ``D = r - l``,
    ``W < D <= 2W`` gives the front and back windows (they overlap), and ``2W < D <= 3W`` gives
    front, middle (start ``l + (D - W) // 2``) and back.

    A document shorter than ``W`` gives no window, and, as published, neither does one of
    exactly ``W`` tokens (``D = W`` matches neither branch). Every window is exactly ``W``
    tokens long.
    """
    if window_size <= 0:
        raise ValueError(f"window_size must be positive, got {window_size}")
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    if n_tokens < window_size:
        return []
    w = window_size
    left, right = 0, n_tokens
    spans: list[tuple[int, int]] = []
    while right - left > 3 * w:
        spans.append((left, left + w))
        left += w
        spans.append((right - w, right))
        right -= w
    delta = right - left
    if w < delta <= 2 * w:
        spans += [(left, left + w), (right - w, right)]
    elif 2 * w < delta <= 3 * w:
        middle = left + (delta - w) // 2
        spans += [(left, left + w), (middle, middle + w), (right - w, right)]
    return spans
