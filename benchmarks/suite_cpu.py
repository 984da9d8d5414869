"""Where the test suite's CPU goes, by kind of process: runs a command (by default the README's
test command) under the kernel's process accounting (BSD ``acct``: one record per process
when it exits, with its user + system CPU, its life, its parent and whether it was forked
without exec), and prints the CPU of the processes that ended during the run by kind, beside
the machine's busy CPU and what processes running before and after it used meanwhile (the
VM's own threads: ``kdamond``, pid 1, ``ksoftirqd``).

Kinds, told from what the record holds (the name of the process's last thread to exit, the
fork flag, the life):
- ``jvm``: a Java process (its last thread is a JVM thread: ``VM Thread``, ``C1
  CompilerThread``, ``Reference Handler``, ...); ``jvm (whole run)``: one that lived at least 90%
  of the run: the test sessions' own Spark drivers (one per xdist worker) and the servers the
  run starts once (HDFS, the Spark Connect server);
- ``python``: a Python process started with exec (pytest, its xdist workers, the CLI
  subprocesses, Spark's Python daemons); ``python (forked)``: one forked without exec: Spark's
  Python workers, forked by a daemon for the UDFs;
- ``other``: the rest by name (Chromium, shell tools).

Needs root and Debian's ``acct`` (``apt-get install acct``: ``accton``, ``dump-acct``).

    .venv/bin/python benchmarks/suite_cpu.py                      # the whole suite
    .venv/bin/python benchmarks/suite_cpu.py -- .venv/bin/python -m pytest -q -n 0 tests/test_selection.py
    .venv/bin/python benchmarks/suite_cpu.py --pacct FILE --wall 1655   # a file already written
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COMMAND = [str(REPO / ".venv" / "bin" / "python"), "-m", "pytest", "-q"]
#: the names a JVM's threads have (the record names a process by its last thread to exit)
JVM_THREADS = ("Reference Handl", "Signal Dispatch", "Monitor Deflati", "C1 CompilerThre",
               "C2 CompilerThre", "Finalizer", "Notification Th", "VM Thread", "java",
               "Service Thread", "Sweeper thread", "Common-Cleaner", "VM Periodic Tas",
               "process reaper", "Attach Listener", "block-manager-s", "Thread-")
JVM_PREFIXES = ("GC Thread", "G1 ", "C1 Comp", "C2 Comp", "Thread-", "pool-", "Executor",
                "dispatcher", "shuffle", "rpc", "netty", "driver", "dag-", "spark", "Spark",
                "ForkJoin", "Timer", "IPC", "DataXceiver", "DataNode", "org.apache",
                "block-manager", "lifeguard")
#: names of a CPython process's threads (pyarrow's jemalloc, grpc in the Connect client)
PYTHON_PREFIXES = ("python", "jemalloc_bg_thd", "event_engine", "grpc_global_tim")
WHOLE_RUN = 0.9


@dataclass(frozen=True)
class Record:
    """One process accounting record: CPU and life in seconds."""

    name: str
    cpu_s: float
    life_s: float
    pid: int
    ppid: int
    forked: bool


def read_records(pacct: Path) -> list[Record]:
    """``dump-acct``'s records (version 3: times in clock ticks of 1/100 s)."""
    text = subprocess.run(["dump-acct", str(pacct)], capture_output=True, text=True,
                          check=True).stdout
    records = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 12 or fields[1] != "v3":
            continue
        records.append(Record(fields[0], (float(fields[2]) + float(fields[3])) / 100,
                              float(fields[4]) / 100, int(fields[9]), int(fields[10]),
                              "F" in fields[11]))
    return records


def kind_of(record: Record, wall_s: float) -> str:
    name = record.name
    if name in JVM_THREADS or name.startswith(JVM_PREFIXES):
        return "jvm (whole run)" if record.life_s >= WHOLE_RUN * wall_s else "jvm"
    if name.startswith(PYTHON_PREFIXES):
        return "python (forked)" if record.forked else "python"
    if "chrom" in name.lower() or name.startswith(("HangWatcher", "ThreadPool")):
        return "chromium"
    return f"other: {name}"


def cpu_by_kind(records: list[Record], wall_s: float) -> dict[str, tuple[int, float]]:
    """{kind: (processes, CPU seconds)}, largest CPU first."""
    out: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for record in records:
        entry = out[kind_of(record, wall_s)]
        entry[0] += 1
        entry[1] += record.cpu_s
    return dict(sorted(((k, (n, c)) for k, (n, c) in out.items()), key=lambda kv: -kv[1][1]))


def busy_ticks() -> int:
    """The machine's busy CPU since boot, in ticks: every /proc/stat column but idle and
    iowait."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4]


def process_ticks() -> dict[int, tuple[str, int]]:
    """{pid: (name, user + system ticks)} of every process now."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))
    return out


def run_accounted(command: list[str], pacct: Path) -> tuple[int, float, float, list]:
    """Runs ``command`` with accounting into ``pacct``: (exit code, wall s, machine busy CPU
    s, [(name, CPU s)] of the processes alive before and after, largest first)."""
    pacct.touch()
    subprocess.run(["accton", str(pacct)], check=True, capture_output=True)
    before, busy0, started = process_ticks(), busy_ticks(), time.monotonic()
    try:
        code = subprocess.run(command, cwd=REPO).returncode
    finally:
        wall, busy1, after = time.monotonic() - started, busy_ticks(), process_ticks()
        subprocess.run(["accton", "off"], check=True, capture_output=True)
    lasting = sorted(((name, (ticks - before[pid][1]) / 100) for pid, (name, ticks)
                      in after.items() if pid in before and before[pid][0] == name),
                     key=lambda item: -item[1])
    return code, wall, (busy1 - busy0) / 100, lasting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pacct", type=Path, help="analyse this accounting file; run nothing")
    parser.add_argument("--wall", type=float, help="with --pacct: the run's wall seconds")
    parser.add_argument("command", nargs="*", help="the command to run (after --)")
    args = parser.parse_args(argv)
    if args.wall is not None and args.pacct is None:
        parser.error("--wall goes with --pacct (a run measures its own wall time)")
    if shutil.which("dump-acct") is None or shutil.which("accton") is None:
        print("suite_cpu: needs Debian's acct package (accton, dump-acct): "
              "apt-get install acct", file=sys.stderr)
        return 2
    if args.pacct is not None:
        if not args.pacct.is_file():
            print(f"suite_cpu: --pacct {args.pacct}: not a file", file=sys.stderr)
            return 2
        try:
            records = read_records(args.pacct)
        except subprocess.CalledProcessError as exc:
            print(f"suite_cpu: --pacct {args.pacct}: dump-acct cannot read it "
                  f"({exc.stderr.strip() or exc})", file=sys.stderr)
            return 2
        if not records:
            print(f"suite_cpu: --pacct {args.pacct}: no process accounting records "
                  "(not a file written by accton?)", file=sys.stderr)
            return 2
        wall = args.wall or max((r.life_s for r in records), default=0.0)
        code, busy, lasting = 0, None, []
    else:
        if os.geteuid() != 0:
            print("suite_cpu: process accounting needs root (accton)", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as tmp:
            pacct = Path(tmp) / "pacct"
            try:
                code, wall, busy, lasting = run_accounted(args.command or DEFAULT_COMMAND, pacct)
            except subprocess.CalledProcessError as exc:
                print(f"suite_cpu: {' '.join(exc.cmd)} failed: "
                      f"{(exc.stderr or b'').decode(errors='replace').strip() or exc}",
                      file=sys.stderr)
                return 2
            except OSError as exc:
                print(f"suite_cpu: process accounting into {pacct}: {exc}", file=sys.stderr)
                return 2
            records = read_records(pacct)
    table = cpu_by_kind(records, wall)
    ended = sum(c for _, c in table.values())
    print(f"command exit {code}; wall {wall:.0f} s; machine busy CPU "
          f"{'-' if busy is None else f'{busy:.0f} s'}; processes that ended: {len(records)}, "
          f"{ended:.0f} CPU-s")
    print(f"{'kind':28s} {'processes':>9s} {'CPU s':>8s} {'share':>6s}")
    for kind, (n, cpu) in list(table.items())[:14]:
        print(f"{kind:28s} {n:9d} {cpu:8.0f} {cpu / max(ended, 1e-9):6.1%}")
    if lasting:
        print("processes running before and after it (the machine's own, and anything else "
              "running), CPU s during the run:")
        for name, cpu in lasting[:6]:
            print(f"  {name:26s} {cpu:8.1f}")
    return code


if __name__ == "__main__":
    sys.exit(main())
