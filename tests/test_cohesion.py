"""``--method cohesion`` (issue 29, a seam statistic against the category's vocabulary):
``min_split_idf`` against plain Python sets on random and hand-made windows; the score job
(real local Spark, Delta, real Llama-3 tokenizer on standard-library modules) plans each
category's document frequencies as Python counts them, over the sampled windows only, and
stores the library's value for every window; a re-run scores nothing, a table that gained
windows gets a new scorer_id; a recipe selects by the component; bad options are one line."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from longattn_spark.config import ScoreConfig
from longattn_spark.errors import ConfigError
from longattn_spark.score.job import score_windows
from longattn_spark.scorers.cohesion.stats import (
    Vocabulary,
    min_split_idf,
    token_weights,
    vocabulary_of,
)
from longattn_spark.scorers.repetition.stats import min_split_jaccard
from longattn_spark.tables.refs import TableRef

from helpers import ingest_stdlib_modules, with_options

W = 256
MODULES = ["argparse.py", "csv.py", "heapq.py", "textwrap.py", "shlex.py", "bisect.py"]


def reference_min_split_idf(ids: list[int], df: dict[int, int], n: int, power: float) -> float:
    """The definition, with sets and a loop over every split point."""
    length = len(ids)
    margin = max(length // 4, 1)
    if length - margin < margin:
        return 1.0

    def weight(t: int) -> float:
        return math.log((n + 1) / (df.get(t, 0) + 1)) ** power

    total = sum(weight(t) for t in set(ids))
    if total <= 0:
        return 1.0
    return min(sum(weight(t) for t in set(ids[:p]) & set(ids[p:])) / total
               for p in range(margin, length - margin + 1))


def test_random_windows_equal_the_reference():
    rng = random.Random(3)
    for case in range(150):
        vocab = rng.randint(2, 60)
        length = rng.randint(0, 120)
        ids = [rng.randrange(vocab) for _ in range(length)]
        others = [[rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
                  for _ in range(rng.randint(0, 6))]
        df = {}
        for window in others:
            for t in set(window):
                df[t] = df.get(t, 0) + 1
        vocabulary = vocabulary_of(np.array(w) for w in others)
        power = rng.choice([1.0, 2.0, 0.5])
        got = min_split_idf(np.array(ids, np.int64), vocabulary, power)
        want = reference_min_split_idf(ids, df, len(others), power)
        assert got == pytest.approx(want, abs=1e-12), (case, ids, others, power)


def test_vocabulary_counts_the_windows_holding_each_token():
    vocabulary = vocabulary_of([np.array([5, 5, 7]), np.array([7, 9]), np.array([1])])
    tokens, df = vocabulary.arrays()
    assert vocabulary.n == 3
    assert dict(zip(tokens.tolist(), df.tolist())) == {1: 1, 5: 1, 7: 2, 9: 1}
    weights = token_weights(vocabulary, np.array([7, 5, 100]), 1.0)
    assert weights == pytest.approx([math.log(4 / 3), math.log(4 / 2), math.log(4)])


def test_tokens_common_to_the_category_do_not_hold_a_splice_together():
    """Two texts joined in the middle, sharing only the category's common tokens (in every
    window of the category): the unweighted split Jaccard sees them shared across the join,
    the weighted one sees nothing shared there; one text that keeps using its own rare
    tokens on both sides stays high."""
    common = list(range(10))
    a_rare, b_rare = list(range(100, 140)), list(range(200, 240))
    rng = random.Random(0)

    def text(rare: list[int], n: int) -> list[int]:
        return [rng.choice(common) if i % 2 else rng.choice(rare) for i in range(n)]

    category = [np.array(common + text(list(range(300 + 40 * k, 340 + 40 * k)), 60))
                for k in range(20)]
    vocabulary = vocabulary_of(category)
    splice = np.array(text(a_rare, 128) + text(b_rare, 128))
    one_text = np.array(text(a_rare, 256))
    assert min_split_jaccard(splice) > 0.1  # the common tokens span the join
    assert min_split_idf(splice, vocabulary, 2.0) == pytest.approx(0.0, abs=1e-12)
    assert min_split_idf(one_text, vocabulary, 2.0) > 0.3  # 0.42 with this seed


def test_a_window_of_tokens_in_every_window_is_one_text():
    vocabulary = vocabulary_of([np.array([1, 2, 3])] * 4)
    assert min_split_idf(np.array([1, 2, 3, 1, 2, 3, 3, 2]), vocabulary, 2.0) == 1.0


@pytest.mark.parametrize("option, message", [
    ("df_sample=0", "--option df_sample=0: must be >= 1"),
    ("idf_power=-1", "--option idf_power=-1.0: must be a number > 0"),
    ("idf_power=x", "--option idf_power=x: expected float"),
    ("df=3", "--option df: --method cohesion has no option df"),
])
def test_bad_options_are_one_line(option, message):
    from longattn_spark.scorers import get_method
    from longattn_spark.scorers.options import parse_option_flags

    with pytest.raises(ConfigError) as info:
        get_method("cohesion").options_from(parse_option_flags([option]))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# --- the score job ---------------------------------------------------------------------------

def cohesion_config(windows: str, table: str, **options) -> ScoreConfig:
    cfg = ScoreConfig(windows=windows, model="", table=table, device="cpu",
                      files_per_batch=100, method="cohesion", batch_size=8)
    return with_options(cfg, **options) if options else cfg


@pytest.fixture(scope="module")
def windows_table(spark, tmp_path_factory, llama3_tokenizer_dir) -> str:
    """Six standard-library modules in two categories, cut into W = 256 windows."""
    table, summary = ingest_stdlib_modules(
        spark, tmp_path_factory.mktemp("cohesion_windows"), llama3_tokenizer_dir, MODULES,
        window_size=W, chars=3000, categories=("docs", "code"))
    assert summary.windows >= 12
    return table


def windows_by_category(spark, table: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in TableRef(table).read(spark).collect():
        out.setdefault(r["category"], []).append(r.asDict())
    return out


@pytest.fixture(scope="module")
def scored(spark, windows_table, tmp_path_factory) -> dict:
    """cohesion, then repetition, into one scores table."""
    table = str(tmp_path_factory.mktemp("cohesion_scores") / "scores")
    summary = score_windows(spark, cohesion_config(windows_table, table), progress=False)
    repetition = dataclasses.replace(cohesion_config(windows_table, table),
                                     method="repetition")
    assert score_windows(spark, repetition, progress=False).scored == summary.scored
    return {"table": table, "summary": summary}


def test_job_values_are_the_library_over_each_categorys_vocabulary(spark, windows_table,
                                                                   scored):
    table, summary = scored["table"], scored["summary"]
    by_category = windows_by_category(spark, windows_table)
    got = {r["window_id"]: r for r in TableRef(table).read(spark)
           .where("method = 'cohesion'").collect()}
    assert summary.scored == sum(map(len, by_category.values())) == len(got)
    assert {r["method"] for r in got.values()} == {"cohesion"}
    assert {r["scorer_id"] for r in got.values()} == {summary.scorer_id}
    assert summary.scorer_id.startswith("ch-")
    values = []
    for category, windows in by_category.items():
        df: dict[int, int] = {}
        for w in windows:
            for t in set(w["input_ids"]):
                df[t] = df.get(t, 0) + 1
        for w in windows:
            want = reference_min_split_idf(w["input_ids"], df, len(windows), 2.0)
            value = got[w["window_id"]]["components"]["min_split_idf"]
            assert value == pytest.approx(want, abs=1e-9), w["window_id"]
            values.append(value)
    assert len(set(values)) > len(values) // 2  # values, not a constant
    # a re-run plans the same vocabularies, so the same scorer_id, and scores nothing
    again = score_windows(spark, cohesion_config(windows_table, table), progress=False)
    assert again.scorer_id == summary.scorer_id and again.scored == 0
    assert TableRef(table).read(spark).where("method = 'cohesion'").count() == len(got)


def test_a_rank_over_cohesion_and_repetition_equals_pandas(spark, windows_table, scored,
                                                           tmp_path):
    """The recipe layer joins the component like any other (no method branch): z-scores
    within the category, as pandas computes them."""
    from longattn_spark.config import SelectConfig
    from longattn_spark.select.recipe import RecipeRequest
    from longattn_spark.select import select_options, select_windows

    table = TableRef(str(tmp_path / "selection"))
    rank = "z(cohesion.min_split_idf) - z(repetition.compression)"
    select_windows(spark, select_options(SelectConfig(keep_fraction=0.5, exact=True)),
                   TableRef(windows_table), TableRef(scored["table"]), table,
                   request=RecipeRequest(rank=rank))
    rows = table.read(spark).toPandas().set_index("window_id")
    scores = TableRef(scored["table"]).read(spark).toPandas()
    wide = pd.DataFrame({
        "category": scores.groupby("window_id")["category"].first(),
        "idf": scores[scores.method == "cohesion"].set_index("window_id")["components"]
        .map(lambda c: c["min_split_idf"]),
        "compression": scores[scores.method == "repetition"].set_index("window_id")
        ["components"].map(lambda c: c["compression"])})
    g = wide.groupby("category")
    want = ((wide["idf"] - g["idf"].transform("mean")) / g["idf"].transform("std")
            - (wide["compression"] - g["compression"].transform("mean"))
            / g["compression"].transform("std"))
    assert rows["passed"].all() and len(rows) == len(wide)
    np.testing.assert_allclose(rows.loc[want.index, "rank"], want, rtol=1e-9)
    assert rows["scorer_ids"].iloc[0]["cohesion"] == scored["summary"].scorer_id


def test_df_sample_takes_the_smallest_window_id_hashes(spark, windows_table, scored,
                                                      tmp_path):
    """With df_sample=2 each category's vocabulary is that of its two windows with the
    smallest xxhash64(window_id), and the values follow it (not the whole category)."""
    from longattn_spark.scorers.cohesion.vocabulary import category_vocabularies

    frame = TableRef(windows_table).read(spark)
    hashes = {r["window_id"]: r["h"] for r in
              frame.select("window_id", F.xxhash64("window_id").alias("h")).collect()}
    planned = category_vocabularies(frame, 2)
    by_category = windows_by_category(spark, windows_table)
    assert set(planned) == set(by_category)
    table = str(tmp_path / "scores")
    summary = score_windows(spark, cohesion_config(windows_table, table, df_sample=2),
                            progress=False)
    got = {r["window_id"]: r["components"]["min_split_idf"]
           for r in TableRef(table).read(spark).collect()}
    differs = 0
    for category, windows in by_category.items():
        sampled = sorted(windows, key=lambda w: hashes[w["window_id"]])[:2]
        want = vocabulary_of(np.array(w["input_ids"]) for w in sampled)
        assert planned[category] == want
        for w in windows:
            ids = np.array(w["input_ids"])
            assert got[w["window_id"]] == pytest.approx(min_split_idf(ids, want, 2.0),
                                                         abs=1e-12)
            whole = vocabulary_of(np.array(v["input_ids"]) for v in windows)
            differs += abs(min_split_idf(ids, whole, 2.0) - got[w["window_id"]]) > 1e-6
    assert differs > 0
    assert summary.scorer_id != scored["summary"].scorer_id  # another vocabulary


def test_a_table_that_gained_windows_gets_a_new_scorer_id(spark, windows_table, scored,
                                                          tmp_path):
    """The scores table holds every window under the first id; the same windows plus one get
    another id, under which all of them are scored again into that table."""
    import shutil

    copy = tmp_path / "windows"
    shutil.copytree(windows_table, copy)
    extra = TableRef(str(copy)).read(spark).where("category = 'code'").limit(1) \
        .withColumn("window_id", F.lit("extra#0")).withColumn("doc_id", F.lit("extra"))
    extra.write.format("delta").mode("append").save(str(copy))
    scores = tmp_path / "scores"
    shutil.copytree(scored["table"], scores)
    second = score_windows(spark, cohesion_config(str(copy), str(scores)), progress=False)
    assert second.scorer_id != scored["summary"].scorer_id
    assert second.scored == scored["summary"].scored + 1  # every window again, under the new id


def test_a_window_of_a_category_not_planned_is_a_reject():
    from longattn_spark.reasons import CATEGORY_NOT_PLANNED
    from longattn_spark.scorers.base import Reject
    from longattn_spark.scorers.cohesion.method import METHOD, CohesionScorer, CohesionSettings
    from longattn_spark.scorers.settings import RunSettings

    import pyarrow as pa

    from longattn_spark.scorers.batch import WindowBatch

    settings = CohesionSettings(
        run=RunSettings(location=None, device="cpu", dtype="float64", allow_pickle=False,
                        threads=1),
        idf_power=2.0, vocabularies=(("code", vocabulary_of([np.arange(8)])),))
    batch = WindowBatch.from_arrow(pa.RecordBatch.from_pydict({
        "window_id": ["a", "b"], "category": ["code", "logs"], "n_tokens": [8, 8],
        "input_ids": [list(range(8)), list(range(8))]}))
    rows = METHOD.score_rows(METHOD.prepare(batch, None, settings), [0, 1],
                             CohesionScorer(settings), settings)
    assert isinstance(rows[0], dict) and 0 <= rows[0]["min_split_idf"] <= 1
    assert isinstance(rows[1], Reject) and rows[1].reason == CATEGORY_NOT_PLANNED
    assert "'logs'" in rows[1].detail


def test_vocabulary_is_hashable_and_named_by_its_counts():
    a = vocabulary_of([np.array([1, 2]), np.array([2])])
    b = Vocabulary.of(2, np.array([2, 1]), np.array([2, 1]))
    assert a == b and hash(a) == hash(b) and a.fingerprint() == b.fingerprint()
    assert vocabulary_of([np.array([1, 2])]).fingerprint() != a.fingerprint()
    # same windows counted, same tokens, other document frequencies: another vocabulary
    other = Vocabulary.of(2, np.array([1, 2]), np.array([2, 2]))
    assert other != a and other.fingerprint() != a.fingerprint()
