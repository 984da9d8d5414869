"""A scoring method's own options: each method declares a frozen dataclass of them (names,
types, defaults, help, validation) beside its math, and every way of giving them reaches it
the same way:

- the command line: ``--option NAME=VALUE`` (repeatable; any method, plugins included), and
  the flags of earlier releases as aliases (``--layer 3`` is ``--option layer=3``; an alias
  is declared on the option: ``option(..., alias="layer")``);
- YAML: ``score: {options: {NAME: VALUE}}`` (and the aliases as ``score`` keys);
- a recipe: ``scorers: [{method: lossgain, options: {copy_ngram: 8}}]``.

An option the method does not have ends in one line naming the option, the method and the
options it has, before any Spark job; a value of the wrong type or outside its range too (the
dataclass's ``check`` method). The options are part of the method's scorer_id fingerprint.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from longattn_spark.errors import ConfigError


def option(default: Any, help: str, *, alias: bool = False,
           choices: tuple[str, ...] | None = None, operational: bool = False) -> Any:
    """One option of a method's options dataclass. ``alias``: an earlier release had it as a
    flag of its own (``--layer``), which still works; ``operational``: it changes where or how
    fast a score is computed, never its value (left out of the probe's identity)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "alias": alias, "choices": choices, "operational": operational})


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""

    def check(self) -> None:
        """Validation across fields (one-line ``ConfigError``); nothing to check here."""


def option_fields(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def describe_options(cls: type) -> str:
    """``name (type, default x), ...`` for messages."""
    hints = typing.get_type_hints(cls)
    parts = [f"{f.name} ({_type_name(hints[f.name])}, default {f.default!r})"
             for f in option_fields(cls)]
    return ", ".join(parts) or "(none)"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def build_options(method_name: str, cls: type, given: Mapping[str, Any]) -> Any:
    """The method's options from ``given`` (name -> value, values may be text from a flag):
    unknown names, bad types and bad values end in one line."""
    known = {f.name: f for f in option_fields(cls)}
    unknown = [name for name in given if name not in known]
    if unknown:
        raise ConfigError(f"--option {unknown[0]}: --method {method_name} has no option "
                          f"{unknown[0]}; its options: {describe_options(cls)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in given.items():
        values[name] = _coerce(value, hints[name], f"--option {name}={value}",
                               known[name].metadata.get("choices"))
    built = cls(**values)
    checker = getattr(built, "check", None)
    if checker is not None:
        checker()
    return built


def _coerce(value: Any, tp: Any, where: str, choices: tuple[str, ...] | None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        tp = args[0]
    try:
        if tp is bool:
            if isinstance(value, bool):
                out = value
            elif str(value).strip().lower() in ("1", "true", "yes", "on"):
                out = True
            elif str(value).strip().lower() in ("0", "false", "no", "off"):
                out = False
            else:
                raise ValueError(value)
        elif tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            out = int(value)
        elif tp is float:
            if isinstance(value, bool):
                raise ValueError(value)
            out = float(value)
            if not math.isfinite(out):
                raise ValueError(value)
        else:
            out = tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {_type_name(tp)}") from None
    if choices and out not in choices:
        raise ConfigError(f"{where}: use one of {', '.join(choices)}")
    return out


def parse_option_flags(items: Iterable[str]) -> dict[str, str]:
    """``["layer=3", "kernel=torch"]`` -> ``{"layer": "3", "kernel": "torch"}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ConfigError(f"--option {item!r}: expected NAME=VALUE, e.g. --option layer=3")
        if name in out and out[name] != value:
            raise ConfigError(f"--option {name} is given twice ({out[name]!r} and {value!r})")
        out[name] = value.strip()
    return out


def options_as_dict(options: Any, *, operational: bool = True) -> dict[str, Any]:
    """The options as plain data (for records and fingerprints); ``operational=False`` leaves
    out the ones that never change a score."""
    return {f.name: getattr(options, f.name) for f in option_fields(type(options))
            if operational or not f.metadata.get("operational")}


def given_options(cfg: Any) -> dict[str, Any]:
    """The options a ``ScoreConfig`` gives: its ``options`` mapping (YAML), then its
    ``option`` flags (``--option NAME=VALUE`` and the aliases), which win."""
    given = dict(getattr(cfg, "options", None) or {})
    given.update(parse_option_flags(getattr(cfg, "option", None) or []))
    return given
