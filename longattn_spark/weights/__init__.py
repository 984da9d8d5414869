"""A model's weights, shared by every scoring method, the driver and ``models/``: no stage and
no method owns them.

- :mod:`~longattn_spark.weights.files`: the weight files' names, the pickle refusal, loading a
  pickled state dict (only after ``--allow-pickle``);
- :mod:`~longattn_spark.weights.locate`: the driver finds a model folder on any filesystem and
  lists the files scoring needs (``locate_model``), reading small files only;
- :mod:`~longattn_spark.weights.location`: ``ModelLocation`` (those files, sent to the
  executors) and the executors' keyed local cache (``fetch_model``);
- :mod:`~longattn_spark.weights.reader`: a public reader of safetensors headers and tensors on
  any filesystem (``ModelReader``, ``safetensors_header``, ``read_safetensors``);
- :mod:`~longattn_spark.weights.fingerprint`: the whole-model weights fingerprint, from a local
  folder or streamed from the headers;
- :mod:`~longattn_spark.weights.configs`: the BOS id and optional JSON files of a model folder;
- :mod:`~longattn_spark.weights.causal_lm`: a whole causal LM described without loading it
  (driver) and loaded (executors).

What one method reads of a model (LongAttn's layer tensors) stays in its package
(``scorers/longattn/checkpoint.py``); model folders made from other formats are
``longattn_spark.models``.
"""
