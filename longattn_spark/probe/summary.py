"""How a probe run prints (the stage summary, then one line per category and kind) and its
``--json`` file."""

from __future__ import annotations

import json
from pathlib import Path
from longattn_spark.console import StageRun, print_rows, print_run
from longattn_spark.probe.auc import uniform_head_ds
from longattn_spark.probe.results import ProbeRun, results_json


def stage_run(run: ProbeRun) -> StageRun:
    if run.reranked:
        return reranked_run(run)
    controls = sum(n for kinds in run.controls.values() for n in kinds.values())
    counts = [
        ("probe_id", run.probe_id), ("probe table", run.table), ("scorer_id", run.scorer_id),
        ("method", run.method), ("L / k / W", f"{run.seq_len} / {run.min_distance} / "
                                            f"{run.window_size}"),
        ("shuffle block", str(run.block)),
        ("natural windows", ", ".join(f"{c} {n}" for c, n in sorted(run.natural.items()))),
        ("controls built", str(controls)),
        ("windows scored now", str(run.scored)),
        ("already scored", str(run.already_scored)),
        ("rejected by the scorer", ", ".join(f"{r} {n}" for r, n in run.rejected.items())
         or "0"),
        ("probe rows written", str(run.rows_written)),
    ]
    after = [("uniform-head DS (position only)",
              f"{uniform_head_ds(run.seq_len, run.min_distance):.4f}")] \
        if run.seq_len and "longattn" in run.method.split("+") else []
    return StageRun("probe", counts, run.seconds, run.step_seconds, after)


def reranked_run(run: ProbeRun) -> StageRun:
    """``probe --rank``: what was ranked, over which rows; nothing was scored or written."""
    natural = {category: max((r.n_natural for r in kinds.values()), default=0)
               for category, kinds in run.results.items()}
    counts = [
        ("probe_id", run.probe_id), ("probe table", run.table), ("scorer_id", run.scorer_id),
        ("method", run.method), ("ranked by", run.recipe),
        ("natural windows", ", ".join(f"{c} {n}" for c, n in sorted(natural.items()))),
        ("scored", "nothing: ranked again from the probe table's stored components"),
    ]
    return StageRun("probe --rank", counts, run.seconds, run.step_seconds, [])


def verdict_rows(run: ProbeRun) -> list[tuple[str, str]]:
    rows = []
    for category, kinds in run.results.items():
        for kind, result in kinds.items():
            counts = f"  (n {result.n_natural} natural / {result.n_control} {kind})"
            rows.append((f"{category} / {kind}", result.verdict + counts))
    return rows


def print_probe(run: ProbeRun) -> None:
    print_run(stage_run(run))
    print_rows("AUC of natural over control windows (selection score, 95% bootstrap "
               "interval)", verdict_rows(run))


def write_json(run: ProbeRun, path: str) -> None:
    """``{category: {kind: {"auc", "lo", "hi", "n_natural", "n_control", "per_component",
    ...}}}``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results_json(run.results), indent=2, sort_keys=True) + "\n")
