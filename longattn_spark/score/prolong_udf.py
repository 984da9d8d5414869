"""ProLong in the score job: the driver's description of the model and the executors' UDF.

``longattn_spark.score.job`` dispatches here for ``--method prolong``; streaming, the
insert-only MERGE, the rejects table, GPU scheduling and the stream checkpoint are the score
job's own, and ``longattn_spark.score.plan`` the tokenizer check both methods share.

Driver (``describe_prolong_model``), before any Spark job: the model folder must be a causal
LM transformers knows without remote code (config.json only), its weights safetensors (pickled
``.bin`` only with ``--allow-pickle``, and then only from a local or mounted folder). The
scorer_id needs a fingerprint of every weight: it is ``ProLongScorer.weights_sha256`` (sha256
over name, dtype, shape and bytes of every stored tensor, in name order, independent of
sharding), computed from the safetensors headers and the tensors' byte ranges as they stream
past (``score.model_files._Reader.sha256``: Python file reads on the local disk, the driver JVM's
Hadoop streams elsewhere), so the driver neither loads the model nor copies its files. The
scorer_id is then ``ProLongScorer.scorer_id()`` of the scorer the executors build.

Executors (``prolong_batches``): the whole model folder (every weight shard, config and
tokenizer files: ``score.model_files.locate_model(..., whole=True)``) is read in place or fetched
into the executor's cache, and the ``ProLongScorer`` is built once per Python worker. Per
window: ids outside the vocabulary (or a window shorter than one segment, or whose ids do not
match ``n_tokens``) -> a rejects row; otherwise its ids (or, when the model's tokenizer is not
the windows', its text decoded with the windows' tokenizer and re-tokenized with the model's,
``add_special_tokens=False``, PROLONG.md section 9) are scored, and an early exit of the
released code (``too_few_segments``, ``too_few_pairs``) is a score of 0 with that reason.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from longattn_spark.errors import ConfigError, InputError, TableError
from longattn_spark.score.model_files import ModelLocation, _Reader
from longattn_spark.score.plan import (
    ScorePlan,
    check_tokenizer,
    scorer_settings,
    unscored_tokenizers,
)
from longattn_spark.score.schema import COMPONENT_COLUMNS, PROLONG_ARROW, PROLONG_OUT
from longattn_spark.score.summary import ScoreSummary
from longattn_spark.score.udf import ArrowFn, task_device
from longattn_spark.scoring.checkpoint import (
    PICKLE_INDEX,
    PICKLE_SINGLE,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    _safetensors_header_with_start,
    _weight_map_by_file,
)
from longattn_spark.tables import IDS_OUT_OF_VOCAB, PROLONG_COMPONENTS, SCORES, WRONG_LENGTH
from longattn_spark.ingest.tokenize import TokenizerSpec


OUT_SCHEMA = PROLONG_OUT

# safetensors dtype codes -> the torch dtype names ``ProLongScorer.weights_sha256`` hashes.
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class ProLongDescription:
    """The model as the driver knows it, without loading it."""

    raw_config: dict
    model_type: str
    vocab_size: int
    weights_sha256: str


@dataclass(frozen=True)
class ProLongSettings:
    """Everything an executor needs to build (and cache) the ProLong scorer."""

    location: ModelLocation
    device: str
    dtype: str
    segment_size: int
    pairs: int
    threshold: float
    seed_rule: str
    window_size: int | None       # None: each window is the unit; W when re-tokenizing
    allow_pickle: bool
    threads: int
    dtype_for_gpu: bool = False
    #: (windows' tokenizer, model's tokenizer) when windows are re-tokenized, else None
    retokenize: tuple[TokenizerSpec, TokenizerSpec] | None = None

    @property
    def scorer_key(self) -> tuple:
        return (self.location, self.dtype, self.segment_size, self.pairs, self.threshold,
                self.seed_rule, self.window_size, self.allow_pickle,
                None if self.retokenize is None else self.retokenize[1].identity)


# --- driver ------------------------------------------------------------------------------------

def describe_prolong_model(spark, location: ModelLocation, *, allow_pickle: bool
                           ) -> ProLongDescription:
    """Check the model folder (causal LM, weight format) and fingerprint its weights, from
    config.json, the index and the safetensors headers (module docstring). One-line
    ``InputError`` otherwise."""
    from longattn_spark.scoring.prolong import _causal_lm_config

    reader = _Reader(spark, location)
    names = set(reader.names())
    where = location.model
    with tempfile.TemporaryDirectory(prefix="longattn-prolong-config-") as work:
        Path(work, "config.json").write_bytes(reader.read("config.json"))
        try:
            raw, config = _causal_lm_config(Path(work))
        except InputError as exc:
            raise InputError(str(exc).replace(str(Path(work, "config.json")),
                                              f"{where}/config.json").replace(work, where)
                             ) from None
    vocab_size = int(getattr(config, "vocab_size", 0) or 0)
    if SAFETENSORS_INDEX in names or SAFETENSORS_SINGLE in names:
        digest = _safetensors_fingerprint(reader, names, where)
    else:
        pickles = [n for n in (PICKLE_INDEX, PICKLE_SINGLE) if n in names]
        if not pickles:
            raise InputError(f"--model {where}: no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX} "
                             f"in the model folder")
        if not allow_pickle:
            raise InputError(f"--model {where}/{pickles[0]}: pickled .bin weights can run "
                             f"arbitrary code when loaded and are refused; convert the model "
                             f"to safetensors, or pass --allow-pickle if you trust this file")
        if not location.in_place:
            raise InputError(f"--model {where}/{pickles[0]}: a pickled .bin checkpoint can only "
                             f"be scored from a local or mounted folder; convert it to "
                             f"safetensors to read it from {where}")
        from longattn_spark.scoring.prolong import _weights_fingerprint

        digest = _weights_fingerprint(Path(location.folder), True)
    return ProLongDescription(raw_config=raw, model_type=str(raw.get("model_type")),
                              vocab_size=vocab_size, weights_sha256=digest)


def _safetensors_fingerprint(reader: _Reader, names: set[str], where: str) -> str:
    """``ProLongScorer.weights_sha256`` from the headers and streamed tensor bytes."""
    if SAFETENSORS_INDEX in names:
        files = sorted(_weight_map_by_file(reader.read(SAFETENSORS_INDEX),
                                           f"{where}/{SAFETENSORS_INDEX}"))
    else:
        files = [SAFETENSORS_SINGLE]
    tensors: dict[str, tuple[str, str, tuple[int, ...], int, int]] = {}
    for file in files:
        if file not in names:
            raise InputError(f"--model {where}/{file}: listed in the checkpoint index but "
                             f"missing")
        start, header = _safetensors_header_with_start(reader, file, where)
        for name, entry in header.items():
            try:
                dtype = _ST_DTYPES[entry["dtype"]]
                shape = tuple(int(n) for n in entry["shape"])
                begin, end = (int(n) for n in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"--model {where}/{file}: tensor {name} has an unsupported or "
                                 f"malformed header entry ({type(exc).__name__}: {exc})"
                                 ) from None
            tensors[name] = (file, dtype, shape, start + begin, end - begin)
    parts: list[bytes | tuple[str, int, int]] = []
    for name in sorted(tensors):
        file, dtype, shape, offset, length = tensors[name]
        parts.append(f"{name}|torch.{dtype}|{shape}|".encode())
        if length:
            parts.append((file, offset, length))
    return reader.sha256(parts)


# --- executors ---------------------------------------------------------------------------------

_SCORERS: dict[tuple, Any] = {}


def cached_prolong_scorer(settings: ProLongSettings, device: str):
    """The ProLong scorer for ``settings`` on ``device``, built once per Python worker (an
    updated model, with other file sizes or mtimes, replaces its older version)."""
    key = (settings.scorer_key, device)
    if key not in _SCORERS:
        import torch

        from longattn_spark.scoring.prolong import ProLongScorer

        for stale in [k for k in _SCORERS if k[0][0].model == settings.location.model
                      and k[0][0] != settings.location]:
            del _SCORERS[stale]
        torch.set_num_threads(settings.threads)
        scorer = ProLongScorer.from_pretrained(
            settings.location.executor_path(), device=device, dtype=settings.dtype,
            segment_size=settings.segment_size, pairs=settings.pairs,
            threshold=settings.threshold, allow_pickle=settings.allow_pickle,
            seed_rule=settings.seed_rule, window_size=settings.window_size)
        if settings.retokenize is not None:
            scorer.retokenized_with = settings.retokenize[1].identity
        _SCORERS[key] = scorer
    return _SCORERS[key]


def window_tokens(ids: np.ndarray, settings: ProLongSettings) -> np.ndarray:
    """The ids ProLong scores for one window: its own ids, or its text (decoded with the
    windows' tokenizer) re-tokenized with the model's, without special tokens."""
    if settings.retokenize is None:
        return ids
    from longattn_spark.ingest.tokenize import get_tokenizer

    windows_spec, model_spec = settings.retokenize
    text = get_tokenizer(windows_spec).decode([int(i) for i in ids],
                                              skip_special_tokens=False)
    encoded = get_tokenizer(model_spec).encode(text, add_special_tokens=False).ids
    return np.asarray(encoded, dtype=np.int64)


def score_prolong_batch(batch: pa.RecordBatch, scorer, settings: ProLongSettings,
                        batch_size: int) -> pa.RecordBatch:
    """Score one Arrow batch of windows with ProLong; rows that cannot be scored get a
    reject reason (never an exception for a bad window)."""
    import torch

    window_ids = [str(w) for w in batch.column("window_id").to_pylist()]
    categories = batch.column("category").to_pylist()
    n_tokens = batch.column("n_tokens").to_numpy(zero_copy_only=False)
    input_ids = batch.column("input_ids")
    offsets = input_ids.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = input_ids.values.to_numpy(zero_copy_only=False).astype(np.int64)
    n = len(window_ids)
    reasons: list[str | None] = [None] * n
    details: list[str | None] = [None] * n
    tokens: dict[int, np.ndarray] = {}
    nulls = input_ids.is_null().to_numpy(zero_copy_only=False)
    c = settings.segment_size
    source_vocab = (settings.retokenize[0].vocab_size if settings.retokenize is not None
                    else scorer.vocab_size)
    for i in range(n):
        ids = values[offsets[i]:offsets[i + 1]]
        if nulls[i] or ids.size != n_tokens[i]:
            reasons[i], details[i] = WRONG_LENGTH, (f"{ids.size} token ids (n_tokens column "
                                                    f"{n_tokens[i]})")
            continue
        bad = ids[(ids < 0) | (ids >= source_vocab)]
        if bad.size:
            reasons[i], details[i] = IDS_OUT_OF_VOCAB, (
                f"{bad.size} ids outside 0..{source_vocab - 1}, e.g. {int(bad[0])}")
            continue
        if settings.retokenize is None and ids.size < c:
            reasons[i], details[i] = WRONG_LENGTH, (
                f"{ids.size} token ids: fewer than one segment of --segment-size {c}")
            continue
        scored_ids = window_tokens(ids, settings)
        bad = scored_ids[(scored_ids < 0) | (scored_ids >= scorer.vocab_size)]
        if bad.size:
            reasons[i], details[i] = IDS_OUT_OF_VOCAB, (
                f"{bad.size} re-tokenized ids outside the model's 0..{scorer.vocab_size - 1}, "
                f"e.g. {int(bad[0])}")
            continue
        tokens[i] = scored_ids
    results: dict[int, Any] = {}
    rows = sorted(tokens)
    for begin in range(0, len(rows), max(1, batch_size)):
        chunk = rows[begin:begin + max(1, batch_size)]
        try:
            out = scorer.score_windows([tokens[i] for i in chunk], [window_ids[i] for i in chunk])
        except torch.cuda.OutOfMemoryError as exc:
            raise MemoryError(f"CUDA out of memory on {scorer.device} scoring --batch-size "
                              f"{batch_size} windows with ProLong: lower --batch-size "
                              f"({str(exc)[:200]})") from None
        results.update(zip(chunk, out, strict=True))
    note = None if scorer.kv_reuse else (scorer.kv_note or None)

    def column(name: str, kind: pa.DataType) -> pa.Array:
        return pa.array([getattr(results[i], name) if i in results else None
                         for i in range(n)], kind)

    return pa.RecordBatch.from_arrays([
        pa.array(window_ids, pa.string()), pa.array(categories, pa.string()),
        pa.array(reasons, pa.string()), pa.array(details, pa.string()),
        column("score", pa.float64()), column("mean_strength", pa.float64()),
        column("mean_distance", pa.float64()), column("mean_specificity", pa.float64()),
        column("pairs_kept", pa.int32()), column("pairs_scored", pa.int32()),
        column("segments", pa.int32()), column("reason", pa.string()).cast(pa.string()),
        pa.array([scorer.device.type] * n, pa.string()),
        pa.array(["torch"] * n, pa.string()),
        pa.array([str(scorer.dtype).removeprefix("torch.")] * n, pa.string()),
        pa.array([note] * n, pa.string()),
    ], schema=PROLONG_ARROW)


def prolong_batches(settings: ProLongSettings, batch_size: int) -> ArrowFn:
    """The mapInArrow function of the score job for ``--method prolong``."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        device = task_device(settings.device, settings.dtype_for_gpu, settings.dtype)
        scorer = cached_prolong_scorer(settings, device)
        for batch in batches:
            yield score_prolong_batch(batch, scorer, settings, batch_size)

    return run


# --- the driver's plan -------------------------------------------------------------------------

def plan_prolong(spark, cfg, location: ModelLocation, described: ProLongDescription,
                 sizes: list[int], window_tokenizers: list[str], windows_ref, scores_ref,
                 rejects_ref) -> ScorePlan:
    """The score job's ``ScorePlan`` for ``--method prolong``: the settings checked against
    the windows (segment size), the tokenizer decision (the window's ids, or its text
    re-tokenized with the model's tokenizer), the scorer_id, the UDF. Before any task."""
    from longattn_spark.scoring.prolong import (
        DEFAULT_SEED_RULE,
        checked_settings,
        identity_fields,
        scorer_id_of,
    )
    from longattn_spark.ingest.tokenize import load_tokenizer_spec, tokenizer_identity

    segment_size, pairs, threshold, _ = checked_settings(cfg.segment_size, cfg.pairs,
                                                         cfg.threshold)
    if not sizes:
        raise TableError(f"--windows {cfg.windows} holds no windows")
    if segment_size > min(sizes):
        raise ConfigError(f"--segment-size {segment_size} is larger than the windows of "
                          f"--windows {cfg.windows} ({min(sizes)} tokens)")
    base = scorer_settings(spark, cfg, location)
    summary = ScoreSummary(seq_len=sizes[0] if len(sizes) == 1 else 0, min_distance=0)
    model_tokenizer = tokenizer_identity(spark, cfg.model)
    retokenize = None
    window_size = None
    if cfg.windows_tokenizer:
        windows_spec = load_tokenizer_spec(cfg.windows_tokenizer, spark, "--windows-tokenizer")
        others = [t for t in window_tokenizers if t != windows_spec.identity]
        if others:
            raise InputError(f"--windows-tokenizer {cfg.windows_tokenizer} is "
                             f"{windows_spec.identity}, but --windows {cfg.windows} holds "
                             f"windows cut by {', '.join(others)}")
        if model_tokenizer is None:
            raise InputError(f"--model {cfg.model} has no tokenizer.json to re-tokenize the "
                             f"windows' text with; drop --windows-tokenizer to score the "
                             f"window ids as they are")
        if model_tokenizer != windows_spec.identity:
            if len(sizes) > 1:
                raise ConfigError(f"--windows {cfg.windows} holds windows of several sizes "
                                  f"({', '.join(map(str, sizes))}); re-tokenized ProLong "
                                  f"scoring needs one window size (N_max = W // C)")
            retokenize = (windows_spec, load_tokenizer_spec(cfg.model, spark, "--model"))
            window_size = sizes[0]
    settings = ProLongSettings(
        location=location, device=base.device, dtype=base.dtype, segment_size=segment_size,
        pairs=pairs, threshold=threshold, seed_rule=DEFAULT_SEED_RULE, window_size=window_size,
        allow_pickle=cfg.allow_pickle, threads=base.threads, dtype_for_gpu=base.dtype_for_gpu,
        retokenize=retokenize)
    fields = identity_fields(described.raw_config, dtype=settings.dtype,
                             segment_size=segment_size, pairs=pairs, threshold=threshold,
                             window_size=window_size, seed_rule=settings.seed_rule,
                             weights_sha256=described.weights_sha256,
                             retokenized_with=None if retokenize is None else model_tokenizer)
    scorer_id = scorer_id_of(fields)
    summary.scorer_id = scorer_id
    if retokenize is not None:
        summary.tokenizer_check = (f"re-tokenized: windows {retokenize[0].identity} -> model "
                                   f"{model_tokenizer}")
        tokenizer_record = {"model": model_tokenizer, "windows": sorted(window_tokenizers),
                            "check": "retokenized"}
    else:
        try:
            tokenizer_record = check_tokenizer(spark, cfg, window_tokenizers, summary, lambda: (
                unscored_tokenizers(spark, windows_ref, scores_ref, rejects_ref, scorer_id,
                                     cfg)))
        except InputError as exc:
            raise InputError(f"{exc}; or pass --windows-tokenizer (the tokenizer that cut the "
                             f"windows) to re-tokenize their text for ProLong") from None

    def score_columns(frame):
        return (frame.withColumn("seq_len", F.lit(None).cast("int"))
                .withColumn("min_distance", F.lit(None).cast("int"))
                .withColumn("method", F.lit("prolong"))
                .withColumn("ds", F.lit(None).cast("double"))
                .withColumn("variance", F.lit(None).cast("double"))
                .withColumn("ds_heads", F.lit(None).cast(SCORES.schema["ds_heads"].dataType))
                .withColumn("var_heads", F.lit(None).cast(SCORES.schema["var_heads"].dataType))
                .withColumn("prolong", F.struct(*COMPONENT_COLUMNS,
                                                F.col("prolong_reason").alias("reason"))
                            .cast(PROLONG_COMPONENTS)))

    describe = {**fields, "vocab_size": described.vocab_size,
                "segment_size": segment_size, "pairs": pairs,
                "windows_tokenizer": cfg.windows_tokenizer or None}
    return ScorePlan(
        scorer_id=scorer_id, seq_len=None, min_distance=None, summary=summary,
        settings=settings, describe=describe, tokenizer_record=tokenizer_record,
        make_udf=lambda: prolong_batches(settings, cfg.batch_size), out_schema=OUT_SCHEMA,
        score_columns=score_columns)
