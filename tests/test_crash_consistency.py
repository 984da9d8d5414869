"""Crash consistency with real kills (issue 12, point 6): ingest and score run as separate
processes (the CLI, as a user runs it) and are killed with SIGKILL at chosen points, found by
watching the tables' Delta logs:

- ingest between its rejects commit and its windows commit, and again after a first chunk;
- score in the middle of a micro-batch (after the first commit, before the last).

After a re-run, the tables equal a clean run's: the same rows, no duplicates, and the
accounting holds (the CLI exits 0 only when every document is accounted for). The re-run that
finishes is the same CLI command run in this process, on the test session: what it resumes
from is only what the killed process left on disk, and a cold CLI process (its own driver JVM,
Python workers and first Delta reads) cost about 30 s more than the job itself here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longattn_spark.config import IngestConfig, ScoreConfig
from longattn_spark.ingest import ingest
from longattn_spark.score.job import score_windows
from longattn_spark.tables.refs import TableRef
from longattn_spark.tokenizer import load_tokenizer_spec

from documents import long_documents
from helpers import summary_number

W = 1024
DOC_CHARS = 12_000  # about 2.8k tokens: 2-3 windows per document
BAD = ['{"id": "broken", "text": "unterminated', '["a list"]',
       json.dumps({"id": "e1", "text": "  ", "category": "book"})]


def corpus_lines() -> list[str]:
    """Long documents of two categories (the standard library's largest modules), one too
    short, and the bad lines."""
    docs = long_documents("book", 4, DOC_CHARS) + long_documents("arxiv", 8, DOC_CHARS,
                                                                 offset=4)
    lines = [json.dumps(d) for d in docs]
    lines.append(json.dumps({"id": "short", "category": "book", "text": "Too short."}))
    return lines + BAD


def versions(table: str) -> list[int]:
    log = Path(table) / "_delta_log"
    if not log.is_dir():
        return []
    return sorted(int(p.name.split(".")[0]) for p in log.glob("*.json"))


def merges(table: str) -> int:
    """MERGE commits in a Delta table's log (table creation and property commits excluded)."""
    log = Path(table) / "_delta_log"
    return sum('"operation":"MERGE"' in p.read_text(encoding="utf-8")
               for p in log.glob("*.json")) if log.is_dir() else 0


def cli(*args: str, lakehouse: Path) -> list[str]:
    return [sys.executable, "-m", "longattn_spark.cli", *args, "--master", "local[2]",
            "--lakehouse", str(lakehouse), "--catalog", "in-memory"]


def job_args(cmd: list[str]) -> list[str]:
    """The job and its flags of a ``cli(...)`` command, without the process's own Spark
    settings (an in-process run uses the test session)."""
    args = cmd[3:cmd.index("--master")]
    assert cmd[1:3] == ["-m", "longattn_spark.cli"] and args, cmd
    return args


def run_until(cmd: list[str], kill_when, timeout: float = 600) -> bool:
    """Run ``cmd``; SIGKILL it (its whole process group: driver JVM and Python workers) as soon
    as ``kill_when()`` is true. True when it was killed, False when it ended first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if kill_when():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
        if proc.poll() is None:
            raise AssertionError(f"{cmd[3]} did not reach its kill point in {timeout} s")
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class RejectsCommittedWindowsNot:
    """True once a new rejects commit appears with no windows commit after it (the window
    between the two commits of one chunk); ``landed()`` then tells whether the kill that
    followed still fell in that window."""

    def __init__(self, windows: str, rejects: str) -> None:
        self.windows, self.rejects = windows, rejects
        self.baseline: tuple[int, int] | None = None
        self.fired: tuple[int, int] | None = None

    def __call__(self) -> bool:
        r, w = len(versions(self.rejects)), len(versions(self.windows))
        if r == 0:  # both tables are created first; start watching once they exist
            return False
        if self.baseline is None or w != self.baseline[1]:
            self.baseline = (r, w)
            return False
        if r > self.baseline[0]:
            self.fired = (r, w)
            return True
        return False

    def landed(self) -> bool:
        """After the kill: the chunk's rejects are committed and its windows are not."""
        return self.fired is not None and len(versions(self.windows)) == self.fired[1]


def run_to_end(cmd: list[str], capsys) -> str:
    """The re-run that finishes: ``cmd``'s job through the CLI in this process (module
    docstring); it must exit 0 (for ingest: every document accounted for). Returns what it
    printed."""
    from longattn_spark import cli as longattn_cli

    capsys.readouterr()
    code = longattn_cli.run(job_args(cmd))
    printed = capsys.readouterr()
    assert code == 0, (printed.out + printed.err)[-3000:]
    return printed.out


def keyed(spark, table: str, key: str, columns: tuple[str, ...]) -> dict:
    rows = TableRef(table).read(spark).collect()
    keys = [r[key] for r in rows]
    assert len(keys) == len(set(keys)), f"duplicate {key}s in {table}"
    return {r[key]: tuple(r[c] for c in columns) for r in rows}


WINDOW_COLUMNS = ("doc_id", "category", "token_start", "input_ids", "doc_sha256", "tokenizer")
REJECT_COLUMNS = ("doc_id", "category", "reason", "doc_sha256")


@pytest.fixture(scope="module")
def clean_ingest(spark, tmp_path_factory, llama3_tokenizer_dir):
    root = tmp_path_factory.mktemp("crash")
    source = root / "docs.jsonl"
    source.write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
    table = str(root / "clean" / "windows")
    summary = ingest(spark, IngestConfig(input=str(source), tokenizer=str(llama3_tokenizer_dir),
                                         window_size=W, table=table, commit_chunks=3),
                     load_tokenizer_spec(llama3_tokenizer_dir))
    assert summary.accounted and summary.rejected_total == len(BAD)
    return root, source, table


def test_ingest_killed_between_commits_resumes_to_the_clean_tables(spark, clean_ingest,
                                                                   llama3_tokenizer_dir,
                                                                   capsys):
    root, source, clean = clean_ingest
    table = str(root / "killed" / "windows")
    rejects = table + "_rejects"
    cmd = cli("ingest", "--input", str(source), "--tokenizer", str(llama3_tokenizer_dir),
              "--window-size", str(W), "--table", table, "--commit-chunks", "3",
              lakehouse=root / "lake")

    # 1. killed when a chunk's rejects are committed and its windows are not
    between = RejectsCommittedWindowsNot(table, rejects)
    assert run_until(cmd, between), "ingest ended before committing a chunk's rejects"
    assert between.landed(), "the kill came after the chunk's windows commit"
    # 2. the re-run is killed again as soon as a chunk's windows are committed
    committed = len(versions(table))
    assert run_until(cmd, lambda: len(versions(table)) > committed), \
        "the re-run ended without committing windows"
    killed_at = len(versions(table))
    # 3. the last re-run finishes, accounted for (exit 0), and commits windows the second
    #    kill prevented: that kill landed mid-run, with chunks still to do
    run_to_end(cmd, capsys)
    assert len(versions(table)) > killed_at, "the second kill came after the last chunk"
    assert keyed(spark, table, "window_id", WINDOW_COLUMNS) == \
        keyed(spark, clean, "window_id", WINDOW_COLUMNS)
    assert keyed(spark, rejects, "reject_id", REJECT_COLUMNS) == \
        keyed(spark, clean + "_rejects", "reject_id", REJECT_COLUMNS)


def test_score_killed_mid_micro_batch_resumes_to_the_clean_scores(spark, clean_ingest,
                                                                   tmp_path,
                                                                   llama3_tokenizer_dir,
                                                                   capsys):
    from longattn_spark.demo.smoke_model import write_smoke_test_model

    root, _source, windows = clean_ingest
    model = tmp_path / "model"
    write_smoke_test_model(model, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                           num_hidden_layers=1, intermediate_size=64, dtype="float32",
                           tokenizer_dir=llama3_tokenizer_dir)
    scores = str(tmp_path / "scores")
    clean = str(tmp_path / "clean_scores")
    # the clean run in this process (the same library; only the killed one needs its own)
    score_windows(spark, ScoreConfig(windows=windows, model=str(model), device="cpu",
                                     table=clean), progress=False)
    n_files = len(list(Path(windows).rglob("*.parquet")))
    # three micro-batches: a kill after the first commit lands before the last; every further
    # one is a MERGE the re-run pays for
    per_batch = max(1, n_files // 3)
    assert n_files // per_batch >= 3, "several micro-batches are needed to kill in the middle"
    cmd = cli("score", "--windows", windows, "--model", str(model), "--device", "cpu",
              "--table", scores, "--files-per-batch", str(per_batch), lakehouse=root / "lake")
    # killed while a later micro-batch is being scored: after the first commit
    assert run_until(cmd, lambda: merges(scores) >= 1)
    assert merges(scores) < -(-n_files // per_batch), "killed before the last micro-batch"
    committed = TableRef(scores).read(spark).count()
    printed = run_to_end(cmd, capsys)
    # the re-run skipped what the killed run had committed and scored the rest
    total = TableRef(clean).read(spark).count()
    assert 0 < committed < total
    assert summary_number(printed, "already scored (skipped)") == committed, printed[-3000:]
    assert summary_number(printed, "scored now") == total - committed, printed[-3000:]
    columns = ("scorer_id", "ds", "variance")
    assert keyed(spark, scores, "window_id", columns) == keyed(spark, clean, "window_id",
                                                                columns)
