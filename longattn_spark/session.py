"""The one SparkSession builder.

On a cluster (Databricks, or any ``spark-submit`` that already started the JVM) the session
that is there is used as it is: no master, no packages, no catalog settings are added, because
the cluster owns them. Locally an embedded ``local[*]`` session is started with Delta enabled,
Delta's jars resolved by Spark's own package resolver into a cache outside git, tables and the
metastore under a project-local folder, and Python workers running this interpreter.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import SparkSession

from longattn_spark.config import SparkSettings
from longattn_spark.paths.shell import pyspark_home

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
#: Spark's built-in log4j2 profiles (plain and JSON layout), used when the user has none.
SPARK_DEFAULT_LOG4J = ("org/apache/spark/log4j2-defaults.properties",
                       "org/apache/spark/log4j2-json-layout.properties")

LOCAL_DEFAULTS = {
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.adaptive.enabled": "true",
    # batch shuffles start at 64 partitions and adaptive execution coalesces them to about
    # 64 MB each: a select over 10M windows whose recipe reads eight components ran out of a
    # 4 GB heap with 8 (streaming, where adaptive execution does not run, keeps the 8)
    "spark.sql.adaptive.coalescePartitions.initialPartitionNum": "64",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.databricks.delta.retentionDurationCheck.enabled": "false",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
    "spark.driver.extraJavaOptions": "-Dio.netty.tryReflectionSetAccessible=true",
    "spark.ui.showConsoleProgress": "false",
}


def on_cluster() -> bool:
    """True when a cluster already owns the JVM (Databricks, spark-submit, Spark Connect)."""
    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION")
                or os.environ.get("PYSPARK_GATEWAY_PORT")
                or os.environ.get("SPARK_CONNECT_MODE_ENABLED"))


def get_spark(settings: SparkSettings | None = None, app_name: str = "longattn-spark"
              ) -> SparkSession:
    """The session the jobs run on: a Spark Connect session when ``--remote`` (or
    ``SPARK_REMOTE``) names a server, else the active session if there is one, else a new
    one (the cluster's under spark-submit and Databricks, embedded locally)."""
    remote = remote_url(settings)
    if remote:
        from longattn_spark.ship import ship_package

        spark = connect_session(remote, app_name)
        ship_package(spark)  # the server's Python may not have longattn_spark: send it
        return spark
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if on_cluster():
        builder = SparkSession.builder.appName(app_name)
        level = quiet_default_logging()
        if level is not None:
            builder = builder.config("spark.log.level", level)
        return builder.getOrCreate()
    return _local_session(settings or SparkSettings(), app_name)


def remote_url(settings: SparkSettings | None) -> str:
    """The Spark Connect URL asked for: ``--remote`` / ``spark.remote`` in the config, else
    ``SPARK_REMOTE``; empty for a classic session."""
    return (settings.remote if settings is not None else "") or \
        os.environ.get("SPARK_REMOTE", "")


def connect_session(url: str, app_name: str = "longattn-spark",
                    timeout_s: float = 20.0) -> SparkSession:
    """A Spark Connect session to ``url``, or a one-line ConfigError naming the URL when no
    server answers within ``timeout_s`` (the Connect client itself retries for minutes)."""
    import socket
    import threading
    from urllib.parse import urlparse

    from longattn_spark.errors import ConfigError

    parsed = urlparse(url.split(";", 1)[0])
    if parsed.scheme != "sc" or not parsed.hostname:
        raise ConfigError(f"--remote {url}: not a Spark Connect URL (sc://host:port)")
    port = parsed.port or 15002
    try:
        socket.create_connection((parsed.hostname, port), timeout=min(timeout_s, 10)).close()
    except OSError as exc:
        raise ConfigError(f"--remote {url}: no Spark Connect server answers at "
                          f"{parsed.hostname}:{port} ({exc.strerror or exc})") from None

    outcome: dict = {}

    def connect() -> None:
        try:
            spark = SparkSession.builder.remote(url).appName(app_name).getOrCreate()
            spark.version  # noqa: B018 - one round trip: the server speaks Spark Connect
            outcome["spark"] = spark
        except Exception as exc:  # noqa: BLE001 - reported below, one line naming the URL
            outcome["error"] = exc

    # a daemon thread: a server that never answers must not keep the process from exiting
    thread = threading.Thread(target=connect, name="spark-connect", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "spark" in outcome:
        return outcome["spark"]
    if "error" in outcome:
        first = str(outcome["error"]).strip().splitlines()[0][:200]
        raise ConfigError(f"--remote {url}: {first}")
    raise ConfigError(f"--remote {url}: {parsed.hostname}:{port} accepts connections but no "
                      f"Spark Connect server answered within {timeout_s:.0f} s")


def quiet_default_logging(level: str = "WARN") -> str | None:
    """Under spark-submit, the log level the SparkContext should start with, so that the
    console shows the job's progress lines and summary, not thousands of INFO lines: ``level``
    when Spark runs on its built-in default log4j profile, None when the user configured
    logging (a log4j2 file from ``SPARK_CONF_DIR`` or ``-Dlog4j2.configurationFile``, or
    ``--conf spark.log.level``), when a context already runs, and on Databricks and Spark
    Connect, which own their logging.

    The level goes to the context as ``spark.log.level``: the context resets log4j while it
    starts, so a level set on log4j before it would not last."""
    if os.environ.get("DATABRICKS_RUNTIME_VERSION") or os.environ.get("SPARK_REMOTE") \
            or not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return None
    try:
        from pyspark import SparkContext

        if SparkContext._active_spark_context is not None:
            return None
        SparkContext._ensure_initialized()
        jvm = SparkContext._jvm
        if jvm.java.lang.System.getProperty("spark.log.level") is not None:
            return None  # the user's --conf spark.log.level
        # Spark loads its built-in profile by URL when no log4j2 configuration was found; a
        # user's own file (SPARK_CONF_DIR, -Dlog4j2.configurationFile) shows another location.
        location = jvm.org.apache.logging.log4j.LogManager.getContext(False).getConfigLocation()
        if location is None or not str(location.toString()).endswith(SPARK_DEFAULT_LOG4J):
            return None
        return level
    except Exception:  # noqa: BLE001 - logging is a nicety; never fail a job for it
        return None


def spark_master(spark: SparkSession) -> str:
    """The session's master URL (``local[2]``, ``spark://...``, ``yarn``), on a classic
    session and over Spark Connect (which has no SparkContext); "" when the server hides it
    (Databricks serverless)."""
    if getattr(spark, "_jsc", None) is not None:
        return spark.sparkContext.master
    try:
        return spark.conf.get("spark.master", "") or ""
    except Exception:  # noqa: BLE001 - a server that does not expose the key
        return ""


def is_local_master(spark: SparkSession) -> bool:
    """Whether the session's executors are the driver's own threads (``local[...]``)."""
    return spark_master(spark).startswith("local")


def default_parallelism(spark: SparkSession) -> int:
    """The cluster's default parallelism (tasks per stage when nothing else decides): the
    SparkContext's on a classic session; over Spark Connect ``spark.default.parallelism``,
    else the core count of a ``local[N]`` master, else 8."""
    jsc = getattr(spark, "_jsc", None)
    if jsc is not None:
        return int(spark.sparkContext.defaultParallelism)
    try:
        configured = spark.conf.get("spark.default.parallelism", None)
    except Exception:  # noqa: BLE001
        configured = None
    if configured:
        return int(configured)
    cores = re.fullmatch(r"local\[(\d+)(,\d+)?\]", spark_master(spark))
    return int(cores.group(1)) if cores else 8


@contextmanager
def arrow_batch_rows(spark: SparkSession, rows: int) -> Iterator[None]:
    """Within the block, Arrow batches sent to Python UDFs hold at most ``rows`` rows
    (documents and windows are large rows; the default of 10,000 would be gigabytes)."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(key, None)
    spark.conf.set(key, str(rows))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def local_defaults(user: dict[str, str]) -> dict[str, str]:
    """The embedded session's defaults (``LOCAL_DEFAULTS``) less every key the user already set
    in ``spark-defaults.conf`` or ``SPARK_SUBMIT_OPTS``: a setting passed to the builder
    outranks both, so a default set there would silently override the user's file. The
    driver's Java options are the user's followed by ours (Netty needs reflection)."""
    conf = {key: value for key, value in LOCAL_DEFAULTS.items() if key not in user}
    java_options = "spark.driver.extraJavaOptions"
    conf[java_options] = " ".join(filter(None, [user.get(java_options, ""),
                                                LOCAL_DEFAULTS[java_options]]))
    return conf


def user_spark_defaults(env: Mapping[str, str]) -> dict[str, str]:
    """The Spark settings the launcher gives the embedded driver before the builder's: the
    ``spark-defaults.conf`` of ``$SPARK_CONF_DIR`` (else ``$SPARK_HOME/conf``, pyspark's own
    folder when SPARK_HOME is unset), then the ``-Dspark.*`` options of
    ``$SPARK_SUBMIT_OPTS``."""
    home = env.get("SPARK_HOME") or pyspark_home()
    conf_dir = env.get("SPARK_CONF_DIR") or (str(Path(home, "conf")) if home else "")
    path = Path(conf_dir, "spark-defaults.conf") if conf_dir else None
    settings = spark_properties(properties_text(path)) \
        if path is not None and path.is_file() else {}
    settings.update(submit_opts_properties(env.get("SPARK_SUBMIT_OPTS", "")))
    return settings


def properties_text(path: Path) -> str:
    """The text of a ``spark-defaults.conf`` (UTF-8, as Spark reads it), or a one-line
    ConfigError naming the file."""
    from longattn_spark.errors import ConfigError

    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); Spark reads "
                          "spark-defaults.conf as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def spark_properties(text: str) -> dict[str, str]:
    """The ``spark.*`` settings of a Java properties file as Spark's launcher reads
    ``spark-defaults.conf``: ``#`` and ``!`` comment lines; a key ends at the first
    whitespace, ``=`` or ``:``; the value is trimmed."""
    settings = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        match = re.match(r"([^\s=:]+)\s*[=:\s]\s*(.*)$", line)
        key, value = (match.group(1), match.group(2).strip()) if match else (line, "")
        if key.startswith("spark."):
            settings[key] = value
    return settings


def submit_opts_properties(opts: str) -> dict[str, str]:
    """The ``-Dspark.key=value`` options of a ``SPARK_SUBMIT_OPTS`` string."""
    import shlex

    try:
        words = shlex.split(opts)
    except ValueError:  # an unbalanced quote: the shell that runs the launcher splits on spaces
        words = opts.split()
    settings = {}
    for word in words:
        if word.startswith("-Dspark."):
            key, _, value = word[2:].partition("=")
            settings[key] = value
    return settings


def lakehouse_path(settings: SparkSettings) -> Path:
    return Path(settings.lakehouse).expanduser().resolve()


def _local_session(settings: SparkSettings, app_name: str) -> SparkSession:
    from delta import configure_spark_with_delta_pip

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    lake = lakehouse_path(settings)
    lake.mkdir(parents=True, exist_ok=True)
    ivy = Path(settings.ivy_cache).expanduser().resolve()
    ivy.mkdir(parents=True, exist_ok=True)

    conf = local_defaults(user_spark_defaults(os.environ))
    conf.update({
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.warehouse.dir": str(lake / "warehouse"),
        "spark.jars.ivy": str(ivy),
        "spark.driver.memory": settings.driver_memory,
        "spark.pyspark.python": sys.executable,
        "spark.ui.enabled": str(settings.ui).lower(),
        "spark.local.dir": str(lake / "tmp"),
    })
    conf["spark.driver.extraJavaOptions"] += f" -Dderby.system.home={lake / 'metastore'}"
    conf.update(settings.spark_conf)

    builder = SparkSession.builder.appName(app_name).master(settings.master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    if settings.catalog == "hive":
        builder = builder.config("spark.sql.catalogImplementation", "hive")
        builder = builder.config("spark.hadoop.javax.jdo.option.ConnectionURL",
                                 f"jdbc:derby:;databaseName={lake / 'metastore' / 'metastore_db'};"
                                 "create=true")
    builder = configure_spark_with_delta_pip(builder)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def warm_up(settings: SparkSettings | None = None) -> None:
    """Start the embedded session once and round-trip a Delta table, so that Delta's jars are
    resolved into the ivy cache (used by setup.sh)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spark = get_spark(settings or SparkSettings(lakehouse=tmp, catalog="in-memory"))
        path = str(Path(tmp) / "warm_up")
        spark.range(3).write.format("delta").save(path)
        rows = spark.read.format("delta").load(path).count()
        spark.stop()
    print(f"Spark + Delta ready ({rows} rows round-tripped through a Delta table)")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Start the embedded Spark + Delta once.")
    parser.add_argument("--warm-up", action="store_true", required=True)
    parser.parse_args()
    warm_up()
