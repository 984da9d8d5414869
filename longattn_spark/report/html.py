"""The report as one HTML document: ``templates/report.html.j2`` rendered by Jinja2 with
autoescaping, from a :class:`~longattn_spark.report.data.ReportData` and the PNGs of
:mod:`longattn_spark.report.plots`. Pure: no Spark."""

from __future__ import annotations

import base64
import html
import math
from functools import cache
from typing import Any

from longattn_spark.report import plots
from longattn_spark.report.data import PAPER_TABLE10, ReportData, paper_comparison_note
from longattn_spark.report.summary import probe_anchor, report_summary
from longattn_spark.stats import category_label

STAT_COLUMNS = (("mean_ds", "mean", "f"), ("sd_ds", "std", "f"), ("min_ds", "min", "f"),
                ("max_ds", "max", "f"), ("mean_var", "mean", "e"), ("sd_var", "std", "e"),
                ("min_var", "min", "e"), ("max_var", "max", "e"))
"""The DS and variance columns of the statistics table: (field, heading, number format)."""


def number_text(value: float | None, kind: str = "g") -> str:
    """A number as the report's tables show it: ``e`` 3 decimals in scientific notation,
    ``f`` 4 decimals (``f2`` 2), else 4 significant digits; a dash for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "e":
        return f"{value:.3e}"
    if kind == "f2":
        return f"{value:.2f}"
    if kind == "f":
        return f"{value:.4f}"
    return f"{value:.4g}"


def cell_text(value: Any, kind: str = "g") -> str:
    """A table cell's text: whole numbers with thousands separators, else :func:`number_text`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return number_text(value, kind)


def cell_value(value: Any) -> str:
    """A cell's full-precision value (its ``data-value``)."""
    return "" if value is None else repr(value)


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` passes here before autoescaping: escaped as ``html.escape`` does
    (``&quot;``, ``&#x27;``), the entities the report has always had, so its text can be
    searched for with ``html.escape``; markup from macros passes unchanged."""
    from markupsafe import Markup

    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value), quote=True))


@cache
def environment():
    """The Jinja2 environment of the report's templates (autoescaping on)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("longattn_spark.report", "templates"),
                      autoescape=True, finalize=_finalize, trim_blocks=True,
                      lstrip_blocks=True, undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters.update({
        "num": number_text, "shown": cell_text, "raw": cell_value, "fmt": format,
        "label": category_label,
        "b64": lambda png: base64.b64encode(png).decode("ascii")})
    return env


def figures(data: ReportData) -> dict[str, bytes]:
    """The PNGs the report shows, by name (only those its sections draw)."""
    out: dict[str, bytes] = {}
    if data.histograms:
        out["paper_comparison"] = plots.plot_paper_comparison(data.stats)
        out["score_distributions"] = plots.plot_score_distributions(data.stats,
                                                                    data.histograms)
    if data.inputs.selection_id:
        method = str(data.inputs.selection_params.get("method") or "lds")
        out["lds_histograms"] = plots.plot_lds_histograms(data.lds, data.counts, method)
        out["selected_per_category"] = plots.plot_selected_per_category(data.counts)
        out["ds_variance_scatter"] = plots.plot_ds_variance_scatter(data.sample)
    if data.profile is not None:
        out["distance_profile"] = plots.plot_distance_profile(data.profile)
    for index, probe in enumerate(data.probes):
        from longattn_spark.probe.report import plot_distributions

        kinds = probe.record.get("kinds", [])
        anchor = probe_anchor(index)
        out[f"{anchor}:selection"] = plot_distributions(probe.selection_scores, kinds,
                                                        "selection score")
        if probe.ds:
            out[f"{anchor}:ds"] = plot_distributions(probe.ds, kinds, "DS")
    if data.comparison is not None:
        from longattn_spark.compare import plot_scatter

        out["comparison_scatter"] = plot_scatter(data.comparison)
    return out


def selection_parameters(params: dict[str, Any]) -> str:
    """One line with a selection's method, normalization, alpha and cut."""
    p = params
    cut = (f"keep-fraction {p.get('keep_fraction')}" if p.get("keep_fraction") else
           f"token-budget {p.get('token_budget')}" if p.get("token_budget") else "")
    if p.get("min_lds") is not None:
        cut += f" min-lds {p.get('min_lds')}"
    return (f"method {p.get('method')}, normalize {p.get('normalize')}, alpha {p.get('alpha')}, "
            f"{cut.strip()}")


def rank_formula(params: dict[str, Any]) -> str:
    """What the selection ranked by: its recipe's rank (and filters), else LongAttn's LDS as
    earlier releases' selections (no recipe recorded) ranked."""
    recipe = params.get("recipe")
    if isinstance(recipe, dict) and recipe.get("text"):
        import yaml

        try:
            data = yaml.safe_load(recipe["text"]) or {}
        except yaml.YAMLError:
            data = {}
        rank = data.get("rank") if isinstance(data, dict) else None
        where = data.get("where") if isinstance(data, dict) else None
        if rank:
            kept = f", among the windows where {' and '.join(where)}" if where else ""
            return f"rank = {rank} (recipe {recipe.get('name')}{kept})"
    if isinstance(recipe, dict) and not recipe.get("text") and recipe.get("property"):
        # the rows name a table property the selection table no longer holds
        return (f"rank of recipe {recipe.get('name')} (sha256 "
                f"{str(recipe.get('sha256'))[:12]}); its text is missing from the selection "
                f"table (table property {recipe['property']})")
    return ("LDS = z(DS) + α·z(DU), z within the category, DU = −variance"
            if params.get("normalize") != "minmax"
            else "LDS = minmax(DS) − α·minmax(variance)")


def render_html(data: ReportData) -> str:
    """The whole report as one HTML document."""
    i = data.inputs
    params = dict(i.selection_params)
    total = next((s for s in data.stats if s.is_total), None)
    method = str(params.get("method") or "lds")
    context = {
        "data": data,
        "summary": report_summary(data),
        "figures": figures(data),
        "stat_columns": STAT_COLUMNS,
        "paper_table": PAPER_TABLE10,
        "paper_note": paper_comparison_note(total, i.seq_len),
        "other_scorers": [s for s in sorted(i.scorers) if s != i.scorer_id]
        if len(i.scorers) > 1 else [],
        "selection_parameters": selection_parameters(params),
        "no_selection_reason": " ".join(i.notes) or "No selection.",
        "lds_formula": rank_formula(params),
        "has_ds": any(s.mean_ds is not None for s in data.stats),
        "random_note": (" This is the random baseline: kept windows are drawn by a seeded "
                        "hash, so there is no LDS cut line." if method == "random" else ""),
    }
    return environment().get_template("report.html.j2").render(context)
