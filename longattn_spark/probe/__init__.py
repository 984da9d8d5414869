"""``longattn-spark probe``: does a scorer separate natural windows from matched controls?

Pure parts: :mod:`~longattn_spark.probe.controls` (token-level controls from a natural
window), :mod:`~longattn_spark.probe.auc` (AUC, seeded bootstrap interval, verdict, the
uniform-head DS reference), :mod:`~longattn_spark.probe.results` (AUCs per category, kind and
component from the probe table's rows), :mod:`~longattn_spark.probe.reference` (share of far
attention going to the first tokens, torch). IO: :mod:`~longattn_spark.probe.sample` (the
natural sample and donors), :mod:`~longattn_spark.probe.job` (the run),
:mod:`~longattn_spark.probe.summary` (printing, JSON), :mod:`~longattn_spark.probe.report`
(the report's section)."""
