"""The report's Spark queries: small results, as the dataclasses of
:mod:`longattn_spark.report.data`. The SQL is in ``longattn_spark/sql/report_*.sql`` (and the
shared ``category_stats.sql`` and ``select_summary.sql``); nothing user-given is pasted into
it. Every histogram is counted in Spark and every sample is bounded: only counts and a few
rows reach the driver."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from longattn_spark.config import ReportConfig
from longattn_spark.errors import ConfigError, TableError
from longattn_spark.inputs import chosen_scorer_id, existing_table, scorer_counts, table_ref
from longattn_spark.report.data import (
    ComponentStats,
    DS,
    LOG10_VARIANCE,
    SAMPLE_SEED,
    Histogram,
    LdsHistogram,
    ReportInputs,
    SamplePoint,
    WindowSnippet,
    first_smoke_model,
    histogram_from_buckets,
    histogram_range,
    json_object,
    parse_scorer_property,
    version_notes,
)
from longattn_spark.select.cut import params_with_recipe_text
from longattn_spark.sqlfiles import load_sql
from longattn_spark.stats import (
    CategoryStats,
    CategorySummary,
    category_order,
    category_stats,
    selection_summary,
)


def choose_scorer(requested: str, available: Mapping[str, int], table: str) -> str:
    """The scorer to report on: the requested one, or the only one in the table."""
    if not available:
        raise TableError(f"--scores {table}: the table holds no scores; run "
                         "`longattn-spark score` first")
    return chosen_scorer_id(requested, available, table)


def resolve_report_inputs(spark, cfg: ReportConfig) -> ReportInputs:
    """Pin the tables to their current versions and choose the scorer and the selection.

    The scorer is ``--scorer-id``, else the scorer of ``--selection-id``, else the only one in
    the scores table. The selection is ``--selection-id`` or the scorer's latest; a missing
    selection table or a scorer without a selection is a note, not an error.
    """
    from longattn_spark.tables.refs import table_properties
    from longattn_spark.tables.schemas import SCORES, SELECTION, WINDOWS

    windows = existing_table(spark, table_ref(cfg.windows, "--windows"), "--windows", WINDOWS)
    scores = existing_table(spark, table_ref(cfg.scores, "--scores"), "--scores", SCORES)
    selection = table_ref(cfg.selection, "--selection")
    windows_version, scores_version = windows.version(spark), scores.version(spark)
    windows_view = windows.sql_name(spark, windows_version)
    scores_view = scores.sql_name(spark, scores_version)
    has_selection = selection.exists(spark)
    if has_selection:
        existing_table(spark, selection, "--selection", SELECTION)
    if cfg.selection_id and not has_selection:
        raise TableError(f"--selection {selection}: no such Delta table (asked for "
                         f"--selection-id {cfg.selection_id})")
    selection_version = selection.version(spark) if has_selection else None
    selection_view = selection.sql_name(spark, selection_version) if has_selection else None
    requested = cfg.scorer_id
    if not requested and cfg.selection_id and selection_view:
        row = spark.sql(load_sql("report_selection_scorer"), args={
            "selection": selection_view, "selection_id": cfg.selection_id}).first()
        requested = (row["scorer_id"] if row else None) or ""
        # a recipe's selection holds its scorers' ids joined by "+": report on the last,
        # which ranks (the model-free gates come first in the shipped recipes)
        requested = requested.split("+")[-1]
    scorers = scorer_counts(spark, scores_view)
    scorer_id = choose_scorer(requested, scorers, str(scores))
    info = parse_scorer_property(table_properties(spark, scores), scorer_id)
    method = info.get("method_plugin") or info.get("method")
    if not method:  # no record: the scores' method column (NULL before it existed: longattn)
        from pyspark.sql import functions as F

        row = (spark.table(scores_view).where(F.col("scorer_id") == scorer_id)
               .select(F.min(F.coalesce("method", F.lit("longattn"))).alias("method")).first())
        method = row["method"] if row else None
    notes: list[str] = []
    if info.get("positions_note"):  # recorded by the score job (scorers/positions.py)
        notes.append(f"Scored past the model's trained context: {info['positions_note']}.")
    selection_id, params, built_on = None, {}, None
    if selection_view is None:
        notes.append(f"No selection table at {selection}: run `longattn-spark select` to see "
                     "the LDS and the cut.")
    else:
        chosen = chosen_selection(spark, selection_view, scorer_id, cfg.selection_id,
                                   str(selection))
        if chosen is None:
            notes.append(f"The selection table {selection} holds no selection of scorer "
                         f"{scorer_id}: run `longattn-spark select --scorer-id {scorer_id}`.")
        else:
            selection_id = chosen["selection_id"]
            params = params_with_recipe_text(json_object(chosen["params"]),
                                             table_properties(spark, selection))
            built_on = (chosen["windows_version"], chosen["scores_version"])
            notes += version_notes(built_on, windows_version, scores_version)
    return ReportInputs(
        windows=str(windows), scores=str(scores), selection=str(selection),
        windows_version=windows_version, scores_version=scores_version,
        selection_version=selection_version, windows_view=windows_view,
        scores_view=scores_view, selection_view=selection_view, scorer_id=scorer_id,
        scorer_info=info, scorers=scorers, selection_id=selection_id,
        selection_params=params, selection_built_on=built_on, notes=tuple(notes),
        scorer_method=method)


def selections_of(spark, selection_view: str, scorer_id: str):
    """The selections of one scorer in a selection table, newest first: those it made alone
    (``scorer_id``) and those of recipes it took part in (``scorer_ids``' values; tables
    written before recipes have no such column)."""
    from pyspark.sql import functions as F

    frame = spark.table(selection_view)
    mine = F.col("scorer_id") == F.lit(scorer_id)
    if "scorer_ids" in frame.columns:
        mine = mine | F.coalesce(F.array_contains(F.map_values("scorer_ids"), scorer_id),
                                 F.lit(False))
    return (frame.where(mine).groupBy("selection_id")
            .agg(F.max("selected_at").alias("selected_at"), F.max("params").alias("params"),
                 F.max("windows_version").alias("windows_version"),
                 F.max("scores_version").alias("scores_version"),
                 F.count(F.lit(1)).alias("windows"),
                 F.count_if(F.col("selected")).alias("selected"))
            .orderBy(F.col("selected_at").desc(), "selection_id"))


def chosen_selection(spark, selection_view: str, scorer_id: str, requested: str,
                      table: str) -> Mapping[str, Any] | None:
    rows = [r.asDict() for r in selections_of(spark, selection_view, scorer_id).collect()]
    if not requested:
        return rows[0] if rows else None
    match = next((r for r in rows if r["selection_id"] == requested), None)
    if match is None:
        listing = ", ".join(f"{r['selection_id']} ({r['selected_at']})" for r in rows) \
            or "(none)"
        raise ConfigError(f"--selection-id {requested!r} is not a selection of scorer "
                          f"{scorer_id} in {table}; its selections there: {listing}")
    return match


def score_models(spark, scores_view: str, scorer_id: str) -> list[str]:
    """The ``model`` column values of one scorer's rows (a handful)."""
    rows = spark.sql(load_sql("report_score_models"), args={
        "scores": scores_view, "scorer_id": scorer_id}).collect()
    return [r["model"] for r in rows if r["model"]]


def smoke_model_of(spark, inputs: ReportInputs) -> str | None:
    """The smoke-test model folder the scores came from, if they did."""
    candidates = [inputs.scorer_info.get("model"), inputs.scorer_info.get("model_path")]
    found = first_smoke_model(candidates)
    if found is None and not inputs.scorer_info:
        found = first_smoke_model(score_models(spark, inputs.scores_view, inputs.scorer_id))
    return found


def scored_view(spark, scores_view: str, scorer_id: str) -> str:
    """A temporary view of one scorer's scores with their ``excluded_reason``
    (``report_scores.sql``), as ``category_stats.sql`` and the histograms read them."""
    name = "longattn_report_scored_" + hashlib.sha1(
        f"{scores_view}\0{scorer_id}".encode()).hexdigest()[:12]
    spark.sql(load_sql("report_scores"), args={
        "scores": scores_view, "scorer_id": scorer_id}).createOrReplaceTempView(name)
    return name


def score_stats(spark, scores_view: str, scorer_id: str) -> tuple[CategoryStats, ...]:
    """Per-category count, mean, std, min and max of DS and variance (one grouped aggregate,
    the one select normalizes with), the overall row last."""
    return category_stats(spark, scored_view(spark, scores_view, scorer_id))


def score_histograms(spark, scores_view: str, scorer_id: str,
                     stats: Sequence[CategoryStats], bins: int = 40
                     ) -> dict[str | None, dict[str, Histogram]]:
    """DS and log10(variance) histograms per category, with common bins across categories;
    the bins are counted in Spark (only ``categories × bins`` counts reach the driver)."""
    total = next((s for s in stats if s.is_total), None)
    if total is None or total.mean_ds is None:
        return {}
    ds_lo, ds_hi = histogram_range(total.min_ds, total.max_ds)
    lv_lo, lv_hi = histogram_range(total.min_log10_var, total.max_log10_var)
    rows = spark.sql(load_sql("report_histograms"), args={
        "scored": scored_view(spark, scores_view, scorer_id), "bins": int(bins),
        "ds_lo": ds_lo, "ds_hi": ds_hi, "lv_lo": lv_lo, "lv_hi": lv_hi}).collect()
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
                     ) -> tuple[CategorySummary, ...]:
    """Windows and tokens kept per category (the selection job's own summary query)."""
    return selection_summary(spark, selection_view, selection_id)


def lds_histograms(spark, selection_view: str, selection_id: str, bins: int = 40
                   ) -> dict[str | None, LdsHistogram]:
    """Per-category LDS histograms (bins counted in Spark), kept and left-out windows apart."""
    rows = spark.sql(load_sql("report_lds_histograms"), args={
        "selection": selection_view, "selection_id": selection_id, "bins": int(bins)}).collect()
    grouped: dict[str | None, dict[str, Any]] = {}
    for r in rows:
        g = grouped.setdefault(r["category"], {"lo": r["lo"], "hi": r["hi"], "selected": [],
                                               "rest": []})
        g["selected" if r["selected"] else "rest"].append((r["bucket"], r["n"]))
    out = {}
    for category, g in sorted(grouped.items(), key=lambda kv: category_order(kv[0])):
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
    rows = spark.sql(load_sql("report_sample"), args={
        "selection": selection_view, "selection_id": selection_id, "seed": SAMPLE_SEED,
        "points": float(points), "limit": limit}).collect()
    return tuple(SamplePoint(r["category"], float(r["ds"]), float(r["variance"]),
                             bool(r["selected"])) for r in rows
                 if r["ds"] is not None and r["variance"] is not None)


def extreme_windows(spark, inputs: ReportInputs, n: int, snippet_tokens: int,
                    tokenizer=None) -> tuple[tuple[WindowSnippet, ...], tuple[WindowSnippet, ...]]:
    """The ``n`` top and ``n`` bottom windows by LDS with their first ``snippet_tokens``
    tokens, decoded when a tokenizer is given. The windows table is read for those ids only."""
    if n <= 0 or inputs.selection_view is None or inputs.selection_id is None:
        return (), ()
    ranked = [r.asDict() for r in spark.sql(load_sql("report_extremes"), args={
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
            category=r["category"], lds=float(r["lds"]), ds=_number(r["ds"]),
            variance=_number(r["variance"]), selected=bool(r["selected"]),
            n_tokens=r["n_tokens"], doc_id=head.get("doc_id"),
            window_index=head.get("window_index"), token_start=head.get("token_start"),
            head_ids=ids, text=text, window_tokenizer=head.get("tokenizer")))
    return tuple(snippets["top"]), tuple(snippets["bottom"])


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def component_stats(spark, scores_view: str, scorer_id: str) -> tuple[ComponentStats, ...]:
    """Per category and component of one scorer (the ``components`` map, or the typed
    columns of older rows): count, mean, sample standard deviation, min and max; one grouped
    aggregate over the exploded map."""
    from pyspark.sql import functions as F

    from longattn_spark.tables.components import components_map

    frame = spark.table(scores_view).filter(F.col("scorer_id") == F.lit(scorer_id))
    pairs = frame.select("category", F.explode(components_map(frame)).alias("k", "v"))
    rows = (pairs.groupBy("category", "k")
            .agg(F.count("v").alias("n"), F.avg("v").alias("mean"),
                 F.stddev_samp("v").alias("sd"), F.min("v").alias("lo"),
                 F.max("v").alias("hi")).collect())
    return tuple(sorted((ComponentStats(r["category"], r["k"], int(r["n"]), r["mean"], r["sd"],
                                        r["lo"], r["hi"]) for r in rows),
                        key=lambda c: (category_order(c.category), c.component)))


def window_heads(spark, windows_view: str, window_ids: Sequence[str], tokens: int
                 ) -> dict[str, dict[str, Any]]:
    """Provenance and the first ``tokens`` ids of the given windows, keyed by window_id."""
    if not window_ids:
        return {}
    rows = spark.sql(load_sql("report_window_heads"), args={
        "windows": windows_view, "window_ids": list(window_ids),
        "tokens": max(int(tokens), 0)}).collect()
    return {r["window_id"]: r.asDict() for r in rows}


def default_profile_window(spark, inputs: ReportInputs,
                           top: Sequence[WindowSnippet]) -> str | None:
    """The top-LDS window, else (no selection) the window with the highest DS."""
    if top:
        return top[0].window_id
    row = spark.sql(load_sql("report_top_ds"), args={
        "scored": scored_view(spark, inputs.scores_view, inputs.scorer_id)}).first()
    return row["window_id"] if row else None
