"""Layer-0 attention scorer (no Spark here): DS and variance of token windows.

>>> scorer = Layer0Scorer.from_pretrained("/models/Llama-3.1-8B")
>>> ids = build_model_input(window_ids, bos_id=scorer.bos_id, seq_len=32768)
>>> out = scorer.score(ids)          # out.ds, out.variance, out.ds_heads, out.var_heads
"""

from longattn_spark.scorers.longattn.attention_sums import (
    MATH_VERSION,
    ds_and_variance,
    tail_attention_sums,
)
from longattn_spark.scorers.longattn.checkpoint import Layer0Checkpoint, load_layer0_checkpoint
from longattn_spark.scorers.longattn.scorer import Layer0Scorer, ScoreOutput, build_model_input

__all__ = [
    "MATH_VERSION",
    "Layer0Checkpoint",
    "Layer0Scorer",
    "ScoreOutput",
    "build_model_input",
    "ds_and_variance",
    "load_layer0_checkpoint",
    "tail_attention_sums",
]
