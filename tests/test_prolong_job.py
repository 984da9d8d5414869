"""ProLong in the score and select jobs, on local Spark with real Delta tables, the real
Llama-3 tokenizer and tiny random causal LMs: job scores equal ``ProLongScorer.score_windows``
on the same ids, LongAttn and ProLong rows share one table, a re-run scores nothing, select
ranks a ProLong scorer by its z-scored score, windows cut by another tokenizer are decoded and
re-tokenized with the model's, and bad input is a one-line error before any Spark job."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from longattn_spark.config import IngestConfig, ScoreConfig
from longattn_spark.errors import ConfigError, InputError
from longattn_spark.ingest import ingest
from longattn_spark.score.job import score_windows
from longattn_spark.scorers.prolong.scorer import ProLongScorer
from longattn_spark.select import SelectOptions, select_windows
from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.tables.refs import TableRef, table_properties
from longattn_spark.tokenizer import get_tokenizer, load_tokenizer_spec
from longattn_spark.weights.locate import files_needed_whole, locate_model

from helpers import spark_jobs_in, with_options

W = 512
C = 128
# Four modules, each cut to 2,300 characters (500-600 tokens: two overlapping windows; argparse,
# with the NFKC text, three): 9 windows. Every window is scored by a 128k-vocabulary model ten
# times (4 segments alone, 6 pairs) in the job and again by the library in the checks, so the
# module's time follows the window count (18 windows at 5,200 characters of six modules).
MODULES = ["argparse.py", "csv.py", "heapq.py", "textwrap.py"]
# Characters NFKC rewrites (ligatures, full-width letters, superscripts): the derived
# tokenizer gives other ids for text holding them.
NFKC_TEXT = " ﬁnd ＡＢＣ x² ½ ﬂow ① " * 40


def tiny_llama(path: Path, tokenizer_dir: Path | None, seed: int = 0) -> Path:
    return write_smoke_test_model(path, vocab_size=128256, hidden_size=32,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  num_hidden_layers=1, intermediate_size=64, seed=seed,
                                  tokenizer_dir=tokenizer_dir, dtype="float32")


def prolong_config(windows: str, model: Path | str, table: str, **overrides) -> ScoreConfig:
    return with_options(
        ScoreConfig(windows=windows, model=str(model), table=table, device="cpu",
                    files_per_batch=100, method="prolong",
                    options={"segment_size": C, "pairs": -1, "threshold": -1.0}), **overrides)


def rows(spark, table: str) -> list[dict]:
    return [r.asDict(recursive=True) for r in TableRef(table).read(spark).collect()]




@pytest.fixture(scope="module")
def windows_table(spark, tmp_path_factory, llama3_tokenizer_dir) -> str:
    """Four standard-library modules in two categories, cut into W = 512 windows."""
    root = tmp_path_factory.mktemp("prolong_windows")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = root / "docs.jsonl"
    with source.open("w") as f:
        for i, name in enumerate(MODULES):
            text = (stdlib / name).read_text()[:2300]
            if i == 0:
                text = text[:2000] + NFKC_TEXT + text[2000:]
            f.write(json.dumps({"id": name, "text": text,
                                "category": "code" if i % 2 else "docs"}) + "\n")
    table = str(root / "windows")
    summary = ingest(spark, IngestConfig(input=str(source), tokenizer=str(llama3_tokenizer_dir),
                                         window_size=W, table=table, partitions=2,
                                         commit_chunks=1),
                     load_tokenizer_spec(llama3_tokenizer_dir))
    assert summary.windows == 9  # docs: argparse 3 + heapq 2; code: csv 2 + textwrap 2
    return table


@pytest.fixture(scope="module")
def lm(tmp_path_factory, llama3_tokenizer_dir) -> Path:
    """A tiny Llama whose folder holds the Llama-3 tokenizer (the windows' tokenizer)."""
    return tiny_llama(tmp_path_factory.mktemp("prolong_lm") / "lm", llama3_tokenizer_dir, seed=3)


@pytest.fixture(scope="module")
def scored(spark, windows_table, lm, tmp_path_factory):
    table = str(tmp_path_factory.mktemp("prolong_scores") / "scores")
    summary = score_windows(spark, prolong_config(windows_table, lm, table), progress=False)
    return {"table": table, "summary": summary}


def library_scorer(model: Path, **kwargs) -> ProLongScorer:
    torch.set_num_threads(1)  # as in the job's local tasks
    return ProLongScorer.from_pretrained(model, device="cpu", dtype="float32", segment_size=C,
                                         pairs=-1, threshold=-1.0, **kwargs)


def test_job_scores_equal_the_library_scorer_on_the_window_ids(spark, windows_table, lm,
                                                                 scored):
    windows = {r["window_id"]: r for r in rows(spark, windows_table)}
    scores = rows(spark, scored["table"])
    assert scored["summary"].scored == len(windows) == len(scores)
    scorer = library_scorer(lm)
    assert {r["scorer_id"] for r in scores} == {scorer.scorer_id()} == {
        scored["summary"].scorer_id}
    ids = list(windows)
    expected = {r.window_id: r for r in scorer.score_windows(
        [windows[w]["input_ids"] for w in ids], ids)}
    for row in scores:
        want = expected[row["window_id"]]
        assert row["method"] == "prolong"
        assert row["score"] == pytest.approx(want.score, rel=1e-6, abs=1e-9)
        assert row["ds"] is None and row["variance"] is None and row["ds_heads"] is None
        component = row["prolong"]
        assert component["pairs_scored"] == want.pairs_scored == (W // C) * (W // C - 1) // 2
        assert component["segments"] == want.segments == W // C
        assert component["pairs_kept"] == want.pairs_kept
        assert component["mean_strength"] == pytest.approx(want.mean_strength, rel=1e-6)
        assert component["reason"] is None
        assert row["category"] == windows[row["window_id"]]["category"]
        assert (row["device"], row["dtype"]) == ("cpu", "float32")
    assert len({round(r["score"], 9) for r in scores}) == len(scores)  # continuous, no ties
    recorded = json.loads(table_properties(spark, TableRef(scored["table"]))[
        f"longattn.scorer.{scorer.scorer_id()}"])
    assert recorded["method"] == "prolong" and recorded["segment_size"] == C
    assert recorded["model_weights_sha256"] == scorer.weights_sha256()
    assert recorded["tokenizer"]["check"] == "match"


def test_second_run_scores_nothing(spark, windows_table, lm, scored):
    before = TableRef(scored["table"]).version(spark)
    again = score_windows(spark, prolong_config(windows_table, lm, scored["table"]),
                          progress=False)
    assert again.scored == 0 and again.already_scored == scored["summary"].scored
    assert TableRef(scored["table"]).version(spark) == before


def test_early_exit_is_a_zero_score_with_its_reason_not_a_reject(spark, windows_table, lm,
                                                                  tmp_path):
    table = str(tmp_path / "scores")
    # 4 segments give 6 pairs: asking for 7 is the released code's early return (LDS 0)
    summary = score_windows(spark, prolong_config(windows_table, lm, table, pairs=7,
                                                  category="code"), progress=False)
    got = rows(spark, table)
    assert summary.scored == len(got) > 0 and summary.rejected == {}
    assert {(r["score"], r["prolong"]["reason"]) for r in got} == {(0.0, "too_few_pairs")}


def test_longattn_and_prolong_side_by_side_and_select_on_prolong(spark, windows_table, lm,
                                                                  scored, tmp_path):
    table = scored["table"]
    longattn = score_windows(spark, ScoreConfig(windows=windows_table, model=str(lm),
                                                table=table, device="cpu", files_per_batch=100),
                             progress=False)
    got = pd.DataFrame(rows(spark, table))
    assert longattn.scored == scored["summary"].scored
    by_method = got.groupby("method")["scorer_id"].agg(["nunique", "count"])
    assert by_method.to_dict("index") == {
        "longattn": {"nunique": 1, "count": longattn.scored},
        "prolong": {"nunique": 1, "count": longattn.scored}}
    assert got[got.method == "longattn"].score.isna().all()
    assert got[got.method == "longattn"].ds.notna().all()

    prolong_id = scored["summary"].scorer_id
    selection = str(tmp_path / "selection")
    for exact in (True, False):
        result = select_windows(spark, SelectOptions(keep_fraction=0.5, exact=exact),
                                TableRef(windows_table), TableRef(table), TableRef(selection),
                                scorer_id=prolong_id)
        sel = pd.DataFrame([r.asDict() for r in TableRef(selection).read(spark)
                            .filter(f"selection_id = '{result.selection_id}'").collect()])
        mine = got[got.scorer_id == prolong_id]
        expected = set()
        for _, part in mine.groupby("category"):
            keep = math.floor(0.5 * len(part) + 1e-9)
            expected |= set(part.sort_values("score", ascending=False).window_id[:keep])
        assert set(sel[sel.selected].window_id) == expected, f"exact={exact}"
        merged = sel.merge(mine[["window_id", "score"]], on="window_id")
        z = merged.groupby("category").score.transform(lambda s: (s - s.mean()) / s.std(ddof=1))
        assert np.allclose(merged.lds, z, rtol=1e-9, atol=1e-12)
        assert np.allclose(merged.z_ds, z, rtol=1e-9, atol=1e-12)
        assert (merged.z_du == 0).all()
        assert merged.ds.isna().all() and merged.variance.isna().all()
    # and the LongAttn scorer of the same table still selects as before (z(ds) + a*z(du))
    longattn_sel = select_windows(spark, SelectOptions(keep_fraction=0.5, exact=True),
                                  TableRef(windows_table), TableRef(table), TableRef(selection),
                                  scorer_id=longattn.scorer_id)
    sel = pd.DataFrame([r.asDict() for r in TableRef(selection).read(spark)
                        .filter(f"selection_id = '{longattn_sel.selection_id}'").collect()])
    assert sel.ds.notna().all() and np.allclose(sel.lds, sel.z_ds + 0.5 * sel.z_du)


def derived_model(lm: Path, target: Path, llama3_tokenizer_dir: Path) -> Path:
    """The tiny Llama with a tokenizer that is Llama-3's with an NFKC normalizer."""
    shutil.copytree(lm, target)
    data = json.loads((llama3_tokenizer_dir / "tokenizer.json").read_text())
    data["normalizer"] = {"type": "NFKC"}
    (target / "tokenizer.json").write_text(json.dumps(data))
    return target


def test_windows_cut_by_another_tokenizer_are_re_tokenized(spark, windows_table, lm, tmp_path,
                                                           llama3_tokenizer_dir, scored):
    model = derived_model(lm, tmp_path / "nfkc", llama3_tokenizer_dir)
    table = str(tmp_path / "scores")
    with pytest.raises(InputError, match="--windows-tokenizer") as info:
        score_windows(spark, prolong_config(windows_table, model, table, category="docs"),
                      progress=False)
    assert "\n" not in str(info.value)
    summary = score_windows(spark, prolong_config(
        windows_table, model, table, category="docs",
        windows_tokenizer=str(llama3_tokenizer_dir)), progress=False)
    windows = {r["window_id"]: r for r in rows(spark, windows_table) if r["category"] == "docs"}
    got = rows(spark, table)
    assert summary.scored == len(windows) == len(got)
    assert summary.scorer_id != scored["summary"].scorer_id  # re-tokenizing is another scorer
    source = get_tokenizer(load_tokenizer_spec(llama3_tokenizer_dir))
    target = get_tokenizer(load_tokenizer_spec(model))
    scorer = library_scorer(model, window_size=W)
    changed = 0
    for row in got:
        ids = windows[row["window_id"]]["input_ids"]
        text = source.decode(ids, skip_special_tokens=False)
        retokenized = target.encode(text, add_special_tokens=False).ids
        changed += retokenized != ids
        want = scorer.score_window(retokenized, row["window_id"])
        assert row["score"] == pytest.approx(want.score, rel=1e-6, abs=1e-9)
        assert row["prolong"]["pairs_scored"] == want.pairs_scored
    assert changed >= 1  # the NFKC text gives other ids: the path is exercised
    record = json.loads(table_properties(spark, TableRef(table))[
        f"longattn.scorer.{summary.scorer_id}"])
    assert record["tokenizer"]["check"] == "retokenized"


def test_windows_tokenizer_must_be_the_one_that_cut_the_windows(spark, windows_table, lm,
                                                                tmp_path, llama3_tokenizer_dir):
    model = derived_model(lm, tmp_path / "nfkc", llama3_tokenizer_dir)
    errors = []

    def run():
        with pytest.raises(InputError, match="holds windows cut by tok-") as info:
            score_windows(spark, prolong_config(windows_table, model, str(tmp_path / "s"),
                                                windows_tokenizer=str(model)), progress=False)
        errors.append(str(info.value))

    spark_jobs_in(spark, run)
    assert "\n" not in errors[0] and not (tmp_path / "s").exists()


@pytest.mark.parametrize("problem", ["not_causal", "pickle", "pairs_zero"])
def test_bad_input_fails_before_any_spark_job(spark, windows_table, lm, tmp_path, problem):
    model = tmp_path / "model"
    shutil.copytree(lm, model)
    overrides = {}
    if problem == "not_causal":
        config = json.loads((model / "config.json").read_text())
        config.update({"model_type": "bert", "architectures": ["BertModel"]})
        (model / "config.json").write_text(json.dumps(config))
    elif problem == "pickle":
        torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, model / "pytorch_model.bin")
        (model / "model.safetensors").unlink()
    else:
        overrides["pairs"] = 0
    expected = {"not_causal": (InputError, "'bert' is not a causal language model"),
                "pickle": (InputError, r"pytorch_model\.bin: pickled .*--allow-pickle"),
                "pairs_zero": (ConfigError, "--pairs 0")}[problem]
    table = tmp_path / "scores"
    errors = []

    def run():
        with pytest.raises(expected[0], match=expected[1]) as info:
            score_windows(spark, prolong_config(windows_table, model, str(table), **overrides),
                          progress=False)
        errors.append(str(info.value))

    assert spark_jobs_in(spark, run) == []
    assert "\n" not in errors[0]
    assert not table.exists()


def test_segment_size_larger_than_the_window_fails_before_any_task(spark, windows_table, lm,
                                                                   tmp_path):
    """The window size comes from the windows table (one aggregate over it); the error comes
    before the scores table is made and before any scoring task."""
    table = tmp_path / "scores"
    tasks = []

    def wrapper(fn):
        tasks.append(fn)
        return fn

    with pytest.raises(ConfigError, match=f"--segment-size {W + 1} is larger than the "
                                          f"windows") as info:
        score_windows(spark, prolong_config(windows_table, lm, str(table), segment_size=W + 1),
                      progress=False, udf_wrapper=wrapper)
    assert "\n" not in str(info.value)
    assert tasks == [] and not table.exists()


def test_a_window_with_ids_outside_the_vocabulary_is_a_reject(spark, windows_table, lm,
                                                              tmp_path):
    """A model whose vocabulary is smaller than the windows' ids: rejects rows, no crash."""
    small = write_smoke_test_model(tmp_path / "small", vocab_size=1000, hidden_size=32,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   num_hidden_layers=1, intermediate_size=64, dtype="float32")
    table = str(tmp_path / "scores")
    summary = score_windows(spark, prolong_config(windows_table, small, table, category="code",
                                                  allow_tokenizer_mismatch=True),
                            progress=False)
    rejects = rows(spark, table + "_rejects")
    assert summary.scored == 0 and summary.rejected == {"ids_out_of_vocab": len(rejects)}
    assert len(rejects) > 0 and all("outside 0..999" in r["detail"] for r in rejects)


def test_whole_model_files_and_fetch_from_a_uri(spark, windows_table, lm, tmp_path, scored):
    """ProLong needs every weight shard, the config and the tokenizer files; from a URI the
    executors fetch them all, and the scores are the same scorer's."""
    names = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "model.safetensors.index.json", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors", "pytorch_model.bin", "README.md", "x.py"]
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}
    assert files_needed_whole(names, index) == [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "model.safetensors.index.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors"]
    sharded = tmp_path / "sharded"
    model = ProLongScorer.from_pretrained(lm).model
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="2MB")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (lm / name).is_file():
            shutil.copy(lm / name, sharded / name)
    location = locate_model(spark, sharded.as_uri())
    shards = [f.name for f in location.files if f.name.endswith(".safetensors")]
    assert len(shards) >= 2 and not location.in_place
    table = str(tmp_path / "scores")
    summary = score_windows(spark, prolong_config(windows_table, sharded.as_uri(), table,
                                                  category="code"), progress=False)
    # another sharding of the same tensors: the same weights fingerprint, the same scorer
    assert summary.scorer_id == scored["summary"].scorer_id
    first = {r["window_id"]: r["score"] for r in rows(spark, scored["table"])
             if r["scorer_id"] == summary.scorer_id}
    got = rows(spark, table)
    assert summary.scored == len(got) > 0
    for row in got:
        assert row["score"] == pytest.approx(first[row["window_id"]], rel=1e-6, abs=1e-9)
