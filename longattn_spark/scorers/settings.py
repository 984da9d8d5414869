"""The driver's decisions every method's executors get: the model files, device, dtype and
threads of a run (``RunSettings``, decided by ``run_settings``: ``--dtype auto`` is bfloat16
when the executors have GPUs, else float32), and the length L of the scored sequences
(``sequence_length``: ``--seq-len``, else the windows table's one window size)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from longattn_spark.errors import ConfigError, TableError
from longattn_spark.session import default_parallelism, is_local_master
from longattn_spark.weights.location import ModelLocation


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


def sequence_length(cfg, sizes: list[int]) -> tuple[int, int | None]:
    """(L, the window length every window must have or None): --seq-len, else the table's
    window size (L = W scores BOS + the first W - 1 tokens)."""
    if cfg.seq_len:
        return cfg.seq_len, None
    if not sizes:
        raise TableError(f"--windows {cfg.windows} holds no windows")
    if len(sizes) > 1:
        raise ConfigError(f"--windows {cfg.windows} holds windows of several sizes "
                          f"({', '.join(map(str, sorted(sizes)))}); pass --seq-len")
    return sizes[0], sizes[0]
