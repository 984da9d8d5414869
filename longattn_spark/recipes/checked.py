"""A recipe checked against its scorers, before any Spark job: each scorer's method found in
the registry and its options built (an unknown option or a bad value is one line), and every
expression (``rank``, ``where``, ``record``) parsed and resolved against the components the
methods declare (an unknown component, function or scorer, or a type error, is one line).

Also the recipe a command line means when it names no recipe: a method's default ranking
(``default_recipe``), or ``--rank`` / ``--where`` over scorers (``flags_recipe``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from longattn_spark.errors import ConfigError
from longattn_spark.recipes.expr import (
    BOOLEAN,
    NUMBER,
    Component,
    Expression,
    Name,
    compile_expression,
    parse,
    walk,
)
from longattn_spark.recipes.recipe import (
    Recipe,
    RecipeScorer,
    load_recipe,
    recipe_from_mapping,
)


@dataclass(frozen=True)
class CheckedRecipe:
    """A recipe whose methods, options and expressions are known to fit together."""

    recipe: Recipe
    methods: Mapping[str, Any]      # scorer name -> ScorerMethod
    options: Mapping[str, Any]      # scorer name -> the method's Options
    rank: Expression
    where: tuple[Expression, ...]
    record: Mapping[str, Expression]

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def scorers(self) -> tuple[RecipeScorer, ...]:
        return self.recipe.scorers

    @property
    def components(self) -> dict[str, tuple[str, ...]]:
        """Scorer name -> the components its method declares."""
        return {name: tuple(m.components) for name, m in self.methods.items()}

    @property
    def expressions(self) -> tuple[Expression, ...]:
        return (self.rank, *self.where, *self.record.values())

    def referenced(self) -> tuple[Component, ...]:
        """Every component an expression of the recipe reads, each once, in order."""
        return tuple(dict.fromkeys(c for e in self.expressions for c in e.components))

    def describe(self) -> dict[str, Any]:
        """The recipe as recorded with a selection or a probe: name, hash, text."""
        return {"name": self.recipe.name, "sha256": self.recipe.sha256,
                "text": self.recipe.text, "source": self.recipe.source}


def check_recipe(recipe: Recipe, where: str = "--recipe") -> CheckedRecipe:
    """``recipe`` checked (module docstring)."""
    from longattn_spark.scorers import get_method

    methods, options = {}, {}
    for scorer in recipe.scorers:
        try:
            method = get_method(scorer.method)
            options[scorer.name] = method.options_from(scorer.options_dict)
        except ConfigError as exc:
            raise ConfigError(f"{where} {recipe.name}: scorer {scorer.name}: {exc}") from None
        methods[scorer.name] = method
    components = {name: list(m.components) for name, m in methods.items()}
    params = recipe.params_dict
    label = f"{where} {recipe.name}:"
    rank = compile_expression(recipe.rank, components, params, want=NUMBER,
                              where=f"{label} rank")
    filters = tuple(compile_expression(text, components, params, want=BOOLEAN,
                                       where=f"{label} where")
                    for text in recipe.where)
    record = {column: compile_expression(text, components, params, want=NUMBER,
                                         where=f"{label} record.{column}")
              for column, text in recipe.record}
    return CheckedRecipe(recipe=recipe, methods=methods, options=options, rank=rank,
                         where=filters, record=record)


def default_recipe(method_spec: str, options: Mapping[str, Any] | None = None,
                   normalize: str = "zscore") -> Recipe:
    """The recipe of a method's default ranking (``ScorerMethod.ranking``): one scorer, no
    filter. For LongAttn it is the shipped ``longattn`` recipe (the paper's LDS)."""
    from longattn_spark.scorers import get_method

    method = get_method(method_spec)
    ranking = method.ranking(normalize)
    name = method.name if normalize == "zscore" else f"{method.name}-{normalize}"
    return recipe_from_mapping({
        "name": name, "description": f"the default ranking of --method {method.name}",
        "scorers": [{"method": method_spec, "as": method.name,
                     "options": dict(options or {})}],
        "params": dict(ranking.params), "rank": ranking.rank, "record": dict(ranking.record)},
        f"--method {method_spec}")


def qualifiers(texts: Sequence[str]) -> list[str]:
    """The scorer names that ``texts`` (expressions) qualify components with, in order."""
    found: dict[str, None] = {}
    for text in texts:
        for node in walk(parse(text)):
            if isinstance(node, Name) and node.qualifier:
                found[node.qualifier] = None
    return list(found)


def flags_recipe(rank: str, where: Sequence[str], scorers: Sequence[RecipeScorer],
                 params: Mapping[str, float], base: Recipe | None = None) -> Recipe:
    """The recipe of ``--rank`` / ``--where``: over ``base``'s scorers when a recipe was
    named (its rank replaced when ``--rank`` is given, its filters when ``--where`` is), else
    over ``scorers``."""
    data: dict[str, Any] = base.canonical() if base is not None else {
        "scorers": [{"method": s.method, "as": s.name, "options": s.options_dict}
                    for s in scorers],
        "params": dict(params), "record": {}}
    data["name"] = f"{base.name}+flags" if base is not None else "custom"
    data["description"] = "from the command line (--rank / --where)"
    if rank:
        data["rank"] = rank
        data["record"] = {}
    if where:
        data["where"] = list(where)
    if not data.get("rank"):
        raise ConfigError("--where needs --rank or --recipe: what to rank the windows that "
                          "pass by")
    return recipe_from_mapping(data, "--rank")


def named_or_file_recipe(spec: str) -> Recipe:
    """``--recipe NAME|FILE`` loaded (a shipped name or a YAML file)."""
    return load_recipe(spec)
