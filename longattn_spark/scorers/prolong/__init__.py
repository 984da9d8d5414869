"""ProLong (the paper's baseline, ``../PROLONG.md`` in the design): a frozen causal LM over a
window's segments and segment pairs (``scorer``), its perplexities turned into the LDS
(``lds``), and the score stage's method (``method``). ``ProLongScorer`` loads on first use,
so that the method's declarations import without torch."""

__all__ = ["ProLongScorer"]


def __getattr__(name: str):
    if name == "ProLongScorer":  # torch only when the scorer is asked for
        from longattn_spark.scorers.prolong.scorer import ProLongScorer

        return ProLongScorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
