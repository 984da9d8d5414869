"""``--method lossgain``: how much a causal LM's loss on a window's later tokens drops when it
sees the whole window instead of a short context, as a ``ScorerMethod``
(``longattn_spark.scorers.base``; the definition: ``losses.py``, the model passes:
``scorer.py``).

Driver, before any Spark job: ``--short-context`` below 1 (and, with ``--seq-len``, not
below L/2) is refused; the model folder must be a causal LM transformers knows without remote
code, with safetensors weights (pickled ``.bin`` only with ``--allow-pickle``), and a BOS id
in config.json or generation_config.json; every weight is fingerprinted as it streams past
(``weights.causal_lm.describe_causal_lm``). Before any task: L (``--seq-len`` or the windows'
size) and S (``--short-context``, 0: L // 4) are checked, and the scorer_id (``lg-...``)
hashes the model's config and weights, L, S, BOS, the compute dtype and the math version.

Executors: the whole model folder, ``LossGainScorer`` per worker. A window is scored when it
has exactly its ``n_tokens`` ids, at least L - 1 of them (and the table's window size when L
came from it), all inside the vocabulary; a window whose losses are not all finite is a
``non_finite_loss`` reject.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from longattn_spark.errors import InputError
from longattn_spark.reasons import NON_FINITE_LOSS
from longattn_spark.scorers.lossgain.losses import DEFAULT_COPY_NGRAM
from longattn_spark.scorers.lossgain.options import LossGainOptions
from longattn_spark.scorers.base import MethodPlan, PlanContext, Reject, ScorerMethod
from longattn_spark.scorers.batch import WindowBatch
from longattn_spark.scorers.settings import RunSettings, sequence_length
from longattn_spark.tables.schemas import LOSSGAIN_COMPONENTS, SCORES
from longattn_spark.weights.causal_lm import CausalLMDescription, describe_causal_lm
from longattn_spark.weights.configs import GENERATION_CONFIG, bos_token_id, optional_json
from longattn_spark.weights.reader import ModelReader


@dataclass(frozen=True)
class LossGainModel:
    """The model as the driver knows it: the causal LM's description and its BOS id."""

    described: CausalLMDescription
    bos_id: int


@dataclass(frozen=True)
class LossGainSettings:
    """Everything an executor needs to build (and cache) the scorer and check windows."""

    run: RunSettings
    seq_len: int
    short_context: int
    bos_id: int
    expected_tokens: int | None  # the ids every window must have, or None (--seq-len given)
    copy_ngram: int = DEFAULT_COPY_NGRAM


class LossGainMethod(ScorerMethod):
    name = "lossgain"
    summary = ("loss gain with the whole causal LM: mean drop of the per-token loss with the "
               "whole window against a short context (--option short_context=S), how much of "
               "it is copying (--option copy_ngram=m), and signs of a seam (min_cohesion, "
               "loss_spike, min_block_gain) and of broken order (loss_roughness)")
    Options = LossGainOptions
    components = ("score", "key_share", "full_loss", "short_loss", "copy_share",
                  "dependency_gain", "dependency_key_share", "min_cohesion", "loss_spike",
                  "min_block_gain", "loss_roughness")
    out_fields = (SCORES.schema["score"], SCORES.schema["lossgain"])

    def validate(self, cfg, options: LossGainOptions) -> None:
        from longattn_spark.scorers.lossgain.losses import checked_short_context

        if cfg.seq_len:
            checked_short_context(options.short_context, cfg.seq_len)

    def inspect(self, spark, cfg, options: LossGainOptions, location) -> LossGainModel:
        """The causal LM checked and fingerprinted (``describe_causal_lm``) and its BOS id
        (config.json, else generation_config.json); one-line ``InputError`` otherwise."""
        described = describe_causal_lm(spark, location, allow_pickle=cfg.allow_pickle,
                                       method="lossgain")
        reader = ModelReader(spark, location)
        generation = optional_json(reader.read(GENERATION_CONFIG)) \
            if GENERATION_CONFIG in set(reader.names()) else None
        bos = bos_token_id(described.raw_config, generation)
        if bos is None:
            raise InputError(f"--model {location.model}: neither config.json nor "
                             f"generation_config.json sets bos_token_id (lossgain scores BOS + "
                             f"the window)")
        if not 0 <= bos < described.vocab_size:
            raise InputError(f"--model {location.model}: bos_token_id {bos} is outside the "
                             f"vocabulary (0..{described.vocab_size - 1})")
        return LossGainModel(described=described, bos_id=bos)

    def plan(self, ctx: PlanContext) -> MethodPlan:
        from longattn_spark.scorers.lossgain.losses import (
            checked_short_context,
            identity_fields,
            lm_tokens_per_window,
            scorer_id_of,
        )

        cfg, model, options = ctx.cfg, ctx.model, ctx.options
        seq_len, expected_tokens = sequence_length(cfg, ctx.sizes)
        short_context = checked_short_context(options.short_context, seq_len)
        settings = LossGainSettings(run=ctx.run_settings(), seq_len=seq_len,
                                    short_context=short_context, bos_id=model.bos_id,
                                    expected_tokens=expected_tokens,
                                    copy_ngram=options.copy_ngram)
        fields = identity_fields(model.described.raw_config,
                                 weights_sha256=model.described.weights_sha256,
                                 seq_len=seq_len, short_context=short_context,
                                 dtype=settings.run.dtype, bos_id=model.bos_id,
                                 copy_ngram=options.copy_ngram)
        scorer_id = scorer_id_of(fields)
        describe = {**fields, "vocab_size": model.described.vocab_size,
                    "lm_tokens_per_window": lm_tokens_per_window(seq_len, short_context)}
        return MethodPlan(scorer_id=scorer_id, settings=settings, describe=describe,
                          tokenizer=ctx.check_tokenizer(scorer_id), seq_len=seq_len,
                          constants={"seq_len": seq_len})

    def load(self, settings: LossGainSettings, device: str):
        from longattn_spark.scorers.lossgain.scorer import LossGainScorer

        run = settings.run
        return LossGainScorer.from_pretrained(run.location.executor_path(), device=device,
                                              dtype=run.dtype, allow_pickle=run.allow_pickle,
                                              bos_id=settings.bos_id)

    def prepare(self, batch: WindowBatch, scorer, settings: LossGainSettings) -> np.ndarray:
        """Reject wrong lengths and ids outside the vocabulary; the ``[N, L]`` model inputs
        (BOS + the first L - 1 ids), one row per window (unused rows for rejected ones)."""
        return batch.model_inputs(settings.seq_len, settings.expected_tokens, settings.bos_id,
                                  scorer.vocab_size, "the model's")

    def score_rows(self, prepared: np.ndarray, rows: list[int], scorer,
                   settings: LossGainSettings) -> list[dict | Reject]:
        import torch

        results = scorer.score(torch.from_numpy(prepared[rows]), settings.short_context,
                               copy_ngram=settings.copy_ngram)
        out: list[dict | Reject] = []
        for result in results:
            if result.reason is not None:
                out.append(Reject(NON_FINITE_LOSS, result.detail or ""))
                continue
            out.append({**{name: getattr(result, name) for name in self.components},
                        "lossgain": {name: getattr(result, name)
                                     for name in LOSSGAIN_COMPONENTS.fieldNames()}})
        return out


METHOD = LossGainMethod()
