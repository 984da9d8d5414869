"""Selection: per-category normalized scores, the LDS and the cut (paper §3.2.3, §4.2).

The stage reads top-down: :mod:`~longattn_spark.select.cut` validates the options and holds
the cut arithmetic (pure, no Spark); :mod:`~longattn_spark.select.queries` runs the SQL of
``longattn_spark/sql/select_*.sql`` (readable and runnable on its own in a SQL editor: named
parameters such as ``:alpha`` and ``IDENTIFIER(:scores)`` for tables) in order and writes the
selection table; :mod:`~longattn_spark.select.summary` folds and prints what a run did;
:mod:`~longattn_spark.select.job` is ``longattn-spark select``. Nothing user-given is pasted
into SQL text.

Method, within each category of the windows (paper §4.2), over the *usable* windows:

- ``--normalize zscore`` (default, paper eq. 8): z(x) = (x - mean) / stddev_samp,
  ``lds = z(DS) + alpha * z(DU)`` with DU = -variance.
- ``--normalize minmax`` (the authors' released code): ``lds = minmax(DS) - alpha *
  minmax(variance)``.
- A category with a single usable window (stddev_samp undefined) or zero spread (stddev or
  range 0) gets z = 0 for that score: it carries nothing to rank by, and the cut then falls by
  the tie order below.
- Usable means: the window exists in the windows table with an n_tokens, and ds and variance
  are finite. Other scores (NULL, NaN, infinite, no window) are not ranked; they are written to
  the selection table with ``selected = false``, NULL z/lds and an ``excluded_reason``, and
  counted in the summary, so every score of the scorer is accounted for.

``--heads 0,3,5`` (LongAttn scorers): DS and variance are the means over those query heads of
the stored per-head ``ds_heads`` / ``var_heads`` instead of the all-head ``ds`` / ``variance``
(no re-scoring); everything below then applies to them, the selection table's ``ds`` and
``variance`` hold them, and its ``params`` record the heads. The heads are checked against the
scorer's head count (its record in the scores table, else the stored arrays) before the
selection runs.

Cuts, within each category (``--min-lds`` may be combined with either of the first two):

- ``--keep-fraction f``: the top ``floor(f * n + 1e-9)`` windows by LDS (``int(n * f)`` as in
  the released code). By default the cut value comes from ``percentile_approx`` at
  ``--accuracy`` (rank error at most n / accuracy; exact when n <= accuracy in practice):
  windows with LDS strictly above it are kept, and of the windows whose LDS equals it, as many
  as ``floor(f * n)`` still needs, in the tie order below (so ties are split as the exact cut
  splits them: a category whose windows all tie keeps ``floor(f * n)``, the same ones as
  ``--exact``); ``--exact`` uses the exact cut below.
- ``--token-budget N``: the longest prefix of the category's LDS order whose tokens do not
  exceed the category's budget, so the budget is met to within one window. With ``--mix
  arxiv=0.33,...`` the category gets ``floor(N * share)`` (shares sum to at most 1; categories
  not named get nothing, as in the paper's Table 7 mixes); without ``--mix`` the budget is split
  in proportion to each category's usable tokens, which keeps the corpus' own mix. A budget
  larger than a category's data takes all of it, and the summary says so. Always exact.
- ``--min-lds x``: windows with ``lds >= x``.
- ``--method random --seed s`` (the paper's Random baseline): in each category, as many
  windows (or, with ``--token-budget``, at most as many tokens) as the LDS cut with the same
  options takes, drawn from the same usable windows in the order of ``xxhash64(window_id,
  seed)``: deterministic per seed, different across seeds.

Order and ties: windows rank by LDS (or the random hash) descending, then by
``xxhash64(window_id)`` descending, then by window_id ascending: a fixed total order, so every
cut is reproducible.

No step gathers a category into one task. Per-category mean, stddev, min and max are one
grouped aggregate, collected to the driver (a few numbers per category) and broadcast back.
The approximate cut is a grouped ``percentile_approx`` (sketches merged across tasks) and one
grouped count of the windows above and at it; a tie it splits is placed like an exact cut. The
exact cut (:func:`~longattn_spark.select.queries.exact_cuts`) is found by histogram refinement:
grouped aggregates of windows and tokens per equal-width bucket of the ordering key narrow
each category's cut down to a bracket of at most ``candidate_limit`` windows, and only that
bracket is collected to the driver to place the cut exactly. Ranking is never done by a window function over a category.

``selection_id`` is a hash of the parameters, the scorer and the identities and Delta versions
of the windows and scores tables, which are read pinned to those versions. A selection whose id
is already in the table is not recomputed; the write replaces the selection's own partition
(``replaceWhere``), so a retried or repeated run never duplicates rows, and the same selection
can be rebuilt later by time travel with ``--windows-version`` / ``--scores-version``.
"""

from __future__ import annotations

import importlib

#: Every name of the stage, loaded from its module on first use (the pure cut arithmetic does
#: not pull in Spark).
_NAMES = {
    "Bracket": "longattn_spark.select.cut",
    "CategoryStats": "longattn_spark.stats",
    "CategorySummary": "longattn_spark.stats",
    "Cut": "longattn_spark.select.cut",
    "CutStats": "longattn_spark.select.cut",
    "DEFAULT_BUCKETS": "longattn_spark.select.cut",
    "DEFAULT_CANDIDATE_LIMIT": "longattn_spark.select.cut",
    "HASH_MAX": "longattn_spark.select.cut",
    "HASH_MIN": "longattn_spark.select.cut",
    "MAX_ABS_ALPHA": "longattn_spark.select.cut",
    "MAX_REFINEMENTS": "longattn_spark.select.cut",
    "SELECTION_TABLE_PROPERTIES": "longattn_spark.select.job",
    "SelectOptions": "longattn_spark.select.cut",
    "SelectionInputs": "longattn_spark.select.queries",
    "RecipeRequest": "longattn_spark.select.recipe",
    "SelectionResult": "longattn_spark.select.summary",
    "Target": "longattn_spark.select.cut",
    "approx_cut": "longattn_spark.select.cut",
    "approx_cuts": "longattn_spark.select.queries",
    "check_mix_categories": "longattn_spark.select.cut",
    "chosen_scorer_id": "longattn_spark.inputs",
    "cut_from_candidates": "longattn_spark.select.cut",
    "exact_cuts": "longattn_spark.select.queries",
    "format_summary": "longattn_spark.select.summary",
    "initial_bracket": "longattn_spark.select.cut",
    "keep_counts": "longattn_spark.select.cut",
    "rank_cuts": "longattn_spark.select.queries",
    "load_sql": "longattn_spark.sqlfiles",
    "narrowed_bracket": "longattn_spark.select.cut",
    "params_json": "longattn_spark.select.cut",
    "parse_mix": "longattn_spark.select.cut",
    "parse_heads": "longattn_spark.select.cut",
    "check_heads_in_range": "longattn_spark.select.cut",
    "check_heads": "longattn_spark.select.job",
    "pinned_version": "longattn_spark.inputs",
    "random_cuts": "longattn_spark.select.queries",
    "read_summary": "longattn_spark.select.queries",
    "refined_cuts": "longattn_spark.select.queries",
    "resolve_inputs": "longattn_spark.select.job",
    "run_select_job": "longattn_spark.select.job",
    "scorer_counts": "longattn_spark.inputs",
    "select_options": "longattn_spark.select.cut",
    "select_windows": "longattn_spark.select.job",
    "selection_id_for": "longattn_spark.select.cut",
    "selection_present": "longattn_spark.select.queries",
    "selection_rows": "longattn_spark.select.queries",
    "summaries_from_rows": "longattn_spark.select.summary",
    "summary_notes": "longattn_spark.select.summary",
    "table_ref": "longattn_spark.inputs",
    "token_budgets": "longattn_spark.select.cut",
    "with_budgets": "longattn_spark.select.summary",
    "write_selection": "longattn_spark.select.queries",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
