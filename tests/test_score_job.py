"""The score job on local Spark with real Delta tables and tiny real models: scores equal the
library scorer's, re-runs score nothing, a killed run resumes without duplicates, two scorers
share one table, bad windows become reject rows, bad models fail before any task."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from longattn_spark.config import IngestConfig, ScoreConfig
from longattn_spark.errors import InputError
from longattn_spark.ingest import ingest
from longattn_spark.model_files import files_needed, locate_model
from longattn_spark.score_job import FaultInjection, oom_message, score_windows
from longattn_spark.scoring import Layer0Scorer, build_model_input
from longattn_spark.smoke_model import write_smoke_test_model
from longattn_spark.tables import WINDOWS, TableRef, ensure_table, table_properties
from longattn_spark.tokenize import load_tokenizer_spec

W = 64
CODE = ["argparse.py", "csv.py", "heapq.py", "textwrap.py"]


def tiny_model(path: Path, seed: int = 0, **overrides) -> Path:
    args = {"vocab_size": 128256, "hidden_size": 32, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 1, "intermediate_size": 64,
            "seed": seed, "dtype": "float32"}
    args.update(overrides)
    return write_smoke_test_model(path, **args)


@pytest.fixture(scope="module")
def windows_table(spark, tmp_path_factory, llama3_tokenizer_dir):
    """A real windows table: four standard-library modules, two categories, several files."""
    import sysconfig

    root = tmp_path_factory.mktemp("score")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = root / "docs.jsonl"
    with source.open("w") as f:
        for i, name in enumerate(CODE):
            text = (stdlib / name).read_text()[:6000]
            f.write(json.dumps({"id": name, "text": text,
                                "category": "code" if i % 2 else "docs"}) + "\n")
    table = str(root / "windows")
    summary = ingest(spark, IngestConfig(input=str(source), tokenizer=str(llama3_tokenizer_dir),
                                         window_size=W, table=table, partitions=4,
                                         commit_chunks=3),
                     load_tokenizer_spec(llama3_tokenizer_dir))
    assert summary.windows > 40
    return table


@pytest.fixture(scope="module")
def model_a(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "a", seed=1)


def score_config(windows: str, model: Path | str, table: str, **overrides) -> ScoreConfig:
    return dataclasses.replace(ScoreConfig(windows=windows, model=str(model), table=table,
                                           device="cpu", files_per_batch=1), **overrides)


def rows(spark, table: str) -> list[dict]:
    return [r.asDict() for r in TableRef(table).read(spark).collect()]


@pytest.fixture(scope="module")
def scored(spark, windows_table, model_a, tmp_path_factory):
    table = str(tmp_path_factory.mktemp("scores") / "scores")
    summary = score_windows(spark, score_config(windows_table, model_a, table), progress=False)
    return {"table": table, "summary": summary}


def test_every_score_equals_the_library_scorers(spark, windows_table, model_a, scored):
    windows = {r["window_id"]: r for r in rows(spark, windows_table)}
    scores = rows(spark, scored["table"])
    assert scored["summary"].scored == len(windows) == len(scores)
    torch.set_num_threads(1)  # as in the job's local tasks
    scorer = Layer0Scorer.from_pretrained(model_a, device="cpu", dtype=torch.float32)
    assert {r["scorer_id"] for r in scores} == {scorer.scorer_id_for(W)}
    for row in scores:
        window = windows[row["window_id"]]
        out = scorer.score(build_model_input(window["input_ids"], bos_id=scorer.bos_id,
                                             seq_len=W))
        assert row["ds"] == out.ds[0]
        assert row["variance"] == out.variance[0]
        assert row["ds_heads"] == list(out.ds_heads[0])
        assert row["var_heads"] == list(out.var_heads[0])
        assert row["category"] == window["category"]
        assert (row["seq_len"], row["min_distance"]) == (W, W // 4)
        assert 0 < row["ds"] < 1 and row["variance"] > 0


def test_second_run_scores_nothing(spark, windows_table, model_a, scored):
    before = TableRef(scored["table"]).version(spark)
    again = score_windows(spark, score_config(windows_table, model_a, scored["table"]),
                          progress=False)
    assert again.scored == 0
    assert again.already_scored == scored["summary"].scored
    assert TableRef(scored["table"]).version(spark) == before


def test_scores_table_documents_itself(spark, scored):
    ref = TableRef(scored["table"])
    comments = {f.name: f.metadata.get("comment", "") for f in ref.read(spark).schema.fields}
    assert "mean over query heads" in comments["ds"]
    assert "unbiased variance" in comments["variance"]
    assert "hash of everything that changes a score" in comments["scorer_id"]
    scorer_id = scored["summary"].scorer_id
    recorded = json.loads(table_properties(spark, ref)[f"longattn.scorer.{scorer_id}"])
    assert recorded["seq_len"] == W and recorded["min_distance"] == W // 4
    assert recorded["model_type"] == "llama" and recorded["dtype"] == "float32"


def test_killed_run_resumes_with_exactly_one_row_per_window(spark, windows_table, model_a,
                                                            tmp_path):
    table = str(tmp_path / "scores")
    cfg = score_config(windows_table, model_a, table)
    with pytest.raises(Exception, match="injected fault"):
        score_windows(spark, cfg, fault=FaultInjection(from_micro_batch=2), progress=False)
    committed = TableRef(table).read(spark).count()
    total = TableRef(windows_table).read(spark).count()
    assert 0 < committed < total  # it died half way, after some commits
    resumed = score_windows(spark, cfg, progress=False)
    assert resumed.scored == total - committed  # committed windows were not re-scored
    keys = [(r["window_id"], r["scorer_id"]) for r in rows(spark, table)]
    assert len(keys) == len(set(keys)) == total


def test_two_scorers_write_one_table_at_the_same_time(spark, windows_table, model_a, tmp_path):
    model_b = tiny_model(tmp_path / "b", seed=2)
    table = str(tmp_path / "scores")
    results, errors = {}, []

    def run(name, model):
        try:
            results[name] = score_windows(spark, score_config(windows_table, model, table),
                                          progress=False)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, m)) for n, m in
               (("a", model_a), ("b", model_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    total = TableRef(windows_table).read(spark).count()
    assert results["a"].scorer_id != results["b"].scorer_id
    by_scorer: dict[str, int] = {}
    for row in rows(spark, table):
        by_scorer[row["scorer_id"]] = by_scorer.get(row["scorer_id"], 0) + 1
    assert by_scorer == {results["a"].scorer_id: total, results["b"].scorer_id: total}
    properties = table_properties(spark, TableRef(table))
    assert {f"longattn.scorer.{r.scorer_id}" for r in results.values()} <= set(properties)


def test_bad_windows_become_rejects_and_the_job_goes_on(spark, tmp_path):
    model = tiny_model(tmp_path / "small-vocab", vocab_size=1000)
    windows = str(tmp_path / "windows")
    ensure_table(spark, TableRef(windows), WINDOWS)
    good = list(range(1, W + 1))
    data = [("w-good", good, W), ("w-short", good[:10], W), ("w-vocab", good[:-1] + [5000], W),
            ("w-negative", [-3] + good[1:], W), ("w-mislabelled", good, W + 1)]
    frame = spark.createDataFrame(
        [(wid, "doc", "code", 0, 0, n, ids, 0, 10, "t", None) for wid, ids, n in data],
        WINDOWS.schema)
    frame.write.format("delta").mode("append").save(windows)
    table = str(tmp_path / "scores")
    summary = score_windows(spark, score_config(windows, model, table, seq_len=W),
                            progress=False)
    assert summary.scored == 1
    assert summary.rejected == {"wrong_length": 2, "ids_out_of_vocab": 2}
    rejects = {r["window_id"]: r for r in rows(spark, table + "_rejects")}
    assert rejects["w-vocab"]["reason"] == "ids_out_of_vocab"
    assert "5000" in rejects["w-vocab"]["detail"]
    assert rejects["w-short"]["reason"] == "wrong_length"
    assert [r["window_id"] for r in rows(spark, table)] == ["w-good"]
    again = score_windows(spark, score_config(windows, model, table, seq_len=W), progress=False)
    assert again.scored == 0 and again.rejected == {}


@pytest.mark.parametrize("problem", ["missing", "pickle", "architecture"])
def test_bad_model_fails_before_any_task(spark, windows_table, model_a, tmp_path, problem):
    model = tmp_path / "model"
    if problem == "pickle":
        shutil.copytree(model_a, model)
        weights = (model / "model.safetensors")
        torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, model / "pytorch_model.bin")
        weights.unlink()
    elif problem == "architecture":
        shutil.copytree(model_a, model)
        config = json.loads((model / "config.json").read_text())
        config["model_type"] = "gpt2"
        (model / "config.json").write_text(json.dumps(config))
    table = tmp_path / "scores"
    expected = {"missing": "no such folder", "pickle": r"\.bin", "architecture": "gpt2"}
    with pytest.raises(InputError, match=expected[problem]):
        score_windows(spark, score_config(windows_table, model, str(table)), progress=False)
    assert not table.exists()


def test_remote_model_is_staged_with_only_the_layer0_files(spark, windows_table, tmp_path,
                                                           scored, model_a):
    sharded = tmp_path / "sharded"
    shutil.copytree(model_a, sharded)
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(model_a)
    (sharded / "model.safetensors").unlink()
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="5KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    needed = files_needed(sorted(p.name for p in sharded.iterdir()), index)
    assert len([n for n in needed if n.endswith(".safetensors")]) < len(shards)

    location = locate_model(spark, f"file://{sharded}")
    staged = sorted(p.name for p in Path(location.local_dir).iterdir())
    assert staged == sorted(needed)
    table = str(tmp_path / "scores")
    summary = score_windows(spark, score_config(windows_table, f"file://{sharded}", table),
                            progress=False)
    assert summary.scorer_id == scored["summary"].scorer_id  # same weights, same scorer
    local = {r["window_id"]: r["ds"] for r in rows(spark, scored["table"])}
    remote = {r["window_id"]: r["ds"] for r in rows(spark, table)}
    assert remote == local


def test_out_of_memory_message_names_batch_size_and_seq_len():
    message = oom_message(8, 32768, "cuda:0", torch.cuda.OutOfMemoryError("tried 80 GiB"))
    assert "--batch-size 8" in message and "--seq-len 32768" in message
    assert "cuda:0" in message


@pytest.mark.gpu
def test_cuda_out_of_memory_is_reported_with_the_settings(spark, windows_table, model_a,
                                                          tmp_path):
    cfg = score_config(windows_table, model_a, str(tmp_path / "scores"), device="cuda",
                       seq_len=2**22, batch_size=64)
    with pytest.raises(Exception, match="--batch-size 64"):
        score_windows(spark, cfg, progress=False)


def test_model_input_matrix_without_python_loops():
    import pyarrow as pa

    from longattn_spark.score_job import model_input_matrix

    ids = pa.array([[5, 6, 7, 8], [1, 2], [9, 10, 11, 12, 13]], pa.list_(pa.int32()))
    matrix, ok = model_input_matrix(ids, seq_len=4, bos_id=0)
    assert ok.tolist() == [True, False, True]
    np.testing.assert_array_equal(matrix, [[0, 5, 6, 7], [0, 9, 10, 11]])
