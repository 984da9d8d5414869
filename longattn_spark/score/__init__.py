"""The score stage: windows table -> per-window scores -> scores table.

Read top-down:

- :mod:`~longattn_spark.score.plan`: the driver's checks every method shares before any task
  (options, the run's tables, the windows table's facts, the tokenizer check);
- :mod:`~longattn_spark.score.job`: ``longattn-spark score`` in named steps (plan the scorer,
  record it, commit every micro-batch), dispatching through the one registry of methods;
- :mod:`~longattn_spark.score.micro_batches`: where the micro-batches come from (the stream on
  a classic session, file batches over Spark Connect) and the resume anti-join;
- :mod:`~longattn_spark.score.commit`: one micro-batch scored, counted and written (MERGE of
  scores and rejects);
- :mod:`~longattn_spark.score.record`: the scorer's table property, with what executors ran;
- :mod:`~longattn_spark.score.summary`: what a run did, and how it prints.

The methods themselves, each with its math, and what they share on the executors (the
mapInArrow function, the per-worker cache) are :mod:`longattn_spark.scorers`; the model on
shared storage (the driver locates and fingerprints it, executors fetch it into a
per-executor cache) is :mod:`longattn_spark.weights`.
"""
