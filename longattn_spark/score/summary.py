"""What a score run did: the counts the driver folds from every micro-batch, and how they print."""

from __future__ import annotations

from dataclasses import dataclass, field

from longattn_spark.config import ScoreConfig
from longattn_spark.console import StageRun, print_run


@dataclass
class ScoreSummary:
    scorer_id: str = ""
    seq_len: int = 0
    min_distance: int = 0
    windows_total: int = 0
    already_scored: int = 0
    scored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    micro_batches: int = 0
    seconds: float = 0.0
    #: windows scored per "device/kernel/dtype" the executors reported
    ran: dict[str, int] = field(default_factory=dict)
    #: windows scored by the torch kernel after the Triton kernel fell back, and why
    kernel_fallbacks: int = 0
    fallback_notes: list[str] = field(default_factory=list)
    #: the tokenizer check: match, mismatch allowed, or no tokenizer in the model folder
    tokenizer_check: str = ""
    #: L runs past the positions the model was trained on (scorers.positions), else ""
    position_note: str = ""

    @property
    def windows_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.windows_per_second * self.seq_len


def count_runs(summary: ScoreSummary, ran: dict[tuple, int], batch_id: int) -> None:
    """Add one micro-batch's executor reports to the summary; print new fallback notes."""
    for (device, kernel, dtype, note), n in sorted(ran.items(), key=str):
        name = f"{device}/{kernel}/{dtype}"
        summary.ran[name] = summary.ran.get(name, 0) + n
        if note:
            summary.kernel_fallbacks += n
            if note not in summary.fallback_notes:
                summary.fallback_notes.append(note)
                print(f"kernel fallback on the executors (micro-batch {batch_id}, {n} windows): "
                      f"{note}", flush=True)


class Progress:
    """One line after each committed micro-batch: windows done of the total to score, the
    rate, and an estimate of the time left. Printed (and flushed) on the driver's stdout, so
    it reaches a terminal, a log file and a cluster's driver log alike."""

    def __init__(self, enabled: bool, to_score: int = 0, label: str = "score") -> None:
        import time

        self.enabled, self.to_score, self.label = enabled, max(0, to_score), label
        self.started = time.perf_counter()

    def update(self, summary: ScoreSummary) -> None:
        if self.enabled:
            import time

            print(progress_line(self.label, summary.scored + sum(summary.rejected.values()),
                                self.to_score, time.perf_counter() - self.started,
                                summary.micro_batches), flush=True)

    def close(self) -> None:
        """Nothing to release (kept for the callers' ``finally``)."""


def progress_line(label: str, done: int, total: int, seconds: float, commits: int) -> str:
    """``score: 120 / 1,040 windows (11.5%) in 3 commits, 0.42 windows/s, ETA 36m 30s``."""
    rate = done / seconds if seconds > 0 else 0.0
    share = f" ({100 * done / total:.1f}%)" if total else ""
    left = max(0, total - done)
    eta = _duration(left / rate) if rate > 0 and total else "unknown"
    return (f"{label}: {done:,} / {total:,} windows{share} in {commits} commit"
            f"{'s' if commits != 1 else ''}, {rate:.2f} windows/s, ETA {eta}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def print_summary(summary: ScoreSummary, cfg: ScoreConfig) -> None:
    counts = [
        ("scorer_id", summary.scorer_id),
        ("seq_len / min_distance", f"{summary.seq_len} / {summary.min_distance}"),
        ("windows in table", f"{summary.windows_total:,}"),
        ("already scored (skipped)", f"{summary.already_scored:,}"),
        ("scored now", f"{summary.scored:,}"),
        ("rejected", f"{sum(summary.rejected.values()):,}"),
        *[(f"  {reason}", f"{n:,}") for reason, n in sorted(summary.rejected.items())],
        ("commits", f"{summary.micro_batches}"),
        ("tokenizer", summary.tokenizer_check or "-"),
        *([("positions", f"WARNING: {summary.position_note}")] if summary.position_note
          else []),
        ("ran on the executors", ", ".join(f"{name}: {n:,}" for name, n in
                                           sorted(summary.ran.items())) or "-"),
        ("kernel fallbacks (windows)", f"{summary.kernel_fallbacks:,}"
         + (f" ({'; '.join(summary.fallback_notes)})" if summary.fallback_notes else "")),
    ]
    after = [("windows/s", f"{summary.windows_per_second:,.2f}"),
             ("tokens/s", f"{summary.tokens_per_second:,.0f}")]
    print_run(StageRun(f"score {cfg.windows} -> {cfg.table}", counts, summary.seconds,
                       after=after))
