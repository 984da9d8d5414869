"""Tokenization with the real Llama-3 tokenizer: chunked long documents give exactly the ids of
the whole document, and character spans point at the right text."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from longattn_spark.errors import InputError
from longattn_spark.ingest.tokenize import piece_starts, tokenize_documents
from longattn_spark.tokenizer import load_tokenizer_spec


@pytest.fixture(scope="module")
def spec(llama3_tokenizer_dir):
    return load_tokenizer_spec(llama3_tokenizer_dir)


@pytest.fixture(scope="module")
def reference(llama3_tokenizer_dir):
    return Tokenizer.from_file(str(llama3_tokenizer_dir / "tokenizer.json"))


def stdlib_source() -> str:
    import argparse
    import json as json_module
    return inspect.getsource(argparse) + inspect.getsource(json_module.decoder)


def prose() -> str:
    sample = Path(inspect.getfile(json)).parent / "__init__.py"
    return (sample.read_text() + "\n\nNaïve café — résumé, 東京 and émigré words.\n") * 8


def test_spec_identity_is_content_hash(spec, llama3_tokenizer_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "tokenizer.json").write_bytes((llama3_tokenizer_dir / "tokenizer.json").read_bytes())
    other = load_tokenizer_spec(copy)
    assert other.sha256 == spec.sha256
    assert other.identity == spec.identity == f"tok-{spec.sha256[:16]}"
    assert "copy" not in other.identity and "tokenizer" not in spec.identity
    assert spec.vocab_size >= 128256
    assert spec.bos_id == 128000


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_tokenizer_spec(tmp_path / "nope")
    with pytest.raises(InputError, match="no tokenizer.json"):
        load_tokenizer_spec(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="not a valid tokenizer.json"):
        load_tokenizer_spec(tmp_path)


@pytest.mark.parametrize("text_source", [stdlib_source, prose])
@pytest.mark.parametrize("chunk_chars", [997, 5000])
def test_chunked_tokenization_gives_the_whole_documents_ids(spec, reference, text_source,
                                                            chunk_chars):
    text = text_source()
    assert len(piece_starts(text, chunk_chars)) > 3  # really cut into pieces
    whole = reference.encode(text, add_special_tokens=False)
    (doc,) = tokenize_documents(spec, [text], chunk_chars=chunk_chars, batch_chars=4000)
    np.testing.assert_array_equal(doc.ids, np.asarray(whole.ids, dtype=np.int32))
    for index in (0, 1, len(whole.ids) // 3, len(whole.ids) // 2, len(whole.ids) - 1):
        assert doc.char_span(index, index + 1) == whole.offsets[index]


def test_piece_starts_cut_only_between_letters():
    text = "alpha beta\n\n  gamma 123 456 delta epsilon " * 50
    starts = piece_starts(text, 40)
    assert starts[0] == 0 and len(starts) > 10
    for s in starts[1:]:
        assert text[s] == " " and text[s - 1].isalpha() and text[s + 1].isalpha()
    assert piece_starts("x" * 100, 10) == [0]  # no boundary: one piece


def test_batches_keep_document_order_and_spans(spec, reference):
    texts = ["first document here.", stdlib_source()[:20000], "third one", "é" * 10]
    docs = list(tokenize_documents(spec, texts, chunk_chars=3000, batch_chars=5000))
    assert len(docs) == len(texts)
    for text, doc in zip(texts, docs):
        whole = reference.encode(text, add_special_tokens=False)
        np.testing.assert_array_equal(doc.ids, whole.ids)
        start, end = doc.char_span(0, doc.n_tokens)
        assert (start, end) == (whole.offsets[0][0], whole.offsets[-1][1])
        assert text[start:end].strip() == text.strip()
