"""The ingest job end to end on local Spark with real Delta tables and the real Llama-3
tokenizer: windows equal the tokenizer's ids at Algorithm 1's spans, every document is
accounted for, re-runs add nothing, a partial run resumes, bad input becomes reject rows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from longattn_spark.config import IngestConfig, LongAttnConfig, SparkSettings
from longattn_spark.errors import InputError, TableError
from longattn_spark.ingest import ingest, run_ingest_job, window_id
from longattn_spark.tables.refs import TableRef
from longattn_spark.tokenizer import load_tokenizer_spec
from longattn_spark.ingest.windowing import sliding_windows

W = 512
STDLIB = Path(sysconfig.get_paths()["stdlib"])
CODE_FILES = ["argparse.py", "ast.py", "csv.py", "difflib.py", "enum.py", "heapq.py"]


def stdlib_text(name: str) -> str:
    return (STDLIB / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def spec(llama3_tokenizer_dir):
    return load_tokenizer_spec(llama3_tokenizer_dir)


@pytest.fixture(scope="module")
def reference(llama3_tokenizer_dir):
    return Tokenizer.from_file(str(llama3_tokenizer_dir / "tokenizer.json"))


def good_docs() -> list[dict]:
    docs = [{"id": f"code/{name}", "text": stdlib_text(name), "category": "code"}
            for name in CODE_FILES]
    docs.append({"id": "doc/short", "text": "A short note.", "category": "docs"})
    docs.append({"id": 12345, "text": stdlib_text("heapq.py")[:9000], "category": "docs"})
    return docs


BAD_LINES = [
    '{"id": "broken", "text": "unterminated',                       # malformed_json
    '["a", "list"]',                                                 # malformed_json
    json.dumps({"text": "no id here", "category": "code"}),          # missing_id
    json.dumps({"id": "no-text", "category": "code"}),               # missing_text
    json.dumps({"id": "empty", "text": "   ", "category": "code"}),  # empty_text
    json.dumps({"id": "number", "text": 42, "category": "code"}),    # non_string_text
    json.dumps({"id": "no-cat", "text": "some text"}),               # missing_category
    # the same id as a good document, with a shorter text: the longer one is kept
    json.dumps({"id": "code/csv.py", "text": "shorter copy", "category": "code"}),
]
EXPECTED_REJECTS = {"malformed_json": 2, "missing_id": 1, "missing_text": 1, "empty_text": 1,
                    "non_string_text": 1, "missing_category": 1, "duplicate_id": 1}


def write_jsonl(path: Path, docs: list[dict], extra_lines: list[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


def config(input_path, table, tokenizer_dir, **overrides) -> IngestConfig:
    return dataclasses.replace(IngestConfig(input=str(input_path), tokenizer=str(tokenizer_dir),
                                            window_size=W, table=table), **overrides)


def table_rows(spark, table: str) -> list[dict]:
    return [r.asDict() for r in TableRef(table).read(spark).collect()]


@pytest.fixture(scope="module")
def first_run(spark, spec, tmp_path_factory, llama3_tokenizer_dir):
    root = tmp_path_factory.mktemp("ingest")
    source = write_jsonl(root / "input" / "docs.jsonl", good_docs(), BAD_LINES)
    table = str(root / "tables" / "windows")
    cfg = config(source, table, llama3_tokenizer_dir)
    summary = ingest(spark, cfg, spec)
    return {"cfg": cfg, "summary": summary, "table": table, "rejects": table + "_rejects",
            "root": root}


def test_every_document_is_accounted_for(first_run):
    s = first_run["summary"]
    assert s.documents_read == len(good_docs()) + len(BAD_LINES)
    assert s.rejected == EXPECTED_REJECTS
    assert s.too_short == 1  # doc/short
    assert s.windowed == len(good_docs()) - 1
    assert s.accounted
    assert s.windows_inserted == s.windows > 0


def test_windows_equal_tokenizer_ids_at_algorithm_1_spans(spark, first_run, reference, spec):
    rows = table_rows(spark, first_run["table"])
    by_doc: dict[str, list[dict]] = {}
    for row in rows:
        by_doc.setdefault(row["doc_id"], []).append(row)
    docs = {str(d["id"]): d for d in good_docs()}
    assert set(by_doc) == set(docs) - {"doc/short"}
    for doc_id, windows in by_doc.items():
        text = docs[doc_id]["text"]
        ids = reference.encode(text, add_special_tokens=False).ids
        spans = sliding_windows(len(ids), W)
        windows.sort(key=lambda r: r["window_index"])
        assert [(r["token_start"], r["token_start"] + r["n_tokens"]) for r in windows] == spans
        for row, (start, end) in zip(windows, spans):
            assert row["input_ids"] == ids[start:end]
            sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
            assert row["doc_sha256"] == sha
            assert row["window_id"] == window_id(docs[doc_id]["category"], doc_id, sha,
                                                 spec.identity, W, start)
            assert row["category"] == docs[doc_id]["category"]
            assert row["tokenizer"] == spec.identity
            # the character span is the text of exactly these tokens
            assert reference.decode(row["input_ids"]) == text[row["char_start"]:row["char_end"]]


def test_rejects_table_names_each_reason_and_row(spark, first_run):
    rejects = table_rows(spark, first_run["rejects"])
    reasons: dict[str, int] = {}
    for row in rejects:
        reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    assert reasons == {**EXPECTED_REJECTS, "too_short": 1}
    by_reason = {r["reason"]: r for r in rejects}
    assert "docs.jsonl" in by_reason["malformed_json"]["source"]
    assert "unterminated" in next(r["detail"] for r in rejects
                                  if r["reason"] == "malformed_json"
                                  and "unterminated" in r["detail"])
    assert by_reason["duplicate_id"]["doc_id"] == "code/csv.py"
    assert by_reason["non_string_text"]["doc_id"] == "number"
    assert "window size" in by_reason["too_short"]["detail"]
    assert len({r["reject_id"] for r in rejects}) == len(rejects)


def test_tables_are_partitioned_by_category(spark, first_run):
    for table in (first_run["table"], first_run["rejects"]):
        detail = spark.sql(f"DESCRIBE DETAIL delta.`{TableRef(table).location}`").collect()[0]
        assert detail["partitionColumns"] == ["category"]


def test_rerun_leaves_both_tables_exactly_as_they_were(spark, first_run, spec):
    refs = [TableRef(first_run["table"]), TableRef(first_run["rejects"])]
    before = [(ref.version(spark), sorted(map(str, table_rows(spark, str(ref)))))
              for ref in refs]
    again = ingest(spark, first_run["cfg"], spec)
    after = [(ref.version(spark), sorted(map(str, table_rows(spark, str(ref)))))
             for ref in refs]
    assert after == before
    assert again.windows_inserted == 0 and again.rejects_inserted == 0
    assert again.already_ingested == first_run["summary"].windowed + 1  # + too_short doc
    assert again.accounted


def test_killed_run_resumes_without_redoing_committed_documents(spark, spec, tmp_path,
                                                                llama3_tokenizer_dir,
                                                                first_run):
    docs = good_docs()
    table = str(tmp_path / "windows")
    # a run that "died" after committing the first three documents
    partial = write_jsonl(tmp_path / "partial" / "docs.jsonl", docs[:3])
    ingest(spark, config(partial, table, llama3_tokenizer_dir), spec)
    full = write_jsonl(tmp_path / "full" / "docs.jsonl", docs, BAD_LINES)
    resumed = ingest(spark, config(full, table, llama3_tokenizer_dir), spec)
    assert resumed.already_ingested == 3
    assert resumed.accounted
    fresh = {r["window_id"]: r["input_ids"] for r in table_rows(spark, first_run["table"])}
    final = {r["window_id"]: r["input_ids"] for r in table_rows(spark, table)}
    assert final == fresh


def test_commit_chunks_give_the_same_windows(spark, spec, tmp_path, llama3_tokenizer_dir,
                                             first_run):
    source = write_jsonl(tmp_path / "docs.jsonl", good_docs(), BAD_LINES)
    table = str(tmp_path / "windows")
    summary = ingest(spark, config(source, table, llama3_tokenizer_dir, commit_chunks=3), spec)
    assert summary.accounted and summary.rejected == EXPECTED_REJECTS
    assert sorted(r["window_id"] for r in table_rows(spark, table)) == \
        sorted(r["window_id"] for r in table_rows(spark, first_run["table"]))
    assert TableRef(table).version(spark) >= 3  # committed chunk by chunk


def test_text_folder_categories_from_subfolders_and_invalid_utf8(spark, spec, tmp_path,
                                                                 llama3_tokenizer_dir,
                                                                 reference):
    root = tmp_path / "corpus"
    (root / "code").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "code" / "enum.py").write_text(stdlib_text("enum.py"), encoding="utf-8")
    (root / "docs" / "notes.txt").write_text(stdlib_text("csv.py"), encoding="utf-8")
    (root / "docs" / "latin1.txt").write_bytes("café ".encode("latin-1") * 500)
    (root / "docs" / "empty.txt").write_text("")
    (root / "stray.txt").write_text(stdlib_text("heapq.py"))
    table = str(tmp_path / "windows")
    summary = ingest(spark, config(root, table, llama3_tokenizer_dir, format="text"), spec)
    assert summary.documents_read == 5
    assert summary.rejected == {"invalid_utf8": 1, "empty_text": 1, "missing_category": 1}
    assert summary.windowed == 2 and summary.accounted
    rows = table_rows(spark, table)
    assert {r["doc_id"] for r in rows} == {"code/enum.py", "docs/notes.txt"}
    assert {r["category"] for r in rows} == {"code", "docs"}
    ids = reference.encode(stdlib_text("enum.py"), add_special_tokens=False).ids
    first = min((r for r in rows if r["doc_id"] == "code/enum.py"),
                key=lambda r: r["window_index"])
    assert first["input_ids"] == ids[:W]
    bad = next(r for r in table_rows(spark, table + "_rejects") if r["reason"] == "invalid_utf8")
    assert "byte 3" in bad["detail"] and bad["doc_id"] == "docs/latin1.txt"


def test_parquet_input_with_configured_columns(spark, spec, tmp_path, llama3_tokenizer_dir):
    texts = [stdlib_text("difflib.py"), None, "tiny"]
    pq.write_table(pa.table({"key": [1, 2, 3], "body": texts}), tmp_path / "docs.parquet")
    table = str(tmp_path / "windows")
    cfg = config(tmp_path / "docs.parquet", table, llama3_tokenizer_dir, id_column="key",
                 text_column="body", category="code")
    summary = ingest(spark, cfg, spec)
    assert summary.documents_read == 3
    assert summary.rejected == {"missing_text": 1}
    assert summary.too_short == 1 and summary.windowed == 1 and summary.accounted
    assert {r["doc_id"] for r in table_rows(spark, table)} == {"1"}

    with pytest.raises(InputError, match="--text-column 'nope'"):
        ingest(spark, dataclasses.replace(cfg, text_column="nope"), spec)


def test_huge_document_is_rejected_as_too_large_without_tokenizing(spark, spec, tmp_path,
                                                                   llama3_tokenizer_dir):
    big = "word " * (100 * 2**20 // 5)  # a 100 MB document
    source = write_jsonl(tmp_path / "docs.jsonl",
                         [{"id": "huge", "text": big, "category": "book"},
                          {"id": "normal", "text": stdlib_text("csv.py"), "category": "book"}])
    del big
    table = str(tmp_path / "windows")
    summary = ingest(spark, config(source, table, llama3_tokenizer_dir), spec)
    assert summary.rejected == {"too_large": 1}
    assert summary.windowed == 1 and summary.accounted
    reject = table_rows(spark, table + "_rejects")[0]
    assert reject["doc_id"] == "huge" and "--max-doc-bytes" in reject["detail"]


def test_long_document_windowed_in_pieces_equals_whole_tokenization(
        spark, spec, tmp_path, llama3_tokenizer_dir, reference):
    text = "\n".join(stdlib_text(name) for name in CODE_FILES) * 3
    source = write_jsonl(tmp_path / "docs.jsonl", [{"id": "long", "text": text,
                                                    "category": "code"}])
    table = str(tmp_path / "windows")
    cfg = config(source, table, llama3_tokenizer_dir, tokenize_chunk_chars=20_000,
                 window_size=4096)
    summary = ingest(spark, cfg, spec)
    ids = np.asarray(reference.encode(text, add_special_tokens=False).ids)
    spans = sliding_windows(len(ids), 4096)
    rows = sorted(table_rows(spark, table), key=lambda r: r["window_index"])
    assert summary.tokens == len(ids) and len(rows) == len(spans)
    for row, (start, end) in zip(rows, spans):
        assert row["token_start"] == start
        np.testing.assert_array_equal(row["input_ids"], ids[start:end])


def test_existing_table_with_another_schema_is_not_touched(spark, spec, tmp_path,
                                                           llama3_tokenizer_dir):
    table = str(tmp_path / "windows")
    spark.range(3).write.format("delta").save(table)
    source = write_jsonl(tmp_path / "docs.jsonl", good_docs()[:1])
    with pytest.raises(TableError, match="another schema.*missing column window_id"):
        ingest(spark, config(source, table, llama3_tokenizer_dir), spec)
    assert TableRef(table).read(spark).count() == 3
    assert TableRef(table).version(spark) == 0


def test_missing_tokenizer_fails_before_any_spark_work(tmp_path):
    table = tmp_path / "windows"
    cfg = LongAttnConfig(spark=SparkSettings(lakehouse=str(tmp_path / "lake")),
                         ingest=IngestConfig(input=str(tmp_path), tokenizer=str(tmp_path / "x"),
                                             table=str(table)))
    with pytest.raises(InputError, match="--tokenizer .*no such file"):
        run_ingest_job(cfg)
    assert not table.exists() and not (tmp_path / "lake").exists()
