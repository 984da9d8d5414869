"""A checked expression (``recipes.expr``) as Spark Column expressions, never as SQL text.

The rows it is evaluated over hold one column per component (``component_columns`` names
them) and a ``category``. Category statistics need the category's values first:

- ``z`` and ``minmax``: one grouped aggregate over the reference rows (mean and sample
  standard deviation, or min and max, of each statistic's argument where it is not null or
  NaN), collected to the driver (a few numbers per category) and joined back by broadcast, as
  select's LDS statistics always were: no category is gathered into one task.
- ``pct``: the mid-rank percentile needs each value's rank among its category's: window
  functions over (category) ordered by the argument. This does gather a category into one
  task's sort; prefer ``z`` or a fixed threshold on large categories.

Semantics are those of ``recipes.evaluate`` (the numpy reference): ``a / b`` and ``ln`` give
null instead of an error (``try_divide``; ``ln`` only of positive values), ``least`` /
``greatest`` skip nulls, and a statistic is null where its argument is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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

_BINARY = {"+": "__add__", "-": "__sub__", "*": "__mul__", "<": "__lt__", "<=": "__le__",
           ">": "__gt__", ">=": "__ge__", "==": "__eq__", "!=": "__ne__", "and": "__and__",
           "or": "__or__"}


def component_columns(components: Sequence[Component]) -> dict[Component, str]:
    """A plain column name for each component (``c0``, ``c1``, ...), in the order given."""
    return {c: f"c{i}" for i, c in enumerate(dict.fromkeys(components))}


@dataclass(frozen=True)
class Statistics:
    """The category statistics of some expressions: each statistic's column names in the
    joined statistics frame (``z``: mean, sd; ``minmax``: min, max; ``pct``: the window
    columns added to the rows)."""

    columns: dict[Call, tuple[str, ...]]

    @classmethod
    def of(cls, expressions: Sequence[Expression]) -> Statistics:
        calls = dict.fromkeys(c for e in expressions for c in e.statistics)
        columns: dict[Call, tuple[str, ...]] = {}
        for i, call in enumerate(calls):
            if call.function == "z":
                columns[call] = (f"s{i}_mean", f"s{i}_sd")
            elif call.function == "minmax":
                columns[call] = (f"s{i}_min", f"s{i}_max")
            else:
                columns[call] = (f"s{i}_below", f"s{i}_ties", f"s{i}_n")
        return cls(columns)

    def aggregates(self, names: Mapping[Component, str], reference) -> list:
        """The grouped aggregates (z, minmax) over the reference rows (a boolean Column)."""
        from pyspark.sql import functions as F

        out = []
        for call, (a, b) in ((c, n) for c, n in self.columns.items() if c.function != "pct"):
            value = column(call.args[0], names, self)
            kept = F.when(reference & value.isNotNull() & ~F.isnan(value), value)
            if call.function == "z":
                out += [F.avg(kept).alias(a), F.stddev_samp(kept).alias(b)]
            else:
                out += [F.min(kept).alias(a), F.max(kept).alias(b)]
        return out

    def with_percentiles(self, frame, names: Mapping[Component, str], reference, category="category"):
        """``frame`` with the window columns every ``pct`` needs (rows outside the reference
        get nulls there)."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        for call, names_ in self.columns.items():
            if call.function != "pct":
                continue
            below, ties, count = names_
            value = column(call.args[0], names, self)
            inside = reference & value.isNotNull() & ~F.isnan(value)
            key = "_pct_in"
            frame = frame.withColumn(key, inside).withColumn("_pct_v", value)
            group = Window.partitionBy(category, key)
            frame = (frame
                     .withColumn(below, F.rank().over(group.orderBy("_pct_v")) - 1)
                     .withColumn(ties, F.count(F.lit(1)).over(
                         Window.partitionBy(category, key, "_pct_v")))
                     .withColumn(count, F.count(F.lit(1)).over(group))
                     .withColumn(below, F.when(F.col(key), F.col(below)))
                     .drop(key, "_pct_v"))
        return frame


def column(node: Node, names: Mapping[Component, str], stats: Statistics | None = None) -> Any:
    """The Spark Column of a resolved tree: components by ``names``, statistics by the columns
    of ``stats`` (joined to the rows beforehand)."""
    from pyspark.sql import functions as F

    def of(child: Node) -> Any:
        return column(child, names, stats)

    if isinstance(node, Num | Param):
        return F.lit(float(node.value))
    if isinstance(node, Component):
        return F.col(names[node])
    if isinstance(node, Unary):
        return ~of(node.operand) if node.op == "not" else -of(node.operand)
    if isinstance(node, Binary):
        if node.op == "/":
            return F.try_divide(of(node.left), of(node.right))
        return getattr(of(node.left), _BINARY[node.op])(of(node.right))
    if isinstance(node, Call):
        args = [of(a) for a in node.args]
        if node.function == "abs":
            return F.abs(args[0])
        if node.function == "ln":
            return F.when(args[0] > 0, F.ln(args[0]))
        if node.function in ("least", "greatest"):
            return getattr(F, node.function)(*args)
        if stats is None or node not in stats.columns:
            raise ValueError(f"{node.function}() needs the category statistics joined")
        return _statistic(node.function, args[0], stats.columns[node])
    raise AssertionError(f"unresolved node {node!r}")


def _statistic(function: str, x: Any, names: tuple[str, ...]) -> Any:
    from pyspark.sql import functions as F

    known = x.isNotNull() & ~F.isnan(x)
    if function == "z":
        mean, sd = (F.col(n) for n in names)
        return F.when(known, F.when(sd > 0, (x - mean) / sd).otherwise(F.lit(0.0)))
    if function == "minmax":
        low, high = (F.col(n) for n in names)
        return F.when(known, F.when(high > low, (x - low) / (high - low))
                      .otherwise(F.lit(0.0)))
    below, ties, count = (F.col(n) for n in names)
    return F.when(known & below.isNotNull(), (below + F.lit(0.5) * ties) / count)
