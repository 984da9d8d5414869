"""Torch devices and compute dtypes, resolved the same way for every model the product runs
(the scorers, the report's attention profile, the probe's reference): ``auto`` means CUDA
when there is one, and bfloat16 on CUDA, float32 on the CPU. Torch is imported only where
used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from longattn_spark.errors import InputError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a CUDA device must exist."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"device {device!r} is not a torch device (cpu, cuda, cuda:N, "
                         f"auto)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was requested but CUDA is not available")
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported (cpu, cuda, cuda:N, auto)")
    return resolved


def resolve_dtype(dtype: torch.dtype | str, device: torch.device,
                  error: type[Exception] = InputError) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on the CPU (the CPU also runs bfloat16 and
    float16, slower and less exact); else one of ``DTYPE_NAMES`` or its torch dtype."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    allowed = {name: getattr(torch, name) for name in DTYPE_NAMES}
    resolved = allowed.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in allowed.values():
        raise error(f"--dtype {dtype!r} is not supported; use one of {', '.join(allowed)} or "
                    f"auto")
    return resolved


def dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32``: the name rows and scorer_ids record."""
    return str(dtype).removeprefix("torch.")
