"""Spark Connect overhead: ingest, score, select, export and report as ``longattn-spark <job>``
on a classic embedded ``local[2]`` session and over Spark Connect (``SPARK_REMOTE``, a Connect
server from pyspark's distribution with a ``local[2]`` master and a Python without
longattn_spark, so the client ships the package: tests/connect_server.py) on the same input,
side by side in one run, each side on its own tables. Prints each job's wall time, as a user
sees it (process and session start included; the Connect server itself is started before and
not counted), the ratio per job, and the ratio of ingest + score + select (issue 20's goal:
<= 1.3x).

    .venv/bin/python benchmarks/connect_overhead.py [--docs-per-category 40] [--window-size 2048]

Input: the demo corpus (standard-library sources, pydoc pages, license files) with the real
Llama-3 tokenizer; the model is the random smoke-test Llama.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from connect_server import ConnectServer  # noqa: E402 - tests/ on the path above

from demo_input import write_demo_input  # noqa: E402 - benchmarks/ (the script's folder)

JOBS = ("ingest", "score", "select", "export", "report")
PIPELINE = ("ingest", "score", "select")


def job_args(docs: str, model: str, lake: str, window_size: int) -> dict[str, list[str]]:
    """Each job's flags on the tables under ``lake``; ``model`` is the model folder, which
    holds the tokenizer too."""
    scores = f"{lake}/scores"
    return {
        "ingest": ["--input", docs, "--tokenizer", model, "--window-size",
                   str(window_size), "--table", f"{lake}/windows"],
        "score": ["--windows", f"{lake}/windows", "--model", model, "--table", scores],
        "select": ["--windows", f"{lake}/windows", "--scores", scores, "--keep-fraction",
                   "0.5", "--table", f"{lake}/selection"],
        "export": ["--selection", f"{lake}/selection", "--windows", f"{lake}/windows",
                   "--tokenizer", model, "--output", f"{lake}/export"],
        "report": ["--windows", f"{lake}/windows", "--scores", scores, "--selection",
                   f"{lake}/selection", "--output", f"{lake}/report.html"],
    }


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-3000:]}\n"
                 f"{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs-per-category", type=int, default=40)
    parser.add_argument("--window-size", type=int, default=2048)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="connect-overhead-"))
    server = None
    try:
        docs, model = write_demo_input(work, args.docs_per_category, args.window_size)
        started = time.perf_counter()
        server = ConnectServer(work / "server").start()
        print(f"Connect server started in {time.perf_counter() - started:.1f} s "
              "(not counted)", flush=True)

        cli = [sys.executable, "-m", "longattn_spark.cli"]
        classic_env = {k: v for k, v in os.environ.items() if k != "SPARK_REMOTE"}
        connect_env = {**classic_env, "SPARK_REMOTE": server.url}
        local_flags = ["--master", "local[2]", "--lakehouse", str(work / "lakehouse")]
        times: dict[str, dict[str, float]] = {"classic": {}, "connect": {}}
        for job in JOBS:
            for side, env in (("classic", classic_env), ("connect", connect_env)):
                flags = job_args(str(docs), str(model), str(work / side),
                                 args.window_size)[job]
                extra = local_flags if side == "classic" else []
                times[side][job] = timed([*cli, job, *flags, *extra], env, work)
                print(f"{side:<8} {job}: {times[side][job]:.1f} s", flush=True)

        print()
        print(f"{'':<10}{'classic local[2]':>18}{'Spark Connect':>16}{'ratio':>8}")
        for job in JOBS:
            c, r = times["classic"][job], times["connect"][job]
            print(f"{job:<10}{c:>16.1f} s{r:>14.1f} s{r / c:>7.2f}x")
        for name, jobs in (("ingest+score+select", PIPELINE), ("all five", JOBS)):
            total_c = sum(times["classic"][j] for j in jobs)
            total_r = sum(times["connect"][j] for j in jobs)
            print(f"{name:<20}{total_c:>6.1f} s{total_r:>14.1f} s{total_r / total_c:>7.2f}x")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
