"""``longattn-spark demo``: the whole pipeline on the embedded local Spark, no download.

- :mod:`~longattn_spark.demo.corpus`: a small corpus from files on this machine (standard
  library sources, pydoc documentation, license files);
- :mod:`~longattn_spark.demo.smoke_model`: a tiny random-weight Llama with the real Llama-3
  tokenizer, for runs and tests without a download (its scores mean nothing);
- :mod:`~longattn_spark.demo.run`: ``run_demo``, ingest -> score -> select -> export ->
  report under one output folder.
"""

from longattn_spark.demo.run import DemoPaths, demo_config, demo_model_and_tokenizer, run_demo

__all__ = ["DemoPaths", "demo_config", "demo_model_and_tokenizer", "run_demo"]
