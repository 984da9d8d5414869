"""The FsShell backend of ``longattn_spark.paths`` (what a Spark Connect session's tasks use for
filesystems other than the local disk) on the test cluster's real HDFS: every operation, checked
against WebHDFS's own view of the files."""

from __future__ import annotations

import pytest

from longattn_spark.paths.shell import ShellError, ShellFS

pytestmark = pytest.mark.cluster
# Every operation is a FsShell JVM (about 3 s of CPU here); C1 only and the serial collector
# cut that by about 40%. spark-class passes no variable to a plain class's JVM, so the java
# launcher's own one sets them (it adds a "NOTE: Picked up JDK_JAVA_OPTIONS" line to their
# stderr, before any error).
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def test_fsshell_backend_on_hdfs(cluster, monkeypatch):
    monkeypatch.setenv("JDK_JAVA_OPTIONS", FAST_JVM)
    fs = ShellFS((("fs.defaultFS", cluster.hdfs_uri), ("dfs.replication", "1")))
    base = f"{cluster.hdfs_uri}/shell_backend"
    fs.delete(base)
    assert fs.status(base) is None

    written = fs.write_bytes(f"{base}/a/x.txt", "héllo\n".encode())
    assert written == f"{base}/a/x.txt"
    assert cluster.hdfs_cat("/shell_backend/a/x.txt") == "héllo\n".encode()
    found = fs.status(f"{base}/a/x.txt")
    assert (found.length, found.is_dir, found.name) == (7, False, "x.txt")
    assert found.modified_ms > 0
    assert fs.status(f"{base}/a").is_dir
    assert fs.read_bytes(f"{base}/a/x.txt") == "héllo\n".encode()

    # scheme-less paths mean the default filesystem, and come back qualified
    assert fs.status("/shell_backend/a/x.txt").path == f"{base}/a/x.txt"

    fs.write_bytes(f"{base}/a/sub/z.txt", b"z")
    assert [(e.name, e.is_dir) for e in fs.list_dir(f"{base}/a")] == [
        ("sub", True), ("x.txt", False)]
    assert [e.path for e in fs.list_files_recursively(base)] == [
        f"{base}/a/sub/z.txt", f"{base}/a/x.txt"]
    # listings of scheme-less paths come back qualified too (FsShell prints them bare)
    assert [e.path for e in fs.list_files_recursively("/shell_backend")] == [
        f"{base}/a/sub/z.txt", f"{base}/a/x.txt"]
    assert [e.path for e in fs.list_dir("/shell_backend/a")] == [f"{base}/a/sub", f"{base}/a/x.txt"]

    assert fs.rename(f"{base}/a/x.txt", f"{base}/b/y.txt")
    # (post-conditions through WebHDFS: no FsShell JVM per check)
    assert not cluster.hdfs_exists("/shell_backend/a/x.txt")
    assert cluster.hdfs_cat("/shell_backend/b/y.txt") == "héllo\n".encode()
    assert not fs.rename(f"{base}/a/sub/z.txt", f"{base}/b/y.txt")  # the target exists
    fs.replace(f"{base}/a/sub/z.txt", f"{base}/b/y.txt")
    assert cluster.hdfs_cat("/shell_backend/b/y.txt") == b"z"
    assert not cluster.hdfs_exists("/shell_backend/a/sub/z.txt")

    fs.mkdirs(f"{base}/empty/deeper")
    assert cluster.hdfs_status("/shell_backend/empty/deeper")["type"] == "DIRECTORY"
    fs.delete(base)
    assert not cluster.hdfs_exists("/shell_backend")
    with pytest.raises(ShellError, match="No such file"):
        fs.read_bytes(f"{base}/gone.txt")
