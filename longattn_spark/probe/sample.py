"""The probe's natural sample and donor windows, read from the windows table.

Per category, windows are ordered by a seeded hash ``u = xxhash64(window_id, seed)`` mapped to
[0, 1) (ties by window_id); the first ``per_category`` are the natural sample, the first
``2 * per_category`` (the sample included) are the donors whose tokens splice and concat take.
No category is gathered into one task: one grouped count, one filter ``u < threshold`` with a
per-category threshold that keeps a little more than needed (only ids and hashes are
collected), and one read of the chosen windows' tokens; a category whose filter kept too few
(improbable) is read again with threshold 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from longattn_spark.probe.controls import SourceWindow
from longattn_spark.tables.refs import TableRef

_SCALE = float(2 ** 53)


@dataclass(frozen=True)
class SampledWindow:
    source: SourceWindow
    category: str
    tokenizer: str | None
    window_index: int | None
    token_start: int | None
    doc_sha256: str | None


@dataclass
class CategorySample:
    category: str
    windows_in_table: int
    natural: list[SampledWindow]
    donors: list[SampledWindow]

    @property
    def documents(self) -> int:
        return len({w.source.doc_id for w in self.donors})


def _hashed(frame: DataFrame, seed: int) -> DataFrame:
    u = F.pmod(F.xxhash64(F.col("window_id"), F.lit(int(seed))), F.lit(2 ** 53)) / F.lit(_SCALE)
    return frame.withColumn("_u", u.cast("double"))


def _threshold(wanted: int, available: int) -> float:
    if available <= wanted:
        return 1.0
    margin = wanted + 6 * math.sqrt(wanted) + 20
    return min(1.0, margin / available)


def sample_windows(spark: SparkSession, ref: TableRef, per_category: int, seed: int
                   ) -> dict[str, CategorySample]:
    """Natural sample and donors per category (see the module docstring)."""
    frame = ref.read(spark).select("window_id", "doc_id", "category")
    counts = {r["category"]: int(r["count"]) for r in
              frame.groupBy("category").count().collect()}
    wanted = 2 * per_category
    chosen: dict[str, list[tuple[float, str]]] = {}
    pending = {c: _threshold(wanted, n) for c, n in counts.items() if c is not None}
    while pending:
        limits = spark.createDataFrame(list(pending.items()), "category string, _limit double")
        rows = (_hashed(frame, seed).join(F.broadcast(limits), "category")
                .filter(F.col("_u") < F.col("_limit"))
                .select("category", "window_id", "_u").collect())
        found: dict[str, list[tuple[float, str]]] = {}
        for r in rows:
            found.setdefault(r["category"], []).append((r["_u"], r["window_id"]))
        retry = {}
        for category, limit in pending.items():
            got = sorted(found.get(category, []))
            if len(got) >= min(wanted, counts[category]) or limit >= 1.0:
                chosen[category] = got[:wanted]
            else:
                retry[category] = 1.0
        pending = retry
    order = {wid: (c, i) for c, got in chosen.items() for i, (_, wid) in enumerate(got)}
    ids = spark.createDataFrame([(w,) for w in order], "window_id string")
    windows = (ref.read(spark).join(F.broadcast(ids), "window_id")
               .select("window_id", "doc_id", "category", "input_ids", "tokenizer",
                       "window_index", "token_start", "doc_sha256").collect())
    by_category: dict[str, list[tuple[int, SampledWindow]]] = {}
    for r in windows:
        category, position = order[r["window_id"]]
        sampled = SampledWindow(
            SourceWindow(r["window_id"], r["doc_id"], np.asarray(r["input_ids"], np.int32)),
            category, r["tokenizer"], r["window_index"], r["token_start"], r["doc_sha256"])
        by_category.setdefault(category, []).append((position, sampled))
    out = {}
    for category in sorted(chosen):
        ranked = [w for _, w in sorted(by_category.get(category, []), key=lambda x: x[0])]
        out[category] = CategorySample(category, counts[category], ranked[:per_category],
                                       ranked)
    return out
