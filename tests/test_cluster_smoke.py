"""The multi-process test cluster works end to end: spark-submit onto the standalone master,
two executors, a Delta table written at a scheme-less path lands on HDFS and reads back."""

from __future__ import annotations

import json
import textwrap

import pytest

pytestmark = pytest.mark.cluster

SMOKE_SCRIPT = textwrap.dedent('''
    import json
    import sys
    import time

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName("cluster-smoke").getOrCreate()
    sc = spark.sparkContext

    def executors():
        # the JVM's status tracker lists the driver too
        infos = sc._jsc.sc().statusTracker().getExecutorInfos()
        return sorted(f"{i.host()}:{i.port()}" for i in infos)

    deadline = time.monotonic() + 120
    while len(executors()) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)

    df = spark.range(0, 1000, numPartitions=4).selectExpr("id", "id * id AS sq")
    df.write.format("delta").mode("overwrite").save("/lake/smoke")
    back = spark.read.format("delta").load("/lake/smoke")
    rows = sorted((r.id, r.sq) for r in back.collect())

    pythons = sorted(set(sc.parallelize(range(4), 4)
                         .mapPartitions(lambda _: [__import__("sys").executable]).collect()))
    path = sc._jvm.org.apache.hadoop.fs.Path("/lake/smoke")
    fs = path.getFileSystem(sc._jsc.hadoopConfiguration())
    result = {
        "executors": len(executors()) - 1,
        "default_parallelism": sc.defaultParallelism,
        "rows_ok": rows == [(i, i * i) for i in range(1000)],
        "row_count": len(rows),
        "qualified": fs.makeQualified(path).toString(),
        "executor_pythons": pythons,
        "driver_python": sys.executable,
    }
    print("SMOKE_RESULT=" + json.dumps(result), flush=True)
    spark.stop()
''')


def test_delta_round_trip_on_hdfs_with_two_executors(cluster, tmp_path):
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE_SCRIPT)

    done = cluster.spark_submit([str(script)], cwd=tmp_path, timeout=480)

    assert done.returncode == 0, (
        f"spark-submit failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("SMOKE_RESULT=")]
    assert lines, f"no result line:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    result = json.loads(lines[-1].split("=", 1)[1])

    assert result["rows_ok"] and result["row_count"] == 1000
    assert result["executors"] == 2, result
    assert result["default_parallelism"] == 4, result  # 2 workers x 2 cores
    assert result["qualified"] == f"{cluster.hdfs_uri}/lake/smoke"
    assert result["executor_pythons"] == [cluster.python]
    assert result["driver_python"] == cluster.python

    assert "_delta_log" in cluster.hdfs_ls("/lake/smoke")
    assert "00000000000000000000.json" in cluster.hdfs_ls("/lake/smoke/_delta_log")
    assert any(name.endswith(".parquet") for name in cluster.hdfs_ls("/lake/smoke"))

    # the workers declared their gpu resources (addresses "0" and "1") to the master
    gpus = sorted(w["resources"]["gpu"]["addresses"][0] for w in cluster.alive_workers())
    assert gpus == ["0", "1"]
    assert len(set(cluster.worker_pids)) == 2
