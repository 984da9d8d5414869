"""A recipe's ranking of probe rows (pure: numpy, no Spark): its filters and rank evaluated
over the rows' components (``probe.components``: every scorer's components, qualified by the
scorer's name), with the category statistics (``z``, ``pct``, ``minmax``) taken over each
category's *natural* windows, as select takes them over the windows it selects from. A
control is scored against the natural distribution it is meant to be told apart from.

A row that fails a filter ranks last (``FILTERED``, below every ranked row; two such rows
tie), which is what a selection does with it: it never keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from longattn_spark.recipes.evaluate import evaluate, passes
from longattn_spark.recipes.expr import BOOLEAN, NUMBER, Expression, compile_expression

NATURAL = "natural"
#: the rank of a row that failed a filter: below every finite rank
FILTERED = -1e308


def components_by_scorer(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Scorer name -> its component names, from the qualified keys of the rows' maps."""
    found: dict[str, dict[str, None]] = {}
    for row in rows:
        for key in row.get("components") or {}:
            scorer, _, name = key.partition(".")
            found.setdefault(scorer, {})[name] = None
    return {scorer: list(names) for scorer, names in found.items()}


def rank_rows(rows: Sequence[Mapping[str, Any]], rank: Expression,
              where: Sequence[Expression] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(rank, passed) per row: the expression's value (NaN where it has none) and whether
    the row passed every filter."""
    keys = {c.key for e in (rank, *where) for c in e.components}
    columns = {key: np.array([_value((r.get("components") or {}).get(key)) for r in rows],
                             dtype=np.float64) for key in keys}
    categories = np.array([r["category"] for r in rows], dtype=object)
    natural = np.array([r["kind"] == NATURAL for r in rows], dtype=bool)
    values = evaluate(rank, columns, categories, natural)
    passed = np.ones(len(rows), dtype=bool)
    for expression in where:
        passed &= passes(evaluate(expression, columns, categories, natural))
    return values, passed


def ranked_for_auc(values: np.ndarray, passed: np.ndarray) -> np.ndarray:
    """The value an AUC compares: the rank where the row passed, ``FILTERED`` where not."""
    return np.where(passed, values, FILTERED)


def compile_for_rows(rows: Sequence[Mapping[str, Any]], rank: str, where: Sequence[str],
                     params: Mapping[str, float] | None = None
                     ) -> tuple[Expression, tuple[Expression, ...]]:
    """``--rank`` / ``--where`` of ``probe`` checked against the components a probe table's
    rows hold (one line naming an unknown one, before anything is computed)."""
    components = components_by_scorer(rows)
    expression = compile_expression(rank, components, params, want=NUMBER, where="--rank")
    filters = tuple(compile_expression(text, components, params, want=BOOLEAN,
                                       where="--where") for text in where)
    return expression, filters


def _value(value: Any) -> float:
    return np.nan if value is None else float(value)
