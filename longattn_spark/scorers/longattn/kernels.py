"""The kernels of a ``Layer0Scorer`` (``kernel=``): which one computes the scored layer's
rotated queries and keys and the tail sums of its attention, and how it falls back.

``torch`` (blockwise torch sums after the torch projections, the CPU path), ``triton`` (the
same projections, the fused Triton sums kernel: ``triton_sums.py``), ``fused`` (Triton
RMSNorm, one GEMM for q and k, a Triton RoPE pass, then the Triton sums: ``fused.py``) and
``auto`` (on CUDA ``fused`` when it is available and its self-check passes, else ``triton``,
else ``torch``, each fallback noted in ``kernel_note``; on the CPU ``torch``).

``resolve_triton_kernel`` picks the sums kernel; ``KernelPaths``, a base class of
``Layer0Scorer``, runs the chosen path with the scorer's weights, RoPE and torch path
(``rotated_query_key``), checks the fused path against the torch path once, and moves to the
next path for good when a kernel refuses the inputs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

from longattn_spark.errors import InputError
from longattn_spark.scorers.longattn.attention_sums import tail_attention_sums

from longattn_spark.scorers.longattn.options import KERNELS  # noqa: E402 - one definition
_SELF_CHECK_TOKENS = 64
_SELF_CHECK_MIN_DISTANCE = 16
_SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}
"""Largest difference allowed between the fused path's and the torch path's rotated q/k on
the self-check probe, relative to the largest |value| (16-bit: a few units in the last
place of the largest value; a wrong rotation or projection moves values by O(1))."""

SumsFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class KernelPaths:
    """The kernel paths of ``Layer0Scorer`` (its base class): the fused path's weights,
    self-check and launch, and the tail sums by the chosen kernel. ``Layer0Scorer.__init__``
    sets what these methods read: ``kernel``, ``kernel_note``, ``_kernel_requested``,
    ``_triton_sums`` (a ``SumsFn`` or None), ``_fused`` (None, True for a candidate not built
    yet, or the ``FusedProjection``), and the weights, ``rope`` and ``rotated_query_key``."""

    kernel: str
    kernel_note: str
    _kernel_requested: str
    _triton_sums: SumsFn | None
    _fused: Any

    # ---- the fused path (kernel "fused", or "auto" on CUDA) ---------------------------

    def _fused_candidate(self) -> tuple[bool | None, str | None]:
        """(True, None) when the fused path may run for this model, else (None, why not)."""
        from longattn_spark.scorers.longattn.fused import fused_unavailable_reason

        cos, _ = self.rope.cos_sin(1, torch.float32, self.device)
        why_not = fused_unavailable_reason(self.head_dim, int(cos.shape[-1]), self.dtype)
        return (None, why_not) if why_not else (True, None)

    def _refuse_fused(self, why_not: str) -> None:
        """kernel "fused": a one-line error; "auto": the Triton sums kernel after the torch
        projections, noted (a loud fallback: the score job counts and prints it)."""
        if self._kernel_requested == "fused":
            raise InputError(f"kernel 'fused' cannot score with {self.checkpoint.path}: "
                             f"{why_not}")
        self._fused = None
        self.kernel = "triton" if self._triton_sums is not None else "torch"
        self.kernel_note = f"fused path not used ({why_not}); {self.kernel} kernel used"

    def _build_fused_weights(self) -> None:
        """q_proj and k_proj as one ``[(Hq + Hkv) * D, hidden]`` tensor for the one GEMM; the
        torch path's weights become views of it (nothing stored twice)."""
        from longattn_spark.scorers.longattn.fused import FusedProjection

        split = self.n_query_heads * self.head_dim
        weight = torch.cat([self._q_weight, self._k_weight])
        self._q_weight, self._k_weight = weight[:split], weight[split:]
        bias = None
        if self._q_bias is not None or self._k_bias is not None:
            q_bias = self._q_bias if self._q_bias is not None else \
                torch.zeros(split, dtype=self.dtype, device=self.device)
            k_bias = self._k_bias if self._k_bias is not None else \
                torch.zeros(weight.shape[0] - split, dtype=self.dtype, device=self.device)
            bias = torch.cat([q_bias, k_bias])
            self._q_bias = bias[:split] if self._q_bias is not None else None
            self._k_bias = bias[split:] if self._k_bias is not None else None
        self._fused = FusedProjection(
            norm_weight=self._norm.weight.detach(), eps=float(self._norm.variance_epsilon),
            qk_weight=weight, qk_bias=bias, n_q_heads=self.n_query_heads,
            n_kv_heads=self.n_kv_heads, head_dim=self.head_dim)

    def fused_query_key(self, ids: torch.Tensor, min_distance: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused path's rotated ``q [B, Hq, L, D]`` (rows below ``min_distance`` zero:
        the sums never read them) and ``k [B, Hkv, L, D]`` for checked ids on this device."""
        if self._fused is None or self._fused is True:
            raise InputError(f"the fused path is not active for this scorer (kernel "
                             f"{self.kernel}; {self.kernel_note or 'not requested'})")
        seq_len = ids.shape[1]
        cos, sin = self.rope.cos_sin(seq_len, self.dtype, self.device)
        if self._lower_layers:
            return self._fused.query_key(cos, sin, min_distance,
                                         hidden=self._hidden_below(ids, cos, sin))
        return self._fused.query_key(cos, sin, min_distance, ids=ids, embed=self._embed)

    def _fused_self_check(self) -> str | None:
        """None when the fused path's rotated q/k equal the torch path's on a short seeded
        probe (within ``_SELF_CHECK_TOLERANCE``), else why not: the fused path is used only
        where it gives this model's numbers."""
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.vocab_size, (1, _SELF_CHECK_TOKENS), generator=generator)
        ids = ids.to(self.device)
        k0 = _SELF_CHECK_MIN_DISTANCE
        try:
            with torch.inference_mode():
                want_q, want_k = self.rotated_query_key(ids)
                got_q, got_k = self.fused_query_key(ids, k0)
        except _fused_errors() as exc:
            return f"{type(exc).__name__}: {_first_line(exc)}"
        limit = _SELF_CHECK_TOLERANCE[self.dtype]
        for name, got, want in (("q", got_q[:, :, k0:], want_q[:, :, k0:]),
                                ("k", got_k, want_k)):
            want = want.float()
            scale = float(want.abs().max()) or 1.0
            gap = float((got.float() - want).abs().max()) / scale
            if not gap <= limit:
                return (f"self-check: its rotated {name} differs from the torch path's by "
                        f"{gap:.2e} of the largest value (limit {limit:g})")
        return None

    # ---- rotated q/k and the tail sums by the chosen kernel ---------------------------

    def _query_key(self, ids: torch.Tensor, min_distance: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated q, k by the fused path when it is active, else by the torch path. With
        kernel="auto", a fused launch the kernels refuse (ValueError, a Triton compile or
        resource error) switches this scorer to the Triton sums after the torch projections
        for good, noted in kernel_note; CUDA running out of memory is never caught here."""
        if self._fused is not None:
            try:
                return self.fused_query_key(ids, min_distance)
            except _fused_errors() as exc:
                why = f"{type(exc).__name__}: {_first_line(exc)}"
                if self._kernel_requested == "fused":
                    raise InputError(f"kernel 'fused' cannot score these inputs: {why}") \
                        from exc
                self._refuse_fused(f"refused the inputs: {why}")
        return self.rotated_query_key(ids)

    def _tail_sums(self, q: torch.Tensor, k: torch.Tensor,
                   min_distance: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ_R P and Σ_R P² per head: the Triton kernel when selected, else the torch one.

        With kernel="auto", inputs the kernel rejects (ValueError, e.g. a head dim it has no
        tiles for) switch this scorer to the torch kernel for good, noted in kernel_note."""
        scale = self.head_dim ** -0.5
        if self._triton_sums is not None:
            try:
                return self._triton_sums(q, k, min_distance, scale=scale)
            except ValueError as exc:
                if self._kernel_requested in ("triton", "fused"):
                    raise InputError(f"kernel '{self._kernel_requested}' cannot score these "
                                     f"inputs: {exc}") from exc
                self._triton_sums, self._fused, self.kernel = None, None, "torch"
                self.kernel_note = f"triton refused the inputs ({exc}); torch kernel used"
        return tail_attention_sums(q, k, min_distance, scale=scale, block_size=self.block_size)


def resolve_triton_kernel(kernel: str, device: torch.device) -> tuple[SumsFn | None, str]:
    """(the Triton sums function or None for the torch kernel, a note on the choice).

    ``torch``: never Triton. ``auto``: Triton on CUDA when
    ``longattn_spark.scorers.longattn.triton_sums`` imports and says it can run, else torch
    (the reason goes in the note).
    ``triton``: Triton or an error; on the CPU only under ``TRITON_INTERPRET=1``."""
    if kernel not in KERNELS:
        raise InputError(f"kernel {kernel!r} is not one of {', '.join(KERNELS)}")
    if kernel == "torch" or (kernel == "auto" and device.type != "cuda"):
        return None, ""
    if kernel == "triton" and device.type != "cuda" and \
            os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError("kernel 'triton' needs a CUDA device (or TRITON_INTERPRET=1 to run "
                         "it slowly on the CPU)")
    try:
        module = importlib.import_module("longattn_spark.scorers.longattn.triton_sums")
        function = module.tail_attention_sums_triton
        if kernel == "auto":
            usable = getattr(module, "triton_available", lambda: True)()
        else:
            usable = getattr(module, "triton", True) is not None
    except Exception as exc:  # noqa: BLE001 - a broken triton install fails in many ways
        if kernel == "triton":
            raise InputError(f"kernel 'triton' was requested but longattn_spark.scorers."
                             f"longattn.triton_sums cannot be imported ({type(exc).__name__}: "
                             f"{exc})") from None
        return None, f"triton unavailable ({type(exc).__name__}: {exc}); torch kernel used"
    if not usable:
        if kernel == "triton":
            raise InputError("kernel 'triton' was requested but triton is not installed or "
                             "cannot run on this machine")
        return None, "triton cannot run on this machine; torch kernel used"
    return function, ""


def _fused_errors() -> tuple[type[BaseException], ...]:
    """What a fused launch raises when the kernels refuse the inputs or cannot be built for
    them (never torch.cuda.OutOfMemoryError: running out of memory has its own message)."""
    errors: list[type[BaseException]] = [ValueError]
    with contextlib.suppress(ImportError):
        from triton.compiler.errors import CompilationError

        errors.append(CompilationError)
    with contextlib.suppress(ImportError):
        from triton.runtime.errors import OutOfResources

        errors.append(OutOfResources)
    return tuple(errors)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__

