"""How the jobs print what a run did: one two-column table (name, value), the same for every
stage (``ingest``, ``score``)."""

from __future__ import annotations

from collections.abc import Iterable


def print_rows(title: str, rows: Iterable[tuple[str, str]]) -> None:
    """Print ``rows`` under ``title`` as a table without a header (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
