"""Cluster overhead: the same ingest + score as the README's spark-submit commands on the
2-worker test cluster (tests/cluster.py: HDFS + Spark standalone, 2 cores and one ``gpu``
address per worker, scheme-less HDFS paths) and as ``longattn-spark ingest|score`` in an
embedded ``local[2]`` session on the same input. Prints both times and their ratio. Goal: the
cluster within 2x of the embedded run.

    .venv/bin/python benchmarks/cluster_overhead.py [--docs-per-category 40] [--window-size 2048]

Each side is timed as a user sees it: the wall time of each command, JVM and executor start
included (the cluster itself is started before and not counted). On a 2-core machine the
cluster's 4 task slots share the same 2 cores as local[2]'s 2, so the ratio measures the
overhead of the cluster (executor JVMs, HDFS, shuffles over the network, the model fetched
into each executor's cache, stage-level GPU scheduling), not a speed-up.

Input: the demo corpus (standard-library sources, pydoc pages, license files) with the real
Llama-3 tokenizer; the model is the random smoke-test Llama (hidden 256, 8 query / 2 KV heads,
Llama-3 vocabulary); scoring on the CPU in float32 (``--device cpu``, ``--task-gpus 1`` on the
cluster as on a GPU cluster).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from cluster import TestCluster  # noqa: E402 - tests/ on the path above

from demo_input import write_demo_input  # noqa: E402 - benchmarks/ (the script's folder)


def job_args(docs: str, model: str, lake: str, window_size: int) -> dict[str, list[str]]:
    return {
        "ingest": ["--input", docs, "--tokenizer", model, "--window-size", str(window_size),
                   "--table", f"{lake}/windows"],
        "score": ["--windows", f"{lake}/windows", "--model", model, "--table",
                  f"{lake}/scores", "--device", "cpu", "--task-gpus", "1"],
    }


def summary_value(output: str, label: str) -> str:
    """A value from a job's summary table (``│ label │ value │``)."""
    match = re.search(rf"│\s*{re.escape(label)}\s*│\s*([^│]+?)\s*│", output)
    return match.group(1) if match else "?"


def timed(cmd: list[str], **kwargs) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-3000:]}\n"
                 f"{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs-per-category", type=int, default=40)
    parser.add_argument("--window-size", type=int, default=2048)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cluster-overhead-"))
    cluster = None
    try:
        docs, model = write_demo_input(work, args.docs_per_category, args.window_size)

        # embedded local[2]: the CLI, one JVM per command, as a user runs it locally
        embedded: dict[str, float] = {}
        outputs: dict[str, str] = {}
        local = job_args(str(docs), str(model), str(work / "lake"), args.window_size)
        cli = [sys.executable, "-m", "longattn_spark.cli"]
        for job, flags in local.items():
            embedded[job], outputs[f"embedded {job}"] = timed(
                [*cli, job, *flags, "--master", "local[2]", "--lakehouse",
                 str(work / "lakehouse")], cwd=work)
            print(f"embedded local[2] {job}: {embedded[job]:.1f} s", flush=True)

        # the cluster: HDFS + master + 2 workers, then spark-submit jobs/<job>.py
        started = time.perf_counter()
        cluster = TestCluster(work / "cluster").start()
        print(f"cluster started in {time.perf_counter() - started:.1f} s (not counted)",
              flush=True)
        cluster.hdfs_put(docs, "/in/docs.jsonl")
        cluster.hdfs_put(model, "/models/m")
        clustered: dict[str, float] = {}
        remote = job_args("/in/docs.jsonl", "/models/m", "/lake", args.window_size)
        cwd = work / "submit"
        cwd.mkdir()
        for job, flags in remote.items():
            started = time.perf_counter()
            done = cluster.spark_submit(
                ["--conf", "spark.executor.resource.gpu.amount=1", str(REPO / "jobs" /
                                                                      f"{job}.py"), *flags],
                cwd=cwd, timeout=3600)
            clustered[job] = time.perf_counter() - started
            if done.returncode != 0:
                sys.exit(f"cluster {job} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            outputs[f"cluster {job}"] = done.stdout
            print(f"cluster (2 workers) {job}: {clustered[job]:.1f} s", flush=True)

        for side in ("embedded", "cluster"):
            windows = summary_value(outputs[f"{side} ingest"], "windows")
            scored = summary_value(outputs[f"{side} score"], "scored now")
            print(f"{side}: windows {windows}, scored {scored}")
        print()
        print(f"{'':<10}{'embedded local[2]':>20}{'cluster (2x2 cores)':>22}{'ratio':>8}")
        for job in ("ingest", "score"):
            print(f"{job:<10}{embedded[job]:>18.1f} s{clustered[job]:>20.1f} s"
                  f"{clustered[job] / embedded[job]:>7.2f}x")
        total_e, total_c = sum(embedded.values()), sum(clustered.values())
        print(f"{'total':<10}{total_e:>18.1f} s{total_c:>20.1f} s{total_c / total_e:>7.2f}x"
              f"   (goal <= 2x)")
    finally:
        if cluster is not None:
            cluster.stop()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
