"""Hadoop's FileSystem without a JVM in this process: Hadoop's own ``FsShell`` run in a
subprocess through ``$SPARK_HOME/bin/spark-class`` (pyspark's own when SPARK_HOME is unset),
as executors do (model fetching) and as Spark Connect sessions do inside a task."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape

from longattn_spark.paths.uri import FileStatus, has_scheme, join

_STAT = "%F|%b|%Y"


def hadoop_xml(settings: Sequence[tuple[str, str]]) -> str:
    properties = "".join(f"  <property><name>{escape(k)}</name><value>{escape(v)}</value>"
                         f"</property>\n" for k, v in settings)
    return f'<?xml version="1.0"?>\n<configuration>\n{properties}</configuration>\n'


def fs_shell_command(work: str) -> tuple[list[str], dict[str, str]]:
    """(command prefix, environment) to run Hadoop's FsShell on this machine: the executor's
    ``$SPARK_HOME/bin/spark-class`` (pyspark's own when SPARK_HOME is unset), else ``hadoop
    fs``. FsShell insists on a ``core-site.xml`` on its classpath: when ``HADOOP_CONF_DIR``
    has none, an empty one in ``work`` stands in."""
    env = dict(os.environ)
    conf_dir = env.get("HADOOP_CONF_DIR")
    if not conf_dir or not (Path(conf_dir) / "core-site.xml").is_file():
        Path(work, "conf").mkdir(exist_ok=True)
        Path(work, "conf", "core-site.xml").write_text(hadoop_xml(()))
        env["HADOOP_CONF_DIR"] = str(Path(work, "conf"))
    spark_home = env.get("SPARK_HOME") or pyspark_home()
    spark_class = Path(spark_home, "bin", "spark-class") if spark_home else None
    if spark_class is not None and spark_class.is_file():
        env["SPARK_HOME"] = spark_home
        return [str(spark_class), "org.apache.hadoop.fs.FsShell"], env
    hadoop = shutil.which("hadoop")
    if hadoop is not None:
        return [hadoop, "fs"], env
    raise RuntimeError("no $SPARK_HOME/bin/spark-class and no hadoop command on this machine "
                       "to reach a Hadoop filesystem")


def pyspark_home() -> str | None:
    try:
        import pyspark
    except ImportError:
        return None
    return str(Path(pyspark.__file__).parent)


class ShellError(RuntimeError):
    """FsShell exited non-zero; the message is its last meaningful lines."""


class ShellFS:
    """The operations of ``paths.local.LocalFS`` through FsShell subprocesses (one JVM start
    per operation: for a handful of files, not for data)."""

    def __init__(self, settings: Sequence[tuple[str, str]] = ()) -> None:
        self._settings = tuple(settings)
        self._default_fs = dict(self._settings).get("fs.defaultFS", "file:///")

    def run(self, *args: str, stdin: bytes | None = None, check: bool = True
            ) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="longattn-fsshell-") as work:
            conf_file = Path(work) / "longattn-hadoop.xml"
            fd = os.open(conf_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(hadoop_xml(self._settings))
            command, env = fs_shell_command(work)
            done = subprocess.run([*command, "-conf", str(conf_file), *args], env=env,
                                  input=stdin if stdin is not None else b"",
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if check and done.returncode != 0:
            raise ShellError(shell_error_line(done))
        return done

    def _qualify(self, path: str) -> str:
        return path if has_scheme(path) else self._default_fs.rstrip("/") + path

    def status(self, path: str) -> FileStatus | None:
        done = self.run("-stat", _STAT, path, check=False)
        if done.returncode != 0:
            if b"No such file" in done.stderr:
                return None
            raise ShellError(shell_error_line(done))
        kind, length, mtime = done.stdout.decode().strip().splitlines()[-1].split("|")
        return FileStatus(self.qualified(path), int(length), int(mtime), kind == "directory")

    def list_dir(self, path: str) -> list[FileStatus]:
        done = self.run("-ls", path)
        return sorted(self._parse_ls(done.stdout.decode()), key=lambda e: e.name)

    def list_files_recursively(self, path: str) -> list[FileStatus]:
        done = self.run("-ls", "-R", path)
        return sorted((e for e in self._parse_ls(done.stdout.decode()) if not e.is_dir),
                      key=lambda e: e.path)

    def _parse_ls(self, text: str) -> list[FileStatus]:
        """``-ls`` lines: permissions, replication, owner, group, size, date, time, path
        (mtimes to the minute)."""
        out = []
        for line in text.splitlines():
            fields = line.split(None, 7)
            if len(fields) != 8 or line.startswith("Found "):
                continue
            when = datetime.strptime(f"{fields[5]} {fields[6]}", "%Y-%m-%d %H:%M")
            out.append(FileStatus(self._qualify(fields[7]), int(fields[4]),
                                  int(when.replace(tzinfo=timezone.utc).timestamp() * 1000),
                                  fields[0].startswith("d")))
        return out

    def read_bytes(self, path: str) -> bytes:
        return self.run("-cat", path).stdout

    def write_bytes(self, path: str, data: bytes) -> str:
        self.run("-mkdir", "-p", path.rstrip("/").rsplit("/", 1)[0] or "/")
        self.run("-put", "-f", "-", path, stdin=data)
        return self.qualified(path)

    def delete(self, path: str) -> None:
        self.run("-rm", "-r", "-f", "-skipTrash", path)

    def mkdirs(self, path: str) -> None:
        self.run("-mkdir", "-p", path)

    def rename(self, source: str, target: str) -> bool:
        if self.status(target) is not None:
            return False
        self.run("-mkdir", "-p", target.rstrip("/").rsplit("/", 1)[0] or "/")
        return self.run("-mv", source, target, check=False).returncode == 0

    def replace(self, source: str, target: str) -> None:
        """FsShell has no overwriting rename: the target is removed, then the source moved
        (a reader may miss the file in between; ``-put`` writers are not affected)."""
        self.run("-rm", "-f", "-skipTrash", target)
        self.run("-mv", source, target)

    def qualified(self, path: str) -> str:
        return self._qualify(path)

    def checksum(self, path: str) -> dict | None:
        return None


def shell_error_line(done: subprocess.CompletedProcess) -> str:
    text = (done.stderr or b"").decode(errors="replace") + (done.stdout or b"").decode(
        errors="replace")
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith(("WARNING", "\tat ", "log4j"))]
    return f"FsShell exit {done.returncode}: {' | '.join(lines[-2:]) or 'no output'}"


__all__ = ["ShellFS", "ShellError", "fs_shell_command", "hadoop_xml", "join"]
