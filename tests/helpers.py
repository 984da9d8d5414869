"""What several test modules share: counting the Spark jobs an action starts, and the LDS
computed independently of the product (pandas), as the paper defines it."""

from __future__ import annotations

import itertools

import pandas as pd

_GROUPS = itertools.count()


def spark_jobs_in(spark, action) -> list[int]:
    """The Spark jobs that ``action()`` started (its exception propagates after counting), to
    check that bad input fails before any Spark job."""
    group = f"jobs-of-{id(action)}-{next(_GROUPS)}"
    spark.sparkContext.setJobGroup(group, group)
    try:
        action()
    finally:
        jobs = list(spark.sparkContext.statusTracker().getJobIdsForGroup(group))
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    return jobs


def lds_reference(frame: pd.DataFrame, alpha: float = 0.5,
                  reference: pd.DataFrame | None = None) -> pd.Series:
    """LDS = z(DS) + alpha * z(DU) per row of ``frame`` (columns ``category``, ``ds``,
    ``variance``; DU = -variance), z with the mean and sample standard deviation of the row's
    category in ``reference`` (default: ``frame`` itself; the probe: its natural windows)."""
    reference = frame if reference is None else reference
    stats = reference.groupby("category")[["ds", "variance"]].agg(["mean", "std"])
    per_row = stats.loc[frame["category"]].set_index(frame.index)
    z_ds = (frame["ds"] - per_row[("ds", "mean")]) / per_row[("ds", "std")]
    z_du = (per_row[("variance", "mean")] - frame["variance"]) / per_row[("variance", "std")]
    return z_ds + alpha * z_du
