"""The figures' canvas, shared by the report (``report.plots``), the probe's section
(``probe.report``) and anything else that draws: matplotlib's object API on the Agg canvas (no
pyplot state, no display), a figure with one panel per category, and PNG bytes out."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence


def new_figure(width: float, height: float):
    """A matplotlib Figure drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    """PNG bytes of a figure (PNG bytes, as the ``plot_*`` functions return, pass through)."""
    if isinstance(fig, bytes):
        return fig
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


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
