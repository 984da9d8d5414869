"""Selection recipes on real local Spark and Delta tables: a rank expression and its filters
over two scorers' components against pandas written out by hand, windows a scorer did not
score, bad recipes and expressions refused in one line before any Spark job, a table written
with the previous release's scores schema, and a recipe's scorers found by their options."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import spark_jobs_in

from longattn_spark import cli
from longattn_spark.config import SelectConfig
from longattn_spark.errors import ConfigError
from longattn_spark.select import select_options, select_windows
from longattn_spark.select.cut import params_for_rows, params_with_recipe_text, selection_id_for
from longattn_spark.select.recipe import RecipeRequest
from longattn_spark.tables.refs import TableRef, table_properties
from longattn_spark.tables.schemas import SCORES, SELECTION, WINDOWS, TableSpec
from longattn_spark.tables.writes import ensure_table, set_properties

CATEGORIES = {"book": 70, "code": 50}


def frame_of(spark, spec: TableSpec, rows: list[dict], schema=None):
    schema = schema or spec.schema
    return spark.createDataFrame([tuple(r.get(f.name) for f in schema.fields) for r in rows],
                                 schema)


def write(spark, path: str, spec: TableSpec, rows: list[dict]) -> TableRef:
    ref = TableRef(path)
    ensure_table(spark, ref, spec)
    frame_of(spark, spec, rows).write.format("delta").mode("append").save(ref.location)
    return ref


def record(spark, scores: TableRef, scorer_id: str, method: str, options: dict) -> None:
    set_properties(spark, scores, {f"longattn.scorer.{scorer_id}": json.dumps(
        {"method": method, "options": options})})


@pytest.fixture(scope="module")
def two_scorers(spark, tmp_path_factory):
    """Windows with a loss-gain-like and a repetition-like scorer (components maps only), one
    window without a repetition row; returns (windows, scores, pandas frame)."""
    root = tmp_path_factory.mktemp("recipes")
    rng = np.random.default_rng(11)
    windows, scores, truth = [], [], []
    for category, n in CATEGORIES.items():
        for i in range(n):
            wid = f"{category}-{i:03d}"
            windows.append({"window_id": wid, "doc_id": f"d{i % 7}", "category": category,
                            "n_tokens": 1000 + int(rng.integers(0, 50))})
            gain = {"score": float(rng.normal(0.2, 0.1)),
                    "full_loss": float(rng.normal(2.0, 0.4)),
                    "copy_share": float(rng.uniform(0, 0.3))}
            rep = {"compression": float(rng.uniform(2, 4)),
                   "dup_10gram": float(rng.choice([0.0, 0.1, 0.6]))}
            scores.append({"window_id": wid, "scorer_id": "lg-x", "category": category,
                           "method": "lossgain", "components": gain})
            if wid != "code-007":
                scores.append({"window_id": wid, "scorer_id": "rp-x", "category": category,
                               "method": "repetition", "components": rep})
            truth.append({"window_id": wid, "category": category,
                          "n_tokens": windows[-1]["n_tokens"], **gain, **rep})
    w = write(spark, str(root / "windows"), WINDOWS, windows)
    s = write(spark, str(root / "scores"), SCORES, scores)
    record(spark, s, "lg-x", "lossgain", {"short_context": 0, "copy_ngram": 8})
    record(spark, s, "rp-x", "repetition", {})
    return w, s, pd.DataFrame(truth), root


RANK = "z(lossgain.score) - 0.5 * pct(full_loss) + least(ln(repetition.compression), 1)"
WHERE = ("repetition.dup_10gram < 0.5", "not copy_share > 0.25")


def pandas_selection(truth: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The rank, the filters and the top fraction of the windows that passed, by hand."""
    usable = truth[truth.window_id != "code-007"].copy()
    g = usable.groupby("category")
    z = (usable["score"] - g["score"].transform("mean")) / g["score"].transform("std")
    below = usable.groupby("category")["full_loss"].rank(method="average")
    pct = (below - 0.5) / g["full_loss"].transform("count")
    usable["rank"] = z - 0.5 * pct + np.minimum(np.log(usable["compression"]), 1.0)
    usable["dropped_by"] = np.where(usable["dup_10gram"] >= 0.5, WHERE[0],
                                    np.where(usable["copy_share"] > 0.25, WHERE[1], None))
    usable["passed"] = usable["dropped_by"].isna()
    kept = (usable[usable.passed].sort_values("rank", ascending=False).groupby("category")
            .apply(lambda d: d.head(int(np.floor(fraction * len(d) + 1e-9))))["window_id"])
    usable["selected"] = usable["window_id"].isin(set(kept))
    return usable.set_index("window_id")


def test_a_rank_and_filters_over_two_scorers_equal_pandas(spark, two_scorers, tmp_path):
    w, s, truth, _ = two_scorers
    options = select_options(SelectConfig(keep_fraction=0.5, exact=True))
    table = TableRef(str(tmp_path / "selection"))
    result = select_windows(spark, options, w, s, table,
                            request=RecipeRequest(rank=RANK, where=WHERE))
    assert result.recipe == "custom" and result.scorer_id == "lg-x+rp-x"
    rows = table.read(spark).toPandas().set_index("window_id")
    want = pandas_selection(truth, 0.5)
    assert rows.loc["code-007", "excluded_reason"] == "missing_score (repetition)"
    assert not rows.loc["code-007", "selected"] and pd.isna(rows.loc["code-007", "rank"])
    got = rows.drop(index="code-007")
    np.testing.assert_allclose(got.loc[want.index, "rank"], want["rank"], rtol=1e-12)
    assert got.loc[want.index, "lds"].equals(got.loc[want.index, "rank"])
    assert (got.loc[want.index, "passed"] == want["passed"]).all()
    assert got.loc[want.index, "dropped_by"].fillna("").tolist() == \
        want["dropped_by"].fillna("").tolist()
    assert set(got.index[got.selected]) == set(want.index[want.selected])
    assert not got.loc[~got.passed.astype(bool), "selected"].any()
    stored = json.loads(rows["params"].iloc[0])
    assert rows["params"].nunique() == 1 and "text" not in stored["recipe"]
    params = params_with_recipe_text(stored, table_properties(spark, table))
    assert params["recipe"]["name"] == "custom" and "rank:" in params["recipe"]["text"]
    assert rows["scorer_ids"].iloc[0] == {"lossgain": "lg-x", "repetition": "rp-x"}
    assert rows["recipe_sha256"].iloc[0] == params["recipe"]["sha256"]
    # the id hashes the params with the text, as before the text moved to the property
    assert rows["selection_id"].iloc[0] == selection_id_for(
        json.dumps(params), result.scorer_id,
        result.windows_version, result.scores_version)


def test_rows_name_the_recipe_property_and_get_the_same_params_back():
    """The recipe's text leaves the rows' params for one table property, and comes back
    whole; params without a recipe (a scorer's own ranking) are stored as they are."""
    recipe = {"name": "r", "sha256": "ab" * 32, "text": "rank: z(x)\n" * 200, "source": "f"}
    params = json.dumps({"alpha": 0.5, "recipe": recipe, "scorer_ids": {"a": "b"}})
    stored, properties = params_for_rows(params)
    (key, value), = properties.items()
    assert key.startswith("longattn.recipe.") and json.loads(value) == recipe
    assert json.loads(stored)["recipe"] == {"name": "r", "sha256": "ab" * 32, "source": "f",
                                            "property": key}
    assert len(stored) < 300 < len(params)
    assert params_with_recipe_text(json.loads(stored), properties) == json.loads(params)
    assert params_with_recipe_text(json.loads(stored), {}) == json.loads(stored)
    # another text of the same recipe (a comment more) is another property
    other = params_for_rows(json.dumps({**json.loads(params),
                                        "recipe": {**recipe, "text": "# c\n" + recipe["text"]}}))
    assert set(other[1]) != set(properties)
    plain = json.dumps({"alpha": 0.5, "method": "lds"})
    assert params_for_rows(plain) == (plain, {})


def test_the_report_names_a_recipe_whose_text_property_is_missing():
    """The report's rank note: the recipe's rank from its text; a row naming a property the
    table lacks (someone unset it) says so, instead of passing for LongAttn's LDS."""
    from longattn_spark.report.html import rank_formula

    recipe = {"name": "r", "sha256": "ab" * 32, "source": "f",
              "text": "rank: z(lossgain.score)\nwhere: [repetition.lag_match < 0.5]\n"}
    stored, properties = params_for_rows(json.dumps({"alpha": 0.5, "recipe": recipe}))
    assert rank_formula(params_with_recipe_text(json.loads(stored), properties)) == (
        "rank = z(lossgain.score) (recipe r, among the windows where "
        "repetition.lag_match < 0.5)")
    missing = rank_formula(params_with_recipe_text(json.loads(stored), {}))
    assert missing == (f"rank of recipe r (sha256 {'ab' * 6}); its text is missing from the "
                       f"selection table (table property {next(iter(properties))})")


def test_a_recipe_file_selects_like_its_flags(spark, two_scorers, tmp_path):
    w, s, _, root = two_scorers
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\nscorers:\n  - method: lossgain\n  - method: repetition\n"
                      f"where:\n  - {WHERE[0]}\n  - {WHERE[1]}\nrank: {RANK}\n")
    options = select_options(SelectConfig(keep_fraction=0.5, exact=True))
    by_file, by_flags = (TableRef(str(tmp_path / n)) for n in ("file", "flags"))
    select_windows(spark, options, w, s, by_file, request=RecipeRequest(recipe=str(recipe)))
    select_windows(spark, options, w, s, by_flags,
                   request=RecipeRequest(rank=RANK, where=WHERE))
    a, b = (t.read(spark).toPandas().set_index("window_id").sort_index()
            for t in (by_file, by_flags))
    assert a["recipe"].iloc[0] == "mine"
    assert a["selected"].equals(b["selected"]) and a["rank"].equals(b["rank"])


@pytest.mark.parametrize("argv, message", [
    (["--rank", "z(lossgain.scor)"], "scorer 'lossgain' has no component 'scor'"),
    (["--rank", "zz(lossgain.score)"], "unknown function zz()"),
    (["--rank", "lossgain.score > 1"], "is a boolean, but --rank needs a number"),
    (["--rank", "z(lossgain.score", ], "expected ')'"),
    (["--rank", "lossgain.score", "--where", "lossgain.score"], "--where needs a boolean"),
    (["--where", "lossgain.score > 0"], "--where needs --rank or --recipe"),
    (["--recipe", "no-such-recipe"], "not a shipped recipe"),
    (["--rank", "z(score)", "--normalize", "minmax"], "--normalize minmax changes"),
])
def test_bad_expressions_are_one_line_before_any_spark_job(spark, two_scorers, tmp_path,
                                                          capsys, argv, message):
    w, s, _, _ = two_scorers
    out = str(tmp_path / "selection")
    run = ["select", "--windows", w.location, "--scores", s.location, "--table", out,
           "--keep-fraction", "0.5", *argv]
    codes = []
    jobs = spark_jobs_in(spark, lambda: codes.append(cli.run(run)))
    err = capsys.readouterr().err
    assert codes[0] != 0 and err.count("\n") == 1 and message in err, err
    assert jobs == [] and not TableRef(out).exists(spark)


def test_bad_recipe_files_are_one_line(tmp_path):
    from longattn_spark.recipes.checked import check_recipe
    from longattn_spark.recipes.recipe import load_recipe

    cases = {
        "rank: z(score)\n": "scorers must be a list",
        "scorers: [lossgain]\nrank: z(score)\nfilters: []\n": "unknown key(s) filters",
        "scorers: [{method: lossgain, options: {copy_ngram: 0}}]\nrank: z(score)\n":
            "copy_ngram=0: must be >= 1",
        "scorers: [{method: lossgain, options: {layer: 2}}]\nrank: z(score)\n":
            "--method lossgain has no option layer",
        "scorers: [lossgain, lossgain]\nrank: z(score)\n": "two scorers are named lossgain",
        "scorers: [nope]\nrank: z(score)\n": "--method 'nope'",
        "scorers: [lossgain]\nrank: z(score)\nrecord: {lds: score}\n": "record names lds",
        "scorers: [lossgain]\nrank: z(scorez)\n": "unknown component 'scorez'",
        "scorers: [lossgain]\nrank: [\n": "not valid YAML",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"r{i}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            check_recipe(load_recipe(str(path)))
        assert message in str(caught.value) and "\n" not in str(caught.value), text


def test_a_table_of_the_previous_release_is_read_as_components(spark, tmp_path):
    """Scores written with the previous schema (no components column): LongAttn's ds and
    variance, loss gain's score and struct fields are their components; the longattn recipe
    and a rank over loss gain's struct fields select from them."""
    old_schema = SCORES.schema.__class__([f for f in SCORES.schema.fields
                                          if f.name != "components"])
    old = TableSpec("scores", old_schema, SCORES.keys, SCORES.partition_by, SCORES.comment)
    rng = np.random.default_rng(5)
    windows, rows = [], []
    for i in range(40):
        wid = f"book-{i:02d}"
        windows.append({"window_id": wid, "doc_id": "d", "category": "book", "n_tokens": 64})
        rows.append({"window_id": wid, "scorer_id": "l0-old", "category": "book",
                     "ds": float(rng.uniform(0.2, 0.5)),
                     "variance": float(rng.uniform(1e-7, 1e-6))})
        rows.append({"window_id": wid, "scorer_id": "lg-old", "category": "book",
                     "method": "lossgain", "score": float(rng.normal()),
                     "lossgain": {"key_share": float(rng.uniform()), "full_loss": 2.0,
                                  "short_loss": 2.5, "short_context": 16}})
    w = write(spark, str(tmp_path / "windows"), WINDOWS, windows)
    s = TableRef(str(tmp_path / "scores"))
    ensure_table(spark, s, old)
    frame_of(spark, old, rows).write.format("delta").mode("append").save(s.location)
    assert "components" not in s.read(spark).columns
    options = select_options(SelectConfig(keep_fraction=0.5, exact=True))
    lds = TableRef(str(tmp_path / "lds"))
    select_windows(spark, options, w, s, lds, scorer_id="l0-old")
    got = lds.read(spark).toPandas().set_index("window_id")
    truth = pd.DataFrame([r for r in rows if r["scorer_id"] == "l0-old"]).set_index("window_id")
    z = (truth.ds - truth.ds.mean()) / truth.ds.std()
    z_du = (truth.variance.mean() - truth.variance) / truth.variance.std()
    np.testing.assert_allclose(got.loc[truth.index, "lds"], z + 0.5 * z_du, rtol=1e-9)
    assert got["recipe"].iloc[0] == "longattn" and got.loc[truth.index, "ds"].equals(truth.ds)
    keyed = TableRef(str(tmp_path / "keyed"))
    select_windows(spark, options, w, s, keyed,
                   request=RecipeRequest(rank="lossgain.key_share"))
    by_key = keyed.read(spark).toPandas().set_index("window_id")
    loss = pd.DataFrame([r for r in rows if r["scorer_id"] == "lg-old"]).set_index("window_id")
    keys = loss.lossgain.map(lambda x: x["key_share"])
    assert by_key.loc[keys.index, "rank"].tolist() == pytest.approx(keys.tolist())
    assert set(by_key.index[by_key.selected]) == set(keys.nlargest(20).index)


def test_a_recipe_finds_its_scorer_by_its_options(spark, tmp_path):
    windows = [{"window_id": f"w{i}", "doc_id": "d", "category": "book", "n_tokens": 64}
               for i in range(10)]
    w = write(spark, str(tmp_path / "windows"), WINDOWS, windows)
    rows = [{"window_id": f"w{i}", "scorer_id": sid, "category": "book",
             "method": "lossgain", "components": {"score": float(i * sign)}}
            for i in range(10) for sid, sign in (("lg-m8", 1), ("lg-m4", -1))]
    s = write(spark, str(tmp_path / "scores"), SCORES, rows)
    record(spark, s, "lg-m8", "lossgain", {"short_context": 0, "copy_ngram": 8})
    record(spark, s, "lg-m4", "lossgain", {"short_context": 0, "copy_ngram": 4})
    recipe = tmp_path / "m4.yaml"
    recipe.write_text("scorers: [{method: lossgain, options: {copy_ngram: 4}}]\n"
                      "rank: score\n")
    options = select_options(SelectConfig(keep_fraction=0.3, exact=True))
    out = TableRef(str(tmp_path / "sel"))
    result = select_windows(spark, options, w, s, out, request=RecipeRequest(
        recipe=str(recipe)))
    assert result.scorer_id == "lg-m4"
    kept = {r["window_id"] for r in out.read(spark).filter("selected").collect()}
    assert kept == {"w0", "w1", "w2"}   # lg-m4 scores -i: the smallest i rank first
    with pytest.raises(ConfigError, match="several scorers of --method lossgain.*--scorer-id "
                                          "lossgain=ID"):
        select_windows(spark, options, w, s, TableRef(str(tmp_path / "sel2")),
                       request=RecipeRequest(rank="lossgain.score"))
    assert SELECTION.column_names[-6:] == ["rank", "passed", "dropped_by", "recipe",
                                           "recipe_sha256", "scorer_ids"]
