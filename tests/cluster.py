"""A real multi-process test cluster on 127.0.0.1: one HDFS (Hadoop's MiniDFSCluster, built by
setup.sh from tools/minihdfs into ~/.cache/longattn-spark/minihdfs) and a Spark standalone
master with two workers (2 cores, 3g each) from pyspark's own distribution, each worker
declaring one ``gpu`` resource (address "0" on worker 0, "1" on worker 1) through a discovery
script. Nothing is written into the checkout: every work/log folder is under ``base``.

Used by the session fixture ``cluster`` (tests/conftest.py)::

    c = TestCluster(tmp_dir).start()
    c.hdfs_uri, c.hdfs_http, c.master_url, c.master_ui, c.python, c.timings
    c.spark_submit([script, "--flag"], cwd=tmp, env=None, timeout=600)  # CompletedProcess
    sub = c.start_submit([...], cwd=tmp); ...; sub.wait(timeout)      # in the background
    c.hdfs_put(local_file_or_dir, "/in/x"); c.hdfs_get("/in/x", local); c.hdfs_cat("/f")
    c.hdfs_ls("/lake/t"); c.hdfs_exists(p); c.hdfs_status(p); c.hdfs_mkdir(p); c.hdfs_rm(p)
    c.hdfs_shell("-du", "-s", "/lake")          # Hadoop's FsShell, for anything else
    c.workers[i].pid / .port / .log; c.worker_pids; c.alive_workers(); c.master_state()
    c.kill_worker(0); c.restart_worker(0)
    c.stop()

    delta_operations(c, "/lake/t")            # {version: operation} from the table's _delta_log
    [*event_log_conf(folder), script, ...]    # spark-submit args: Spark's event log in folder
    log = EventLog.read(folder)               # its stages (operators, resource profile, task
    log.stages_with("MapInArrow")[0].max_concurrency()   # attempts), executors, profiles

spark-submit runs with the cluster's master, Delta from ``--packages`` (resolved into
~/.cache/longattn-spark/ivy, which setup.sh fills), ``fs.defaultFS`` = the HDFS (so a
scheme-less path such as ``/lake/t`` is on HDFS) and the project's .venv Python for the driver
and the executors; the caller's args come last (a later ``--conf`` of the same key wins).
The HDFS helpers use WebHDFS on the namenode's HTTP port (no JVM per call); the first write
initializes it in the datanode (a few seconds on a busy machine).

Every process is started in its own session (process group = its pid), recorded by pid, and
stopped by pid at ``stop()``: SIGTERM to the group and to every recorded descendant, a grace
period, then SIGKILL. ``stop()`` is also registered with ``atexit``; each process gets
PR_SET_PDEATHSIG(SIGTERM), so it stops when the thread that started it (the test process's
main thread) dies, and the HDFS program also stops when its standard input (a pipe from the
test process) closes.
"""

from __future__ import annotations

import atexit
import ctypes
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path("~/.cache/longattn-spark").expanduser()
MINIHDFS_DIR = CACHE / "minihdfs"
IVY_CACHE = CACHE / "ivy"
#: the tests' class-data-sharing archives (tests/jvm_archive.py), and the empty SPARK_CONF_DIR
#: of every Spark JVM that maps one (CDS refuses a class path with a non-empty folder on it)
CDS_DIR = CACHE / "cds"
EMPTY_CONF_DIR = CDS_DIR / "empty-spark-conf"
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"

JVM_OPTS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"
TEST_SPARK_CONF_DIR = REPO / "tests" / "spark-conf"


def spark_jvm_options() -> str:
    """JVM_OPTS and, once it is built, the options that map the tests' CDS archive: for Spark
    JVMs whose SPARK_CONF_DIR is EMPTY_CONF_DIR."""
    from jvm_archive import spark_jvm_opts

    return f"{JVM_OPTS} {spark_jvm_opts()}".strip()


def spark_defaults_for_tests() -> dict[str, str]:
    """tests/spark-conf/spark-defaults.conf as a dict: the settings every Spark the tests
    start shares (kilobyte tables: no code generation), read as the product reads a user's."""
    from longattn_spark.session import spark_properties

    return spark_properties((TEST_SPARK_CONF_DIR / "spark-defaults.conf").read_text())


DAEMON_JAVA_OPTS = JVM_OPTS
WORKER_CORES = 2
WORKER_MEMORY = "3g"

_DRIVER_LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = error
"""


class ClusterError(RuntimeError):
    pass


def venv_python() -> str:
    """The project's .venv interpreter (not resolved: the venv is found through the link)."""
    candidate = REPO / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def pyspark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def delta_version() -> str:
    return metadata.version("delta-spark")


def minihdfs_classpath() -> str:
    """The MiniHdfs program's classpath; a clear error when setup.sh has not built it."""
    cp_file = MINIHDFS_DIR / "classpath.txt"
    if not (cp_file.is_file() and (MINIHDFS_DIR / "classes" / "MiniHdfs.class").is_file()):
        raise ClusterError(
            f"the test HDFS (tools/minihdfs) is not built: {cp_file} is missing. "
            "Run `bash setup.sh` (it resolves Hadoop's minicluster with Maven and compiles "
            "MiniHdfs.java into ~/.cache/longattn-spark/minihdfs).")
    classpath = cp_file.read_text().strip()
    missing = [p for p in classpath.split(":") if p and not os.path.exists(p)]
    if missing:
        raise ClusterError(f"the test HDFS classpath names missing files ({missing[:3]}...); "
                           "run `bash setup.sh` again to rebuild it.")
    return classpath


# -- processes ---------------------------------------------------------------------------------

def _pdeathsig() -> None:
    """In the child before exec: SIGTERM when the parent (the test process) dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort (not Linux)
        pass


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return fields[19]  # starttime


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(pids: list[int]) -> list[int]:
    children = _children_map()
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    start_time: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Worker:
    index: int
    proc: _Proc
    gpu_address: str
    work_dir: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> Path:
        return self.proc.log


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_for(predicate, timeout: float, what: str, procs: list[_Proc] = (),
              interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for p in procs:
            if not p.alive():
                raise ClusterError(f"{p.name} exited (rc {p.popen.returncode}) while waiting "
                                   f"for {what}; log {p.log}:\n{_tail(p.log)}")
        if time.monotonic() > deadline:
            detail = "\n".join(f"--- {p.name} ({p.log}):\n{_tail(p.log)}" for p in procs)
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail}")
        time.sleep(interval)


def _grep(path: Path, pattern: re.Pattern) -> re.Match | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    return pattern.search(text)


MASTER_URL_RE = re.compile(r"Starting Spark master at (spark://127\.0\.0\.1:\d+)")
MASTER_UI_RE = re.compile(r"MasterWebUI.*started at https?://[^:\s]+:(\d+)")
WORKER_PORT_RE = re.compile(r"Starting Spark worker 127\.0\.0\.1:(\d+)")


@dataclass
class Submission:
    """A running spark-submit (its own process group, recorded by the cluster)."""
    args: list[str]
    proc: _Proc
    stdout_path: Path
    stderr_path: Path
    _cluster: TestCluster = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.popen.poll()

    def wait(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Waits for the exit; on timeout kills its process group and raises TimeoutExpired."""
        try:
            rc = self.proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise subprocess.TimeoutExpired(
                self.args, timeout, output=self.stdout_path.read_text(errors="replace"),
                stderr=self.stderr_path.read_text(errors="replace")) from None
        self._cluster._forget(self.proc)
        return subprocess.CompletedProcess(
            self.args, rc, self.stdout_path.read_text(errors="replace"),
            self.stderr_path.read_text(errors="replace"))

    def kill(self) -> None:
        self._cluster._terminate([self.proc], grace=0)
        self._cluster._forget(self.proc)


class TestCluster:
    """See the module docstring. ``base`` is a scratch folder (a pytest tmp dir) for every
    work/log folder; nothing is written into the checkout."""

    __test__ = False  # not a pytest test class

    def __init__(self, base: Path, workers: int = 2, startup_timeout: float = 180.0):
        self.base = Path(base)
        self.n_workers = workers
        self.startup_timeout = startup_timeout
        self.python = venv_python()
        self.spark_home = pyspark_home()
        self.delta_version = delta_version()
        self.hdfs_uri: str | None = None
        self.hdfs_http: str | None = None
        self.master_url: str | None = None
        self.master_ui: str | None = None
        self.workers: list[Worker] = []
        self.timings: dict[str, float] = {}
        self._hdfs: _Proc | None = None
        self._master: _Proc | None = None
        self._procs: list[_Proc] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._seq = 0
        self.logs = self.base / "logs"
        self.submit_conf = self.base / "conf-submit"
        self.hadoop_conf = self.base / "conf-hadoop"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TestCluster:
        t0 = time.monotonic()
        classpath = minihdfs_classpath()
        for folder in (self.logs, self.submit_conf, self.base / "hdfs"):
            folder.mkdir(parents=True, exist_ok=True)
        (self.submit_conf / "log4j2.properties").write_text(_DRIVER_LOG4J2)
        atexit.register(self.stop)
        try:
            self._start_hdfs(classpath)
            self._start_master()
            self.master_url = _wait_for(
                lambda: (m := _grep(self._master.log, MASTER_URL_RE)) and m.group(1),
                self.startup_timeout, "the Spark master's URL", [self._master], 0.05)
            for i in range(self.n_workers):
                self.workers.append(self._start_worker(i))
            self.master_ui = _wait_for(
                lambda: (m := _grep(self._master.log, MASTER_UI_RE)) and
                f"http://127.0.0.1:{m.group(1)}",
                self.startup_timeout, "the Spark master's web UI", [self._master], 0.05)
            self._wait_hdfs()
            self.timings["hdfs_ready_s"] = time.monotonic() - t0
            self._wait_workers_registered(self.n_workers)
            self.timings["start_s"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> list[int]:
        """Stops every recorded process (idempotent). Returns the pids that survived
        (should be empty)."""
        with self._lock:
            if self._stopped:
                return []
            self._stopped = True
        t0 = time.monotonic()
        if self._hdfs is not None and self._hdfs.popen.stdin:
            try:
                self._hdfs.popen.stdin.close()
            except OSError:
                pass
        left = self._terminate(list(self._procs), grace=20.0)
        self._procs.clear()
        self.timings["stop_s"] = time.monotonic() - t0
        try:
            (self.base / "timings.json").write_text(json.dumps(self.timings, indent=1))
        except OSError:
            pass
        try:
            atexit.unregister(self.stop)
        except Exception:  # noqa: BLE001
            pass
        return left

    def __enter__(self) -> TestCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- starting ----------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path,
               stdin=subprocess.DEVNULL, stdout: Path | None = None,
               stderr: Path | None = None) -> _Proc:
        """Starts ``cmd`` in a new session; stdout to ``stdout`` (default logs/<name>.log),
        stderr to ``stderr`` (default: the same file). Records it by pid."""
        stdout = stdout or (self.logs / f"{name}.log")
        with open(stdout, "ab") as out, open(stderr or os.devnull, "ab") as err:
            popen = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=stdin, stdout=out,
                                     stderr=err if stderr else subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_pdeathsig)
        proc = _Proc(name, popen, stderr or stdout, _proc_start_time(popen.pid))
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._procs.append(proc)
        if stopped:
            self._terminate([proc], grace=0)
            raise ClusterError("the cluster is stopped")
        return proc

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYSPARK_GATEWAY", "SPARK_", "PYSPARK_"))}
        env.update({
            "SPARK_HOME": str(self.spark_home),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(self.logs),
            "SPARK_PID_DIR": str(self.base / "pids"),
            "PYSPARK_PYTHON": self.python,
            "PYSPARK_DRIVER_PYTHON": self.python,
        })
        return env

    def _daemon_env(self) -> dict[str, str]:
        env = self._base_env()
        env.update({
            # the empty folder the CDS archive was dumped with; executors inherit it
            "SPARK_CONF_DIR": str(EMPTY_CONF_DIR),
            "SPARK_DAEMON_MEMORY": "512m",
            "SPARK_DAEMON_JAVA_OPTS": spark_jvm_options(),
        })
        return env

    def _start_hdfs(self, classpath: str) -> None:
        uri_file = self.base / "hdfs" / "uri.txt"
        cmd = ["java", "-Xmx768m", *DAEMON_JAVA_OPTS.split(), "-cp", classpath, "MiniHdfs",
               "--base-dir", str(self.base / "hdfs" / "data"), "--uri-file", str(uri_file)]
        self._hdfs = self._spawn("hdfs", cmd, self._base_env(), self.base / "hdfs",
                                 stdin=subprocess.PIPE)
        self._hdfs_uri_file = uri_file

    def _wait_hdfs(self) -> None:
        def ready():
            try:
                text = self._hdfs_uri_file.read_text()
            except OSError:
                return None
            values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            return values if "HDFS_URI" in values else None

        values = _wait_for(ready, self.startup_timeout, "HDFS (MiniHdfs)", [self._hdfs])
        self.hdfs_uri = values["HDFS_URI"]
        self.hdfs_http = values.get("HDFS_HTTP")
        # A client configuration for hdfs_shell (FsShell needs a core-site.xml on its classpath).
        self.hadoop_conf.mkdir(parents=True, exist_ok=True)
        (self.hadoop_conf / "core-site.xml").write_text(
            '<?xml version="1.0"?>\n<configuration>\n'
            f'  <property><name>fs.defaultFS</name><value>{self.hdfs_uri}</value></property>\n'
            '  <property><name>dfs.replication</name><value>1</value></property>\n'
            '  <property><name>dfs.client.block.write.locateFollowingBlock.initial.delay.ms'
            '</name><value>50</value></property>\n'
            '</configuration>\n')

    def _spark_class(self, *args: str) -> list[str]:
        return [str(self.spark_home / "bin" / "spark-class"), *args]

    def _start_master(self) -> None:
        cmd = self._spark_class("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                "--port", "0", "--webui-port", "0")
        work = self.base / "master"
        work.mkdir(exist_ok=True)
        self._master = self._spawn("master", cmd, self._daemon_env(), work)

    def _start_worker(self, index: int) -> Worker:
        address = str(index)
        script = self.base / f"gpu-discovery-{index}.sh"
        script.write_text("#!/bin/sh\n"
                          f"echo '{{\"name\": \"gpu\", \"addresses\": [\"{address}\"]}}'\n")
        script.chmod(0o755)
        work = self.base / f"worker-{index}"
        local = self.base / f"worker-{index}-local"
        work.mkdir(exist_ok=True)
        local.mkdir(exist_ok=True)
        env = self._daemon_env()
        env.update({
            "SPARK_WORKER_DIR": str(work),
            "SPARK_LOCAL_DIRS": str(local),
            "SPARK_WORKER_OPTS": ("-Dspark.worker.resource.gpu.amount=1 "
                                  f"-Dspark.worker.resource.gpu.discoveryScript={script}"),
        })
        cmd = self._spark_class("org.apache.spark.deploy.worker.Worker", self.master_url,
                                "--host", "127.0.0.1", "--cores", str(WORKER_CORES),
                                "--memory", WORKER_MEMORY, "--work-dir", str(work),
                                "--webui-port", "0")
        self._seq += 1
        proc = self._spawn(f"worker-{index}.{self._seq}", cmd, env, work)
        return Worker(index, proc, address, work)

    def master_state(self) -> dict:
        with urllib.request.urlopen(f"{self.master_ui}/json/", timeout=5) as r:
            return json.load(r)

    def alive_workers(self) -> list[dict]:
        return [w for w in self.master_state().get("workers", []) if w.get("state") == "ALIVE"]

    def _wait_workers_registered(self, count: int, timeout: float | None = None) -> None:
        def ready():
            try:
                alive = self.alive_workers()
            except (OSError, ValueError):
                return False
            return len(alive) >= count

        _wait_for(ready, timeout or self.startup_timeout, f"{count} Spark workers to register",
                  [self._master] + [w.proc for w in self.workers if w.proc.alive()])
        for w in self.workers:
            if w.port is None and (m := _grep(w.log, WORKER_PORT_RE)):
                w.port = int(m.group(1))

    # -- workers -----------------------------------------------------------------------------

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def kill_worker(self, index: int) -> None:
        """SIGKILLs worker ``index`` by pid, with its process group (its executor JVMs), as a
        lost node would; the executors' Python workers exit when their JVM's pipes close."""
        w = self.workers[index]
        self._terminate([w.proc], grace=0)
        self._forget(w.proc)

    def restart_worker(self, index: int, timeout: float = 120.0) -> Worker:
        """Starts worker ``index`` again (same gpu address, same work dir, new ports) after a
        kill; waits until the master counts it alive."""
        old = self.workers[index]
        if old.proc.alive():
            self.kill_worker(index)
        expected = sum(1 for w in self.workers if w.proc.alive()) + 1

        def dead_gone():  # the master drops the killed worker on disconnect
            try:
                return len(self.alive_workers()) < expected
            except (OSError, ValueError):
                return False
        _wait_for(dead_gone, timeout, "the master to drop the killed worker", [self._master])
        self.workers[index] = self._start_worker(index)
        self._wait_workers_registered(expected, timeout)
        return self.workers[index]

    # -- spark-submit ------------------------------------------------------------------------

    def submit_conf_args(self) -> list[str]:
        IVY_CACHE.mkdir(parents=True, exist_ok=True)
        conf = {
            "spark.jars.ivy": str(IVY_CACHE),
            "spark.sql.extensions": DELTA_EXTENSION,
            "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
            "spark.hadoop.fs.defaultFS": self.hdfs_uri,
            "spark.hadoop.dfs.replication": "1",
            "spark.hadoop.dfs.client.use.datanode.hostname": "false",
            # a closing file's first "is the block complete?" retry after 50 ms, not 400 ms
            "spark.hadoop.dfs.client.block.write.locateFollowingBlock.initial.delay.ms": "50",
            "spark.pyspark.python": self.python,
            "spark.pyspark.driver.python": self.python,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.sql.warehouse.dir": f"{self.hdfs_uri}/warehouse",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.databricks.delta.snapshotPartitions": "2",
            **spark_defaults_for_tests(),
            # short-lived JVMs on 2 cores: C1 only and the serial collector cut CPU per test,
            # and Spark's classes mapped from the tests' CDS archive (tests/jvm_archive.py)
            "spark.driver.extraJavaOptions": spark_jvm_options(),
            "spark.executor.extraJavaOptions": spark_jvm_options(),
        }
        args = ["--master", self.master_url,
                "--packages", f"io.delta:delta-spark_2.13:{self.delta_version}"]
        for key, value in conf.items():
            args += ["--conf", f"{key}={value}"]
        return args

    def submit_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        out = self._base_env()
        out["SPARK_CONF_DIR"] = str(self.submit_conf)
        local = self.base / "driver-local"
        local.mkdir(exist_ok=True)
        out["SPARK_LOCAL_DIRS"] = str(local)  # the driver's scratch (spark.local.dir warns)
        if env:
            out.update(env)
        return out

    def start_submit(self, args: list[str], cwd: str | os.PathLike,
                     env: dict[str, str] | None = None) -> Submission:
        """Starts ``spark-submit`` (cluster settings + ``args``) without waiting; its output
        goes to files under the cluster's log folder."""
        if self.master_url is None or self._stopped:
            raise ClusterError("the cluster is not running")
        cmd = [str(self.spark_home / "bin" / "spark-submit"), *self.submit_conf_args(),
               *[str(a) for a in args]]
        self._seq += 1
        stem = self.logs / f"submit-{self._seq}"
        out, err = Path(f"{stem}.out"), Path(f"{stem}.err")
        proc = self._spawn(f"submit-{self._seq}", cmd, self.submit_env(env), Path(cwd),
                           stdout=out, stderr=err)
        return Submission(cmd, proc, out, err, self)

    def spark_submit(self, args: list[str], cwd: str | os.PathLike,
                     env: dict[str, str] | None = None,
                     timeout: float | None = 600.0) -> subprocess.CompletedProcess:
        """Runs ``spark-submit --master spark://... --packages delta ... <args>`` to the end.
        Returns its CompletedProcess (stdout, stderr as text); on timeout its process group is
        killed and TimeoutExpired is raised."""
        return self.start_submit(args, cwd, env).wait(timeout)

    # -- HDFS (WebHDFS on the namenode's HTTP port: no JVM per call) ----------------------------

    def _webhdfs_url(self, path: str, op: str, **params) -> str:
        if not path.startswith("/"):
            raise ValueError(f"an absolute HDFS path is needed, not {path!r}")
        query = {"op": op, "user.name": getpass.getuser(), **params}
        return (f"{self.hdfs_http}/webhdfs/v1{urllib.parse.quote(path)}?"
                f"{urllib.parse.urlencode(query)}")

    def _webhdfs(self, method: str, path: str, op: str, data: bytes | None = None,
                 **params) -> bytes:
        req = urllib.request.Request(self._webhdfs_url(path, op, **params), data=data,
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            if e.code == 404:
                raise FileNotFoundError(f"hdfs: {path}: {body[:300]}") from None
            raise ClusterError(f"WebHDFS {op} {path}: HTTP {e.code}: {body[:500]}") from None

    def hdfs_ls(self, path: str) -> list[str]:
        """Names in an HDFS folder (sorted); [name] for a file. FileNotFoundError if absent."""
        listing = json.loads(self._webhdfs("GET", path, "LISTSTATUS"))
        names = [s["pathSuffix"] or Path(path).name for s in listing["FileStatuses"]["FileStatus"]]
        return sorted(names)

    def hdfs_status(self, path: str) -> dict:
        return json.loads(self._webhdfs("GET", path, "GETFILESTATUS"))["FileStatus"]

    def hdfs_exists(self, path: str) -> bool:
        try:
            self.hdfs_status(path)
        except FileNotFoundError:
            return False
        return True

    def hdfs_cat(self, path: str) -> bytes:
        return self._webhdfs("GET", path, "OPEN")

    def hdfs_mkdir(self, path: str) -> None:
        self._webhdfs("PUT", path, "MKDIRS")

    def hdfs_rm(self, path: str) -> None:
        self._webhdfs("DELETE", path, "DELETE", recursive="true")

    def hdfs_put(self, local: str | os.PathLike, remote: str) -> None:
        """Copies a local file, or a folder recursively, to ``remote`` (overwriting)."""
        local = Path(local)
        if local.is_dir():
            self.hdfs_mkdir(remote)
            for child in sorted(local.iterdir()):
                self.hdfs_put(child, f"{remote.rstrip('/')}/{child.name}")
            return
        self._webhdfs_create(remote, local)

    def hdfs_get(self, remote: str, local: str | os.PathLike) -> Path:
        """Copies one HDFS file to ``local`` (streamed); returns the local path."""
        local = Path(local)
        req = urllib.request.Request(self._webhdfs_url(remote, "OPEN"))
        try:
            with urllib.request.urlopen(req, timeout=120) as r, open(local, "wb") as out:
                shutil.copyfileobj(r, out, 1 << 20)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise FileNotFoundError(f"hdfs: {remote}") from None
            raise ClusterError(f"WebHDFS OPEN {remote}: HTTP {e.code}") from None
        return local

    def _webhdfs_create(self, remote: str, data: bytes | Path) -> None:
        redirect = json.loads(self._webhdfs("PUT", remote, "CREATE", overwrite="true",
                                            noredirect="true"))["Location"]
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        try:
            with open(data, "rb") if isinstance(data, Path) else _nullcontext(data) as body:
                req = urllib.request.Request(redirect, data=body, method="PUT", headers=headers)
                with urllib.request.urlopen(req, timeout=600) as r:
                    r.read()
        except urllib.error.HTTPError as e:
            raise ClusterError(f"WebHDFS CREATE {remote}: HTTP {e.code}: "
                               f"{e.read().decode(errors='replace')[:500]}") from None

    def hdfs_shell(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """``hadoop fs <args>`` (Hadoop's FsShell in a JVM, ~2 s) for anything the helpers
        above do not cover, e.g. ``hdfs_shell("-du", "-s", "/lake")``."""
        cmd = ["java", "-Xmx256m", *DAEMON_JAVA_OPTS.split(),
               "-cp", f"{self.hadoop_conf}:{minihdfs_classpath()}",
               "org.apache.hadoop.fs.FsShell", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=self._base_env(), start_new_session=True)

    # -- stopping ----------------------------------------------------------------------------

    def _forget(self, proc: _Proc) -> None:
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    def _terminate(self, procs: list[_Proc], grace: float) -> list[int]:
        """SIGTERM (or SIGKILL when grace is 0) to each process group and every recorded
        descendant (by pid, checked against its start time), wait, then SIGKILL. Returns pids
        still alive at the end."""
        live = [p for p in procs if p.alive()]
        tracked: dict[int, str | None] = {}
        for p in live:
            if _proc_start_time(p.pid) == p.start_time:
                tracked[p.pid] = p.start_time
        for pid in _descendants(list(tracked)):
            tracked[pid] = _proc_start_time(pid)

        def send(sig: int) -> None:
            for p in live:
                if p.alive():
                    try:
                        os.killpg(p.pid, sig)  # the group of a start_new_session child
                    except (ProcessLookupError, PermissionError):
                        pass
            for pid, started in tracked.items():
                if started is not None and _proc_start_time(pid) == started:
                    try:
                        os.kill(pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass

        def remaining() -> list[int]:
            for p in live:
                p.popen.poll()
            return [pid for pid, started in tracked.items()
                    if started is not None and _proc_start_time(pid) == started]

        if grace > 0:
            send(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while remaining() and time.monotonic() < deadline:
                time.sleep(0.1)
        if remaining():
            send(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while remaining() and time.monotonic() < deadline:
                time.sleep(0.05)
        for p in live:
            try:
                p.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return remaining()


# -- Delta logs on HDFS ---------------------------------------------------------------------------

def delta_operations(cluster: TestCluster, table: str,
                     known: dict[int, str] | None = None) -> dict[int, str]:
    """{version: commitInfo.operation} of the Delta table at the HDFS path ``table`` (empty
    when it has no log yet). ``known`` (a previous answer) spares reading those commits again,
    for polling a running job."""
    out = dict(known or {})
    try:
        names = cluster.hdfs_ls(f"{table.rstrip('/')}/_delta_log")
    except FileNotFoundError:
        return out
    for name in names:
        if not re.fullmatch(r"\d{20}\.json", name) or int(name[:20]) in out:
            continue
        text = cluster.hdfs_cat(f"{table.rstrip('/')}/_delta_log/{name}").decode()
        operation = "?"
        for line in text.splitlines():
            action = json.loads(line)
            if "commitInfo" in action:
                operation = action["commitInfo"].get("operation", "?")
        out[int(name[:20])] = operation
    return out


# -- Spark event logs ------------------------------------------------------------------------------

def event_log_conf(folder: str | os.PathLike) -> list[str]:
    """spark-submit arguments that make the application write Spark's own event log (JSON
    lines, uncompressed) into ``folder`` (created here), for ``EventLog.read``."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return ["--conf", "spark.eventLog.enabled=true",
            "--conf", f"spark.eventLog.dir={Path(folder).resolve().as_uri()}",
            "--conf", "spark.eventLog.compress=false"]


@dataclass(frozen=True)
class TaskRun:
    """One finished task attempt as the event log records it (times in ms since the epoch).

    ``finish`` is when the driver handled the result, which can be after it launched the next
    task into the freed slot; ``busy_until`` (launch + the executor's deserialize, run and
    result-serialize times) never overlaps the task that took over the slot, yet two tasks
    really running side by side still overlap."""
    stage_id: int
    stage_attempt: int
    index: int
    executor: str
    launch: int
    finish: int
    failed: bool
    busy_until: int


@dataclass
class StageRun:
    stage_id: int
    attempt: int
    name: str
    tasks_planned: int
    resource_profile: int
    scopes: frozenset[str]  # the physical operators (RDD scopes) the stage ran
    tasks: list[TaskRun] = field(default_factory=list)

    def max_concurrency(self) -> dict[str, int]:
        """{executor id: most task attempts of this stage running at once on it}."""
        return max_concurrency(self.tasks)


def max_concurrency(tasks: list[TaskRun]) -> dict[str, int]:
    """{executor id: most of ``tasks`` running at the same time on it}, over the intervals
    [launch, busy_until) (a task ending at the instant another starts does not overlap it)."""
    out: dict[str, int] = {}
    for executor in {t.executor for t in tasks}:
        points = sorted([(t.launch, 1) for t in tasks if t.executor == executor]
                        + [(t.busy_until, -1) for t in tasks if t.executor == executor],
                        key=lambda p: (p[0], p[1]))
        running = best = 0
        for _, delta in points:
            running += delta
            best = max(best, running)
        out[executor] = best
    return out


@dataclass
class EventLog:
    """Spark's event log of the application(s) in a folder (rolling ``eventlog_v2_*``
    folders or single files), parsed into stages, task attempts, executors and resource
    profiles."""
    events: list[dict]
    stages: list[StageRun]
    executors: dict[str, dict]          # executor id -> its SparkListenerExecutorAdded info
    resource_profiles: dict[int, dict]  # id -> {"executor": {...}, "task": {...}}
    app_ids: list[str]

    @classmethod
    def read(cls, folder: str | os.PathLike) -> EventLog:
        folder = Path(folder)
        files: list[Path] = []
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and entry.name.startswith("eventlog_v2_"):
                files += sorted((f for f in entry.iterdir() if f.name.startswith("events_")),
                                key=lambda f: int(f.name.split("_")[1]))
            elif entry.is_file() and not entry.name.startswith("."):
                files.append(entry)
        events = [json.loads(line) for f in files
                  for line in f.read_text(errors="replace").splitlines() if line.strip()]
        return cls.parse(events)

    @classmethod
    def parse(cls, events: list[dict]) -> EventLog:
        stages: dict[tuple[int, int], StageRun] = {}
        executors: dict[str, dict] = {}
        profiles: dict[int, dict] = {}
        app_ids: list[str] = []
        tasks: list[TaskRun] = []
        for e in events:
            kind = e.get("Event")
            if kind in ("SparkListenerStageSubmitted", "SparkListenerStageCompleted"):
                info = e["Stage Info"]
                scopes = set()
                for rdd in info.get("RDD Info", []):
                    if rdd.get("Scope"):
                        scopes.add(json.loads(rdd["Scope"]).get("name", "").strip())
                key = (info["Stage ID"], info.get("Stage Attempt ID", 0))
                stages[key] = StageRun(key[0], key[1], info.get("Stage Name", ""),
                                       info.get("Number of Tasks", 0),
                                       int(info.get("Resource Profile Id", 0)),
                                       frozenset(scopes))
            elif kind == "SparkListenerTaskEnd":
                ti = e["Task Info"]
                metrics = e.get("Task Metrics") or {}
                busy = sum(int(metrics.get(k, 0)) for k in (
                    "Executor Deserialize Time", "Executor Run Time",
                    "Result Serialization Time"))
                launch, finish = int(ti["Launch Time"]), int(ti["Finish Time"])
                tasks.append(TaskRun(e["Stage ID"], e.get("Stage Attempt ID", 0), ti["Index"],
                                     str(ti["Executor ID"]), launch, finish,
                                     bool(ti.get("Failed")),
                                     min(finish, launch + busy) if busy else finish))
            elif kind == "SparkListenerExecutorAdded":
                executors[str(e["Executor ID"])] = e.get("Executor Info", {})
            elif kind == "SparkListenerResourceProfileAdded":
                profiles[int(e["Resource Profile Id"])] = {
                    "executor": e.get("Executor Resource Requests", {}),
                    "task": e.get("Task Resource Requests", {})}
            elif kind == "SparkListenerApplicationStart" and e.get("App ID"):
                app_ids.append(e["App ID"])
        for t in tasks:
            stage = stages.get((t.stage_id, t.stage_attempt))
            if stage is not None:
                stage.tasks.append(t)
        return cls(events, sorted(stages.values(), key=lambda s: (s.stage_id, s.attempt)),
                   executors, profiles, app_ids)

    def stages_with(self, scope: str, without_prefix: str | None = None) -> list[StageRun]:
        """Stages that ran the operator ``scope`` (e.g. ``MapInArrow``), and none whose name
        starts with ``without_prefix`` (e.g. ``Scan`` for stages that read no file)."""
        return [s for s in self.stages if scope in s.scopes and not (
            without_prefix and any(x.startswith(without_prefix) for x in s.scopes))]
