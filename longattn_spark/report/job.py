"""``longattn-spark report``: run the report's queries (and the profile with ``--model``),
render the HTML and write it, on any filesystem Spark reads."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any

from longattn_spark.console import StageRun, StepTimer, print_run
from longattn_spark.config import LongAttnConfig, ReportConfig
from longattn_spark.report.data import (
    ReportData,
    ReportInputs,
    probe_tables,
    profile_howto_command,
    snippet_note,
    validate_report_config,
)
from longattn_spark.report.html import render_html
from longattn_spark.report.profile import window_profile
from longattn_spark.report.queries import (
    chosen_selection,
    component_stats,
    default_profile_window,
    extreme_windows,
    lds_histograms,
    resolve_report_inputs,
    scatter_sample,
    score_histograms,
    score_stats,
    selection_counts,
    smoke_model_of,
    window_heads,
)
from longattn_spark.report.summary import probe_howto_commands


def load_snippet_tokenizer(cfg: ReportConfig, spark=None):
    """(tokenizer or None, its identity, where it came from): ``--tokenizer``, else the
    tokenizer.json in the ``--model`` folder, else none (snippets show ids). Both may be on
    any filesystem Spark reads."""
    from longattn_spark.tokenizer import (
        get_tokenizer,
        load_tokenizer_spec,
        tokenizer_identity,
    )

    if cfg.tokenizer:
        spec = load_tokenizer_spec(cfg.tokenizer, spark)
        return get_tokenizer(spec), spec.identity, f"--tokenizer {cfg.tokenizer}"
    if cfg.model and tokenizer_identity(spark, cfg.model) is not None:
        spec = load_tokenizer_spec(cfg.model, spark, option="--model")
        return get_tokenizer(spec), spec.identity, \
            f"the tokenizer.json in --model {cfg.model}"
    return None, None, None


def collect_report_data(spark, cfg: ReportConfig,
                        progress: Callable[[str], None] | None = None) -> ReportData:
    """Run the report's queries (and the profile with ``--model``)."""
    say = progress or (lambda _: None)
    say("resolving tables, scorer and selection")
    inputs = resolve_report_inputs(spark, cfg)
    tokenizer, identity, source = load_snippet_tokenizer(cfg, spark)
    say("score statistics and histograms")
    stats = score_stats(spark, inputs.scores_view, inputs.scorer_id)
    components = component_stats(spark, inputs.scores_view, inputs.scorer_id)
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
    probes, probe_howto = [], None
    if cfg.probe:
        from longattn_spark.probe.report import probe_section

        for table in probe_tables(cfg.probe):
            say(f"probe section from {table}")
            probes.append(probe_section(spark, table, cfg.model, cfg.device))
    else:
        probe_howto = probe_howto_commands(inputs, cfg)
    return ReportData(
        inputs=inputs, generated_at=_dt.datetime.now().astimezone().strftime(
            "%Y-%m-%d %H:%M:%S %Z"),
        smoke_model=smoke_model_of(spark, inputs), stats=stats, histograms=histograms,
        counts=counts, lds=lds, sample=sample, top=top, bottom=bottom, snippet_note=note,
        profile=profile, profile_howto=howto, bins=cfg.bins, sample_points=cfg.sample_points,
        snippet_tokens=cfg.snippet_tokens, profile_window_id=window_id,
        comparison=comparison, comparison_snippets=comparison_snippets,
        probes=tuple(probes), probe_howto=probe_howto, components=components)


def compare_with_other_scorer(spark, inputs: ReportInputs, cfg: ReportConfig, tokenizer
                              ) -> tuple[Any, dict[str, str]]:
    """The report's scorer against the table's next scorer (``longattn_spark.compare``): the
    kept sets are the report's selection and the other scorer's latest one, when both exist;
    the windows ranked furthest apart get text snippets."""
    from longattn_spark.compare import compare_scorers

    other = sorted(s for s in inputs.scorers if s != inputs.scorer_id)[0]
    selections = None
    if inputs.selection_view and inputs.selection_id:
        chosen = chosen_selection(spark, inputs.selection_view, other, "", inputs.selection)
        if chosen is not None:
            selections = (inputs.selection_id, chosen["selection_id"])
    from longattn_spark.inputs import scorer_records
    from longattn_spark.tables.refs import TableRef

    comparison = compare_scorers(spark, inputs.scores_view, inputs.scorer_id, other,
                                 selection=inputs.selection_view if selections else None,
                                 selections=selections, disagreements=cfg.top_windows,
                                 scatter_points=cfg.sample_points,
                                 records=scorer_records(spark, TableRef(inputs.scores)))
    heads = window_heads(spark, inputs.windows_view,
                         [d.window_id for d in comparison.disagreements], cfg.snippet_tokens)
    snippets = {}
    for window_id, head in heads.items():
        ids = list(head["head_ids"] or [])
        snippets[window_id] = (tokenizer.decode(ids) if tokenizer is not None
                               else "ids: " + " ".join(map(str, ids)))
    return comparison, snippets


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
    timer = StepTimer()
    timer.mark("session")
    spark = get_spark(cfg.spark, app_name="longattn-spark report")

    def progress(step: str) -> None:
        print(f"report: {step}", flush=True)
        timer.mark(step)

    path = build_report(spark, cfg.report, progress=progress)
    timer.mark(None)
    print(f"report written to {path}")
    print_run(StageRun(f"report {cfg.report.scores} -> {cfg.report.output}",
                       [("report", str(path))], timer.seconds, timer.step_seconds))
    return path
