"""The scorer's record in the scores table: the property ``longattn.scorer.<scorer_id>``
holds its configuration (from config.json and the weight headers), what was asked for, the
tokenizers, and every combination of device, kernel, dtype and note the executors ran, each
recorded before the commit that holds its rows."""

from __future__ import annotations

import json
from collections.abc import Iterable

from pyspark.sql import SparkSession

from longattn_spark.config import ScoreConfig
from longattn_spark.scorers.base import MethodPlan, ScorerMethod
from longattn_spark.scorers.executor import RUN_FIELDS
from longattn_spark.scorers.positions import extrapolation_note, trained_positions
from longattn_spark.scorers.options import options_as_dict
from longattn_spark.tables.refs import TableRef, table_properties
from longattn_spark.tables.writes import set_properties
from longattn_spark.weights.location import ModelLocation


class ScorerRecord:
    """The ``longattn.scorer.<scorer_id>`` property of one run, kept current as micro-batches
    report what the executors ran."""

    def __init__(self, spark: SparkSession, scores_ref: TableRef, scorer_id: str,
                 record: dict) -> None:
        self._spark = spark
        self._scores_ref = scores_ref
        self.key = f"longattn.scorer.{scorer_id}"
        self.record = record
        self._seen = {_run_key(e) for e in record["executors"]}

    @classmethod
    def written(cls, spark: SparkSession, scores_ref: TableRef, method: ScorerMethod,
                plan: MethodPlan, cfg: ScoreConfig, location: ModelLocation) -> ScorerRecord:
        """The record of this run (merged with an earlier run's), written to the table."""
        record = cls(spark, scores_ref, plan.scorer_id,
                     scorer_record(spark, scores_ref, method, plan, cfg, location))
        record._write()
        return record

    def add_runs(self, runs: Iterable[tuple]) -> None:
        """Record the (``RUN_FIELDS``) combinations not seen yet, before the commit that holds
        their rows."""
        new_runs = [run for run in runs if run not in self._seen]
        if new_runs:
            self._seen.update(new_runs)
            self.record["executors"] += [dict(zip(RUN_FIELDS, run, strict=True))
                                         for run in new_runs]
            self._write()

    def _write(self) -> None:
        set_properties(self._spark, self._scores_ref,
                       {self.key: json.dumps(self.record, sort_keys=True)})


def _run_key(run: dict) -> tuple:
    return tuple(run.get(f) for f in RUN_FIELDS)


def scorer_record(spark: SparkSession, scores_ref: TableRef, method: ScorerMethod,
                  plan: MethodPlan, cfg: ScoreConfig, location: ModelLocation) -> dict:
    """The ``longattn.scorer.<id>`` property: the scorer's configuration (``described``: from
    config.json and the headers), what was asked for, the tokenizers, and what the executors
    ran so far (kept from earlier runs; the windows' tokenizers are merged with earlier runs'
    too)."""
    scorer_id, tokenizer = plan.scorer_id, plan.tokenizer
    summary = dict(plan.describe)
    for driver_only in ("device", "kernel", "kernel_note", "block_size"):
        summary.pop(driver_only, None)  # the driver scores nothing: executors say what ran
    earlier = {}
    text = table_properties(spark, scores_ref).get(f"longattn.scorer.{scorer_id}")
    if text:
        try:
            earlier = json.loads(text)
        except ValueError:
            earlier = {}
    before = earlier.get("tokenizer") if isinstance(earlier.get("tokenizer"), dict) else {}
    tokenizer = dict(tokenizer)
    tokenizer["windows"] = sorted(set(tokenizer["windows"]) | set(before.get("windows", [])))
    if before.get("check") == "mismatch_allowed":
        tokenizer["check"] = "mismatch_allowed"
    executors = earlier.get("executors") if isinstance(earlier.get("executors"), list) else []
    plugin = {"method_plugin": cfg.method} if cfg.method != method.name else {}
    options = method.options(cfg)
    trained = trained_positions(plan.describe)
    positions = {"trained_positions": trained, "positions_note": extrapolation_note(
        trained, plan.seq_len, method=method.name,
        rope_theta=getattr(options, "rope_theta", None) or None)}
    return {**summary, **plugin, **positions, "method": method.name, "scorer_id": scorer_id,
            "options": options_as_dict(options), "components": list(method.components),
            "seq_len": plan.seq_len, "min_distance": plan.min_distance,
            "model": cfg.model or None,
            "model_folder": location.folder if location is not None else None,
            "requested": {"device": cfg.device, "dtype": cfg.dtype},
            "dtype": plan.dtype, "tokenizer": tokenizer, "executors": executors}
