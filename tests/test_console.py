"""Run summaries in logs: when stdout is not a terminal they are printed at COLUMNS or a wide
default, and a table path in a title is never broken in the middle."""

from __future__ import annotations

import pytest

from longattn_spark.console import LOG_WIDTH, StageRun, console_width, print_run

LONG_PATH = "/work/some/rather/deeply/nested/lakehouse/folder/demo_output/tables/selection"


@pytest.mark.parametrize(("is_terminal", "environ", "width"), [
    (False, {}, LOG_WIDTH),
    (False, {"COLUMNS": "132"}, 132),
    (False, {"COLUMNS": "not-a-number"}, LOG_WIDTH),
    (False, {"COLUMNS": "0"}, LOG_WIDTH),
    (True, {}, None),  # a terminal: rich asks it
    (True, {"COLUMNS": "100"}, 100),
])
def test_console_width(is_terminal, environ, width):
    assert console_width(is_terminal, environ) == width


def summary() -> StageRun:
    return StageRun(title=f"selection {LONG_PATH}",
                    counts=[("windows", "12"), ("input", f"{LONG_PATH}/../windows" * 2)],
                    seconds=3.25, step_seconds={"write": 1.5})


def test_summary_in_a_log_keeps_paths_whole(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    print_run(summary())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"selection {LONG_PATH}"  # the title, whole, on one line
    assert any(f"{LONG_PATH}/../windows" * 2 in line for line in lines)  # a long value too
    assert any("│ seconds " in line and "3.2" in line for line in lines)
    assert max(map(len, lines)) > 80


def test_summary_follows_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "90")
    print_run(summary())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"selection {LONG_PATH}"  # titles are not wrapped, ever
    assert max(len(line) for line in lines[1:]) <= 90  # the table fits COLUMNS
    assert any("windows" in line and "12" in line for line in lines)
