"""The score job on local Spark with real Delta tables and tiny real models: scores equal the
library scorer's, re-runs score nothing, a killed run resumes without duplicates, two scorers
share one table, bad windows become reject rows, bad models fail before any Spark job, a model
at a URI is fetched by the executors, table names need --checkpoint-location, the model's
tokenizer is checked against the windows', and what the executors ran is counted and
recorded from the executors."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from longattn_spark.config import IngestConfig, ScoreConfig
from longattn_spark.errors import ConfigError, InputError
from longattn_spark.ingest import ingest
from longattn_spark.score.job import score_windows
from longattn_spark.scorers.executor import oom_message, task_device
from longattn_spark.scorers.longattn import Layer0Scorer, build_model_input
from longattn_spark.scorers.longattn.locate import files_needed, locate_layers
from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.tables.refs import TableRef, table_properties
from longattn_spark.tables.schemas import WINDOWS
from longattn_spark.tables.writes import ensure_table
from longattn_spark.tokenizer import load_tokenizer_spec

from helpers import spark_jobs_in, with_options

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
    return with_options(ScoreConfig(windows=windows, model=str(model), table=table,
                                    device="cpu", files_per_batch=1), **overrides)


def rows(spark, table: str) -> list[dict]:
    return [r.asDict() for r in TableRef(table).read(spark).collect()]


def fail_from_micro_batch(first: int, message: str = "injected fault"):
    """A ``udf_wrapper``: from the ``first``-th micro-batch on (0-based), the scoring task
    raises on its first attempt (a retried attempt would succeed)."""
    calls = itertools.count()

    def wrap(fn):
        if next(calls) < first:
            return fn

        def run(batches):
            from pyspark import TaskContext

            context = TaskContext.get()
            if context is None or context.attemptNumber() == 0:
                raise RuntimeError(message)
            yield from fn(batches)

        return run

    return wrap


def with_triton_unavailable(note: str):
    """A ``udf_wrapper`` that makes the executors' Triton kernel unavailable while they build
    the scorer (as on a GPU whose triton install is broken): kernel "auto" falls back."""

    def wrap(fn):
        def run(batches):
            from longattn_spark.scorers.longattn import scorer

            real = scorer.resolve_triton_kernel
            scorer.resolve_triton_kernel = lambda kernel, device: (None, note)
            try:
                yield from fn(batches)
            finally:
                scorer.resolve_triton_kernel = real

        return run

    return wrap


@pytest.fixture(scope="module")
def llama3_identity(llama3_tokenizer_dir) -> str:
    return load_tokenizer_spec(llama3_tokenizer_dir).identity


def with_tokenizer(model: Path, target: Path, tokenizer_json: str) -> Path:
    shutil.copytree(model, target)
    (target / "tokenizer.json").write_text(tokenizer_json)
    return target


def derived_tokenizer_json(llama3_tokenizer_dir: Path) -> str:
    """The Llama-3 tokenizer with an NFC normalizer: another tokenizer (other ids for some
    texts), so another identity."""
    data = json.loads((llama3_tokenizer_dir / "tokenizer.json").read_text())
    data["normalizer"] = {"type": "NFC"}
    return json.dumps(data)


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


def test_scores_table_documents_itself(spark, scored, llama3_identity):
    ref = TableRef(scored["table"])
    comments = {f.name: f.metadata.get("comment", "") for f in ref.read(spark).schema.fields}
    assert "mean over query heads" in comments["ds"]
    assert "unbiased variance" in comments["variance"]
    assert "hash of everything that changes a score" in comments["scorer_id"]
    scorer_id = scored["summary"].scorer_id
    recorded = json.loads(table_properties(spark, ref)[f"longattn.scorer.{scorer_id}"])
    assert recorded["seq_len"] == W and recorded["min_distance"] == W // 4
    assert recorded["model_type"] == "llama" and recorded["dtype"] == "float32"
    # What the executors ran (kernel "auto" on the CPU: torch, no fallback), from them.
    assert recorded["requested"] == {"device": "cpu", "dtype": "auto"}
    assert recorded["options"] == {"layer": 0, "rope_theta": 0.0, "kernel": "auto"}
    assert recorded["components"] == ["ds", "variance"]
    assert recorded["executors"] == [{"device": "cpu", "kernel": "torch", "dtype": "float32",
                                      "kernel_note": None}]
    assert scored["summary"].ran == {"cpu/torch/float32": scored["summary"].scored}
    assert scored["summary"].kernel_fallbacks == 0
    # The smoke-test model has no tokenizer: the windows' tokenizer is recorded instead.
    assert recorded["tokenizer"] == {"model": None, "windows": [llama3_identity],
                                     "check": "model_has_no_tokenizer"}
    assert scored["summary"].tokenizer_check.startswith("not checked")


def test_killed_run_resumes_with_exactly_one_row_per_window(spark, windows_table, model_a,
                                                            tmp_path):
    table = str(tmp_path / "scores")
    cfg = score_config(windows_table, model_a, table)
    with pytest.raises(Exception, match="injected fault"):
        score_windows(spark, cfg, progress=False, udf_wrapper=fail_from_micro_batch(2))
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
        [{**dict.fromkeys(WINDOWS.column_names), "window_id": wid, "doc_id": "doc",
          "category": "code", "window_index": 0, "token_start": 0, "n_tokens": n,
          "input_ids": ids, "char_start": 0, "char_end": 10, "tokenizer": "t"}
         for wid, ids, n in data], WINDOWS.schema)
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


@pytest.mark.parametrize("problem", ["missing", "no_config", "pickle", "architecture"])
def test_bad_model_fails_before_any_spark_job(spark, windows_table, model_a, tmp_path, problem):
    model = tmp_path / "model"
    if problem == "no_config":
        shutil.copytree(model_a, model)
        (model / "config.json").unlink()
    elif problem == "pickle":
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
    expected = {"missing": r"--model .*model \(on the local disk\): no such folder",
                "no_config": r"--model .*model \(on the local disk\): no config\.json",
                "pickle": r"\.bin", "architecture": "gpt2"}
    errors = []

    def run():
        with pytest.raises(InputError, match=expected[problem]) as info:
            score_windows(spark, score_config(windows_table, model, str(table)), progress=False)
        errors.append(str(info.value))

    assert spark_jobs_in(spark, run) == []  # checked before the windows table is even read
    assert "\n" not in errors[0]
    assert not table.exists()


def test_model_at_a_uri_is_fetched_by_the_executors(spark, windows_table, tmp_path, scored,
                                                    model_a):
    """A ``file:`` URI goes the way of hdfs:// or s3a://: the driver reads config and headers,
    the executors fetch only the layer-0 files (Hadoop's FsShell) into their cache."""
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

    table = str(tmp_path / "scores")
    summary = score_windows(spark, score_config(windows_table, f"file://{sharded}", table,
                                                files_per_batch=100), progress=False)
    assert summary.scorer_id == scored["summary"].scorer_id  # same weights, same scorer
    local = {r["window_id"]: r["ds"] for r in rows(spark, scored["table"])}
    remote = {r["window_id"]: r["ds"] for r in rows(spark, table)}
    assert remote == local
    # In the executors' cache (under their SPARK_LOCAL_DIRS): the needed files only.
    key = locate_layers(spark, f"file://{sharded}").key
    local_dirs = spark.sparkContext.parallelize([0], 1).map(
        lambda _: __import__("os").environ.get("SPARK_LOCAL_DIRS", "")).collect()[0]
    cached = [Path(d) / "longattn-model-cache" / key[:32] for d in local_dirs.split(",")]
    cached = [c for c in cached if c.is_dir()]
    assert len(cached) == 1
    assert sorted(p.name for p in cached[0].iterdir()) == sorted(needed)


def test_table_name_needs_a_checkpoint_location(spark, windows_table, model_a):
    cfg = score_config(windows_table, model_a, "score_names.no_location")
    errors = []

    def run():
        with pytest.raises(ConfigError, match=r"--table score_names\.no_location .*"
                                              r"--checkpoint-location") as info:
            score_windows(spark, cfg, progress=False)
        errors.append(str(info.value))

    assert spark_jobs_in(spark, run) == []
    assert "\n" not in errors[0]
    assert not spark.catalog.tableExists("score_names.no_location")


def test_tokenizer_mismatch_fails_before_any_task_naming_both(spark, windows_table, model_a,
                                                             tmp_path, llama3_tokenizer_dir,
                                                             llama3_identity):
    other = with_tokenizer(model_a, tmp_path / "other-tok",
                           derived_tokenizer_json(llama3_tokenizer_dir))
    other_identity = load_tokenizer_spec(other).identity
    assert other_identity != llama3_identity
    table = tmp_path / "scores"
    with pytest.raises(InputError, match=f"{other_identity}.*{llama3_identity}.*"
                                         f"--allow-tokenizer-mismatch") as info:
        score_windows(spark, score_config(windows_table, other, str(table)), progress=False)
    assert "\n" not in str(info.value)
    assert not table.exists()  # nothing was scored


def test_table_names_with_checkpoint_location_and_an_allowed_mismatch(
        spark, windows_table, model_a, tmp_path, llama3_tokenizer_dir, llama3_identity, capsys):
    """Windows and scores given as metastore names: the stream's checkpoint goes under
    --checkpoint-location; the tokenizer check reads the named windows table too."""
    spark.sql("CREATE SCHEMA IF NOT EXISTS score_names")
    spark.sql(f"CREATE TABLE IF NOT EXISTS score_names.windows USING delta "
              f"LOCATION '{windows_table}'")
    other = with_tokenizer(model_a, tmp_path / "other-tok",
                           derived_tokenizer_json(llama3_tokenizer_dir))
    other_identity = load_tokenizer_spec(other).identity
    location = tmp_path / "checkpoints"
    cfg = score_config("score_names.windows", other, "score_names.scores",
                       checkpoint_location=str(location), files_per_batch=100,
                       kernel="torch", dtype="bfloat16")
    with pytest.raises(InputError, match=f"{other_identity}.*{llama3_identity}"):
        score_windows(spark, cfg, progress=False)
    assert not spark.catalog.tableExists("score_names.scores")

    summary = score_windows(spark, dataclasses.replace(cfg, allow_tokenizer_mismatch=True),
                            progress=False)
    assert "allow-tokenizer-mismatch" in capsys.readouterr().out
    total = TableRef(windows_table).read(spark).count()
    assert summary.scored == total
    assert summary.tokenizer_check == (f"MISMATCH allowed: model {other_identity}, windows "
                                       f"{llama3_identity}")
    assert summary.ran == {"cpu/torch/bfloat16": total}
    assert [p.name.rsplit("-", 1)[0] for p in location.iterdir()] == \
        [summary.scorer_id]  # <scorer_id>-<source hash>
    assert (next(location.iterdir()) / "commits").is_dir()
    recorded = json.loads(table_properties(spark, TableRef("score_names.scores"))[
        f"longattn.scorer.{summary.scorer_id}"])
    assert recorded["tokenizer"] == {"model": other_identity, "windows": [llama3_identity],
                                     "check": "mismatch_allowed"}
    assert recorded["executors"] == [{"device": "cpu", "kernel": "torch", "dtype": "bfloat16",
                                      "kernel_note": None}]
    assert TableRef("score_names.scores").read(spark).count() == total


def test_kernel_fallback_is_counted_printed_and_recorded_from_the_executors(
        spark, windows_table, model_a, tmp_path, llama3_tokenizer_dir, llama3_identity, capsys):
    """The executors' Triton kernel is unavailable (simulated inside the Python workers only):
    the driver's own view (no scoring, no fallback) must not be what gets recorded."""
    same = with_tokenizer(model_a, tmp_path / "same-tok",
                          (llama3_tokenizer_dir / "tokenizer.json").read_text())
    note = "triton cannot run on this machine; torch kernel used"
    table = str(tmp_path / "scores")
    summary = score_windows(spark, score_config(windows_table, same, table, kernel="auto",
                                                files_per_batch=100),
                            progress=False, udf_wrapper=with_triton_unavailable(note))
    total = TableRef(windows_table).read(spark).count()
    assert summary.scored == total
    assert summary.kernel_fallbacks == total and summary.fallback_notes == [note]
    assert f"kernel fallback on the executors (micro-batch 0, {total} windows): {note}" in \
        capsys.readouterr().out
    assert summary.tokenizer_check == f"{llama3_identity} (model = windows)"
    recorded = json.loads(table_properties(spark, TableRef(table))[
        f"longattn.scorer.{summary.scorer_id}"])
    assert recorded["executors"] == [{"device": "cpu", "kernel": "torch", "dtype": "float32",
                                      "kernel_note": note}]
    assert recorded["tokenizer"]["check"] == "match"
    assert recorded["options"]["kernel"] == "auto"


class _FakeGpus:
    def __init__(self, addresses):
        self.addresses = addresses


class _FakeTaskContext:
    def __init__(self, gpus):
        self._gpus = gpus

    def resources(self):
        return {"gpu": _FakeGpus(self._gpus)} if self._gpus else {}


def test_a_task_given_a_gpu_without_cuda_fails_instead_of_using_the_cpu(monkeypatch):
    import pyspark

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: _FakeTaskContext(["0"])))
    for requested in ("auto", "cuda"):
        with pytest.raises(RuntimeError, match=r"Spark gave this task GPU 0, but torch finds no "
                                               r"usable CUDA device 0 .*does not fall back"):
            task_device(requested, dtype_for_gpu=True, dtype="bfloat16")
    assert task_device("cpu") == "cpu"  # asked for: the GPU label is left alone
    # No GPU from Spark and no CUDA, with a dtype chosen for GPUs: no silent CPU run either.
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: _FakeTaskContext([])))
    with pytest.raises(RuntimeError, match="chose bfloat16 because the executors have GPUs"):
        task_device("auto", dtype_for_gpu=True, dtype="bfloat16")
    assert task_device("auto") == "cpu"


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

    from longattn_spark.scorers.batch import model_input_matrix

    ids = pa.array([[5, 6, 7, 8], [1, 2], [9, 10, 11, 12, 13]], pa.list_(pa.int32()))
    matrix, ok = model_input_matrix(ids, seq_len=4, bos_id=0)
    assert ok.tolist() == [True, False, True]
    np.testing.assert_array_equal(matrix, [[0, 5, 6, 7], [0, 9, 10, 11]])
