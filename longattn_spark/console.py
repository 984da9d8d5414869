"""How every stage reports what a run did: one shape (``StageRun``: counts, seconds, seconds
per step, then rates and checks), printed the same way (one two-column table), and one step
timer (``StepTimer``) that fills the per-step seconds."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class StageRun:
    """What one run of a stage did, in the shape every stage prints."""

    title: str
    counts: list[tuple[str, str]]
    seconds: float
    step_seconds: dict[str, float] = field(default_factory=dict)
    #: rows after the times: rates (``tokens/s``) and checks (``accounted``)
    after: list[tuple[str, str]] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        return [*self.counts, ("seconds", f"{self.seconds:.1f}"),
                *[(f"  {name}", f"{s:.1f}") for name, s in self.step_seconds.items()],
                *self.after]


@contextmanager
def step(name: str) -> Iterator[dict[str, float]]:
    """Times one step; the dict yielded is ``{name: seconds}`` once the block ends."""
    timing: dict[str, float] = {}
    started = time.perf_counter()
    try:
        yield timing
    finally:
        timing[name] = time.perf_counter() - started


class StepTimer:
    """Seconds per named step of a run, and in all: ``with timer.step("write"): ...``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.step_seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def mark(self, name: str | None) -> None:
        """End the step running now (if any) and start ``name`` (None: start nothing), for
        stages that report their progress as a sequence of named steps."""
        now = time.perf_counter()
        if self._current is not None:
            label, since = self._current
            self.step_seconds[label] = self.step_seconds.get(label, 0.0) + now - since
        self._current = (name, now) if name else None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        with step(name) as timing:
            yield
        self.step_seconds[name] = self.step_seconds.get(name, 0.0) + timing[name]

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def print_run(run: StageRun) -> None:
    """Print ``run`` as every stage does."""
    print_rows(run.title, run.rows())


def print_rows(title: str, rows: Iterable[tuple[str, str]]) -> None:
    """Print ``title`` on its own line (never wrapped by rich: a table path in it stays whole)
    and ``rows`` under it as a table without a header (rich)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False)
    for name, value in rows:
        table.add_row(name, value)
    console = make_console()
    console.print(Text(title, style="table.title"), soft_wrap=True)
    console.print(table)


#: Width of the summaries when stdout is not a terminal (a log file, a pipe, a cluster's
#: driver log) and COLUMNS does not say: rich's 80 would break paths in the middle.
LOG_WIDTH = 200


def console_width(is_terminal: bool, environ: Mapping[str, str]) -> int | None:
    """The width to print at: COLUMNS when set, else None (rich asks the terminal) on a
    terminal, else ``LOG_WIDTH``."""
    columns = environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if is_terminal else LOG_WIDTH


def make_console(file: IO[str] | None = None) -> Console:
    """A rich console on ``file`` (stdout) at ``console_width``: what every summary prints
    through."""
    from rich.console import Console

    console = Console(file=file)
    return Console(file=file, width=console_width(console.is_terminal, os.environ))
