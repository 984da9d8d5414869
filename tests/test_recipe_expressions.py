"""The recipes' expression language (``--rank``, ``--where``): parsing, names, types, and
the numpy evaluation against pandas written out by hand. Pure: no Spark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from longattn_spark.errors import ConfigError
from longattn_spark.recipes.evaluate import evaluate, passes
from longattn_spark.recipes.expr import BOOLEAN, NUMBER, Component, compile_expression

COMPONENTS = {"lossgain": ["score", "dependency_gain", "copy_share"],
              "repetition": ["dup_10gram", "compression", "score"]}


@pytest.mark.parametrize("text, message", [
    ("dependency_gain +", "ends too early"),
    ("dependency_gain $ 2", "unexpected character '$'"),
    ("foo(dependency_gain)", "unknown function foo()"),
    ("z(pct(dependency_gain))", "pct() inside z()"),
    ("nope", "unknown component 'nope'"),
    ("lossgain.nope", "scorer 'lossgain' has no component 'nope'"),
    ("prolong.score", "unknown scorer 'prolong'"),
    ("score", "'score' is a component of lossgain and repetition; qualify it"),
    ("dependency_gain and copy_share > 0", "'and' needs a boolean, got a number"),
    ("dependency_gain > 0", "is a boolean, but --rank needs a number"),
    ("pct(copy_share, 2)", "pct() takes 1 argument, got 2"),
    ("least(copy_share)", "least() takes two or more arguments"),
    ("1 < copy_share < 3", "comparisons do not chain"),
    ("-(copy_share > 1)", "unary '-' needs a number, got a boolean"),
    ("", "empty expression"),
    ("(copy_share", "expected ')'"),
    ("alpha * z(copy_share)", "unknown component 'alpha'"),
])
def test_bad_expressions_are_one_line_errors_naming_the_culprit(text, message):
    with pytest.raises(ConfigError) as caught:
        compile_expression(text, COMPONENTS, want=NUMBER, where="--rank")
    assert message in str(caught.value)
    assert str(caught.value).startswith("--rank") and "\n" not in str(caught.value)


def test_names_resolve_to_components_and_parameters():
    e = compile_expression("z(lossgain.score) + alpha * ln(repetition.compression) - "
                           "copy_share", COMPONENTS, {"alpha": 0.5})
    assert e.components == (Component("lossgain", "score"),
                            Component("repetition", "compression"),
                            Component("lossgain", "copy_share"))
    assert [c.function for c in e.statistics] == ["z"]
    f = compile_expression("not dup_10gram >= 0.5 or compression < 3", COMPONENTS,
                           want=BOOLEAN)
    assert f.type == BOOLEAN
    with pytest.raises(ConfigError, match="both a parameter and a component"):
        compile_expression("copy_share", COMPONENTS, {"copy_share": 1.0})


def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 60
    data = pd.DataFrame({
        "category": rng.choice(["book", "code", "web"], n),
        "lossgain.dependency_gain": rng.normal(0.1, 0.05, n),
        "lossgain.copy_share": rng.uniform(0, 1, n),
        "repetition.compression": rng.uniform(1.2, 4.0, n),
        "repetition.dup_10gram": rng.choice([0.0, 0.25, 0.5, 1.0], n),
    })
    data.loc[3, "lossgain.copy_share"] = np.nan      # a null component
    data.loc[7, "repetition.compression"] = 0.0       # ln(0) is null
    return data


def columns(data: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: data[c].to_numpy() for c in data.columns if c != "category"}


def test_a_rank_expression_equals_pandas():
    data = frame()
    text = ("z(lossgain.dependency_gain) - 0.5 * pct(repetition.dup_10gram) "
            "+ greatest(ln(repetition.compression), copy_share) / abs(minmax(copy_share) - 2)")
    got = evaluate(compile_expression(text, COMPONENTS), columns(data), data["category"])

    by = data.groupby("category")
    gain = data["lossgain.dependency_gain"]
    z = (gain - by["lossgain.dependency_gain"].transform("mean")) / \
        by["lossgain.dependency_gain"].transform("std")
    dup = data["repetition.dup_10gram"]
    pct = data.groupby("category")["repetition.dup_10gram"].rank(method="average")
    pct = (pct - 0.5) / by["repetition.dup_10gram"].transform("count")  # mid-rank share below
    copy = data["lossgain.copy_share"]
    low, high = by["lossgain.copy_share"].transform("min"), by["lossgain.copy_share"].transform(
        "max")
    minmax = (copy - low) / (high - low)
    comp = data["repetition.compression"]
    ln = np.log(comp.where(comp > 0))
    greatest = pd.concat([ln, copy], axis=1).max(axis=1, skipna=True)
    want = z - 0.5 * pct + greatest / (minmax - 2).abs()
    assert dup.notna().all()
    np.testing.assert_allclose(got, want.to_numpy(), rtol=1e-12, atol=1e-12)
    assert np.isnan(got[3]) and np.isfinite(got[7])  # minmax(null) is null; ln(0) skipped


def test_filters_use_three_valued_logic():
    data = pd.DataFrame({"category": ["a"] * 4,
                         "lossgain.copy_share": [0.1, np.nan, 0.9, np.nan],
                         "repetition.dup_10gram": [0.0, 0.0, 0.0, 1.0]})
    cats, cols = data["category"], columns(data)

    def kept(text: str) -> list[bool]:
        e = compile_expression(text, COMPONENTS, want=BOOLEAN, where="--where")
        return passes(evaluate(e, cols, cats)).tolist()

    assert kept("copy_share < 0.5") == [True, False, False, False]
    assert kept("not copy_share < 0.5") == [False, False, True, False]   # not unknown: dropped
    assert kept("copy_share < 0.5 or dup_10gram < 0.5") == [True, True, True, False]
    assert kept("copy_share < 0.5 and dup_10gram < 0.5") == [True, False, False, False]
    assert kept("copy_share / dup_10gram > 0") == [False, False, False, False]  # x / 0: null


def test_statistics_take_the_reference_rows_only():
    data = pd.DataFrame({"category": ["a"] * 5, "lossgain.copy_share": [1.0, 2.0, 3.0, 10.0,
                                                                        2.0]})
    natural = np.array([True, True, True, False, False])
    e = compile_expression("pct(copy_share)", COMPONENTS)
    got = evaluate(e, columns(data), data["category"], natural)
    # against 1, 2, 3: 1 -> 0.5/3, 2 -> 1.5/3, 3 -> 2.5/3, 10 -> 3/3, 2 -> 1.5/3
    np.testing.assert_allclose(got, [0.5 / 3, 1.5 / 3, 2.5 / 3, 1.0, 1.5 / 3])
    z = evaluate(compile_expression("z(copy_share)", COMPONENTS), columns(data),
                 data["category"], natural)
    np.testing.assert_allclose(z, (np.array([1, 2, 3, 10, 2.0]) - 2.0) / 1.0)
