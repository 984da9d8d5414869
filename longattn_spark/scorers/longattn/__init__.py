"""Layer-0 attention scorer (no Spark here): DS and variance of token windows.

>>> scorer = Layer0Scorer.from_pretrained("/models/Llama-3.1-8B")
>>> ids = build_model_input(window_ids, bos_id=scorer.bos_id, seq_len=32768)
>>> out = scorer.score(ids)          # out.ds, out.variance, out.ds_heads, out.var_heads

The names load on first use, so that the method's options and declarations (``options.py``,
``method.py``) import without torch (the CLI starts without it).
"""

import importlib

_NAMES = {
    "MATH_VERSION": "longattn_spark.scorers.longattn.attention_sums",
    "ds_and_variance": "longattn_spark.scorers.longattn.attention_sums",
    "tail_attention_sums": "longattn_spark.scorers.longattn.attention_sums",
    "Layer0Checkpoint": "longattn_spark.scorers.longattn.checkpoint",
    "load_layer0_checkpoint": "longattn_spark.scorers.longattn.checkpoint",
    "Layer0Scorer": "longattn_spark.scorers.longattn.scorer",
    "ScoreOutput": "longattn_spark.scorers.longattn.scorer",
    "build_model_input": "longattn_spark.scorers.longattn.scorer",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
