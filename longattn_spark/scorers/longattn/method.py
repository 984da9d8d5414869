"""``--method longattn`` (the default): DS and variance of each window from the attention of
layer ``layer`` (0: the paper), as a ``ScorerMethod`` (``longattn_spark.scorers.base``).
Options: ``options.py`` (``layer``, ``rope_theta``, ``kernel``); components ``ds`` and
``variance``; default ranking the paper's LDS, ``z(ds) + alpha * z(-variance)`` per category
(with ``--normalize minmax`` the authors' released ``minmax(ds) - alpha * minmax(variance)``).

Driver: only the files holding the tensors of layers <= N are located (``locate.py``);
config.json and the safetensors headers are read and the tensors read are hashed as they
stream past (the model fingerprint in the scorer_id); the window length L and k follow from
``--seq-len`` / the windows table and ``--min-distance``. Executors: ``Layer0Scorer`` per
worker; a window is scored when it has exactly the table's window size of ids (``n_tokens``)
and at least L - 1 of them, all inside the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from longattn_spark.scorers.base import MethodPlan, PlanContext, Ranking, ScorerMethod
from longattn_spark.scorers.batch import WindowBatch
from longattn_spark.scorers.longattn.options import LongAttnOptions
from longattn_spark.scorers.settings import RunSettings, sequence_length
from longattn_spark.tables.schemas import SCORES


@dataclass(frozen=True)
class LongAttnSettings:
    """Everything an executor needs to build (and cache) the scorer and check windows."""

    run: RunSettings
    min_distance: int | None
    rope_theta: float | None
    kernel: str
    layer: int
    seq_len: int
    expected_tokens: int | None  # the ids every window must have, or None (--seq-len given)


class LongAttnMethod(ScorerMethod):
    name = "longattn"
    summary = "attention of layer --option layer=N (0: the paper): DS and variance"
    Options = LongAttnOptions
    components = ("ds", "variance")
    out_fields = tuple(SCORES.schema[name] for name in ("ds", "variance", "ds_heads",
                                                        "var_heads"))

    def ranking(self, normalize: str = "zscore") -> Ranking:
        """The paper's LDS, z(DS) + alpha * z(DU) with DU = -variance (section 3.2.3), or the
        authors' released min-max variant."""
        if normalize == "minmax":
            return Ranking(rank="minmax(ds) - alpha * minmax(variance)", params=(("alpha", 0.5),),
                           record=(("ds", "ds"), ("variance", "variance"),
                                   ("z_ds", "minmax(ds)"), ("z_du", "minmax(variance)")))
        return Ranking(rank="z(ds) + alpha * z(-variance)", params=(("alpha", 0.5),),
                       record=(("ds", "ds"), ("variance", "variance"), ("z_ds", "z(ds)"),
                               ("z_du", "z(-variance)")))

    def locate(self, spark, cfg, options: LongAttnOptions):
        from longattn_spark.scorers.longattn.locate import locate_layers

        return locate_layers(spark, cfg.model, options.layer)

    def inspect(self, spark, cfg, options: LongAttnOptions, location):
        """The ``Layer0Checkpoint`` from config.json and the headers (``layer`` outside
        the model: one-line ``ConfigError``)."""
        from longattn_spark.scorers.longattn.locate import describe_model

        return describe_model(spark, location, allow_pickle=cfg.allow_pickle,
                              layer=options.layer)

    def plan(self, ctx: PlanContext) -> MethodPlan:
        from longattn_spark.scorers.longattn.scorer import Layer0Scorer

        cfg, options = ctx.cfg, ctx.options
        seq_len, expected_tokens = sequence_length(cfg, ctx.sizes)
        run = ctx.run_settings()
        settings = LongAttnSettings(run=run, min_distance=cfg.min_distance or None,
                                    rope_theta=options.rope_theta or None,
                                    kernel=options.kernel, layer=options.layer,
                                    seq_len=seq_len, expected_tokens=expected_tokens)
        # The scorer as the driver knows it, from config.json and the headers (no weights):
        # its scorer_id, summary, BOS id and limits; it fails here on a bad model.
        driver_scorer = Layer0Scorer.describing(ctx.model, dtype=run.dtype,
                                                min_distance=settings.min_distance,
                                                rope_theta=settings.rope_theta)
        driver_scorer.bos_id  # noqa: B018 - fails here, before any task, without a BOS id
        driver_scorer.check_seq_len(seq_len)
        scorer_id = driver_scorer.scorer_id_for(seq_len)
        min_distance = driver_scorer.min_distance_for(seq_len)
        return MethodPlan(scorer_id=scorer_id, settings=settings,
                          describe=driver_scorer.config_summary(),
                          tokenizer=ctx.check_tokenizer(scorer_id), seq_len=seq_len,
                          min_distance=min_distance,
                          constants={"seq_len": seq_len, "min_distance": min_distance})

    def load(self, settings: LongAttnSettings, device: str):
        from longattn_spark.scorers.longattn.scorer import Layer0Scorer

        run = settings.run
        return Layer0Scorer.from_pretrained(
            run.location.executor_path(), device=device, dtype=run.dtype,
            min_distance=settings.min_distance, rope_theta=settings.rope_theta,
            allow_pickle=run.allow_pickle, kernel=settings.kernel, layer=settings.layer)

    def prepare(self, batch: WindowBatch, scorer, settings: LongAttnSettings) -> np.ndarray:
        """Reject wrong lengths and ids outside the vocabulary; the ``[N, L]`` model inputs
        (BOS + the first L - 1 ids), one row per window (unused rows for short ones)."""
        return batch.model_inputs(settings.seq_len, settings.expected_tokens, scorer.bos_id,
                                  scorer.vocab_size)

    def score_rows(self, prepared: np.ndarray, rows: list[int], scorer,
                   settings: LongAttnSettings) -> list[dict]:
        import torch

        out = scorer.score(torch.from_numpy(prepared[rows]))
        return [{"ds": float(out.ds[k]), "variance": float(out.variance[k]),
                 "ds_heads": out.ds_heads[k].tolist(), "var_heads": out.var_heads[k].tolist()}
                for k in range(len(rows))]


METHOD = LongAttnMethod()
