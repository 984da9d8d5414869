"""``longattn-spark report``: one self-contained HTML file about a scores table and a selection.

What it shows (every plot is a PNG embedded as base64; the file needs nothing else):

- first, a summary box (``report.summary``, ``templates/summary.html.j2``): what was selected
  (windows, tokens, share per category), by which recipe or scorer, and each ``--probe``
  table's verdict per category and control kind, in words and colour, with links to the
  sections below; without a probe, "not probed" and the commands that probe the scorer and
  show it. The page's title and heading name the recipe or scorer;
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
  distance bucket, ``longattn_spark.scorers.longattn.profile``), else the command that draws it;
- with ``--probe T1[,T2,...]``, one probe section per table (``probe.report``).

The page is laid out for a browser (wide tables scroll inside their own box; phone widths too)
and for print (``@media print``: tables shrink to the page, rows and plots are not cut).

The package reads top-down, and its parts are also used by ``notebooks/explore_scores.ipynb``:

- :mod:`~longattn_spark.report.data`: the dataclasses the queries return and the pure helpers;
- :mod:`~longattn_spark.report.queries`: Spark queries (SQL in ``longattn_spark/sql/report_*.sql``
  and the ``category_stats.sql`` / ``select_summary.sql`` that select uses too) returning
  those dataclasses (``score_stats``, ``score_histograms``, ``lds_histograms``, ...);
  :mod:`~longattn_spark.report.profile` draws on the model for the attention profile;
- :mod:`~longattn_spark.report.plots`: pure functions from that data to PNG bytes (``plot_*``);
- :mod:`~longattn_spark.report.summary`: the summary box, pure, folded from the selection
  summary and the probe sections the report already has (no number computed twice);
- :mod:`~longattn_spark.report.html`: ``render_html``, pure, from a ``ReportData`` through the
  Jinja2 template ``templates/report.html.j2`` (autoescaped) to the HTML text;
- :mod:`~longattn_spark.report.job`: ``build_report`` and ``run_report_job``.
"""

from longattn_spark.figures import category_panels, figure_png, new_figure
from longattn_spark.inputs import scorer_counts
from longattn_spark.report.data import (
    DS, LOG10_VARIANCE, PAPER_DS_MEAN, PAPER_DS_RANGE, PAPER_SEQ_LEN, PAPER_TABLE10,
    PAPER_VARIANCE_RANGE, SAMPLE_SEED, SMOKE_MARK, CategoryScoreStats, Histogram, LdsHistogram,
    ProfileResult, ReportData, ReportInputs, SamplePoint, SelectionCount, WindowSnippet,
    first_smoke_model, histogram_from_buckets, histogram_range, is_smoke_test_model,
    paper_comparison_note, parse_scorer_property, profile_howto_command, select_config_of,
    snippet_note, validate_report_config)
from longattn_spark.report.html import (
    STAT_COLUMNS, render_html)
from longattn_spark.report.job import (
    build_report, collect_report_data, compare_with_other_scorer, load_snippet_tokenizer,
    run_report_job)
from longattn_spark.report.plots import (
    CUT_COLOR, KEPT_COLOR, PAPER_COLOR, REST_COLOR,
    plot_distance_profile, plot_ds_variance_scatter, plot_lds_histograms, plot_paper_comparison,
    plot_score_distributions, plot_selected_per_category)
from longattn_spark.report.profile import (
    window_profile)
from longattn_spark.report.queries import (
    choose_scorer, default_profile_window, extreme_windows, lds_histograms,
    resolve_report_inputs, scatter_sample, score_histograms, score_models, score_stats,
    scored_view, selection_counts, smoke_model_of, window_heads)
from longattn_spark.stats import CategoryStats, CategorySummary, category_label
from longattn_spark.stats import category_summaries as selection_counts_from_summary

__all__ = [
    "CUT_COLOR", "CategoryScoreStats", "CategoryStats", "CategorySummary", "DS", "Histogram",
    "KEPT_COLOR", "LOG10_VARIANCE", "LdsHistogram", "PAPER_COLOR", "PAPER_DS_MEAN",
    "PAPER_DS_RANGE", "PAPER_SEQ_LEN", "PAPER_TABLE10", "PAPER_VARIANCE_RANGE", "ProfileResult",
    "REST_COLOR", "ReportData", "ReportInputs", "SAMPLE_SEED", "SMOKE_MARK", "STAT_COLUMNS",
    "SamplePoint", "SelectionCount", "WindowSnippet", "build_report", "category_label",
    "category_panels", "choose_scorer", "collect_report_data", "compare_with_other_scorer",
    "default_profile_window", "extreme_windows", "figure_png", "first_smoke_model",
    "histogram_from_buckets", "histogram_range", "is_smoke_test_model", "lds_histograms",
    "load_snippet_tokenizer", "new_figure", "paper_comparison_note", "parse_scorer_property",
    "plot_distance_profile", "plot_ds_variance_scatter", "plot_lds_histograms",
    "plot_paper_comparison", "plot_score_distributions", "plot_selected_per_category",
    "profile_howto_command", "render_html", "resolve_report_inputs", "run_report_job",
    "scatter_sample", "score_histograms", "score_models", "score_stats", "scored_view",
    "scorer_counts", "select_config_of", "selection_counts", "selection_counts_from_summary",
    "smoke_model_of", "snippet_note", "validate_report_config", "window_heads",
    "window_profile",
]
