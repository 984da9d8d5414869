"""The executor side of ``--method longattn``: the mapInArrow function and its per-worker scorer.

The scorer is cached per Python worker, keyed by its settings (the pattern of
``pyspark.ml.functions.predict_batch_udf``): a model loads once per executor process, not per
task or batch. Token ids go from Arrow to an ``[N, L]`` array by numpy indexing, without a
per-row Python loop. The device is the task's GPU (``TaskContext.resources()["gpu"]``), else
CUDA if present, else the CPU; a task given a GPU that finds no usable CUDA fails (it never
falls back to the CPU with a dtype chosen for GPUs). Each row returned says what the executor
ran (``longattn_spark.score.schema``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from longattn_spark.score.model_files import ModelLocation
from longattn_spark.score.schema import LONGATTN_ARROW, LONGATTN_OUT
from longattn_spark.tables import IDS_OUT_OF_VOCAB, WRONG_LENGTH

OUT_SCHEMA = LONGATTN_OUT
ArrowFn = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


@dataclass(frozen=True)
class ScorerSettings:
    """Everything an executor needs to build (and cache) the scorer."""

    location: ModelLocation
    device: str
    dtype: str
    min_distance: int | None
    rope_theta: float | None
    kernel: str
    allow_pickle: bool
    threads: int
    dtype_for_gpu: bool = False  # dtype auto-chosen for GPUs: a task on the CPU must not use it


_SCORERS: dict[tuple, object] = {}


def cached_scorer(settings: ScorerSettings, device: str):
    """The scorer for ``settings`` on ``device``, built once per Python worker process (an
    updated model, with other file sizes or mtimes, replaces its older version)."""
    key = (settings, device)
    if key not in _SCORERS:
        import torch

        from longattn_spark.scoring import Layer0Scorer

        for stale in [k for k in _SCORERS if k[0].location.model == settings.location.model
                      and k[0].location != settings.location]:
            del _SCORERS[stale]
        torch.set_num_threads(settings.threads)
        _SCORERS[key] = Layer0Scorer.from_pretrained(
            settings.location.executor_path(), device=device, dtype=settings.dtype,
            min_distance=settings.min_distance, rope_theta=settings.rope_theta,
            allow_pickle=settings.allow_pickle, kernel=settings.kernel)
    return _SCORERS[key]


def task_device(requested: str, dtype_for_gpu: bool = False, dtype: str = "") -> str:
    """The device this task scores on.

    ``cpu``: the CPU, whatever Spark assigned. A task Spark gave a GPU
    (``TaskContext.resources()["gpu"]``) scores on that GPU or fails when torch finds no usable
    CUDA device for it. ``auto`` without a GPU from Spark: CUDA if present, else the CPU, unless
    the dtype was chosen for GPUs (``dtype_for_gpu``): then it fails rather than run a GPU
    dtype on the CPU. ``cuda``/``cuda:N``: that device, or an error without CUDA."""
    if requested == "cpu":
        return "cpu"
    import torch
    from pyspark import TaskContext

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    addresses = list(gpus.addresses) if gpus is not None else []
    if addresses:
        address = addresses[0]
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not address.isdigit() or int(address) >= count:
            raise RuntimeError(
                f"Spark gave this task GPU {', '.join(addresses)}, but torch finds no usable "
                f"CUDA device {address} ({cuda_diagnosis()}); the task does not fall back to "
                f"the CPU. Fix the executors' CUDA setup, or pass --device cpu to score on "
                f"CPUs.")
        return requested if requested.startswith("cuda:") else f"cuda:{address}"
    if requested != "auto":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {requested}: this task finds no usable CUDA device "
                               f"({cuda_diagnosis()})")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if dtype_for_gpu:
        raise RuntimeError(
            f"--dtype auto chose {dtype or 'a GPU dtype'} because the executors have GPUs, but "
            f"this task was given no GPU and finds no usable CUDA device ({cuda_diagnosis()}); "
            f"it does not fall back to the CPU. Pass --task-gpus 1 so that every scoring task "
            f"gets a GPU, or --device cpu to score on CPUs.")
    return "cpu"


def cuda_diagnosis() -> str:
    import torch

    available = torch.cuda.is_available()
    return (f"torch {torch.__version__} built for CUDA {torch.version.cuda}, "
            f"cuda.is_available() {available}, "
            f"device_count {torch.cuda.device_count() if available else 0}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}")


def model_input_matrix(input_ids: pa.ListArray, seq_len: int, bos_id: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(ids ``[N, seq_len]`` = BOS + the first seq_len-1 tokens of each long-enough row,
    boolean mask of those rows), by numpy indexing into the Arrow buffers."""
    offsets = input_ids.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = input_ids.values.to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    ok = lengths >= seq_len - 1
    starts = offsets[:-1][ok]
    gather = starts[:, None] + np.arange(seq_len - 1, dtype=np.int64)[None, :]
    ids = np.empty((starts.shape[0], seq_len), dtype=np.int64)
    ids[:, 0] = bos_id
    ids[:, 1:] = values[gather] if starts.size else np.empty((0, seq_len - 1))
    return ids, ok


def score_record_batch(batch: pa.RecordBatch, scorer, seq_len: int, expected_tokens: int | None,
                       batch_size: int) -> pa.RecordBatch:
    """Score one Arrow batch of windows; rows that cannot be scored get a reason."""
    import torch

    window_ids = batch.column("window_id").to_pylist()
    categories = batch.column("category").to_pylist()
    n_tokens = batch.column("n_tokens").to_numpy(zero_copy_only=False)
    input_ids = batch.column("input_ids")
    ids, long_enough = model_input_matrix(input_ids, seq_len, scorer.bos_id)
    lengths = np.diff(input_ids.offsets.to_numpy(zero_copy_only=False))
    reasons: list[str | None] = [None] * len(window_ids)
    details: list[str | None] = [None] * len(window_ids)
    for i in np.flatnonzero(~long_enough | (lengths != n_tokens)
                            | ((lengths != expected_tokens) if expected_tokens else False)):
        reasons[i] = WRONG_LENGTH
        details[i] = (f"{lengths[i]} token ids (n_tokens column {n_tokens[i]}); scoring needs "
                      f"{expected_tokens or seq_len - 1}")
    values = input_ids.values.to_numpy(zero_copy_only=False)
    outside = (values < 0) | (values >= scorer.vocab_size)
    bad_rows = np.flatnonzero(_rows_with_any(outside, input_ids.offsets.to_numpy(
        zero_copy_only=False)))
    for i in bad_rows:
        if reasons[i] is None:
            row = values[input_ids.offsets[i].as_py():input_ids.offsets[i + 1].as_py()]
            bad = row[(row < 0) | (row >= scorer.vocab_size)]
            reasons[i] = IDS_OUT_OF_VOCAB
            details[i] = (f"{bad.size} ids outside 0..{scorer.vocab_size - 1}, e.g. "
                          f"{int(bad[0])}")
    rows = np.flatnonzero(long_enough)
    keep = np.array([reasons[i] is None for i in rows], dtype=bool)
    to_score, score_rows = ids[keep], rows[keep]
    n_heads = scorer.n_query_heads
    ds = np.full(len(window_ids), np.nan)
    variance = np.full(len(window_ids), np.nan)
    ds_heads = np.zeros((len(window_ids), n_heads))
    var_heads = np.zeros((len(window_ids), n_heads))
    # What ran, per row: the kernel can switch to torch for good in the middle of a batch.
    kernels = np.full(len(window_ids), scorer.kernel, dtype=object)
    notes = np.full(len(window_ids), scorer.kernel_note or None, dtype=object)
    for begin in range(0, to_score.shape[0], batch_size):
        chunk = torch.from_numpy(to_score[begin:begin + batch_size])
        out = score_with_clear_oom(scorer, chunk, batch_size, seq_len)
        target = score_rows[begin:begin + batch_size]
        ds[target], variance[target] = out.ds, out.variance
        ds_heads[target], var_heads[target] = out.ds_heads, out.var_heads
        kernels[target], notes[target] = scorer.kernel, scorer.kernel_note or None
    scored = np.array([r is None for r in reasons], dtype=bool)
    heads_offsets = np.concatenate([[0], np.cumsum(np.where(scored, n_heads, 0))]).astype(
        np.int32)
    return pa.RecordBatch.from_arrays([
        pa.array(window_ids, pa.string()), pa.array(categories, pa.string()),
        pa.array(reasons, pa.string()), pa.array(details, pa.string()),
        pa.array(np.where(scored, ds, np.nan), mask=~scored),
        pa.array(np.where(scored, variance, np.nan), mask=~scored),
        pa.ListArray.from_arrays(pa.array(heads_offsets), pa.array(ds_heads[scored].ravel()),
                                 mask=pa.array(~scored),
                                 type=LONGATTN_ARROW.field("ds_heads").type),
        pa.ListArray.from_arrays(pa.array(heads_offsets), pa.array(var_heads[scored].ravel()),
                                 mask=pa.array(~scored),
                                 type=LONGATTN_ARROW.field("var_heads").type),
        pa.array([scorer.device.type] * len(window_ids), pa.string()),
        pa.array(kernels.tolist(), pa.string()),
        pa.array([str(scorer.dtype).removeprefix("torch.")] * len(window_ids), pa.string()),
        pa.array(notes.tolist(), pa.string()),
    ], schema=LONGATTN_ARROW)


def _rows_with_any(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per list row (Arrow offsets), whether any of its ``flags`` is set."""
    counts = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return counts[offsets[1:]] - counts[offsets[:-1]] > 0


def score_with_clear_oom(scorer, ids, batch_size: int, seq_len: int):
    """``scorer.score(ids)``; CUDA running out of memory names the settings to lower."""
    import torch

    try:
        return scorer.score(ids)
    except torch.cuda.OutOfMemoryError as exc:
        raise MemoryError(oom_message(batch_size, seq_len, str(scorer.device), exc)) from None


def oom_message(batch_size: int, seq_len: int, device: str, exc: Exception) -> str:
    return (f"CUDA out of memory on {device} scoring --batch-size {batch_size} windows of "
            f"--seq-len {seq_len}: lower --batch-size (or --seq-len). ({str(exc)[:200]})")


def score_batches(settings: ScorerSettings, seq_len: int, expected_tokens: int | None,
                  batch_size: int) -> ArrowFn:
    """The mapInArrow function of the score job."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        device = task_device(settings.device, settings.dtype_for_gpu, settings.dtype)
        scorer = cached_scorer(settings, device)
        for batch in batches:
            yield score_record_batch(batch, scorer, seq_len, expected_tokens, batch_size)

    return run

