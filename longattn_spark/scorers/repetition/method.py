"""``--method repetition``: model-free repetition statistics of each window's token ids
(``stats.py``), as a ``ScorerMethod`` (``longattn_spark.scorers.base``): no model, no torch, no
GPU; vectorised numpy on the executors, a few milliseconds per 32k-token window.

Every window is scored over all of its ids (no BOS, no ``--seq-len``); a window whose ids are
missing or not ``n_tokens`` of them is a ``wrong_length`` reject. The scorer_id (``rp-...``)
hashes the definitions (n-gram sizes, zlib level, the zlib-ng library's version) and the math
version, nothing else: the statistics of a window depend on its ids only. An executor whose
zlib-ng differs from the driver's stops with one line naming both versions, since its
``compression`` values would differ under the same scorer_id. Default ranking:
``-compression`` (less repetitive first); as a gate in a recipe:
``where: z(repetition.compression) < 3``.
"""

from __future__ import annotations

from dataclasses import dataclass

from longattn_spark.errors import ConfigError
from longattn_spark.scorers.base import IdsOnlyMethod, MethodPlan, PlanContext
from longattn_spark.scorers.batch import WindowBatch
from longattn_spark.scorers.identity import scorer_id
from longattn_spark.scorers.repetition.stats import (
    COMPONENTS,
    DISTINCT_N,
    DUP_NS,
    LAG_CANDIDATES,
    MIN_LAG,
    SPLIT_MARGIN_DIVISOR,
    TOP_NS,
    ZLIB_LEVEL,
    ZLIB_NG_VERSION,
)
from longattn_spark.scorers.settings import RunSettings

#: Bump when a change to the definitions or the computation changes a statistic.
#: 2: lag_match; 3: compression by zlib-ng; 4: min_split_jaccard
REPETITION_MATH_VERSION = "repetition-4"


@dataclass(frozen=True)
class RepetitionSettings:
    run: RunSettings
    zlib_ng: str  # the driver's zlib-ng version, which the scorer_id records


class RepetitionScorer:
    """What an executor holds: nothing to load."""

    kernel = "numpy"
    dtype = "float64"


class RepetitionMethod(IdsOnlyMethod):
    name = "repetition"
    summary = ("model-free repetition statistics of the window's ids: top n-gram shares, "
               "duplicate n-gram shares, distinct 10-grams, compression ratio, periodicity, "
               "lowest split Jaccard share (seams)")
    components = COMPONENTS
    rank_template = "-{f}(compression)"  # least repetitive first

    def plan(self, ctx: PlanContext) -> MethodPlan:
        fields = {"method": self.name, "math_version": REPETITION_MATH_VERSION,
                  "top_ns": list(TOP_NS), "dup_ns": list(DUP_NS), "distinct_n": DISTINCT_N,
                  "zlib_level": ZLIB_LEVEL, "zlib_ng": ZLIB_NG_VERSION, "min_lag": MIN_LAG,
                  "lag_candidates": LAG_CANDIDATES,
                  "split_margin": f"N // {SPLIT_MARGIN_DIVISOR}",
                  "ids": "the window's token ids, no BOS"}
        settings = RepetitionSettings(run=self.cpu_run(), zlib_ng=ZLIB_NG_VERSION)
        return MethodPlan(scorer_id=scorer_id("rp", fields), settings=settings,
                          describe=fields, tokenizer=self.ids_only_tokenizer(ctx))

    def load(self, settings: RepetitionSettings, device: str) -> RepetitionScorer:
        """Check that this worker compresses as the driver planned (``compression``)."""
        check_zlib_ng(settings.zlib_ng, ZLIB_NG_VERSION)
        return RepetitionScorer()

    def score_rows(self, prepared: WindowBatch, rows: list[int], scorer, settings
                   ) -> list[dict]:
        from longattn_spark.scorers.repetition.stats import repetition_stats

        return [repetition_stats(prepared.ids(i)) for i in rows]


def check_zlib_ng(planned: str, here: str) -> None:
    """One line when this worker's zlib-ng is not the one the scorer_id was planned with."""
    if planned != here:
        raise ConfigError(f"--method repetition: this executor's zlib-ng library is {here}, "
                          f"the driver's (the scorer_id's) is {planned}: install the same "
                          "zlib-ng package on the driver and every executor (the compression "
                          "statistic depends on it)")


METHOD = RepetitionMethod()
