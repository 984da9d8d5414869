"""The package's SQL statements: ``longattn_spark/sql/<stage>_<name>.sql``.

Each file is readable and runnable on its own in a SQL editor: named parameters such as
``:scorer_id`` and ``IDENTIFIER(:scores)`` for tables, so nothing user-given is pasted into
SQL text. The prefix names the stage that runs it (``select_``, ``report_``, ``compare_``,
``export_``); ``category_stats`` and ``select_summary`` are shared by select and report.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load_sql(name: str) -> str:
    """The text of ``longattn_spark/sql/<name>.sql``."""
    return resources.files("longattn_spark").joinpath("sql", f"{name}.sql").read_text()
