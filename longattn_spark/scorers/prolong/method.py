"""``--method prolong``: ProLong's LDS with a whole causal LM, as a ``ScorerMethod``
(``longattn_spark.scorers.base``; the math: ``scorer.py`` and ``lds.py``).

Driver, before any Spark job: the model folder must be a causal LM transformers knows without
remote code (config.json only), its weights safetensors (pickled ``.bin`` only with
``--allow-pickle``, and then only from a local or mounted folder). The scorer_id needs a
fingerprint of every weight: ``ProLongScorer.weights_sha256``, streamed from the headers
(``weights.causal_lm.describe_causal_lm``), so the driver neither loads the model nor copies its
files. The scorer_id is then ``ProLongScorer.scorer_id()`` of the scorer the executors build.

Executors: the whole model folder is read in place or fetched into the executor's cache, and
the ``ProLongScorer`` is built once per Python worker. Per window: ids outside the vocabulary
(or a window shorter than one segment, or whose ids do not match ``n_tokens``) -> a rejects
row; otherwise its ids (or, when the model's tokenizer is not the windows', its text decoded
with the windows' tokenizer and re-tokenized with the model's, ``add_special_tokens=False``,
PROLONG.md section 9) are scored, and an early exit of the released code
(``too_few_segments``, ``too_few_pairs``) is a score of 0 with that reason in ``prolong``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from longattn_spark.errors import ConfigError, InputError, TableError
from longattn_spark.reasons import IDS_OUT_OF_VOCAB, WRONG_LENGTH
from longattn_spark.scorers.prolong.options import ProLongOptions
from longattn_spark.scorers.base import MethodPlan, PlanContext, ScorerMethod
from longattn_spark.scorers.batch import WindowBatch
from longattn_spark.scorers.settings import RunSettings
from longattn_spark.tables.schemas import PROLONG_COMPONENTS, SCORES
from longattn_spark.tokenizer import TokenizerSpec
from longattn_spark.weights.causal_lm import describe_causal_lm


@dataclass(frozen=True)
class ProLongSettings:
    """Everything an executor needs to build (and cache) the ProLong scorer."""

    run: RunSettings
    segment_size: int
    pairs: int
    threshold: float
    seed_rule: str
    window_size: int | None       # None: each window is the unit; W when re-tokenizing
    #: (windows' tokenizer, model's tokenizer) when windows are re-tokenized, else None
    retokenize: tuple[TokenizerSpec, TokenizerSpec] | None = None


class ProLongMethod(ScorerMethod):
    name = "prolong"
    summary = ("ProLong's LDS with the whole causal LM (--option segment_size=C, pairs=P, "
               "threshold=T)")
    Options = ProLongOptions
    components = ("score", "pairs_kept", "pairs_scored", "segments", "mean_strength",
                  "mean_distance", "mean_specificity")
    #: the means over kept pairs are missing when no pair passed the threshold
    optional_components = ("mean_strength", "mean_distance", "mean_specificity")
    out_fields = (SCORES.schema["score"], SCORES.schema["prolong"])

    def inspect(self, spark, cfg, options: ProLongOptions, location):
        return describe_causal_lm(spark, location, allow_pickle=cfg.allow_pickle,
                                  method="ProLong")

    def plan(self, ctx: PlanContext) -> MethodPlan:
        """The settings checked against the windows (segment size), the tokenizer decision
        (the window's ids, or its text re-tokenized with the model's tokenizer), the
        scorer_id."""
        from longattn_spark.tokenizer import load_tokenizer_spec, tokenizer_identity
        from longattn_spark.scorers.prolong.scorer import (
            DEFAULT_SEED_RULE,
            checked_settings,
            identity_fields,
            scorer_id_of,
        )

        spark, cfg, sizes, described, options = (ctx.spark, ctx.cfg, ctx.sizes, ctx.model,
                                                  ctx.options)
        segment_size, pairs, threshold, _ = checked_settings(options.segment_size,
                                                             options.pairs, options.threshold)
        if not sizes:
            raise TableError(f"--windows {cfg.windows} holds no windows")
        if segment_size > min(sizes):
            raise ConfigError(f"--segment-size {segment_size} is larger than the windows of "
                              f"--windows {cfg.windows} ({min(sizes)} tokens)")
        model_tokenizer = tokenizer_identity(spark, cfg.model)
        retokenize = None
        window_size = None
        if options.windows_tokenizer:
            windows_spec = load_tokenizer_spec(options.windows_tokenizer, spark,
                                               "--windows-tokenizer")
            others = [t for t in ctx.window_tokenizers if t != windows_spec.identity]
            if others:
                raise InputError(f"--windows-tokenizer {options.windows_tokenizer} is "
                                 f"{windows_spec.identity}, but --windows {cfg.windows} holds "
                                 f"windows cut by {', '.join(others)}")
            if model_tokenizer is None:
                raise InputError(f"--model {cfg.model} has no tokenizer.json to re-tokenize "
                                 f"the windows' text with; drop --windows-tokenizer to score "
                                 f"the window ids as they are")
            if model_tokenizer != windows_spec.identity:
                if len(sizes) > 1:
                    raise ConfigError(f"--windows {cfg.windows} holds windows of several sizes "
                                      f"({', '.join(map(str, sizes))}); re-tokenized ProLong "
                                      f"scoring needs one window size (N_max = W // C)")
                retokenize = (windows_spec, load_tokenizer_spec(cfg.model, spark, "--model"))
                window_size = sizes[0]
        settings = ProLongSettings(
            run=ctx.run_settings(), segment_size=segment_size, pairs=pairs,
            threshold=threshold, seed_rule=DEFAULT_SEED_RULE, window_size=window_size,
            retokenize=retokenize)
        fields = identity_fields(described.raw_config, dtype=settings.run.dtype,
                                 segment_size=segment_size, pairs=pairs, threshold=threshold,
                                 window_size=window_size, seed_rule=settings.seed_rule,
                                 weights_sha256=described.weights_sha256,
                                 retokenized_with=None if retokenize is None
                                 else model_tokenizer)
        scorer_id = scorer_id_of(fields)
        if retokenize is not None:
            ctx.tokenizer_check = (f"re-tokenized: windows {retokenize[0].identity} -> model "
                                   f"{model_tokenizer}")
            tokenizer = {"model": model_tokenizer, "windows": sorted(ctx.window_tokenizers),
                         "check": "retokenized"}
        else:
            try:
                tokenizer = ctx.check_tokenizer(scorer_id)
            except InputError as exc:
                raise InputError(f"{exc}; or pass --windows-tokenizer (the tokenizer that cut "
                                 f"the windows) to re-tokenize their text for ProLong"
                                 ) from None
        describe = {**fields, "vocab_size": described.vocab_size,
                    "segment_size": segment_size, "pairs": pairs,
                    "windows_tokenizer": options.windows_tokenizer or None}
        return MethodPlan(scorer_id=scorer_id, settings=settings, describe=describe,
                          tokenizer=tokenizer)

    def cache_key(self, settings: ProLongSettings):
        """The settings, with the re-tokenizing tokenizers by identity (not their JSON)."""
        return (settings.run, settings.segment_size, settings.pairs, settings.threshold,
                settings.seed_rule, settings.window_size,
                None if settings.retokenize is None else settings.retokenize[1].identity)

    def load(self, settings: ProLongSettings, device: str):
        from longattn_spark.scorers.prolong.scorer import ProLongScorer

        run = settings.run
        scorer = ProLongScorer.from_pretrained(
            run.location.executor_path(), device=device, dtype=run.dtype,
            segment_size=settings.segment_size, pairs=settings.pairs,
            threshold=settings.threshold, allow_pickle=run.allow_pickle,
            seed_rule=settings.seed_rule, window_size=settings.window_size)
        if settings.retokenize is not None:
            scorer.retokenized_with = settings.retokenize[1].identity
        return scorer

    def prepare(self, batch: WindowBatch, scorer, settings: ProLongSettings
                ) -> dict[int, np.ndarray]:
        """The ids to score per window (re-tokenized when asked); rejects for the rest."""
        c = settings.segment_size
        source_vocab = (settings.retokenize[0].vocab_size if settings.retokenize is not None
                        else scorer.vocab_size)
        for i in np.flatnonzero(batch.rows_not_n_tokens()):
            batch.reject(i, WRONG_LENGTH, f"{batch.lengths[i]} token ids (n_tokens column "
                                          f"{batch.n_tokens[i]})")
        batch.reject_ids_outside(source_vocab, IDS_OUT_OF_VOCAB)
        tokens: dict[int, np.ndarray] = {}
        for i in batch.pending():
            ids = batch.ids(i)
            if settings.retokenize is None and ids.size < c:
                batch.reject(i, WRONG_LENGTH, f"{ids.size} token ids: fewer than one segment "
                                              f"of --segment-size {c}")
                continue
            scored_ids = window_tokens(ids, settings)
            bad = scored_ids[(scored_ids < 0) | (scored_ids >= scorer.vocab_size)]
            if bad.size:
                batch.reject(i, IDS_OUT_OF_VOCAB, f"{bad.size} re-tokenized ids outside the "
                                                  f"model's 0..{scorer.vocab_size - 1}, e.g. "
                                                  f"{int(bad[0])}")
                continue
            tokens[i] = scored_ids
        return {"tokens": tokens, "window_ids": batch.window_ids}

    def score_rows(self, prepared, rows: list[int], scorer, settings) -> list[dict]:
        results = scorer.score_windows([prepared["tokens"][i] for i in rows],
                                       [prepared["window_ids"][i] for i in rows])
        fields = [f.name for f in PROLONG_COMPONENTS.fields]
        return [{**{name: getattr(r, name) for name in self.components},
                 "prolong": {name: getattr(r, name) for name in fields}} for r in results]

    def run_info(self, scorer) -> tuple[str, str | None]:
        return "torch", None if scorer.kv_reuse else (scorer.kv_note or None)


def window_tokens(ids: np.ndarray, settings: ProLongSettings) -> np.ndarray:
    """The ids ProLong scores for one window: its own ids, or its text (decoded with the
    windows' tokenizer) re-tokenized with the model's, without special tokens."""
    if settings.retokenize is None:
        return ids
    from longattn_spark.tokenizer import get_tokenizer

    windows_spec, model_spec = settings.retokenize
    text = get_tokenizer(windows_spec).decode([int(i) for i in ids],
                                              skip_special_tokens=False)
    encoded = get_tokenizer(model_spec).encode(text, add_special_tokens=False).ids
    return np.asarray(encoded, dtype=np.int64)


METHOD = ProLongMethod()
