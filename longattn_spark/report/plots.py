"""The report's figures: pure functions from the report's data (plain dataclasses) to PNG
bytes, drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

from longattn_spark.figures import category_panels, figure_png, new_figure
from longattn_spark.report.data import (
    DS,
    LOG10_VARIANCE,
    PAPER_DS_MEAN,
    PAPER_DS_RANGE,
    PAPER_TABLE10,
    PAPER_VARIANCE_RANGE,
    Histogram,
    LdsHistogram,
    ProfileResult,
    SamplePoint,
)
from longattn_spark.stats import CategoryStats, CategorySummary, category_label, category_order

KEPT_COLOR = "#2e7d32"
REST_COLOR = "#b0b7c3"
PAPER_COLOR = "#f59e0b"
CUT_COLOR = "#c62828"


def _bars(ax, edges: Sequence[float], counts: Sequence[int], bottom=None, **style) -> None:
    widths = [b - a for a, b in pairwise(edges)]
    ax.bar(edges[:-1], counts, width=widths, align="edge", bottom=bottom, linewidth=0, **style)


def plot_score_distributions(stats: Sequence[CategoryStats],
                             histograms: Mapping[str | None, Mapping[str, Histogram]]) -> bytes:
    """DS and log10(variance) histograms, one row per category, bins shared by a column."""
    categories = [s for s in stats if not s.is_total and s.category in histograms]
    fig = new_figure(11, 0.8 + 1.9 * max(len(categories), 1))
    if not categories:
        fig.text(0.5, 0.5, "no finite scores", ha="center")
        return figure_png(fig)
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
    return figure_png(fig)


def plot_paper_comparison(stats: Sequence[CategoryStats]) -> bytes:
    """Per category, the min–max range and mean of DS and variance next to the paper's
    Table 10 range and mean for that category (arxiv, book, code) or for all categories."""
    rows = [s for s in stats if s.mean_ds is not None]
    fig = new_figure(11, 1.0 + 0.55 * max(len(rows), 2))
    if not rows:
        fig.text(0.5, 0.5, "no finite scores", ha="center")
        return figure_png(fig)
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
    return figure_png(fig)


def plot_lds_histograms(lds: Mapping[str | None, LdsHistogram],
                        counts: Sequence[CategorySummary] = (), method: str = "lds") -> bytes:
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
    return figure_png(fig)


def plot_selected_per_category(counts: Sequence[CategorySummary]) -> bytes:
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
    return figure_png(fig)


def plot_ds_variance_scatter(sample: Sequence[SamplePoint]) -> bytes:
    """DS against variance (log scale) of the sampled windows, one panel per category, kept
    windows in green: the LDS cut is a boundary in this plane."""
    from matplotlib.ticker import MaxNLocator

    categories = sorted({p.category for p in sample}, key=category_order)
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
    return figure_png(fig)


def plot_distance_profile(profile: ProfileResult) -> bytes:
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
    return figure_png(fig)
