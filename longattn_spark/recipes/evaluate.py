"""A checked expression (``recipes.expr``) evaluated with numpy over collected rows: the
probe's ranks (a few thousand rows on the driver), and the reference the Spark path is
tested against. Pure: no Spark.

Nulls are NaN. Booleans are 1.0 / 0.0, NaN for unknown, with SQL's three-valued ``and`` /
``or`` / ``not`` (as Spark evaluates a filter). ``a / b`` is null when b is 0, ``ln(e)`` when
e <= 0; ``least`` / ``greatest`` skip nulls, as Spark's do.

Category statistics (``z``, ``pct``, ``minmax``) are taken per category over the
*reference* rows (``reference``: in select, the usable windows; in the probe, the natural
windows) whose argument is finite, and applied to every row.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from longattn_spark.recipes.expr import (
    Binary,
    Call,
    Component,
    Expression,
    Node,
    Num,
    Param,
    Unary,
)


def evaluate(expression: Expression, columns: Mapping[str, np.ndarray],
             categories: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """The value of ``expression`` for every row (float64; NaN: null; booleans 1/0/NaN).

    ``columns``: ``Component.key`` -> float values per row; ``categories``: each row's
    category; ``reference``: the rows the category statistics are taken over (default:
    every row)."""
    categories = np.asarray(categories, dtype=object)
    rows = len(categories)
    reference = np.ones(rows, dtype=bool) if reference is None else np.asarray(reference, bool)
    return _value(expression.tree, columns, categories, reference, rows)


def passes(values: np.ndarray) -> np.ndarray:
    """A filter's verdict per row: true only where the value is true (not false or null)."""
    return np.asarray(values) == 1.0


def _value(node: Node, columns: Mapping[str, np.ndarray], categories: np.ndarray,
           reference: np.ndarray, rows: int) -> np.ndarray:
    def of(child: Node) -> np.ndarray:
        return _value(child, columns, categories, reference, rows)

    if isinstance(node, Num | Param):
        return np.full(rows, node.value, dtype=np.float64)
    if isinstance(node, Component):
        return np.asarray(columns[node.key], dtype=np.float64)
    if isinstance(node, Unary):
        x = of(node.operand)
        return 1.0 - x if node.op == "not" else -x
    if isinstance(node, Binary):
        return _binary(node.op, of(node.left), of(node.right))
    if isinstance(node, Call):
        args = [of(a) for a in node.args]
        return _call(node.function, args, categories, reference)
    raise AssertionError(f"unresolved node {node!r}")


def _binary(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    unknown = np.isnan(a) | np.isnan(b)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return np.where(b == 0, np.nan, a / np.where(b == 0, 1.0, b))
        if op == "and":
            return np.where((a == 0) | (b == 0), 0.0, np.where(unknown, np.nan, 1.0))
        if op == "or":
            return np.where((a == 1) | (b == 1), 1.0, np.where(unknown, np.nan, 0.0))
        compare = {"<": np.less, "<=": np.less_equal, ">": np.greater,
                   ">=": np.greater_equal, "==": np.equal, "!=": np.not_equal}[op]
        return np.where(unknown, np.nan, compare(a, b).astype(np.float64))


def _call(function: str, args: list[np.ndarray], categories: np.ndarray,
          reference: np.ndarray) -> np.ndarray:
    if function == "abs":
        return np.abs(args[0])
    if function == "ln":
        x = args[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), np.nan)
    if function == "least":
        return _skip_nulls(np.fmin, args)
    if function == "greatest":
        return _skip_nulls(np.fmax, args)
    return category_statistic(function, args[0], categories, reference)


def _skip_nulls(combine, args: list[np.ndarray]) -> np.ndarray:
    out = args[0]
    for a in args[1:]:
        out = combine(out, a)
    return out


def category_statistic(function: str, x: np.ndarray, categories: np.ndarray,
                       reference: np.ndarray) -> np.ndarray:
    """``z``, ``pct`` or ``minmax`` of ``x`` within each row's category (module docstring);
    null where x is null or the category has no finite reference value."""
    out = np.full(x.shape, np.nan, dtype=np.float64)
    for category in dict.fromkeys(categories.tolist()):
        rows = categories == category
        ref = x[rows & reference]
        ref = np.sort(ref[np.isfinite(ref)])
        if ref.size == 0:
            continue
        values = x[rows]
        # without spread in the reference, every reference row is 0 (as in select, where
        # the reference is every row) and any other row keeps its distance from that value:
        # a probe's controls still rank against natural windows that all scored the same
        if function == "z":
            sd = float(np.std(ref, ddof=1)) if ref.size > 1 else float("nan")
            result = (values - ref.mean()) / sd if sd > 0 else values - ref[0]
        elif function == "minmax":
            spread = ref[-1] - ref[0]
            result = (values - ref[0]) / spread if spread > 0 else values - ref[0]
        else:
            below = np.searchsorted(ref, values, side="left")
            upto = np.searchsorted(ref, values, side="right")
            result = (below + 0.5 * (upto - below)) / ref.size
        out[rows] = np.where(np.isfinite(values), result, np.nan)
    return out
