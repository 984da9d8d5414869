"""Per category and control kind: the AUC of natural over control windows on the selection
score and on each component, from the probe table's rows; and ``ProbeRun``, what one probe run
did and found (pure: no Spark).

Components: ``selection_score`` (the probed ranking; a row that failed one of its filters
ranks last, ``probe.ranking.FILTERED``); every entry of the row's ``components`` map (every
scorer's components, qualified: ``lossgain.dependency_gain``); and from the typed columns of a
single-scorer probe, as earlier releases named them: for LongAttn ``ds`` and ``du``
(= -variance) and per query head ``ds_h<i>`` / ``du_h<i>``; for other methods ``score`` and every
floating-point field of their component struct (``prolong.mean_strength``, ...). Rows whose
value is null or not finite are left out of that component's AUC only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from longattn_spark.probe.auc import AucResult, auc_with_interval, bootstrap_seed, finite, verdict
from longattn_spark.probe.ranking import FILTERED, NATURAL
#: the fewest natural windows a category needs (a sample standard deviation)
MIN_NATURAL = 2
_NOT_COMPONENTS = {"seq_len", "min_distance", "model", "method", "param", "components",
                   "passed"}


@dataclass
class KindResult:
    category: str
    kind: str
    n_natural: int
    n_control: int
    result: AucResult | None = None
    per_component: dict[str, AucResult] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def verdict(self) -> str:
        return verdict(self.kind, self.result, self.skipped)

    def as_json(self) -> dict[str, Any]:
        r = self.result
        out: dict[str, Any] = {
            "auc": r.auc if r else None, "lo": r.lo if r else None,
            "hi": r.hi if r else None, "n_natural": self.n_natural,
            "n_control": self.n_control,
            "per_component": {name: {"auc": c.auc, "lo": c.lo, "hi": c.hi,
                                     "n_natural": c.n_natural, "n_control": c.n_control}
                              for name, c in self.per_component.items()},
            "verdict": self.verdict}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def components(row: Mapping[str, Any], score_columns: Sequence[str]) -> dict[str, float | None]:
    """The values of one probe row that get an AUC, by component name."""
    selection = row.get("selection_score")
    out: dict[str, float | None] = {
        "selection_score": FILTERED if row.get("passed") is False else selection}
    for name in score_columns:
        if name in _NOT_COMPONENTS:
            continue
        value = row.get(name)
        if name == "variance":
            out["du"] = None if value is None else -value
        elif name == "var_heads":
            for i, v in enumerate(value or []):
                out[f"du_h{i}"] = None if v is None else -v
        elif name == "ds_heads":
            for i, v in enumerate(value or []):
                out[f"ds_h{i}"] = v
        elif isinstance(value, Mapping):
            for sub, v in value.items():
                if isinstance(v, float):
                    out[f"{name}.{sub}"] = v
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, float):
                    out[f"{name}[{i}]"] = v
        elif isinstance(value, float) or (value is None and name in ("ds", "score")):
            out[name] = value
    for key, value in (row.get("components") or {}).items():
        out[key] = value
    return out


def probe_results(rows: Iterable[Mapping[str, Any]], kinds: Sequence[str],
                  skipped: Mapping[str, Mapping[str, str]], seed: int,
                  score_columns: Sequence[str], replicates: int = 1000
                  ) -> dict[str, dict[str, KindResult]]:
    """``{category: {kind: KindResult}}`` for every category of ``rows`` (and of ``skipped``)
    and every kind asked for; a kind without controls, or a category with fewer than
    ``MIN_NATURAL`` natural windows, is a skipped result saying why (never an AUC of 0)."""
    values: dict[str, dict[str, list[dict[str, float | None]]]] = {}
    for row in rows:
        values.setdefault(row["category"], {}).setdefault(row["kind"], []).append(
            components(row, score_columns))
    out: dict[str, dict[str, KindResult]] = {}
    for category in sorted(set(values) | set(skipped)):
        by_kind = values.get(category, {})
        natural = by_kind.get(NATURAL, [])
        out[category] = {}
        for kind in kinds:
            control = by_kind.get(kind, [])
            entry = KindResult(category, kind, len(natural), len(control))
            reason = (skipped.get(category) or {}).get(kind)
            if len(natural) < MIN_NATURAL:
                reason = reason or (f"needs at least {MIN_NATURAL} natural windows scored in "
                                    f"the category, has {len(natural)}")
            elif not control:
                reason = reason or "no control of this kind was scored"
            if reason and not control or len(natural) < MIN_NATURAL:
                entry.skipped = reason
                out[category][kind] = entry
                continue
            names = list(dict.fromkeys(n for r in natural + control for n in r))
            for name in names:
                x = finite(r.get(name) for r in natural)
                y = finite(r.get(name) for r in control)
                if len(x) and len(y):
                    entry.per_component[name] = auc_with_interval(
                        x, y, bootstrap_seed(seed, category, kind, name), replicates)
            entry.result = entry.per_component.get("selection_score")
            if entry.result is None:
                entry.skipped = "no finite selection score among its natural or control rows"
            out[category][kind] = entry
    return out


def results_json(results: Mapping[str, Mapping[str, KindResult]]) -> dict[str, Any]:
    """``{category: {kind: {"auc", "lo", "hi", "n_natural", "n_control", "per_component",
    "verdict"[, "skipped"]}}}``."""
    return {c: {k: r.as_json() for k, r in kinds.items()} for c, kinds in results.items()}


@dataclass
class ProbeRun:
    """What one probe run did and found."""

    probe_id: str
    table: str
    scorer_id: str = ""
    method: str = ""
    recipe: str = ""
    seq_len: int = 0
    min_distance: int = 0
    window_size: int = 0
    block: int = 0
    kinds: tuple[str, ...] = ()
    natural: dict[str, int] = field(default_factory=dict)
    controls: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    scored: int = 0
    already_scored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    rows_written: int = 0
    results: dict[str, dict[str, KindResult]] = field(default_factory=dict)
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)
    reranked: bool = False  # probe --rank: ranked again from the stored rows, nothing scored
