"""The score stage: windows table -> per-window scores -> scores table.

Read top-down:

- :mod:`~longattn_spark.score.model_files`: the model on shared storage (driver: locate and
  fingerprint; executors: fetch into a per-executor cache);
- :mod:`~longattn_spark.score.plan`: the driver's decisions before any task (options, the model
  against the windows, the tokenizer check, a ``ScorePlan`` per method);
- :mod:`~longattn_spark.score.schema`: the rows the executor UDFs return (Spark schema, Arrow
  derived from it);
- :mod:`~longattn_spark.score.udf` (``--method longattn``) and
  :mod:`~longattn_spark.score.prolong_udf` (``--method prolong``): the executors' mapInArrow
  functions, each with its scorer built once per Python worker;
- :mod:`~longattn_spark.score.job`: ``longattn-spark score`` (the stream, MERGE, rejects);
- :mod:`~longattn_spark.score.summary`: what a run did, and how it prints.

The model math itself (no Spark) is :mod:`longattn_spark.scoring`.
"""
