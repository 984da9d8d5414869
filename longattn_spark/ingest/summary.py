"""What an ingest run did (counted per commit chunk and added up), the check that every
document read is accounted for, and how the summary prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from longattn_spark.config import IngestConfig
from longattn_spark.console import StageRun, print_run
from longattn_spark.errors import AccountingError
from longattn_spark.ingest.udf import CHANGED_TEXT


@dataclass
class IngestSummary:
    """What one ingest run did.

    ``documents_read`` is counted from the source itself (lines, files, rows), independently
    of the per-document status rows that the tokenizing UDF emits (``status_rows``); the run is
    ``accounted`` only when the two agree and every status row is windowed, too short,
    rejected or already ingested."""

    documents_read: int = 0
    status_rows: int = 0
    windowed: int = 0
    too_short: int = 0
    already_ingested: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    tokens: int = 0
    window_tokens: int = 0
    windows_inserted: int = 0
    rejects_inserted: int = 0
    replaced: int = 0
    stale_rows_deleted: int = 0
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def missing(self) -> int:
        """Documents read from the source that have no status row (lost on the way)."""
        return self.documents_read - self.status_rows

    @property
    def accounted(self) -> bool:
        return (self.missing == 0 and self.windowed + self.too_short + self.rejected_total
                + self.already_ingested == self.status_rows)

    def add(self, other: IngestSummary) -> None:
        for name in ("status_rows", "windowed", "too_short", "already_ingested", "windows",
                     "tokens", "window_tokens", "windows_inserted", "rejects_inserted",
                     "replaced", "stale_rows_deleted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rejected = dict(Counter(self.rejected) + Counter(other.rejected))
        self.step_seconds = dict(Counter(self.step_seconds) + Counter(other.step_seconds))


def check_accounted(summary: IngestSummary) -> None:
    """Fail the job (non-zero exit) when a document read is in no table."""
    if summary.missing:
        raise AccountingError(
            f"{summary.missing:,} of {summary.documents_read:,} documents read from the input "
            f"have no windows, too_short or rejects row ({summary.status_rows:,} accounted "
            "for); re-run the job to retry them")
    if not summary.accounted:
        raise AccountingError("the per-document statuses do not add up to the documents read")


def print_summary(summary: IngestSummary, cfg: IngestConfig) -> None:
    seconds = max(summary.seconds, 1e-9)
    changed = summary.rejected.get(CHANGED_TEXT, 0)
    counts = [
        ("documents read (from the input)", f"{summary.documents_read:,}"),
        ("windowed", f"{summary.windowed:,}"),
        ("too short", f"{summary.too_short:,}"),
        ("already ingested (skipped)", f"{summary.already_ingested:,}"),
        ("rejected", f"{summary.rejected_total:,}"),
        *[(f"  {reason}", f"{n:,}") for reason, n in sorted(summary.rejected.items())],
        ("changed texts", f"{changed:,} rejected" if cfg.on_changed == "reject" else
         f"replaced ({summary.stale_rows_deleted:,} old rows deleted)"),
        ("windows", f"{summary.windows:,} ({summary.windows_inserted:,} new)"),
        ("tokens (documents tokenized)", f"{summary.tokens:,}"),
        ("tokens in windows", f"{summary.window_tokens:,}"),
    ]
    after = [
        ("documents/s", f"{summary.documents_read / seconds:,.1f}"),
        ("tokens/s", f"{summary.tokens / seconds:,.0f}"),
        ("accounted", "yes: windowed + too short + rejected + skipped = documents read"
         if summary.accounted else
         f"NO: {summary.missing:,} documents read are in no table"),
    ]
    print_run(StageRun(f"ingest {cfg.input} -> {cfg.table}", counts, summary.seconds,
                       dict(summary.step_seconds), after))
