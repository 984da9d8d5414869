"""``longattn-spark select``: pin the input tables, choose the scorer, build the selection
once (its id is a hash of everything it depends on) and print its summary."""

from __future__ import annotations

from longattn_spark.console import StageRun, StepTimer, print_run
from longattn_spark.config import LongAttnConfig
from longattn_spark.inputs import (
    pinned_version,
    scorer_counts_and_methods,
    scorer_record,
    scorer_records,
    stored_scorers,
    table_ref,
)
from longattn_spark.errors import ConfigError
from longattn_spark.select.cut import (
    DEFAULT_BUCKETS,
    DEFAULT_CANDIDATE_LIMIT,
    SelectOptions,
    check_heads_in_range,
    params_for_rows,
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
from longattn_spark.select.recipe import RecipeRequest, precheck, selection_recipe
from longattn_spark.select.summary import SelectionResult, format_summary, summary_notes

# Delta collects min/max statistics only for the leading columns (window_id, category,
# n_tokens, ds): enough for skipping, and cheaper to write than all sixteen.
SELECTION_TABLE_PROPERTIES = {"delta.dataSkippingNumIndexedCols": "4"}


def resolve_inputs(spark, windows, scores, request: RecipeRequest | None = None,
                   windows_version: int | None = None, scores_version: int | None = None
                   ) -> SelectionInputs | str:
    """Pin the input tables to versions, choose the recipe and find its scorers; a message
    instead when the scores table holds nothing to select from."""
    request = request or RecipeRequest()
    wv = pinned_version(spark, windows, windows_version, "--windows")
    sv = pinned_version(spark, scores, scores_version, "--scores")
    counts, methods = scorer_counts_and_methods(scores.read(spark, sv))
    if not counts:
        return (f"scores table {scores} holds no scores (version {sv}); nothing to select. "
                "Run the score job first.")
    stored = stored_scorers(counts, scorer_records(spark, scores), methods)
    recipe, scorer_ids = selection_recipe(request, stored, str(scores))
    return SelectionInputs(windows, scores, wv, sv, "+".join(scorer_ids.values()), recipe,
                           scorer_ids)


def check_heads(spark, inputs: SelectionInputs, heads: tuple[int, ...]) -> None:
    """``--heads`` against what the recipe's scorers store, before the selection runs: for
    each scorer whose components with per-head arrays the recipe reads, from the scorer's
    record when it gives the head count, else from one aggregate over the scorer's rows (the
    shortest per-head arrays, named by a window)."""
    from longattn_spark.select.ranked import HEAD_ARRAYS

    if not heads:
        return
    read = {c.scorer for c in inputs.recipe.referenced() if c.name in HEAD_ARRAYS}
    if not read:
        raise ConfigError(f"--heads: recipe {inputs.recipe.name} reads no component with "
                          f"per-head scores ({', '.join(HEAD_ARRAYS)}); --heads needs a scorer "
                          f"that stores them (ds_heads, var_heads), e.g. longattn")
    for name in sorted(read):
        sid = inputs.scorer_ids[name]
        n_heads = scorer_record(spark, inputs.scores, sid).get("n_query_heads")
        if isinstance(n_heads, int) and n_heads > 0:
            check_heads_in_range(heads, n_heads, f"the per-head scores of scorer {sid}")
            continue
        stored = stored_heads(spark, inputs, sid)
        if stored.max_heads is None:
            raise ConfigError(f"--heads: scorer {sid} stores no per-head scores (ds_heads, "
                              f"var_heads); --heads needs a scorer that does, e.g. longattn")
        check_heads_in_range(heads, stored.min_heads, f"the per-head scores of window "
                                                      f"{stored.short_window} (scorer {sid})")


def selection_params(options: SelectOptions, inputs: SelectionInputs, windows: str,
                     scores: str, explicit: bool) -> str:
    """The ``params`` column: the options, the input tables, and (when a recipe, rank or
    filter was asked for) the recipe's name, hash and text and the scorer of each of its
    scorers. A scorer's own ranking keeps the parameters of earlier releases, so its
    selection ids are unchanged."""
    import json

    params = json.loads(params_json(options, windows, scores))
    if explicit:
        params["recipe"] = inputs.recipe.describe()
        params["scorer_ids"] = dict(inputs.scorer_ids)
    return json.dumps(params, sort_keys=True)


def select_windows(spark, options: SelectOptions, windows, scores, table, *,
                   scorer_id: str = "", request: RecipeRequest | None = None,
                   windows_version: int | None = None, scores_version: int | None = None,
                   buckets: int = DEFAULT_BUCKETS,
                   candidate_limit: int = DEFAULT_CANDIDATE_LIMIT) -> SelectionResult:
    """Run one selection into ``table`` (TableRefs) and summarize it."""
    from longattn_spark.tables.schemas import SELECTION
    from longattn_spark.tables.writes import ensure_table, set_properties

    request = request or RecipeRequest(scorer_id=scorer_id, normalize=options.normalize,
                                       alpha=options.alpha)
    inputs = resolve_inputs(spark, windows, scores, request, windows_version, scores_version)
    if isinstance(inputs, str):
        return SelectionResult(None, str(table), None, None, None, options, written=False,
                               message=inputs)
    check_heads(spark, inputs, options.heads)
    params = selection_params(options, inputs, str(windows), str(scores), request.explicit)
    selection_id = selection_id_for(params, inputs.scorer_id, inputs.windows_version,
                                    inputs.scores_version)
    row_params, recipe_properties = params_for_rows(params)
    ensure_table(spark, table, SELECTION, properties=SELECTION_TABLE_PROPERTIES)
    written = not selection_present(spark, table, selection_id)
    if written:
        set_properties(spark, table, recipe_properties)  # before any row names them
        with selection_rows(spark, inputs, options, selection_id, row_params, buckets,
                            candidate_limit) as rows:
            write_selection(spark, table, rows, selection_id)
    categories = read_summary(spark, table, selection_id, options)
    return SelectionResult(selection_id, str(table), inputs.scorer_id, inputs.windows_version,
                           inputs.scores_version, options, written, categories,
                           summary_notes(options, categories), recipe=inputs.recipe.name)


def recipe_request(cfg) -> RecipeRequest:
    """The ``RecipeRequest`` of a ``SelectConfig``."""
    return RecipeRequest(recipe=cfg.recipe, rank=cfg.rank, where=tuple(cfg.where or ()),
                         normalize=cfg.normalize, alpha=float(cfg.alpha),
                         scorer_id=cfg.scorer_id)


def run_select_job(cfg: LongAttnConfig) -> SelectionResult:
    """``longattn-spark select``: select from the configured tables and print a summary."""
    from longattn_spark.session import get_spark

    sc = cfg.select
    options = select_options(sc)
    precheck(recipe_request(sc))
    windows = table_ref(sc.windows, "--windows")
    scores = table_ref(sc.scores, "--scores")
    table = table_ref(sc.table, "--table")
    timer = StepTimer()
    with timer.step("session"):
        spark = get_spark(cfg.spark)
    with timer.step("select and write"):
        result = select_windows(spark, options, windows, scores, table,
                                request=recipe_request(sc),
                                windows_version=sc.windows_version,
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
