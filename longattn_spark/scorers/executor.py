"""What the executors run for every scoring method: how a task picks its device, the
per-worker scorer cache, the one mapInArrow function, the CUDA out-of-memory message, and
non-finite scores as rejects. (What the driver decides for them: ``scorers.settings``; the
batch of windows they see: ``scorers.batch``.)

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
  scored ``--batch-size`` windows at a time; the components a row holds (``ScorerMethod.
  components``) go to the scores table's ``components`` map, and a row with a component that
  is missing or not finite becomes a ``non_finite_score`` reject naming it (never a NaN in the
  scores table); each row says what ran (device type, kernel, dtype, note: ``RUN_FIELDS``).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from longattn_spark.devices import dtype_name
from longattn_spark.reasons import NON_FINITE_SCORE
from longattn_spark.scorers.batch import Reject, WindowBatch
from longattn_spark.scorers.settings import RunSettings

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
COMPONENTS_FIELD = T.StructField("components", T.MapType(T.StringType(), T.DoubleType(), False))


def udf_schema(out_fields: Sequence[T.StructField]) -> T.StructType:
    """The rows a method's mapInArrow returns: the window, a reject reason with its detail,
    the method's components (a map), its typed columns of the scores table (``out_fields``),
    what the executor ran."""
    return T.StructType([*_WINDOW_FIELDS, COMPONENTS_FIELD, *out_fields,
                         *(T.StructField(name, T.StringType()) for name in RUN_FIELDS)])


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


# --- executors: the cache, the OOM message, the mapInArrow function ------------------------------

_SCORERS: dict[tuple, Any] = {}


def cached_scorer(method: ScorerMethod, settings: Any, device: str) -> Any:
    """``method.load(settings, device)``, built once per Python worker process; another
    version of the same model (other file sizes or mtimes) replaces the older one."""
    key = (method.name, method.cache_key(settings), device)
    if key not in _SCORERS:
        run: RunSettings = settings.run
        if run.location is not None:
            for stale in [k for k, v in _SCORERS.items() if k[0] == method.name
                          and v[0].location is not None
                          and v[0].location.model == run.location.model
                          and v[0].location != run.location]:
                del _SCORERS[stale]
        if method.uses_torch:
            import torch

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
        except out_of_memory() as exc:
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
        bad = [name for name in method.components if not _finite(values[i].get(name))
               and not (name in method.optional_components and values[i].get(name) is None)]
        if bad:
            windows.reject(i, NON_FINITE_SCORE, ", ".join(
                f"{name} = {values[i].get(name)}" for name in bad))
            values[i] = None
    schema = to_arrow_schema(udf_schema(method.out_fields))
    device_type = getattr(getattr(scorer, "device", None), "type", "cpu")
    dtype = dtype_name(scorer.dtype) if hasattr(scorer, "dtype") else settings.run.dtype
    columns = [pa.array(windows.window_ids, pa.string()),
               pa.array(windows.categories, pa.string()),
               pa.array(windows.reasons, pa.string()), pa.array(windows.details, pa.string()),
               pa.array([None if v is None else [(name, float(v[name]))
                                                 for name in method.components
                                                 if v.get(name) is not None]
                         for v in values], schema.field("components").type)]
    for out in method.out_fields:
        columns.append(pa.array([None if v is None else v.get(out.name) for v in values],
                                schema.field(out.name).type))
    columns += [pa.array([device_type] * n, pa.string()),
                pa.array([r[0] for r in runs], pa.string()),
                pa.array([dtype] * n, pa.string()),
                pa.array([r[1] for r in runs], pa.string())]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def out_of_memory() -> tuple[type[BaseException], ...]:
    """CUDA's out-of-memory error when torch is loaded (a method without torch has none)."""
    torch = sys.modules.get("torch")
    return (torch.cuda.OutOfMemoryError,) if torch is not None else ()


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(value)
    except TypeError:
        return False


def score_batches(method_spec: str, settings: Any, batch_size: int) -> ArrowFn:
    """The score job's mapInArrow function for the method named ``method_spec`` (a built-in
    name or ``package.module:attr``, resolved again in the worker)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch

        from longattn_spark.scorers import get_method

        method = get_method(method_spec)
        run_settings_: RunSettings = settings.run
        device = task_device(run_settings_.device, run_settings_.dtype_for_gpu,
                             run_settings_.dtype) if method.uses_torch else "cpu"
        try:
            scorer = cached_scorer(method, settings, device)
        except out_of_memory() as exc:  # the model (or its self-check) too large
            raise MemoryError(oom_message(batch_size, getattr(settings, "seq_len", None),
                                          device, exc, method.name, loading=True)) from None
        for batch in batches:
            yield score_record_batch(batch, method, scorer, settings, batch_size)

    return run
