"""``longattn-spark compare`` (issue 13, point 7): its numbers equal pandas' on the same rows:
Spearman per category (Pearson correlation of average ranks), the kept sets' Jaccard index,
and the windows ranked furthest apart."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from longattn_spark import cli
from longattn_spark.compare import compare_scorers, parse_selections, scorer_pair
from longattn_spark.errors import ConfigError
from longattn_spark.tables.refs import TableRef
from longattn_spark.tables.schemas import SCORES, SELECTION
from longattn_spark.tables.writes import ensure_table, merge_new_rows

from helpers import lds_reference

A, B = "l0-aaaa", "pl-bbbb"


def score_rows(n_per_category: int = 60, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for category in ("arxiv", "book"):
        for i in range(n_per_category):
            wid = f"{category}-{i:03d}"
            ds = float(rng.normal(0.4, 0.1))
            variance = float(rng.normal(2e-6, 5e-7))
            # ProLong's score: correlated with DS, with ties (rounded) to exercise average ranks
            score = round(ds * 100 + float(rng.normal(0, 3)), 0)
            rows.append({"window_id": wid, "category": category, "scorer_id": A,
                         "method": "longattn", "ds": ds, "variance": variance, "score": None})
            rows.append({"window_id": wid, "category": category, "scorer_id": B,
                         "method": "prolong", "ds": None, "variance": None, "score": score})
    rows.append({"window_id": "book-only-a", "category": "book", "scorer_id": A,
                 "method": None, "ds": 0.5, "variance": 1e-6, "score": None})  # no B score
    return pd.DataFrame(rows)


def write_scores(spark, table: str, frame: pd.DataFrame) -> None:
    ref = TableRef(table)
    ensure_table(spark, ref, SCORES)
    full = frame.copy()
    for f in SCORES.schema.fields:
        if f.name not in full:
            full[f.name] = None
    rows = spark.createDataFrame(full[SCORES.column_names].to_dict("records"), SCORES.schema)
    merge_new_rows(spark, ref, SCORES, rows)


def write_selection(spark, table: str, kept: dict[str, set[str]], windows: list[tuple]) -> None:
    ref = TableRef(table)
    ensure_table(spark, ref, SELECTION)
    records = []
    for selection_id, ids in kept.items():
        for wid, category in windows:
            records.append({"selection_id": selection_id, "window_id": wid,
                            "category": category, "selected": wid in ids})
    frame = pd.DataFrame(records)
    for f in SELECTION.schema.fields:
        if f.name not in frame:
            frame[f.name] = None
    merge_new_rows(spark, ref, SELECTION, spark.createDataFrame(
        frame[SELECTION.column_names].to_dict("records"), SELECTION.schema))


def expected_values(frame: pd.DataFrame, alpha: float = 0.5) -> pd.DataFrame:
    a = frame[frame.scorer_id == A].copy()
    a["value_a"] = lds_reference(a, alpha)
    b = frame[frame.scorer_id == B][["window_id", "score"]].rename(columns={"score": "value_b"})
    return a[["window_id", "category", "value_a"]].merge(b, on="window_id")


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    frame = score_rows()
    scores = str(root / "scores")
    write_scores(spark, scores, frame)
    values = expected_values(frame)
    windows = list(values[["window_id", "category"]].itertuples(index=False, name=None))
    kept_a = set(values.sort_values("value_a", ascending=False).groupby("category")
                 .head(30).window_id)
    kept_b = set(values.sort_values(["value_b", "window_id"], ascending=False)
                 .groupby("category").head(30).window_id)
    selection = str(root / "selection")
    write_selection(spark, selection, {"sel-a": kept_a, "sel-b": kept_b}, windows)
    return scores, selection, frame, values, kept_a, kept_b


def test_spearman_and_jaccard_equal_pandas(spark, tables):
    scores, selection, _frame, values, kept_a, kept_b = tables
    result = compare_scorers(spark, TableRef(scores), A, B, selection=TableRef(selection),
                             selections=("sel-a", "sel-b"), disagreements=5)
    by_category = {c.category: c for c in result.categories}
    assert set(by_category) == {"arxiv", "book"}
    for category, group in values.groupby("category"):
        got = by_category[category]
        assert got.windows == len(group) == 60  # book-only-a has no B score
        expected = group.value_a.rank().corr(group.value_b.rank())  # Spearman with ties
        assert got.spearman == pytest.approx(expected, rel=1e-9)
        ids = set(group.window_id)
        a, b = kept_a & ids, kept_b & ids
        assert (got.kept_a, got.kept_b, got.kept_both) == (len(a), len(b), len(a & b))
        assert got.jaccard == pytest.approx(len(a & b) / len(a | b), rel=1e-12)
    # the windows ranked furthest apart, rank as a fraction of the category
    ranked = values.copy()
    groups = ranked.groupby("category")
    n = groups.window_id.transform("count")
    ranked["gap"] = (groups.value_a.rank() - groups.value_b.rank()).abs() / (n - 1)
    top = ranked.sort_values(["gap", "window_id"], ascending=[False, True]).head(5)
    assert [d.window_id for d in result.disagreements] == list(top.window_id)
    assert [d.gap for d in result.disagreements] == pytest.approx(list(top.gap), rel=1e-9)
    assert len(result.scatter) == 120


def test_scorer_pair_defaults_and_errors(spark, tables):
    scores = TableRef(tables[0])
    assert scorer_pair(spark, scores, "", "") == (A, B)
    with pytest.raises(ConfigError, match="--b pl-nope: no such scorer_id"):
        scorer_pair(spark, scores, A, "pl-nope")
    with pytest.raises(ConfigError, match="two selection ids"):
        parse_selections("only-one")


def test_compare_command_prints_the_table(spark, tables, capsys):
    scores, selection, *_ = tables
    code = cli.run(["compare", "--scores", scores, "--a", A, "--b", B, "--selection", selection,
                    "--selections", "sel-a,sel-b"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "spearman" in out.out and "jaccard" in out.out and "arxiv" in out.out
