"""Export of selected windows to sharded JSONL / Parquet, with real Llama-3 token ids, on local
Spark and Delta."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from longattn_spark import cli
from longattn_spark.config import ExportConfig, SelectConfig
from longattn_spark.errors import InputError
from longattn_spark.export import (
    build_manifest,
    check_exported,
    export_options,
    is_export_file,
    shard_file_name,
    shard_percentages,
)
from longattn_spark.selection import select_options, select_windows
from longattn_spark.tables import SCORES, WINDOWS, TableRef, ensure_table
from longattn_spark.tokenize import get_tokenizer, load_tokenizer_spec

SIZES = {"book": 16, "arxiv": 14, "code": 10}


def text_of(category: str, i: int) -> str:
    if category == "code":
        return f"def scale_{i}(x):\n    return x * {i}  # naïve ✓\n"
    if category == "arxiv":
        return f"Theorem {i}. For every ε > 0 there is δ = ε/{i + 1} such that |f(x)| < ε."
    return f"Chapter {i}. The quick brown fox — named Zoë — jumped over {i} lazy dogs."


@dataclass(frozen=True)
class Corpus:
    windows: TableRef
    selection: TableRef
    texts: dict[str, str]
    ids: dict[str, list[int]]
    first: set[str]  # kept by the first selection
    latest: set[str]  # kept by the selection written last
    first_id: str
    tokenizer: Path


def write(spark, path: str, spec, rows: list[dict]) -> TableRef:
    ref = TableRef(path)
    ensure_table(spark, ref, spec)
    frame = spark.createDataFrame([tuple(r.get(c) for c in spec.column_names) for r in rows],
                                  spec.schema)
    frame.write.format("delta").mode("append").save(ref.location)
    return ref


def kept(spark, selection: TableRef, selection_id: str) -> set[str]:
    rows = selection.read(spark).where(f"selection_id = '{selection_id}' AND selected")
    return {r["window_id"] for r in rows.select("window_id").collect()}


@pytest.fixture(scope="module")
def corpus(spark, tmp_path_factory, llama3_tokenizer_dir) -> Corpus:
    root = tmp_path_factory.mktemp("export")
    spec = load_tokenizer_spec(llama3_tokenizer_dir)
    tokenizer = get_tokenizer(spec)
    texts, ids, windows, scores = {}, {}, [], []
    for category, size in SIZES.items():
        for i in range(size):
            wid = f"{category}-{i:03d}"
            texts[wid] = text_of(category, i)
            ids[wid] = tokenizer.encode(texts[wid], add_special_tokens=False).ids
            windows.append({"window_id": wid, "doc_id": wid, "category": category,
                            "n_tokens": len(ids[wid]), "input_ids": ids[wid],
                            "tokenizer": spec.identity})
            scores.append({"window_id": wid, "scorer_id": "s8", "category": category,
                           "ds": 0.2 + ((i * 7) % size) / 50, "variance": 1e-6 * (1 + i % 3)})
    w = write(spark, str(root / "windows"), WINDOWS, windows)
    s = write(spark, str(root / "scores"), SCORES, scores)
    selection = TableRef(str(root / "selection"))
    first = select_windows(spark, select_options(SelectConfig(keep_fraction=0.75, exact=True)),
                           w, s, selection)
    latest = select_windows(spark, select_options(SelectConfig(keep_fraction=0.3, exact=True)),
                            w, s, selection)
    return Corpus(w, selection, texts, ids, kept(spark, selection, first.selection_id),
                  kept(spark, selection, latest.selection_id), first.selection_id,
                  llama3_tokenizer_dir)


def export_args(corpus: Corpus, output: Path, *extra: str) -> list[str]:
    return ["export", "--selection", corpus.selection.location, "--windows",
            corpus.windows.location, "--output", str(output), *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_pure_helpers():
    assert shard_file_name(2, 12, "jsonl") == "part-00002-of-00012.jsonl"
    assert shard_percentages(4) == [0.25, 0.5, 0.75]
    assert is_export_file("part-00000-of-00003.parquet") and is_export_file("manifest.json")
    assert not is_export_file("part-00000-abc.json") and not is_export_file("notes.txt")
    with pytest.raises(InputError, match="--tokenizer"):
        export_options(ExportConfig(format="jsonl", tokenizer=""))
    stats = [{"shard": 0, "category": "a", "windows": 2, "tokens": 20, "tokenizers": ["t@1"]},
             {"shard": 2, "category": "b", "windows": 1, "tokens": 5, "tokenizers": ["t@1"]}]
    info = {"selected": 3, "windows_version": 1, "scores_version": 2, "scorer_id": "s",
            "params": "{}"}
    manifest = build_manifest(options=export_options(ExportConfig(format="parquet")),
                              selection_id="x", info=info, selection_table="sel",
                              windows_table="win", stats=stats, tokenizer=None)
    assert [s["file"] for s in manifest["shards"]] == ["part-00000-of-00002.parquet",
                                                      "part-00001-of-00002.parquet"]
    assert manifest["categories"] == {"a": {"windows": 2, "tokens": 20},
                                      "b": {"windows": 1, "tokens": 5}}
    check_exported(stats, info, "win", "t@1")
    with pytest.raises(InputError, match="cut with t@1"):
        check_exported(stats, info, "win", "other@2")


def test_jsonl_decodes_the_windows_text_in_balanced_shards(spark, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.run(export_args(corpus, out, "--format", "jsonl", "--tokenizer",
                               str(corpus.tokenizer), "--shards", "3",
                               "--selection-id", corpus.first_id)) == 0
    assert f"exported selection {corpus.first_id}" in capsys.readouterr().out
    files = sorted(p.name for p in out.iterdir())
    assert files == ["manifest.json", "part-00000-of-00003.jsonl", "part-00001-of-00003.jsonl",
                     "part-00002-of-00003.jsonl"]
    shards = [read_jsonl(out / name) for name in files[1:]]
    records = [r for shard in shards for r in shard]
    assert {r["id"] for r in records} == corpus.first and len(records) == len(corpus.first)
    for r in records:
        assert list(r) == ["text", "id", "category"]
        assert r["text"] == corpus.texts[r["id"]]
        assert r["category"] == r["id"].split("-")[0]
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["selection_id"] == corpus.first_id
    assert manifest["windows"] == len(corpus.first)
    assert manifest["tokens"] == sum(len(corpus.ids[w]) for w in corpus.first)
    for category, totals in manifest["categories"].items():
        mine = [w for w in corpus.first if w.startswith(category)]
        assert totals == {"windows": len(mine), "tokens": sum(len(corpus.ids[w]) for w in mine)}
    assert [s["windows"] for s in manifest["shards"]] == sizes
    assert "decoded" in manifest["text"]


def test_parquet_replaces_the_previous_export_and_defaults_to_latest(spark, corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    (out / "part-00007-of-00009.jsonl").write_text("stale")
    assert cli.run(export_args(corpus, out, "--format", "parquet", "--shards", "2")) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["manifest.json", "notes.txt", "part-00000-of-00002.parquet",
                     "part-00001-of-00002.parquet"]
    table = pq.read_table([str(out / f) for f in files[2:]])
    assert table.column_names == ["id", "category", "input_ids"]
    rows = table.to_pylist()
    assert {r["id"] for r in rows} == corpus.latest and len(rows) == len(corpus.latest)
    assert all(r["input_ids"] == corpus.ids[r["id"]] for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["selection_id"] != corpus.first_id
    assert sum(s["windows"] for s in manifest["shards"]) == len(corpus.latest)


def test_unknown_selection_id_is_an_error(spark, corpus, tmp_path, capsys):
    code = cli.run(export_args(corpus, tmp_path / "out", "--format", "parquet",
                               "--selection-id", "feedbeef"))
    assert code == 1
    assert "--selection-id feedbeef: not in the selection table" in capsys.readouterr().err
