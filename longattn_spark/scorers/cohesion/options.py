"""``--method cohesion``'s own options (``scorers.options``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from longattn_spark.errors import ConfigError
from longattn_spark.scorers.options import option


@dataclass(frozen=True)
class CohesionOptions:
    df_sample: int = option(2000, "windows per category whose tokens give the category's "
                            "document frequencies (the smallest hashes of their window_id)")
    idf_power: float = option(2.0, "a token's weight is its inverse document frequency in "
                              "the category to this power")

    def check(self) -> None:
        if self.df_sample < 1:
            raise ConfigError(f"--option df_sample={self.df_sample}: must be >= 1")
        if not math.isfinite(self.idf_power) or self.idf_power <= 0:
            raise ConfigError(f"--option idf_power={self.idf_power}: must be a number > 0")
