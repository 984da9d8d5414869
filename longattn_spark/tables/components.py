"""The components of scores rows, as Spark Columns: the ``components`` map every row holds
since that column exists, and for rows written before it, the same numbers read from the
typed columns of their method (``ds``, ``variance``, ``score`` and the numeric fields of the
``prolong`` and ``lossgain`` structs: the names those methods declare as components). Readers
(select, probe, compare, report) go through ``components_map`` and never name a method.

Why one map column rather than a struct per method: a new method (a plugin included) writes
its components without a schema change, so no ``ALTER TABLE`` races the concurrent writers
of one scores table (Delta refuses a commit whose table metadata changed under it), and a
Spark Connect client or a Unity Catalog table needs no schema evolution; SQL reads a
component as ``components['dependency_gain']``. The cost: components are doubles (counts are
stored as doubles; text such as ProLong's ``reason`` stays in its typed column) and Delta keeps
no per-component min/max statistics for data skipping.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from longattn_spark.tables.schemas import SCORES

_NUMBERS = (T.DoubleType, T.FloatType, T.IntegerType, T.LongType)


def legacy_pairs(frame: DataFrame) -> list[tuple[str, Any]]:
    """(component name, Column) for every number a row of an earlier release held in a typed
    column of the scores table: top-level doubles by their name, struct fields by theirs."""
    present = {c.lower() for c in frame.columns}
    pairs: list[tuple[str, Any]] = []
    for field in SCORES.schema.fields:
        if field.name.lower() not in present or field.name == "components":
            continue
        if isinstance(field.dataType, T.DoubleType):
            pairs.append((field.name, F.col(field.name)))
        elif isinstance(field.dataType, T.StructType):
            pairs += [(sub.name, F.col(field.name).getField(sub.name).cast("double"))
                      for sub in field.dataType.fields if isinstance(sub.dataType, _NUMBERS)]
    return pairs


def components_map(frame: DataFrame) -> Any:
    """A row's components (map<string, double>): its ``components`` column, else (a row of
    an earlier release, or a table version without the column) its typed columns as a map
    of the non-null ones."""
    pairs = legacy_pairs(frame)
    legacy = F.map_filter(
        F.create_map(*[x for name, column in pairs for x in (F.lit(name), column)]),
        lambda _k, v: v.isNotNull()) if pairs else F.create_map().cast(
        "map<string,double>")
    if "components" in {c.lower() for c in frame.columns}:
        return F.coalesce(F.col("components"), legacy)
    return legacy


def component(components: Any, name: str) -> Any:
    """One component of a components map (null when the row lacks it)."""
    return F.try_element_at(components, F.lit(name))
