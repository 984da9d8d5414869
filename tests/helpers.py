"""What several test modules share: counting the Spark jobs an action starts, score options
with a method's own options among them, a number of a job's printed summary, the LDS computed
independently of the product (pandas), as the paper defines it, and a windows table ingested
from standard-library modules."""

from __future__ import annotations

import itertools
import json
import re
import sysconfig
from collections.abc import Sequence
from pathlib import Path

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


def summary_number(printed: str, label: str) -> int:
    """A number of a job's printed summary (a rich table row: ``│ label │ 1,234 │``)."""
    found = re.search(rf"│ {re.escape(label)}\s*│\s*([\d,]+)", printed)
    assert found, f"no '{label}' in the summary:\n{printed[-3000:]}"
    return int(found.group(1).replace(",", ""))


def with_options(cfg, **overrides):
    """``cfg`` (a ``ScoreConfig``) with ``overrides``: its own fields replaced, any other name
    a method option (``layer=3`` -> ``options={"layer": 3}``)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cfg)}
    options = {**cfg.options, **{k: v for k, v in overrides.items() if k not in fields}}
    return dataclasses.replace(cfg, options=options,
                               **{k: v for k, v in overrides.items() if k in fields})


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


def ingest_stdlib_modules(spark, root: Path, tokenizer_dir: Path, modules: Sequence[str], *,
                          window_size: int, chars: int, categories: Sequence[str] = ("code",)):
    """Standard-library modules as documents (the first ``chars`` characters of each, in
    category ``categories[i % len(categories)]``), ingested for real into ``root/windows``
    as windows of ``window_size`` tokens: (the table's path, the ingest summary)."""
    from longattn_spark.config import IngestConfig
    from longattn_spark.ingest import ingest
    from longattn_spark.tokenizer import load_tokenizer_spec

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = root / "docs.jsonl"
    with source.open("w") as f:
        for i, name in enumerate(modules):
            f.write(json.dumps({"id": name, "text": (stdlib / name).read_text()[:chars],
                                "category": categories[i % len(categories)]}) + "\n")
    table = str(root / "windows")
    summary = ingest(spark, IngestConfig(input=str(source), tokenizer=str(tokenizer_dir),
                                         window_size=window_size, table=table, partitions=2),
                     load_tokenizer_spec(tokenizer_dir))
    return table, summary
