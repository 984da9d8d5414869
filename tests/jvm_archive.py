"""A class-data-sharing (CDS) archive for the Spark JVMs the tests start.

Every local driver (this session's, each CLI subprocess's, the notebook kernel's) is a fresh
JVM that loads and verifies the same classes of Spark, Delta and their dependencies before it
does any work. With a dynamic CDS archive of those classes (JDK 13+,
``-XX:ArchiveClassesAtExit`` once, then ``-XX:SharedArchiveFile``), a driver maps them instead:
on this 2-core machine, a driver's start fell from 6.7 to 3.4 s of CPU and its first Delta
create + MERGE + read from 12.2 to 8.2 s; tests/test_crash_consistency.py (then five CLI drivers
beside the session's) took 253 s of CPU instead of 286 s, and 189 s of wall instead of 221 s.

The archive is built once per machine (JDK, pyspark, delta-spark and the options below are in
its name), under ~/.cache/longattn-spark/cds: by setup.sh (about 1.5 minutes on 2 cores), else
by the first test session that finds it missing. It is dumped by a driver that runs the
product's five jobs on a tiny input and then exits normally (an archive is written at a normal
JVM exit; pyspark kills its JVM). A JVM maps the archive only when its class path is the one
the archive was dumped with, and CDS refuses a class path with a non-empty folder on it; so
the drivers get an empty SPARK_CONF_DIR, and the tests' Spark settings as ``-Dspark.…``
system properties (SparkConf reads those). A JVM that cannot use the archive runs without it,
silently (``-Xlog:cds=off``); a machine where the archive cannot be built runs without one.

The test cluster's JVMs (spark-submit drivers, executors, master and workers) and the Connect
server run on the same Spark jars, so they map the same archive, with the same empty
SPARK_CONF_DIR (tests/cluster.py, tests/connect_server.py): tests/test_cluster_smoke.py (the
cluster's start and one spark-submit) took 45 s of CPU instead of 59 s.
``LONGATTN_TEST_CDS=0`` turns the archive off.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from cluster import CDS_DIR as ARCHIVES
from cluster import EMPTY_CONF_DIR, spark_defaults_for_tests
from cluster import JVM_OPTS as FAST_JVM  # C1 only, serial GC: short-lived JVMs on 2 cores

QUIET_CDS = "-Xlog:cds=off,cds+dynamic=off"


def spark_properties() -> str:
    """The tests' spark-defaults.conf as ``-D`` options (no value there holds a space)."""
    return " ".join(f"-D{key}={value}" for key, value in spark_defaults_for_tests().items())


def _java_version() -> str:
    done = subprocess.run(["java", "-version"], capture_output=True, text=True, check=True)
    return done.stderr.strip()


def archive_path() -> Path:
    """Where the archive for this JDK, pyspark, delta-spark and these options lives."""
    key = json.dumps([_java_version(), metadata.version("pyspark"),
                      metadata.version("delta-spark"), FAST_JVM, spark_properties(),
                      str(EMPTY_CONF_DIR), Path(__file__).read_text(encoding="utf-8")])
    return ARCHIVES / f"local-driver-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa"


def local_driver_opts() -> tuple[str, str]:
    """(SPARK_SUBMIT_OPTS, SPARK_CONF_DIR) for every local driver of this test session: with
    the archive when it exists or can be built now, else the same without it."""
    EMPTY_CONF_DIR.mkdir(parents=True, exist_ok=True)
    try:
        if enabled():
            _built_archive()
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"tests: no CDS archive for the Spark JVMs ({exc}); they start without one",
              file=sys.stderr)
    return f"{FAST_JVM} {spark_properties()} {spark_jvm_opts()}".strip(), str(EMPTY_CONF_DIR)


def spark_jvm_opts() -> str:
    """The options that map the archive, for any Spark JVM whose SPARK_CONF_DIR is
    EMPTY_CONF_DIR (local and cluster drivers, executors, the standalone daemons, the Connect
    server: their class path is the one the archive was dumped with); "" before it is
    built."""
    EMPTY_CONF_DIR.mkdir(parents=True, exist_ok=True)
    target = archive_path()
    return f"-XX:SharedArchiveFile={target} {QUIET_CDS}" if enabled() and target.is_file() \
        else ""


def enabled() -> bool:
    """False when LONGATTN_TEST_CDS=0: every JVM loads its classes itself (to compare, or to
    rule the archive out)."""
    return os.environ.get("LONGATTN_TEST_CDS", "1") != "0"


def _built_archive() -> Path:
    """The archive, built first if it is missing (one process at a time: the xdist workers
    wait on a lock while the first one builds it)."""
    target = archive_path()
    ARCHIVES.mkdir(parents=True, exist_ok=True)
    with open(ARCHIVES / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        for old in ARCHIVES.glob("local-driver-*.jsa"):
            old.unlink()
        partial = target.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYSPARK_GATEWAY", "SPARK_REMOTE"))}
        env.update({"SPARK_CONF_DIR": str(EMPTY_CONF_DIR), "SPARK_SUBMIT_OPTS":
                    f"{FAST_JVM} {spark_properties()} -XX:ArchiveClassesAtExit={partial}"})
        done = subprocess.run([sys.executable, __file__, "--warm-up"], env=env,
                              capture_output=True, text=True, timeout=900,
                              cwd=Path(__file__).parent)
        if done.returncode != 0 or not partial.is_file():
            raise subprocess.SubprocessError(
                f"building it failed (rc {done.returncode}): {done.stderr.strip()[-500:]}")
        partial.rename(target)
        return target


def _warm_up() -> None:
    """Run ingest, score, select, export and report once on a tiny input in one local driver,
    then end that JVM with a normal exit, which writes the archive."""
    from documents import long_documents

    from longattn_spark.cli import run
    from longattn_spark.config import SparkSettings
    from longattn_spark.demo.smoke_model import write_smoke_test_model
    from longattn_spark.tokenizer import llama3_tokenizer_dir
    from longattn_spark.session import get_spark

    with tempfile.TemporaryDirectory(prefix="longattn-cds-") as tmp:
        root = Path(tmp)
        docs = root / "docs.jsonl"
        docs.write_text("".join(json.dumps(d) + "\n" for d in
                                long_documents("book", 3, 3000) +
                                long_documents("code", 3, 3000, offset=3)) + "{not json\n",
                        encoding="utf-8")
        tokenizer = str(llama3_tokenizer_dir())
        model = write_smoke_test_model(root / "model", hidden_size=32, num_attention_heads=4,
                                       num_key_value_heads=2, num_hidden_layers=1,
                                       intermediate_size=64, dtype="float32")
        spark = get_spark(SparkSettings(master="local[2]", lakehouse=str(root / "lake"),
                                        catalog="hive"))  # as the session fixture
        t = {name: str(root / name) for name in ("windows", "scores", "selection")}
        steps = [
            ["ingest", "--input", str(docs), "--tokenizer", tokenizer, "--window-size", "256",
             "--table", t["windows"]],
            ["score", "--windows", t["windows"], "--model", str(model), "--device", "cpu",
             "--table", t["scores"]],
            ["select", "--windows", t["windows"], "--scores", t["scores"], "--alpha", "0.5",
             "--keep-fraction", "0.5", "--table", t["selection"]],
            ["export", "--selection", t["selection"], "--windows", t["windows"], "--format",
             "jsonl", "--tokenizer", tokenizer, "--output", str(root / "export")],
            ["report", "--windows", t["windows"], "--scores", t["scores"], "--selection",
             t["selection"], "--output", str(root / "report.html")],
        ]
        for argv in steps:
            if run(argv) != 0:
                sys.exit(f"warm-up step {argv[0]} failed")
        jvm = spark.sparkContext._gateway.proc
        try:
            spark.sparkContext._jvm.java.lang.System.exit(0)
        except Exception:  # noqa: BLE001 - py4j loses its connection as the JVM exits
            pass
        jvm.wait(timeout=600)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build the tests' CDS archive (setup.sh).")
    parser.add_argument("--build", action="store_true", help="build it unless it is there")
    parser.add_argument("--warm-up", action="store_true", help="(the driver that dumps it)")
    if parser.parse_args().warm_up:
        _warm_up()
    else:
        opts, _ = local_driver_opts()
        print(f"tests' local Spark drivers: {opts}")
