"""The README's spark-submit commands on a real multi-process cluster (tests/cluster.py: HDFS
+ a Spark standalone master with 2 workers of 2 cores and one ``gpu`` address each), as a user
runs them, checked against the embedded run of the same input (issue 11):

- ingest -> score -> select -> export -> report through ``spark-submit <repo>/jobs/<job>.py``,
  from a working folder outside the checkout, every path scheme-less (the cluster's default
  filesystem, HDFS); the same results as the embedded ``local[2]`` run of the CLI on local
  copies: window ids, scores (1e-6 relative), the selected set, the exported lines;
- once more with explicit ``hdfs://`` URIs (ingest, score, select), the executors' Python
  from an ``--archives`` environment, the jobs' settings from a ``--config`` file shipped with
  ``--files``, and a worker killed (by pid) in the middle of the ingest and again of the
  score: the jobs finish, with one row per key and the first run's rows;
- Spark's own event logs: tokenization ran 2 tasks at once per worker, scoring (its own
  stage-level ResourceProfile) at most 1 per GPU address; a probe stage with the score job's
  ResourceProfile shows each task its own worker's address in ``TaskContext.resources()``;
- bad input ends with a one-line error naming the path and its filesystem, before any Spark
  job, with a non-zero exit code;
- the console under spark-submit (Spark's default log4j profile) shows the jobs' summaries,
  not Spark's INFO lines.

Every spark-submit costs a JVM, executors and Python workers (tens of seconds on 2 cores), so
the module runs as few as the checks allow and shares them between tests: the pipeline (5
submits; the embedded run goes on meanwhile in the test process), the URI run's ingest and
score with the two worker losses (2), one probe for bad input, the URI run's select (its
entry point in the probe's driver) and GPU addresses (1).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sysconfig
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster import EMPTY_CONF_DIR, EventLog, TestCluster, delta_operations, event_log_conf

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
W = 512
STDLIB = ["argparse.py", "csv.py", "heapq.py", "textwrap.py", "shlex.py", "fractions.py",
          "bisect.py", "glob.py", "string.py", "copy.py"]
DOC_CHARS = 12_000
# A cluster with GPUs, as the shipped EMR configuration declares it: every executor holds its
# worker's GPU; only the scoring stage asks for one per task (--task-gpus 1).
GPU_CLUSTER = ["--conf", "spark.executor.resource.gpu.amount=1"]
SUBMIT_TIMEOUT = 600
WINDOW_COLUMNS = ("doc_id", "category", "window_index", "token_start", "n_tokens", "input_ids",
                  "char_start", "char_end", "tokenizer", "doc_sha256")
# reject_id hashes the source file's path, which differs between HDFS and the local copy
REJECT_COLUMNS = ("doc_id", "category", "reason", "tokenizer", "window_size", "doc_sha256")


# --- inputs --------------------------------------------------------------------------------------

@dataclass
class Inputs:
    root: Path
    docs: Path    # local copy of /in/docs.jsonl
    model: Path   # local copy of /models/m (smoke-test model + the Llama-3 tokenizer files)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, llama3_tokenizer_dir) -> Inputs:
    """Standard-library sources (two categories) plus rows that become rejects, and a tiny
    random Llama with the real Llama-3 tokenizer files."""
    from longattn_spark.demo.smoke_model import write_smoke_test_model

    root = tmp_path_factory.mktemp("cluster-inputs")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines = [json.dumps({"id": name, "text": (stdlib / name).read_text()[:DOC_CHARS],
                         "category": "code" if i % 2 else "docs"})
             for i, name in enumerate(STDLIB)]
    lines += [
        "{not json",                                                         # malformed_json
        json.dumps({"id": "tiny", "text": "far too short", "category": "code"}),  # too_short
        json.dumps({"id": "csv.py", "text": "a shorter copy", "category": "code"}),  # duplicate
        json.dumps({"id": "blank", "text": "   ", "category": "docs"}),      # empty_text
        json.dumps({"text": "no id here", "category": "docs"}),              # missing_id
    ]
    docs = root / "docs.jsonl"
    docs.write_text("\n".join(lines) + "\n")
    model = write_smoke_test_model(
        root / "model", vocab_size=128256, hidden_size=32, num_attention_heads=4,
        num_key_value_heads=2, num_hidden_layers=1, intermediate_size=64, dtype="float32",
        tokenizer_dir=llama3_tokenizer_dir)
    return Inputs(root, docs, model)


@pytest.fixture(scope="module")
def on_hdfs(cluster: TestCluster, inputs: Inputs) -> TestCluster:
    """The inputs at scheme-less HDFS paths: /in/docs.jsonl, /models/m (the model folder is
    the tokenizer folder too, as in the README), and /models/empty (no config.json)."""
    cluster.hdfs_put(inputs.docs, "/in/docs.jsonl")
    cluster.hdfs_put(inputs.model, "/models/m")
    cluster.hdfs_mkdir("/models/empty")
    cluster.hdfs_put(inputs.model / "README.md", "/models/empty/README.md")
    return cluster


# --- running spark-submit -------------------------------------------------------------------------

@dataclass
class Step:
    name: str
    argv: list[str]
    done: subprocess.CompletedProcess | None
    seconds: float
    events: Path

    @property
    def ok(self) -> bool:
        return self.done is not None and self.done.returncode == 0

    @property
    def console(self) -> str:
        return "" if self.done is None else self.done.stdout + self.done.stderr

    def explain(self) -> str:
        if self.done is None:
            return f"{self.name}: not run (an earlier step failed)"
        return (f"{self.name} exited {self.done.returncode} after {self.seconds:.0f} s\n"
                f"--- stdout:\n{self.done.stdout[-4000:]}\n--- stderr:\n"
                f"{_without_info(self.done.stderr)[-8000:]}")

    def event_log(self) -> EventLog:
        return EventLog.read(self.events)


def _without_info(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if " INFO " not in line)


def default_logging_env(work: Path) -> dict[str, str]:
    """SPARK_CONF_DIR without a log4j2 file: Spark's built-in default profile (INFO on the
    console), as on a cluster without a custom logging setup. It is the empty folder the
    tests' CDS archive was dumped with (tests/jvm_archive.py), so the driver maps it."""
    EMPTY_CONF_DIR.mkdir(parents=True, exist_ok=True)
    return {"SPARK_CONF_DIR": str(EMPTY_CONF_DIR)}


def job_argv(job: str, args: list[str], events: Path, extra: list[str] = ()) -> list[str]:
    """spark-submit arguments after the cluster's own: a GPU cluster, Spark's event log,
    ``extra`` spark-submit options, then ``<repo>/jobs/<job>.py`` and its flags."""
    return [*GPU_CLUSTER, *event_log_conf(events), *extra, str(JOBS / f"{job}.py"), *args]


def submit(cluster: TestCluster, name: str, job: str, args: list[str], work: Path,
           extra: list[str] = ()) -> Step:
    events = work / "events" / name
    argv = job_argv(job, args, events, extra)
    started = time.monotonic()
    done = cluster.spark_submit(argv, cwd=work, env=default_logging_env(work),
                                timeout=SUBMIT_TIMEOUT)
    return Step(name, argv, done, time.monotonic() - started, events)


def submit_killing_a_worker(cluster: TestCluster, name: str, job: str, args: list[str],
                            work: Path, worker: int, ready, extra: list[str] = ()
                            ) -> tuple[Step, dict]:
    """Starts the job, polls ``ready()`` (the HDFS state of the running job) until it
    describes the moment to strike, SIGKILLs worker ``worker`` (and its executor) by pid,
    starts it again (as a replaced node; the job may get an executor there again) and waits
    for the job. Returns the step and the moment ({} when the job ended first)."""
    events = work / "events" / name
    argv = job_argv(job, args, events, extra)
    started = time.monotonic()
    sub = cluster.start_submit(argv, cwd=work, env=default_logging_env(work))
    moment: dict = {}
    try:
        while sub.poll() is None and time.monotonic() - started < SUBMIT_TIMEOUT:
            moment = ready()
            if moment:
                cluster.kill_worker(worker)
                moment["after_s"] = round(time.monotonic() - started, 1)
                cluster.restart_worker(worker)
                break
            time.sleep(0.2)
        done = sub.wait(max(1.0, SUBMIT_TIMEOUT - (time.monotonic() - started)))
    finally:
        if sub.poll() is None:
            sub.kill()
        if not cluster.workers[worker].proc.alive():
            cluster.restart_worker(worker)
    return Step(name, argv, done, time.monotonic() - started, events), moment


def run_chain(cluster: TestCluster, work: Path, steps: list[tuple[str, str, list[str], list]],
              needs: dict[str, str], prefix: str = "") -> dict[str, Step]:
    """Runs the steps in order; a step whose prerequisite failed is recorded as not run."""
    out: dict[str, Step] = {}
    for name, job, args, extra in steps:
        before = needs.get(name)
        if before is not None and not out[before].ok:
            out[name] = Step(name, [], None, 0.0, work / "events" / f"{prefix}{name}")
            continue
        out[name] = submit(cluster, f"{prefix}{name}", job, args, work, extra)
    return out


def print_times(what: str, steps: dict[str, Step]) -> None:
    print(f"\n{what}: " + ", ".join(f"{name} {s.seconds:.0f} s (rc "
                                    f"{s.done.returncode if s.done else '-'})"
                                    for name, s in steps.items()), flush=True)


def lake(prefix: str) -> dict[str, str]:
    return {"windows": f"{prefix}/lake/windows", "scores": f"{prefix}/lake/scores",
            "selection": f"{prefix}/lake/selection", "export": f"{prefix}/out/export",
            "report": f"{prefix}/out/report.html"}


def chain_steps(tables: dict[str, str], docs: str, model: str, report: bool = True,
                ingest_args: list[str] = (), score_args: list[str] = ()
                ) -> list[tuple[str, str, list[str], list]]:
    """The README's commands (ingest, score, select, export, report) on ``tables``."""
    steps = [
        ("ingest", "ingest", ["--input", docs, "--tokenizer", model, *ingest_args,
                              "--table", tables["windows"]], []),
        ("score", "score", ["--windows", tables["windows"], "--model", model,
                            "--table", tables["scores"], *score_args], []),
        ("select", "select", ["--windows", tables["windows"], "--scores", tables["scores"],
                              "--alpha", "0.5", "--keep-fraction", "0.5",
                              "--table", tables["selection"]], []),
        ("export", "export", ["--selection", tables["selection"], "--windows",
                              tables["windows"], "--format", "jsonl", "--tokenizer", model,
                              "--output", tables["export"]], []),
    ]
    if report:
        steps.append(("report", "report", ["--windows", tables["windows"], "--scores",
                                           tables["scores"], "--selection",
                                           tables["selection"], "--output", tables["report"]],
                      []))
    return steps


NEEDS = {"score": "ingest", "select": "score", "export": "select", "report": "select"}
SCORE_FLAGS = ["--device", "cpu", "--task-gpus", "1"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The working folder of every spark-submit: outside the checkout."""
    folder = tmp_path_factory.mktemp("submit-cwd")
    assert REPO not in folder.resolve().parents
    return folder


@dataclass
class Runs:
    pipeline: dict[str, Step]
    embedded: dict[str, str] | None
    embedded_error: BaseException | None


@pytest.fixture(scope="module")
def runs(on_hdfs: TestCluster, work: Path, spark, inputs: Inputs, tmp_path_factory) -> Runs:
    """The README's five commands on the cluster with scheme-less HDFS paths, and at the same
    time (the cluster side only waits on spark-submit processes, in a thread) the same
    commands through the CLI on the test session's embedded local[2] Spark, on local copies of
    the inputs."""
    import threading

    from longattn_spark.cli import run

    found: dict[str, object] = {}

    def on_the_cluster() -> None:
        try:
            found["pipeline"] = run_chain(on_hdfs, work, chain_steps(
                lake(""), "/in/docs.jsonl", "/models/m", ingest_args=["--window-size", str(W)],
                score_args=SCORE_FLAGS), NEEDS)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            found["error"] = exc

    thread = threading.Thread(target=on_the_cluster, name="cluster-pipeline", daemon=True)
    thread.start()
    tables, error = None, None
    try:
        root = tmp_path_factory.mktemp("embedded")
        tables = lake(str(root))
        for _name, job, args, _extra in chain_steps(
                tables, str(inputs.docs), str(inputs.model), report=False,
                ingest_args=["--window-size", str(W)], score_args=SCORE_FLAGS):
            assert run([job, *args]) == 0, f"embedded {job} failed"
    except BaseException as exc:  # noqa: BLE001 - raised by the `embedded` fixture
        tables, error = None, exc
    finally:
        thread.join()
    if "error" in found:
        raise found["error"]
    print_times("pipeline", found["pipeline"])
    return Runs(found["pipeline"], tables, error)


@pytest.fixture(scope="module")
def pipeline(runs: Runs) -> dict[str, Step]:
    return runs.pipeline


@pytest.fixture(scope="module")
def embedded(runs: Runs) -> dict[str, str]:
    if runs.embedded_error is not None:
        raise runs.embedded_error
    return runs.embedded


def uri(cluster: TestCluster, path: str) -> str:
    return f"{cluster.hdfs_uri}{path}"


def require_ok(steps: dict[str, Step], *names: str) -> None:
    failed = [steps[n].explain() for n in names if not steps[n].ok]
    assert not failed, "\n\n".join(failed)


# --- reading results ------------------------------------------------------------------------------

def rows(spark, table: str, key: str | tuple[str, ...], columns: tuple[str, ...]) -> dict:
    """{key: (columns...)} of a Delta table; asserts one row per key."""
    keys = (key,) if isinstance(key, str) else key
    frame = spark.read.format("delta").load(table)
    out = {}
    for r in frame.select(*keys, *columns).collect():
        k = tuple(r[c] for c in keys) if len(keys) > 1 else r[keys[0]]
        assert k not in out, f"{table}: two rows for {k}"
        out[k] = tuple(tuple(v) if isinstance(v, list) else v for v in (r[c] for c in columns))
    return out


def multiset(spark, table: str, columns: tuple[str, ...]) -> list[tuple]:
    frame = spark.read.format("delta").load(table)
    return sorted((tuple(r[c] for c in columns) for r in frame.select(*columns).collect()),
                  key=repr)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def export_lines(spark, output: str, read_text) -> list[dict]:
    """The exported JSONL lines, read as the export's current manifest lists them."""
    from longattn_spark.export import read_export_manifest

    manifest = read_export_manifest(spark, output)
    lines = [json.loads(line) for file in manifest.files
             for line in read_text(file).splitlines() if line.strip()]
    assert len(lines) == manifest.rows, (len(lines), manifest.rows)
    return sorted(lines, key=lambda d: d["id"])


def accounted(summary: str) -> bool:
    """Whether an ingest summary (a rich table) says every document read is accounted for."""
    return re.search(r"│\s*accounted\s*│\s*yes: windowed \+ too short", summary) is not None


def info_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"\bINFO\b", line)]


# --- 1. the README's commands with scheme-less HDFS paths ----------------------------------------

def test_readme_commands_run_on_the_cluster_with_scheme_less_hdfs_paths(pipeline, on_hdfs,
                                                                         work):
    require_ok(pipeline, "ingest", "score", "select", "export", "report")
    c = on_hdfs
    for table in ("/lake/windows", "/lake/windows_rejects", "/lake/scores",
                  "/lake/scores_rejects", "/lake/selection"):
        assert "_delta_log" in c.hdfs_ls(table), table
    # the score stream's checkpoint beside the scores table, on HDFS too
    assert c.hdfs_ls("/lake/scores/_longattn_checkpoints")
    assert c.hdfs_exists("/out/export/manifest.json")
    assert b"<html" in c.hdfs_cat("/out/report.html")[:2000].lower()
    # scheme-less meant HDFS, not the driver's disk or working folder
    assert not Path("/lake").exists() and not Path("/out/export").exists()
    ours = ("events", "spark-conf-default", "env.tar.gz", "cluster-job.yaml", "probe.py")
    leftovers = sorted(p.name for p in work.iterdir() if p.name not in ours)
    assert leftovers == [], f"the jobs wrote into their working folder: {leftovers}"


def test_the_console_shows_the_jobs_summaries_not_spark_info_lines(pipeline):
    """Spark's default log4j profile prints INFO; the jobs start their context at WARN."""
    summaries = {"ingest": "accounted", "score": "scored now", "select": "selection",
                 "export": "exported selection", "report": "report written to"}
    for name, marker in summaries.items():
        step = pipeline[name]
        if not step.ok:
            continue  # reported by the test above
        assert marker in step.done.stdout, f"{name}: no summary in its output\n{step.explain()}"
        noise = info_lines(step.console)
        assert len(noise) < 20, f"{name}: {len(noise)} INFO lines, e.g.\n" + "\n".join(noise[:30])


def test_windows_and_rejects_equal_the_embedded_run(pipeline, embedded, spark, on_hdfs):
    require_ok(pipeline, "ingest")
    clustered = rows(spark, uri(on_hdfs, "/lake/windows"), "window_id", WINDOW_COLUMNS)
    local = rows(spark, embedded["windows"], "window_id", WINDOW_COLUMNS)
    assert len(local) > 20
    assert sorted(clustered) == sorted(local)
    assert clustered == local
    assert {v[4] for v in local.values()} == {W}
    assert multiset(spark, uri(on_hdfs, "/lake/windows_rejects"), REJECT_COLUMNS) == \
        multiset(spark, embedded["windows"] + "_rejects", REJECT_COLUMNS)
    reasons = {r[2] for r in multiset(spark, embedded["windows"] + "_rejects", REJECT_COLUMNS)}
    assert reasons == {"malformed_json", "too_short", "duplicate_id", "empty_text",
                       "missing_id"}
    assert accounted(pipeline["ingest"].done.stdout)


def test_scores_equal_the_embedded_run(pipeline, embedded, spark, on_hdfs):
    require_ok(pipeline, "ingest", "score")
    columns = ("seq_len", "min_distance", "ds", "variance", "ds_heads", "var_heads")
    clustered = rows(spark, uri(on_hdfs, "/lake/scores"), ("window_id", "scorer_id"), columns)
    local = rows(spark, embedded["scores"], ("window_id", "scorer_id"), columns)
    assert sorted(clustered) == sorted(local)
    windows = rows(spark, embedded["windows"], "window_id", ())
    assert sorted(k[0] for k in local) == sorted(windows)
    for key, mine in clustered.items():
        theirs = local[key]
        assert mine[:2] == theirs[:2] == (W, W // 4)
        assert close(mine[2], theirs[2]) and close(mine[3], theirs[3]), (key, mine, theirs)
        assert all(close(a, b) for a, b in zip(mine[4] + mine[5], theirs[4] + theirs[5],
                                               strict=True)), key
    assert spark.read.format("delta").load(uri(on_hdfs, "/lake/scores_rejects")).count() == 0


def test_selection_equals_the_embedded_run(pipeline, embedded, spark, on_hdfs):
    require_ok(pipeline, "ingest", "score", "select")
    columns = ("category", "selected", "lds")
    clustered = rows(spark, uri(on_hdfs, "/lake/selection"), "window_id", columns)
    local = rows(spark, embedded["selection"], "window_id", columns)
    assert sorted(clustered) == sorted(local)
    chosen = sorted(k for k, v in clustered.items() if v[1])
    assert chosen == sorted(k for k, v in local.items() if v[1])
    assert 0 < len(chosen) < len(clustered)
    assert all(close(clustered[k][2], local[k][2]) for k in clustered)


def test_export_lines_equal_the_embedded_run(pipeline, embedded, spark, on_hdfs):
    require_ok(pipeline, "ingest", "score", "select", "export")
    c = on_hdfs
    clustered = export_lines(spark, uri(c, "/out/export"),
                             lambda f: c.hdfs_cat(f[len(c.hdfs_uri):]).decode("utf-8"))
    local = export_lines(None, embedded["export"], lambda f: Path(f).read_text("utf-8"))
    assert clustered == local
    selected = rows(spark, embedded["selection"], "window_id", ("selected",))
    assert sorted(d["id"] for d in local) == sorted(k for k, v in selected.items() if v[0])


# --- GPUs only where they are used (Spark's event logs) -------------------------------------------

def test_tokenization_ran_two_tasks_at_once_per_worker(pipeline):
    """Ingest's tokenizing stage (the MapInArrow stage that reads no file) is not bound to
    GPU slots: each executor (one GPU, 2 cores) ran 2 of its tasks side by side."""
    require_ok(pipeline, "ingest")
    log = pipeline["ingest"].event_log()
    stages = log.stages_with("MapInArrow", without_prefix="Scan")
    assert stages, "no tokenization stage in the ingest's event log"
    assert all(s.resource_profile == 0 for s in stages)
    best: dict[str, int] = {}
    for stage in stages:
        for executor, n in stage.max_concurrency().items():
            best[executor] = max(best.get(executor, 0), n)
    assert sorted(best) == sorted(log.executors), best
    assert set(best.values()) == {2}, f"tokenizing tasks at once per executor: {best}"


def test_scoring_stage_ran_at_most_one_task_per_gpu(pipeline):
    """Scoring has its own stage-level ResourceProfile (1 GPU per task, --task-gpus 1); its
    tasks ran on both executors, one at a time on each (each executor holds one address)."""
    require_ok(pipeline, "score")
    log = pipeline["score"].event_log()
    scoring = [s for s in log.stages if s.resource_profile != 0]
    assert scoring, "no stage with a non-default ResourceProfile in the score's event log"
    profiles = {s.resource_profile for s in scoring}
    for pid in profiles:
        gpu = log.resource_profiles[pid]["task"].get("gpu", {})
        assert gpu.get("Amount") == 1.0, log.resource_profiles[pid]
    assert all("MapInArrow" in s.scopes for s in scoring)
    addresses = {e: info.get("Resources", {}).get("gpu", {}).get("addresses")
                 for e, info in log.executors.items()}
    assert sorted(map(tuple, addresses.values())) == [("0",), ("1",)], addresses
    ran_on: set[str] = set()
    for stage in scoring:
        per_executor = stage.max_concurrency()
        ran_on |= set(per_executor)
        assert set(per_executor.values()) == {1}, (stage.stage_id, per_executor)
    assert ran_on == set(log.executors)
    # every other stage of the job ran in the default profile
    assert all(s.resource_profile == 0 for s in log.stages if s not in scoring)


# --- 2. explicit hdfs:// URIs, shipped environment and config, and losing a worker -------------

@dataclass
class UriRun:
    steps: dict[str, Step]
    tables: dict[str, str]     # hdfs://host:port/uri/lake/...
    marker: Path               # one line per Python worker started by the archive's python
    kills: dict[str, dict]     # step -> the moment its worker was killed ({}: job ended first)


def after_first_commit_while_staging(cluster: TestCluster, table: str):
    """The moment to kill a worker in the middle of a job writing ``table`` (an HDFS path):
    its first MERGE commit is in, and the job is writing the next batch of results to
    reliable storage (a new folder under ``<table>/_longattn_staging``: tasks are running,
    and what they compute is what the following commits will read)."""
    seen: dict[int, str] = {}
    before: set[str] = set()

    def ready() -> dict:
        nonlocal before
        seen.update(delta_operations(cluster, table, seen))
        merges = [v for v, op in seen.items() if op == "MERGE"]
        try:
            staging = set(cluster.hdfs_ls(f"{table}/_longattn_staging"))
        except FileNotFoundError:
            staging = set()
        if not merges:
            before = staging  # the first batch's (released after its commits)
            return {}
        fresh = staging - before
        return {"commits": len(merges), "staging": sorted(fresh)} if fresh else {}

    return ready


@pytest.fixture(scope="module")
def uri_jobs(on_hdfs: TestCluster, work: Path, tmp_path_factory) -> UriRun:
    """ingest -> score once more, every path an ``hdfs://host:port/...`` URI, into another
    folder (its select runs in the probe's driver, see ``uri_run``); and, in the same jobs
    (spark-submits are what costs here):

    - the ingest ships a Python environment (``--archives env.tar.gz#environment``, the
      executors' Python ``./environment/bin/python``): its ``bin/python`` is a wrapper that
      logs where it runs and execs the project's venv Python. A venv-pack of the real 4 GB
      venv would take minutes to pack and unpack per run; the mechanism (archive -> unpacked
      as ./environment in each executor's work folder -> the executors' Python) is the same;
    - ingest and score take their settings from a config file shipped with ``--files`` and
      named by ``--config`` (client mode: the driver reads it in its working folder);
    - ingest (4 commit chunks) loses worker 0 once its first windows commit is in and the
      next chunk's tokenization is being written; score (a few files per micro-batch) loses
      worker 1 once its first commit is in and the next micro-batch's scores are being
      written. Each worker comes back at once, as a replaced node would."""
    c = on_hdfs
    root = tmp_path_factory.mktemp("uri-run")
    marker = root / "python-workers.log"
    env = root / "env"
    (env / "bin").mkdir(parents=True)
    wrapper = env / "bin" / "python"
    wrapper.write_text("#!/bin/sh\n"
                       f'echo "$PWD|$0" >> "{marker}"\n'
                       f'exec "{c.python}" "$@"\n')
    wrapper.chmod(0o755)
    archive = work / "env.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(env / "bin", arcname="bin")
    config = work / "cluster-job.yaml"
    config.write_text(f"ingest:\n  window_size: {W}\n  commit_chunks: 4\n"
                      "score:\n  device: cpu\n  task_gpus: 1\n")
    # The executors' Python is the one the driver names (spark.pyspark.python, or
    # PYSPARK_PYTHON in the driver's environment); spark.executorEnv.PYSPARK_PYTHON alone
    # leaves them on the driver's choice (seen: the system python3, without pyarrow). The
    # driver keeps the cluster's Python (spark.pyspark.driver.python): client mode.
    shipped = ["--archives", f"{archive.name}#environment", "--files", config.name,
               "--conf", "spark.pyspark.python=./environment/bin/python"]
    paths = lake("/uri")
    tables = {k: uri(c, v) for k, v in paths.items()}
    model = uri(c, "/models/m")
    steps: dict[str, Step] = {}
    kills: dict[str, dict] = {}

    steps["ingest"], kills["ingest"] = submit_killing_a_worker(
        c, "uri-ingest", "ingest", ["--config", config.name, "--input",
                                    uri(c, "/in/docs.jsonl"), "--tokenizer", model,
                                    "--table", tables["windows"]],
        work, worker=0, ready=after_first_commit_while_staging(c, paths["windows"]),
        extra=shipped)
    if steps["ingest"].ok:
        files = sum(1 for part in c.hdfs_ls(paths["windows"]) if part.startswith("category=")
                    for name in c.hdfs_ls(f"{paths['windows']}/{part}")
                    if name.endswith(".parquet"))
        steps["score"], kills["score"] = submit_killing_a_worker(
            c, "uri-score", "score", ["--config", config.name, "--windows", tables["windows"],
                                      "--model", model, "--table", tables["scores"],
                                      "--files-per-batch", str(max(1, files // 3))],
            work, worker=1, ready=after_first_commit_while_staging(c, paths["scores"]))
        kills["score"]["windows_files"] = files
    steps.setdefault("score", Step("uri-score", [], None, 0.0, work / "events" / "uri-score"))
    print_times("explicit URIs (+ worker losses)", steps)
    print(f"kills: {kills}", flush=True)
    return UriRun(steps, tables, marker, kills)


def uri_select_argv(tables: dict[str, str]) -> list[str]:
    return ["--windows", tables["windows"], "--scores", tables["scores"], "--alpha", "0.5",
            "--keep-fraction", "0.5", "--table", tables["selection"]]


@pytest.fixture(scope="module")
def uri_run(uri_jobs: UriRun, probe) -> UriRun:
    """The URI run's ingest and score (``uri_jobs``) and its select: ``jobs/select.py`` with
    the same explicit URIs, run through its entry point in the probe's spark-submit driver
    (one spark-submit less; its exit code, stdout and stderr are captured as a submit's)."""
    steps = dict(uri_jobs.steps)
    found = probe.cases.get("uri_select")
    if found is None:
        steps["select"] = Step("uri-select", [], None, 0.0, probe.step.events)
    else:
        argv = ["select", *uri_select_argv(uri_jobs.tables)]
        code = found["code"] if isinstance(found["code"], int) else 1
        steps["select"] = Step("uri-select (in the probe's driver)", argv,
                               subprocess.CompletedProcess(argv, code, found["stdout"],
                                                           found["stderr"]),
                               (found["ended_ms"] - found["started_ms"]) / 1000,
                               probe.step.events)
    return UriRun(steps, uri_jobs.tables, uri_jobs.marker, uri_jobs.kills)


def test_explicit_hdfs_uris_give_the_same_ids(uri_run, pipeline, spark, on_hdfs):
    require_ok(uri_run.steps, "ingest", "score", "select")
    require_ok(pipeline, "ingest", "score", "select")
    t = uri_run.tables
    assert rows(spark, t["windows"], "window_id", WINDOW_COLUMNS) == \
        rows(spark, uri(on_hdfs, "/lake/windows"), "window_id", WINDOW_COLUMNS)
    # the same source URI as the first run: the same reject ids too
    assert multiset(spark, t["windows"] + "_rejects", ("reject_id", *REJECT_COLUMNS)) == \
        multiset(spark, uri(on_hdfs, "/lake/windows_rejects"), ("reject_id", *REJECT_COLUMNS))
    columns = ("ds", "variance")
    mine = rows(spark, t["scores"], ("window_id", "scorer_id"), columns)
    first = rows(spark, uri(on_hdfs, "/lake/scores"), ("window_id", "scorer_id"), columns)
    assert sorted(mine) == sorted(first)
    assert all(close(mine[k][0], first[k][0]) and close(mine[k][1], first[k][1]) for k in mine)
    chosen = rows(spark, t["selection"], "window_id", ("selected",))
    assert sorted(k for k, v in chosen.items() if v[0]) == sorted(
        k for k, v in rows(spark, uri(on_hdfs, "/lake/selection"), "window_id",
                           ("selected",)).items() if v[0])
    assert on_hdfs.hdfs_ls("/uri/lake/scores/_longattn_checkpoints")


def test_archives_python_ran_the_executors_python_workers(uri_run, on_hdfs):
    """--archives env.tar.gz#environment was unpacked as ./environment in each executor's work
    folder, and the executors started their Python workers through ./environment/bin/python
    there; the job succeeded with them."""
    require_ok(uri_run.steps, "ingest")
    apps = uri_run.steps["ingest"].event_log().app_ids
    assert len(apps) == 1, apps
    lines = uri_run.marker.read_text().splitlines() if uri_run.marker.exists() else []
    assert lines, "no Python worker started through ./environment/bin/python"
    seen_workers = set()
    for line in lines:
        cwd, argv0 = line.split("|", 1)
        assert argv0 == "./environment/bin/python", line
        where = Path(cwd).relative_to(on_hdfs.base)  # worker-<i>/<app id>/<executor id>
        assert where.parts[1] == apps[0], line
        assert (Path(cwd) / "environment" / "bin" / "python").is_file(), line
        seen_workers.add(where.parts[0])
    assert seen_workers == {"worker-0", "worker-1"}, lines


def test_a_config_file_shipped_with_files_configures_the_jobs(uri_run, spark):
    """The URI run's ingest and score took window size, commit chunks, device and task GPUs
    only from ``--config cluster-job.yaml`` (shipped with ``--files``)."""
    require_ok(uri_run.steps, "ingest", "score")
    for name, absent in (("ingest", ("--window-size", "--commit-chunks")),
                         ("score", ("--device", "--task-gpus"))):
        argv = uri_run.steps[name].argv
        assert "--config" in argv and not set(absent) & set(argv), argv
    sizes = {r[0] for r in spark.read.format("delta").load(uri_run.tables["windows"])
             .select("n_tokens").distinct().collect()}
    assert sizes == {W}
    merges = [op for op in delta_history(spark, uri_run.tables["windows"]) if op == "MERGE"]
    assert len(merges) > 1, "commit_chunks 4 from the config: several windows commits"
    log = uri_run.steps["score"].event_log()
    assert any(s.resource_profile != 0 for s in log.stages), "score ran without task GPUs"


def test_ingest_finishes_accounted_after_losing_a_worker_mid_job(uri_run, pipeline, spark,
                                                                on_hdfs):
    """Worker 0 (its pid, with its executor) was killed while the second commit chunk was
    being tokenized and written: the ingest still finished (exit 0), accounted for every
    document, with exactly one row per key and the clean run's windows and rejects."""
    step, moment = uri_run.steps["ingest"], uri_run.kills["ingest"]
    assert moment, f"the ingest ended before the kill:\n{step.explain()}"
    assert moment["commits"] < 4, f"killed after the last chunk: {moment}"
    require_ok(uri_run.steps, "ingest")
    assert accounted(step.done.stdout), step.done.stdout
    # Whether a task was running at the very moment of the kill depends on timing; what makes
    # this test bite is that the dead executor's blocks are gone for the rest of the job (with
    # results kept on executors it fails with CHECKPOINT_RDD_BLOCK_ID_NOT_FOUND).
    require_ok(pipeline, "ingest")
    assert rows(spark, uri_run.tables["windows"], "window_id", WINDOW_COLUMNS) == \
        rows(spark, uri(on_hdfs, "/lake/windows"), "window_id", WINDOW_COLUMNS)
    assert multiset(spark, uri_run.tables["windows"] + "_rejects",
                    ("reject_id", *REJECT_COLUMNS)) == \
        multiset(spark, uri(on_hdfs, "/lake/windows_rejects"), ("reject_id", *REJECT_COLUMNS))


def test_score_finishes_with_the_clean_scores_after_losing_a_worker_mid_job(uri_run, pipeline,
                                                                            spark, on_hdfs):
    """Worker 1 was killed right after the score job's first commit, with micro-batches still
    to go: the job finished (exit 0) with exactly one row per (window_id, scorer_id), the
    clean run's scores, and no rejects."""
    step, moment = uri_run.steps["score"], uri_run.kills.get("score")
    require_ok(uri_run.steps, "ingest")
    assert moment, f"the score job ended before the kill:\n{step.explain()}"
    require_ok(uri_run.steps, "score")
    commits = [op for op in delta_history(spark, uri_run.tables["scores"]) if op == "MERGE"]
    assert moment["commits"] < len(commits), f"killed after the last commit: {moment}"
    # (as for ingest: the kill is mid-job, before the last commit; a task need not be running)
    require_ok(pipeline, "score")
    columns = ("ds", "variance")
    assert rows(spark, uri_run.tables["scores"], ("window_id", "scorer_id"), columns) == \
        rows(spark, uri(on_hdfs, "/lake/scores"), ("window_id", "scorer_id"), columns)
    assert spark.read.format("delta").load(uri_run.tables["scores"] + "_rejects").count() == 0


def delta_history(spark, table: str) -> list[str]:
    """The operations of a Delta table's commits, oldest first."""
    from delta.tables import DeltaTable

    return [r["operation"] for r in DeltaTable.forPath(spark, table).history()
            .orderBy("version").collect()]


# --- 3. bad input, and what a scoring task sees (one driver, one spark-submit) --------------------

PROBE = r'''
"""Runs each bad-input case through its jobs/<job>.py entry point, as spark-submit would, in
this one driver (its stdout, stderr and exit code captured), then a probe stage with the score
job's own GPU ResourceProfile that reports TaskContext.resources() from every task."""
import contextlib, io, json, os, runpy, sys, time, traceback

from longattn_spark.session import get_spark

jobs, cases = sys.argv[1], json.loads(sys.argv[2])
spark = get_spark()
results = []
for name, job, argv in cases:
    out, err, code = io.StringIO(), io.StringIO(), None
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [os.path.join(jobs, job + ".py"), *argv]
    started = time.time() * 1000
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        code = "raised"
        err.write(traceback.format_exc())
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    results.append({"name": name, "code": code, "stdout": out.getvalue(),
                    "stderr": err.getvalue(), "started_ms": started,
                    "ended_ms": time.time() * 1000})
print("BAD_INPUT=" + json.dumps(results), flush=True)

from longattn_spark.score.job import gpu_resource_profile

def report(batches):
    import os, time
    import pyarrow as pa
    from pyspark import TaskContext
    context = TaskContext.get()
    gpu = context.resources().get("gpu")
    began = time.time()
    for _ in batches:
        pass
    time.sleep(0.5)
    yield pa.RecordBatch.from_pylist([{
        "partition": context.partitionId(), "stage": context.stageId(),
        "addresses": ",".join(gpu.addresses) if gpu is not None else "",
        "cwd": os.getcwd(), "began": began, "ended": time.time()}], schema=pa.schema([
            ("partition", pa.int64()), ("stage", pa.int64()), ("addresses", pa.string()),
            ("cwd", pa.string()), ("began", pa.float64()), ("ended", pa.float64())]))

schema = ("partition long, stage long, addresses string, cwd string, began double, "
          "ended double")
profile = gpu_resource_profile(spark, 1.0)
found = spark.range(0, 8, 1, 8).mapInArrow(report, schema, profile=profile).collect()
print("GPU_PROBE=" + json.dumps([r.asDict() for r in found]), flush=True)
'''


@dataclass
class Probe:
    step: Step
    cases: dict[str, dict] = field(default_factory=dict)
    tasks: list[dict] = field(default_factory=list)


def bad_input_cases(cluster: TestCluster) -> list[tuple[str, str, list[str]]]:
    ingest = ["--tokenizer", "/models/m", "--window-size", str(W)]
    return [
        ("unreachable_fs", "ingest", ["--input", "nosuchfs://bucket/docs", *ingest,
                                      "--table", "/bad/a/windows"]),
        ("no_s3a_jars", "ingest", ["--input", "s3a://bucket/docs.jsonl", *ingest,
                                   "--table", "/bad/b/windows"]),
        ("missing_hdfs_input", "ingest", ["--input", "/in/nope.jsonl", *ingest,
                                          "--table", "/bad/c/windows"]),
        ("missing_hdfs_tokenizer", "ingest", ["--input", "/in/docs.jsonl", "--tokenizer",
                                              "/models/nope", "--table", "/bad/d/windows"]),
        ("model_without_config", "score", ["--windows", "/lake/windows", "--model",
                                           "/models/empty", "--table", "/bad/e/scores",
                                           "--device", "cpu"]),
        ("uc_table_without_checkpoint", "score", ["--windows", "/lake/windows", "--model",
                                                  "/models/m", "--table", "main.lake.scores",
                                                  "--device", "cpu"]),
    ]


@pytest.fixture(scope="module")
def probe(on_hdfs: TestCluster, work: Path, uri_jobs: UriRun) -> Probe:
    """One spark-submit: the bad-input cases, then (when the URI run's score succeeded) the
    URI run's select (case ``uri_select``), then the GPU probe stage."""
    script = work / "probe.py"
    script.write_text(PROBE)
    events = work / "events" / "probe"
    cases = bad_input_cases(on_hdfs)
    if uri_jobs.steps["score"].ok:
        cases.append(("uri_select", "select", uri_select_argv(uri_jobs.tables)))
    argv = [*GPU_CLUSTER, *event_log_conf(events), str(script), str(JOBS), json.dumps(cases)]
    started = time.monotonic()
    done = on_hdfs.spark_submit(argv, cwd=work, env=default_logging_env(work),
                                timeout=SUBMIT_TIMEOUT)
    result = Probe(Step("probe", argv, done, time.monotonic() - started, events))
    for line in done.stdout.splitlines():
        if line.startswith("BAD_INPUT="):
            result.cases = {c["name"]: c for c in json.loads(line.split("=", 1)[1])}
        elif line.startswith("GPU_PROBE="):
            result.tasks = json.loads(line.split("=", 1)[1])
    return result


EXPECTED_ERRORS = {
    # case: (job, what the one line must name)
    "unreachable_fs": ("ingest", ["--input", "nosuchfs://bucket/docs", "nosuchfs://",
                                  "cannot reach"]),
    "no_s3a_jars": ("ingest", ["--input", "s3a://bucket/docs.jsonl", "s3a://",
                               "cannot reach"]),
    "missing_hdfs_input": ("ingest", ["--input", "/in/nope.jsonl", "{hdfs}",
                                      "no such file"]),
    "missing_hdfs_tokenizer": ("ingest", ["--tokenizer", "/models/nope", "{hdfs}",
                                          "no such file"]),
    "model_without_config": ("score", ["--model", "/models/empty", "{hdfs}", "config.json"]),
    "uc_table_without_checkpoint": ("score", ["main.lake.scores", "--checkpoint-location"]),
}


@pytest.mark.parametrize("case", sorted(EXPECTED_ERRORS))
def test_bad_input_is_one_line_naming_path_and_filesystem_before_any_spark_job(probe, case,
                                                                             on_hdfs):
    assert probe.cases, f"the probe reported no bad-input case:\n{probe.step.explain()}"
    found = probe.cases[case]
    job, names = EXPECTED_ERRORS[case]
    assert found["code"] not in (0, None, "raised"), found
    lines = [line for line in found["stderr"].splitlines() if line.strip()]
    assert len(lines) == 1, f"{case}: not one line:\n{found['stderr']}"
    line = lines[0]
    assert line.startswith(f"longattn-spark {job}: error: ") or \
        line.startswith("longattn-spark: error: "), line
    for name in names:
        assert name.format(hdfs=on_hdfs.hdfs_uri) in line, f"{case}: {name!r} not in: {line}"
    # before any Spark job: Spark's own event log shows no job submitted during the case
    jobs = [e["Submission Time"] for e in probe.step.event_log().events
            if e.get("Event") == "SparkListenerJobStart"]
    during = [t for t in jobs if found["started_ms"] <= t <= found["ended_ms"]]
    assert during == [], f"{case}: {len(during)} Spark job(s) ran before the error"
    # and nothing was written for it (no table created before the input was checked)
    argv = next(a for n, _j, a in bad_input_cases(on_hdfs) if n == case)
    table = argv[argv.index("--table") + 1]
    if table.startswith("/"):
        assert not on_hdfs.hdfs_exists(table), f"{case}: {table} was created"


def test_each_scoring_task_saw_its_own_gpu_address(probe, on_hdfs):
    """A stage with the score job's ResourceProfile (gpu_resource_profile(spark, 1)): every
    task saw one GPU address in TaskContext.resources(), its own worker's, and a worker ran
    these tasks one at a time."""
    assert probe.step.ok, probe.step.explain()
    tasks = probe.tasks
    assert sorted(t["partition"] for t in tasks) == list(range(8))
    by_worker: dict[str, list[dict]] = {}
    for t in tasks:
        worker = Path(t["cwd"]).relative_to(on_hdfs.base).parts[0]  # worker-<i>
        by_worker.setdefault(worker, []).append(t)
        index = int(worker.split("-")[1])
        assert t["addresses"] == on_hdfs.workers[index].gpu_address, t
    assert sorted(by_worker) == ["worker-0", "worker-1"], by_worker.keys()
    for worker, runs in by_worker.items():
        runs.sort(key=lambda t: t["began"])
        for a, b in zip(runs, runs[1:]):
            assert b["began"] >= a["ended"] - 0.05, (worker, a, b)
