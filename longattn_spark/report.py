"""``longattn-spark report``: one self-contained HTML file about a scores table and a selection.

What it shows (every plot is a PNG embedded as base64; the file needs nothing else):

- the inputs: tables and their Delta versions, the scorer (model, L, k), the selection and its
  parameters, and a banner when the scores come from the random smoke-test model;
- DS and variance per category: a table of count, mean, std, min and max (one grouped Spark
  SQL aggregate), histograms whose bins are counted in Spark (``width_bucket`` grouped by
  category; no score row is collected), and the paper's Table 10 ranges for comparison;
- the selection: LDS histograms per category (bins counted in Spark) split into kept and
  left-out windows, with the cut marked, windows and tokens kept per category, and a DS vs
  variance scatter drawn from a bounded hash sample (at most ``--sample-points`` windows per
  category, chosen by ``xxhash64(window_id)``, so the same on every run);
- the top and bottom windows by LDS with the start of their text;
- with ``--model``, the attention-distance profile of one window (layer-0 attention mass per
  distance bucket, ``longattn_spark.scoring.profile``), else the command that draws it.

The module has three layers, also used by ``notebooks/explore_scores.ipynb``: Spark queries
that return small dataclasses (``score_stats``, ``score_histograms``, ``lds_histograms``, ...),
plot functions that turn those into matplotlib figures (``plot_*``), and ``render_html``, pure,
from a ``ReportData`` to the HTML text.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from longattn_spark.config import LongAttnConfig, ReportConfig
from longattn_spark.errors import ConfigError, InputError, TableError

SMOKE_MARK = "SMOKE-TEST"
DS = "ds"
LOG10_VARIANCE = "log10_variance"
SAMPLE_SEED = 20240601

PAPER_TABLE10: dict[str, dict[str, tuple[float, float, float]]] = {
    "arxiv": {"ds": (0.25, 0.50, 0.43), "variance": (2.2e-7, 1.8e-6, 8.5e-7)},
    "book": {"ds": (0.21, 0.59, 0.40), "variance": (1.6e-7, 4.9e-6, 4.8e-7)},
    "code": {"ds": (0.18, 0.54, 0.39), "variance": (9.7e-8, 2.4e-6, 6.1e-7)},
}
"""Paper Appendix E, Table 10 (LLaMA-3.1-70B, L = 32768, LongABC-32K-Raw): (min, max, mean)
of DS and of the variance (the table's DU_T column) per category."""
PAPER_DS_RANGE = (0.18, 0.59)
PAPER_DS_MEAN = 0.4
PAPER_VARIANCE_RANGE = (1e-7, 5e-6)
PAPER_SEQ_LEN = 32768

# ---------------------------------------------------------------------------------------------
# SQL (named parameters; tables through IDENTIFIER)
# ---------------------------------------------------------------------------------------------

_USABLE_SCORES = """
  SELECT window_id, category, ds, variance,
         ds IS NOT NULL AND variance IS NOT NULL AND NOT isnan(ds) AND NOT isnan(variance)
         AND abs(ds) != double('Infinity') AND abs(variance) != double('Infinity') AS usable
  FROM IDENTIFIER(:scores)
  WHERE scorer_id = :scorer_id
"""

SCORE_STATS_SQL = f"""
-- Per-category statistics of one scorer's scores, plus an overall row (is_total).
--   :scores  scores table   :scorer_id  the scorer
WITH base AS ({_USABLE_SCORES})
SELECT
  category,
  grouping(category) = 1                                   AS is_total,
  count(*)                                                 AS windows,
  count_if(NOT usable)                                     AS not_finite,
  avg(ds) FILTER (WHERE usable)                            AS mean_ds,
  stddev_samp(ds) FILTER (WHERE usable)                    AS sd_ds,
  min(ds) FILTER (WHERE usable)                            AS min_ds,
  max(ds) FILTER (WHERE usable)                            AS max_ds,
  avg(variance) FILTER (WHERE usable)                      AS mean_var,
  stddev_samp(variance) FILTER (WHERE usable)              AS sd_var,
  min(variance) FILTER (WHERE usable)                      AS min_var,
  max(variance) FILTER (WHERE usable)                      AS max_var,
  min(log10(variance)) FILTER (WHERE usable AND variance > 0) AS min_log10_var,
  max(log10(variance)) FILTER (WHERE usable AND variance > 0) AS max_log10_var
FROM base
GROUP BY GROUPING SETS ((category), ())
ORDER BY is_total, category
"""

SCORE_HISTOGRAM_SQL = f"""
-- Histogram counts of DS and log10(variance) per category, counted where the data are.
--   :scores, :scorer_id   :bins  bins per histogram
--   :ds_lo, :ds_hi, :lv_lo, :lv_hi  common bin ranges of DS and log10(variance)
WITH base AS ({_USABLE_SCORES}),
vals AS (
  SELECT category, 'ds' AS measure, ds AS value FROM base WHERE usable
  UNION ALL
  SELECT category, 'log10_variance' AS measure, log10(variance) AS value
  FROM base WHERE usable AND variance > 0
)
SELECT
  category,
  measure,
  least(greatest(width_bucket(value,
                              CASE measure WHEN 'ds' THEN :ds_lo ELSE :lv_lo END,
                              CASE measure WHEN 'ds' THEN :ds_hi ELSE :lv_hi END,
                              :bins), 1), :bins) AS bucket,
  count(*) AS n
FROM vals
GROUP BY category, measure, bucket
"""

SELECTIONS_SQL = """
-- The selections of one scorer in a selection table, newest first.
SELECT
  selection_id,
  max(selected_at)     AS selected_at,
  max(params)          AS params,
  max(windows_version) AS windows_version,
  max(scores_version)  AS scores_version,
  count(*)             AS windows,
  count_if(selected)   AS selected
FROM IDENTIFIER(:selection)
WHERE scorer_id = :scorer_id
GROUP BY selection_id
ORDER BY selected_at DESC, selection_id
"""

SELECTION_SCORER_SQL = """
SELECT max(scorer_id) AS scorer_id FROM IDENTIFIER(:selection) WHERE selection_id = :selection_id
"""

LDS_HISTOGRAM_SQL = """
-- LDS histogram counts per category (each category over its own LDS range), split into kept
-- and left-out windows.   :selection, :selection_id   :bins
WITH sel AS (
  SELECT category, lds, selected
  FROM IDENTIFIER(:selection)
  WHERE selection_id = :selection_id AND lds IS NOT NULL AND NOT isnan(lds)
),
ranges AS (
  SELECT category, min(lds) AS lo, max(lds) AS hi FROM sel GROUP BY category
)
SELECT /*+ BROADCAST(r) */
  s.category,
  r.lo,
  r.hi,
  CASE WHEN r.hi > r.lo THEN least(width_bucket(s.lds, r.lo, r.hi, :bins), :bins) ELSE 1 END
    AS bucket,
  coalesce(s.selected, false) AS selected,
  count(*) AS n
FROM sel AS s
JOIN ranges AS r ON r.category <=> s.category
GROUP BY s.category, r.lo, r.hi, bucket, coalesce(s.selected, false)
"""

SAMPLE_SQL = """
-- A bounded, deterministic sample of ranked windows: about :points per category, chosen by a
-- seeded hash of window_id; never more than :limit rows.
WITH sel AS (
  SELECT window_id, category, ds, variance, selected
  FROM IDENTIFIER(:selection)
  WHERE selection_id = :selection_id AND lds IS NOT NULL
),
counts AS (SELECT category, count(*) AS n FROM sel GROUP BY category)
SELECT /*+ BROADCAST(c) */ s.category, s.ds, s.variance, s.selected
FROM sel AS s
JOIN counts AS c ON c.category <=> s.category
WHERE CAST(xxhash64(s.window_id, :seed) & 9223372036854775807 AS DOUBLE)
      < :points / c.n * 9.223372036854775807E18
LIMIT :limit
"""

EXTREMES_SQL = """
-- The :n windows with the highest and the :n with the lowest LDS of a selection.
(SELECT 'top' AS side, window_id, category, lds, ds, variance, selected, n_tokens
 FROM IDENTIFIER(:selection)
 WHERE selection_id = :selection_id AND lds IS NOT NULL AND NOT isnan(lds)
 ORDER BY lds DESC, window_id LIMIT :n)
UNION ALL
(SELECT 'bottom' AS side, window_id, category, lds, ds, variance, selected, n_tokens
 FROM IDENTIFIER(:selection)
 WHERE selection_id = :selection_id AND lds IS NOT NULL AND NOT isnan(lds)
 ORDER BY lds ASC, window_id LIMIT :n)
"""

WINDOW_HEADS_SQL = """
-- The first :tokens token ids and the provenance of a few windows.
SELECT window_id, doc_id, window_index, token_start, tokenizer,
       slice(input_ids, 1, :tokens) AS head_ids
FROM IDENTIFIER(:windows)
WHERE array_contains(:window_ids, window_id)
"""

WINDOW_IDS_SQL = """
SELECT window_id, category, n_tokens, input_ids FROM IDENTIFIER(:windows)
WHERE window_id = :window_id
"""

SCORE_ROW_SQL = """
SELECT ds, variance, seq_len, min_distance, model FROM IDENTIFIER(:scores)
WHERE scorer_id = :scorer_id AND window_id = :window_id
"""

TOP_DS_SQL = f"""
WITH base AS ({_USABLE_SCORES})
SELECT window_id FROM base WHERE usable ORDER BY ds DESC, window_id LIMIT 1
"""

SCORE_MODELS_SQL = """
SELECT DISTINCT model FROM IDENTIFIER(:scores) WHERE scorer_id = :scorer_id LIMIT 10
"""

# ---------------------------------------------------------------------------------------------
# Data (what the queries return and the renderer reads)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportInputs:
    """The tables of one report, pinned to Delta versions, as names usable in
    ``IDENTIFIER(:param)`` (``*_view``), with the chosen scorer and selection."""

    windows: str
    scores: str
    selection: str
    windows_version: int
    scores_version: int
    selection_version: int | None
    windows_view: str
    scores_view: str
    selection_view: str | None
    scorer_id: str
    scorer_info: Mapping[str, Any]
    scorers: Mapping[str, int]
    selection_id: str | None
    selection_params: Mapping[str, Any]
    selection_built_on: tuple[int | None, int | None] | None
    notes: tuple[str, ...] = ()

    @property
    def seq_len(self) -> int | None:
        value = self.scorer_info.get("seq_len")
        return int(value) if value is not None else None

    @property
    def min_distance(self) -> int | None:
        value = self.scorer_info.get("min_distance")
        return int(value) if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class CategoryScoreStats:
    """One row of ``SCORE_STATS_SQL``; ``is_total`` marks the overall row."""

    category: str | None
    is_total: bool
    windows: int
    not_finite: int
    mean_ds: float | None
    sd_ds: float | None
    min_ds: float | None
    max_ds: float | None
    mean_var: float | None
    sd_var: float | None
    min_var: float | None
    max_var: float | None
    min_log10_var: float | None
    max_log10_var: float | None

    @property
    def label(self) -> str:
        return "all categories" if self.is_total else category_label(self.category)


@dataclass(frozen=True)
class Histogram:
    """Counts of equal-width bins: ``counts[i]`` values in ``[edges[i], edges[i + 1])``."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class LdsHistogram:
    """LDS bins of one category, split into kept and left-out windows."""

    edges: tuple[float, ...]
    selected: tuple[int, ...]
    rest: tuple[int, ...]


@dataclass(frozen=True)
class SelectionCount:
    """Windows and tokens of one category of a selection (``select_summary.sql``)."""

    category: str | None
    windows: int
    usable: int
    selected: int
    usable_tokens: int
    tokens_selected: int
    cut_lds: float | None
    excluded: Mapping[str, int]


@dataclass(frozen=True)
class SamplePoint:
    category: str | None
    ds: float
    variance: float
    selected: bool


@dataclass(frozen=True)
class WindowSnippet:
    """A top or bottom window with the start of its text (or ids without a tokenizer)."""

    side: str
    rank: int
    window_id: str
    category: str | None
    lds: float
    ds: float
    variance: float
    selected: bool
    n_tokens: int | None
    doc_id: str | None
    window_index: int | None
    token_start: int | None
    head_ids: tuple[int, ...]
    text: str | None
    window_tokenizer: str | None = None


@dataclass(frozen=True)
class ProfileResult:
    """The attention-distance profile of one window."""

    window_id: str
    category: str | None
    model: str
    seq_len: int
    min_distance: int
    edges: tuple[int, ...]
    mass: tuple[float, ...]
    mass_beyond_k: float
    stored_ds: float | None
    spacing: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportData:
    """Everything the HTML renderer needs; built by ``collect_report_data``."""

    inputs: ReportInputs
    generated_at: str
    smoke_model: str | None
    stats: tuple[CategoryScoreStats, ...]
    histograms: Mapping[str, Mapping[str, Histogram]]
    counts: tuple[SelectionCount, ...] = ()
    lds: Mapping[str, LdsHistogram] = field(default_factory=dict)
    sample: tuple[SamplePoint, ...] = ()
    top: tuple[WindowSnippet, ...] = ()
    bottom: tuple[WindowSnippet, ...] = ()
    snippet_note: str = ""
    profile: ProfileResult | None = None
    profile_howto: str = ""
    bins: int = 40
    sample_points: int = 2000
    snippet_tokens: int = 300
    profile_window_id: str | None = None
    comparison: Any = None                       # compare.Comparison with a second scorer
    comparison_snippets: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def category_label(category: str | None) -> str:
    return "(no category)" if category is None else str(category)


def histogram_range(lo: float | None, hi: float | None) -> tuple[float, float]:
    """Bin range for values in [lo, hi]; a single value gets a small range around it."""
    if lo is None or hi is None:
        return (0.0, 1.0)
    if hi > lo:
        return (float(lo), float(hi))
    pad = max(abs(float(lo)) * 0.05, 1e-9)
    return (float(lo) - pad, float(lo) + pad)


def histogram_from_buckets(lo: float, hi: float, bins: int,
                           buckets: Iterable[tuple[int, int]]) -> Histogram:
    """A histogram from ``(bucket, count)`` pairs with 1-based buckets (``width_bucket``)."""
    counts = [0] * bins
    for bucket, n in buckets:
        counts[min(max(int(bucket), 1), bins) - 1] += int(n)
    width = (hi - lo) / bins
    edges = tuple(lo + i * width for i in range(bins)) + (hi,)
    return Histogram(edges, tuple(counts))


def is_smoke_test_model(path: str | None) -> bool:
    """True when ``path`` is a local model folder whose README.md says SMOKE-TEST (written by
    ``longattn_spark.smoke_model``)."""
    if not path:
        return False
    readme = Path(str(path)).expanduser() / "README.md"
    try:
        return SMOKE_MARK in readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def first_smoke_model(paths: Iterable[str | None]) -> str | None:
    return next((p for p in paths if is_smoke_test_model(p)), None)


def parse_scorer_property(properties: Mapping[str, str], scorer_id: str) -> dict[str, Any]:
    """The JSON the score job stores in the table property ``longattn.scorer.<scorer_id>``
    (empty when missing or unreadable)."""
    text = properties.get(f"longattn.scorer.{scorer_id}")
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def choose_scorer(requested: str, available: Mapping[str, int], table: str) -> str:
    """The scorer to report on: the requested one, or the only one in the table."""
    from longattn_spark.selection import chosen_scorer_id

    if not available:
        raise TableError(f"--scores {table}: the table holds no scores; run "
                         "`longattn-spark score` first")
    return chosen_scorer_id(requested, available, table)


def selection_counts_from_summary(rows: Iterable[Mapping[str, Any]]
                                  ) -> tuple[SelectionCount, ...]:
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
    ordered = sorted(acc.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
    return tuple(SelectionCount(category=c, **a) for c, a in ordered)


def paper_comparison_note(total: CategoryScoreStats | None, seq_len: int | None) -> str:
    """One paragraph comparing the overall DS and variance with the paper's Table 10."""
    paper = (f"Paper, Appendix E Table 10 (LLaMA-3.1-70B, L = {PAPER_SEQ_LEN:,}): DS between "
             f"{PAPER_DS_RANGE[0]:g} and {PAPER_DS_RANGE[1]:g} (mean about {PAPER_DS_MEAN:g}), "
             f"variance between {PAPER_VARIANCE_RANGE[0]:.0e} and "
             f"{PAPER_VARIANCE_RANGE[1]:.0e}.")
    if total is None or total.mean_ds is None:
        return paper + " This table has no finite scores to compare."
    length = f"L = {seq_len:,}" if seq_len else "L unknown"
    here = (f" Here ({length}): DS between {total.min_ds:.3g} and {total.max_ds:.3g} (mean "
            f"{total.mean_ds:.3g}), variance between {total.min_var:.2e} and "
            f"{total.max_var:.2e}.")
    ds_inside = PAPER_DS_RANGE[0] <= total.min_ds and total.max_ds <= PAPER_DS_RANGE[1]
    var_inside = (PAPER_VARIANCE_RANGE[0] <= total.min_var
                  and total.max_var <= PAPER_VARIANCE_RANGE[1])
    verdict = (f" DS is {'inside' if ds_inside else 'outside'} the paper's range and the "
               f"variance {'inside' if var_inside else 'outside'} it.")
    caveat = ""
    if seq_len and seq_len != PAPER_SEQ_LEN:
        caveat = (" The variance is not comparable across sequence lengths: it is the variance "
                  "of an L×L matrix divided by L² − 1, so its scale changes strongly with L. DS "
                  "depends on the model and on k = L/4 as well.")
    return paper + here + verdict + caveat


def select_config_of(params: Mapping[str, Any], **changes: Any):
    """A ``SelectConfig`` with a stored selection's parameters (its ``params`` JSON), then
    ``changes`` (e.g. ``alpha=1.0``): to recompute or vary a selection."""
    import dataclasses

    from longattn_spark.config import SelectConfig

    mix = params.get("mix") or {}
    values = {
        "method": params.get("method") or "lds",
        "normalize": params.get("normalize") or "zscore",
        "alpha": float(params.get("alpha", 0.5)),
        "keep_fraction": float(params.get("keep_fraction") or 0.0),
        "token_budget": int(params.get("token_budget") or 0),
        "mix": ",".join(f"{k}={v}" for k, v in sorted(mix.items())),
        "min_lds": float("nan") if params.get("min_lds") is None else float(params["min_lds"]),
        "seed": int(params.get("seed") or 0),
        "exact": bool(params.get("exact", False)),
        "accuracy": int(params.get("accuracy") or 10000),
    }
    return dataclasses.replace(SelectConfig(**values), **changes)


def profile_howto_command(inputs: ReportInputs, cfg: ReportConfig, window_id: str | None
                          ) -> str:
    """The exact command that adds the attention-distance profile to this report."""
    model = inputs.scorer_info.get("model") or inputs.scorer_info.get("model_path") \
        or "/path/to/model-folder"
    parts = ["longattn-spark", "report", "--windows", inputs.windows, "--scores",
             inputs.scores, "--selection", inputs.selection, "--output", cfg.output,
             "--scorer-id", inputs.scorer_id, "--model", str(model)]
    if window_id:
        parts += ["--profile-window-id", window_id]
    if cfg.tokenizer:
        parts += ["--tokenizer", cfg.tokenizer]
    return " ".join(shlex.quote(p) for p in parts)


# ---------------------------------------------------------------------------------------------
# Spark part: small queries returning the dataclasses above
# ---------------------------------------------------------------------------------------------


def _table_ref(text: str, option: str):
    from longattn_spark.tables import TableRef

    try:
        return TableRef(text)
    except TableError as exc:
        raise TableError(f"{option}: {exc}") from None


def _existing(spark, ref, option: str, spec):
    """``ref``, checked to exist with the schema of a ``spec.kind`` table."""
    from longattn_spark.tables import check_schema

    if not ref.exists(spark):
        raise TableError(f"{option} {ref}: no such Delta table")
    try:
        check_schema(spark, ref, spec)
    except TableError as exc:
        raise TableError(f"{option}: {exc}") from None
    return ref


def scorer_counts(spark, scores_view: str) -> dict[str, int]:
    """Windows per scorer_id in a scores table."""
    from longattn_spark.selection import load_sql

    rows = spark.sql(load_sql("select_scorer_ids"), args={"scores": scores_view}).collect()
    return {r["scorer_id"]: int(r["windows"]) for r in rows}


def resolve_report_inputs(spark, cfg: ReportConfig) -> ReportInputs:
    """Pin the tables to their current versions and choose the scorer and the selection.

    The scorer is ``--scorer-id``, else the scorer of ``--selection-id``, else the only one in
    the scores table. The selection is ``--selection-id`` or the scorer's latest; a missing
    selection table or a scorer without a selection is a note, not an error.
    """
    from longattn_spark.tables import SCORES, SELECTION, WINDOWS, table_properties

    windows = _existing(spark, _table_ref(cfg.windows, "--windows"), "--windows", WINDOWS)
    scores = _existing(spark, _table_ref(cfg.scores, "--scores"), "--scores", SCORES)
    selection = _table_ref(cfg.selection, "--selection")
    windows_version, scores_version = windows.version(spark), scores.version(spark)
    windows_view = windows.sql_name(spark, windows_version)
    scores_view = scores.sql_name(spark, scores_version)
    has_selection = selection.exists(spark)
    if has_selection:
        _existing(spark, selection, "--selection", SELECTION)
    if cfg.selection_id and not has_selection:
        raise TableError(f"--selection {selection}: no such Delta table (asked for "
                         f"--selection-id {cfg.selection_id})")
    selection_version = selection.version(spark) if has_selection else None
    selection_view = selection.sql_name(spark, selection_version) if has_selection else None
    requested = cfg.scorer_id
    if not requested and cfg.selection_id and selection_view:
        row = spark.sql(SELECTION_SCORER_SQL, args={"selection": selection_view,
                                                    "selection_id": cfg.selection_id}).first()
        requested = (row["scorer_id"] if row else None) or ""
    scorers = scorer_counts(spark, scores_view)
    scorer_id = choose_scorer(requested, scorers, str(scores))
    info = parse_scorer_property(table_properties(spark, scores), scorer_id)
    notes: list[str] = []
    selection_id, params, built_on = None, {}, None
    if selection_view is None:
        notes.append(f"No selection table at {selection}: run `longattn-spark select` to see "
                     "the LDS and the cut.")
    else:
        chosen = _chosen_selection(spark, selection_view, scorer_id, cfg.selection_id,
                                   str(selection))
        if chosen is None:
            notes.append(f"The selection table {selection} holds no selection of scorer "
                         f"{scorer_id}: run `longattn-spark select --scorer-id {scorer_id}`.")
        else:
            selection_id = chosen["selection_id"]
            params = _json_object(chosen["params"])
            built_on = (chosen["windows_version"], chosen["scores_version"])
            notes += _version_notes(built_on, windows_version, scores_version)
    return ReportInputs(
        windows=str(windows), scores=str(scores), selection=str(selection),
        windows_version=windows_version, scores_version=scores_version,
        selection_version=selection_version, windows_view=windows_view,
        scores_view=scores_view, selection_view=selection_view, scorer_id=scorer_id,
        scorer_info=info, scorers=scorers, selection_id=selection_id,
        selection_params=params, selection_built_on=built_on, notes=tuple(notes))


def _chosen_selection(spark, selection_view: str, scorer_id: str, requested: str,
                      table: str) -> Mapping[str, Any] | None:
    rows = [r.asDict() for r in spark.sql(SELECTIONS_SQL, args={
        "selection": selection_view, "scorer_id": scorer_id}).collect()]
    if not requested:
        return rows[0] if rows else None
    match = next((r for r in rows if r["selection_id"] == requested), None)
    if match is None:
        listing = ", ".join(f"{r['selection_id']} ({r['selected_at']})" for r in rows) \
            or "(none)"
        raise ConfigError(f"--selection-id {requested!r} is not a selection of scorer "
                          f"{scorer_id} in {table}; its selections there: {listing}")
    return match


def _version_notes(built_on: tuple[int | None, int | None], windows_version: int,
                   scores_version: int) -> list[str]:
    notes = []
    if built_on[0] is not None and built_on[0] != windows_version:
        notes.append(f"The selection was built on windows version {built_on[0]}; the table is "
                     f"now at version {windows_version}.")
    if built_on[1] is not None and built_on[1] != scores_version:
        notes.append(f"The selection was built on scores version {built_on[1]}; the table is "
                     f"now at version {scores_version}.")
    return notes


def _json_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def score_models(spark, scores_view: str, scorer_id: str) -> list[str]:
    """The ``model`` column values of one scorer's rows (a handful)."""
    rows = spark.sql(SCORE_MODELS_SQL, args={"scores": scores_view,
                                             "scorer_id": scorer_id}).collect()
    return [r["model"] for r in rows if r["model"]]


def smoke_model_of(spark, inputs: ReportInputs) -> str | None:
    """The smoke-test model folder the scores came from, if they did."""
    candidates = [inputs.scorer_info.get("model"), inputs.scorer_info.get("model_path")]
    found = first_smoke_model(candidates)
    if found is None and not inputs.scorer_info:
        found = first_smoke_model(score_models(spark, inputs.scores_view, inputs.scorer_id))
    return found


def score_stats(spark, scores_view: str, scorer_id: str) -> tuple[CategoryScoreStats, ...]:
    """Per-category count, mean, std, min and max of DS and variance (one grouped aggregate),
    the overall row last."""
    rows = spark.sql(SCORE_STATS_SQL, args={"scores": scores_view,
                                            "scorer_id": scorer_id}).collect()
    return tuple(CategoryScoreStats(**r.asDict()) for r in rows)


def score_histograms(spark, scores_view: str, scorer_id: str,
                     stats: Sequence[CategoryScoreStats], bins: int = 40
                     ) -> dict[str | None, dict[str, Histogram]]:
    """DS and log10(variance) histograms per category, with common bins across categories;
    the bins are counted in Spark (only ``categories × bins`` counts reach the driver)."""
    total = next((s for s in stats if s.is_total), None)
    if total is None or total.mean_ds is None:
        return {}
    ds_lo, ds_hi = histogram_range(total.min_ds, total.max_ds)
    lv_lo, lv_hi = histogram_range(total.min_log10_var, total.max_log10_var)
    rows = spark.sql(SCORE_HISTOGRAM_SQL, args={
        "scores": scores_view, "scorer_id": scorer_id, "bins": int(bins), "ds_lo": ds_lo,
        "ds_hi": ds_hi, "lv_lo": lv_lo, "lv_hi": lv_hi}).collect()
    ranges = {DS: (ds_lo, ds_hi), LOG10_VARIANCE: (lv_lo, lv_hi)}
    grouped: dict[tuple[str | None, str], list[tuple[int, int]]] = {}
    for r in rows:
        grouped.setdefault((r["category"], r["measure"]), []).append((r["bucket"], r["n"]))
    out: dict[str | None, dict[str, Histogram]] = {}
    for s in stats:
        if s.is_total:
            continue
        out[s.category] = {m: histogram_from_buckets(*ranges[m], bins,
                                                     grouped.get((s.category, m), []))
                           for m in (DS, LOG10_VARIANCE)}
    return out


def selection_counts(spark, selection_view: str, selection_id: str
                     ) -> tuple[SelectionCount, ...]:
    """Windows and tokens kept per category (the selection job's own summary query)."""
    from longattn_spark.selection import load_sql

    rows = spark.sql(load_sql("select_summary"), args={
        "selection": selection_view, "selection_id": selection_id}).collect()
    return selection_counts_from_summary(r.asDict() for r in rows)


def lds_histograms(spark, selection_view: str, selection_id: str, bins: int = 40
                   ) -> dict[str | None, LdsHistogram]:
    """Per-category LDS histograms (bins counted in Spark), kept and left-out windows apart."""
    rows = spark.sql(LDS_HISTOGRAM_SQL, args={"selection": selection_view,
                                              "selection_id": selection_id,
                                              "bins": int(bins)}).collect()
    grouped: dict[str | None, dict[str, Any]] = {}
    for r in rows:
        g = grouped.setdefault(r["category"], {"lo": r["lo"], "hi": r["hi"], "selected": [],
                                               "rest": []})
        g["selected" if r["selected"] else "rest"].append((r["bucket"], r["n"]))
    out = {}
    for category, g in sorted(grouped.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        lo, hi = histogram_range(g["lo"], g["hi"])
        kept = histogram_from_buckets(lo, hi, bins, g["selected"])
        rest = histogram_from_buckets(lo, hi, bins, g["rest"])
        out[category] = LdsHistogram(kept.edges, kept.counts, rest.counts)
    return out


def scatter_sample(spark, selection_view: str, selection_id: str, points: int = 2000,
                   categories: int = 1) -> tuple[SamplePoint, ...]:
    """About ``points`` ranked windows per category (a seeded hash sample), at most
    ``1.2 · points · categories + 100`` rows in all."""
    limit = int(1.2 * points * max(categories, 1)) + 100
    rows = spark.sql(SAMPLE_SQL, args={
        "selection": selection_view, "selection_id": selection_id, "seed": SAMPLE_SEED,
        "points": float(points), "limit": limit}).collect()
    return tuple(SamplePoint(r["category"], float(r["ds"]), float(r["variance"]),
                             bool(r["selected"])) for r in rows)


def extreme_windows(spark, inputs: ReportInputs, n: int, snippet_tokens: int,
                    tokenizer=None) -> tuple[tuple[WindowSnippet, ...], tuple[WindowSnippet, ...]]:
    """The ``n`` top and ``n`` bottom windows by LDS with their first ``snippet_tokens``
    tokens, decoded when a tokenizer is given. The windows table is read for those ids only."""
    if n <= 0 or inputs.selection_view is None or inputs.selection_id is None:
        return (), ()
    ranked = [r.asDict() for r in spark.sql(EXTREMES_SQL, args={
        "selection": inputs.selection_view, "selection_id": inputs.selection_id,
        "n": int(n)}).collect()]
    heads = window_heads(spark, inputs.windows_view, [r["window_id"] for r in ranked],
                         snippet_tokens)
    snippets: dict[str, list[WindowSnippet]] = {"top": [], "bottom": []}
    for r in ranked:
        head = heads.get(r["window_id"], {})
        ids = tuple(int(i) for i in head.get("head_ids") or ())
        text = tokenizer.decode(list(ids), skip_special_tokens=False) \
            if tokenizer is not None and ids else None
        side = snippets[r["side"]]
        side.append(WindowSnippet(
            side=r["side"], rank=len(side) + 1, window_id=r["window_id"],
            category=r["category"], lds=float(r["lds"]), ds=float(r["ds"]),
            variance=float(r["variance"]), selected=bool(r["selected"]),
            n_tokens=r["n_tokens"], doc_id=head.get("doc_id"),
            window_index=head.get("window_index"), token_start=head.get("token_start"),
            head_ids=ids, text=text, window_tokenizer=head.get("tokenizer")))
    return tuple(snippets["top"]), tuple(snippets["bottom"])


def window_heads(spark, windows_view: str, window_ids: Sequence[str], tokens: int
                 ) -> dict[str, dict[str, Any]]:
    """Provenance and the first ``tokens`` ids of the given windows, keyed by window_id."""
    if not window_ids:
        return {}
    rows = spark.sql(WINDOW_HEADS_SQL, args={"windows": windows_view,
                                             "window_ids": list(window_ids),
                                             "tokens": max(int(tokens), 0)}).collect()
    return {r["window_id"]: r.asDict() for r in rows}


def load_snippet_tokenizer(cfg: ReportConfig, spark=None):
    """(tokenizer or None, its identity, where it came from): ``--tokenizer``, else the
    tokenizer.json in the ``--model`` folder, else none (snippets show ids). Both may be on
    any filesystem Spark reads."""
    from longattn_spark.tokenize import get_tokenizer, load_tokenizer_spec, tokenizer_identity

    if cfg.tokenizer:
        spec = load_tokenizer_spec(cfg.tokenizer, spark)
        return get_tokenizer(spec), spec.identity, f"--tokenizer {cfg.tokenizer}"
    if cfg.model and tokenizer_identity(spark, cfg.model) is not None:
        spec = load_tokenizer_spec(cfg.model, spark, option="--model")
        return get_tokenizer(spec), spec.identity, \
            f"the tokenizer.json in --model {cfg.model}"
    return None, None, None


def snippet_note(identity: str | None, source: str | None, window_tokenizers: Iterable[str]
                 ) -> str:
    """What the snippets show, and a warning when the tokenizer is not the ingest one."""
    if identity is None:
        return ("No tokenizer given: the snippets show token ids. Pass --tokenizer FOLDER (a "
                "folder with tokenizer.json) to see text.")
    used = sorted({t for t in window_tokenizers if t})
    if used and identity not in used:
        return (f"Decoded with {source} ({identity}), but the windows were tokenized with "
                f"{', '.join(used)}: the text may be wrong.")
    return f"Decoded with {source} ({identity})."


def default_profile_window(spark, inputs: ReportInputs,
                           top: Sequence[WindowSnippet]) -> str | None:
    """The top-LDS window, else (no selection) the window with the highest DS."""
    if top:
        return top[0].window_id
    row = spark.sql(TOP_DS_SQL, args={"scores": inputs.scores_view,
                                      "scorer_id": inputs.scorer_id}).first()
    return row["window_id"] if row else None


def window_profile(spark, inputs: ReportInputs, cfg: ReportConfig, window_id: str
                   ) -> ProfileResult:
    """Layer-0 attention-distance profile of one window with the ``--model`` checkpoint,
    at the scorer's L and with k among the bucket edges (so mass at distance >= k is the DS)."""
    import torch

    from longattn_spark.scoring import Layer0Scorer, build_model_input
    from longattn_spark.scoring.profile import attention_distance_profile, mass_from
    from longattn_spark.scoring.scorer import resolve_device

    window = spark.sql(WINDOW_IDS_SQL, args={"windows": inputs.windows_view,
                                             "window_id": window_id}).first()
    if window is None:
        raise ConfigError(f"--profile-window-id {window_id!r}: no such window in --windows "
                          f"{inputs.windows}")
    score = spark.sql(SCORE_ROW_SQL, args={"scores": inputs.scores_view,
                                           "scorer_id": inputs.scorer_id,
                                           "window_id": window_id}).first()
    seq_len = int((score and score["seq_len"]) or inputs.seq_len
                  or (window["n_tokens"] or 0) + 1)
    min_distance = int((score and score["min_distance"]) or inputs.min_distance
                       or seq_len // 4)
    rope_theta = inputs.scorer_info.get("rope_theta_override")
    try:
        scorer = Layer0Scorer.from_pretrained(cfg.model, device=resolve_device(cfg.device),
                                              dtype="float32", rope_theta=rope_theta,
                                              kernel="torch")
        bos_id = scorer.bos_id
    except InputError as exc:
        raise InputError(f"--model {cfg.model}: {exc}") from None
    try:
        ids = build_model_input(list(window["input_ids"] or []), bos_id, seq_len)
    except InputError as exc:
        raise InputError(f"--profile-window-id {window_id}: {exc}") from None
    if int(ids.max()) >= scorer.vocab_size:
        raise InputError(f"--model {cfg.model}: window {window_id} has token ids outside its "
                         f"vocabulary of {scorer.vocab_size}")
    with torch.inference_mode():
        q, k = scorer.rotated_query_key(ids.to(scorer.device))
        profile = attention_distance_profile(q, k, cfg.profile_buckets,
                                             spacing=cfg.profile_spacing,
                                             extra_edges=(min_distance,))
    notes = []
    fingerprint = inputs.scorer_info.get("model_fingerprint")
    if fingerprint and fingerprint != scorer.checkpoint.fingerprint():
        notes.append(f"--model {cfg.model} is not the model that produced these scores "
                     f"({inputs.scorer_info.get('model')}): the profile and the stored DS "
                     "differ.")
    if is_smoke_test_model(cfg.model):
        notes.append(f"--model {cfg.model} is a SMOKE-TEST model with random weights: this "
                     "profile means nothing.")
    return ProfileResult(
        window_id=window_id, category=window["category"], model=cfg.model, seq_len=seq_len,
        min_distance=min_distance, edges=tuple(int(e) for e in profile.edges),
        mass=tuple(float(m) for m in profile.mass),
        mass_beyond_k=mass_from(profile, min_distance),
        stored_ds=float(score["ds"]) if score and score["ds"] is not None else None,
        spacing=cfg.profile_spacing, notes=tuple(notes))


def collect_report_data(spark, cfg: ReportConfig,
                        progress: Callable[[str], None] | None = None) -> ReportData:
    """Run the report's queries (and the profile with ``--model``)."""
    say = progress or (lambda _: None)
    say("resolving tables, scorer and selection")
    inputs = resolve_report_inputs(spark, cfg)
    tokenizer, identity, source = load_snippet_tokenizer(cfg, spark)
    say("score statistics and histograms")
    stats = score_stats(spark, inputs.scores_view, inputs.scorer_id)
    histograms = score_histograms(spark, inputs.scores_view, inputs.scorer_id, stats, cfg.bins)
    counts, lds, sample = (), {}, ()
    if inputs.selection_view and inputs.selection_id:
        say("selection: LDS histograms, counts, sample")
        counts = selection_counts(spark, inputs.selection_view, inputs.selection_id)
        lds = lds_histograms(spark, inputs.selection_view, inputs.selection_id, cfg.bins)
        sample = scatter_sample(spark, inputs.selection_view, inputs.selection_id,
                                cfg.sample_points, len(counts))
    say("top and bottom windows")
    top, bottom = extreme_windows(spark, inputs, cfg.top_windows, cfg.snippet_tokens, tokenizer)
    note = snippet_note(identity, source, (w.window_tokenizer for w in top + bottom))
    window_id = cfg.profile_window_id or default_profile_window(spark, inputs, top)
    profile, howto = None, ""
    if cfg.model and window_id:
        say(f"attention-distance profile of window {window_id}")
        profile = window_profile(spark, inputs, cfg, window_id)
    elif not cfg.model:
        howto = profile_howto_command(inputs, cfg, cfg.profile_window_id or None)
    comparison, comparison_snippets = None, {}
    if len(inputs.scorers) >= 2:
        say("comparison with a second scorer")
        comparison, comparison_snippets = compare_with_other_scorer(
            spark, inputs, cfg, tokenizer)
    return ReportData(
        inputs=inputs, generated_at=_dt.datetime.now().astimezone().strftime(
            "%Y-%m-%d %H:%M:%S %Z"),
        smoke_model=smoke_model_of(spark, inputs), stats=stats, histograms=histograms,
        counts=counts, lds=lds, sample=sample, top=top, bottom=bottom, snippet_note=note,
        profile=profile, profile_howto=howto, bins=cfg.bins, sample_points=cfg.sample_points,
        snippet_tokens=cfg.snippet_tokens, profile_window_id=window_id,
        comparison=comparison, comparison_snippets=comparison_snippets)


def compare_with_other_scorer(spark, inputs: ReportInputs, cfg: ReportConfig, tokenizer
                              ) -> tuple[Any, dict[str, str]]:
    """The report's scorer against the table's next scorer (``longattn_spark.compare``): the
    kept sets are the report's selection and the other scorer's latest one, when both exist;
    the windows ranked furthest apart get text snippets."""
    from longattn_spark.compare import compare_scorers

    other = sorted(s for s in inputs.scorers if s != inputs.scorer_id)[0]
    selections = None
    if inputs.selection_view and inputs.selection_id:
        chosen = _chosen_selection(spark, inputs.selection_view, other, "", inputs.selection)
        if chosen is not None:
            selections = (inputs.selection_id, chosen["selection_id"])
    comparison = compare_scorers(spark, inputs.scores_view, inputs.scorer_id, other,
                                 selection=inputs.selection_view if selections else None,
                                 selections=selections, disagreements=cfg.top_windows,
                                 scatter_points=cfg.sample_points)
    heads = window_heads(spark, inputs.windows_view,
                         [d.window_id for d in comparison.disagreements], cfg.snippet_tokens)
    snippets = {}
    for window_id, head in heads.items():
        ids = list(head["head_ids"] or [])
        snippets[window_id] = (tokenizer.decode(ids) if tokenizer is not None
                               else "ids: " + " ".join(map(str, ids)))
    return comparison, snippets


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on the Agg canvas: no pyplot state, no display needed)
# ---------------------------------------------------------------------------------------------

KEPT_COLOR = "#2e7d32"
REST_COLOR = "#b0b7c3"
PAPER_COLOR = "#f59e0b"
CUT_COLOR = "#c62828"


def new_figure(width: float, height: float):
    """A matplotlib Figure drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    """PNG bytes of a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _bars(ax, edges: Sequence[float], counts: Sequence[int], bottom=None, **style) -> None:
    widths = [b - a for a, b in pairwise(edges)]
    ax.bar(edges[:-1], counts, width=widths, align="edge", bottom=bottom, linewidth=0, **style)


def plot_score_distributions(stats: Sequence[CategoryScoreStats],
                             histograms: Mapping[str | None, Mapping[str, Histogram]]):
    """DS and log10(variance) histograms, one row per category, bins shared by a column."""
    categories = [s for s in stats if not s.is_total and s.category in histograms]
    fig = new_figure(11, 0.8 + 1.9 * max(len(categories), 1))
    if not categories:
        fig.text(0.5, 0.5, "no finite scores", ha="center")
        return fig
    axes = fig.subplots(len(categories), 2, squeeze=False, sharex="col")
    for row, s in enumerate(categories):
        for col, measure in enumerate((DS, LOG10_VARIANCE)):
            ax = axes[row][col]
            h = histograms[s.category][measure]
            _bars(ax, h.edges, h.counts, color="#3b6ea8")
            ax.set_title(f"{category_label(s.category)} — {h.total:,} windows", fontsize=10,
                         loc="left")
            ax.set_ylabel("windows")
    axes[-1][0].set_xlabel("DS (share of layer-0 attention at distance ≥ k)")
    axes[-1][1].set_xlabel("log10(variance)")
    return fig


def plot_paper_comparison(stats: Sequence[CategoryScoreStats]):
    """Per category, the min–max range and mean of DS and variance next to the paper's
    Table 10 range and mean for that category (arxiv, book, code) or for all categories."""
    rows = [s for s in stats if s.mean_ds is not None]
    fig = new_figure(11, 1.0 + 0.55 * max(len(rows), 2))
    if not rows:
        fig.text(0.5, 0.5, "no finite scores", ha="center")
        return fig
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, unit in zip(axes, ("ds", "variance")):
        for y, s in enumerate(rows):
            paper = PAPER_TABLE10.get(str(s.category).lower()) if not s.is_total else None
            band = paper[unit] if paper else (
                (*PAPER_DS_RANGE, PAPER_DS_MEAN) if unit == "ds"
                else (*PAPER_VARIANCE_RANGE, None))
            lo, hi, mean = ((s.min_ds, s.max_ds, s.mean_ds) if unit == "ds"
                            else (s.min_var, s.max_var, s.mean_var))
            ax.hlines(y - 0.17, lo, hi, color="#3b6ea8", linewidth=7,
                      label="this table: min–max, ● mean" if y == 0 else None)
            ax.plot([mean], [y - 0.17], "o", color="#173a63", markersize=5)
            ax.hlines(y + 0.17, band[0], band[1], color=PAPER_COLOR, linewidth=7,
                      label="paper Table 10 (category, else all)" if y == 0 else None)
            if band[2] is not None:
                ax.plot([band[2]], [y + 0.17], "o", color="#7c4a03", markersize=5)
        ax.set_yticks(range(len(rows)), [s.label for s in rows])
        ax.invert_yaxis()
        ax.set_ylim(len(rows) - 0.4, -0.9)
        if unit == "variance":
            ax.set_xscale("log")
        ax.set_xlabel("DS" if unit == "ds" else "variance (log scale)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right", ncol=2)
    return fig


def category_panels(categories: Sequence[str | None], *, max_columns: int, row_height: float):
    """A figure with one panel per category (at most ``max_columns`` a row) and the
    ``(category, axes)`` pairs; with no category, a figure that says so and no panel."""
    columns = min(max_columns, max(len(categories), 1))
    rows = max(1, math.ceil(len(categories) / columns))
    fig = new_figure(11, 0.6 + row_height * rows)
    if not categories:
        fig.text(0.5, 0.5, "no ranked windows", ha="center")
        return fig, []
    axes = [ax for row in fig.subplots(rows, columns, squeeze=False) for ax in row]
    for unused in axes[len(categories):]:
        unused.set_visible(False)
    return fig, list(zip(categories, axes, strict=False))


def plot_lds_histograms(lds: Mapping[str | None, LdsHistogram],
                        counts: Sequence[SelectionCount] = (), method: str = "lds"):
    """LDS histogram per category, kept windows stacked on the left-out ones, with the cut
    (the lowest LDS kept) as a vertical line for an LDS selection."""
    by_category = {c.category: c for c in counts}
    fig, panels = category_panels(list(lds), max_columns=3, row_height=2.8)
    for category, ax in panels:
        h = lds[category]
        _bars(ax, h.edges, h.rest, color=REST_COLOR, label="left out")
        _bars(ax, h.edges, h.selected, bottom=list(h.rest), color=KEPT_COLOR, label="kept")
        count = by_category.get(category)
        if count is not None and count.cut_lds is not None and method == "lds":
            ax.axvline(count.cut_lds, color=CUT_COLOR, linewidth=1.8,
                       label=f"cut: LDS ≥ {count.cut_lds:.3g}")
        kept = f" — kept {count.selected:,} of {count.usable:,}" if count else ""
        ax.set_title(f"{category_label(category)}{kept}", fontsize=10, loc="left")
        ax.set_xlabel("LDS")
        ax.set_ylabel("windows")
        ax.legend(fontsize=8)
    return fig


def plot_selected_per_category(counts: Sequence[SelectionCount]):
    """Windows and tokens kept per category, as bars over the category's usable total."""
    fig = new_figure(11, 0.9 + 0.45 * max(len(counts), 2))
    axes = fig.subplots(1, 2, squeeze=False)[0]
    labels = [category_label(c.category) for c in counts]
    panels = (("windows", [c.usable for c in counts], [c.selected for c in counts]),
              ("tokens", [c.usable_tokens for c in counts], [c.tokens_selected for c in counts]))
    for ax, (unit, totals, kept) in zip(axes, panels):
        positions = list(range(len(counts)))
        ax.barh(positions, totals, color=REST_COLOR, label="usable")
        ax.barh(positions, kept, color=KEPT_COLOR, label="kept")
        for y, (total, k) in enumerate(zip(totals, kept)):
            share = f"{k / total:.0%}" if total else "-"
            ax.text(total, y, f" {k:,} ({share})", va="center", fontsize=8)
        ax.set_yticks(positions, labels)
        ax.invert_yaxis()
        ax.set_xlabel(f"{unit} kept of usable")
        ax.margins(x=0.25)
        ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_ds_variance_scatter(sample: Sequence[SamplePoint]):
    """DS against variance (log scale) of the sampled windows, one panel per category, kept
    windows in green: the LDS cut is a boundary in this plane."""
    from matplotlib.ticker import MaxNLocator

    categories = sorted({p.category for p in sample}, key=lambda c: (c is None, c or ""))
    fig, panels = category_panels(categories, max_columns=4, row_height=2.9)
    for category, ax in panels:
        points = [p for p in sample if p.category == category]
        for kept, color, label in ((False, REST_COLOR, "left out"), (True, KEPT_COLOR, "kept")):
            chosen = [p for p in points if p.selected == kept and p.variance > 0]
            ax.scatter([p.ds for p in chosen], [p.variance for p in chosen], s=9, alpha=0.7,
                       color=color, label=label, linewidths=0)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_title(f"{category_label(category)} ({len(points):,} sampled)", fontsize=10,
                     loc="left")
        ax.set_xlabel("DS")
        ax.set_ylabel("variance")
        ax.legend(fontsize=8)
    return fig


def plot_distance_profile(profile: ProfileResult):
    """Attention mass per distance bucket, with the k = L/4 line."""
    fig = new_figure(11, 3.8)
    ax = fig.subplots()
    log = profile.spacing == "log"
    starts = [max(e, 0.5) if log else e for e in profile.edges[:-1]]
    widths = [b - a for a, b in zip(starts, profile.edges[1:])]
    colors = [KEPT_COLOR if e >= profile.min_distance else "#3b6ea8"
              for e in profile.edges[:-1]]
    ax.bar(starts, profile.mass, width=widths, align="edge", color=colors, linewidth=0.3,
           edgecolor="white")
    ax.axvline(profile.min_distance, color=CUT_COLOR, linewidth=1.8,
               label=f"k = L/4 = {profile.min_distance:,}")
    if log:
        ax.set_xscale("log")
        ax.set_xlabel("distance n − j in tokens (log scale; distance 0 drawn at 0.5–1)")
    else:
        ax.set_xlabel("distance n − j in tokens")
    ax.set_ylabel("share of attention mass per bucket")
    beyond = [sum(profile.mass[i:]) for i in range(len(profile.mass))]
    twin = ax.twinx()
    twin.step([*starts, profile.edges[-1]], [*beyond, 0.0], where="post", color="#111827",
              linewidth=1.2,
              label="mass at distance ≥ bucket start")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("mass at distance ≥ d")
    handles = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    stored = f"; stored DS {profile.stored_ds:.4f}" if profile.stored_ds is not None else ""
    ax.set_title(f"window {profile.window_id} — mass at distance ≥ k: "
                 f"{profile.mass_beyond_k:.4f}{stored}", fontsize=10, loc="left")
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=9, loc="upper left")
    return fig


# ---------------------------------------------------------------------------------------------
# HTML (pure: ReportData -> text)
# ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;
background:#eef0f3;color:#1d232b;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:20px 36px 60px;background:#fff}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;border-bottom:2px solid #e3e6ea;
padding-bottom:4px;margin-top:36px}h3{font-size:16px;margin:22px 0 6px}
.sub{color:#5b6572;font-size:13px;margin:0 0 12px}
.banner{background:#b00020;color:#fff;padding:14px 18px;font-weight:600;border-radius:6px;
font-size:16px;margin:12px 0}.banner code{background:rgba(255,255,255,.18);color:#fff}
.note{color:#3e4854;font-size:14px;max-width:1080px}.warn{color:#8a4b00}
table{border-collapse:collapse;font-size:13px;margin:8px 0 14px}
th,td{border:1px solid #d9dde2;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.l,th.l{text-align:left}tr.total td{font-weight:600;
background:#fafbfc}
table.kv td:first-child{text-align:left;color:#5b6572;white-space:nowrap}
table.kv td:last-child{text-align:left;word-break:break-all}
img{max-width:100%;height:auto;display:block;margin:8px 0 4px;border:1px solid #eceef1}
code{background:#f0f2f5;padding:1px 4px;border-radius:3px;font-size:12.5px}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f7f9;border:1px solid #e1e4e8;
padding:8px 10px;font-size:12px;margin:4px 0 0}
pre.snippet{max-height:170px;overflow:auto}
.win{border:1px solid #e1e4e8;border-radius:6px;padding:8px 12px;margin:10px 0}
.win .meta{font-size:13px}.kept{color:#2e7d32;font-weight:600}.out{color:#6b7280}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, kind: str = "g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "e":
        return f"{value:.3e}"
    if kind == "f":
        return f"{value:.4f}"
    return f"{value:.4g}"


def _cell(value: Any, stat: str, kind: str = "g") -> str:
    """A table cell carrying its full-precision value in ``data-value`` (for tools and tests)."""
    raw = "" if value is None else repr(value)
    shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) \
        else _num(value, kind)
    return f'<td data-stat="{_e(stat)}" data-value="{_e(raw)}">{_e(shown)}</td>'


def _img(fig, alt: str) -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def smoke_banner(model: str) -> str:
    return (f'<div class="banner" id="smoke-test-banner">SMOKE-TEST MODEL: these scores come '
            f'from {_e(model)}, a model with random weights. They mean nothing; this report '
            'only shows that the pipeline runs. Score with a real model (e.g. Llama-3.1-8B, '
            '<code>longattn-spark score --model PATH</code>) for meaningful numbers.</div>')


def render_inputs(data: ReportData) -> str:
    i = data.inputs
    info = i.scorer_info
    scorer = f"<code>{_e(i.scorer_id)}</code>"
    if len(i.scorers) > 1:
        others = ", ".join(f"<code>{_e(s)}</code>" for s in sorted(i.scorers) if s != i.scorer_id)
        scorer += f" (the table also holds {others})"
    rows = [
        ("windows table", f"<code>{_e(i.windows)}</code> version {i.windows_version}"),
        ("scores table", f"<code>{_e(i.scores)}</code> version {i.scores_version}"),
        ("selection table", f"<code>{_e(i.selection)}</code> " + (
            f"version {i.selection_version}" if i.selection_version is not None
            else "(missing)")),
        ("scorer_id", scorer),
        ("model", _e(info.get("model") or info.get("model_path") or "unknown (no "
                     "longattn.scorer property)")),
        ("L (seq_len) / k (min_distance)", (f"{_e(info.get('seq_len', '?'))} / "
                                            f"{_e(info.get('min_distance', '?'))}")),
        ("dtype / heads", (f"{_e(info.get('dtype', '?'))} / "
                           f"{_e(info.get('n_query_heads', '?'))} query, "
                           f"{_e(info.get('n_kv_heads', '?'))} key-value")),
    ]
    if i.selection_id:
        p = i.selection_params
        cut = (f"keep-fraction {p.get('keep_fraction')}" if p.get("keep_fraction") else
               f"token-budget {p.get('token_budget')}" if p.get("token_budget") else "")
        if p.get("min_lds") is not None:
            cut += f" min-lds {p.get('min_lds')}"
        rows += [
            ("selection_id", (f"<code>{_e(i.selection_id)}</code> (built on windows v"
                              f"{_e(i.selection_built_on[0])}, scores v"
                              f"{_e(i.selection_built_on[1])})")),
            ("selection parameters", _e(f"method {p.get('method')}, normalize "
                                        f"{p.get('normalize')}, alpha {p.get('alpha')}, "
                                        f"{cut.strip()}")),
        ]
    notes = "".join(f'<p class="note warn">{_e(n)}</p>' for n in i.notes)
    return f'<section id="inputs"><h2>Inputs</h2>{_kv_table(rows)}{notes}</section>'


_STAT_COLUMNS = (("mean_ds", "mean", "f"), ("sd_ds", "std", "f"), ("min_ds", "min", "f"),
                 ("max_ds", "max", "f"), ("mean_var", "mean", "e"), ("sd_var", "std", "e"),
                 ("min_var", "min", "e"), ("max_var", "max", "e"))


def render_stats_table(stats: Sequence[CategoryScoreStats]) -> str:
    head = ('<tr><th class="l" rowspan="2">category</th><th rowspan="2">windows</th>'
            '<th rowspan="2">not finite</th><th colspan="4">DS</th>'
            '<th colspan="4">variance</th></tr><tr>'
            + "".join(f"<th>{label}</th>" for _, label, _ in _STAT_COLUMNS) + "</tr>")
    body = []
    for s in stats:
        cells = "".join(_cell(getattr(s, name), name, kind) for name, _, kind in _STAT_COLUMNS)
        key = "__total__" if s.is_total else category_label(s.category)
        css = ' class="total"' if s.is_total else ""
        body.append(f'<tr{css} data-category="{_e(key)}"><td class="l">{_e(s.label)}</td>'
                    f'{_cell(s.windows, "windows")}{_cell(s.not_finite, "not_finite")}'
                    f"{cells}</tr>")
    return f'<table id="score-stats">{head}{"".join(body)}</table>'


def render_paper_table() -> str:
    head = ('<tr><th class="l">paper, Table 10</th><th>DS min</th><th>DS max</th>'
            '<th>DS mean</th><th>var min</th><th>var max</th><th>var mean</th></tr>')
    rows = "".join(
        f'<tr><td class="l">{_e(c)}</td>'
        + "".join(f"<td>{v:g}</td>" for v in p["ds"])
        + "".join(f"<td>{v:.1e}</td>" for v in p["variance"]) + "</tr>"
        for c, p in PAPER_TABLE10.items())
    return f'<table id="paper-table10">{head}{rows}</table>'


def render_scores_section(data: ReportData) -> str:
    total = next((s for s in data.stats if s.is_total), None)
    if data.histograms:
        comparison = _img(plot_paper_comparison(data.stats), "comparison with Table 10")
        figure = _img(plot_score_distributions(data.stats, data.histograms),
                      "DS and variance histograms per category")
    else:
        comparison = figure = '<p class="note">No finite scores to plot.</p>'
    return (
        '<section id="scores"><h2>DS and variance per category</h2>'
        '<p class="note">Count, mean, sample standard deviation, minimum and maximum over the '
        "finite scores of the scorer (one grouped Spark SQL aggregate over all rows).</p>"
        f"{render_stats_table(data.stats)}"
        "<h3>Compared with the paper (Appendix E, Table 10)</h3>"
        f'<p class="note">{_e(paper_comparison_note(total, data.inputs.seq_len))}</p>'
        f"{render_paper_table()}{comparison}"
        "<h3>Distributions</h3>"
        f'<p class="note">Histograms over all finite scores ({data.bins} bins, counted in '
        "Spark; a column's bins are shared by the categories).</p>"
        f"{figure}</section>")


def render_counts_table(counts: Sequence[SelectionCount]) -> str:
    head = ('<tr><th class="l">category</th><th>windows</th><th>not ranked</th>'
            "<th>kept</th><th>kept %</th><th>usable tokens</th><th>tokens kept</th>"
            "<th>tokens %</th><th>cut (lowest LDS kept)</th></tr>")
    body = []
    for c in counts:
        share = c.selected / c.usable if c.usable else None
        token_share = c.tokens_selected / c.usable_tokens if c.usable_tokens else None
        body.append(
            f'<tr data-category="{_e(category_label(c.category))}"><td class="l">'
            f"{_e(category_label(c.category))}</td>{_cell(c.windows, 'windows')}"
            f"{_cell(sum(c.excluded.values()), 'excluded')}{_cell(c.selected, 'selected')}"
            f"<td>{_e(f'{share:.1%}' if share is not None else '–')}</td>"
            f"{_cell(c.usable_tokens, 'usable_tokens')}"
            f"{_cell(c.tokens_selected, 'tokens_selected')}"
            f"<td>{_e(f'{token_share:.1%}' if token_share is not None else '–')}</td>"
            f"{_cell(c.cut_lds, 'cut_lds')}</tr>")
    return f'<table id="selection-counts">{head}{"".join(body)}</table>'


def render_selection_section(data: ReportData) -> str:
    i = data.inputs
    if not i.selection_id:
        reason = " ".join(i.notes) or "No selection."
        return ('<section id="selection"><h2>LDS and the selection cut</h2>'
                f'<p class="note">{_e(reason)}</p></section>')
    method = str(i.selection_params.get("method") or "lds")
    alpha = i.selection_params.get("alpha")
    normalize = i.selection_params.get("normalize")
    formula = ("LDS = z(DS) + α·z(DU), z within the category, DU = −variance"
               if normalize != "minmax" else "LDS = minmax(DS) − α·minmax(variance)")
    random_note = (" This is the random baseline: kept windows are drawn by a seeded hash, "
                   "so there is no LDS cut line." if method == "random" else "")
    return (
        '<section id="selection"><h2>LDS and the selection cut</h2>'
        f'<p class="note">{_e(formula)}, α = {_e(alpha)}. Histograms per category ({data.bins} '
        "bins over the category's LDS range, counted in Spark); the kept windows are stacked "
        f"on the left-out ones; the red line is the lowest LDS kept.{_e(random_note)}</p>"
        + _img(plot_lds_histograms(data.lds, data.counts, method), "LDS histograms")
        + "<h3>Windows and tokens selected per category</h3>"
        + render_counts_table(data.counts)
        + _img(plot_selected_per_category(data.counts), "windows and tokens kept")
        + "<h3>DS against variance</h3>"
        f'<p class="note">A sample, not all rows: about {data.sample_points:,} windows per '
        "category, chosen by a seeded hash of window_id (the same on every run); "
        f"{len(data.sample):,} points drawn.</p>"
        + _img(plot_ds_variance_scatter(data.sample), "DS against variance")
        + "</section>")


def _snippet_html(w: WindowSnippet) -> str:
    state = '<span class="kept">kept</span>' if w.selected else '<span class="out">left out</span>'
    where = (f"doc <code>{_e(w.doc_id)}</code>, window {_e(w.window_index)}, token "
             f"{_e(w.token_start)}" if w.doc_id is not None else "window not in the windows "
             "table")
    if w.text is not None:
        body = _e(w.text)
    elif w.head_ids:
        body = "ids: " + _e(" ".join(str(i) for i in w.head_ids))
    else:
        body = "(no token ids)"
    return (f'<div class="win" data-side="{_e(w.side)}" data-window-id="{_e(w.window_id)}">'
            f'<div class="meta"><b>#{w.rank}</b> {_e(category_label(w.category))} — LDS '
            f"<b>{w.lds:.3f}</b>, DS {w.ds:.4f}, variance {w.variance:.3e}, {state} — {where} "
            f"— <code>{_e(w.window_id)}</code></div>"
            f'<pre class="snippet">{body}</pre></div>')


def render_windows_section(data: ReportData) -> str:
    if not data.top:
        return ('<section id="windows"><h2>Top and bottom windows by LDS</h2>'
                '<p class="note">Needs a selection (the LDS is computed by '
                "<code>longattn-spark select</code>).</p></section>")
    top = "".join(_snippet_html(w) for w in data.top)
    bottom = "".join(_snippet_html(w) for w in data.bottom)
    return ('<section id="windows"><h2>Top and bottom windows by LDS</h2>'
            f'<p class="note">The start of each window (its first {data.snippet_tokens:,} '
            f"tokens). {_e(data.snippet_note)}</p>"
            f"<h3>Highest LDS</h3>{top}<h3>Lowest LDS</h3>{bottom}</section>")


def render_profile_section(data: ReportData) -> str:
    title = '<section id="profile"><h2>Attention-distance profile</h2>'
    if data.profile is None:
        if data.profile_howto:
            return (title + '<p class="note">How far back layer 0 attends, for one window: '
                    "the share of attention mass per distance bucket, averaged over heads and "
                    "query rows. It needs the model's weights; add the profile with:</p>"
                    f'<pre id="profile-command">{_e(data.profile_howto)}</pre>'
                    '<p class="note">(<code>--profile-window-id</code> picks the window; the '
                    "default is the top-LDS window.)</p></section>")
        return title + '<p class="note">No window to profile.</p></section>'
    p = data.profile
    notes = "".join(f'<p class="note warn">{_e(n)}</p>' for n in p.notes)
    stored = (f" The stored DS of this window is {p.stored_ds:.6f}; the mass at distance ≥ k "
              f"here is {p.mass_beyond_k:.6f} (they agree when --model is the scoring model)."
              if p.stored_ds is not None else "")
    return (title + f'<p class="note">Window <code>{_e(p.window_id)}</code> '
            f"({_e(category_label(p.category))}), model <code>{_e(p.model)}</code>, L = "
            f"{p.seq_len:,}: share of layer-0 attention mass per distance bucket "
            f"({len(p.mass)} {_e(p.spacing)}-spaced buckets, averaged over query heads and "
            f"query rows); green buckets are at distance ≥ k = {p.min_distance:,}, the "
            f"region DS counts.{_e(stored)}</p>{notes}"
            + _img(plot_distance_profile(p), "attention-distance profile") + "</section>")


def render_comparison_section(data: ReportData) -> str:
    """Two scorers on the same windows: rank agreement, kept-set overlap, scatter and the
    windows they disagree on most (only when the scores table holds two scorers)."""
    c = data.comparison
    if c is None:
        return ""
    from longattn_spark.compare import plot_scatter

    header = ("<tr><th>category</th><th>windows</th><th>Spearman</th><th>kept a</th>"
              "<th>kept b</th><th>kept both</th><th>Jaccard</th></tr>")
    rows = "".join(
        f"<tr data-category=\"{_e(a.category or '')}\"><td>{_e(category_label(a.category))}"
        f"</td>{_cell(a.windows, 'windows', 'd')}{_cell(a.spearman, 'spearman', 'f')}"
        f"{_cell(a.kept_a, 'kept_a', 'd')}{_cell(a.kept_b, 'kept_b', 'd')}"
        f"{_cell(a.kept_both, 'kept_both', 'd')}{_cell(a.jaccard, 'jaccard', 'f')}</tr>"
        for a in c.categories)
    kept = (f"Kept sets: selection <code>{_e(c.selections[0])}</code> (a) and "
            f"<code>{_e(c.selections[1])}</code> (b)." if c.selections else
            "No selection of both scorers: run <code>longattn-spark select --scorer-id</code> "
            "for each to compare their kept sets.")
    png = base64.b64encode(plot_scatter(c)).decode("ascii")
    worst = "".join(
        f'<div class="win" data-window-id="{_e(d.window_id)}"><div class="meta">'
        f"{_e(category_label(d.category))} — rank {d.pct_a:.2f} by a, {d.pct_b:.2f} by b "
        f"— <code>{_e(d.window_id)}</code></div><pre class=\"snippet\">"
        f"{_e(data.comparison_snippets.get(d.window_id, ''))}</pre></div>"
        for d in c.disagreements)
    return ('<section id="comparison"><h2>Two scorers compared</h2>'
            f'<p class="note">a = <code>{_e(c.a)}</code>, b = <code>{_e(c.b)}</code>. '
            "A LongAttn scorer's value is its LDS within the category; a ProLong scorer's is "
            f"its score. Spearman's rank correlation per category. {kept}</p>"
            f'<table class="stats" id="comparison-table">{header}{rows}</table>'
            f'<img alt="scatter of the two scorers" src="data:image/png;base64,{png}">'
            "<h3>Windows the two rank furthest apart</h3>" + worst + "</section>")


def render_method_section(data: ReportData) -> str:
    return ('<section id="method"><h2>How this report was computed</h2><ul class="note">'
            "<li>Statistics and every histogram are Spark SQL aggregates over all rows "
            "(grouped counts per bin); only those counts reach the driver.</li>"
            "<li>The DS against variance scatter is a bounded sample (about "
            f"{data.sample_points:,} windows per category, by a seeded hash).</li>"
            "<li>Top and bottom windows: a top-n by LDS; their token ids are read for those "
            "windows only.</li>"
            "<li>Tables are read at the versions listed under Inputs.</li></ul></section>")


def render_html(data: ReportData) -> str:
    """The whole report as one HTML document."""
    banner = smoke_banner(data.smoke_model) if data.smoke_model else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>LongAttn report — {_e(data.inputs.scorer_id)}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        "<h1>LongAttn scores and selection</h1>"
        f'<p class="sub">generated {_e(data.generated_at)} by longattn-spark report</p>'
        f"{banner}{render_inputs(data)}{render_scores_section(data)}"
        f"{render_selection_section(data)}{render_windows_section(data)}"
        f"{render_profile_section(data)}{render_comparison_section(data)}"
        f"{render_method_section(data)}"
        "</main></body></html>")


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def validate_report_config(cfg: ReportConfig) -> None:
    """Cheap checks before Spark starts; messages name the option."""
    if not cfg.output:
        raise ConfigError("--output is required: the HTML file to write")
    for name, minimum in (("bins", 2), ("profile_buckets", 1), ("top_windows", 0),
                          ("snippet_tokens", 0), ("sample_points", 1)):
        if getattr(cfg, name) < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {minimum}, got "
                              f"{getattr(cfg, name)}")
    if cfg.profile_spacing not in ("log", "linear"):
        raise ConfigError(f"--profile-spacing must be log or linear, got "
                          f"{cfg.profile_spacing!r}")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"--device {cfg.device!r}: use auto, cpu, cuda or cuda:N")


def build_report(spark, cfg: ReportConfig, progress: Callable[[str], None] | None = None
                 ) -> str:
    """Write the HTML report of ``cfg`` (on any filesystem; a scheme-less path is on the
    default one) and return where it is."""
    from longattn_spark import paths

    validate_report_config(cfg)
    if cfg.tokenizer:
        paths.require(spark, cfg.tokenizer, "--tokenizer")
    if cfg.model:
        paths.require(spark, cfg.model, "--model", kind="folder")
    data = collect_report_data(spark, cfg, progress)
    if progress:
        progress("drawing plots and writing HTML")
    return paths.write_bytes(spark, cfg.output, render_html(data).encode("utf-8"))


def run_report_job(cfg: LongAttnConfig) -> str:
    """``longattn-spark report``."""
    from longattn_spark.session import get_spark

    validate_report_config(cfg.report)
    spark = get_spark(cfg.spark, app_name="longattn-spark report")
    path = build_report(spark, cfg.report, progress=lambda step: print(f"report: {step}",
                                                                       flush=True))
    print(f"report written to {path}")
    return path
