"""Selection in Spark SQL against an independent pandas computation, on real local Spark and
Delta tables built with the schemas of ``longattn_spark.tables.schemas``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from longattn_spark import cli
from longattn_spark.config import SelectConfig
from longattn_spark.errors import ConfigError, TableError
from longattn_spark.select.recipe import RecipeRequest
from longattn_spark.select import (
    HASH_MAX,
    HASH_MIN,
    Bracket,
    Cut,
    Target,
    approx_cut,
    cut_from_candidates,
    initial_bracket,
    keep_counts,
    load_sql,
    narrowed_bracket,
    parse_mix,
    resolve_inputs,
    select_options,
    select_windows,
    selection_id_for,
    selection_rows,
    token_budgets,
)
from longattn_spark.tables.refs import TableRef
from longattn_spark.tables.schemas import SCORES, WINDOWS
from longattn_spark.tables.writes import ensure_table

CATEGORY_SIZES = {"arxiv": 450, "book": 350, "code": 250}
ALPHA = 0.5


# ------------------------------------------------------------------------------------------
# Building tables
# ------------------------------------------------------------------------------------------

def spec_frame(spark, spec, rows: list[dict]):
    names = spec.column_names
    return spark.createDataFrame([tuple(r.get(n) for n in names) for r in rows], spec.schema)


def append(spark, path: str, spec, rows: list[dict]) -> TableRef:
    ref = TableRef(path)
    ensure_table(spark, ref, spec)
    spec_frame(spark, spec, rows).write.format("delta").mode("append").save(ref.location)
    return ref


def synthetic_rows(seed: int = 7, sizes: dict[str, int] = CATEGORY_SIZES
                   ) -> tuple[list[dict], list[dict]]:
    """Windows and scores of one scorer in three categories; the first window of each
    category has an unusable score (NaN, NULL, infinite) and one score has no window."""
    rng = np.random.default_rng(seed)
    windows, scores = [], []
    for category, size in sizes.items():
        for i in range(size):
            wid = f"{category}-{i:05d}"
            windows.append({"window_id": wid, "doc_id": f"d-{wid}", "category": category,
                            "n_tokens": int(rng.integers(500, 4000))})
            scores.append({"window_id": wid, "scorer_id": "s8", "category": category,
                           "ds": float(rng.uniform(0.18, 0.59)),
                           "variance": float(10 ** rng.uniform(-7, -5.3))})
    firsts = [scores.index(next(r for r in scores if r["category"] == c)) for c in sizes]
    scores[firsts[0]]["ds"] = float("nan")
    scores[firsts[1]]["variance"] = None
    scores[firsts[2]]["ds"] = float("inf")
    scores.append({"window_id": "orphan-0", "scorer_id": "s8", "category": "book",
                   "ds": 0.3, "variance": 1e-6})
    return windows, scores


@dataclass(frozen=True)
class Tables:
    windows: TableRef
    scores: TableRef
    frame: pd.DataFrame  # scores joined to windows, as pandas sees them


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory) -> Tables:
    root = tmp_path_factory.mktemp("selection")
    windows, scores = synthetic_rows()
    w = append(spark, str(root / "windows"), WINDOWS, windows)
    s = append(spark, str(root / "scores"), SCORES, scores)
    frame = pd.DataFrame(scores).merge(
        pd.DataFrame(windows)[["window_id", "n_tokens"]], on="window_id", how="inner")
    return Tables(w, s, frame)


# ------------------------------------------------------------------------------------------
# The independent pandas computation
# ------------------------------------------------------------------------------------------

def pandas_lds(frame: pd.DataFrame, alpha: float = ALPHA, normalize: str = "zscore"
               ) -> pd.DataFrame:
    usable = frame[np.isfinite(frame["ds"].astype(float))
                   & np.isfinite(frame["variance"].astype(float))].copy()
    usable["du"] = -usable["variance"]
    g = usable.groupby("category")
    if normalize == "zscore":
        for col, out in (("ds", "z_ds"), ("du", "z_du")):
            sd = g[col].transform("std")
            usable[out] = ((usable[col] - g[col].transform("mean")) / sd).where(sd > 0, 0.0)
        usable["lds"] = usable["z_ds"] + alpha * usable["z_du"]
    else:
        for col, out in (("ds", "z_ds"), ("variance", "z_du")):
            lo, hi = g[col].transform("min"), g[col].transform("max")
            usable[out] = ((usable[col] - lo) / (hi - lo)).where(hi > lo, 0.0)
        usable["lds"] = usable["z_ds"] - alpha * usable["z_du"]
    return usable.sort_values(["category", "lds"], ascending=[True, False])


def pandas_top_fraction(ranked: pd.DataFrame, fraction: float) -> set[str]:
    keep = ranked.groupby("category", group_keys=False).apply(
        lambda d: d.head(math.floor(fraction * len(d) + 1e-9)))
    return set(keep["window_id"])


def pandas_budget(ranked: pd.DataFrame, budgets: dict[str, int]) -> set[str]:
    chosen = set()
    for category, d in ranked.groupby("category"):
        cum = d["n_tokens"].cumsum()
        chosen |= set(d.loc[cum <= budgets.get(category, 0), "window_id"])
    return chosen


# ------------------------------------------------------------------------------------------
# Running the SQL without writing
# ------------------------------------------------------------------------------------------

def computed(spark, tables: Tables, buckets: int = 1024, candidate_limit: int = 100_000,
             **options) -> pd.DataFrame:
    opts = select_options(SelectConfig(**options))
    inputs = resolve_inputs(spark, tables.windows, tables.scores,
                            RecipeRequest(normalize=opts.normalize, alpha=opts.alpha))
    with selection_rows(spark, inputs, opts, "0" * 24, "{}", buckets=buckets,
                        candidate_limit=candidate_limit) as rows:
        return rows.toPandas()


def selected_ids(rows: pd.DataFrame) -> set[str]:
    return set(rows.loc[rows["selected"], "window_id"])


# ------------------------------------------------------------------------------------------
# Pure parts
# ------------------------------------------------------------------------------------------

def test_sql_is_in_package_text_files_with_named_parameters():
    text = load_sql("select_flagged")
    assert ":min_lds" in text and "IDENTIFIER(:ranked)" in text
    assert "OVER (" not in load_sql("select_cut_histogram").upper()


def test_parse_mix():
    assert parse_mix("arxiv=0.33, book=0.33,code=0.34") == {"arxiv": 0.33, "book": 0.33,
                                                            "code": 0.34}
    for bad in ("arxiv", "arxiv=x", "arxiv=-0.1", "arxiv=0.5,arxiv=0.2", "a=0.7,b=0.7",
                "arxiv=0.5,,b=0.1", "=0.3"):
        with pytest.raises(ConfigError, match="--mix"):
            parse_mix(bad)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), 10.5, -11.0])
def test_alpha_outside_sane_range_is_refused(alpha):
    with pytest.raises(ConfigError, match="--alpha"):
        select_options(SelectConfig(alpha=alpha, keep_fraction=0.5))


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_keep_fraction_outside_unit_interval_is_refused(fraction):
    with pytest.raises(ConfigError, match="--keep-fraction"):
        select_options(SelectConfig(keep_fraction=fraction))


def test_option_combinations():
    with pytest.raises(ConfigError, match="no cut"):
        select_options(SelectConfig())
    with pytest.raises(ConfigError, match="not both"):
        select_options(SelectConfig(keep_fraction=0.5, token_budget=100))
    with pytest.raises(ConfigError, match="--token-budget"):
        select_options(SelectConfig(mix="arxiv=0.5"))
    with pytest.raises(ConfigError, match="--token-budget"):
        select_options(SelectConfig(token_budget=-5))
    assert select_options(SelectConfig(min_lds=0.0)).min_lds == 0.0
    assert select_options(SelectConfig(keep_fraction=1.0)).keep_fraction == 1.0


def test_selection_id_is_deterministic_and_tracks_inputs():
    a = selection_id_for('{"alpha": 0.5}', "s8", 3, 4)
    assert a == selection_id_for('{"alpha": 0.5}', "s8", 3, 4)
    assert len({a, selection_id_for('{"alpha": 0.6}', "s8", 3, 4),
                selection_id_for('{"alpha": 0.5}', "s9", 3, 4),
                selection_id_for('{"alpha": 0.5}', "s8", 2, 4),
                selection_id_for('{"alpha": 0.5}', "s8", 3, 5)}) == 5


def test_budget_split_and_keep_counts():
    proportional = token_budgets(select_options(SelectConfig(token_budget=1000)),
                                 {"a": 300, "b": 100})
    assert proportional == {"a": 750, "b": 250}
    mixed = token_budgets(select_options(SelectConfig(token_budget=1000, mix="a=0.3")),
                          {"a": 300, "b": 100})
    assert mixed == {"a": 300, "b": 0}
    assert keep_counts(0.29, {"a": 100, "b": 1, "c": 0}) == {"a": 29, "b": 0, "c": 0}


def test_exact_cut_arithmetic_walks_buckets_from_the_top():
    target = Target("tokens", 250)
    start = initial_bracket("a", target, n=6, tokens=600, bounds=(0.0, 6.0))
    assert isinstance(start, Bracket) and start.stage == 1
    histogram = [{"bucket": 3, "n": 2, "tokens": 200, "key_min": 4.0, "key_max": 5.0},
                 {"bucket": 2, "n": 2, "tokens": 200, "key_min": 2.0, "key_max": 3.0},
                 {"bucket": 1, "n": 2, "tokens": 200, "key_min": 0.0, "key_max": 1.0}]
    b = narrowed_bracket(start, target, histogram)
    assert (b.lo, b.hi, b.rows, b.taken) == (2.0, 3.0, 2, 200)
    cut = cut_from_candidates(b, target, [
        {"sort_key": 2.0, "tiebreak": 0.0, "window_id": "x", "n_tokens": 100},
        {"sort_key": 3.0, "tiebreak": 0.0, "window_id": "y", "n_tokens": 100}])
    assert (cut.mode, cut.key, cut.window_id) == ("before", 3.0, "y")
    assert initial_bracket("a", target, n=6, tokens=200, bounds=(0.0, 6.0)).mode == "all"
    tie = narrowed_bracket(start, Target("count", 1),
                           [{"bucket": 1, "n": 6, "tokens": 600, "key_min": 0.0,
                             "key_max": 0.0}])
    assert tie.stage == 2 and tie.pinned_key == 0.0
    with pytest.raises(RuntimeError, match="counted"):
        narrowed_bracket(start, target, histogram[:2])


# ------------------------------------------------------------------------------------------
# SQL against pandas
# ------------------------------------------------------------------------------------------

def test_zscore_lds_and_exact_cut_match_pandas(spark, tables):
    rows = computed(spark, tables, keep_fraction=0.3, exact=True)
    reference = pandas_lds(tables.frame)
    merged = reference.merge(rows, on="window_id", suffixes=("_pd", ""))
    assert len(merged) == len(reference) >= 1000
    for col in ("z_ds", "z_du", "lds"):
        assert np.max(np.abs(merged[f"{col}_pd"] - merged[col])) < 1e-9
    assert selected_ids(rows) == pandas_top_fraction(reference, 0.3)
    per_category = rows[rows.selected].groupby("category").size().to_dict()
    assert per_category == {c: math.floor(0.3 * n) for c, n in
                            reference.groupby("category").size().items()}

    bad = rows[rows.excluded_reason.notna()].set_index("window_id")
    assert bad.excluded_reason.to_dict() == {"arxiv-00000": "nan_score",
                                             "book-00000": "null_score",
                                             "code-00000": "infinite_score",
                                             "orphan-0": "no_window"}
    assert not bad.selected.any() and bad[["z_ds", "z_du", "lds"]].isna().all().all()
    assert len(rows) == len(tables.frame) + 1


def test_exact_cut_by_histogram_refinement_matches_pandas(spark, tables):
    """A candidate limit far below the category sizes forces several refinement passes."""
    rows = computed(spark, tables, keep_fraction=0.5, exact=True, buckets=8,
                    candidate_limit=20)
    assert selected_ids(rows) == pandas_top_fraction(pandas_lds(tables.frame), 0.5)


def test_approximate_cut_is_close_to_exact(spark, tables):
    rows = computed(spark, tables, keep_fraction=0.5, accuracy=10000)
    exact = pandas_top_fraction(pandas_lds(tables.frame), 0.5)
    assert len(selected_ids(rows) ^ exact) <= 3


def test_minmax_variant_matches_pandas(spark, tables):
    rows = computed(spark, tables, normalize="minmax", keep_fraction=0.5, exact=True)
    reference = pandas_lds(tables.frame, normalize="minmax")
    merged = reference.merge(rows, on="window_id", suffixes=("_pd", ""))
    for col in ("z_ds", "z_du", "lds"):
        assert np.max(np.abs(merged[f"{col}_pd"] - merged[col])) < 1e-9
    assert selected_ids(rows) == pandas_top_fraction(reference, 0.5)


def test_token_budget_with_mix_is_met_within_one_window(spark, tables):
    budget = 600_000
    rows = computed(spark, tables, token_budget=budget, mix="arxiv=0.5,book=0.3,code=0.2",
                    buckets=8, candidate_limit=20)
    shares = {"arxiv": 0.5, "book": 0.3, "code": 0.2}
    budgets = {c: math.floor(budget * s) for c, s in shares.items()}
    reference = pandas_lds(tables.frame)
    assert selected_ids(rows) == pandas_budget(reference, budgets)
    for category, d in rows[rows.selected].groupby("category"):
        taken = int(d["n_tokens"].sum())
        largest = int(reference.loc[reference.category == category, "n_tokens"].max())
        assert budgets[category] - largest < taken <= budgets[category]


def test_token_budget_without_mix_follows_the_data_mix(spark, tables):
    rows = computed(spark, tables, token_budget=900_000)
    reference = pandas_lds(tables.frame)
    usable = reference.groupby("category")["n_tokens"].sum()
    budgets = {c: 900_000 * int(t) // int(usable.sum()) for c, t in usable.items()}
    assert selected_ids(rows) == pandas_budget(reference, budgets)


def test_min_lds_keeps_windows_at_or_above(spark, tables):
    rows = computed(spark, tables, min_lds=0.25)
    reference = pandas_lds(tables.frame)
    assert selected_ids(rows) == set(reference.loc[reference.lds >= 0.25, "window_id"])


def test_random_baseline_is_seeded_and_sized_like_the_lds_cut(spark, tables):
    a = computed(spark, tables, method="random", seed=1, keep_fraction=0.3, exact=True)
    b = computed(spark, tables, method="random", seed=1, keep_fraction=0.3, exact=True)
    c = computed(spark, tables, method="random", seed=2, keep_fraction=0.3, exact=True)
    assert selected_ids(a) == selected_ids(b)
    assert selected_ids(a) != selected_ids(c)
    reference = pandas_lds(tables.frame)
    lds_pick = pandas_top_fraction(reference, 0.3)
    assert selected_ids(a) != lds_pick
    assert selected_ids(a) <= set(reference["window_id"])
    sizes = a[a.selected].groupby("category").size().to_dict()
    assert sizes == reference[reference.window_id.isin(lds_pick)].groupby(
        "category").size().to_dict()


def test_random_baseline_with_token_budget_stays_within_it(spark, tables):
    rows = computed(spark, tables, method="random", seed=3, token_budget=300_000,
                    candidate_limit=60, buckets=16)
    reference = pandas_lds(tables.frame)
    lds_tokens = reference[reference.window_id.isin(pandas_budget(
        reference, {c: 300_000 * int(t) // int(reference.n_tokens.sum())
                    for c, t in reference.groupby("category")["n_tokens"].sum().items()}))]
    lds_per_category = lds_tokens.groupby("category")["n_tokens"].sum()
    taken = rows[rows.selected].groupby("category")["n_tokens"].sum()
    for category, limit in lds_per_category.items():
        assert limit - reference.n_tokens.max() < taken[category] <= limit


# ------------------------------------------------------------------------------------------
# Edge cases on small tables
# ------------------------------------------------------------------------------------------

def small_tables(spark, table_path, scores: list[dict]) -> tuple[TableRef, TableRef]:
    windows = [{"window_id": s["window_id"], "doc_id": "d", "category": s["category"],
                "n_tokens": 100} for s in scores if s["window_id"] != "orphan"]
    w = append(spark, table_path("windows"), WINDOWS, windows)
    s = append(spark, table_path("scores"), SCORES,
               [{"scorer_id": "s8", **row} for row in scores])
    return w, s


def test_single_window_and_zero_spread_categories_get_z_zero(spark, table_path):
    scores = [{"window_id": "solo", "category": "code", "ds": 0.4, "variance": 1e-6}]
    scores += [{"window_id": f"flat-{i}", "category": "book", "ds": 0.3, "variance": 2e-6}
               for i in range(10)]
    scores += [{"window_id": f"var-{i}", "category": "arxiv", "ds": 0.2 + i / 100,
                "variance": 1e-6} for i in range(6)]
    w, s = small_tables(spark, table_path, scores)
    rows = computed(spark, Tables(w, s, pd.DataFrame()), keep_fraction=0.5, exact=True,
                    candidate_limit=4, buckets=4).set_index("window_id")
    assert rows.loc["solo", ["z_ds", "z_du", "lds"]].tolist() == [0.0, 0.0, 0.0]
    assert not rows.loc["solo", "selected"]  # floor(0.5 * 1) = 0
    flat = rows[rows.category == "book"]
    assert (flat[["z_ds", "z_du", "lds"]] == 0.0).all().all()
    assert flat.selected.sum() == 5  # the tie is split by the hash of window_id
    arxiv = rows[rows.category == "arxiv"]
    assert (arxiv.z_du == 0.0).all() and arxiv.z_ds.abs().max() > 0
    assert set(arxiv[arxiv.selected].index) == {"var-3", "var-4", "var-5"}


def test_budget_larger_than_the_data_takes_all_and_says_so(spark, table_path, capsys):
    scores = [{"window_id": f"w{i}", "category": "book" if i % 2 else "code",
               "ds": 0.3 + i / 100, "variance": 1e-6 * (1 + i)} for i in range(8)]
    scores.append({"window_id": "w-nan", "category": "code", "ds": float("nan"),
                   "variance": 1e-6})
    w, s = small_tables(spark, table_path, scores)
    name = "default.selection_budget"  # a metastore table, not a path
    code = cli.run(["select", "--windows", w.location, "--scores", s.location,
                    "--table", name, "--token-budget", "100000"])
    out = capsys.readouterr().out
    assert code == 0
    assert "exceeds the 800 usable tokens: took all" in out
    assert "1 scores could not be ranked (nan_score: 1)" in out
    rows = spark.table(name).toPandas().set_index("window_id")
    assert rows.drop(index="w-nan").selected.all() and not rows.loc["w-nan", "selected"]


def test_mix_naming_an_unknown_category_is_refused(spark, tables, table_path):
    with pytest.raises(ConfigError, match="'poetry'.*categories: arxiv, book, code"):
        select_windows(spark, select_options(SelectConfig(token_budget=1000,
                                                          mix="arxiv=0.5,poetry=0.5")),
                       tables.windows, tables.scores, TableRef(table_path("selection")))


def test_several_scorers_need_scorer_id(spark, table_path):
    scores = [{"window_id": f"w{i}", "category": "book", "ds": 0.3, "variance": 1e-6}
              for i in range(3)]
    w, s = small_tables(spark, table_path, scores)
    append(spark, s.location, SCORES, [{"scorer_id": "s70", **x} for x in scores])
    options = select_options(SelectConfig(keep_fraction=0.5))
    with pytest.raises(ConfigError, match="--scorer-id: s70 \\(3 windows\\), s8 \\(3 windows"):
        select_windows(spark, options, w, s, TableRef(table_path("selection")))
    with pytest.raises(ConfigError, match="'s9'.*s70"):
        select_windows(spark, options, w, s, TableRef(table_path("selection")),
                       scorer_id="s9")
    assert resolve_inputs(spark, w, s, RecipeRequest(scorer_id="s70")).scorer_id == "s70"


def test_empty_scores_table_gives_a_message(spark, table_path, capsys):
    w = append(spark, table_path("windows"), WINDOWS, [])
    s = append(spark, table_path("scores"), SCORES, [])
    code = cli.run(["select", "--windows", w.location, "--scores", s.location,
                    "--table", table_path("selection"), "--keep-fraction", "0.5"])
    assert code == 0
    assert "holds no scores" in capsys.readouterr().out
    missing = cli.run(["select", "--windows", w.location, "--scores", table_path("nope"),
                       "--table", table_path("selection"), "--keep-fraction", "0.5"])
    assert missing == 1
    assert "--scores: table" in capsys.readouterr().err


def test_rerun_is_idempotent_and_time_travel_rebuilds(spark, table_path):
    windows, scores = synthetic_rows(seed=11, sizes={"arxiv": 40, "book": 30, "code": 20})
    tables = Tables(append(spark, table_path("windows"), WINDOWS, windows),
                    append(spark, table_path("scores"), SCORES, scores), pd.DataFrame(scores))
    options = select_options(SelectConfig(keep_fraction=0.4, exact=True))
    sel = TableRef(table_path("selection"))
    first = select_windows(spark, options, tables.windows, tables.scores, sel)
    version = sel.version(spark)
    again = select_windows(spark, options, tables.windows, tables.scores, sel)
    assert first.written and not again.written
    assert again.selection_id == first.selection_id and again.categories == first.categories
    assert sel.version(spark) == version
    stored = sel.read(spark).toPandas()
    assert len(stored) == len(scores)  # every score, the orphan included
    assert stored.window_id.is_unique

    row = stored.iloc[0]
    assert (row.windows_version, row.scores_version) == (first.windows_version,
                                                         first.scores_version)
    append(spark, tables.scores.location, SCORES,
           [{"window_id": "arxiv-00001", "scorer_id": "s70", "category": "arxiv",
             "ds": 0.5, "variance": 1e-6}])
    with pytest.raises(ConfigError, match="several scorers"):
        select_windows(spark, options, tables.windows, tables.scores, sel)
    rebuilt_table = TableRef(table_path("rebuilt"))
    rebuilt = select_windows(spark, options, tables.windows, tables.scores, rebuilt_table,
                             windows_version=int(row.windows_version),
                             scores_version=int(row.scores_version))
    assert rebuilt.selection_id == first.selection_id
    columns = ["window_id", "z_ds", "z_du", "lds", "selected"]
    again_rows = rebuilt_table.read(spark).toPandas()[columns].sort_values("window_id")
    assert again_rows.reset_index(drop=True).equals(
        stored[columns].sort_values("window_id").reset_index(drop=True))
    with pytest.raises(TableError, match="--scores-version 99"):
        select_windows(spark, options, tables.windows, tables.scores, rebuilt_table,
                       scores_version=99)


# ------------------------------------------------------------------------------------------
# Ties under the approximate cut
# ------------------------------------------------------------------------------------------

def test_approximate_cut_takes_what_the_keep_count_still_needs_from_the_tie():
    assert approx_cut("a", keep=3, threshold=0.5, above=3, tied=4) == Cut("a", "above",
                                                                           threshold=0.5)
    assert approx_cut("a", keep=3, threshold=0.5, above=4, tied=1).mode == "above"
    assert approx_cut("a", keep=7, threshold=0.5, above=3, tied=4) == Cut("a", "from",
                                                                           threshold=0.5)
    assert approx_cut("a", keep=9, threshold=0.5, above=3, tied=4).mode == "from"
    assert approx_cut("a", keep=5, threshold=0.5, above=3, tied=4) == Bracket(
        "a", 2, HASH_MIN, HASH_MAX, rows=4, taken=3, pinned_key=0.5)
    assert approx_cut("a", keep=0, threshold=0.5, above=0, tied=1).mode == "above"


def test_approximate_cut_splits_an_all_tied_category_like_the_exact_cut(spark, table_path):
    """Every window of a category has the same ds and variance: percentile_approx returns that
    one value, and the cut must still keep floor(f * n) windows, in the exact cut's tie order
    (hash of window_id, then window_id), not none or all."""
    n = 25
    scores = [{"window_id": f"flat-{i:02d}", "category": "book", "ds": 0.3, "variance": 2e-6}
              for i in range(n)]
    w, s = small_tables(spark, table_path, scores)
    t = Tables(w, s, pd.DataFrame())
    approx = selected_ids(computed(spark, t, keep_fraction=0.3))
    again = selected_ids(computed(spark, t, keep_fraction=0.3, buckets=4,
                                  candidate_limit=3))  # a re-run, refined on the tie hash
    exact = selected_ids(computed(spark, t, keep_fraction=0.3, exact=True))
    assert len(approx) == math.floor(0.3 * n) == 7
    assert approx == again == exact


def test_approximate_cut_with_ties_at_the_cut_boundary_matches_the_exact_cut(spark, table_path):
    """Keep half of each category. arxiv: distinct scores above and below a group of equal
    scores that straddles the cut (7 above, 8 tied, 5 below: 3 of the tie are kept); code: a
    tied group of 12 best windows holds the whole cut (10 of them kept); book: no ties."""
    scores = [{"window_id": f"hi-{i}", "category": "arxiv", "ds": 0.5 + i / 100,
               "variance": 1e-6} for i in range(7)]
    scores += [{"window_id": f"tie-{i}", "category": "arxiv", "ds": 0.4, "variance": 1e-6}
               for i in range(8)]
    scores += [{"window_id": f"lo-{i}", "category": "arxiv", "ds": 0.1 + i / 100,
                "variance": 1e-6} for i in range(5)]
    scores += [{"window_id": f"top-{i:02d}", "category": "code", "ds": 0.9, "variance": 3e-6}
               for i in range(12)]
    scores += [{"window_id": f"rest-{i}", "category": "code", "ds": 0.2 + i / 100,
                "variance": 3e-6} for i in range(8)]
    scores += [{"window_id": f"book-{i:02d}", "category": "book", "ds": 0.2 + i / 50,
                "variance": 1e-6 * (1 + i % 4)} for i in range(12)]
    w, s = small_tables(spark, table_path, scores)
    t = Tables(w, s, pd.DataFrame())
    rows = computed(spark, t, keep_fraction=0.5)
    exact = computed(spark, t, keep_fraction=0.5, exact=True)
    again = computed(spark, t, keep_fraction=0.5, buckets=4, candidate_limit=2)
    picked = selected_ids(rows)
    assert picked == selected_ids(exact) == selected_ids(again)
    assert rows[rows.selected].groupby("category").size().to_dict() == {
        "arxiv": 10, "book": 6, "code": 10}
    assert {f"hi-{i}" for i in range(7)} <= picked
    assert len({x for x in picked if x.startswith("tie-")}) == 3
    assert not any(x.startswith(("lo-", "rest-")) for x in picked)


# ------------------------------------------------------------------------------------------
# --heads: DS and variance as the mean over chosen heads of the stored per-head scores
# ------------------------------------------------------------------------------------------

N_HEADS = 4


def per_head_rows(seed: int = 5, sizes: dict[str, int] | None = None
                  ) -> tuple[list[dict], list[dict]]:
    """Windows and scores of one scorer with N_HEADS per-head arrays; ds and variance are the
    means over all heads, as the scorer stores them. Heads 0 and 2 rank windows differently
    from all four (head 3 is drawn against head 0's order)."""
    rng = np.random.default_rng(seed)
    windows, scores = [], []
    for category, size in (sizes or {"arxiv": 60, "book": 40}).items():
        for i in range(size):
            wid = f"{category}-h{i:04d}"
            ds_heads = rng.uniform(0.1, 0.6, N_HEADS)
            ds_heads[3] = 0.7 - ds_heads[0]
            var_heads = 10 ** rng.uniform(-7, -5.3, N_HEADS)
            windows.append({"window_id": wid, "doc_id": f"d-{wid}", "category": category,
                            "n_tokens": int(rng.integers(500, 4000))})
            scores.append({"window_id": wid, "scorer_id": "s8", "category": category,
                           "ds": float(ds_heads.mean()), "variance": float(var_heads.mean()),
                           "ds_heads": [float(x) for x in ds_heads],
                           "var_heads": [float(x) for x in var_heads]})
    return windows, scores


def pandas_heads_frame(scores: list[dict], windows: list[dict], heads: list[int]
                       ) -> pd.DataFrame:
    """ds and variance recomputed in pandas as the mean over ``heads``."""
    frame = pd.DataFrame(scores).merge(
        pd.DataFrame(windows)[["window_id", "n_tokens"]], on="window_id", how="inner")
    frame["ds"] = [float(np.mean([h[i] for i in heads])) for h in frame["ds_heads"]]
    frame["variance"] = [float(np.mean([v[i] for i in heads])) for v in frame["var_heads"]]
    return frame


@pytest.fixture(scope="module")
def head_tables(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    windows, scores = per_head_rows()
    return (append(spark, str(root / "windows"), WINDOWS, windows),
            append(spark, str(root / "scores"), SCORES, scores), windows, scores)


def set_scorer_record(spark, scores: TableRef, record: dict) -> None:
    import json

    from longattn_spark.tables.writes import set_properties

    set_properties(spark, scores, {"longattn.scorer.s8": json.dumps(record)})


def test_parse_heads():
    from longattn_spark.select import parse_heads

    assert parse_heads("") == () and parse_heads(" ") == ()
    assert parse_heads("5, 0,3") == (0, 3, 5)
    for bad, message in (("0,x", "'x' is not a head index"), ("-1", "'-1' is not a head"),
                         ("1,,2", "'' is not a head"), ("2,2", "head 2 is named twice")):
        with pytest.raises(ConfigError, match=message):
            parse_heads(bad)
    assert "heads" not in select_options(SelectConfig(keep_fraction=0.5)).params()
    assert select_options(SelectConfig(keep_fraction=0.5, heads="2,0")).params()["heads"] \
        == [0, 2]


def test_heads_mean_matches_pandas(spark, head_tables):
    w, s, windows, scores = head_tables
    t = Tables(w, s, pd.DataFrame())
    rows = computed(spark, t, keep_fraction=0.3, exact=True, heads="0,2")
    reference = pandas_lds(pandas_heads_frame(scores, windows, [0, 2]))
    merged = reference.merge(rows, on="window_id", suffixes=("_pd", ""))
    assert len(merged) == len(reference) == len(rows) == 100
    for col in ("ds", "variance", "z_ds", "z_du", "lds"):
        assert np.max(np.abs(merged[f"{col}_pd"] - merged[col])) < 1e-9, col
    assert selected_ids(rows) == pandas_top_fraction(reference, 0.3)
    all_heads = computed(spark, t, keep_fraction=0.3, exact=True)
    assert selected_ids(all_heads) == pandas_top_fraction(
        pandas_lds(pandas_heads_frame(scores, windows, [0, 1, 2, 3])), 0.3)
    assert selected_ids(all_heads) != selected_ids(rows)  # the heads changed the ranking
    single = computed(spark, t, keep_fraction=0.5, exact=True, heads="3")
    assert selected_ids(single) == pandas_top_fraction(
        pandas_lds(pandas_heads_frame(scores, windows, [3])), 0.5)


def test_heads_are_recorded_and_give_their_own_selection(spark, head_tables, table_path):
    import json

    w, s, _, _ = head_tables
    table = TableRef(table_path("selection"))
    with_heads = select_windows(spark, select_options(SelectConfig(keep_fraction=0.5,
                                                                   heads="2,0")), w, s, table)
    without = select_windows(spark, select_options(SelectConfig(keep_fraction=0.5)), w, s,
                             table)
    assert with_heads.selection_id != without.selection_id
    params = {r["selection_id"]: json.loads(r["params"]) for r in
              table.read(spark).select("selection_id", "params").distinct().collect()}
    assert params[with_heads.selection_id]["heads"] == [0, 2]
    assert "heads" not in params[without.selection_id]
    from longattn_spark.select import format_summary

    assert "scorer s8, heads 0,2, windows" in format_summary(with_heads)
    assert "scorer s8, windows" in format_summary(without)  # no heads in the scorer line


def test_head_outside_the_stored_arrays_is_refused_before_the_job(spark, table_path):
    windows, scores = per_head_rows(sizes={"book": 6})
    scores[2]["ds_heads"], scores[2]["var_heads"] = scores[2]["ds_heads"][:3], \
        scores[2]["var_heads"][:3]
    w = append(spark, table_path("windows"), WINDOWS, windows)
    s = append(spark, table_path("scores"), SCORES, scores)
    table = TableRef(table_path("selection"))
    options = select_options(SelectConfig(keep_fraction=0.5, heads="0,3"))
    # no scorer record: the arrays tell, and the shortest row is named
    with pytest.raises(ConfigError, match=r"--heads 0,3: head 3 is outside the per-head "
                       r"scores of window book-h0002 \(scorer s8\), which has 3 heads"):
        select_windows(spark, options, w, s, table)
    # the scorer's record says how many heads it has
    set_scorer_record(spark, s, {"method": "longattn", "n_query_heads": 2})
    with pytest.raises(ConfigError, match=r"head 3 is outside the per-head scores of scorer "
                       r"s8, which has 2 heads \(0..1\)"):
        select_windows(spark, options, w, s, table)
    assert not os.path.exists(table.location)  # refused before the selection table was made
    # a record of 4 heads and one inconsistent row: that row is excluded, with its reason
    set_scorer_record(spark, s, {"method": "longattn", "n_query_heads": 4})
    rows = computed(spark, Tables(w, s, pd.DataFrame()), keep_fraction=0.5, exact=True,
                    heads="0,3").set_index("window_id")
    assert rows.loc["book-h0002", "excluded_reason"] == "missing_head"
    assert rows.drop(index="book-h0002").excluded_reason.isna().all()


def test_heads_with_a_scorer_without_heads_is_refused(spark, table_path, capsys):
    scores = [{"window_id": f"w{i}", "category": "book", "ds": None, "variance": None,
               "score": 0.1 * i, "method": "prolong"} for i in range(4)]
    w, s = small_tables(spark, table_path, scores)
    argv = ["select", "--windows", w.location, "--scores", s.location,
            "--table", table_path("selection"), "--keep-fraction", "0.5", "--heads", "0"]
    assert cli.run(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--heads: recipe prolong reads no component with per-head scores (ds, variance)" \
        in err
    set_scorer_record(spark, s, {"method": "prolong"})
    assert cli.run(argv) == 1
    assert "--heads: recipe prolong reads no component with per-head scores" \
        in capsys.readouterr().err
    assert cli.run([*argv[:-1], "0,zero"]) == 1
    assert "--heads '0,zero': 'zero' is not a head index" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# The `longattn` and `random` recipes against the SQL they replaced
# ------------------------------------------------------------------------------------------

def reference_ranked(spark, tables: Tables, normalize: str, method: str, seed: int = 0
                     ) -> pd.DataFrame:
    """The statements the selection ran before recipes (tests/reference_sql/, copied from the
    release before them): scored rows, LDS and the random sort key; the per-category stats
    are the product's category_stats.sql, which the report still uses."""
    from pathlib import Path

    def statement(name: str) -> str:
        return (Path(__file__).parent / "reference_sql" / f"{name}.sql").read_text()

    from pyspark.sql import functions as F

    scored = spark.sql(statement("select_scored"), args={
        "scores": tables.scores.sql_name(spark), "windows": tables.windows.sql_name(spark),
        "scorer_id": "s8", "heads": F.array()})
    scored.createOrReplaceTempView("reference_scored")
    spark.sql(load_sql("category_stats"), args={"scored": "reference_scored"}) \
        .where("NOT is_total").createOrReplaceTempView("reference_stats")
    return spark.sql(statement("select_ranked"), args={
        "scored": "reference_scored", "stats": "reference_stats", "normalize": normalize,
        "alpha": ALPHA, "method": method, "seed": seed}).toPandas()


@pytest.mark.parametrize("normalize", ["zscore", "minmax"])
def test_longattn_recipe_gives_the_old_selection_bit_for_bit(spark, tables, normalize):
    rows = computed(spark, tables, normalize=normalize, keep_fraction=0.3, exact=True)
    old = reference_ranked(spark, tables, normalize, "lds")
    merged = old.merge(rows, on="window_id", suffixes=("_old", ""), how="outer")
    assert len(merged) == len(old) == len(rows)
    for column in ("z_ds", "z_du", "lds"):
        same = (merged[f"{column}_old"] == merged[column]) | (
            merged[f"{column}_old"].isna() & merged[column].isna())
        assert same.all(), merged.loc[~same, ["window_id", f"{column}_old", column]].head()
    assert (merged["excluded_reason_old"].fillna("-") == merged["excluded_reason"]
            .fillna("-")).all()
    # the old cut: the top 30% of each category by (lds, tiebreak)
    usable = old[old.excluded_reason.isna()].sort_values(
        ["category", "sort_key", "tiebreak"], ascending=[True, False, False])
    expected = set(usable.groupby("category", group_keys=False).apply(
        lambda d: d.head(math.floor(0.3 * len(d) + 1e-9)))["window_id"])
    assert selected_ids(rows) == expected


def test_random_recipe_gives_the_old_draw(spark, tables):
    rows = computed(spark, tables, method="random", seed=4, keep_fraction=0.3, exact=True)
    old = reference_ranked(spark, tables, "zscore", "random", seed=4)
    usable = old[old.excluded_reason.isna()]
    lds_sizes = usable.groupby("category").size().map(lambda n: math.floor(0.3 * n + 1e-9))
    expected = set()
    for category, d in usable.groupby("category"):
        d = d.sort_values(["sort_key", "tiebreak"], ascending=False)
        expected |= set(d.head(int(lds_sizes[category]))["window_id"])
    assert selected_ids(rows) == expected
