"""Two jobs creating the same table at the same moment both succeed (``ensure_table``).

Spark's ``CREATE TABLE IF NOT EXISTS delta.`path``` counts any non-empty folder as an existing
table, so the second job may see the first job's ``_delta_log`` before its first commit
landed: its create is then a no-op and a read right after it finds no table (for a metastore
name, Delta refuses the create: the location is not empty). A real race hits that moment by
chance; the tests here also make it certain (a ``_delta_log`` without a commit, and a real
first commit that lands a second later), on local paths, names and HDFS."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

from longattn_spark.errors import TableError
from longattn_spark.tables.refs import TableRef, table_properties
from longattn_spark.tables.schemas import SCORES, SELECTION, WINDOWS
from longattn_spark.tables.writes import ensure_table

CREATORS = 3


def race(spark, refs: list[TableRef], specs: list) -> list[BaseException]:
    """For each table in ``refs``: ``CREATORS`` threads call ``ensure_table`` at once."""
    errors: list[BaseException] = []
    for ref, spec in zip(refs, specs):
        barrier = threading.Barrier(CREATORS)

        def create(ref=ref, spec=spec, barrier=barrier) -> None:
            try:
                barrier.wait()
                ensure_table(spark, ref, spec)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        threads = [threading.Thread(target=create) for _ in range(CREATORS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return errors


def test_creators_racing_on_one_table_all_succeed(spark, tmp_path):
    """Real races, one table of each kind by path and one by name. Whether a round hits the
    in-flight moment is chance; the tests below make that moment certain."""
    specs = [SCORES, WINDOWS, SELECTION, SCORES]
    refs = [TableRef(str(tmp_path / s.kind)) for s in specs[:3]]
    refs.append(TableRef(f"longattn_race.race_{uuid.uuid4().hex[:8]}"))
    try:
        errors = race(spark, refs, specs)
        assert not errors, [str(e).splitlines()[0] for e in errors]
        for ref, spec in zip(refs, specs):
            assert ref.read(spark).columns == spec.column_names
            assert table_properties(spark, ref)["longattn.kind"] == spec.kind
            assert ref.version(spark) == 0  # one creation committed, the others saw it
    finally:
        spark.sql("DROP TABLE IF EXISTS IDENTIFIER(:t)", args={"t": refs[-1].text})


def test_a_creator_waits_for_a_first_commit_still_landing(spark, tmp_path):
    """The moment the race needs, made certain: the table's ``_delta_log`` exists without a
    commit (what the first creator leaves while it writes), and its first commit lands (a
    rename, as Delta's log stores do) a second after the second creator started."""
    ref = TableRef(str(tmp_path / "scores"))
    (tmp_path / "scores" / "_delta_log").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    ensure_table(spark, TableRef(str(elsewhere)), SCORES)  # a real first commit of SCORES
    commit = elsewhere / "_delta_log" / "00000000000000000000.json"
    landing = threading.Timer(1.0, os.rename,
                              (commit, tmp_path / "scores" / "_delta_log" / commit.name))
    landing.start()
    try:
        ensure_table(spark, ref, SCORES)
    finally:
        landing.join()
    assert not commit.exists()  # it did land while ensure_table ran
    assert ref.read(spark).columns == SCORES.column_names
    assert ref.version(spark) == 0


def test_a_creator_of_a_name_waits_for_the_first_creator(spark):
    """The same moment for a metastore table: its managed location holds the first creator's
    ``_delta_log`` (Delta then refuses a second creation: the location is not empty) until the
    first creator has committed and registered the table, a second later."""
    ref = TableRef(f"longattn_race.landing_{uuid.uuid4().hex[:8]}")
    spark.sql("CREATE SCHEMA IF NOT EXISTS longattn_race")
    schema_at = {r[0]: r[1] for r in
                 spark.sql("DESCRIBE SCHEMA EXTENDED longattn_race").collect()}["Location"]
    log = Path(schema_at.removeprefix("file:")) / ref.text.split(".")[1] / "_delta_log"
    log.mkdir(parents=True)
    first: list[BaseException] = []

    def first_creator_lands() -> None:
        try:
            log.rmdir()  # its real creation, which writes the log, from here on
            ensure_table(spark, ref, SCORES)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            first.append(exc)

    landing = threading.Timer(1.0, first_creator_lands)
    landing.start()
    try:
        ensure_table(spark, ref, SCORES)
        landing.join()
        assert not first, first
        assert ref.read(spark).columns == SCORES.column_names
        assert ref.version(spark) == 0
    finally:
        landing.join()
        spark.sql("DROP TABLE IF EXISTS IDENTIFIER(:t)", args={"t": ref.text})


def test_a_log_folder_without_commit_is_named_after_a_bounded_wait(spark, tmp_path,
                                                                    monkeypatch):
    """A ``_delta_log`` left without any commit (a creation that died) is not waited on for
    ever: after the bound the error names the folder."""
    import longattn_spark.tables.writes as writes

    monkeypatch.setattr(writes, "CREATE_RACE_WAIT_S", 1.0)
    path = tmp_path / "scores"
    (path / "_delta_log").mkdir(parents=True)
    with pytest.raises(TableError, match="_delta_log"):
        ensure_table(spark, TableRef(str(path)), SCORES)


@pytest.mark.cluster
def test_a_creator_on_hdfs_waits_for_a_first_commit_still_landing(spark, cluster):
    """The path case on the test cluster's HDFS (the creator is the local session)."""
    base = f"/race_{uuid.uuid4().hex[:8]}"
    cluster.hdfs_mkdir(f"{base}/scores/_delta_log")
    ensure_table(spark, TableRef(f"{cluster.hdfs_uri}{base}/elsewhere"), SCORES)
    name = "00000000000000000000.json"
    commit, target = f"{base}/elsewhere/_delta_log/{name}", f"{base}/scores/_delta_log/{name}"
    landing = threading.Timer(1.0, cluster._webhdfs, ("PUT", commit, "RENAME"),
                              {"destination": target})
    landing.start()
    ref = TableRef(f"{cluster.hdfs_uri}{base}/scores")
    try:
        ensure_table(spark, ref, SCORES)
    finally:
        landing.join()
    assert cluster.hdfs_ls(f"{base}/elsewhere/_delta_log").count(name) == 0  # it landed late
    assert ref.read(spark).columns == SCORES.column_names
    assert ref.version(spark) == 0
    cluster.hdfs_rm(base)


def test_a_folder_that_is_no_delta_table_is_named_not_waited_for(spark, tmp_path):
    path = tmp_path / "scores"
    spark.range(2).write.parquet(str(path))  # files, no _delta_log: nobody is creating it
    with pytest.raises(TableError, match="cannot be read as a Delta scores table"):
        ensure_table(spark, TableRef(str(path)), SCORES)
