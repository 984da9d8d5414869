"""A selection recipe: the scorers to run and how to select from their components (pure; the
expressions are checked by ``recipes.expr``).

A recipe is YAML, shipped in the package (``longattn_spark/conf/recipes/<name>.yaml``, read
by name on a cluster like the shipped configs) or a file::

    name: recommended
    description: one line for the report and --help
    scorers:                      # run by `score --recipe`, joined by window_id in select
      - method: repetition        # a built-in method or a plugin package.module:attr
      - method: lossgain
        options: {copy_ngram: 8}  # the method's own options (score --option NAME=VALUE)
        as: lossgain              # the name components are qualified by (default: method)
    params: {alpha: 0.5}          # numbers the expressions may name (select --alpha sets alpha)
    where:                        # filters: a window is kept only if every one is true
      - repetition.dup_10gram < 0.5
    rank: z(lossgain.dependency_gain)
    record: {z_ds: z(ds), z_du: z(-variance)}   # optional: selection columns to fill
    draw: rank                    # rank (default), or random: the paper's random baseline,
                                  # as many windows as the rank's cut keeps, drawn by a
                                  # seeded hash of the window id (select --seed)

``where`` and ``rank`` are written in ``recipes.expr``'s language. A recipe's identity is the
SHA-256 of its canonical form (the parsed YAML as sorted JSON), so comments and layout do not
change it but any option, filter or parameter does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from longattn_spark.errors import ConfigError

#: selection-table columns a recipe may fill from an expression (``record``)
RECORDED_COLUMNS = ("ds", "variance", "z_ds", "z_du")
_KEYS = ("name", "description", "scorers", "params", "where", "rank", "record", "draw")
DRAWS = ("rank", "random")
_SCORER_KEYS = ("method", "options", "as", "model")


@dataclass(frozen=True)
class RecipeScorer:
    """One scorer of a recipe: a method, its options, and the name its components go by."""

    method: str
    name: str
    options: tuple[tuple[str, Any], ...] = ()
    model: str | None = None

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe (module docstring); ``text`` is what was read, ``sha256`` the hash of
    its canonical form."""

    name: str
    scorers: tuple[RecipeScorer, ...]
    rank: str
    where: tuple[str, ...] = ()
    params: tuple[tuple[str, float], ...] = ()
    record: tuple[tuple[str, str], ...] = ()
    draw: str = "rank"
    description: str = ""
    text: str = ""
    sha256: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def params_dict(self) -> dict[str, float]:
        return dict(self.params)

    def with_params(self, **values: float) -> Recipe:
        """The recipe with some parameters set (only ones it declares), re-hashed."""
        unknown = [k for k in values if k not in self.params_dict]
        if unknown:
            raise ConfigError(f"recipe {self.name}: no parameter {', '.join(unknown)}; its "
                              f"parameters: {', '.join(self.params_dict) or '(none)'}")
        params = {**self.params_dict, **values}
        return recipe_from_mapping({**self.canonical(), "params": params}, self.source)

    def canonical(self) -> dict[str, Any]:
        """The recipe as plain data (what its hash is taken over)."""
        return {"name": self.name, "description": self.description,
                "scorers": [{"method": s.method, "as": s.name, "options": dict(s.options),
                             **({"model": s.model} if s.model else {})}
                            for s in self.scorers],
                "params": dict(self.params), "where": list(self.where), "rank": self.rank,
                "record": dict(self.record), "draw": self.draw}


def recipe_sha256(data: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a recipe's data."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def shipped_recipe_names() -> list[str]:
    """The recipes shipped in the package, by name."""
    from importlib.resources import files

    folder = files("longattn_spark") / "conf" / "recipes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def recipe_text(spec: str) -> tuple[str, str]:
    """(YAML text, where it came from) of ``--recipe spec``: a file, else a shipped name."""
    from importlib.resources import files

    path = Path(spec).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    shipped = files("longattn_spark") / "conf" / "recipes" / f"{spec}.yaml"
    if "/" not in spec and shipped.is_file():
        return shipped.read_text(encoding="utf-8"), f"shipped recipe {spec}"
    raise ConfigError(f"--recipe {spec}: no such file, and not a shipped recipe "
                      f"({', '.join(shipped_recipe_names())})")


def load_recipe(spec: str) -> Recipe:
    """The recipe of ``--recipe spec`` (a file or a shipped name), checked for shape; its
    expressions are checked later against its scorers' components."""
    text, source = recipe_text(spec)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--recipe {source}: not valid YAML "
                          f"({str(exc).splitlines()[0]})") from None
    recipe = recipe_from_mapping(data, source)
    return Recipe(**{**recipe.__dict__, "text": text})


def recipe_from_mapping(data: Any, source: str) -> Recipe:
    """A ``Recipe`` from parsed YAML (one-line ``ConfigError`` naming ``source`` and the key
    otherwise)."""
    where = f"--recipe {source}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping with scorers and rank")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(_KEYS)}")
    scorers = _scorers(data.get("scorers"), where)
    rank = data.get("rank")
    if not isinstance(rank, str) or not rank.strip():
        raise ConfigError(f"{where}: rank must be an expression (text)")
    where_list = data.get("where") or []
    if isinstance(where_list, str):
        where_list = [where_list]
    if not isinstance(where_list, list) or not all(isinstance(w, str) and w.strip()
                                                   for w in where_list):
        raise ConfigError(f"{where}: where must be a list of filter expressions")
    params = _numbers(data.get("params") or {}, f"{where}: params")
    record = data.get("record") or {}
    if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
        raise ConfigError(f"{where}: record must map selection columns to expressions")
    bad = sorted(set(record) - set(RECORDED_COLUMNS))
    if bad:
        raise ConfigError(f"{where}: record names {', '.join(bad)}; it can fill "
                          f"{', '.join(RECORDED_COLUMNS)}")
    draw = data.get("draw") or "rank"
    if draw not in DRAWS:
        raise ConfigError(f"{where}: draw {draw!r}: use one of {', '.join(DRAWS)}")
    name = data.get("name") or Path(source).stem
    recipe = Recipe(name=str(name), scorers=scorers, rank=rank.strip(),
                    where=tuple(w.strip() for w in where_list),
                    params=tuple(sorted(params.items())),
                    record=tuple(sorted((str(k), str(v)) for k, v in record.items())),
                    draw=draw, description=str(data.get("description") or ""), source=source)
    canonical = recipe.canonical()
    return Recipe(**{**recipe.__dict__, "sha256": recipe_sha256(canonical),
                     "text": yaml.safe_dump(canonical, sort_keys=False)})


def _scorers(value: Any, where: str) -> tuple[RecipeScorer, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: scorers must be a list of at least one "
                          f"{{method: ..., options: {{...}}}}")
    out: list[RecipeScorer] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"method": item}
        if not isinstance(item, dict) or not isinstance(item.get("method"), str):
            raise ConfigError(f"{where}: scorers[{i}] needs a method")
        unknown = sorted(set(item) - set(_SCORER_KEYS))
        if unknown:
            raise ConfigError(f"{where}: scorers[{i}] has unknown key(s) "
                              f"{', '.join(unknown)}; known: {', '.join(_SCORER_KEYS)}")
        options = item.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}: scorers[{i}].options must be a mapping")
        name = str(item.get("as") or item["method"].rpartition(":")[2])
        if not name.isidentifier():
            raise ConfigError(f"{where}: scorers[{i}] name {name!r} is not an identifier; "
                              f"give it one with as: NAME")
        out.append(RecipeScorer(method=item["method"], name=name,
                                options=tuple(sorted(options.items())),
                                model=item.get("model")))
    names = [s.name for s in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}: two scorers are named {', '.join(twice)}; give one of "
                          f"them another name with as: NAME")
    return tuple(out)


def _numbers(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must map names to numbers")
    out = {}
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)) \
                or not math.isfinite(number) or not str(key).isidentifier():
            raise ConfigError(f"{where}: {key} = {number!r} is not a finite number")
        out[str(key)] = float(number)
    return out


def recipe_from_flags(scorers: Sequence[RecipeScorer], rank: str, where: Sequence[str],
                      params: Mapping[str, float], name: str = "custom") -> Recipe:
    """The recipe a command line gives (``select --rank ... --where ...``)."""
    data = {"name": name, "scorers": [{"method": s.method, "as": s.name,
                                       "options": dict(s.options)} for s in scorers],
            "params": dict(params), "where": list(where), "rank": rank}
    return recipe_from_mapping(data, "--rank")
