"""A real Spark Connect server on 127.0.0.1 for the tests: pyspark's own distribution started
as Spark's docs start it (``spark-submit --class
org.apache.spark.sql.connect.service.SparkConnectServer``), with Delta from ``--packages``
(resolved into ~/.cache/longattn-spark/ivy, which setup.sh fills) and Delta's SQL extension and
catalog, an embedded ``local[2]`` master. Its Python workers run a Python that has every
package of the project's .venv *except longattn_spark itself* (``python_without_the_package``),
as a server where nobody installed the wheel: the jobs must ship the package
(``longattn_spark.ship``). Recorded by pid and stopped by pid (its process group and recorded
descendants).

    server = ConnectServer(tmp_dir).start()
    server.url                      # sc://127.0.0.1:<free port>
    server.stop()                   # [] when nothing survived
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

from cluster import (
    DELTA_CATALOG,
    DELTA_EXTENSION,
    EMPTY_CONF_DIR,
    IVY_CACHE,
    ClusterError,
    _descendants,
    _pdeathsig,
    _proc_start_time,
    _tail,
    delta_version,
    pyspark_home,
    spark_defaults_for_tests,
    spark_jvm_options,
    venv_python,
)

CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
STARTED_RE = re.compile(r"Spark Connect server started at: 127\.0\.0\.1:(\d+)")


def python_without_the_package(base: Path) -> str:
    """A Python with the .venv's packages but not longattn_spark: a venv without pip over the
    same base interpreter, whose one ``.pth`` file names the .venv's site-packages as a plain
    folder. Folders named in a ``.pth`` are only added to ``sys.path``; their own ``.pth``
    files (the editable install's import hook among them) are not run. Checked before use."""
    import venv

    target = base / "server-python"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(target)
    python = str(target / "bin" / "python")

    def purelib(interpreter: str) -> str:
        return subprocess.run([interpreter, "-c", "import sysconfig; "
                               "print(sysconfig.get_paths()['purelib'])"], check=True,
                              capture_output=True, text=True).stdout.strip()

    Path(purelib(python), "project_venv.pth").write_text(purelib(venv_python()) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run([python, "-c", "import importlib.util as u; "
                            "print(u.find_spec('longattn_spark'))"],
                           capture_output=True, text=True, env=env, cwd=base)
    if found.returncode != 0 or found.stdout.strip() != "None":
        raise ClusterError(f"{python} must not import longattn_spark: {found.stdout}"
                           f"{found.stderr}")
    subprocess.run([python, "-c", "import pyarrow, pandas, numpy, tokenizers, torch, yaml"],
                   check=True, env=env, cwd=base)
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConnectServer:
    def __init__(self, base: Path, startup_timeout: float = 240.0) -> None:
        self.base = Path(base)
        self.port = free_port()
        self.url = f"sc://127.0.0.1:{self.port}"
        self.log = self.base / "connect-server.log"
        self.python = python_without_the_package(self.base)
        self.startup_timeout = startup_timeout
        self.popen: subprocess.Popen | None = None
        self.start_time: str | None = None

    def command(self) -> list[str]:
        conf = {
            "spark.jars.ivy": str(IVY_CACHE),
            "spark.sql.extensions": DELTA_EXTENSION,
            "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.pyspark.python": self.python,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.sql.warehouse.dir": str(self.base / "warehouse"),
            "spark.local.dir": str(self.base / "tmp"),
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.databricks.delta.snapshotPartitions": "2",
            **spark_defaults_for_tests(),
            "spark.driver.memory": "2g",
            "spark.driver.extraJavaOptions":
                f"{spark_jvm_options()} -Dderby.system.home={self.base / 'metastore'}",
        }
        cmd = [str(pyspark_home() / "bin" / "spark-submit"), "--master", "local[2]",
               "--class", CONNECT_SERVER_CLASS,
               "--packages", f"io.delta:delta-spark_2.13:{delta_version()}"]
        for key, value in conf.items():
            cmd += ["--conf", f"{key}={value}"]
        return cmd

    def start(self) -> ConnectServer:
        IVY_CACHE.mkdir(parents=True, exist_ok=True)
        (self.base / "tmp").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYSPARK_GATEWAY", "SPARK_", "PYSPARK_", "PYTHONPATH"))}
        env.update({"SPARK_HOME": str(pyspark_home()), "SPARK_CONF_DIR": str(EMPTY_CONF_DIR),
                    "SPARK_LOCAL_IP": "127.0.0.1",
                    "PYSPARK_PYTHON": self.python})
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.command(), env=env, cwd=self.base,
                                          stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_pdeathsig)
        self.start_time = _proc_start_time(self.popen.pid)
        deadline = time.monotonic() + self.startup_timeout
        while not STARTED_RE.search(self.log.read_text(errors="replace")):
            if self.popen.poll() is not None:
                raise ClusterError(f"the Spark Connect server exited (rc "
                                   f"{self.popen.returncode}); log {self.log}:\n"
                                   f"{_tail(self.log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ClusterError(f"the Spark Connect server did not start in "
                                   f"{self.startup_timeout:.0f} s:\n{_tail(self.log)}")
            time.sleep(0.2)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def stop(self, grace: float = 20.0) -> list[int]:
        """SIGTERM to the server's process group and its recorded descendants (by pid,
        checked against their start times), then SIGKILL; returns the pids still alive."""
        import signal

        if self.popen is None or self.popen.poll() is not None:
            return []
        tracked = {self.pid: self.start_time}
        for pid in _descendants([self.pid]):
            tracked[pid] = _proc_start_time(pid)

        def alive() -> list[int]:
            self.popen.poll()
            return [p for p, t in tracked.items() if t is not None and _proc_start_time(p) == t]

        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            for pid in alive():
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace
            while alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not alive():
                return []
        return alive()
