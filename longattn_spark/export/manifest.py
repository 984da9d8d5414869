"""The export's pure part (no Spark, no files): the options, shard names, attempt folders and
the manifest, built and parsed. The layout and its guarantees: :mod:`longattn_spark.export`."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from longattn_spark.config import ExportConfig
from longattn_spark.errors import ConfigError, InputError, TableError
from longattn_spark.paths.uri import has_scheme

EXTENSIONS = {"jsonl": "jsonl", "parquet": "parquet"}
MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
ATTEMPTS = "_attempts"
# inside an attempt folder: Spark's own output before the shards get their names, and the
# manifest before it is renamed over MANIFEST
_SPARK_OUTPUT = "_spark"
_MANIFEST_DRAFT = "_manifest.json"
# the flat layout of earlier versions, deleted once a manifest of this layout is published
_LEGACY_SHARD = re.compile(r"^part-\d{5}-of-\d{5}\.(jsonl|parquet)$")
_LEGACY_STAGING_PREFIX = "_staging-"
# file systems where a rename is a copy but a written file appears whole when closed
OBJECT_STORES = frozenset({"s3", "s3a", "s3n", "gs", "oss", "cosn", "obs", "wasb", "wasbs",
                           "dbfs"})


@dataclass(frozen=True)
class ExportOptions:
    """Validated export options."""

    format: str
    shards: int
    output: str
    selection_id: str
    tokenizer: str
    batch_windows: int


def export_options(cfg: ExportConfig) -> ExportOptions:
    """Validate the export section of the configuration."""
    if cfg.format not in EXTENSIONS:
        raise ConfigError(f"--format must be jsonl or parquet, got {cfg.format!r}")
    if cfg.shards < 1:
        raise ConfigError(f"--shards must be at least 1, got {cfg.shards}")
    if cfg.batch_windows < 1:
        raise ConfigError(f"--batch-windows must be at least 1, got {cfg.batch_windows}")
    if not cfg.output.strip():
        raise ConfigError("--output is required: the folder to write the shards to")
    if cfg.format == "jsonl" and not cfg.tokenizer:
        raise InputError("--tokenizer is required for --format jsonl: the tokenizer folder "
                         "(tokenizer.json) that decodes the windows' ids to text")
    return ExportOptions(format=cfg.format, shards=int(cfg.shards),
                         output=output_location(cfg.output), selection_id=cfg.selection_id,
                         tokenizer=cfg.tokenizer, batch_windows=int(cfg.batch_windows))


def output_location(text: str) -> str:
    """A URI as given, a local path made absolute."""
    return text if has_scheme(text) else str(Path(text).expanduser().resolve())


def shard_percentages(shards: int) -> list[float]:
    """Quantiles that split the kept windows into ``shards`` equal parts."""
    return [i / shards for i in range(1, shards)]


def shard_file_name(index: int, count: int, fmt: str) -> str:
    return f"part-{index:05d}-of-{count:05d}.{EXTENSIONS[fmt]}"


def is_legacy_export_file(name: str) -> bool:
    """Shards and staging folders of the earlier flat layout (directly in ``--output``)."""
    return bool(_LEGACY_SHARD.match(name)) or name.startswith(_LEGACY_STAGING_PREFIX)


def attempt_folder(selection_id: str, now: datetime | None = None, token: str | None = None
                   ) -> str:
    """A fresh attempt folder, relative to ``--output``: ``_attempts/<id>-<time>-<token>``."""
    now = now or datetime.now(timezone.utc)
    token = token or uuid.uuid4().hex[:8]
    return f"{ATTEMPTS}/{selection_id}-{now:%Y%m%dT%H%M%SZ}-{token}"


def publish_method(scheme: str) -> str:
    """How ``manifest.json`` is replaced atomically on a file system: ``rename`` (POSIX rename
    over the old file, local), ``put`` (written in place, visible whole when closed: object
    stores) or ``rename-overwrite`` (Hadoop FileContext rename with OVERWRITE: atomic on HDFS;
    a delete and a rename where the file system has no atomic replace)."""
    if scheme == "file":
        return "rename"
    if scheme in OBJECT_STORES:
        return "put"
    return "rename-overwrite"


def build_manifest(*, options: ExportOptions, selection_id: str, info: Mapping[str, Any],
                   selection_table: str, windows_table: str, stats: list[Mapping[str, Any]],
                   tokenizer: str | None, attempt: str = "") -> dict[str, Any]:
    """manifest.json: the shard files, totals per category and per shard, and where the
    windows came from.

    ``stats`` rows: shard, category, windows, tokens (``export_stats.sql``); shards are
    numbered in the order of their shard value. ``attempt``: the folder (relative to
    ``--output``) holding the shards. Sizes and checksums are added by :func:`with_files` once
    the files are written.
    """
    shard_ids = sorted({int(r["shard"]) for r in stats})
    categories: dict[str, dict[str, int]] = {}
    shards = []
    for index, shard in enumerate(shard_ids):
        rows = [r for r in stats if int(r["shard"]) == shard]
        name = shard_file_name(index, len(shard_ids), options.format)
        windows = sum(int(r["windows"]) for r in rows)
        shards.append({"file": f"{attempt}/{name}" if attempt else name,
                       "rows": windows,
                       "windows": windows,
                       "tokens": sum(int(r["tokens"]) for r in rows)})
        for r in rows:
            c = categories.setdefault(r["category"], {"windows": 0, "tokens": 0})
            c["windows"] += int(r["windows"])
            c["tokens"] += int(r["tokens"])
    text = None
    if options.format == "jsonl":
        text = (f"decoded from input_ids with the tokenizer {tokenizer} (special tokens kept); "
                "not the exact source span of the document")
    return {
        "manifest_version": MANIFEST_VERSION,
        "format": options.format,
        "fields": ["text", "id", "category"] if options.format == "jsonl"
        else ["id", "category", "input_ids"],
        "text": text,
        "selection_id": selection_id,
        "selection_table": selection_table,
        "windows_table": windows_table,
        "windows_version": info["windows_version"],
        "scores_version": info["scores_version"],
        "scorer_id": info["scorer_id"],
        "params": json.loads(info["params"]) if info["params"] else None,
        "windows": sum(s["windows"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "categories": dict(sorted(categories.items())),
        "attempt": attempt or None,
        "previous_attempt": None,
        "shards": shards,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def with_files(manifest: Mapping[str, Any], files: Mapping[str, Mapping[str, Any]]
               ) -> dict[str, Any]:
    """The manifest with each shard's ``bytes`` (and ``checksum`` when known) from ``files``
    (keyed by the shard's ``file``)."""
    shards = []
    for shard in manifest["shards"]:
        found = files[shard["file"]]
        entry = {**shard, "bytes": int(found["bytes"])}
        if found.get("checksum"):
            entry["checksum"] = found["checksum"]
        shards.append(entry)
    return {**manifest, "shards": shards}


@dataclass(frozen=True)
class ExportManifest:
    """The current manifest of an export folder: what a reader may read."""

    output: str
    content: Mapping[str, Any]

    @property
    def selection_id(self) -> str:
        return self.content["selection_id"]

    @property
    def format(self) -> str:
        return self.content["format"]

    @property
    def shards(self) -> list[Mapping[str, Any]]:
        return list(self.content["shards"])

    @property
    def rows(self) -> int:
        return sum(int(s.get("rows", s["windows"])) for s in self.content["shards"])

    @property
    def files(self) -> list[str]:
        """The shard files, as paths (local output) or URIs, in shard order."""
        return [join_location(self.output, s["file"]) for s in self.content["shards"]]


def join_location(output: str, relative: str) -> str:
    """``relative`` (``/``-separated) inside the folder ``output`` (a local path or a URI)."""
    if has_scheme(output):
        return output.rstrip("/") + "/" + relative
    return str(Path(output, *relative.split("/")))


def _relative_file(name: Any, output: str) -> str:
    parts = name.split("/") if isinstance(name, str) else []
    if (not parts or has_scheme(name) or name.startswith("/")
            or any(p in ("", ".", "..") for p in parts)):
        raise InputError(f"{output}/{MANIFEST}: shard file {name!r} is not a path inside the "
                         "export folder")
    return name


def parse_manifest(text: str, output: str) -> ExportManifest:
    """Check a manifest's text and wrap it (``output``: the export folder)."""
    try:
        content = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{output}/{MANIFEST}: not JSON ({exc})") from None
    if not isinstance(content, dict) or content.get("format") not in EXTENSIONS \
            or not isinstance(content.get("shards"), list) or "selection_id" not in content:
        raise InputError(f"{output}/{MANIFEST}: not an export manifest")
    for shard in content["shards"]:
        if not isinstance(shard, dict):
            raise InputError(f"{output}/{MANIFEST}: not an export manifest")
        _relative_file(shard.get("file"), output)
    return ExportManifest(output, content)


def check_exported(stats: list[Mapping[str, Any]], info: Mapping[str, Any], windows: str,
                   tokenizer_identity: str | None) -> None:
    """Every kept window must be in the windows table, cut with the tokenizer that decodes it."""
    found = sum(int(r["windows"]) for r in stats)
    if found != info["selected"]:
        raise TableError(f"--windows {windows}: {info['selected'] - found} of the "
                         f"{info['selected']} selected windows are missing at version "
                         f"{info['windows_version']}")
    if tokenizer_identity is None:
        return
    used = sorted({t for r in stats for t in (r["tokenizers"] or [])})
    if any(t != tokenizer_identity for t in used):
        raise InputError(f"--tokenizer is {tokenizer_identity}, but the selected windows were "
                         f"cut with {', '.join(used)}; their ids would decode to wrong text")
