"""The one config object: defaults < YAML < flags; bad options get one clear line; the embedded
session's own defaults yield to the user's spark-defaults.conf."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longattn_spark import session
from longattn_spark.cli import parse_config
from longattn_spark.config import load_config
from longattn_spark.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PACKAGED = REPO / "longattn_spark" / "conf"


@pytest.mark.parametrize("name", ["local", "databricks", "emr"])
def test_shipped_job_configs_load_by_name_and_by_path(name):
    cfg = load_config(name)
    assert cfg.ingest.window_size == 32768
    assert cfg.score.table and cfg.select.table
    assert load_config(PACKAGED / f"{name}.yaml") == cfg


def test_shipped_configs_are_inside_the_wheel(tmp_path):
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("longattn_spark-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("local", "databricks", "emr"):
        assert f"longattn_spark/conf/{name}.yaml" in names
    assert "longattn_spark/sql/select_flagged.sql" in names


def test_unknown_config_name_is_one_line():
    with pytest.raises(ConfigError, match="--config nosuch: no such file, and not a shipped"):
        load_config("nosuch")


@pytest.mark.parametrize("name", ["databricks-cluster.json", "emr-configurations.json"])
def test_shipped_cluster_configs_give_gpus_only_to_the_scoring_stage(name):
    text = (CONF / name).read_text()
    data = json.loads(text)
    spark_conf = (data.get("spark_conf") if isinstance(data, dict) else
                  next(c["Properties"] for c in data if c["Classification"] == "spark-defaults"))
    assert spark_conf["spark.executor.resource.gpu.amount"] == "1"
    # no default-profile task holds a whole GPU: the score job's stage-level ResourceProfile
    # (--task-gpus 1, set in the shipped YAML) asks for it in the scoring stage alone
    assert float(spark_conf.get("spark.task.resource.gpu.amount", "0")) < 1
    assert "spark.python.worker.reuse" in text


@pytest.mark.parametrize("name", ["databricks", "emr"])
def test_shipped_cluster_yaml_asks_gpus_for_scoring(name):
    assert load_config(name).score.task_gpus == 1


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("score:\n  model: /models/x\n  batch_size: 4\nspark:\n  master: local[1]\n")
    command, cfg = parse_config(["score", "--config", str(path), "--batch-size", "8"])
    assert command.name == "score"
    assert cfg.score.model == "/models/x"      # from YAML; --model no longer required
    assert cfg.score.batch_size == 8           # flag wins
    assert cfg.spark.master == "local[1]"
    assert cfg.score.seq_len == 0              # default


@pytest.mark.parametrize("text,message", [
    ("score:\n  batchsize: 4\n", "unknown option.*batchsize"),
    ("scoring:\n  batch_size: 4\n", "unknown section.*scoring"),
    ("score:\n  batch_size: many\n", "score.batch_size: expected int"),
    ("- a list\n", "top level must be a mapping"),
])
def test_bad_yaml_names_the_option(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longattn_spark.cli", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_wrong_flag_or_value_is_one_line_not_a_stack_trace():
    for args in (["score", "--batch-size", "x"], ["ingest", "--nope"], ["scor"],
                 ["select", "--normalize", "rank"]):
        result = run_cli(*args)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0], result.stderr
        assert "Traceback" not in result.stderr


def test_help_shows_defaults():
    result = run_cli("ingest", "--help")
    assert result.returncode == 0
    assert "--window-size" in result.stdout and "32768" in result.stdout
    assert "(required)" in result.stdout
    assert run_cli("--help").returncode == 0


# --- the embedded session's defaults yield to the user's spark-defaults.conf -----------------

def test_spark_properties_reads_the_launchers_file_format():
    text = ("# a comment\n! another\n\nspark.a  1\nspark.b=2\n  spark.c : x y  \n"
            "spark.d\nhadoop.x 5\nspark.e\t-Dk=v -Dq=w\n")
    assert session.spark_properties(text) == {"spark.a": "1", "spark.b": "2", "spark.c": "x y",
                                              "spark.d": "", "spark.e": "-Dk=v -Dq=w"}


def test_submit_opts_override_the_file(tmp_path):
    (tmp_path / "spark-defaults.conf").write_text("spark.a 1\nspark.b 2\n")
    env = {"SPARK_CONF_DIR": str(tmp_path),
           "SPARK_SUBMIT_OPTS": "-Xmx1g -Dspark.b=3 -Dother=1 '-Dspark.c=a b'"}
    assert session.user_spark_defaults(env) == {"spark.a": "1", "spark.b": "3", "spark.c": "a b"}
    assert session.user_spark_defaults({"SPARK_CONF_DIR": str(tmp_path / "none")}) == {}


def test_local_defaults_leave_out_what_the_user_set():
    key = "spark.sql.adaptive.coalescePartitions.initialPartitionNum"
    java = "spark.driver.extraJavaOptions"
    assert session.local_defaults({}) == session.LOCAL_DEFAULTS
    conf = session.local_defaults({key: "4", java: "-Dmine=1"})
    assert key not in conf
    assert conf[java] == "-Dmine=1 " + session.LOCAL_DEFAULTS[java]
    assert {k: v for k, v in conf.items() if k != java} == \
        {k: v for k, v in session.LOCAL_DEFAULTS.items() if k not in (key, java)}


def test_embedded_session_keeps_the_users_spark_defaults(tmp_path):
    """A real embedded session started as the CLI jobs start it: settings from the user's
    spark-defaults.conf (and SPARK_SUBMIT_OPTS) win over the product's own defaults, which
    fill in the rest."""
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(
        "spark.sql.adaptive.coalescePartitions.initialPartitionNum 7\n"
        "spark.driver.extraJavaOptions -Dlongattn.test.mine=1\n")
    code = (
        "import json, sys\n"
        "from longattn_spark.config import SparkSettings\n"
        "from longattn_spark.session import get_spark\n"
        "spark = get_spark(SparkSettings(lakehouse=sys.argv[1]))\n"
        "keys = ['spark.sql.adaptive.coalescePartitions.initialPartitionNum',\n"
        "        'spark.databricks.delta.snapshotPartitions', 'spark.sql.shuffle.partitions',\n"
        "        'spark.driver.extraJavaOptions']\n"
        "print(json.dumps({k: spark.conf.get(k, None) for k in keys}))\n"
        "spark.stop()\n")
    env = {**os.environ, "SPARK_CONF_DIR": str(conf_dir),
           "SPARK_SUBMIT_OPTS": "-Dspark.databricks.delta.snapshotPartitions=3"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "lake")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["spark.sql.adaptive.coalescePartitions.initialPartitionNum"] == "7"
    assert got["spark.databricks.delta.snapshotPartitions"] == "3"
    assert got["spark.sql.shuffle.partitions"] == "8"            # the product's default
    java = got["spark.driver.extraJavaOptions"].split()
    assert java[0] == "-Dlongattn.test.mine=1"
    assert "-Dio.netty.tryReflectionSetAccessible=true" in java


def test_unreadable_spark_defaults_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "spark-defaults.conf").write_bytes(b"spark.a 1\nspark.b \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"spark-defaults.conf: not UTF-8 text \(byte 18\)"):
        session.user_spark_defaults({"SPARK_CONF_DIR": str(tmp_path)})
    # an unbalanced quote in SPARK_SUBMIT_OPTS is split on spaces, not a stack trace
    assert session.submit_opts_properties("-Dspark.a=1 '-Dspark.b=2") == {"spark.a": "1"}


def test_a_spark_defaults_that_fails_to_read_is_one_line_naming_the_file(tmp_path):
    """A file that exists but cannot be read (here a link to /proc/self/mem, which is a regular
    file that answers every read at offset 0 with EIO, even for root): the OS's reason and
    the path, no stack trace."""
    conf = tmp_path / "spark-defaults.conf"
    conf.symlink_to("/proc/self/mem")
    assert conf.is_file()
    with pytest.raises(ConfigError) as raised:
        session.user_spark_defaults({"SPARK_CONF_DIR": str(tmp_path)})
    line = str(raised.value)
    assert line == f"{conf}: cannot be read (Input/output error)"
