"""Crash consistency with real kills (issue 12, point 6): ingest and score run as separate
processes (the CLI, as a user runs it) and are killed with SIGKILL at chosen points, found by
watching the tables' Delta logs:

- ingest between its rejects commit and its windows commit, and again after a first chunk;
- score in the middle of a micro-batch (after the first commit, before the last).

After a re-run, the tables equal a clean run's: the same rows, no duplicates, and the
accounting holds (the CLI exits 0 only when every document is accounted for)."""

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
from longattn_spark.tables import TableRef
from longattn_spark.ingest.tokenize import load_tokenizer_spec

W = 1024
BAD = ['{"id": "broken", "text": "unterminated', '["a list"]',
       json.dumps({"id": "e1", "text": "  ", "category": "book"})]


def corpus_lines(corpus: Path) -> list[str]:
    lines = []
    for name, n in (("books.jsonl", 4), ("arxiv.jsonl", 8)):
        with (corpus / name).open(encoding="utf-8") as f:
            for _, line in zip(range(n), f):
                record = json.loads(line)
                lines.append(json.dumps({"id": record["id"], "category": record["category"],
                                         "text": record["text"][:30_000]}))
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
    between the two commits of one chunk)."""

    def __init__(self, windows: str, rejects: str) -> None:
        self.windows, self.rejects = windows, rejects
        self.baseline: tuple[int, int] | None = None

    def __call__(self) -> bool:
        r, w = len(versions(self.rejects)), len(versions(self.windows))
        if r == 0:  # both tables are created first; start watching once they exist
            return False
        if self.baseline is None or w != self.baseline[1]:
            self.baseline = (r, w)
            return False
        return r > self.baseline[0]


def run_to_end(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def keyed(spark, table: str, key: str, columns: tuple[str, ...]) -> dict:
    rows = TableRef(table).read(spark).collect()
    keys = [r[key] for r in rows]
    assert len(keys) == len(set(keys)), f"duplicate {key}s in {table}"
    return {r[key]: tuple(r[c] for c in columns) for r in rows}


WINDOW_COLUMNS = ("doc_id", "category", "token_start", "input_ids", "doc_sha256", "tokenizer")
REJECT_COLUMNS = ("doc_id", "category", "reason", "doc_sha256")


@pytest.fixture(scope="module")
def clean_ingest(spark, shared_corpus, tmp_path_factory, llama3_tokenizer_dir):
    root = tmp_path_factory.mktemp("crash")
    source = root / "docs.jsonl"
    source.write_text("\n".join(corpus_lines(shared_corpus)) + "\n", encoding="utf-8")
    table = str(root / "clean" / "windows")
    summary = ingest(spark, IngestConfig(input=str(source), tokenizer=str(llama3_tokenizer_dir),
                                         window_size=W, table=table, commit_chunks=3),
                     load_tokenizer_spec(llama3_tokenizer_dir))
    assert summary.accounted and summary.rejected_total == len(BAD)
    return root, source, table


def test_ingest_killed_between_commits_resumes_to_the_clean_tables(spark, clean_ingest,
                                                                   llama3_tokenizer_dir):
    root, source, clean = clean_ingest
    table = str(root / "killed" / "windows")
    rejects = table + "_rejects"
    cmd = cli("ingest", "--input", str(source), "--tokenizer", str(llama3_tokenizer_dir),
              "--window-size", str(W), "--table", table, "--commit-chunks", "3",
              lakehouse=root / "lake")

    # 1. a chunk's rejects are committed, its windows are not
    assert run_until(cmd, RejectsCommittedWindowsNot(table, rejects))
    # 2. the re-run is killed again as soon as a chunk's windows are committed (mid-run)
    committed = len(versions(table))
    killed = run_until(cmd, lambda: len(versions(table)) > committed)
    # 3. the last re-run finishes, accounted for (exit 0)
    run_to_end(cmd)
    assert killed or len(versions(table)) > committed
    assert keyed(spark, table, "window_id", WINDOW_COLUMNS) == \
        keyed(spark, clean, "window_id", WINDOW_COLUMNS)
    assert keyed(spark, rejects, "reject_id", REJECT_COLUMNS) == \
        keyed(spark, clean + "_rejects", "reject_id", REJECT_COLUMNS)


def test_score_killed_mid_micro_batch_resumes_to_the_clean_scores(spark, clean_ingest,
                                                                   tmp_path,
                                                                   llama3_tokenizer_dir):
    from longattn_spark.demo.smoke_model import write_smoke_test_model

    root, _source, windows = clean_ingest
    model = tmp_path / "model"
    write_smoke_test_model(model, tokenizer_dir=llama3_tokenizer_dir)
    scores = str(tmp_path / "scores")
    clean = str(tmp_path / "clean_scores")
    # the clean run in this process (the same library; only the killed one needs its own)
    score_windows(spark, ScoreConfig(windows=windows, model=str(model), device="cpu",
                                     table=clean), progress=False)
    n_files = len(list(Path(windows).rglob("*.parquet")))
    per_batch = max(1, n_files // 4)
    assert n_files // per_batch >= 3, "several micro-batches are needed to kill in the middle"
    cmd = cli("score", "--windows", windows, "--model", str(model), "--device", "cpu",
              "--table", scores, "--files-per-batch", str(per_batch), lakehouse=root / "lake")
    # killed while a later micro-batch is being scored: after the first commit
    assert run_until(cmd, lambda: merges(scores) >= 1)
    assert merges(scores) < -(-n_files // per_batch), "killed before the last micro-batch"
    run_to_end(cmd)
    columns = ("scorer_id", "ds", "variance")
    assert keyed(spark, scores, "window_id", columns) == keyed(spark, clean, "window_id",
                                                                columns)
