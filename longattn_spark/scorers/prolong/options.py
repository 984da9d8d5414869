"""``--method prolong``'s own options (``scorers.options``)."""

from __future__ import annotations

from dataclasses import dataclass

from longattn_spark.scorers.options import option


@dataclass(frozen=True)
class ProLongOptions:
    segment_size: int = option(128, "tokens per segment C", alias=True)
    pairs: int = option(500, "segment pairs sampled per window (-1: every pair)", alias=True)
    threshold: float = option(0.1, "dependency-strength threshold (strict)", alias=True)
    windows_tokenizer: str = option("", "the tokenizer that cut the windows, when the model's "
                                    "tokenizer differs (window text is decoded with it and "
                                    "re-tokenized with the model's)", alias=True)

    def check(self) -> None:
        from longattn_spark.scorers.prolong.lds import checked_settings

        checked_settings(self.segment_size, self.pairs, self.threshold)
