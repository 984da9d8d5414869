"""``score --method lossgain`` through the real score job (local Spark, Delta, the real
Llama-3 tokenizer, tiny random causal LMs): the table's scores equal ``LossGainScorer`` on the
same windows, a re-run scores nothing, select ranks it by its z-scored score per category,
non-finite losses are scores_rejects rows, and bad input is one line before any Spark job."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from longattn_spark.config import ScoreConfig
from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.errors import ConfigError, InputError
from longattn_spark.reasons import NON_FINITE_LOSS
from longattn_spark.score.job import score_windows
from longattn_spark.scorers.lossgain.scorer import LossGainScorer
from longattn_spark.select import SelectOptions, select_windows
from longattn_spark.tables.refs import TableRef, table_properties

from helpers import ingest_stdlib_modules, spark_jobs_in, with_options

W = 256
MODULES = ["argparse.py", "csv.py", "heapq.py", "textwrap.py"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def lossgain_config(windows: str, model: Path | str, table: str, **overrides) -> ScoreConfig:
    return with_options(
        ScoreConfig(windows=windows, model=str(model), table=table, device="cpu",
                    files_per_batch=100, method="lossgain", batch_size=4), **overrides)


def rows(spark, table: str) -> list[dict]:
    return [r.asDict(recursive=True) for r in TableRef(table).read(spark).collect()]


@pytest.fixture(scope="module")
def windows_table(spark, tmp_path_factory, llama3_tokenizer_dir) -> str:
    """Four standard-library modules in two categories, cut into W = 256 windows."""
    table, summary = ingest_stdlib_modules(
        spark, tmp_path_factory.mktemp("lossgain_windows"), llama3_tokenizer_dir, MODULES,
        window_size=W, chars=4000, categories=("docs", "code"))
    assert summary.windows >= 8
    return table


@pytest.fixture(scope="module")
def lm(tmp_path_factory, llama3_tokenizer_dir) -> Path:
    return write_smoke_test_model(tmp_path_factory.mktemp("lossgain_lm") / "lm",
                                  vocab_size=128256, hidden_size=32, num_attention_heads=4,
                                  num_key_value_heads=2, num_hidden_layers=1,
                                  intermediate_size=64, seed=5,
                                  tokenizer_dir=llama3_tokenizer_dir, dtype="float32")


@pytest.fixture(scope="module")
def scored(spark, windows_table, lm, tmp_path_factory):
    table = str(tmp_path_factory.mktemp("lossgain_scores") / "scores")
    summary = score_windows(spark, lossgain_config(windows_table, lm, table), progress=False)
    return {"table": table, "summary": summary}


def test_job_scores_equal_the_scorer_and_select_ranks_them(spark, windows_table, lm, scored,
                                                           tmp_path):
    windows = {r["window_id"]: r for r in rows(spark, windows_table)}
    got = rows(spark, scored["table"])
    summary = scored["summary"]
    assert summary.scored == len(windows) == len(got) and summary.rejected == {}
    torch.set_num_threads(1)
    scorer = LossGainScorer.from_pretrained(lm)
    ids = list(windows)
    expected = dict(zip(ids, scorer.score_windows([windows[w]["input_ids"] for w in ids],
                                                  seq_len=W), strict=True))
    for row in got:
        want = expected[row["window_id"]]
        assert row["method"] == "lossgain" and row["scorer_id"].startswith("lg-")
        assert row["score"] == pytest.approx(want.score, rel=1e-5, abs=1e-7)
        parts = row["lossgain"]
        assert parts["short_context"] == W // 4
        assert parts["key_share"] == want.key_share
        assert parts["full_loss"] == pytest.approx(want.full_loss, rel=1e-5)
        assert parts["short_loss"] == pytest.approx(want.short_loss, rel=1e-5)
        assert parts["short_loss"] - parts["full_loss"] == pytest.approx(row["score"], rel=1e-6,
                                                                         abs=1e-9)
        assert (row["seq_len"], row["min_distance"], row["ds"], row["prolong"]) == (
            W, None, None, None)
        assert (row["device"], row["dtype"]) == ("cpu", "float32")
    assert len({round(r["score"], 9) for r in got}) == len(got)
    record = json.loads(table_properties(spark, TableRef(scored["table"]))[
        f"longattn.scorer.{summary.scorer_id}"])
    assert record["method"] == "lossgain" and record["short_context"] == W // 4
    assert record["seq_len"] == W and record["dtype"] == "float32"

    # a re-run scores nothing
    again = score_windows(spark, lossgain_config(windows_table, lm, scored["table"]),
                          progress=False)
    assert again.scored == 0 and again.already_scored == len(got)

    # select: z(score) per category, the top half kept
    scores = pd.DataFrame(got)
    selection = str(tmp_path / "selection")
    result = select_windows(spark, SelectOptions(keep_fraction=0.5, exact=True),
                            TableRef(windows_table), TableRef(scored["table"]),
                            TableRef(selection), scorer_id=summary.scorer_id)
    sel = pd.DataFrame([r.asDict() for r in TableRef(selection).read(spark)
                        .filter(f"selection_id = '{result.selection_id}'").collect()])
    kept = set()
    for _, part in scores.groupby("category"):
        keep = math.floor(0.5 * len(part) + 1e-9)
        kept |= set(part.sort_values("score", ascending=False).window_id[:keep])
    assert set(sel[sel.selected].window_id) == kept
    merged = sel.merge(scores[["window_id", "score"]], on="window_id")
    z = merged.groupby("category").score.transform(lambda s: (s - s.mean()) / s.std(ddof=1))
    assert np.allclose(merged.lds, z, rtol=1e-9, atol=1e-12), merged[["window_id", "category", "lds", "rank", "score"]].assign(z=z)


def test_non_finite_losses_are_rejects(spark, windows_table, tmp_path, llama3_tokenizer_dir):
    """An embedding row of NaN (untied head): the windows holding that token among their
    first L - 1 ids are ``non_finite_loss`` rejects, the others are scored."""
    windows = rows(spark, windows_table)
    used = [set(r["input_ids"][:W - 1]) for r in windows]
    counts: dict[int, int] = {}
    for ids in used:
        for token in ids:
            counts[token] = counts.get(token, 0) + 1
    token = min((t for t, n in counts.items() if 0 < n < len(windows) // 2),
                key=lambda t: (-counts[t], t))
    hit = {r["window_id"] for r, ids in zip(windows, used, strict=True) if token in ids}
    model = tmp_path / "nan_lm"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=128256, hidden_size=32, num_hidden_layers=1,
                                 intermediate_size=64, num_attention_heads=4,
                                 num_key_value_heads=2, bos_token_id=128000,
                                 tie_word_embeddings=False)).save_pretrained(model)
    tensors = load_file(model / "model.safetensors")
    tensors["model.embed_tokens.weight"][token] = float("nan")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        shutil.copy(llama3_tokenizer_dir / name, model / name)
    table = str(tmp_path / "scores")
    summary = score_windows(spark, lossgain_config(windows_table, model, table), progress=False)
    rejects = rows(spark, table + "_rejects")
    got = rows(spark, table)
    assert {r["window_id"] for r in rejects} == hit
    assert {r["reason"] for r in rejects} == {NON_FINITE_LOSS}
    assert all("non-finite loss" in r["detail"] for r in rejects)
    assert summary.rejected == {NON_FINITE_LOSS: len(hit)}
    assert {r["window_id"] for r in got} == {r["window_id"] for r in windows} - hit
    assert all(np.isfinite(r["score"]) for r in got)


@pytest.mark.parametrize("problem", ["not_causal", "short_context", "negative", "layer"])
def test_bad_input_fails_before_any_spark_job(spark, windows_table, lm, tmp_path, problem):
    model = tmp_path / "model"
    shutil.copytree(lm, model)
    overrides = {}
    if problem == "not_causal":
        config = json.loads((model / "config.json").read_text())
        config.update({"model_type": "bert", "architectures": ["BertModel"]})
        (model / "config.json").write_text(json.dumps(config))
    elif problem == "short_context":
        overrides = {"seq_len": 128, "short_context": 64}
    elif problem == "negative":
        overrides = {"short_context": -3}
    else:
        overrides = {"layer": 2}
    expected = {"not_causal": (InputError, "'bert' is not a causal language model .lossgain"),
                "short_context": (ConfigError, "--short-context 64: must be >= 1 and < L/2 = 64"),
                "negative": (ConfigError, "--option short_context=-3: must be >= 1"),
                "layer": (ConfigError, "--option layer: --method lossgain has no option layer; "
                                       "its options: short_context")}[problem]
    table = tmp_path / "scores"
    errors = []

    def run():
        with pytest.raises(expected[0], match=expected[1]) as info:
            score_windows(spark, lossgain_config(windows_table, model, str(table), **overrides),
                          progress=False)
        errors.append(str(info.value))

    assert spark_jobs_in(spark, run) == []
    assert "\n" not in errors[0]
    assert not table.exists()


def test_short_context_from_the_window_size_fails_before_any_task(spark, windows_table, lm,
                                                                  tmp_path):
    """Without --seq-len, L is the windows' size (read from the table): S >= L/2 fails
    before the scores table is made and before any scoring task."""
    table = tmp_path / "scores"
    tasks = []

    def wrapper(fn):
        tasks.append(fn)
        return fn

    with pytest.raises(ConfigError, match=f"--short-context {W // 2}: must be >= 1 and < "
                                          f"L/2 = {W // 2}") as info:
        score_windows(spark, lossgain_config(windows_table, lm, str(table),
                                             short_context=W // 2),
                      progress=False, udf_wrapper=wrapper)
    assert "\n" not in str(info.value)
    assert tasks == [] and not table.exists()
