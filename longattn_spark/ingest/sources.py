"""Reading raw documents into one uniform DataFrame, with per-row problems named.

Every input row becomes exactly one row of ``DOCS_SCHEMA``: a document (``reason`` null) or
a row that cannot be one (``reason`` set: malformed_json, missing_id, ...). Files are read by
Spark's own readers (local, DBFS, S3, ABFS alike); JSON lines and text-file bytes are checked
in Python, where a missing, non-string or invalid-UTF-8 text can be told apart precisely.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longattn_spark import paths
from longattn_spark.config import IngestConfig
from longattn_spark.errors import InputError
from longattn_spark.tables.refs import TableRef

DOCS_SCHEMA = T.StructType([
    T.StructField("doc_id", T.StringType()),
    T.StructField("text", T.StringType()),
    T.StructField("category", T.StringType()),
    T.StructField("source", T.StringType()),
    T.StructField("content_key", T.StringType()),
    T.StructField("reason", T.StringType()),
    T.StructField("detail", T.StringType()),
])

SNIPPET_CHARS = 120
_SIMPLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


JSON_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz",
                 ".jsonl.bz2", ".json.bz2", ".jsonl.zst", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)


def detect_format(spark: SparkSession | None, cfg: IngestConfig) -> str:
    """The input format: the --format flag, else guessed from the path and, for a folder,
    from its first level (and the first level of its first sub-folder): never by listing the
    whole tree. Spark's own output folders (``_SUCCESS``, ``part-*``, ``.crc``) are
    recognised by their data files."""
    if cfg.format != "auto":
        return cfg.format
    text = cfg.input
    # a bare name is a table unless the filesystem Spark reads holds a file of that name
    if "/" not in text and not paths.has_scheme(text) and paths.status(spark, text) is None:
        return "table"
    lowered = text.lower().rstrip("/")
    if lowered.endswith(JSON_SUFFIXES):
        return "jsonl"
    if lowered.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if any(c in text for c in "*?["):
        raise InputError(f"--input {text}: cannot tell the format of a glob; pass --format "
                         "jsonl|parquet|text")
    found = paths.require(spark, text, "--input")
    if not found.is_dir:
        return "text"
    fmt = format_of_listing(paths.list_dir(spark, text))
    if fmt == "subfolders":
        first = next(e for e in paths.list_dir(spark, text)
                     if e.is_dir and not e.name.startswith(paths.HIDDEN_PREFIXES))
        inner = format_of_listing(paths.list_dir(spark, first.path))
        fmt = inner if inner in ("jsonl", "parquet") else "text"
    return fmt


def format_of_listing(entries: list[paths.FileStatus]) -> str:
    """``table`` | ``jsonl`` | ``parquet`` | ``text`` | ``subfolders`` (only folders: look one
    level down) from one folder's entries (pure)."""
    names = {e.name for e in entries}
    if "_delta_log" in names:
        return "table"
    files = [e.name.lower() for e in entries if not e.is_dir
             and not e.name.startswith(paths.HIDDEN_PREFIXES) and not e.name.endswith(".crc")]
    if files and all(n.endswith(JSON_SUFFIXES) for n in files):
        return "jsonl"
    if files and all(n.endswith(PARQUET_SUFFIXES) for n in files):
        return "parquet"
    if not files and any(e.is_dir for e in entries):
        return "subfolders"
    return "text"


def read_documents(spark: SparkSession, cfg: IngestConfig) -> DataFrame:
    """The input as ``DOCS_SCHEMA`` rows (one per input row / file)."""
    fmt = detect_format(spark, cfg)
    if fmt in ("jsonl", "text", "parquet") and not any(c in cfg.input for c in "*?["):
        paths.require(spark, cfg.input, "--input")
    readers = {"jsonl": _read_jsonl, "text": _read_text_files, "parquet": _read_parquet,
               "table": _read_table}
    return readers[fmt](spark, cfg)


def count_input_rows(spark: SparkSession, cfg: IngestConfig) -> int:
    """How many rows ``read_documents`` must account for, counted straight from the source
    (lines, files, table rows) and not from its output, so that a document lost on its way
    to the status rows shows up as a difference."""
    fmt = detect_format(spark, cfg)
    path = _input_path(spark, cfg)
    if fmt == "jsonl":
        lines = spark.read.option("recursiveFileLookup", "true").text(path)
        return lines.filter(F.trim(F.col("value")) != "").count()
    if fmt == "text":
        root_uri = paths.qualified(spark, cfg.input)
        return sum(1 for f in paths.list_files_recursively(spark, cfg.input)
                   if not _is_hidden(f.path, root_uri))
    if fmt == "parquet":
        return spark.read.option("recursiveFileLookup", "true").parquet(path).count()
    ref = TableRef(cfg.input)
    frame = (spark.read.format("delta").load(ref.location) if ref.is_path
             else spark.read.table(ref.text))
    return frame.count()


def _is_hidden(path: str, root_uri: str) -> bool:
    """Whether a file under the folder ``root_uri`` (qualified) is one Spark's file readers
    skip (its name, or a folder below the root, starts with ``_`` or ``.``)."""
    relative = path[len(root_uri.rstrip("/")) + 1:] if path.startswith(root_uri) else path
    return any(part.startswith(paths.HIDDEN_PREFIXES) for part in relative.split("/"))


def _input_path(spark: SparkSession, cfg: IngestConfig) -> str:
    return paths.for_spark(spark, cfg.input)


# --- JSON lines ----------------------------------------------------------------------------

def _read_jsonl(spark: SparkSession, cfg: IngestConfig) -> DataFrame:
    for option in ("id_column", "text_column", "category_column"):
        if not _SIMPLE_NAME.match(getattr(cfg, option)):
            raise InputError(f"--{option.replace('_', '-')} {getattr(cfg, option)!r}: JSON "
                             "field names must be letters, digits and _")
    lines = (spark.read.option("recursiveFileLookup", "true").text(_input_path(spark, cfg))
             .select(F.col("value").alias("line"),
                     F.col("_metadata.file_path").alias("source"))
             .filter(F.trim(F.col("line")) != ""))
    too_large = F.octet_length("line") > cfg.max_doc_bytes
    small = lines.filter(~too_large)
    large = lines.filter(too_large).select(
        F.get_json_object("line", f"$.{cfg.id_column}").alias("doc_id"),
        F.lit(None).cast("string").alias("text"),
        _category_or_flag(F.get_json_object("line", f"$.{cfg.category_column}"), cfg),
        "source",
        F.sha2(F.col("line"), 256).alias("content_key"),
        F.lit("too_large").alias("reason"),
        F.concat(F.lit("line of "), F.octet_length("line").cast("string"),
                 F.lit(f" bytes exceeds --max-doc-bytes {cfg.max_doc_bytes}")).alias("detail"),
    )
    parsed = small.mapInArrow(_json_lines_parser(cfg), DOCS_SCHEMA)
    return parsed.unionByName(large)


def _category_or_flag(column: Column, cfg: IngestConfig) -> Column:
    if cfg.category:
        return F.lit(cfg.category).alias("category")
    return column.alias("category")


def _json_lines_parser(cfg: IngestConfig):
    id_col, text_col, cat_col, flag_category = (cfg.id_column, cfg.text_column,
                                                cfg.category_column, cfg.category)

    def parse(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = [parse_json_line(line, source, id_col, text_col, cat_col, flag_category)
                    for line, source in zip(batch.column("line").to_pylist(),
                                            batch.column("source").to_pylist())]
            yield pa.RecordBatch.from_pylist(rows, schema=_DOCS_ARROW)

    return parse


_DOCS_ARROW = pa.schema([(f.name, pa.string()) for f in DOCS_SCHEMA.fields])


def parse_json_line(line: str, source: str, id_col: str, text_col: str, cat_col: str,
                    flag_category: str) -> dict:
    """One JSON line as a DOCS_SCHEMA row, with the problem named when it is no document."""
    import hashlib

    row = {"doc_id": None, "text": None, "category": flag_category or None,
           "source": source, "content_key": hashlib.sha256(line.encode("utf-8",
                                                                        "surrogatepass"))
           .hexdigest(), "reason": None, "detail": None}
    try:
        record = json.loads(line)
    except ValueError as exc:
        return {**row, "reason": "malformed_json",
                "detail": f"{exc.__class__.__name__}: {exc}; line starts {_snippet(line)}"}
    if not isinstance(record, dict):
        return {**row, "reason": "malformed_json",
                "detail": f"line is a JSON {type(record).__name__}, not an object: "
                          f"{_snippet(line)}"}
    doc_id = record.get(id_col)
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or str(doc_id) == "":
        what = "missing" if doc_id is None else f"not a string or integer ({doc_id!r:.40})"
        row["reason"], row["detail"] = ("missing_id",
                                        f"field {id_col!r} {what}: {_snippet(line)}")
        doc_id = None
    row["doc_id"] = None if doc_id is None else str(doc_id)
    if not flag_category:
        category = record.get(cat_col)
        row["category"] = category if isinstance(category, str) and category else None
    if row["reason"]:
        return row
    text = record.get(text_col)
    if text_col not in record or text is None:
        return {**row, "reason": "missing_text", "detail": f"no field {text_col!r}"}
    if not isinstance(text, str):
        return {**row, "reason": "non_string_text",
                "detail": f"field {text_col!r} is a JSON {type(text).__name__}"}
    if not text.strip():
        return {**row, "reason": "empty_text", "detail": f"field {text_col!r} is empty"}
    if row["category"] is None:
        return {**row, "reason": "missing_category",
                "detail": f"no string field {cat_col!r} and no --category"}
    return {**row, "text": text}


def _snippet(text: str) -> str:
    return json.dumps(text[:SNIPPET_CHARS] + ("..." if len(text) > SNIPPET_CHARS else ""))


# --- Folders of text files -----------------------------------------------------------------

def _read_text_files(spark: SparkSession, cfg: IngestConfig) -> DataFrame:
    root = _input_path(spark, cfg)
    files = (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
             .select("path", "length", "content"))
    root_uri = paths.qualified(spark, cfg.input)
    relative = F.substring_index(F.col("path"), root_uri.rstrip("/") + "/", -1)
    too_large = F.col("length") > cfg.max_doc_bytes
    large = (files.filter(too_large)
             .select(relative.alias("doc_id"), F.lit(None).cast("string").alias("text"),
                     _category_from_folder(relative, cfg),
                     F.col("path").alias("source"),
                     F.col("path").alias("content_key"),
                     F.lit("too_large").alias("reason"),
                     F.concat(F.lit("file of "), F.col("length").cast("string"),
                              F.lit(f" bytes exceeds --max-doc-bytes {cfg.max_doc_bytes}"))
                     .alias("detail")))
    small = (files.filter(~too_large)
             .select(relative.alias("doc_id"), F.col("content"),
                     _category_from_folder(relative, cfg), F.col("path").alias("source"))
             .mapInArrow(_text_file_decoder(), DOCS_SCHEMA))
    return small.unionByName(large).unionByName(_empty_files(spark, cfg))


def _empty_files(spark: SparkSession, cfg: IngestConfig) -> DataFrame:
    """Spark's file readers skip zero-length files; list them (through the same filesystem
    the reader uses) so that they are rejected as empty instead of silently lost."""
    root_uri = paths.qualified(spark, cfg.input).rstrip("/") + "/"
    rows = []
    for status in paths.list_files_recursively(spark, cfg.input):
        path = status.path
        if status.length == 0 and not _is_hidden(path, root_uri):
            relative = path.split(root_uri, 1)[-1]
            category = cfg.category or (relative.split("/")[0] if "/" in relative else None)
            rows.append((relative, None, category, path, path, "empty_text",
                         f"{path} is empty (0 bytes)"))
    return spark.createDataFrame(rows, DOCS_SCHEMA)


def _category_from_folder(relative: Column, cfg: IngestConfig) -> Column:
    if cfg.category:
        return F.lit(cfg.category).alias("category")
    parts = F.split(relative, "/")
    return F.when(F.size(parts) > 1, parts.getItem(0)).alias("category")


def _text_file_decoder():
    def decode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = [decode_text_file(doc_id, content, category, source)
                    for doc_id, content, category, source in zip(
                        batch.column("doc_id").to_pylist(), batch.column("content").to_pylist(),
                        batch.column("category").to_pylist(), batch.column("source").to_pylist())]
            yield pa.RecordBatch.from_pylist(rows, schema=_DOCS_ARROW)

    return decode


def decode_text_file(doc_id: str, content: bytes, category: str | None, source: str) -> dict:
    """One text file as a DOCS_SCHEMA row: strict UTF-8, so bad bytes are a reject, not
    silently replaced characters."""
    import hashlib

    row = {"doc_id": doc_id, "text": None, "category": category, "source": source,
           "content_key": hashlib.sha256(content).hexdigest(), "reason": None, "detail": None}
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {**row, "reason": "invalid_utf8",
                "detail": f"{source}: invalid UTF-8 at byte {exc.start} ({exc.reason})"}
    if not text.strip():
        return {**row, "reason": "empty_text", "detail": f"{source} is empty"}
    if not category:
        return {**row, "reason": "missing_category",
                "detail": "file is not in a category sub-folder and no --category was given"}
    return {**row, "text": text}


# --- Parquet files and tables ---------------------------------------------------------------

def _read_parquet(spark: SparkSession, cfg: IngestConfig) -> DataFrame:
    frame = (spark.read.option("recursiveFileLookup", "true").parquet(_input_path(spark, cfg))
             .withColumn("_source", F.col("_metadata.file_path")))
    return _columns_as_docs(frame, cfg, F.col("_source"))


def _read_table(spark: SparkSession, cfg: IngestConfig) -> DataFrame:
    ref = TableRef(cfg.input)
    if ref.is_path:
        frame = spark.read.format("delta").load(ref.location)
    elif spark.catalog.tableExists(ref.text):
        frame = spark.read.table(ref.text)
    else:
        raise InputError(f"--input {cfg.input}: no such table")
    return _columns_as_docs(frame, cfg, F.lit(str(ref)))


def _columns_as_docs(frame: DataFrame, cfg: IngestConfig, source: Column) -> DataFrame:
    """Map id/text/category columns to DOCS_SCHEMA, checking types before any work."""
    columns = {f.name: f.dataType for f in frame.schema.fields}
    needed = [("--id-column", cfg.id_column), ("--text-column", cfg.text_column)]
    if not cfg.category:
        needed.append(("--category-column", cfg.category_column))
    for flag, name in needed:
        if name not in columns:
            raise InputError(f"{flag} {name!r}: no such column in {cfg.input} (columns: "
                             f"{', '.join(c for c in columns if not c.startswith('_'))})")
    if not isinstance(columns[cfg.text_column], T.StringType):
        raise InputError(f"--text-column {cfg.text_column!r} is "
                         f"{columns[cfg.text_column].simpleString()}, not a string column")
    doc_id = F.col(cfg.id_column).cast("string")
    text = F.col(cfg.text_column)
    category = F.lit(cfg.category) if cfg.category else F.col(cfg.category_column).cast("string")
    reason = (F.when(doc_id.isNull() | (doc_id == ""), "missing_id")
              .when(text.isNull(), "missing_text")
              .when(F.octet_length(text) > cfg.max_doc_bytes, "too_large")
              .when(F.trim(text) == "", "empty_text")
              .when(category.isNull() | (category == ""), "missing_category"))
    detail = (F.when(reason == "too_large",
                     F.concat(F.lit("text of "), F.octet_length(text).cast("string"),
                              F.lit(f" bytes exceeds --max-doc-bytes {cfg.max_doc_bytes}")))
              .when(reason == "missing_id", F.lit(f"column {cfg.id_column!r} is null or empty"))
              .when(reason == "missing_text", F.lit(f"column {cfg.text_column!r} is null"))
              .when(reason == "empty_text", F.lit(f"column {cfg.text_column!r} is blank"))
              .when(reason == "missing_category",
                    F.lit(f"column {cfg.category_column!r} is null or empty and no --category")))
    return frame.select(
        doc_id.alias("doc_id"),
        F.when(reason.isNull(), text).alias("text"),
        category.alias("category"),
        source.alias("source"),
        F.sha2(F.concat_ws("\u001f", F.coalesce(doc_id, F.lit("")),
                           F.coalesce(text, F.lit(""))), 256).alias("content_key"),
        reason.alias("reason"),
        detail.alias("detail"),
    )
