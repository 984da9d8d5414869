"""Nothing lost, nothing duplicated, nothing silent (issue 12) on long real texts (the standard
library's largest modules, as "book" and "arxiv" documents) with the real Llama-3 tokenizer
and a second tokenizer derived from it:

- a second corpus reusing another corpus's ids is ingested, not skipped;
- the same tokenizer.json in another folder is the same tokenizer (no duplicate windows);
- a changed text under a known id is rejected as changed_text, or replaced on request;
- the accounting counts the input independently and fails when a document goes missing;
- two ingests of two categories into one table at the same time both land.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from longattn_spark.config import IngestConfig
from longattn_spark.errors import AccountingError
from longattn_spark.ingest import check_accounted, ingest
from longattn_spark.tables.refs import TableRef
from longattn_spark.tokenizer import load_tokenizer_spec

from documents import long_documents

W = 4096
CHARS = 30_000  # about 7k tokens per document: 2 windows each, fast to tokenize


def corpus_docs(category: str, n: int = 4, ids: list[str] | None = None) -> list[dict]:
    """``n`` long documents of ``category``: "book" and "arxiv" never share a text."""
    return long_documents(category, n, CHARS, offset=0 if category == "book" else 8, ids=ids)


def write_jsonl(path: Path, docs: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return str(path)


def cfg(input_path: str, table: str, tokenizer: Path, **kw) -> IngestConfig:
    return IngestConfig(input=input_path, tokenizer=str(tokenizer), window_size=W, table=table,
                        **kw)


def rows(spark, table: str) -> list[dict]:
    return [r.asDict() for r in TableRef(table).read(spark).collect()]


@pytest.fixture(scope="module")
def spec(llama3_tokenizer_dir):
    return load_tokenizer_spec(llama3_tokenizer_dir)


def derived_tokenizer(src: Path, dst: Path) -> Path:
    """A second real tokenizer: Llama-3's with an NFKC normalizer, which changes the ids of
    text with compatibility characters (and so must change the identity)."""
    dst.mkdir(parents=True)
    data = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    data["normalizer"] = {"type": "NFKC"}
    (dst / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    shutil.copy(src / "tokenizer_config.json", dst / "tokenizer_config.json")
    return dst


def test_second_corpus_reusing_ids_is_ingested(spark, spec, tmp_path,
                                               llama3_tokenizer_dir):
    ids = ["0", "1", "2", "3"]
    books = write_jsonl(tmp_path / "books.jsonl", corpus_docs("book", ids=ids))
    papers = write_jsonl(tmp_path / "arxiv.jsonl", corpus_docs("arxiv", ids=ids))
    table = str(tmp_path / "windows")
    first = ingest(spark, cfg(books, table, llama3_tokenizer_dir), spec)
    second = ingest(spark, cfg(papers, table, llama3_tokenizer_dir), spec)
    assert first.windowed == 4 and first.accounted
    assert second.windowed == 4, "the papers reuse the books' ids and must still be ingested"
    assert second.already_ingested == 0 and second.accounted
    by_category = {}
    for row in rows(spark, table):
        by_category.setdefault(row["category"], set()).add(row["doc_id"])
    assert by_category == {"book": set(ids), "arxiv": set(ids)}
    assert TableRef(table).read(spark).select("window_id").distinct().count() == \
        first.windows + second.windows


def test_moved_tokenizer_is_the_same_tokenizer_and_a_derived_one_is_not(
        spark, spec, tmp_path, llama3_tokenizer_dir):
    books = write_jsonl(tmp_path / "books.jsonl", corpus_docs("book", 2))
    table = str(tmp_path / "windows")
    first = ingest(spark, cfg(books, table, llama3_tokenizer_dir), spec)
    moved = tmp_path / "somewhere else" / "renamed-tokenizer"
    shutil.copytree(llama3_tokenizer_dir, moved)
    # re-saved with other formatting: still the same settings, so the same identity
    (moved / "tokenizer.json").write_text(json.dumps(json.loads(
        (moved / "tokenizer.json").read_text(encoding="utf-8")), indent=1), encoding="utf-8")
    moved_spec = load_tokenizer_spec(moved)
    assert moved_spec.identity == spec.identity
    again = ingest(spark, cfg(books, table, moved), moved_spec)
    assert again.windows_inserted == 0 and again.already_ingested == 2

    other = load_tokenizer_spec(derived_tokenizer(llama3_tokenizer_dir, tmp_path / "nfkc"))
    assert other.identity != spec.identity
    third = ingest(spark, cfg(books, table, tmp_path / "nfkc"), other)
    assert third.windowed == 2 and third.windows_inserted == first.windows
    tokenizers = {r["tokenizer"] for r in rows(spark, table)}
    assert tokenizers == {spec.identity, other.identity}


def test_changed_text_is_rejected_by_default_and_replaced_on_request(
        spark, spec, tmp_path, llama3_tokenizer_dir):
    docs = corpus_docs("arxiv", 2)
    table = str(tmp_path / "windows")
    rejects = table + "_rejects"
    ingest(spark, cfg(write_jsonl(tmp_path / "v1.jsonl", docs), table, llama3_tokenizer_dir),
           spec)
    before = {r["window_id"] for r in rows(spark, table)}
    changed = [dict(docs[0], text=docs[0]["text"] + " An added closing sentence."), docs[1]]
    v2 = write_jsonl(tmp_path / "v2.jsonl", changed)

    summary = ingest(spark, cfg(v2, table, llama3_tokenizer_dir), spec)
    assert summary.rejected == {"changed_text": 1} and summary.already_ingested == 1
    assert summary.accounted
    reject = [r for r in rows(spark, rejects) if r["reason"] == "changed_text"]
    assert len(reject) == 1 and reject[0]["doc_id"] == docs[0]["id"]
    assert "--on-changed replace" in reject[0]["detail"]
    assert {r["window_id"] for r in rows(spark, table)} == before
    # re-running the same input adds no second reject row
    ingest(spark, cfg(v2, table, llama3_tokenizer_dir), spec)
    assert sum(r["reason"] == "changed_text" for r in rows(spark, rejects)) == 1

    replaced = ingest(spark, cfg(v2, table, llama3_tokenizer_dir, on_changed="replace"), spec)
    assert replaced.windowed == 1 and replaced.stale_rows_deleted > 0
    windows = rows(spark, table)
    texts = {r["doc_sha256"] for r in windows if r["doc_id"] == docs[0]["id"]}
    assert len(texts) == 1, "the old version's windows are gone"
    again = ingest(spark, cfg(v2, table, llama3_tokenizer_dir, on_changed="replace"), spec)
    assert again.windows_inserted == 0 and again.stale_rows_deleted == 0
    assert len(rows(spark, table)) == len(windows)


def _drop_first_status_row(udf):
    """Executor-side fault: the first document's status row never reaches the tables."""
    import pyarrow.compute as pc

    def run(batches):
        dropped = False
        for batch in udf(batches):
            if not dropped:
                is_doc = pc.equal(batch.column("kind"), "doc").to_numpy(zero_copy_only=False)
                if is_doc.any():
                    keep = is_doc.copy()
                    keep[:] = True
                    keep[is_doc.argmax()] = False
                    batch = batch.filter(keep)
                    dropped = True
            yield batch
    return run


def test_accounting_fails_when_a_document_goes_missing(spark, spec, tmp_path,
                                                       llama3_tokenizer_dir):
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        docs = corpus_docs("book", 3)
        source = write_jsonl(tmp_path / "docs.jsonl", docs)
        summary = ingest(spark, cfg(source, str(tmp_path / "w"), llama3_tokenizer_dir,
                                    partitions=1), spec, udf_wrapper=_drop_first_status_row)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert summary.documents_read == 3 and summary.status_rows == 2
    assert summary.missing == 1 and not summary.accounted
    with pytest.raises(AccountingError, match="1 of 3 documents read"):
        check_accounted(summary)


def test_two_categories_ingested_at_the_same_time_both_land(spark, spec,
                                                            tmp_path, llama3_tokenizer_dir):
    table = str(tmp_path / "windows")
    inputs = {
        "book": write_jsonl(tmp_path / "b.jsonl", corpus_docs("book", 3)),
        "arxiv": write_jsonl(tmp_path / "a.jsonl", corpus_docs("arxiv", 3)),
    }
    # the table exists before both start, as with a scheduled pipeline
    ingest(spark, cfg(write_jsonl(tmp_path / "seed.jsonl", corpus_docs("book", 1)), table,
                      llama3_tokenizer_dir), spec)
    results, errors = {}, []

    def run(category: str) -> None:
        try:
            results[category] = ingest(spark, cfg(inputs[category], table,
                                                  llama3_tokenizer_dir), spec)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results["arxiv"].windowed == 3 and results["arxiv"].accounted
    assert results["book"].windowed == 2 and results["book"].already_ingested == 1
    frame = TableRef(table).read(spark)
    counts = {r["category"]: r["n"] for r in frame.groupBy("category")
              .agg(F.countDistinct("doc_id").alias("n")).collect()}
    assert counts == {"book": 3, "arxiv": 3}
    assert frame.count() == frame.select("window_id").distinct().count()
