"""``--method lossgain``'s own options (``scorers.options``)."""

from __future__ import annotations

from dataclasses import dataclass

from longattn_spark.errors import ConfigError
from longattn_spark.scorers.lossgain.losses import DEFAULT_COPY_NGRAM
from longattn_spark.scorers.options import option


@dataclass(frozen=True)
class LossGainOptions:
    short_context: int = option(0, "tokens of short context S (0: the min distance k = L // 4); "
                                "must be < L/2", alias=True)
    copy_ngram: int = option(DEFAULT_COPY_NGRAM, "tokens m of the n-gram that makes a target a "
                             "copy (copy_share, dependency_gain)")

    def check(self) -> None:
        if self.short_context < 0:
            raise ConfigError(f"--option short_context={self.short_context}: must be >= 1 "
                              f"(0: L // 4)")
        if self.copy_ngram < 1:
            raise ConfigError(f"--option copy_ngram={self.copy_ngram}: must be >= 1")
