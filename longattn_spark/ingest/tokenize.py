"""Tokenizing documents in batches, with bounded memory: long documents are cut at word
boundaries into pieces tokenized separately (the same ids as the whole text), and only
compact ids and offsets are kept (pure; the tokenizer itself: ``longattn_spark.tokenizer``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from longattn_spark.tokenizer import TokenizerSpec, get_tokenizer

# A space between two letters is a pre-token boundary for the GPT-2/Llama-3 style split regex
# (``[^\r\n\p{L}\p{N}]?\p{L}+`` ends before the space and the next pre-token starts with it)
# and for Metaspace tokenizers, so tokenizing the pieces separately gives the same ids as
# tokenizing the whole text.
_WORD_BOUNDARY = re.compile(r"(?<=[^\W\d_]) (?=[^\W\d_])")


def piece_starts(text: str, chunk_chars: int) -> list[int]:
    """Start offsets of the pieces a long text is tokenized in: each piece is about
    ``chunk_chars`` long and starts at a space between two letters. A text without such a
    space after a cut point stays in one piece."""
    starts = [0]
    if chunk_chars <= 0:
        return starts
    position = chunk_chars
    while position < len(text):
        match = _WORD_BOUNDARY.search(text, position)
        if match is None:
            break
        starts.append(match.start())
        position = match.start() + chunk_chars
    return starts


@dataclass
class DocTokens:
    """Token ids of one document and the character offsets of chosen tokens."""

    ids: np.ndarray  # int32 [n_tokens]
    _encodings: list  # (piece_char_start, piece_token_start, Encoding | (starts, ends))

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])

    def char_span(self, token_start: int, token_end: int) -> tuple[int, int]:
        """(first character of token ``token_start``, character after token
        ``token_end - 1``) in the document text."""
        return (self._token_chars(token_start)[0], self._token_chars(token_end - 1)[1])

    def _token_chars(self, index: int) -> tuple[int, int]:
        for char_base, token_base, encoding in reversed(self._encodings):
            if index >= token_base:
                local = index - token_base
                if isinstance(encoding, tuple):
                    starts, ends = encoding
                    return char_base + int(starts[local]), char_base + int(ends[local])
                start, end = encoding.token_to_chars(local)
                return char_base + start, char_base + end
        raise IndexError(index)


def tokenize_documents(spec: TokenizerSpec, texts: Sequence[str], *, chunk_chars: int,
                       batch_chars: int = 4_000_000) -> Iterator[DocTokens]:
    """Tokenize ``texts`` (no special tokens) and yield one ``DocTokens`` per text, in order.

    Texts are encoded with ``encode_batch`` (parallel in Rust) in groups of at most about
    ``batch_chars`` characters. A text longer than ``chunk_chars`` is cut at word boundaries
    (``piece_starts``) into pieces encoded separately; of those only compact numpy ids and
    offsets are kept, so a huge document costs a few bytes per token, never the tokenizer's
    per-token objects for the whole document.
    """
    tokenizer = get_tokenizer(spec)
    pending: list[tuple[int, int, object]] = []  # pieces of the document being assembled
    for doc_index, piece_start, is_last, encoding in _encoded_pieces(
            tokenizer, texts, chunk_chars, batch_chars):
        pending.append((piece_start, doc_index, encoding))
        if is_last:
            yield _doc_tokens([p[0] for p in pending], [p[2] for p in pending])
            pending = []


def _encoded_pieces(tokenizer, texts: Sequence[str], chunk_chars: int, batch_chars: int):
    """(doc index, piece char start, last piece of its doc?, Encoding) in text order."""
    def pieces():
        for doc_index, text in enumerate(texts):
            starts = piece_starts(text, chunk_chars) if len(text) > chunk_chars else [0]
            bounds = starts + [len(text)]
            for i, (a, b) in enumerate(itertools.pairwise(bounds)):
                yield doc_index, a, i == len(starts) - 1, text[a:b]

    for group in _groups_by_chars(pieces(), batch_chars):
        encodings = tokenizer.encode_batch([g[3] for g in group], add_special_tokens=False)
        for (doc_index, start, is_last, _), encoding in zip(group, encodings):
            yield doc_index, start, is_last, encoding


def _doc_tokens(piece_char_starts: list[int], encodings: list) -> DocTokens:
    if len(encodings) == 1 and piece_char_starts[0] == 0:
        ids = np.asarray(encodings[0].ids, dtype=np.int32)
        return DocTokens(ids=ids, _encodings=[(0, 0, encodings[0])])
    parts, compact, token_base = [], [], 0
    for char_base, encoding in zip(piece_char_starts, encodings):
        ids = np.asarray(encoding.ids, dtype=np.int32)
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        compact.append((char_base, token_base, (offsets[:, 0], offsets[:, 1])))
        parts.append(ids)
        token_base += ids.shape[0]
    return DocTokens(ids=np.concatenate(parts) if parts else np.zeros(0, np.int32),
                     _encodings=compact)


def _groups_by_chars(items: Iterable[tuple], budget: int) -> Iterator[list[tuple]]:
    """Consecutive items (whose last field is a text) grouped to about ``budget`` chars."""
    group: list[tuple] = []
    size = 0
    for item in items:
        if group and size + len(item[-1]) > budget:
            yield group
            group, size = [], 0
        group.append(item)
        size += len(item[-1])
    if group:
        yield group
