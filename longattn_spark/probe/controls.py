"""Control windows of the probe, built from token arrays (pure: numpy, no Spark).

Each control is derived from one sampled natural window A of W tokens and is W tokens long,
like every window. ``L`` is the scored length (``--seq-len``, by default W) and ``k`` the
scorer's minimum distance; the parameters below are drawn within ``L`` so that what the scorer
sees (BOS + the first L - 1 tokens) holds the property the control is built for:

- ``splice``: A's first ``s`` tokens, then the first ``W - s`` tokens of a window B of another
  document of the same category; ``s`` uniform in ``[k, L - k]``.
- ``shuffle``: A cut into blocks of ``b`` tokens (``b < k``, ``b`` divides W; by default the
  largest divisor of W not above ``k / 4``), the blocks permuted (never the identity).
- ``repeat``: A's first ``p`` tokens repeated to W tokens (token ``i`` is ``A[i mod p]``),
  ``p`` uniform in ``[k, L // 2]``, so every copy is at least k tokens from its original.
- ``concat``: pieces shorter than ``k`` (lengths uniform in ``[ceil(k/2), k - 1]``) taken at
  random offsets from windows of other documents of the category, consecutive pieces from
  different documents, to W tokens.
- ``nearrepeat``: as ``repeat`` (``p`` uniform in ``[k, L // 2]``, token ``i`` is
  ``A[i mod p]``), but in the copies (``i >= p``) each token is replaced, with probability
  ``share`` (``--near-repeat-share``, default 0.15), by a token drawn uniformly from A's W
  tokens: copy-paste with edits, boilerplate with changed fields. The first ``p`` tokens are
  A's own.

BOS: windows hold no BOS (ingest tokenizes without special tokens; the scorer prepends BOS to
every scored sequence); controls are built from window tokens only, so the scorer adds exactly
one BOS to a control as it does to A.

Every draw comes from a generator seeded by (probe seed, A's window_id, kind): the same
sample gives the same controls on every run and machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from longattn_spark.errors import ConfigError

KINDS = ("splice", "shuffle", "repeat", "concat", "nearrepeat")
#: the kinds a probe builds unless told otherwise
DEFAULT_KINDS = KINDS
#: nearrepeat: the share of copied tokens replaced by tokens drawn from A
DEFAULT_NEAR_REPEAT_SHARE = 0.15
#: kinds that take tokens from other documents of the category, and how many they need
OTHER_DOCUMENTS_NEEDED = {"splice": 1, "concat": 2}


@dataclass(frozen=True)
class SourceWindow:
    """A window of the windows table, as the probe reads it."""

    window_id: str
    doc_id: str
    input_ids: np.ndarray  # int32 [W]


@dataclass(frozen=True)
class Control:
    kind: str
    window_id: str                      # A's window_id
    other_window_ids: tuple[str, ...]   # windows whose tokens a splice or concat took
    param: int                          # s, b, p, or the number of concat pieces
    input_ids: np.ndarray               # int32 [W]


def parse_kinds(text: str | Sequence[str]) -> tuple[str, ...]:
    """The control kinds of ``--kinds`` (comma separated), in the order given, or a one-line
    error naming the unknown one."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t for t in items if t]
    if not items:
        raise ConfigError(f"--kinds is empty; use some of {','.join(KINDS)}")
    for item in items:
        if item not in KINDS:
            raise ConfigError(f"--kinds: unknown control kind {item!r}; known: "
                              f"{','.join(KINDS)}")
    return tuple(dict.fromkeys(items))


def check_lengths(seq_len: int, min_distance: int, window_size: int,
                  where: str = "--min-distance") -> None:
    """k must leave room for the controls: ``k < L / 2`` (splice draws s in [k, L - k],
    repeat p in [k, L / 2]) and L must not exceed W."""
    if min_distance < 1:
        raise ConfigError(f"{where} {min_distance}: must be >= 1")
    if 2 * min_distance >= seq_len:
        raise ConfigError(f"{where} {min_distance} >= L/2 = {seq_len / 2:g} (L = {seq_len}): "
                          f"the probe's controls need k < L/2")
    if seq_len > window_size:
        raise ConfigError(f"--seq-len {seq_len} is longer than the windows ({window_size})")


def default_block(window_size: int, min_distance: int) -> int:
    """The shuffle's block: the largest divisor of W that is at most k / 4 (at least 1)."""
    limit = max(1, min_distance // 4)
    return max(d for d in range(1, limit + 1) if window_size % d == 0)


def check_block(block: int, window_size: int, min_distance: int) -> None:
    if block < 1 or block >= min_distance or window_size % block:
        raise ConfigError(f"--shuffle-block {block}: must be < k = {min_distance} and divide "
                          f"the window size {window_size}")


def control_rng(seed: int, window_id: str, kind: str) -> np.random.Generator:
    """The generator of one control: a function of (probe seed, A's window_id, kind) only."""
    digest = hashlib.sha256(f"{seed}\x1f{window_id}\x1f{kind}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def splice(a: SourceWindow, others: Sequence[SourceWindow], seq_len: int, min_distance: int,
           rng: np.random.Generator) -> Control:
    width = len(a.input_ids)
    s = int(rng.integers(min_distance, seq_len - min_distance + 1))
    b = others[int(rng.integers(len(others)))]
    ids = np.concatenate([a.input_ids[:s], b.input_ids[:width - s]])
    return Control("splice", a.window_id, (b.window_id,), s, ids.astype(np.int32))


def shuffle(a: SourceWindow, block: int, rng: np.random.Generator) -> Control:
    width = len(a.input_ids)
    n = width // block
    order = rng.permutation(n)
    if n > 1 and np.array_equal(order, np.arange(n)):
        order = np.roll(order, 1)
    ids = a.input_ids.reshape(n, block)[order].reshape(width)
    return Control("shuffle", a.window_id, (), block, ids.astype(np.int32))


def repeat(a: SourceWindow, seq_len: int, min_distance: int,
           rng: np.random.Generator) -> Control:
    width = len(a.input_ids)
    p = int(rng.integers(min_distance, seq_len // 2 + 1))
    ids = a.input_ids[np.arange(width) % p]
    return Control("repeat", a.window_id, (), p, ids.astype(np.int32))


def near_repeat(a: SourceWindow, seq_len: int, min_distance: int, share: float,
                rng: np.random.Generator) -> Control:
    """``repeat`` with edits: in the copies each token is, with probability ``share``, a token
    drawn uniformly from A instead (the first period is A's own)."""
    width = len(a.input_ids)
    p = int(rng.integers(min_distance, seq_len // 2 + 1))
    ids = a.input_ids[np.arange(width) % p].copy()
    replaced = rng.random(width) < share
    replaced[:p] = False
    ids[replaced] = a.input_ids[rng.integers(0, width, int(replaced.sum()))]
    return Control("nearrepeat", a.window_id, (), p, ids.astype(np.int32))


def check_share(share: float) -> float:
    """``--near-repeat-share`` must be a probability in (0, 1)."""
    if not 0 < share < 1:
        raise ConfigError(f"--near-repeat-share {share}: must be > 0 and < 1")
    return float(share)


def concat(a: SourceWindow, others: Sequence[SourceWindow], min_distance: int,
           rng: np.random.Generator) -> Control:
    """Pieces shorter than k from windows of other documents; consecutive pieces never come
    from the same document. ``others`` must span at least two documents."""
    width = len(a.input_ids)
    by_doc: dict[str, list[SourceWindow]] = {}
    for w in others:
        by_doc.setdefault(w.doc_id, []).append(w)
    docs = sorted(by_doc)
    shortest = max(1, -(-min_distance // 2))
    pieces, taken, previous, filled = [], [], None, 0
    while filled < width:
        choices = [d for d in docs if d != previous]
        doc = choices[int(rng.integers(len(choices)))]
        source = by_doc[doc][int(rng.integers(len(by_doc[doc])))]
        length = min(int(rng.integers(shortest, min_distance)), width - filled)
        start = int(rng.integers(0, len(source.input_ids) - length + 1))
        pieces.append(source.input_ids[start:start + length])
        taken.append(source.window_id)
        previous, filled = doc, filled + length
    ids = np.concatenate(pieces)
    return Control("concat", a.window_id, tuple(dict.fromkeys(taken)), len(pieces),
                   ids.astype(np.int32))


def skip_reason(kind: str, n_other_documents: int, n_documents: int) -> str | None:
    """Why ``kind`` cannot be built for a window whose category has ``n_documents``
    documents in the sample (``n_other_documents`` of them not the window's), else None."""
    needed = OTHER_DOCUMENTS_NEEDED.get(kind, 0)
    if n_other_documents >= needed:
        return None
    return (f"{kind} needs windows of {needed} document(s) other than the natural window's; "
            f"the category's sample has {n_documents} document(s)")


def build_controls(natural: Sequence[SourceWindow], donors: Sequence[SourceWindow],
                   kinds: Sequence[str], seed: int, seq_len: int, min_distance: int,
                   block: int, near_repeat_share: float = DEFAULT_NEAR_REPEAT_SHARE
                   ) -> tuple[list[Control], dict[str, str]]:
    """The controls of one category's natural sample, and the kinds skipped with why.

    ``donors``: windows of the category (the natural sample included) from which splice and
    concat take the tokens of other documents, sorted by window_id for determinism."""
    donors = sorted(donors, key=lambda w: w.window_id)
    documents = {w.doc_id for w in donors} | {w.doc_id for w in natural}
    controls: list[Control] = []
    skipped: dict[str, str] = {}
    for a in natural:
        others = [w for w in donors if w.doc_id != a.doc_id]
        n_other = len({w.doc_id for w in others})
        for kind in kinds:
            reason = skip_reason(kind, n_other, len(documents))
            if reason is not None:
                skipped.setdefault(kind, reason)
                continue
            rng = control_rng(seed, a.window_id, kind)
            if kind == "splice":
                controls.append(splice(a, others, seq_len, min_distance, rng))
            elif kind == "shuffle":
                controls.append(shuffle(a, block, rng))
            elif kind == "repeat":
                controls.append(repeat(a, seq_len, min_distance, rng))
            elif kind == "nearrepeat":
                controls.append(near_repeat(a, seq_len, min_distance, near_repeat_share, rng))
            else:
                controls.append(concat(a, others, min_distance, rng))
    return controls, skipped
