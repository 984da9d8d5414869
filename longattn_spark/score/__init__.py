"""The score stage: windows table -> per-window scores -> scores table.

Read top-down:

- :mod:`~longattn_spark.score.plan`: the driver's checks every method shares before any task
  (options, the windows table's facts, the tokenizer check);
- :mod:`~longattn_spark.score.job`: ``longattn-spark score`` (the stream, MERGE, rejects),
  dispatching through the one registry of methods;
- :mod:`~longattn_spark.score.summary`: what a run did, and how it prints.

The methods themselves, each with its math, and what they share on the executors (the
mapInArrow function, the per-worker cache) are :mod:`longattn_spark.scorers`; the model on
shared storage (the driver locates and fingerprints it, executors fetch it into a
per-executor cache) is :mod:`longattn_spark.weights`.
"""
