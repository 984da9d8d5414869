"""ProLong (the paper's baseline, ``../PROLONG.md`` in the design): a frozen causal LM over a
window's segments and segment pairs (``scorer``), its perplexities turned into the LDS
(``lds``), and the score stage's method (``method``)."""

from longattn_spark.scorers.prolong.scorer import ProLongScorer

__all__ = ["ProLongScorer"]
