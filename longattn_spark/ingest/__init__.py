"""The ingest stage: raw documents -> tokens -> Algorithm 1 windows -> Delta tables.

Read top-down:

- :mod:`~longattn_spark.ingest.sources`: the input (JSONL, Parquet, text files, a table) as one
  row per input row, with a reason when it is no document;
- :mod:`~longattn_spark.ingest.tokenize`: tokenizing long documents in chunks (pure; the
  tokenizer's identity and spec, which travels with the task: :mod:`longattn_spark.tokenizer`);
- :mod:`~longattn_spark.ingest.windowing`: Algorithm 1's sliding windows (pure);
- :mod:`~longattn_spark.ingest.udf`: the executors' mapInArrow function, documents to status
  and window rows (pure);
- :mod:`~longattn_spark.ingest.job`: ``longattn-spark ingest`` (duplicates, resume, MERGE);
- :mod:`~longattn_spark.ingest.summary`: what a run did, the accounting check, the printout.

The job's names are loaded on first use, so that the pure modules (which executors, the
scorers and the export import) do not pull in the Spark job.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "ingest": "job", "run_ingest_job": "job", "validate_ingest_config": "job",
    "IngestSummary": "summary", "check_accounted": "summary", "print_summary": "summary",
    "OUT_SCHEMA": "udf", "window_batches": "udf", "window_id": "udf",
    "windows_of_batch": "udf", "ALREADY_INGESTED": "udf", "CHANGED_TEXT": "udf",
    "TOO_SHORT": "udf", "WINDOWED": "udf",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
