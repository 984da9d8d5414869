"""Export of selected windows to sharded JSONL / Parquet, with real Llama-3 token ids, on local
Spark and Delta."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from longattn_spark import cli
from longattn_spark.config import ExportConfig, SelectConfig
from longattn_spark.errors import InputError
from longattn_spark.export import (
    _Folder,
    attempt_folder,
    build_manifest,
    check_exported,
    export_files,
    export_options,
    is_legacy_export_file,
    parse_manifest,
    publish_method,
    read_export_manifest,
    shard_file_name,
    shard_percentages,
    with_files,
)
from longattn_spark.select import select_options, select_windows
from longattn_spark.tables.refs import TableRef
from longattn_spark.tables.schemas import SCORES, WINDOWS
from longattn_spark.tables.writes import ensure_table
from longattn_spark.tokenizer import get_tokenizer, load_tokenizer_spec

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
    latest_id: str
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
                  latest.selection_id, llama3_tokenizer_dir)


def export_args(corpus: Corpus, output: Path, *extra: str) -> list[str]:
    return ["export", "--selection", corpus.selection.location, "--windows",
            corpus.windows.location, "--output", str(output), *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def exported_lines(out: Path) -> list[str]:
    """Every line of the current export, read as a reader must: through the manifest."""
    return [line for f in export_files(str(out))
            for line in Path(f).read_text(encoding="utf-8").splitlines()]


def attempts(out: Path) -> set[str]:
    folder = out / "_attempts"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def jsonl_args(corpus: Corpus, selection_id: str) -> list[str]:
    return ["--format", "jsonl", "--tokenizer", str(corpus.tokenizer), "--shards", "3",
            "--selection-id", selection_id]


def test_pure_helpers():
    assert shard_file_name(2, 12, "jsonl") == "part-00002-of-00012.jsonl"
    assert shard_percentages(4) == [0.25, 0.5, 0.75]
    assert is_legacy_export_file("part-00000-of-00003.parquet")
    assert is_legacy_export_file("_staging-0123456789ab")
    assert not is_legacy_export_file("part-00000-abc.json")
    assert not is_legacy_export_file("notes.txt") and not is_legacy_export_file("manifest.json")
    assert attempt_folder("abc", token="t0").startswith("_attempts/abc-")
    assert attempt_folder("abc") != attempt_folder("abc")
    assert [publish_method(s) for s in ("file", "s3a", "gs", "dbfs", "hdfs", "abfss")] == [
        "rename", "put", "put", "put", "rename-overwrite", "rename-overwrite"]
    with pytest.raises(InputError, match="--tokenizer"):
        export_options(ExportConfig(format="jsonl", tokenizer=""))
    stats = [{"shard": 0, "category": "a", "windows": 2, "tokens": 20, "tokenizers": ["t@1"]},
             {"shard": 2, "category": "b", "windows": 1, "tokens": 5, "tokenizers": ["t@1"]}]
    info = {"selected": 3, "windows_version": 1, "scores_version": 2, "scorer_id": "s",
            "params": "{}"}
    manifest = build_manifest(options=export_options(ExportConfig(format="parquet")),
                              selection_id="x", info=info, selection_table="sel",
                              windows_table="win", stats=stats, tokenizer=None,
                              attempt="_attempts/x-1")
    assert [s["file"] for s in manifest["shards"]] == ["_attempts/x-1/part-00000-of-00002.parquet",
                                                      "_attempts/x-1/part-00001-of-00002.parquet"]
    assert [(s["rows"], s["windows"]) for s in manifest["shards"]] == [(2, 2), (1, 1)]
    assert manifest["categories"] == {"a": {"windows": 2, "tokens": 20},
                                      "b": {"windows": 1, "tokens": 5}}
    sized = with_files(manifest, {
        "_attempts/x-1/part-00000-of-00002.parquet": {"bytes": 10},
        "_attempts/x-1/part-00001-of-00002.parquet": {
            "bytes": 7, "checksum": {"algorithm": "MD5-of-0MD5-of-512CRC32C", "value": "ab"}}})
    assert [s["bytes"] for s in sized["shards"]] == [10, 7]
    assert "checksum" not in sized["shards"][0] and sized["shards"][1]["checksum"]["value"]
    parsed = parse_manifest(json.dumps(sized), "s3a://bucket/out/")
    assert parsed.files == ["s3a://bucket/out/_attempts/x-1/part-00000-of-00002.parquet",
                            "s3a://bucket/out/_attempts/x-1/part-00001-of-00002.parquet"]
    assert parsed.rows == 3 and parsed.selection_id == "x"
    for bad in ("../x.parquet", "/etc/passwd", "s3a://other/x", "a//b", 3):
        broken = {**sized, "shards": [{**sized["shards"][0], "file": bad}]}
        with pytest.raises(InputError, match="not a path inside"):
            parse_manifest(json.dumps(broken), "/out")
    with pytest.raises(InputError, match="not an export manifest"):
        parse_manifest('{"shards": []}', "/out")
    check_exported(stats, info, "win", "t@1")
    with pytest.raises(InputError, match="cut with t@1"):
        check_exported(stats, info, "win", "other@2")


@pytest.mark.parametrize("method", ["rename", "rename-overwrite", "put"])
def test_manifest_is_replaced_whole_by_each_publish_method(spark, tmp_path, method):
    folder = _Folder(spark, str(tmp_path))
    (tmp_path / "a").mkdir()
    folder.publish_text("m.json", "first\n", draft="a/_m.json", method=method)
    assert folder.read_text("m.json") == "first\n"
    folder.publish_text("m.json", "second ✓\n", draft="a/_m.json", method=method)
    assert (tmp_path / "m.json").read_text(encoding="utf-8") == "second ✓\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["m.json"]
    assert folder.read_text("missing.json") is None


def test_jsonl_decodes_the_windows_text_in_balanced_shards(spark, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.run(export_args(corpus, out, *jsonl_args(corpus, corpus.first_id))) == 0
    assert f"exported selection {corpus.first_id}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["_attempts", "manifest.json"]
    manifest = read_export_manifest(None, str(out))
    (attempt,) = attempts(out)
    assert manifest.content["attempt"] == f"_attempts/{attempt}"
    assert attempt.startswith(corpus.first_id)
    files = export_files(str(out))
    assert files == [str(out / "_attempts" / attempt / f"part-0000{i}-of-00003.jsonl")
                     for i in range(3)]
    assert sorted(p.name for p in (out / "_attempts" / attempt).iterdir()) == [
        Path(f).name for f in files]
    shards = [read_jsonl(Path(name)) for name in files]
    records = [r for shard in shards for r in shard]
    assert {r["id"] for r in records} == corpus.first and len(records) == len(corpus.first)
    for r in records:
        assert list(r) == ["text", "id", "category"]
        assert r["text"] == corpus.texts[r["id"]]
        assert r["category"] == r["id"].split("-")[0]
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1

    content = manifest.content
    assert manifest.selection_id == content["selection_id"] == corpus.first_id
    assert content["windows"] == len(corpus.first)
    assert content["tokens"] == sum(len(corpus.ids[w]) for w in corpus.first)
    for category, totals in content["categories"].items():
        mine = [w for w in corpus.first if w.startswith(category)]
        assert totals == {"windows": len(mine), "tokens": sum(len(corpus.ids[w]) for w in mine)}
    assert [s["windows"] for s in content["shards"]] == sizes
    assert "decoded" in content["text"]
    assert content["previous_attempt"] is None
    assert read_export_manifest(spark, str(out)).content == content  # via Hadoop's FileSystem


def test_parquet_replaces_the_previous_export_and_defaults_to_latest(spark, corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    (out / "part-00007-of-00009.jsonl").write_text("stale")  # the earlier flat layout
    (out / "_staging-0123456789ab").mkdir()
    assert cli.run(export_args(corpus, out, "--format", "parquet", "--shards", "2")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["_attempts", "manifest.json", "notes.txt"]
    files = export_files(str(out), spark)
    assert [Path(f).name for f in files] == ["part-00000-of-00002.parquet",
                                             "part-00001-of-00002.parquet"]
    table = pq.read_table(files)
    assert table.column_names == ["id", "category", "input_ids"]
    rows = table.to_pylist()
    assert {r["id"] for r in rows} == corpus.latest and len(rows) == len(corpus.latest)
    assert all(r["input_ids"] == corpus.ids[r["id"]] for r in rows)
    manifest = read_export_manifest(None, str(out))
    assert manifest.selection_id == corpus.latest_id != corpus.first_id
    assert manifest.rows == len(corpus.latest)


def test_a_reader_sees_exactly_the_latest_export_and_reruns_do_not_duplicate(spark, corpus,
                                                                            tmp_path):
    """Export one selection, then another into the same folder: a reader through the manifest
    sees exactly the second's lines. Re-running the same selection replaces, never adds; the
    folder keeps the current export and the one it replaced."""
    out = tmp_path / "out"
    assert cli.run(export_args(corpus, out, *jsonl_args(corpus, corpus.first_id))) == 0
    first_attempt = read_export_manifest(None, str(out)).content["attempt"]
    assert cli.run(export_args(corpus, out, *jsonl_args(corpus, corpus.latest_id))) == 0
    lines = exported_lines(out)
    ids = [json.loads(line)["id"] for line in lines]
    assert sorted(ids) == sorted(corpus.latest)  # exactly: no line of the first, no duplicate
    manifest = read_export_manifest(None, str(out))
    assert manifest.selection_id == corpus.latest_id
    assert manifest.content["previous_attempt"] == first_attempt
    assert len(attempts(out)) == 2  # the current export and the one it replaced

    for _ in range(2):  # the same selection again, twice
        assert cli.run(export_args(corpus, out, *jsonl_args(corpus, corpus.latest_id))) == 0
    assert sorted(exported_lines(out)) == sorted(lines)
    rerun = read_export_manifest(None, str(out)).content
    assert f"_attempts/{sorted(attempts(out))[0]}" in (rerun["attempt"],
                                                        rerun["previous_attempt"])
    assert len(attempts(out)) == 2 and first_attempt.split("/")[1] not in attempts(out)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_manifest_counts_and_sizes_are_the_files_real_ones(spark, corpus, tmp_path, fmt):
    out = tmp_path / "out"
    extra = (jsonl_args(corpus, corpus.first_id) if fmt == "jsonl"
             else ["--format", "parquet", "--shards", "3", "--selection-id", corpus.first_id])
    assert cli.run(export_args(corpus, out, *extra)) == 0
    manifest = read_export_manifest(None, str(out))
    assert manifest.format == fmt and len(manifest.shards) == 3
    for shard, path in zip(manifest.shards, manifest.files, strict=True):
        if fmt == "jsonl":
            data = Path(path).read_bytes()
            real = data.count(b"\n")
            assert data.endswith(b"\n") and len(data.splitlines()) == real
        else:
            real = pq.ParquetFile(path).metadata.num_rows
        assert shard["rows"] == shard["windows"] == real > 0
        assert shard["bytes"] == os.path.getsize(path)
    assert manifest.rows == manifest.content["windows"] == len(corpus.first)


# A killed export: the export runs in a child process, paused at a chosen point by the hooks
# of this file's __main__ (below), then killed with SIGKILL.

KILL_POINTS = {
    # a Python worker stops after decoding the first batch: Spark is writing the shards
    "mid-shards": "shards started",
    # the driver stops as it is about to write the manifest: every shard is written
    "before-manifest": "shards written",
}


def run_killed_export(argv: list[str], point: str, tmp_path: Path) -> Path:
    """Start ``longattn-spark <argv>`` in a child process, wait until it pauses at ``point``,
    SIGKILL its process group (the JVM too) and return the marker file it wrote."""
    marker = tmp_path / f"paused-{point}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    child = subprocess.Popen(
        [sys.executable, __file__, point, str(marker), *argv,
         "--master", "local[1]", "--catalog", "in-memory", "--driver-memory", "1g",
         "--lakehouse", str(tmp_path / f"lake-{point}")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            if child.poll() is not None:
                output = child.stdout.read().decode(errors="replace")
                pytest.fail(f"the export ended (rc {child.returncode}) before pausing at "
                            f"{point}:\n{output[-4000:]}")
            assert time.monotonic() < deadline, f"the export did not reach {point}"
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
    return marker


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_killed_export_leaves_the_previous_export_whole(spark, corpus, tmp_path, point):
    """SIGKILL an export half-way (Spark writing shards, or every shard written but no
    manifest yet): a reader still sees the previous complete export, exactly; a re-run then
    completes and a reader sees the new export, exactly, and the killed attempt is gone."""
    out = tmp_path / "out"
    assert cli.run(export_args(corpus, out, *jsonl_args(corpus, corpus.first_id))) == 0
    before = exported_lines(out)
    manifest_before = (out / "manifest.json").read_bytes()
    (previous,) = attempts(out)

    marker = run_killed_export(
        export_args(corpus, out, *jsonl_args(corpus, corpus.latest_id), "--batch-windows", "1"),
        point, tmp_path)
    assert marker.read_text() == KILL_POINTS[point]
    killed = attempts(out) - {previous}
    assert len(killed) == 1  # the killed run had started writing its attempt
    killed_files = {p.name for p in (out / "_attempts" / killed.pop()).rglob("part-*")}
    if point == "before-manifest":
        assert killed_files == {f"part-0000{i}-of-00003.jsonl" for i in range(3)}
    else:
        assert not any(name.endswith(".jsonl") for name in killed_files)

    assert (out / "manifest.json").read_bytes() == manifest_before
    assert exported_lines(out) == before  # the previous export, exactly
    assert {json.loads(line)["id"] for line in before} == corpus.first

    assert cli.run(export_args(corpus, out, *jsonl_args(corpus, corpus.latest_id))) == 0
    after = [json.loads(line)["id"] for line in exported_lines(out)]
    assert sorted(after) == sorted(corpus.latest)
    assert attempts(out) - {previous} == {
        read_export_manifest(None, str(out)).content["attempt"].split("/")[1]}


def test_unknown_selection_id_is_an_error(spark, corpus, tmp_path, capsys):
    code = cli.run(export_args(corpus, tmp_path / "out", "--format", "parquet",
                               "--selection-id", "feedbeef"))
    assert code == 1
    assert "--selection-id feedbeef: not in the selection table" in capsys.readouterr().err


if __name__ == "__main__":
    # Child process of test_a_killed_export_leaves_the_previous_export_whole:
    #   python tests/test_export.py <kill point> <marker file> <longattn-spark arguments>
    # runs the CLI with a pause at the kill point: it writes the marker and sleeps until the
    # test kills it. The hooks wrap export.py's functions from outside; export.py has none.
    from longattn_spark.export import job as _export

    _point, _marker, _argv = sys.argv[1], sys.argv[2], sys.argv[3:]

    def _pause() -> None:
        Path(_marker).write_text(KILL_POINTS[_point])
        time.sleep(600)

    if _point == "mid-shards":
        _decode_batches = _export.decode_batches

        def _paused_decode_batches(spec):
            decode = _decode_batches(spec)

            def paused(batches):
                for i, batch in enumerate(decode(batches)):
                    yield batch
                    if i == 0:
                        _pause()
            return paused

        _export.decode_batches = _paused_decode_batches
    elif _point == "before-manifest":
        _write_text = _export._Folder.write_text

        def _paused_write_text(self, name, text):
            _pause()
            return _write_text(self, name, text)

        _export._Folder.write_text = _paused_write_text
    else:
        raise SystemExit(f"unknown kill point {_point!r}")
    sys.exit(cli.run(_argv))
