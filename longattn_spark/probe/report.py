"""The report's probe section (``report --probe TABLE``): the AUC table, per-head AUCs, the
score distributions of natural windows against each control kind, and the position-only
references. Reading is Spark (a probe is small: a few hundred rows per category, read without
their tokens); the figures are pure functions of the dataclass below."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from longattn_spark.probe.auc import SEPARATES_AT, SINK_TOKENS, uniform_head_ds
from longattn_spark.probe.results import NATURAL, KindResult, probe_results

KIND_COLORS = {"natural": "#2e7d32", "splice": "#1565c0", "shuffle": "#ef6c00",
               "repeat": "#6a1b9a", "concat": "#c62828",
               "nearrepeat": "#ad1457"}


#: a verdict's status (the report colours it and says it in words): the thresholds of
#: ``probe.auc.verdict``, whose line each status starts
VERDICT_STATUSES = {"separates": "separates", "weak": "separates only weakly",
                    "no": "does not separate", "skipped": "skipped"}


def verdict_status(result: KindResult) -> str:
    """``separates`` (AUC >= 0.6, interval above 0.5), ``weak`` (AUC >= 0.6, interval
    including 0.5), ``no`` (AUC < 0.6) or ``skipped``, as ``probe.auc.verdict`` decides."""
    r = result.result
    if r is None:
        return "skipped"
    if r.auc < SEPARATES_AT:
        return "no"
    return "weak" if r.lo <= 0.5 else "separates"


def verdict_words(status: str) -> str:
    return VERDICT_STATUSES[status]


@dataclass
class ProbeSection:
    table: str
    record: dict[str, Any]
    results: dict[str, dict[str, KindResult]]
    #: {category: {kind: [selection scores]}} and the same for DS
    selection_scores: dict[str, dict[str, list[float]]]
    ds: dict[str, dict[str, list[float]]]
    uniform_ds: float
    sink_share: float | None = None
    sink_note: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def heads(self) -> list[str]:
        """Per-head component names present (ds_h0, du_h0, ...), in head order."""
        names = {n for kinds in self.results.values() for r in kinds.values()
                 for n in r.per_component if n.startswith(("ds_h", "du_h"))}
        return sorted(names, key=lambda n: (int(n[4:]), n[:2]))

    @property
    def mean_natural_ds(self) -> float | None:
        values = [v for kinds in self.ds.values() for v in kinds.get(NATURAL, [])]
        return sum(values) / len(values) if values else None


def probe_section(spark, table: str, model: str = "", device: str = "auto",
                  windows_for_sink: int = 4) -> ProbeSection:
    """Read the probe table and compute its section; with ``model``, measure the share of
    far attention that goes to the first tokens on a few of its natural windows."""
    from longattn_spark.probe.job import read_probe_rows
    from longattn_spark.probe.plan import probe_record
    from longattn_spark.tables.refs import TableRef
    from longattn_spark.tables.schemas import PROBE_SCORE_COLUMNS

    ref = TableRef(table)
    record = probe_record(spark, ref)
    rows = read_probe_rows(spark, ref, record["probe_id"])
    results = probe_results(rows, record["kinds"], record.get("skipped", {}), record["seed"],
                            PROBE_SCORE_COLUMNS, record.get("bootstrap", 1000))
    selection: dict[str, dict[str, list[float]]] = {}
    ds: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        for target, name in ((selection, "selection_score"), (ds, "ds")):
            if r.get(name) is not None:
                target.setdefault(r["category"], {}).setdefault(r["kind"], []).append(
                    float(r[name]))
    section = ProbeSection(str(ref), record, results, selection, ds,
                           uniform_head_ds(record["seq_len"], record["min_distance"]))
    if model:
        section.sink_share, section.sink_note = _sink_share(
            spark, ref, record, model, device, windows_for_sink)
    else:
        section.sink_note = ("pass --model (the probe's model) to measure the share of far "
                             f"attention that goes to the first {SINK_TOKENS} tokens")
    return section


def _sink_share(spark, ref, record: dict, model: str, device: str, n_windows: int
                ) -> tuple[float | None, str]:
    import torch
    from pyspark.sql import functions as F

    from longattn_spark.devices import resolve_device
    from longattn_spark.probe.reference import far_attention_sink_share
    from longattn_spark.scorers.longattn import Layer0Scorer, build_model_input

    attention = [s for s in (record.get("score") or {}).get("scorers", [])
                 if s.get("method") == "longattn"]
    if not attention and (record.get("method") or "longattn") != "longattn":
        return None, "measured for probes of attention (--method longattn) only"
    rows = (ref.read(spark).filter((F.col("probe_id") == F.lit(record["probe_id"]))
                                   & (F.col("kind") == F.lit(NATURAL)))
            .orderBy("window_id").select("window_id", "input_ids").limit(n_windows).collect())
    options = attention[0].get("options", {}) if attention else record.get("score") or {}
    layer = int(options.get("layer") or 0)
    scorer = Layer0Scorer.from_pretrained(model, device=resolve_device(device),
                                          dtype="float32", kernel="torch", layer=layer,
                                          rope_theta=options.get("rope_theta") or None)
    far_total, sink_total = 0.0, 0.0
    seq_len, k = record["seq_len"], record["min_distance"]
    with torch.inference_mode():
        for row in rows:
            ids = build_model_input(list(row["input_ids"]), scorer.bos_id, seq_len)
            q, key = scorer.rotated_query_key(ids.to(scorer.device))
            q, key = (q[0], key[0]) if q.dim() == 4 else (q, key)
            share, far = far_attention_sink_share(q, key, k, SINK_TOKENS)
            far_total += far
            sink_total += share * far
    if not rows or far_total <= 0:
        return None, "no natural window to measure on"
    return sink_total / far_total, (f"layer {layer} of {model}, on {len(rows)} natural "
                                    "windows of the probe, all query heads")


def plot_distributions(values: Mapping[str, Mapping[str, Sequence[float]]], kinds: Sequence[str],
                       label: str) -> bytes:
    """One panel per category: histograms of ``label`` for natural windows and each kind."""
    from longattn_spark.figures import category_panels, figure_png

    categories = sorted(values)
    fig, panels = category_panels(categories, max_columns=3, row_height=2.6)
    for category, ax in panels:
        by_kind = values[category]
        every = [v for vs in by_kind.values() for v in vs]
        lo, hi = (min(every), max(every)) if every else (0.0, 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        for kind in (NATURAL, *kinds):
            data = by_kind.get(kind, [])
            if data:
                ax.hist(data, bins=20, range=(lo, hi), histtype="step", linewidth=1.6,
                        color=KIND_COLORS.get(kind, "#555555"), label=f"{kind} ({len(data)})")
        ax.set_title(str(category), fontsize=10)
        ax.set_xlabel(label, fontsize=8)
        ax.legend(fontsize=7)
    return figure_png(fig)
