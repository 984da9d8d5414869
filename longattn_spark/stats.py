"""Per-category numbers shared by select and report: one statistics type and query over scored
windows, and one per-category summary of a written selection.

- :class:`CategoryStats` (``category_stats.sql``): windows, how many are usable and their
  tokens, and count, mean, std, min and max of DS and variance, per category plus an overall
  row. Select normalizes and bounds its cut with it; the report prints it.
- :class:`CategorySummary` (``select_summary.sql``, folded by :func:`category_summaries`):
  windows, exclusions, kept windows and tokens and the cut of one selection per category.
  Select prints it after a run; the report tabulates and plots it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from longattn_spark.sqlfiles import load_sql


def category_label(category: str | None) -> str:
    return "(no category)" if category is None else str(category)


def category_order(category: str | None) -> tuple[bool, str]:
    """Sort key: categories by name, the NULL category last."""
    return (category is None, category or "")


@dataclass(frozen=True)
class CategoryStats:
    """One row of ``category_stats.sql``; ``is_total`` marks the overall row."""

    category: str | None
    is_total: bool
    windows: int
    excluded: int
    n: int
    tokens: int
    max_window_tokens: int | None
    mean_ds: float | None
    sd_ds: float | None
    min_ds: float | None
    max_ds: float | None
    mean_var: float | None
    sd_var: float | None
    min_var: float | None
    max_var: float | None
    min_log10_var: float | None = None
    max_log10_var: float | None = None

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> CategoryStats:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    @property
    def not_finite(self) -> int:
        """Scores that are not ranked (the report's "not finite" column)."""
        return self.excluded

    @property
    def label(self) -> str:
        return "all categories" if self.is_total else category_label(self.category)


def category_stats_frame(spark, scored: str):
    """``category_stats.sql`` over the view ``scored``, as a DataFrame (one grouped aggregate:
    one row per category, the overall row last)."""
    return spark.sql(load_sql("category_stats"), args={"scored": scored})


def category_stats(spark, scored: str) -> tuple[CategoryStats, ...]:
    """The rows of :func:`category_stats_frame`, collected."""
    return tuple(CategoryStats.from_mapping(r) for r in category_stats_frame(spark, scored)
                 .collect())


@dataclass(frozen=True)
class CategorySummary:
    """One category of a written selection; ``budget`` is its token budget, when it had one."""

    category: str | None
    windows: int
    usable: int
    selected: int
    usable_tokens: int
    tokens_selected: int
    cut_lds: float | None
    excluded: Mapping[str, int] = field(default_factory=dict)
    budget: int | None = None


def category_summaries(rows: Iterable[Mapping[str, Any]]) -> tuple[CategorySummary, ...]:
    """Fold ``select_summary.sql`` rows (per category and exclusion reason) per category."""
    acc: dict[Any, dict[str, Any]] = {}
    for r in rows:
        a = acc.setdefault(r["category"], {"windows": 0, "usable": 0, "selected": 0,
                                           "usable_tokens": 0, "tokens_selected": 0,
                                           "cut_lds": None, "excluded": {}})
        a["windows"] += int(r["windows"])
        if r["excluded_reason"] is None:
            a["usable"] += int(r["windows"])
            a["selected"] += int(r["selected"])
            a["usable_tokens"] += int(r["tokens"])
            a["tokens_selected"] += int(r["tokens_selected"])
            a["cut_lds"] = r["cut_lds"]
        else:
            a["excluded"][r["excluded_reason"]] = int(r["windows"])
    ordered = sorted(acc.items(), key=lambda kv: category_order(kv[0]))
    return tuple(CategorySummary(category=c, **a) for c, a in ordered)


def selection_summary(spark, selection: str, selection_id: str) -> tuple[CategorySummary, ...]:
    """Windows and tokens kept per category of one selection (``select_summary.sql``)."""
    rows = spark.sql(load_sql("select_summary"), args={
        "selection": selection, "selection_id": selection_id}).collect()
    return category_summaries(r.asDict() for r in rows)
