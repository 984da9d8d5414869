"""What every scoring method shares, driver and executors: how a task picks its device and
dtype, the per-worker scorer cache, the one mapInArrow function, the CUDA out-of-memory
message, the pickle refusal, and loading a whole causal LM from a fetched folder.

A method (``longattn_spark.scorers.base.ScorerMethod``) supplies only its own parts: which
windows it can score (``prepare``), the scores of a chunk of them (``score_rows``), and its
output columns. Everything below is the same for every method:

- **Device** (``task_device``): the task's GPU (``TaskContext.resources()["gpu"]``), else CUDA
  if present, else the CPU; a task given a GPU that finds no usable CUDA fails (it never falls
  back to the CPU with a dtype chosen for GPUs).
- **Cache** (``cached_scorer``): the scorer is built once per Python worker, keyed by the
  method, its settings and the device (the pattern of
  ``pyspark.ml.functions.predict_batch_udf``); an updated model (other file sizes or mtimes)
  replaces its older version.
- **Batches** (``score_batches`` -> ``score_record_batch``): the Arrow batch becomes a
  ``WindowBatch``; the method marks the windows it cannot score with a reason; the rest are
  scored ``--batch-size`` windows at a time; a row whose ``finite_columns`` are not finite
  becomes a ``non_finite_score`` reject (never a NaN in the scores table); each row says what
  ran (device type, kernel, dtype, note: ``RUN_FIELDS``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from longattn_spark.errors import InputError
from longattn_spark.score.model_files import ModelLocation
from longattn_spark.scorers.models import dtype_name
from longattn_spark.session import default_parallelism, is_local_master
from longattn_spark.tables import IDS_OUT_OF_VOCAB, NON_FINITE_SCORE, WRONG_LENGTH

if TYPE_CHECKING:
    from longattn_spark.scorers.base import ScorerMethod

ArrowFn = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]

#: What each UDF row says the executor ran: device type (cpu, cuda), kernel (torch, triton),
#: compute dtype, and a note when the method fell back from what it would have run.
RUN_FIELDS = ("device", "kernel", "dtype", "kernel_note")

_WINDOW_FIELDS = [
    T.StructField("window_id", T.StringType(), False),
    T.StructField("category", T.StringType()),
    T.StructField("reason", T.StringType()),     # null: scored (a reject reason otherwise)
    T.StructField("detail", T.StringType()),
]


def udf_schema(out_fields: Sequence[T.StructField]) -> T.StructType:
    """The rows a method's mapInArrow returns: the window, a reject reason with its detail,
    the method's own columns (``out_fields``, named and typed as in the scores table), what
    the executor ran."""
    return T.StructType([*_WINDOW_FIELDS, *out_fields,
                         *(T.StructField(name, T.StringType()) for name in RUN_FIELDS)])


# --- settings every method's executors need -----------------------------------------------------

@dataclass(frozen=True)
class RunSettings:
    """How an executor runs any method: the model files, device, dtype and threads (hashable:
    part of the per-worker cache key)."""

    location: ModelLocation
    device: str
    dtype: str
    allow_pickle: bool
    threads: int
    dtype_for_gpu: bool = False  # dtype auto-chosen for GPUs: a task on the CPU must not use it


def run_settings(spark, cfg, location: ModelLocation) -> RunSettings:
    """The driver's ``RunSettings`` from ``--device``, ``--dtype`` (auto: bfloat16 when the
    executors have GPUs, else float32) and the cores a local task gets."""
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if _executors_have_gpus(spark, cfg.device) else "float32"
    return RunSettings(location=location, device=cfg.device, dtype=dtype,
                       allow_pickle=cfg.allow_pickle, threads=_threads_per_task(spark),
                       dtype_for_gpu=cfg.dtype == "auto" and dtype != "float32")


def _executors_have_gpus(spark, device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device == "cpu":
        return False
    if spark.conf.get("spark.executor.resource.gpu.amount", None):
        return True
    import torch

    return is_local_master(spark) and torch.cuda.is_available()


def _threads_per_task(spark) -> int:
    """Torch threads per task: locally the cores shared by the concurrent tasks."""
    if not is_local_master(spark):
        return int(spark.conf.get("spark.task.cpus", "1"))
    return max(1, (os.cpu_count() or 1) // max(1, default_parallelism(spark)))


# --- driver: a whole causal LM, described without loading it ------------------------------------

@dataclass(frozen=True)
class CausalLMDescription:
    """A whole causal LM as the driver knows it (config.json and the weight headers)."""

    raw_config: dict
    model_type: str
    vocab_size: int
    weights_sha256: str   # ``models.weights_sha256`` of the folder, streamed from the headers


#: safetensors dtype codes -> the torch dtype names ``models.weights_sha256`` hashes.
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def describe_causal_lm(spark, location: ModelLocation, *, allow_pickle: bool,
                       method: str = "this method") -> CausalLMDescription:
    """Check a whole-model folder (a causal LM transformers knows without remote code;
    safetensors, or pickled ``.bin`` only with ``--allow-pickle`` and only in place) and
    fingerprint every weight from config.json, the index and the safetensors headers, the
    tensor bytes hashed as they stream past (``score.model_files._Reader.sha256``: Python
    reads on the local disk, the driver JVM's Hadoop streams elsewhere), so the driver neither
    loads the model nor copies its files. One-line ``InputError`` otherwise."""
    import tempfile
    from pathlib import Path

    from longattn_spark.score.model_files import _Reader
    from longattn_spark.scorers.models import (
        PICKLE_INDEX,
        PICKLE_SINGLE,
        SAFETENSORS_INDEX,
        SAFETENSORS_SINGLE,
        causal_lm_config,
        pickle_not_in_place,
        pickle_refused,
        weights_sha256,
    )

    reader = _Reader(spark, location)
    names = set(reader.names())
    where = location.model
    with tempfile.TemporaryDirectory(prefix="longattn-config-") as work:
        Path(work, "config.json").write_bytes(reader.read("config.json"))
        try:
            raw, config = causal_lm_config(Path(work), method)
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
            raise pickle_refused(f"--model {where}/{pickles[0]}")
        if not location.in_place:
            raise pickle_not_in_place(f"--model {where}/{pickles[0]}", where)
        digest = weights_sha256(Path(location.folder), True)
    return CausalLMDescription(raw_config=raw, model_type=str(raw.get("model_type")),
                               vocab_size=vocab_size, weights_sha256=digest)


def _safetensors_fingerprint(reader, names: set[str], where: str) -> str:
    """``models.weights_sha256`` from the headers and streamed tensor bytes."""
    from longattn_spark.scorers.longattn.checkpoint import (
        _safetensors_header_with_start,
        _weight_map_by_file,
        header_fields,
    )
    from longattn_spark.scorers.models import SAFETENSORS_INDEX, SAFETENSORS_SINGLE

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
            dtype, shape, begin, end = header_fields(entry, name, f"--model {where}/{file}",
                                                     _ST_DTYPES)
            tensors[name] = (file, dtype, shape, start + begin, end - begin)
    parts: list[bytes | tuple[str, int, int]] = []
    for name in sorted(tensors):
        file, dtype, shape, offset, length = tensors[name]
        parts.append(f"{name}|torch.{dtype}|{shape}|".encode())
        if length:
            parts.append((file, offset, length))
    return reader.sha256(parts)


# --- the task's device ----------------------------------------------------------------------------

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


# --- executors: one batch of windows -------------------------------------------------------------

@dataclass
class WindowBatch:
    """One Arrow batch of windows as numpy views, and the reject reason of each row (None:
    still to score). Methods read ``ids(i)`` or the Arrow buffers and call ``reject``."""

    window_ids: list[str]
    categories: list[str | None]
    n_tokens: np.ndarray
    input_ids: pa.ListArray
    offsets: np.ndarray          # int64 [n + 1] into values
    values: np.ndarray           # every row's ids, concatenated
    lengths: np.ndarray          # ids per row
    nulls: np.ndarray            # input_ids is null
    reasons: list[str | None] = field(default_factory=list)
    details: list[str | None] = field(default_factory=list)

    @classmethod
    def from_arrow(cls, batch: pa.RecordBatch) -> WindowBatch:
        input_ids = batch.column("input_ids")
        offsets = input_ids.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        n = batch.num_rows
        return cls(window_ids=[str(w) for w in batch.column("window_id").to_pylist()],
                   categories=batch.column("category").to_pylist(),
                   n_tokens=batch.column("n_tokens").to_numpy(zero_copy_only=False),
                   input_ids=input_ids, offsets=offsets,
                   values=input_ids.values.to_numpy(zero_copy_only=False),
                   lengths=np.diff(offsets),
                   nulls=input_ids.is_null().to_numpy(zero_copy_only=False),
                   reasons=[None] * n, details=[None] * n)

    def __len__(self) -> int:
        return len(self.window_ids)

    def ids(self, i: int) -> np.ndarray:
        """Row ``i``'s token ids (int64)."""
        return self.values[self.offsets[i]:self.offsets[i + 1]].astype(np.int64)

    def reject(self, i: int, reason: str, detail: str) -> None:
        """Row ``i`` is not scored: a scores_rejects row (the first reason given stays)."""
        if self.reasons[i] is None:
            self.reasons[i], self.details[i] = reason, detail

    def pending(self) -> list[int]:
        """The rows not rejected, in order."""
        return [i for i, reason in enumerate(self.reasons) if reason is None]

    def rows_with_ids_outside(self, vocab_size: int) -> np.ndarray:
        """Rows holding any id < 0 or >= ``vocab_size``."""
        outside = (self.values < 0) | (self.values >= vocab_size)
        counts = np.concatenate([[0], np.cumsum(outside, dtype=np.int64)])
        return np.flatnonzero(counts[self.offsets[1:]] - counts[self.offsets[:-1]] > 0)

    def model_inputs(self, seq_len: int, expected_tokens: int | None, bos_id: int,
                     vocab_size: int, what: str = "") -> np.ndarray:
        """The ``[n, seq_len]`` inputs BOS + the first ``seq_len - 1`` ids of each window (as
        LongAttn scores them), after rejecting windows of the wrong length (fewer than
        ``seq_len - 1`` ids, not ``n_tokens`` of them, or not ``expected_tokens`` when given)
        and windows with ids outside ``0 .. vocab_size - 1`` (``what``: see
        ``reject_ids_outside``). Rows of rejected windows are unused."""
        ids, long_enough = model_input_matrix(self.input_ids, seq_len, bos_id)
        wrong = ~long_enough | (self.lengths != self.n_tokens) | self.nulls
        if expected_tokens:
            wrong |= self.lengths != expected_tokens
        for i in np.flatnonzero(wrong):
            self.reject(i, WRONG_LENGTH, f"{self.lengths[i]} token ids (n_tokens column "
                                         f"{self.n_tokens[i]}); scoring needs "
                                         f"{expected_tokens or seq_len - 1}")
        self.reject_ids_outside(vocab_size, IDS_OUT_OF_VOCAB, what)
        matrix = np.full((len(self), seq_len), bos_id, dtype=np.int64)
        matrix[long_enough] = ids
        return matrix

    def reject_ids_outside(self, vocab_size: int, reason: str, what: str = "") -> None:
        """Reject every row holding an id outside ``0 .. vocab_size - 1`` (``what``: a word
        before "0..", e.g. "the model's")."""
        for i in self.rows_with_ids_outside(vocab_size):
            row = self.ids(i)
            bad = row[(row < 0) | (row >= vocab_size)]
            self.reject(i, reason, f"{bad.size} ids outside {what + ' ' if what else ''}"
                                   f"0..{vocab_size - 1}, e.g. {int(bad[0])}")


@dataclass(frozen=True)
class Reject:
    """What ``score_rows`` returns for a window it found it cannot score after all (e.g. a
    non-finite loss): a scores_rejects row with this reason (from ``tables.py``)."""

    reason: str
    detail: str


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


# --- executors: the cache, the OOM message, the mapInArrow function ------------------------------

_SCORERS: dict[tuple, Any] = {}


def cached_scorer(method: ScorerMethod, settings: Any, device: str) -> Any:
    """``method.load(settings, device)``, built once per Python worker process; another
    version of the same model (other file sizes or mtimes) replaces the older one."""
    key = (method.name, method.cache_key(settings), device)
    if key not in _SCORERS:
        import torch

        run: RunSettings = settings.run
        for stale in [k for k, v in _SCORERS.items() if k[0] == method.name
                      and v[0].location.model == run.location.model
                      and v[0].location != run.location]:
            del _SCORERS[stale]
        torch.set_num_threads(run.threads)
        _SCORERS[key] = (run, method.load(settings, device))
    return _SCORERS[key][1]


def oom_message(batch_size: int, seq_len: int | None, device: str, exc: Exception,
                method: str = "", loading: bool = False) -> str:
    """The one line CUDA running out of memory gets: the settings to lower. ``loading``:
    the model itself (and its first check) did not fit, before any window was scored."""
    length = f" of --seq-len {seq_len}" if seq_len else ""
    using = f" with --method {method}" if method else ""
    lower = " (or --seq-len)" if seq_len else ""
    if loading:
        return (f"CUDA out of memory on {device} loading the model{using}, before scoring "
                f"--batch-size {batch_size} windows{length}: the model does not fit this "
                f"GPU's free memory; use a GPU with more memory or a 16-bit --dtype. "
                f"({str(exc)[:200]})")
    return (f"CUDA out of memory on {device} scoring --batch-size {batch_size} windows{length}"
            f"{using}: lower --batch-size{lower}. ({str(exc)[:200]})")


def score_record_batch(batch: pa.RecordBatch, method: ScorerMethod, scorer: Any,
                       settings: Any, batch_size: int) -> pa.RecordBatch:
    """Score one Arrow batch of windows with ``method``; a row that cannot be scored gets a
    reason (never an exception for a bad window)."""
    import torch

    windows = WindowBatch.from_arrow(batch)
    prepared = method.prepare(windows, scorer, settings)
    n = len(windows)
    values: list[dict | None] = [None] * n
    first_run = method.run_info(scorer)
    runs = [first_run] * n
    rows = windows.pending()
    step = max(1, batch_size)
    for begin in range(0, len(rows), step):
        chunk = rows[begin:begin + step]
        try:
            scored = method.score_rows(prepared, chunk, scorer, settings)
        except torch.cuda.OutOfMemoryError as exc:
            raise MemoryError(oom_message(batch_size, getattr(settings, "seq_len", None),
                                          str(getattr(scorer, "device", "cuda")), exc,
                                          method.name)) from None
        run = method.run_info(scorer)  # a kernel can fall back for good during a chunk
        for i, row in zip(chunk, scored, strict=True):
            values[i], runs[i] = row, run
    for i in rows:
        if isinstance(values[i], Reject):
            windows.reject(i, values[i].reason, values[i].detail)
            values[i] = None
            continue
        bad = [name for name in method.finite_columns if not _finite(values[i].get(name))]
        if bad:
            windows.reject(i, NON_FINITE_SCORE, ", ".join(
                f"{name} = {values[i].get(name)}" for name in bad))
            values[i] = None
    schema = to_arrow_schema(udf_schema(method.out_fields))
    device_type = getattr(getattr(scorer, "device", None), "type", "cpu")
    dtype = dtype_name(scorer.dtype) if hasattr(scorer, "dtype") else settings.run.dtype
    columns = [pa.array(windows.window_ids, pa.string()),
               pa.array(windows.categories, pa.string()),
               pa.array(windows.reasons, pa.string()), pa.array(windows.details, pa.string())]
    for out in method.out_fields:
        columns.append(pa.array([None if v is None else v.get(out.name) for v in values],
                                schema.field(out.name).type))
    columns += [pa.array([device_type] * n, pa.string()),
                pa.array([r[0] for r in runs], pa.string()),
                pa.array([dtype] * n, pa.string()),
                pa.array([r[1] for r in runs], pa.string())]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def score_batches(method_spec: str, settings: Any, batch_size: int) -> ArrowFn:
    """The score job's mapInArrow function for the method named ``method_spec`` (a built-in
    name or ``package.module:attr``, resolved again in the worker)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        from longattn_spark.scorers import get_method

        method = get_method(method_spec)
        run_settings_: RunSettings = settings.run
        device = task_device(run_settings_.device, run_settings_.dtype_for_gpu,
                             run_settings_.dtype)
        try:
            scorer = cached_scorer(method, settings, device)
        except torch.cuda.OutOfMemoryError as exc:  # the model (or its self-check) too large
            raise MemoryError(oom_message(batch_size, getattr(settings, "seq_len", None),
                                          device, exc, method.name, loading=True)) from None
        for batch in batches:
            yield score_record_batch(batch, method, scorer, settings, batch_size)

    return run
