"""Hadoop's FileSystem through the driver's JVM (classic sessions: spark-submit, EMR,
Databricks dedicated clusters)."""

from __future__ import annotations

from longattn_spark.errors import ConfigError, InputError, TableError
from longattn_spark.paths.uri import FileStatus, first_line


def has_jvm(spark) -> bool:
    return spark is not None and getattr(spark, "_jsc", None) is not None


def hadoop_conf(spark):
    """The session's Hadoop configuration (classic sessions only; None otherwise)."""
    return spark._jsc.hadoopConfiguration() if has_jvm(spark) else None


def jvm_of(spark):
    if not has_jvm(spark):
        raise ConfigError("this filesystem operation needs a classic Spark session (Spark "
                          "Connect has no driver JVM gateway)")
    return spark._jvm


def hadoop_fs(spark, path: str, where: str):
    """(FileSystem, Path) of ``path``; ``where`` names it in the one-line error."""
    jvm = jvm_of(spark)
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    try:
        fs = hpath.getFileSystem(hadoop_conf(spark))
    except Exception as exc:  # noqa: BLE001 - no FileSystem for the scheme, bad authority
        raise InputError(f"{where}: this cluster cannot reach that filesystem "
                         f"({first_line(exc)})") from None
    return fs, hpath


def _status_of(st) -> FileStatus:
    return FileStatus(st.getPath().toString(), int(st.getLen()), int(st.getModificationTime()),
                      bool(st.isDirectory()))


class HadoopFS:
    """The operations of ``paths.local.LocalFS`` through the JVM's Hadoop FileSystem."""

    def __init__(self, spark, where) -> None:
        self._spark = spark
        self._where = where  # path -> "path (on fs)" for messages

    def _fs(self, path: str):
        fs, hpath = hadoop_fs(self._spark, path, self._where(path))
        # the raw local file system leaves no .crc files beside ours
        if fs.getScheme() == "file":
            fs = fs.getRawFileSystem()
        return fs, hpath

    def status(self, path: str) -> FileStatus | None:
        fs, hpath = self._fs(path)
        try:
            if not fs.exists(hpath):
                return None
            return _status_of(fs.getFileStatus(hpath))
        except Exception as exc:  # noqa: BLE001 - py4j: unreachable host, no credentials
            raise InputError(f"{self._where(path)}: cannot be read ({first_line(exc)})") \
                from None

    def list_dir(self, path: str) -> list[FileStatus]:
        fs, hpath = self._fs(path)
        try:
            return sorted((_status_of(s) for s in fs.listStatus(hpath)), key=lambda e: e.name)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{self._where(path)}: cannot be listed ({first_line(exc)})") \
                from None

    def list_files_recursively(self, path: str) -> list[FileStatus]:
        fs, hpath = self._fs(path)
        files = fs.listFiles(hpath, True)
        out = []
        while files.hasNext():
            out.append(_status_of(files.next()))
        return sorted(out, key=lambda e: e.path)

    def read_bytes(self, path: str) -> bytes:
        fs, hpath = self._fs(path)
        stream = fs.open(hpath)
        try:
            return bytes(self._spark._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def write_bytes(self, path: str, data: bytes) -> str:
        fs, hpath = self._fs(path)
        stream = fs.create(hpath, True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()
        return fs.makeQualified(hpath).toString()

    def delete(self, path: str) -> None:
        fs, hpath = self._fs(path)
        fs.delete(hpath, True)

    def mkdirs(self, path: str) -> None:
        fs, hpath = self._fs(path)
        fs.mkdirs(hpath)

    def rename(self, source: str, target: str) -> bool:
        fs, src = self._fs(source)
        _, dst = self._fs(target)
        if fs.exists(dst):
            return False
        fs.mkdirs(dst.getParent())
        return bool(fs.rename(src, dst))

    def replace(self, source: str, target: str) -> None:
        """Rename over ``target`` in one step with FileContext's OVERWRITE (atomic on HDFS);
        where the filesystem has no FileContext, write ``source``'s bytes over ``target``."""
        from py4j.protocol import Py4JJavaError

        jvm = self._spark._jvm
        fs, src = self._fs(source)
        _, dst = self._fs(target)
        rename = getattr(jvm.org.apache.hadoop.fs, "Options$Rename")
        options = self._spark.sparkContext._gateway.new_array(rename, 1)
        options[0] = rename.OVERWRITE
        try:
            context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(
                src.toUri(), hadoop_conf(self._spark))
            context.rename(src, dst, options)
        except Py4JJavaError as exc:
            if "Unsupported" not in exc.java_exception.getClass().getName():
                raise TableError(f"{self._where(target)}: could not replace it with "
                                 f"{source} ({first_line(exc)})") from None
            self.write_bytes(target, self.read_bytes(source))
            self.delete(source)

    def qualified(self, path: str) -> str:
        fs, hpath = self._fs(path)
        return fs.makeQualified(hpath).toString()

    def checksum(self, path: str) -> dict | None:
        """The filesystem's own checksum where it keeps one without reading the file (HDFS:
        MD5 of the block CRCs)."""
        fs, hpath = self._fs(path)
        try:
            found = fs.getFileChecksum(hpath)
        except Exception:  # noqa: BLE001 - a checksum is optional
            return None
        if found is None:
            return None
        return {"algorithm": str(found.getAlgorithmName()), "value": bytes(found.getBytes()).hex()}
