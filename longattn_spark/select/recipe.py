"""Which recipe a selection ranks by, and which scorer of the scores table each of its
scorers is, decided on the driver before the selection runs (one-line errors otherwise).

- ``--recipe NAME|FILE``: that recipe (``--rank`` / ``--where`` replace its rank / filters,
  ``--alpha`` sets its ``alpha``);
- ``--rank`` / ``--where`` alone: a recipe over the table's scorers, each named by its method
  (``lossgain.dependency_gain``), keeping those the expressions read;
- neither: the chosen scorer's own ranking (``ScorerMethod.ranking``; ``--normalize``,
  ``--alpha``): for LongAttn exactly the paper's LDS, the shipped ``longattn`` recipe.

A recipe's scorer is found among the table's scorers by its method, and by its options when
several scorers share the method (the options each scorer recorded in the table property
``longattn.scorer.<id>``); ``--scorer-id NAME=ID,...`` names them outright.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from longattn_spark.errors import ConfigError
from longattn_spark.recipes.checked import (
    CheckedRecipe,
    check_recipe,
    default_recipe,
    flags_recipe,
    qualifiers,
)
from longattn_spark.inputs import StoredScorer
from longattn_spark.recipes.recipe import RecipeScorer, load_recipe
from longattn_spark.scorers.options import options_as_dict


@dataclass(frozen=True)
class RecipeRequest:
    """What the command line asked for (``SelectConfig``)."""

    recipe: str = ""
    rank: str = ""
    where: tuple[str, ...] = ()
    normalize: str = "zscore"
    alpha: float = 0.5
    scorer_id: str = ""

    @property
    def explicit(self) -> bool:
        """A recipe, rank or filter was given (otherwise: the scorer's own ranking)."""
        return bool(self.recipe or self.rank or self.where)


def precheck(request: RecipeRequest) -> None:
    """What can be checked of the request before any Spark job: a recipe file or name with
    all its expressions; ``--rank`` / ``--where`` parsed, and their names resolved against the
    components the built-in methods declare (qualified by method; a plugin's qualifier is
    left for the check against the table's scorers)."""
    from longattn_spark.recipes.expr import compile_expression, parse
    from longattn_spark.scorers import BUILTIN, get_method

    if request.explicit and request.normalize != "zscore":
        raise ConfigError(f"--normalize {request.normalize} changes a scorer's own ranking; "
                          f"with --recipe or --rank write minmax() in the rank instead")
    if request.recipe:
        base = load_recipe(request.recipe)
        check_recipe(flags_recipe(request.rank, request.where, (), {}, base)
                     if request.rank or request.where else base)
        return
    texts = [("--rank", request.rank)] * bool(request.rank) + [("--where", w)
                                                               for w in request.where]
    for where, text in texts:
        parse(text, where)
    if request.where and not request.rank:
        raise ConfigError("--where needs --rank or --recipe: what to rank the windows that "
                          "pass by")
    known = {name: list(get_method(name).components) for name in BUILTIN}
    if not set(qualifiers([t for _, t in texts])) <= set(known):
        return  # a plugin's scorer: its components are known once the table is read
    for where, text in texts:
        if _unqualified_known(text, known):
            compile_expression(text, known, {"alpha": request.alpha},
                               want="number" if where == "--rank" else "boolean",
                               where=where)


def _unqualified_known(text: str, known: dict[str, list[str]]) -> bool:
    """Every unqualified name of ``text`` is a component of exactly one built-in method or
    ``alpha`` (else the table's scorers decide, after the first Spark job)."""
    from longattn_spark.recipes.expr import Name, parse, walk

    for node in walk(parse(text)):
        if isinstance(node, Name) and node.qualifier is None and node.name != "alpha":
            if sum(node.name in names for names in known.values()) != 1:
                return False
    return True


def requested_ids(text: str) -> tuple[str, dict[str, str]]:
    """``--scorer-id``: a bare id, or ``NAME=ID,NAME=ID``."""
    if "=" not in text:
        return text.strip(), {}
    out: dict[str, str] = {}
    for item in text.split(","):
        name, sep, sid = (x.strip() for x in item.partition("="))
        if not sep or not name or not sid:
            raise ConfigError(f"--scorer-id {text!r}: expected ID or NAME=ID,NAME=ID")
        out[name] = sid
    return "", out


def selection_recipe(request: RecipeRequest, scorers: Mapping[str, StoredScorer],
                     table: str) -> tuple[CheckedRecipe, dict[str, str]]:
    """The checked recipe and the scorer_id of each of its scorers (module docstring)."""
    from longattn_spark.inputs import chosen_scorer_id

    bare, named = requested_ids(request.scorer_id)
    if request.explicit and request.normalize != "zscore":
        raise ConfigError(f"--normalize {request.normalize} changes a scorer's own ranking; "
                          f"with --recipe or --rank write minmax() in the rank instead")
    if request.recipe:
        base = load_recipe(request.recipe)
        if request.rank or request.where:
            base = flags_recipe(request.rank, request.where, (), {}, base)
    elif request.explicit:
        base = _flags_over_table(request, scorers, table)
    else:
        sid = chosen_scorer_id(bare, {s: v.windows for s, v in scorers.items()}, table)
        base = default_recipe(scorers[sid].spec, normalize=request.normalize)
        named = {base.scorers[0].name: sid}
    if "alpha" in base.params_dict:
        base = base.with_params(alpha=float(request.alpha))
    recipe = check_recipe(base)
    if bare and len(recipe.scorers) == 1:
        named = {recipe.scorers[0].name: bare}
    elif bare:
        raise ConfigError(f"--scorer-id {bare}: recipe {recipe.name} joins "
                          f"{len(recipe.scorers)} scorers; name each: --scorer-id "
                          f"{','.join(s.name + '=ID' for s in recipe.scorers)}")
    return recipe, {s.name: _scorer_of(s, recipe, scorers, named, table)
                    for s in recipe.scorers}


def _flags_over_table(request: RecipeRequest, scorers: Mapping[str, StoredScorer],
                      table: str):
    """``--rank`` / ``--where`` without a recipe: over the table's scorers named by method,
    keeping the ones the expressions read (all of them when nothing is qualified)."""
    by_method: dict[str, list[StoredScorer]] = {}
    for stored in scorers.values():
        by_method.setdefault(stored.method, []).append(stored)
    named = qualifiers([request.rank, *request.where])
    unknown = [n for n in named if n not in by_method]
    if unknown:
        raise ConfigError(f"--rank/--where name scorer {unknown[0]!r}, but {table} holds "
                          f"scorers of {', '.join(sorted(by_method)) or 'no method'}")
    every = [RecipeScorer(method=by_method[m][0].spec, name=m) for m in sorted(by_method)]
    params = {"alpha": request.alpha}
    read = {c.scorer for c in check_recipe(flags_recipe(request.rank, request.where, every,
                                                        params)).referenced()}
    return flags_recipe(request.rank, request.where, [s for s in every if s.name in read],
                        params)


def _scorer_of(scorer: RecipeScorer, recipe: CheckedRecipe,
               scorers: Mapping[str, StoredScorer], named: Mapping[str, str],
               table: str) -> str:
    if scorer.name in named:
        sid = named[scorer.name]
        if sid not in scorers:
            raise ConfigError(f"--scorer-id {scorer.name}={sid}: no such scorer in {table}; "
                              f"scorer_ids there: {', '.join(scorers) or 'none'}")
        return sid
    method = recipe.methods[scorer.name].name
    candidates = [s for s in scorers.values() if s.method == method]
    if scorer.options and len(candidates) > 1:
        wanted = options_as_dict(recipe.options[scorer.name], operational=False)
        candidates = [s for s in candidates if s.options is None
                      or all(s.options.get(k) == v for k, v in wanted.items())]
    if len(candidates) == 1:
        return candidates[0].scorer_id
    if not candidates:
        raise ConfigError(f"recipe {recipe.name}: {table} holds no scores of scorer "
                          f"{scorer.name} (--method {scorer.method}); run score --recipe "
                          f"{recipe.recipe.source or recipe.name} first")
    listing = ", ".join(f"{s.scorer_id} (options {json.dumps(s.options, sort_keys=True)})"
                        for s in candidates)
    raise ConfigError(f"recipe {recipe.name}: {table} holds several scorers of --method "
                      f"{method} ({listing}); choose one with --scorer-id {scorer.name}=ID")
