"""Scorers that know what the probe is testing (plugin methods, ``--method
probe_scorers:ORACLE``): they read each window's kind from the probe's staging window_id
(``<probe_id>/<kind>/<window_id>``). They show that the probe can fail and can succeed:

- ``ORACLE``: natural windows 1, controls 0 -> AUC 1.0;
- ``CONSTANT``: every window 0 -> AUC 0.5;
- ``REVERSED``: natural windows 0, controls 1 -> AUC 0.0.

The tests ship this file to the executors with ``SparkContext.addPyFile``."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from longattn_spark.scorers.base import MethodPlan, RunSettings, ScorerMethod
from longattn_spark.tables.schemas import SCORES


def kind_of(window_id: str) -> str:
    """The kind in a probe staging window_id (``<probe_id>/<kind>/<window_id>``)."""
    parts = window_id.split("/")
    return parts[1] if len(parts) >= 3 else "natural"


@dataclass(frozen=True)
class KindSettings:
    run: RunSettings
    natural: float
    control: float


class KindScorer(ScorerMethod):
    components = ("score",)
    out_fields = (SCORES.schema["score"],)
    natural = 1.0
    control = 0.0

    def plan(self, ctx) -> MethodPlan:
        scorer_id = f"probe-test-{self.name}"
        return MethodPlan(scorer_id=scorer_id,
                          settings=KindSettings(ctx.run_settings(), self.natural, self.control),
                          describe={"method": self.name}, tokenizer=ctx.check_tokenizer(scorer_id))

    def load(self, settings, device: str):
        import torch

        return SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)

    def score_rows(self, prepared, rows, scorer, settings) -> list[dict]:
        return [{"score": settings.natural if kind_of(prepared.window_ids[i]) == "natural"
                 else settings.control} for i in rows]


class Oracle(KindScorer):
    name = "oracle"


class Constant(KindScorer):
    name = "constant"
    natural = control = 0.0


class Reversed(KindScorer):
    name = "reversed"
    natural, control = 0.0, 1.0


ORACLE, CONSTANT, REVERSED = Oracle(), Constant(), Reversed()
