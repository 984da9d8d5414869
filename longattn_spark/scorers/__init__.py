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

``--method`` takes a built-in name (``BUILTIN``: every sub-package here with a ``method.py``,
so a new method is one new package) or a plugin, ``package.module:attr``: an importable object
that is a ``ScorerMethod`` instance (or subclass, instantiated without arguments). The
executors import the same module, so a plugin must be importable there too (installed, or
shipped with ``spark.sparkContext.addPyFile``). A plugin declares its options, components and
default ranking as a built-in does; typed ``out_fields``, if any, must be columns of the
scores table.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from longattn_spark.errors import ConfigError

if TYPE_CHECKING:
    from longattn_spark.scorers.base import ScorerMethod

def _builtin_methods() -> dict[str, str]:
    """Every sub-package of ``scorers/`` with a ``method.py`` is a built-in method named after
    it (``scorers/lossgain/method.py`` -> ``lossgain``), found without importing it."""
    import pkgutil
    from importlib.resources import files

    # importlib.resources and the package's __path__, not pathlib: on a Spark Connect server
    # the package is imported from the zip the client shipped (longattn_spark/ship.py)
    here = files(__name__)
    return {m.name: f"{__name__}.{m.name}.method:METHOD"
            for m in pkgutil.iter_modules(__path__)
            if m.ispkg and (here / m.name / "method.py").is_file()}


#: built-in ``--method`` names -> ``module:attr`` of their ``ScorerMethod`` (imported lazily,
#: so that the CLI starts without torch); ``longattn`` (the default) first
BUILTIN: dict[str, str] = dict(sorted(_builtin_methods().items(),
                                      key=lambda item: (item[0] != "longattn", item[0])))


def method_names() -> list[str]:
    """The built-in methods, in ``--help`` order."""
    return list(BUILTIN)


def option_aliases() -> dict[str, list[tuple[str, str]]]:
    """The flags of earlier releases that set a built-in method's option of the same name
    (``--layer`` is ``--option layer=N``): option name -> [(method, help)]."""
    import dataclasses

    aliases: dict[str, list[tuple[str, str]]] = {}
    for name in BUILTIN:
        for f in dataclasses.fields(get_method(name).Options):
            if f.metadata.get("alias"):
                aliases.setdefault(f.name, []).append((name, f.metadata.get("help", "")))
    return aliases


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
    _check_declarations(spec, found)
    return found


def _check_declarations(spec: str, method: ScorerMethod) -> None:
    """A method has a name, components named like identifiers, options as a dataclass, and
    writes only columns of the scores table, with their types."""
    import dataclasses

    from longattn_spark.tables.schemas import SCORES

    if not method.name:
        raise ConfigError(f"--method {spec}: the method has no name")
    if not method.components or not all(str(c).isidentifier() for c in method.components):
        raise ConfigError(f"--method {spec}: components must be a non-empty list of names "
                          f"(identifiers), got {list(method.components)!r}")
    if not dataclasses.is_dataclass(method.Options):
        raise ConfigError(f"--method {spec}: Options must be a dataclass "
                          f"(longattn_spark.scorers.options)")
    columns = {f.name: f.dataType for f in SCORES.schema.fields}
    for out in method.out_fields:
        if columns.get(out.name) != out.dataType:
            raise ConfigError(f"--method {spec}: output column {out.name} "
                              f"({out.dataType.simpleString()}) is not a column of the scores "
                              f"table with that type (longattn_spark/tables/schemas.py SCORES)")
