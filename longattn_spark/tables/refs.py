"""A table as given on the command line (``TableRef``): a Delta path or a metastore / Unity
Catalog name, read, versioned and named in SQL the same way on classic and Spark Connect
sessions; quoting for SQL text; the table's properties."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from longattn_spark.errors import TableError
from longattn_spark.paths.uri import has_scheme

_NAME_PART = re.compile(r"^(`[^`]+`|[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class TableRef:
    """A table given on the command line: a Delta path or a metastore / UC name."""

    text: str

    def __post_init__(self) -> None:
        if not self.text or not self.text.strip():
            raise TableError("table argument is empty")
        if not self.is_path:
            parts = self.text.split(".")
            if len(parts) > 3 or not all(_NAME_PART.match(p) for p in parts):
                raise TableError(f"table name {self.text!r} is not a valid "
                                 "[catalog.][schema.]table name (use a path with '/' for a "
                                 "folder)")

    @property
    def is_path(self) -> bool:
        return "/" in self.text or has_scheme(self.text)

    @property
    def location(self) -> str:
        """Absolute path or URI of a path table."""
        if has_scheme(self.text):
            return self.text
        return str(Path(self.text).expanduser().resolve())

    def __str__(self) -> str:
        return self.location if self.is_path else self.text

    def exists(self, spark: SparkSession) -> bool:
        """Whether the table exists (for a path: holds a Delta table). SQL and DataFrame
        calls only, so that it works on Spark Connect as on a classic session."""
        if not self.is_path:
            return spark.catalog.tableExists(self.text)
        try:
            spark.read.format("delta").load(self.location).schema  # noqa: B018 - analysis only
        except AnalysisException:
            return False
        return True

    def read(self, spark: SparkSession, version: int | None = None) -> DataFrame:
        if not self.exists(spark):
            raise TableError(f"table {self} does not exist")
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.location) if self.is_path else reader.table(self.text)

    def version(self, spark: SparkSession) -> int:
        """Current Delta version (for recording what a job read)."""
        return int(spark.sql(f"DESCRIBE HISTORY {sql_target(self)} LIMIT 1")
                   .collect()[0]["version"])

    def sql_name(self, spark: SparkSession, version: int | None = None) -> str:
        """A name usable in ``IDENTIFIER(:param)``: the table's own name, or for a path (or a
        pinned version) a temporary view over it."""
        if not self.is_path and version is None:
            return self.text
        digest = hashlib.sha1(f"{self}@{version}".encode()).hexdigest()[:12]
        view = f"longattn_{digest}"
        self.read(spark, version).createOrReplaceTempView(view)
        return view


def sql_target(ref: TableRef) -> str:
    """The table in DDL that takes no parameters: ``delta.`path``` or a quoted name."""
    if ref.is_path:
        return "delta." + quote_identifier(ref.location)
    return ".".join(quote_identifier(p.strip("`")) for p in ref.text.split("."))


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal (quotes and backslashes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_identifier(part: str) -> str:
    """``part`` as a back-quoted SQL identifier."""
    return "`" + part.replace("`", "``") + "`"


def table_properties(spark: SparkSession, ref: TableRef) -> dict[str, str]:
    """The table's properties (``TBLPROPERTIES``), from ``DESCRIBE DETAIL``."""
    detail = spark.sql(f"DESCRIBE DETAIL {sql_target(ref)}").collect()[0]
    return dict(detail["properties"] or {})
