"""Paths behave as Spark's readers treat them (issue 11, point 3): scheme-less = the default
filesystem (the local disk in the embedded default), ``file:`` forces local, every check goes
through the filesystem the job reads, and format detection looks at one level only and knows
Spark's own output folders."""

from __future__ import annotations

import json

import pytest

from longattn_spark import paths
from longattn_spark.config import IngestConfig
from longattn_spark.errors import InputError
from longattn_spark.ingest.sources import detect_format, format_of_listing


def test_schemes():
    assert paths.scheme_of("/in/docs.jsonl") is None
    assert paths.scheme_of("in/docs.jsonl") is None
    assert paths.scheme_of("hdfs://nn:8020/in") == "hdfs"
    assert paths.scheme_of("file:/tmp/x") == "file"
    assert paths.scheme_of("dbfs:/x") == "dbfs"
    assert paths.scheme_of("C:/x") is None


def test_local_paths_without_a_session(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    assert paths.is_local(None, str(tmp_path))
    found = paths.status(None, str(tmp_path / "a.txt"))
    assert found.length == 5 and not found.is_dir
    assert found.path == "file:" + str((tmp_path / "a.txt").resolve())
    assert paths.status(None, "file:" + str(tmp_path / "a.txt")).length == 5
    assert paths.status(None, str(tmp_path / "nope")) is None
    assert paths.read_text(None, "file:" + str(tmp_path / "a.txt")) == "hello"
    with pytest.raises(InputError, match=r"--input .*nope \(on the local disk\): no such"):
        paths.require(None, str(tmp_path / "nope"), "--input")


def test_hadoop_paths_go_through_hadoop(spark, tmp_path):
    """``file:`` URIs are read through the JVM's Hadoop FileSystem when a session has one; the
    answers equal the local ones."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.json").write_text("{}")
    uri = "file://" + str(tmp_path / "d")
    fs, _ = paths._hadoop_fs(spark, uri)
    assert fs.getScheme() == "file"
    entries = paths.list_dir(spark, str(tmp_path / "d"))
    assert [e.name for e in entries] == ["x.json"]


def test_unreachable_filesystem_is_one_line(spark):
    with pytest.raises(InputError, match=r"nosuchfs://bucket/x .*cannot reach that filesystem"):
        paths.status(spark, "nosuchfs://bucket/x")


def _entries(names: list[str], dirs: tuple[str, ...] = ()) -> list[paths.FileStatus]:
    return [paths.FileStatus("file:/r/" + n, 1, 0, n in dirs) for n in names]


@pytest.mark.parametrize(("names", "dirs", "expected"), [
    (["_SUCCESS", ".part-0.json.crc", "part-0.json", "part-1.json"], (), "jsonl"),
    (["_SUCCESS", "part-0.jsonl.gz", ".part-0.jsonl.gz.crc"], (), "jsonl"),
    (["_SUCCESS", "part-0.snappy.parquet"], (), "parquet"),
    (["_delta_log", "part-0.snappy.parquet"], ("_delta_log",), "table"),
    (["book", "code"], ("book", "code"), "subfolders"),
    (["a.txt", "b.md"], (), "text"),
    (["notes.json", "readme.txt"], (), "text"),
])
def test_format_of_one_level(names, dirs, expected):
    assert format_of_listing(_entries(names, dirs)) == expected


def test_spark_written_json_folder_is_not_taken_for_text(spark, tmp_path):
    out = str(tmp_path / "spark-out")
    spark.createDataFrame([("1", "a b c", "x")], "id string, text string, category string") \
        .write.option("compression", "gzip").json(out)
    assert detect_format(spark, IngestConfig(input=out)) == "jsonl"
    partitioned = str(tmp_path / "by-category")
    spark.createDataFrame([("1", "a b c", "x")], "id string, text string, category string") \
        .write.partitionBy("category").json(partitioned)
    assert detect_format(spark, IngestConfig(input=partitioned)) == "jsonl"
    texts = tmp_path / "texts" / "book"
    texts.mkdir(parents=True)
    (texts / "one.txt").write_text(json.dumps("not json lines"))
    assert detect_format(spark, IngestConfig(input=str(tmp_path / "texts"))) == "text"
