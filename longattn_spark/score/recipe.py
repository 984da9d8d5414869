"""``score --recipe NAME|FILE``: every scorer a recipe names, each run by the score job with
the shared score options given (tables, model, device, ...) and its own method and options
from the recipe. The probe scores a recipe's scorers the same way."""

from __future__ import annotations

import dataclasses

from longattn_spark.config import ScoreConfig
from longattn_spark.errors import ConfigError
from longattn_spark.recipes.checked import CheckedRecipe, check_recipe, default_recipe
from longattn_spark.recipes.recipe import RecipeScorer, load_recipe
from longattn_spark.scorers.options import given_options


def score_recipe(score: ScoreConfig) -> CheckedRecipe:
    """The recipe a score run names (``--recipe``), else the one-scorer recipe of
    ``--method`` with its options; checked, before any Spark job."""
    if score.recipe:
        if score.option or score.options:
            raise ConfigError(f"--option is for one --method; with --recipe {score.recipe} "
                              f"each scorer's options are the recipe's")
        return check_recipe(load_recipe(score.recipe))
    return check_recipe(default_recipe(score.method, given_options(score)))


def scorer_config(score: ScoreConfig, scorer: RecipeScorer) -> ScoreConfig:
    """The score options of one scorer of a recipe: the shared ones as given, the method and
    its own options from the recipe, the recipe's model when it names one."""
    return dataclasses.replace(score, method=scorer.method, options=scorer.options_dict,
                               option=[], recipe="", model=scorer.model or score.model)
