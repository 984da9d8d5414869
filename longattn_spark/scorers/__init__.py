"""The scoring methods of ``longattn-spark score --method M``, and the one registry the score
stage dispatches through.

Each method lives in its own sub-package beside its math: ``scorers/longattn/`` (the paper's
attention at layer N), ``scorers/prolong/`` (ProLong's LDS with a whole causal LM), ... The
interface a method implements is ``scorers.base.ScorerMethod``. What all methods share:

- driver: ``scorers.settings`` (device, dtype, threads and L of a run), ``scorers.identity``
  (the scorer_id hash);
- executors: ``scorers.executor`` (per-worker cache, the mapInArrow function, the task's
  device, the out-of-memory message, non-finite scores as rejects), ``scorers.batch`` (a batch
  of windows, the length and vocabulary rejects), ``scorers.model_input`` (BOS + the ids);
- models: ``longattn_spark.weights`` (locating, fetching, reading and fingerprinting weights,
  the pickle refusal, whole causal LMs), ``longattn_spark.devices`` (devices and dtypes).

``--method`` takes a built-in name (``BUILTIN``) or a plugin, ``package.module:attr``: an
importable object that is a ``ScorerMethod`` instance (or subclass, instantiated without
arguments). The executors import the same module, so a plugin must be importable there too
(installed, or shipped with ``spark.sparkContext.addPyFile``). Its ``out_fields`` must be
columns of the scores table.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from longattn_spark.errors import ConfigError

if TYPE_CHECKING:
    from longattn_spark.scorers.base import ScorerMethod

#: built-in ``--method`` names -> ``module:attr`` of their ``ScorerMethod`` (imported lazily,
#: so that the CLI starts without torch)
BUILTIN: dict[str, str] = {
    "longattn": "longattn_spark.scorers.longattn.method:METHOD",
    "prolong": "longattn_spark.scorers.prolong.method:METHOD",
    "lossgain": "longattn_spark.scorers.lossgain.method:METHOD",
}


def method_names() -> list[str]:
    """The built-in methods, in ``--help`` order."""
    return list(BUILTIN)


def get_method(spec: str) -> ScorerMethod:
    """The method for ``--method spec``: a built-in name or ``package.module:attr``
    (one-line ``ConfigError`` otherwise)."""
    from longattn_spark.scorers.base import ScorerMethod

    target = BUILTIN.get(spec)
    if target is None:
        if ":" not in spec:
            raise ConfigError(f"--method {spec!r}: use one of {', '.join(BUILTIN)}, or a "
                              f"plugin as package.module:attr")
        target = spec
    module_name, _, attr = target.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--method {spec}: cannot import {target} ({type(exc).__name__}: "
                          f"{exc})") from None
    if isinstance(found, type) and issubclass(found, ScorerMethod):
        found = found()
    if not isinstance(found, ScorerMethod):
        raise ConfigError(f"--method {spec}: {target} is not a "
                          f"longattn_spark.scorers.base.ScorerMethod")
    _check_out_fields(spec, found)
    return found


def _check_out_fields(spec: str, method: ScorerMethod) -> None:
    """A method writes only columns of the scores table, with their types."""
    from longattn_spark.tables.schemas import SCORES

    if not method.name:
        raise ConfigError(f"--method {spec}: the method has no name")
    columns = {f.name: f.dataType for f in SCORES.schema.fields}
    for out in method.out_fields:
        if columns.get(out.name) != out.dataType:
            raise ConfigError(f"--method {spec}: output column {out.name} "
                              f"({out.dataType.simpleString()}) is not a column of the scores "
                              f"table with that type (longattn_spark/tables/schemas.py SCORES)")
