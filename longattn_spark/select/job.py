"""``longattn-spark select``: pin the input tables, choose the scorer, build the selection
once (its id is a hash of everything it depends on) and print its summary."""

from __future__ import annotations

from longattn_spark.console import StageRun, StepTimer, print_run
from longattn_spark.config import LongAttnConfig
from longattn_spark.inputs import chosen_scorer_id, pinned_version, scorer_counts, table_ref
from longattn_spark.errors import ConfigError
from longattn_spark.select.cut import (
    DEFAULT_BUCKETS,
    DEFAULT_CANDIDATE_LIMIT,
    SelectOptions,
    check_heads_in_range,
    params_json,
    select_options,
    selection_id_for,
)
from longattn_spark.select.queries import (
    SelectionInputs,
    read_summary,
    selection_present,
    selection_rows,
    stored_heads,
    write_selection,
)
from longattn_spark.select.summary import SelectionResult, format_summary, summary_notes

# Delta collects min/max statistics only for the leading columns (window_id, category,
# n_tokens, ds): enough for skipping, and cheaper to write than all sixteen.
SELECTION_TABLE_PROPERTIES = {"delta.dataSkippingNumIndexedCols": "4"}


def resolve_inputs(spark, windows, scores, scorer_id: str = "",
                   windows_version: int | None = None, scores_version: int | None = None
                   ) -> SelectionInputs | str:
    """Pin the input tables to versions and choose the scorer; a message instead when the
    scores table holds nothing to select from."""
    wv = pinned_version(spark, windows, windows_version, "--windows")
    sv = pinned_version(spark, scores, scores_version, "--scores")
    available = scorer_counts(spark, scores.sql_name(spark, sv))
    if not available:
        return (f"scores table {scores} holds no scores (version {sv}); nothing to select. "
                "Run the score job first.")
    chosen = chosen_scorer_id(scorer_id, available, str(scores))
    return SelectionInputs(windows, scores, wv, sv, chosen)


def scorer_record(spark, scores, scorer_id: str) -> dict:
    """The scorer's record written by the score job (the scores table's
    ``longattn.scorer.<scorer_id>`` property), or {} when the table has none."""
    import json

    from longattn_spark.tables.refs import table_properties

    text = table_properties(spark, scores).get(f"longattn.scorer.{scorer_id}")
    try:
        record = json.loads(text) if text else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def check_heads(spark, inputs: SelectionInputs, heads: tuple[int, ...]) -> None:
    """``--heads`` against what the scorer stores, before the selection runs: from the
    scorer's record when it names the method and head count, else from one aggregate over the
    scorer's rows (the shortest per-head arrays, named by a window)."""
    if not heads:
        return
    sid = inputs.scorer_id
    record = scorer_record(spark, inputs.scores, sid)
    method = record.get("method")
    if method not in (None, "longattn"):
        raise ConfigError(f"--heads: scorer {sid} is a {method} scorer, which stores no "
                          "per-head scores; --heads needs a longattn scorer")
    n_heads = record.get("n_query_heads")
    if isinstance(n_heads, int) and n_heads > 0:
        check_heads_in_range(heads, n_heads, f"the per-head scores of scorer {sid}")
        return
    stored = stored_heads(spark, inputs)
    if stored.max_heads is None:
        kind = " (its rows are of another method)" if stored.other_method else ""
        raise ConfigError(f"--heads: scorer {sid} stores no per-head scores (ds_heads, "
                          f"var_heads){kind}; --heads needs a longattn scorer")
    check_heads_in_range(heads, stored.min_heads,
                         f"the per-head scores of window {stored.short_window} (scorer {sid})")


def select_windows(spark, options: SelectOptions, windows, scores, table, *,
                   scorer_id: str = "", windows_version: int | None = None,
                   scores_version: int | None = None, buckets: int = DEFAULT_BUCKETS,
                   candidate_limit: int = DEFAULT_CANDIDATE_LIMIT) -> SelectionResult:
    """Run one selection into ``table`` (TableRefs) and summarize it."""
    from longattn_spark.tables.schemas import SELECTION
    from longattn_spark.tables.writes import ensure_table

    inputs = resolve_inputs(spark, windows, scores, scorer_id, windows_version, scores_version)
    if isinstance(inputs, str):
        return SelectionResult(None, str(table), None, None, None, options, written=False,
                               message=inputs)
    check_heads(spark, inputs, options.heads)
    params = params_json(options, str(windows), str(scores))
    selection_id = selection_id_for(params, inputs.scorer_id, inputs.windows_version,
                                    inputs.scores_version)
    ensure_table(spark, table, SELECTION, properties=SELECTION_TABLE_PROPERTIES)
    written = not selection_present(spark, table, selection_id)
    if written:
        with selection_rows(spark, inputs, options, selection_id, params, buckets,
                            candidate_limit) as rows:
            write_selection(spark, table, rows, selection_id)
    categories = read_summary(spark, table, selection_id, options)
    return SelectionResult(selection_id, str(table), inputs.scorer_id, inputs.windows_version,
                           inputs.scores_version, options, written, categories,
                           summary_notes(options, categories))


def run_select_job(cfg: LongAttnConfig) -> SelectionResult:
    """``longattn-spark select``: select from the configured tables and print a summary."""
    from longattn_spark.session import get_spark

    sc = cfg.select
    options = select_options(sc)
    windows = table_ref(sc.windows, "--windows")
    scores = table_ref(sc.scores, "--scores")
    table = table_ref(sc.table, "--table")
    timer = StepTimer()
    with timer.step("session"):
        spark = get_spark(cfg.spark)
    with timer.step("select and write"):
        result = select_windows(spark, options, windows, scores, table,
                                scorer_id=sc.scorer_id, windows_version=sc.windows_version,
                                scores_version=sc.scores_version)
    print(format_summary(result))
    cats = result.categories
    print_run(StageRun(f"select {scores} -> {table}", [
        ("windows", f"{sum(c.windows for c in cats):,}"),
        ("excluded", f"{sum(sum(c.excluded.values()) for c in cats):,}"),
        ("selected", f"{sum(c.selected for c in cats):,}"),
        ("tokens selected", f"{sum(c.tokens_selected for c in cats):,}")],
        timer.seconds, timer.step_seconds))
    return result
