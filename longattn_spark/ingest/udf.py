"""The executor side of ingest: input documents in Arrow batches -> one status row per document
and one row per window (tokenize, then Algorithm 1's windows). Pure: no Spark session needed;
the output's Spark schema is written once and its Arrow schema derived from it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from longattn_spark.ingest.tokenize import tokenize_documents
from longattn_spark.ingest.windowing import sliding_windows
from longattn_spark.tables.schemas import REJECTS, WINDOWS, TableSpec
from longattn_spark.tokenizer import TokenizerSpec

ALREADY_INGESTED = "already_ingested"
WINDOWED = "windowed"
TOO_SHORT = "too_short"
CHANGED_TEXT = "changed_text"


def _columns(spec: TableSpec, *names: str) -> list[T.StructField]:
    """Columns of a table's schema as output fields (nullable: every row kind has them)."""
    return [T.StructField(name, spec.schema[name].dataType) for name in names]


#: One row per document (``kind`` doc: its status) and one per window (``kind`` window); the
#: columns the windows and rejects tables share with it are theirs.
OUT_SCHEMA = T.StructType([
    T.StructField("kind", T.StringType(), False),          # "doc" | "window"
    *_columns(WINDOWS, "doc_id", "category"),
    *_columns(REJECTS, "source"),
    T.StructField("content_key", T.StringType()),
    *_columns(WINDOWS, "doc_sha256"),
    T.StructField("occurrence", T.IntegerType()),
    T.StructField("status", T.StringType()),               # doc rows: windowed | reason
    *_columns(REJECTS, "detail"),
    T.StructField("doc_tokens", T.LongType()),
    *_columns(WINDOWS, "window_id", "window_index", "token_start", "n_tokens", "input_ids",
              "char_start", "char_end"),
])
_OUT_ARROW = to_arrow_schema(OUT_SCHEMA)
_PASS_THROUGH = ("doc_id", "category", "source", "content_key", "doc_sha256", "occurrence")


def window_id(category: str, doc_id: str, doc_sha256: str, tokenizer: str, window_size: int,
              token_start: int) -> str:
    """Deterministic window id: the same document (category, id and text), tokenizer and
    window size always give the same ids; another corpus reusing the ids does not."""
    key = f"{category}\x1f{doc_id}\x1f{doc_sha256}\x1f{tokenizer}\x1f{window_size}\x1f{token_start}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def window_batches(spec: TokenizerSpec, window_size: int, chunk_chars: int):
    """The mapInArrow function: input documents -> status rows and window rows."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from windows_of_batch(batch, spec, window_size, chunk_chars)

    return run


def windows_of_batch(batch: pa.RecordBatch, spec: TokenizerSpec, window_size: int,
                     chunk_chars: int, max_tokens_per_output: int = 8_000_000
                     ) -> Iterator[pa.RecordBatch]:
    """Tokenize the batch's documents and cut their windows (pure; no Spark needed)."""
    columns = {name: batch.column(name).to_pylist() for name in
               (*_PASS_THROUGH, "text", "reason", "detail")}
    builder = _OutputBuilder(max_tokens_per_output)
    to_tokenize = [i for i, reason in enumerate(columns["reason"]) if reason is None]
    for i, reason in enumerate(columns["reason"]):
        if reason is not None:
            builder.add_doc(_row(columns, i), reason, columns["detail"][i], None)
    texts = [columns["text"][i] for i in to_tokenize]
    for i, tokens in zip(to_tokenize, _tokenize_or_fail(spec, texts, chunk_chars)):
        row = _row(columns, i)
        if isinstance(tokens, Exception):
            builder.add_doc(row, "tokenizer_error", f"{type(tokens).__name__}: {tokens}", None)
            continue
        spans = sliding_windows(tokens.n_tokens, window_size)
        if not spans:
            builder.add_doc(row, TOO_SHORT, _too_short_detail(tokens.n_tokens, window_size),
                            tokens.n_tokens)
            continue
        builder.add_doc(row, WINDOWED, f"{len(spans)} windows", tokens.n_tokens)
        for index, (start, end) in enumerate(spans):
            char_start, char_end = tokens.char_span(start, end)
            wid = window_id(row["category"], row["doc_id"], row["doc_sha256"], spec.identity,
                            window_size, start)
            builder.add_window(row, wid, index, start, tokens.ids[start:end], char_start,
                               char_end)
        yield from builder.flush_if_full()
    yield from builder.flush()


def _row(columns: dict[str, list], i: int) -> dict:
    return {name: columns[name][i] for name in _PASS_THROUGH}


def _too_short_detail(n_tokens: int, window_size: int) -> str:
    if n_tokens == window_size:
        return (f"exactly {n_tokens} tokens = window size; Algorithm 1 as published gives no "
                "window for a span of exactly W")
    return f"{n_tokens} tokens < window size {window_size}"


def _tokenize_or_fail(spec: TokenizerSpec, texts: list[str], chunk_chars: int):
    """DocTokens per text; a text the tokenizer fails on becomes its exception (the others
    are still tokenized)."""
    try:
        batch = list(tokenize_documents(spec, texts, chunk_chars=chunk_chars))
    except Exception:  # noqa: BLE001 - any tokenizer failure: isolate the document below
        batch = None
    if batch is not None:
        yield from batch
        return
    for text in texts:
        try:
            yield next(tokenize_documents(spec, [text], chunk_chars=chunk_chars))
        except Exception as exc:  # noqa: BLE001 - becomes this document's rejects row
            yield exc


class _OutputBuilder:
    """Accumulates output rows column-wise; window ids stay numpy until the Arrow batch."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._reset()

    def _reset(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in _OUT_ARROW.names if
                                      name != "input_ids"}
        self.id_parts: list[np.ndarray] = []
        self.lengths: list[int] = []
        self.tokens = 0

    def add_doc(self, row: dict, status: str, detail: str | None, doc_tokens: int | None
                ) -> None:
        self._append(kind="doc", **row, status=status, detail=detail, doc_tokens=doc_tokens)
        self.lengths.append(-1)

    def add_window(self, row: dict, wid: str, index: int, start: int, ids: np.ndarray,
                   char_start: int, char_end: int) -> None:
        self._append(kind="window", **row, window_id=wid, window_index=index,
                     token_start=start, n_tokens=int(ids.shape[0]), char_start=char_start,
                     char_end=char_end)
        self.id_parts.append(ids)
        self.lengths.append(int(ids.shape[0]))
        self.tokens += int(ids.shape[0])

    def _append(self, **values) -> None:
        for name, column in self.cols.items():
            column.append(values.get(name))

    def flush_if_full(self) -> Iterator[pa.RecordBatch]:
        if self.tokens >= self.max_tokens:
            yield from self.flush()

    def flush(self) -> Iterator[pa.RecordBatch]:
        if not self.lengths:
            return
        lengths = np.asarray(self.lengths, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(np.maximum(lengths, 0), out=offsets[1:])
        values = (np.concatenate(self.id_parts) if self.id_parts
                  else np.zeros(0, dtype=np.int32))
        mask = pa.array(lengths < 0)
        input_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()),
                                             mask=mask, type=_OUT_ARROW.field("input_ids").type)
        arrays = [input_ids if name == "input_ids" else
                  pa.array(self.cols[name], type=_OUT_ARROW.field(name).type)
                  for name in _OUT_ARROW.names]
        self._reset()
        yield pa.RecordBatch.from_arrays(arrays, schema=_OUT_ARROW)
