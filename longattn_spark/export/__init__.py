"""Export: the windows of a selection as sharded training files.

Formats (``--format``):

- ``jsonl``: one object per line, ``{"text": ..., "id": ..., "category": ...}``, ready for
  Megatron-LM's ``tools/preprocess_data.py --json-keys text`` or Hugging Face ``datasets``
  (``load_dataset("json", data_files=...)``). ``text`` is the window's ``input_ids`` decoded
  with ``--tokenizer`` (special tokens kept): **decoded ids, not the exact source span** of the
  document. Decoding is done on the executors (``mapInArrow``), the tokenizer built once per
  Python worker from its JSON, which travels with the task (``longattn_spark.tokenizer``), so
  executors need no access to the driver's path. The tokenizer must be the one the windows
  were cut with (checked against the windows' ``tokenizer`` column).
- ``parquet``: ``id``, ``category``, ``input_ids`` (array<int>), the ids exactly as scored.

Layout of ``--output`` (a local folder or any Hadoop file system URI)::

    manifest.json                                  the current export; published last
    _attempts/<selection_id>-<time>-<token>/       one folder per export run
        part-00000-of-0000N.jsonl                  (or .parquet)

An export run writes its shards into a fresh attempt folder, then publishes ``manifest.json``,
replacing the previous one in one step. The manifest lists every shard file of the export
(path relative to ``--output``, rows = lines of a JSONL file, windows, tokens, bytes, and the
file system's checksum where it keeps one cheaply, e.g. HDFS), the selection, its parameters,
the Delta versions it read, and windows and tokens per category. **Readers trust only what
the current manifest lists** (:func:`read_export_manifest`, :func:`export_files`): a reader
sees the previous complete export or the new complete one, never a mix or an empty folder,
even while an export runs or after one was killed. Files that no manifest lists (the attempt
of a killed or running export) are not part of any export.

The manifest is replaced atomically: locally and on HDFS (and other file systems with an
atomic rename) it is written next to the shards and renamed over ``manifest.json``; on object
stores (``s3a``, ``gs``, ``wasb``, ``dbfs``, ...), where a rename is a copy, it is written in
place with one PUT, which becomes visible whole when closed. After publishing, attempt folders
other than the current one and the one it replaced are deleted (the replaced export stays
one more export, for readers that started on it), as are the shards of the earlier flat
layout (``part-*-of-*`` and ``_staging-*`` directly in ``--output``). One export at a time per
output folder: a second export started meanwhile may delete the first one's attempt.

Shards hold about equal numbers of windows: a window's shard is given by quantiles of
``xxhash64(window_id)`` over the kept windows (exact, so sizes differ by at most one window,
while the selection has fewer windows than the quantile accuracy of 100000; within 1e-5 of the
count otherwise). A shard that would be empty (fewer windows than ``--shards``) is not
written, and the file names count the shards written. A re-run writes a new attempt and
replaces the manifest: lines are never duplicated.

The windows table is read at the version the selection recorded (time travel), so the files
match the selection even after the windows table changed.

The package reads top-down: :mod:`~longattn_spark.export.manifest` (pure: options, shard and
attempt names, the manifest built and parsed), :mod:`~longattn_spark.export.folder` (the export
folder's files: reading the current export, naming shards, publishing, cleaning up) and
:mod:`~longattn_spark.export.job` (Spark: ``export_selection``, ``run_export_job``).
"""

from longattn_spark.export.folder import (
    _Folder, clean_up, current_attempt, export_files, name_shards, publish_manifest,
    read_export_manifest)
from longattn_spark.export.job import (
    DECODED_SCHEMA, SHARD_ACCURACY, chosen_selection_id, decode_batches, export_selection,
    run_export_job, selection_info, shard_bounds, write_shards)
from longattn_spark.export.manifest import (
    ATTEMPTS, EXTENSIONS, MANIFEST, MANIFEST_VERSION, OBJECT_STORES, ExportManifest,
    ExportOptions, attempt_folder, build_manifest, check_exported, export_options,
    is_legacy_export_file, join_location, output_location, parse_manifest, publish_method,
    shard_file_name, shard_percentages, with_files)

__all__ = [
    "ATTEMPTS", "DECODED_SCHEMA", "EXTENSIONS", "MANIFEST", "MANIFEST_VERSION", "OBJECT_STORES",
    "SHARD_ACCURACY", "ExportManifest", "ExportOptions", "_Folder", "attempt_folder",
    "build_manifest", "check_exported", "chosen_selection_id", "clean_up", "current_attempt",
    "decode_batches", "export_files", "export_options", "export_selection",
    "is_legacy_export_file", "join_location", "name_shards", "output_location",
    "parse_manifest", "publish_manifest", "publish_method", "read_export_manifest",
    "run_export_job", "selection_info", "shard_bounds", "shard_file_name", "shard_percentages",
    "with_files", "write_shards",
]
