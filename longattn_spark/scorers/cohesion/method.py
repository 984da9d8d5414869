"""``--method cohesion``: how much each window reads as one text, against its category's
vocabulary (``stats.py``), as a ``ScorerMethod`` (``longattn_spark.scorers.base``): no model,
no torch, no GPU.

Unlike ``repetition``, a window's value depends on its category: on the driver, before any
scoring task, ``plan`` counts the document frequency of every token over a sample of each
category's windows (``vocabulary.py``: at most ``df_sample`` windows per category, every
category of the windows table, whatever ``--category`` scores) and sends the vocabularies to
the executors with the settings. The scorer_id (``ch-...``) hashes the math version, the
options and every vocabulary's fingerprint: the same table plans the same id (a killed run
resumes), and a table whose sample changed (windows added) gets a new id, under which its
windows are scored again (milliseconds a window). A window of a category that had no windows
when the run planned is a ``category_not_planned`` reject. Default ranking:
``z(min_split_idf)``; in a recipe, a seam term such as
``least(z(cohesion.min_split_idf), 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from longattn_spark.reasons import CATEGORY_NOT_PLANNED
from longattn_spark.scorers.base import IdsOnlyMethod, MethodPlan, PlanContext, Reject
from longattn_spark.scorers.batch import WindowBatch
from longattn_spark.scorers.cohesion.options import CohesionOptions
from longattn_spark.scorers.cohesion.stats import COMPONENTS, Vocabulary
from longattn_spark.scorers.identity import scorer_id
from longattn_spark.scorers.repetition.stats import SPLIT_MARGIN_DIVISOR
from longattn_spark.scorers.settings import RunSettings

#: Bump when a change to the definitions or the computation changes a value.
COHESION_MATH_VERSION = "cohesion-1"


@dataclass(frozen=True)
class CohesionSettings:
    run: RunSettings
    idf_power: float
    #: (category, its vocabulary), sorted by category (None first)
    vocabularies: tuple[tuple[str | None, Vocabulary], ...]


class CohesionScorer:
    """What an executor holds: the vocabularies by category."""

    kernel = "numpy"
    dtype = "float64"

    def __init__(self, settings: CohesionSettings):
        self.vocabularies = dict(settings.vocabularies)


class CohesionMethod(IdsOnlyMethod):
    name = "cohesion"
    summary = ("model-free: the lowest share, over the split points of the window's middle "
               "half, of its distinct tokens on both sides, each weighted by its inverse "
               "document frequency in the window's category (seams between two texts of one "
               "category)")
    Options = CohesionOptions
    components = COMPONENTS
    rank_template = "{f}(min_split_idf)"  # most cohesive first

    def plan(self, ctx: PlanContext) -> MethodPlan:
        from longattn_spark.scorers.cohesion.vocabulary import category_vocabularies
        from longattn_spark.tables.refs import TableRef

        options: CohesionOptions = ctx.options
        windows = TableRef(ctx.cfg.windows).read(ctx.spark)
        vocabularies = category_vocabularies(windows, options.df_sample)
        ordered = tuple(sorted(vocabularies.items(), key=lambda kv: (kv[0] is not None,
                                                                    kv[0] or "")))
        fields = {"method": self.name, "math_version": COHESION_MATH_VERSION,
                  "df_sample": options.df_sample, "idf_power": options.idf_power,
                  "split_margin": f"N // {SPLIT_MARGIN_DIVISOR}",
                  "ids": "the window's token ids, no BOS",
                  "vocabularies": {str(c): v.fingerprint() for c, v in ordered}}
        describe = {**fields, "categories": {
            str(c): {"windows": v.n, "tokens": len(v.tokens) // 8} for c, v in ordered}}
        return MethodPlan(scorer_id=scorer_id("ch", fields),
                          settings=CohesionSettings(run=self.cpu_run(),
                                                    idf_power=options.idf_power,
                                                    vocabularies=ordered),
                          describe=describe, tokenizer=self.ids_only_tokenizer(ctx))

    def load(self, settings: CohesionSettings, device: str) -> CohesionScorer:
        return CohesionScorer(settings)

    def score_rows(self, prepared: WindowBatch, rows: list[int], scorer: CohesionScorer,
                   settings: CohesionSettings) -> list[dict | Reject]:
        from longattn_spark.scorers.cohesion.stats import cohesion_stats

        out: list[dict | Reject] = []
        for i in rows:
            category = prepared.categories[i]
            vocabulary = scorer.vocabularies.get(category)
            if vocabulary is None:
                out.append(Reject(CATEGORY_NOT_PLANNED,
                                  f"category {category!r} had no windows when this run "
                                  f"planned its vocabularies"))
                continue
            out.append(cohesion_stats(prepared.ids(i), vocabulary, settings.idf_power))
        return out


METHOD = CohesionMethod()
