"""``--method longattn``'s own options (``scorers.options``)."""

from __future__ import annotations

from dataclasses import dataclass

from longattn_spark.errors import ConfigError
from longattn_spark.scorers.options import option

#: the layer-N kernels (``kernels.py``): what ``--option kernel`` takes
KERNELS = ("auto", "torch", "triton", "fused")


@dataclass(frozen=True)
class LongAttnOptions:
    layer: int = option(0, "the layer whose attention is scored (0: the paper; layers below it "
                        "run in full)", alias=True)
    rope_theta: float = option(0.0, "override the model's rope_theta (0: the model's own; the "
                               "paper's remedy for windows longer than the model was trained "
                               "on)", alias=True)
    kernel: str = option("auto", "layer-N kernel: auto (on CUDA fused when it passes its "
                         "self-check, else triton, else torch), fused (Triton RMSNorm, one q/k "
                         "GEMM, Triton RoPE, Triton sums), triton (torch projections, Triton "
                         "sums), torch", alias=True, choices=KERNELS, operational=True)

    def check(self) -> None:
        if self.layer < 0:
            raise ConfigError(f"--option layer={self.layer}: must be >= 0")
        if self.rope_theta < 0:
            raise ConfigError(f"--option rope_theta={self.rope_theta}: must be >= 0 "
                              f"(0: the model's own)")
