"""``--method lossgain``: what far context adds to next-token prediction, as the mean drop of
a causal LM's per-token loss when it sees the whole window instead of a short context (the
definition: ``losses.py``; the model passes: ``scorer.py``).
"""

from longattn_spark.scorers.lossgain.losses import (
    KEY_GAIN,
    KEY_LOSS,
    LOSSGAIN_MATH_VERSION,
    LossGainResult,
    ShortBlock,
    checked_short_context,
    identity_fields,
    lm_tokens_per_window,
    lossgain_from_losses,
    scorer_id_of,
    short_blocks,
)

__all__ = [
    "KEY_GAIN", "KEY_LOSS", "LOSSGAIN_MATH_VERSION", "LossGainResult", "LossGainScorer",
    "ShortBlock", "checked_short_context", "identity_fields", "lm_tokens_per_window",
    "lossgain_from_losses", "scorer_id_of", "short_blocks",
]


def __getattr__(name: str):
    if name == "LossGainScorer":  # torch only when the scorer is asked for
        from longattn_spark.scorers.lossgain.scorer import LossGainScorer

        return LossGainScorer
    raise AttributeError(name)
