"""Windows longer than the model's trained context are never scored silently: the score run's
summary, the scorer's record (``longattn.scorer.<scorer_id>``) and the report say the model
was trained to N positions and L extrapolates, naming --rope-theta. Real Spark (local, Delta),
real tiny models whose max_position_embeddings is below the window length; one that is not
gets no such note. Also the one line a model too large for the GPU gets."""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path

import pytest
import torch

from longattn_spark.config import ReportConfig, ScoreConfig
from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.scorers.executor import oom_message
from longattn_spark.scorers.positions import extrapolation_note, trained_positions
from longattn_spark.tables.refs import TableRef, table_properties

from helpers import ingest_stdlib_modules

W = 64
TRAINED = 32


def test_note_by_hand():
    assert extrapolation_note(32, 32) is None and extrapolation_note(None, 64) is None
    note = extrapolation_note(32, 64)
    assert note.startswith("the model was trained to 32 positions (max_position_embeddings) "
                           "and L = 64 extrapolates beyond them")
    assert "--rope-theta" in note and "which --method longattn takes" not in note
    assert "which --method longattn takes" in extrapolation_note(32, 64, method="lossgain")
    assert "scored with --rope-theta 2e+06" in extrapolation_note(32, 64, rope_theta=2e6)
    assert trained_positions({"max_position_embeddings": 8192}) == 8192
    assert trained_positions({"model_config": {"n_positions": 1024}}) == 1024
    assert trained_positions({"vocab_size": 5}) is None and trained_positions(None) is None


def test_model_too_large_for_the_gpu_is_one_line_naming_batch_size():
    error = torch.cuda.OutOfMemoryError("Tried to allocate 90.00 GiB")
    loading = oom_message(8, 32768, "cuda:0", error, "longattn", loading=True)
    scoring = oom_message(8, 32768, "cuda:0", error, "longattn")
    for line in (loading, scoring):
        assert "\n" not in line and "--batch-size 8" in line and "cuda:0" in line
    assert "loading the model" in loading and "does not fit" in loading
    assert "lower --batch-size (or --seq-len)" in scoring


@pytest.fixture(scope="module")
def windows_table(spark, tmp_path_factory, llama3_tokenizer_dir) -> str:
    table, summary = ingest_stdlib_modules(
        spark, tmp_path_factory.mktemp("positions"), llama3_tokenizer_dir,
        ("textwrap.py", "heapq.py"), window_size=W, chars=3000)
    assert summary.windows >= 4
    return table


def tiny(path: Path, max_positions: int) -> Path:
    return write_smoke_test_model(path, vocab_size=128256, hidden_size=32,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  num_hidden_layers=1, intermediate_size=64,
                                  max_position_embeddings=max_positions, rope_scaling=None,
                                  dtype="float32")


def score(spark, windows: str, model: Path, table: str, **overrides):
    from longattn_spark.score.job import score_windows
    from longattn_spark.score.summary import print_summary

    cfg = dataclasses.replace(ScoreConfig(windows=windows, model=str(model), table=table,
                                          device="cpu", files_per_batch=4), **overrides)
    summary = score_windows(spark, cfg, progress=False)
    print_summary(summary, cfg)
    record = json.loads(table_properties(spark, TableRef(table))[
        f"longattn.scorer.{summary.scorer_id}"])
    return summary, record


def test_scored_past_the_trained_context_is_said_everywhere(spark, windows_table, tmp_path,
                                                           capsys):
    from longattn_spark.report.job import build_report

    short = tiny(tmp_path / "short", TRAINED)
    scores = str(tmp_path / "scores")
    summary, record = score(spark, windows_table, short, scores)
    printed = capsys.readouterr().out
    expected = (f"the model was trained to {TRAINED} positions (max_position_embeddings) and "
                f"L = {W} extrapolates beyond them")
    assert summary.scored >= 4 and summary.position_note.startswith(expected)
    assert f"warning: {expected}" in printed            # at once, before scoring
    assert f"WARNING: {expected}" in printed            # and in the run's summary
    assert "--rope-theta" in printed
    assert record["trained_positions"] == TRAINED
    assert record["positions_note"].startswith(expected)

    page = html.unescape(Path(build_report(spark, ReportConfig(
        windows=windows_table, scores=scores, selection=str(tmp_path / "no-selection"),
        output=str(tmp_path / "report.html"), scorer_id=summary.scorer_id,
        device="cpu"))).read_text())
    assert f'<p class="note warn">Scored past the model\'s trained context: {expected}' in page
    assert "--rope-theta" in page

    # the same windows with loss gain (the whole model): its record and summary say it too
    summary, record = score(spark, windows_table, short, scores, method="lossgain")
    assert summary.position_note.startswith(expected)
    assert "which --method longattn takes" in record["positions_note"]


def test_within_the_trained_context_no_note(spark, windows_table, tmp_path, capsys):
    long_enough = tiny(tmp_path / "long", W)
    summary, record = score(spark, windows_table, long_enough, str(tmp_path / "scores"))
    assert summary.scored >= 4 and summary.position_note == ""
    assert record["trained_positions"] == W and record["positions_note"] is None
    assert "extrapolates" not in capsys.readouterr().out
