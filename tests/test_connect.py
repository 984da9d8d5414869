"""Spark Connect (issue 14): ingest, select, export and report run over a real Spark Connect
server (tests/connect_server.py, Delta without any Delta Connect plugin) and give the same
tables and files as the classic session on the same input; a --remote that does not answer
gets one line naming the URL. Score runs over Connect too (issue 20: DataFrame API and SQL
only): killed after its first commit and run again, it ends with the classic run's scores,
one row per window, having scored only what the killed run had not committed. The
server's Python has no longattn_spark (issue 20): every job above works because the client
ships the package with the session; a package missing there is named in one line.

The Connect side runs the CLI in a subprocess with SPARK_REMOTE (a Connect session changes
pyspark's behaviour process-wide); the classic side runs the same commands in this process on
the test session, and reads every result for the comparison."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from longattn_spark import cli
from longattn_spark.export import export_files
from longattn_spark.tables.refs import TableRef

from helpers import summary_number

REPO = Path(__file__).resolve().parents[1]
CLI = str(REPO / ".venv" / "bin" / "longattn-spark")
WINDOW = 1024


def _documents(work: Path) -> list[dict]:
    """Two documents of each demo category (standard-library sources, pydoc pages, license
    files: always on the machine) cut to about 3 windows each, a document too short for one
    window, one with an empty text (a reject); the caller adds a line that is not JSON."""
    from longattn_spark.demo.corpus import build_demo_corpus

    build_demo_corpus(work / "demo.jsonl", max_docs_per_category=2)
    docs = []
    with (work / "demo.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append({"id": str(row["id"]), "category": row["category"],
                         "text": row["text"][:14000]})
    docs.append({"id": "short", "category": docs[0]["category"],
                 "text": "Too short for a window."})
    docs.append({"id": "empty", "category": docs[-1]["category"], "text": ""})
    return docs


@pytest.fixture(scope="module")
def run(tmp_path_factory, llama3_tokenizer_dir, spark, connect_server):
    """Both pipelines on the same input: ``run["classic"][x]`` / ``run["connect"][x]`` are
    table paths and output folders; score ran once (classic) and both selections read it."""
    base = tmp_path_factory.mktemp("connect_run")
    docs = base / "docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in _documents(base))
                    + "{not json\n", encoding="utf-8")
    from longattn_spark.demo.smoke_model import write_smoke_test_model

    model = base / "model"
    write_smoke_test_model(model)
    tokenizer = str(llama3_tokenizer_dir)
    out: dict = {"tokenizer": tokenizer, "model": str(model), "logs": {}}
    for side in ("classic", "connect"):
        root = base / side
        out[side] = {name: str(root / name) for name in
                     ("windows", "rejects", "scores", "selection", "export", "report.html")}
    steps = {
        "ingest": lambda t: ["ingest", "--input", str(docs), "--tokenizer", tokenizer,
                             "--window-size", str(WINDOW), "--table", t["windows"],
                             "--rejects-table", t["rejects"]],
        "select": lambda t: ["select", "--windows", t["windows"], "--scores",
                             t["scores"], "--keep-fraction", "0.5",
                             "--alpha", "0.5", "--table", t["selection"]],
        "export": lambda t: ["export", "--selection", t["selection"], "--windows",
                             t["windows"], "--tokenizer", tokenizer, "--shards", "2",
                             "--output", t["export"]],
        "report": lambda t: ["report", "--windows", t["windows"], "--scores",
                             t["scores"], "--selection", t["selection"],
                             "--output", t["report.html"]],
    }
    for name, args in steps.items():
        assert cli.run(args(out["classic"])) == 0, f"classic {name} failed"
        if name == "ingest":
            assert cli.run(["score", "--windows", out["classic"]["windows"], "--model",
                            str(model), "--table", out["classic"]["scores"],
                            "--batch-size", "4"]) == 0
        done = connect_cli(connect_server.url, args(out["connect"]), cwd=base)
        out["logs"][name] = done.stdout + done.stderr
        assert done.returncode == 0, f"connect {name} failed:\n{done.stderr[-3000:]}"
        if name == "ingest":
            score = ["score", "--windows", out["connect"]["windows"], "--model", str(model),
                     "--table", out["connect"]["scores"], "--batch-size", "4",
                     "--files-per-batch", "1"]
            out["kill"] = kill_after_first_commit(connect_server.url, score, base, spark,
                                                  out["connect"])
            done = connect_cli(connect_server.url, score, cwd=base)
            out["logs"]["score"] = done.stdout + done.stderr
            assert done.returncode == 0, f"connect score failed:\n{done.stderr[-3000:]}"
    return out


def merge_commits(table: str) -> int:
    log = Path(table) / "_delta_log"
    return sum('"operation":"MERGE"' in p.read_text(encoding="utf-8")
               for p in log.glob("*.json")) if log.is_dir() else 0


def kill_after_first_commit(url: str, args: list[str], cwd: Path, spark, tables: dict
                            ) -> dict:
    """Runs ``score`` over Connect and SIGKILLs the client (its process group) as soon as its
    first MERGE is in the scores table; fails unless the kill landed before the last
    micro-batch. Returns what the table held then."""
    import signal
    import time

    batches = len(TableRef(tables["windows"]).read(spark).inputFiles())  # --files-per-batch 1
    assert batches >= 2, f"the windows table has {batches} data file(s): no micro-batch to kill"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK_GATEWAY", "SPARK_CONNECT", "SPARK_REMOTE"))}
    env["SPARK_REMOTE"] = url
    proc = subprocess.Popen([CLI, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            merges = merge_commits(tables["scores"])
            if merges:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.05)
        else:
            err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
            raise AssertionError(f"score over Connect ended (rc {proc.returncode}) or timed "
                                 f"out before its first commit:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    assert merges < batches, f"killed after {merges} of {batches} commits: too late"
    rows = TableRef(tables["scores"]).read(spark).count()
    assert rows > 0
    return {"merges": merges, "batches": batches, "rows": rows}


def connect_cli(url: str, args: list[str], cwd: Path, timeout: float = 600
                ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK_GATEWAY", "SPARK_CONNECT", "SPARK_REMOTE"))}
    env["SPARK_REMOTE"] = url
    return subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _rows(spark, table: str, drop: tuple[str, ...] = ()) -> list[dict]:
    frame = TableRef(table).read(spark).drop(*drop)
    return sorted((r.asDict(recursive=True) for r in frame.collect()),
                  key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_ingest_on_connect_writes_the_classic_tables(spark, run):
    classic = _rows(spark, run["classic"]["windows"], drop=("ingested_at",))
    connect = _rows(spark, run["connect"]["windows"], drop=("ingested_at",))
    assert len(classic) >= 12 and len({r["category"] for r in classic}) == 3
    assert connect == classic  # same window_ids, ids, offsets, tokenizer identity
    drop = ("rejected_at", "ingested_at", "source_file", "run_id")
    rejects = [{k: v for k, v in r.items() if k not in drop}
               for r in _rows(spark, run["classic"]["rejects"])]
    rejects_connect = [{k: v for k, v in r.items() if k not in drop}
                       for r in _rows(spark, run["connect"]["rejects"])]
    assert sorted(r["reason"] for r in rejects) == sorted(
        r["reason"] for r in rejects_connect)
    assert len(rejects) == 3  # too short, empty text, not JSON
    assert "accounted" in run["logs"]["ingest"] and "yes" in run["logs"]["ingest"]


def test_ingest_on_connect_tables_are_delta_tables_with_our_properties(spark, run):
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{run['connect']['windows']}`").collect()[0]
    assert detail["properties"]["longattn.kind"] == "windows"
    assert detail["partitionColumns"] == ["category"]
    assert detail["description"]


def test_select_on_connect_selects_the_same_windows(spark, run):
    def selected(side: str) -> dict[str, tuple]:
        return {r["window_id"]: (r["category"], r["selected"], r["lds"])
                for r in _rows(spark, run[side]["selection"])}

    classic, connect = selected("classic"), selected("connect")
    assert connect.keys() == classic.keys()
    assert {w: v[:2] for w, v in connect.items()} == {w: v[:2] for w, v in classic.items()}
    # the z-scores' sums may run in another order on the other session: equal to rounding
    assert all(abs(connect[w][2] - classic[w][2]) <= 1e-9 * max(1.0, abs(classic[w][2]))
               for w in classic)
    kept = [w for w, v in classic.items() if v[1]]
    assert 0 < len(kept) < len(classic)


def test_export_on_connect_writes_the_same_lines(spark, run):
    def lines(side: str) -> list[str]:
        files = export_files(run[side]["export"], spark)
        assert len(files) == 2
        return [line for f in files
                for line in Path(f.removeprefix("file:")).read_text(encoding="utf-8")
                .splitlines()]

    classic = lines("classic")
    assert classic and lines("connect") == classic
    manifest = json.loads(Path(run["connect"]["export"], "manifest.json").read_text())
    assert manifest["windows"] == len(classic)
    assert not list(Path(run["connect"]["export"]).glob("_attempts/*/_spark"))


def _visible_text(html: str) -> str:
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    text = re.sub(r'src="data:[^"]*"', "", text)
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", text)


def test_report_on_connect_shows_the_same_numbers(spark, run):
    classic = _visible_text(Path(run["classic"]["report.html"]).read_text(encoding="utf-8"))
    connect = _visible_text(Path(run["connect"]["report.html"]).read_text(encoding="utf-8"))
    # paths, the selection ids (they hash the input tables' locations) and the time of
    # writing differ; everything else is the same
    # the Connect scores table has more versions (its killed run committed too)
    for side in ("classic", "connect"):
        scores = re.escape(run[side]["scores"])
        classic, connect = (re.sub(rf"{scores} version \d+", run[side]["scores"], text)
                            for text in (classic, connect))
        classic, connect = (re.sub(r"scores v\d+\)", "scores)", text)
                            for text in (classic, connect))
        for path in run[side].values():
            classic = classic.replace(path, "<path>")
            connect = connect.replace(path, "<path>")
        selection_id = _rows(spark, run[side]["selection"])[0]["selection_id"]
        classic = classic.replace(selection_id, "<selection>")
        connect = connect.replace(selection_id, "<selection>")
    stamp = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2})?(\.\d+)?( ?UTC|Z)?")
    assert stamp.sub("<time>", connect) == stamp.sub("<time>", classic)
    for category in {r["category"] for r in _rows(spark, run["classic"]["windows"])}:
        assert category in connect


def test_score_on_connect_resumes_to_the_classic_scores(spark, run):
    """Killed after its first commit, then run again: the classic scores (same window_ids and
    scorer_id, values within 1e-6 relative), one row per window, no rejects, and the second
    run scored only the windows the killed one had not committed."""
    columns = ("seq_len", "min_distance", "ds", "variance", "ds_heads", "var_heads")

    def scores(side: str) -> dict[tuple, tuple]:
        rows = _rows(spark, run[side]["scores"])
        keyed = {(r["window_id"], r["scorer_id"]): tuple(r[c] for c in columns) for r in rows}
        assert len(keyed) == len(rows), f"{side}: duplicate rows"
        return keyed

    classic, connect = scores("classic"), scores("connect")
    assert sorted(connect) == sorted(classic) and len(classic) >= 12
    for key, theirs in classic.items():
        mine = connect[key]
        assert mine[:2] == theirs[:2]
        flat = [(a, b) for a, b in zip([mine[2], mine[3], *mine[4], *mine[5]],
                                       [theirs[2], theirs[3], *theirs[4], *theirs[5]],
                                       strict=True)]
        assert all(abs(a - b) <= 1e-6 * abs(b) for a, b in flat), (key, mine, theirs)
    rejects = run["connect"]["scores"] + "_rejects"
    assert TableRef(rejects).read(spark).count() == 0
    kill, log = run["kill"], run["logs"]["score"]
    assert 1 <= kill["merges"] < kill["batches"]
    skipped = summary_number(log, "already scored (skipped)")
    scored = summary_number(log, "scored now")
    assert skipped >= kill["rows"] and skipped + scored == len(classic)
    assert scored > 0


def test_remote_that_does_not_answer_is_one_line(tmp_path):
    port = _free_port()  # nothing listens there
    done = subprocess.run([CLI, "select", "--remote", f"sc://127.0.0.1:{port}", "--windows",
                           "w", "--scores", "s", "--keep-fraction", "0.5", "--table",
                           str(tmp_path / "sel")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"sc://127.0.0.1:{port}" in lines[0] and "no Spark Connect server" in lines[0]


def test_remote_that_accepts_but_never_answers_is_one_line(tmp_path):
    """A port that accepts TCP connections but never speaks gRPC (a wrong service)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        done = subprocess.run([CLI, "ingest", "--remote", f"sc://127.0.0.1:{port}", "--input",
                               "x.jsonl", "--tokenizer", "t", "--table", "w"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"sc://127.0.0.1:{port}" in lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHIPPING = r"""
import json, sys
from pyspark.sql import SparkSession, functions as F
from longattn_spark.config import SparkSettings
from longattn_spark.session import get_spark
from longattn_spark.ship import missing_server_package

url = sys.argv[1]


def where_the_server_finds_it(_):
    import importlib.util
    spec = importlib.util.find_spec("longattn_spark")
    return str(spec.origin) if spec else "nowhere"


def needs_a_client_only_package(_):
    import longattn_clientdep  # installed here, on the client, not on the server
    return "imported"


out = {}
raw = SparkSession.builder.remote(url).getOrCreate()
origin = F.udf(where_the_server_finds_it)
out["before"] = raw.range(1).select(origin("id")).first()[0]
raw.stop()
spark = get_spark(SparkSettings(remote=url))
out["after"] = spark.range(1).select(origin("id")).first()[0]
out["the_job_code"] = spark.range(1).select(F.udf(
    lambda _: __import__("longattn_spark.ship", fromlist=["x"]).PACKAGE)("id")).first()[0]
try:
    spark.range(1).select(F.udf(needs_a_client_only_package)("id")).collect()
    out["missing"] = None
except Exception as exc:
    out["missing"] = missing_server_package(exc)
print(json.dumps(out))
"""


def test_the_package_is_shipped_to_a_server_without_it(connect_server, tmp_path):
    """A plain Connect session finds no longattn_spark on the server; the jobs' session
    (``get_spark``) has shipped the package zip, and UDFs import it from there. A UDF that
    needs a package the server lacks ends as one line naming it."""
    clientdep = tmp_path / "client_only" / "longattn_clientdep"
    clientdep.mkdir(parents=True)
    (clientdep / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK_GATEWAY", "SPARK_CONNECT", "SPARK_REMOTE"))}
    env["PYTHONPATH"] = str(tmp_path / "client_only")
    script = tmp_path / "ship.py"
    script.write_text(SHIPPING)
    done = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(script),
                           connect_server.url], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["before"] == "nowhere"
    assert re.search(r"longattn_spark-[^/]+-[0-9a-f]{16}\.zip/longattn_spark/__init__\.py$",
                     out["after"]), out["after"]
    assert out["the_job_code"] == "longattn_spark"
    line = out["missing"]
    assert line is not None and "\n" not in line
    assert "'longattn_clientdep'" in line and "cluster library" in line
    assert "serverless environment" in line
