"""The probe's staging windows: each sampled natural window and its controls as rows of a
windows table (window_id ``<probe_id>/<kind>/<A's window_id>``, A's tokenizer, W tokens), and
each row's provenance (kind, A, the other windows a splice or concat took, the control's
parameter). Built on the driver: the sample is small (per category a few hundred windows of
W tokens), and each control is a few numpy slices, so building them costs milliseconds
against seconds of scoring; a distributed build would cost a shuffle and a task launch per
category for nothing."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from longattn_spark.probe.controls import Control, build_controls
from longattn_spark.probe.ranking import NATURAL
from longattn_spark.probe.results import ProbeRun
from longattn_spark.probe.sample import CategorySample
from longattn_spark.tables.refs import TableRef
from longattn_spark.tables.schemas import WINDOWS
from longattn_spark.tables.writes import ensure_table, merge_new_rows


def staged_rows(samples: dict[str, CategorySample], kinds: tuple[str, ...], seed: int,
                seq_len: int, min_distance: int, block: int, near_repeat_share: float,
                probe_id: str, run: ProbeRun) -> tuple[pa.Table, list[dict]]:
    """The staging windows (natural and controls, as windows rows) and each row's
    provenance (kind, A, other windows, param), counting what was built and skipped."""
    windows: list[dict] = []
    provenance: list[dict] = []
    for category, sample in samples.items():
        run.natural[category] = len(sample.natural)
        if len(sample.natural) < 2:
            run.skipped[category] = {k: f"the category has {sample.windows_in_table} window(s); "
                                        "a probe needs at least 2" for k in kinds}
            continue
        by_id = {w.source.window_id: w for w in sample.natural}
        controls, skipped = build_controls([w.source for w in sample.natural],
                                           [w.source for w in sample.donors], kinds, seed,
                                           seq_len, min_distance, block, near_repeat_share)
        if skipped:
            run.skipped[category] = skipped
        naturals = [Control(NATURAL, w.source.window_id, (), None, w.source.input_ids)
                    for w in sample.natural]
        for c in naturals + controls:
            a = by_id[c.window_id]
            scored_id = f"{probe_id}/{c.kind}/{c.window_id}"
            windows.append({
                "window_id": scored_id, "doc_id": a.source.doc_id, "category": category,
                "window_index": a.window_index, "token_start": a.token_start,
                "n_tokens": len(c.input_ids), "input_ids": np.asarray(c.input_ids, np.int32),
                "char_start": None, "char_end": None, "tokenizer": a.tokenizer,
                "doc_sha256": a.doc_sha256 if c.kind == NATURAL else None})
            provenance.append({"scored_window_id": scored_id, "probe_id": probe_id,
                               "category": category, "kind": c.kind, "window_id": c.window_id,
                               "other_window_ids": list(c.other_window_ids),
                               "param": c.param})
            if c.kind != NATURAL:
                counts = run.controls.setdefault(category, {})
                counts[c.kind] = counts.get(c.kind, 0) + 1
    return windows_arrow(windows), provenance


def windows_arrow(rows: list[dict]) -> pa.Table:
    """Staging windows rows as an Arrow table of the windows table's columns."""
    now = pa.scalar(time.time_ns() // 1000, pa.timestamp("us", tz="UTC"))
    ids = pa.array([r["input_ids"] for r in rows], pa.list_(pa.field("element", pa.int32(),
                                                                      nullable=False)))
    columns = {
        "window_id": pa.array([r["window_id"] for r in rows], pa.string()),
        "doc_id": pa.array([r["doc_id"] for r in rows], pa.string()),
        "category": pa.array([r["category"] for r in rows], pa.string()),
        "window_index": pa.array([r["window_index"] for r in rows], pa.int32()),
        "token_start": pa.array([r["token_start"] for r in rows], pa.int32()),
        "n_tokens": pa.array([r["n_tokens"] for r in rows], pa.int32()),
        "input_ids": ids,
        "char_start": pa.array([None] * len(rows), pa.int64()),
        "char_end": pa.array([None] * len(rows), pa.int64()),
        "tokenizer": pa.array([r["tokenizer"] for r in rows], pa.string()),
        "ingested_at": pa.array([now.as_py()] * len(rows), pa.timestamp("us", tz="UTC")),
        "doc_sha256": pa.array([r["doc_sha256"] for r in rows], pa.string()),
    }
    return pa.table(columns)


def stage_windows(spark: SparkSession, ref: TableRef, rows: DataFrame) -> None:
    """Write the staging windows by the insert-only MERGE: a re-run, a resumed run or two
    runs of the same probe at once never duplicate a staging window."""
    ensure_table(spark, ref, WINDOWS)
    merge_new_rows(spark, ref, WINDOWS, rows.select(*WINDOWS.column_names))
