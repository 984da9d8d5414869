"""Getting the model to the executors from shared storage (``longattn_spark.weights``, and
LongAttn's files of its layers: ``scorers.longattn.locate``).

- the pure parts: which files scoring needs, the cache key;
- the driver reads small files and headers only, and still gets the same scorer_id as a
  scorer that loads the weights (local reads, and Hadoop reads through the driver's JVM);
- one-line errors naming the path and its filesystem;
- the executor fetch, through Hadoop's FsShell on a ``file:`` URI: only the needed files, once
  (also with two workers at the same time), and again after a file changes.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch

from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.errors import InputError
from longattn_spark.paths import hadoop_settings
from longattn_spark.scorers.longattn import Layer0Scorer
from longattn_spark.scorers.longattn.checkpoint import describe_layer0_checkpoint
from longattn_spark.scorers.longattn.locate import describe_model, files_needed, locate_layers
from longattn_spark.weights import location as model_location
from longattn_spark.weights.location import ModelFile, cache_key, fetch_model
from longattn_spark.weights.reader import ModelReader


def tiny(path: Path, **overrides) -> Path:
    args = {"vocab_size": 1000, "hidden_size": 32, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 64,
            "seed": 3, "dtype": "float32"}
    args.update(overrides)
    return write_smoke_test_model(path, **args)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """A model saved in many small shards: layer 0's tensors are in only some of them."""
    from transformers import LlamaForCausalLM

    plain = tiny(tmp_path_factory.mktemp("plain") / "m")
    folder = tmp_path_factory.mktemp("sharded") / "m"
    LlamaForCausalLM.from_pretrained(plain).save_pretrained(
        folder, safe_serialization=True, max_shard_size="20KB")
    return folder


def shard_names(folder: Path) -> list[str]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


def test_files_needed_are_the_configs_the_index_and_the_layer0_shards(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    names = sorted(p.name for p in sharded.iterdir())
    needed = files_needed(names, index)
    layer0 = {file for tensor, file in index["weight_map"].items()
              if tensor.startswith(("model.embed_tokens.", "model.layers.0.input_layernorm",
                                    "model.layers.0.self_attn.q_proj",
                                    "model.layers.0.self_attn.k_proj"))}
    assert needed == ["config.json", "generation_config.json", "model.safetensors.index.json",
                      *sorted(layer0)]
    assert len(layer0) < len(shard_names(sharded))  # the other shards stay where they are
    assert files_needed(["config.json", "model.safetensors", "README.md"], None) == \
        ["config.json", "model.safetensors"]


def test_cache_key_is_path_size_and_mtime_of_every_file():
    files = [ModelFile("config.json", "hdfs://nn/m/config.json", 10, 1000),
             ModelFile("model.safetensors", "hdfs://nn/m/model.safetensors", 99, 2000)]
    key = cache_key(files)
    assert key == cache_key(list(reversed(files)))  # order does not matter
    for changed in (ModelFile("model.safetensors", "hdfs://nn/m/model.safetensors", 98, 2000),
                    ModelFile("model.safetensors", "hdfs://nn/m/model.safetensors", 99, 2001),
                    ModelFile("model.safetensors", "hdfs://nn/x/model.safetensors", 99, 2000)):
        assert cache_key([files[0], changed]) != key


def test_local_folders_are_read_in_place_and_uris_are_fetched(sharded):
    local = locate_layers(None, str(sharded))
    assert local.in_place and local.folder == str(sharded)
    assert local.executor_path() == str(sharded)
    remote = locate_layers(None, f"file://{sharded}")
    assert not remote.in_place
    assert [f.name for f in remote.files] == files_needed(
        sorted(p.name for p in sharded.iterdir()),
        json.loads((sharded / "model.safetensors.index.json").read_text()))
    assert all(f.path.startswith("file:/") for f in remote.files)
    assert dict(remote.hadoop_settings)["fs.defaultFS"] == "file:///"


def test_fetch_settings_carry_the_drivers_hadoop_configuration(spark):
    settings = dict(hadoop_settings(spark))
    assert settings["fs.defaultFS"] == spark._jsc.hadoopConfiguration().get("fs.defaultFS")
    hadoop_keys = [k for k, _ in spark.sparkContext.getConf().getAll()
                   if k.startswith("spark.hadoop.")]
    assert hadoop_keys  # the test session sets its metastore URL this way
    for key in hadoop_keys:
        assert settings[key[len("spark.hadoop."):]] == spark.sparkContext.getConf().get(key)


@pytest.mark.parametrize("layout", ["single-bf16", "sharded", "qwen2-bias"])
def test_driver_description_gives_the_scorer_id_of_the_loaded_weights(tmp_path, sharded, layout):
    if layout == "single-bf16":
        folder = tiny(tmp_path / "m", dtype="bfloat16")
    elif layout == "sharded":
        folder = sharded
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=300, hidden_size=32, num_attention_heads=4,
                             num_key_value_heads=2, num_hidden_layers=1, intermediate_size=64,
                             bos_token_id=1)
        folder = tmp_path / "q"
        Qwen2ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    loaded = Layer0Scorer.from_pretrained(folder)
    checkpoint = describe_model(None, locate_layers(None, str(folder)))
    assert checkpoint.described_only  # shapes only: no weights were loaded
    described = Layer0Scorer.describing(checkpoint, dtype="float32")
    assert described.scorer_id_for(64) == loaded.scorer_id_for(64)
    assert described.scorer_id == loaded.scorer_id
    assert (described.bos_id, described.vocab_size) == (loaded.bos_id, loaded.vocab_size)
    summary, expected = described.config_summary(), loaded.config_summary()
    assert {k: v for k, v in summary.items() if k != "device"} == \
        {k: v for k, v in expected.items() if k != "device"}
    with pytest.raises(InputError, match="only describes"):
        described.score(torch.zeros(1, 16, dtype=torch.long))


def test_hadoop_reads_through_the_driver_jvm_give_the_same_fingerprint(spark, sharded):
    """The remote path of the driver: header ranges and the streamed hash in the JVM."""
    location = locate_layers(spark, f"file://{sharded}")
    reader = ModelReader(spark, location)
    reader._local = False  # read file: through Hadoop's LocalFileSystem, as hdfs:// would be
    checkpoint = describe_layer0_checkpoint(location.folder, reader)
    loaded = Layer0Scorer.from_pretrained(sharded)
    assert checkpoint.fingerprint() == loaded.checkpoint.fingerprint()


def test_bad_model_folders_fail_in_one_line_naming_path_and_filesystem(tmp_path, sharded):
    with pytest.raises(InputError, match=r"--model .*nowhere \(on the local disk\): no such "
                                         r"folder"):
        locate_layers(None, str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(on the local disk\): no config.json") as info:
        locate_layers(None, f"file://{empty}")
    assert "\n" not in str(info.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.safetensors.index.json"):
        (broken / name).write_bytes((sharded / name).read_bytes())
    with pytest.raises(InputError, match="listed in the checkpoint index but missing"):
        locate_layers(None, str(broken))


def test_executor_fetch_copies_only_the_needed_files_once_per_version(tmp_path, sharded,
                                                                      monkeypatch):
    copies: list[list[str]] = []
    real_copy = model_location._copy_to_local

    def counting_copy(location, target):
        copies.append([f.name for f in location.files])
        real_copy(location, target)

    monkeypatch.setattr(model_location, "_copy_to_local", counting_copy)
    cache = tmp_path / "cache"
    location = locate_layers(None, f"file://{sharded}")
    needed = [f.name for f in location.files]

    # Two Python workers of one executor asking at the same time: one copy.
    results: list[str] = []
    workers = [threading.Thread(target=lambda: results.append(fetch_model(location, cache)))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(copies) == 1 and len(set(results)) == 1
    folder = Path(results[0])
    assert sorted(p.name for p in folder.iterdir()) == sorted(needed)
    for name in needed:
        assert (folder / name).read_bytes() == (sharded / name).read_bytes()
    assert not [p for p in cache.iterdir() if ".partial" in p.name]
    loaded = Layer0Scorer.from_pretrained(folder)
    assert loaded.scorer_id == Layer0Scorer.from_pretrained(sharded).scorer_id

    # Unchanged: no copy at all (the same folder, nothing re-read).
    assert fetch_model(locate_layers(None, f"file://{sharded}"), cache) == str(folder)
    assert len(copies) == 1

    # A shard scoring does not read changes: still nothing to fetch.
    unused = sorted(set(shard_names(sharded)) - set(needed))[0]
    os.utime(sharded / unused, ns=(1, 1))
    assert fetch_model(locate_layers(None, f"file://{sharded}"), cache) == str(folder)
    assert len(copies) == 1

    # A needed file touched (a new mtime): a new version, fetched again.
    touched = [n for n in needed if n.endswith(".safetensors")][0]
    stat = (sharded / touched).stat()
    os.utime(sharded / touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    updated = locate_layers(None, f"file://{sharded}")
    assert updated.key != location.key
    again = fetch_model(updated, cache)
    assert again != str(folder) and len(copies) == 2
    assert sorted(p.name for p in Path(again).iterdir()) == sorted(needed)
