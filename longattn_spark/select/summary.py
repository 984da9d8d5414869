"""What a select run did, as printed: the per-category summary of the written selection
(:class:`~longattn_spark.stats.CategorySummary`, with each category's token budget) and
remarks on it. Pure: the rows come from :func:`longattn_spark.select.queries.read_summary`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from longattn_spark.select.cut import SelectOptions, token_budgets
from longattn_spark.stats import CategorySummary, category_summaries


@dataclass(frozen=True)
class SelectionResult:
    """What a select run did; ``message`` explains a run that selected nothing."""

    selection_id: str | None
    table: str
    scorer_id: str | None
    windows_version: int | None
    scores_version: int | None
    options: SelectOptions
    written: bool
    categories: tuple[CategorySummary, ...] = ()
    notes: tuple[str, ...] = ()
    message: str = ""
    recipe: str = ""


def with_budgets(summaries: Iterable[CategorySummary], options: SelectOptions
                 ) -> tuple[CategorySummary, ...]:
    """The summaries with the token budget each category had (none without --token-budget)."""
    summaries = tuple(summaries)
    if not options.token_budget:
        return summaries
    budgets = token_budgets(options, {c.category: c.usable_tokens for c in summaries
                                      if c.category is not None})
    return tuple(dataclasses.replace(c, budget=budgets.get(c.category)) for c in summaries)


def summaries_from_rows(rows: Iterable[Mapping[str, Any]], options: SelectOptions
                        ) -> tuple[CategorySummary, ...]:
    """Fold ``select_summary.sql`` rows (per category and exclusion reason) into one summary
    per category, with the token budget each category had."""
    return with_budgets(category_summaries(rows), options)


def summary_notes(options: SelectOptions, categories: Iterable[CategorySummary]) -> tuple[str, ...]:
    """Human-readable remarks: budgets larger than the data, categories left out by --mix,
    scores that could not be ranked."""
    cats = list(categories)
    notes = []
    usable = sum(c.usable_tokens for c in cats)
    if options.token_budget and options.token_budget > usable:
        notes.append(f"token budget {options.token_budget:,} exceeds the {usable:,} usable "
                     "tokens: took all of them")
    for c in cats:
        if c.budget is not None and c.budget >= c.usable_tokens and c.usable_tokens > 0:
            notes.append(f"{c.category}: budget {c.budget:,} tokens >= its {c.usable_tokens:,} "
                         "usable tokens: took all")
    if options.mix:
        named = dict(options.mix)
        left_out = [str(c.category) for c in cats if c.category not in named and c.usable]
        if left_out:
            notes.append(f"not in --mix, so nothing selected: {', '.join(left_out)}")
    excluded: dict[str, int] = {}
    for c in cats:
        for reason, n in c.excluded.items():
            excluded[reason] = excluded.get(reason, 0) + n
    if excluded:
        detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(excluded.items()))
        notes.append(f"{sum(excluded.values())} scores could not be ranked ({detail}); they are "
                     "in the selection table with selected = false and lds = null")
    return tuple(notes)


def format_summary(result: SelectionResult) -> str:
    """The summary printed by the select job."""
    if not result.categories:
        return result.message
    opts = result.options
    cut = (f"keep-fraction {opts.keep_fraction:g}" if opts.keep_fraction else
           f"token-budget {opts.token_budget:,}" if opts.token_budget else "")
    if opts.min_lds is not None:
        cut = f"{cut}, min-lds {opts.min_lds:g}" if cut else f"min-lds {opts.min_lds:g}"
    state = "written to" if result.written else "already in"
    heads = f", heads {','.join(map(str, opts.heads))}" if opts.heads else ""
    recipe = f"recipe {result.recipe}, " if result.recipe else ""
    inputs = (f"  {recipe}scorer {result.scorer_id}{heads}, windows v{result.windows_version}, "
              f"scores v{result.scores_version}; {opts.method}, {opts.normalize}, "
              f"alpha {opts.alpha:g}, {cut}")
    lines = [f"selection {result.selection_id} {state} {result.table}", inputs]
    header = (f"  {'category':<16}{'windows':>10}{'excluded':>10}{'selected':>10}"
              f"{'tokens selected':>18}{'budget':>16}{'cut (min rank)':>15}")
    lines.append(header)
    for c in result.categories:
        budget = f"{c.budget:,}" if c.budget is not None else "-"
        cut_lds = f"{c.cut_lds:.6g}" if c.cut_lds is not None else "-"
        lines.append(f"  {c.category!s:<16}{c.windows:>10,}{sum(c.excluded.values()):>10,}"
                     f"{c.selected:>10,}{c.tokens_selected:>18,}{budget:>16}{cut_lds:>15}")
    total_windows = sum(c.windows for c in result.categories)
    lines.append(f"  {'total':<16}{total_windows:>10,}"
                 f"{sum(sum(c.excluded.values()) for c in result.categories):>10,}"
                 f"{sum(c.selected for c in result.categories):>10,}"
                 f"{sum(c.tokens_selected for c in result.categories):>18,}")
    if opts.method == "random":
        lines.append("  (random baseline: the cut column shows the smallest rank drawn)")
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)
