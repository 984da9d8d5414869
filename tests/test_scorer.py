"""Layer0Scorer against transformers' own layer-0 attention, and the loader's contract."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from longattn_spark.errors import InputError
from longattn_spark.scorers.longattn import (
    Layer0Scorer,
    build_model_input,
    load_layer0_checkpoint,
)
from longattn_spark.demo.smoke_model import write_smoke_test_model

REL_TOL = 1e-4
VOCAB = 211
SMALL = {"vocab_size": VOCAB, "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96,
         "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2,
         "attn_implementation": "eager"}
LLAMA3_SMALL_ROPE = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
LAYER0_NAMES = {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.k_proj.weight"}


def tiny_model(kind: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random tiny model whose layer-0 attention is far from flat (q/k weights and, for
    Qwen2, q/k biases drawn large)."""
    if kind == "llama":
        config = LlamaConfig(**{**SMALL, "rope_theta": 10000.0,
                                "rope_scaling": dict(LLAMA3_SMALL_ROPE), **overrides})
        model_class = LlamaForCausalLM
    elif kind == "mistral":
        config = MistralConfig(**{**SMALL, "sliding_window": None, **overrides})
        model_class = MistralForCausalLM
    else:
        config = Qwen2Config(**{**SMALL, **overrides})
        model_class = Qwen2ForCausalLM
    torch.manual_seed(seed)
    model = model_class(config).eval()
    attention = model.model.layers[0].self_attn
    with torch.no_grad():
        for projection in (attention.q_proj, attention.k_proj):
            projection.weight.normal_(0.0, 0.25)
            if projection.bias is not None:
                projection.bias.normal_(0.0, 1.0)
        model.model.layers[0].input_layernorm.weight.uniform_(0.5, 1.5)
    return model


def save(model: torch.nn.Module, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, **kwargs)
    return folder


def random_ids(batch: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    windows = torch.randint(3, VOCAB, (batch, seq_len + 5), generator=generator)
    return build_model_input(windows, bos_id=1, seq_len=seq_len)


def reference_scores(model: torch.nn.Module, ids: torch.Tensor,
                     min_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-head DS and variance from the model's own layer-0 attention probabilities."""
    with torch.no_grad():
        probs = model(ids, output_attentions=True).attentions[0].double()
    seq_len = ids.shape[1]
    n = torch.arange(seq_len).unsqueeze(1)
    j = torch.arange(seq_len).unsqueeze(0)
    masked = torch.where(j <= n - min_distance, probs, torch.zeros_like(probs))
    ds = masked.sum(dim=(-1, -2)) / seq_len
    var = masked.flatten(-2).var(dim=-1, unbiased=True)
    return ds.numpy(), var.numpy()


def assert_rel_close(actual: np.ndarray, expected: np.ndarray, tol: float = REL_TOL) -> None:
    worst = float(np.max(np.abs(actual - expected) / np.abs(expected)))
    assert worst <= tol, f"max relative error {worst:.3g} > {tol:g}"


def assert_matches_reference(scorer: Layer0Scorer, model: torch.nn.Module,
                             ids: torch.Tensor, min_distance: int) -> None:
    out = scorer.score(ids)
    ds_ref, var_ref = reference_scores(model, ids, min_distance)
    assert out.ds_heads.shape == ds_ref.shape == (ids.shape[0], scorer.n_query_heads)
    assert out.ds_heads.dtype == np.float64 and out.ds.dtype == np.float64
    assert out.min_distance == min_distance and out.seq_len == ids.shape[1]
    assert_rel_close(out.ds_heads, ds_ref)
    assert_rel_close(out.var_heads, var_ref)
    assert_rel_close(out.ds, ds_ref.mean(axis=1))
    assert_rel_close(out.variance, var_ref.mean(axis=1))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """One saved tiny model per architecture (single safetensors file)."""
    root = tmp_path_factory.mktemp("models")
    built = {}
    for kind in ("llama", "mistral", "qwen2"):
        model = tiny_model(kind)
        built[kind] = (model, save(model, root / kind))
    return built


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_matches_transformers_layer0_attention(models, kind):
    model, folder = models[kind]
    default_k = Layer0Scorer.from_pretrained(folder)
    assert_matches_reference(default_k, model, random_ids(2, 41, seed=1), 41 // 4)
    fixed_k = Layer0Scorer.from_pretrained(folder, min_distance=3)
    assert_matches_reference(fixed_k, model, random_ids(2, 32, seed=2), 3)


def test_qwen2_biases_are_read_and_matter(models):
    """The biases are read, and they change the reference (so the comparison above would
    catch a scorer that ignored them)."""
    model, folder = models["qwen2"]
    scorer = Layer0Scorer.from_pretrained(folder)
    assert {"model.layers.0.self_attn.q_proj.bias",
            "model.layers.0.self_attn.k_proj.bias"} <= set(scorer.checkpoint.tensor_names_read)
    ids = random_ids(1, 24)
    with_bias, _ = reference_scores(model, ids, 6)
    unbiased = Qwen2ForCausalLM(model.config).eval()
    unbiased.load_state_dict(model.state_dict())
    with torch.no_grad():
        for projection in (unbiased.model.layers[0].self_attn.q_proj,
                           unbiased.model.layers[0].self_attn.k_proj):
            projection.bias.zero_()
    without_bias, _ = reference_scores(unbiased, ids, 6)
    assert np.max(np.abs(with_bias - without_bias) / with_bias) > 1e-2


def test_sharded_checkpoint_reads_layer0_across_shards(tmp_path):
    model = tiny_model("llama", seed=1)
    folder = save(model, tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert len({index[name] for name in LAYER0_NAMES}) > 1
    scorer = Layer0Scorer.from_pretrained(folder)
    assert set(scorer.checkpoint.tensor_names_read) == LAYER0_NAMES
    assert set(scorer.checkpoint.files_read) == {index[name] for name in LAYER0_NAMES}
    assert_matches_reference(scorer, model, random_ids(2, 37, seed=4), 37 // 4)


def test_loading_reads_only_layer0_tensors(models):
    _, folder = models["llama"]
    checkpoint = load_layer0_checkpoint(folder)
    assert set(checkpoint.tensor_names_read) == LAYER0_NAMES
    assert checkpoint.files_read == ("model.safetensors",)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        all_names = set(handle.keys())
    assert len(all_names - LAYER0_NAMES) > 10
    assert set(checkpoint.tensors) == {"embed_tokens", "input_layernorm", "q_proj.weight",
                                       "k_proj.weight"}


LOAD_MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys
    import psutil, torch
    from safetensors import safe_open
    from transformers import LlamaConfig  # imported before measuring: the import is ~150 MB
    from longattn_spark.scorers.longattn.checkpoint import load_layer0_checkpoint
    process = psutil.Process()
    before = process.memory_info().rss
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    checkpoint = load_layer0_checkpoint(sys.argv[1])
    checkpoint.fingerprint()  # touches every byte of every tensor read
    total = sum(float(t.double().sum()) for t in checkpoint.tensors.values())
    print(json.dumps({"before": before, "after": process.memory_info().rss,
                      "peak_before": peak_before,
                      "peak_after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "needed": checkpoint.bytes_read}))
""")


def test_loading_memory_stays_near_layer0_size(tmp_path):
    """A checkpoint of ~100 MB whose layer-0 tensors are ~1 MB: loading (and touching
    them) raises the process's memory by about the layer-0 size, not the file's."""
    config = LlamaConfig(**{**SMALL, "hidden_size": 128, "intermediate_size": 16384,
                            "num_hidden_layers": 4})
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(0.01)
    folder = save(model, tmp_path / "big")
    file_size = (folder / "model.safetensors").stat().st_size
    result = subprocess.run([sys.executable, "-c", LOAD_MEMORY_CHILD, str(folder)],
                            capture_output=True, text=True, check=True)
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    slack = 16 << 20
    assert file_size > 60 * stats["needed"]
    assert stats["after"] - stats["before"] <= 1.2 * stats["needed"] + slack
    assert stats["peak_after"] - max(stats["peak_before"], stats["before"]) \
        <= 1.2 * stats["needed"] + slack


def test_pickle_checkpoint_refused_unless_allowed(models, tmp_path):
    model, folder = models["llama"]
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"pytorch_model\.bin.*allow_pickle"):
        Layer0Scorer.from_pretrained(pickled)
    from_pickle = Layer0Scorer.from_pretrained(pickled, allow_pickle=True)
    assert set(from_pickle.checkpoint.tensor_names_read) == LAYER0_NAMES
    ids = random_ids(1, 20)
    from_safetensors = Layer0Scorer.from_pretrained(folder)
    np.testing.assert_array_equal(from_pickle.score(ids).ds_heads,
                                  from_safetensors.score(ids).ds_heads)
    assert from_pickle.scorer_id == from_safetensors.scorer_id


def test_unknown_architecture_refused(models, tmp_path):
    _, folder = models["llama"]
    other = tmp_path / "gpt2"
    other.mkdir()
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt2"
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match=r"config\.json.*'gpt2' is not supported"):
        Layer0Scorer.from_pretrained(other)


@pytest.mark.parametrize("broken", ["no_folder", "no_config", "no_weights", "bad_json",
                                    "corrupt_weights"])
def test_unusable_model_folder_named_in_error(models, tmp_path, broken):
    _, folder = models["llama"]
    target = tmp_path / "model"
    if broken != "no_folder":
        target.mkdir()
    if broken in ("no_weights", "bad_json", "corrupt_weights"):
        text = (folder / "config.json").read_text()
        (target / "config.json").write_text(text[:-5] if broken == "bad_json" else text)
    if broken == "corrupt_weights":
        (target / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(InputError, match=re.escape(str(target))):
        Layer0Scorer.from_pretrained(target)


def test_out_of_vocabulary_ids_refused(models):
    _, folder = models["mistral"]
    scorer = Layer0Scorer.from_pretrained(folder)
    ids = random_ids(3, 16)
    ids[2, 9] = VOCAB
    with pytest.raises(InputError, match=rf"row 2, position 9: token id {VOCAB} .*0\.\.{VOCAB - 1}"):
        scorer.score(ids)
    ids[2, 9] = -4
    with pytest.raises(InputError, match=r"row 2, position 9: token id -4"):
        scorer.score(ids)
    with pytest.raises(InputError, match="L >= 8"):
        scorer.score(random_ids(1, 7))


def test_rope_theta_override_matches_a_model_built_with_that_theta(models, tmp_path):
    model, folder = models["llama"]
    ids = random_ids(1, 40, seed=8)
    default = Layer0Scorer.from_pretrained(folder)
    override = Layer0Scorer.from_pretrained(folder, rope_theta=37.0)
    assert override.scorer_id != default.scorer_id
    assert override.scorer_id_for(40) != default.scorer_id_for(40)
    assert np.max(np.abs(override.score(ids).ds_heads - default.score(ids).ds_heads)) > 1e-3
    rebuilt = tiny_model("llama", rope_theta=37.0)
    rebuilt.load_state_dict(model.state_dict())
    assert_matches_reference(override, rebuilt, ids, 10)
    same_theta = Layer0Scorer.from_pretrained(folder, rope_theta=10000.0)
    assert same_theta.scorer_id == default.scorer_id


def test_llama3_rope_scaling_is_applied(models, tmp_path):
    """The same weights without llama3 scaling must score differently (so the transformers
    comparison above really checks the scaled frequencies)."""
    model, folder = models["llama"]
    plain = tiny_model("llama", rope_scaling=None)
    plain.load_state_dict(model.state_dict())
    plain_folder = save(plain, tmp_path / "plain")
    ids = random_ids(1, 48, seed=5)
    scaled_ds = Layer0Scorer.from_pretrained(folder).score(ids).ds_heads
    plain_ds = Layer0Scorer.from_pretrained(plain_folder).score(ids).ds_heads
    assert np.max(np.abs(scaled_ds - plain_ds)) > 1e-3


def test_legacy_rope_scaling_config_json(models, tmp_path):
    """Llama-3.1's own config.json spells RoPE as rope_theta + rope_scaling (transformers 5
    writes rope_parameters): both spellings must give the same scorer and scores."""
    _, folder = models["llama"]
    config = json.loads((folder / "config.json").read_text())
    parameters = config.pop("rope_parameters")
    config["rope_theta"] = parameters.pop("rope_theta")
    config["rope_scaling"] = parameters
    assert parameters["rope_type"] == "llama3"
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps(config))
    (legacy / "model.safetensors").symlink_to(folder / "model.safetensors")
    ids = random_ids(1, 40, seed=6)
    new_style = Layer0Scorer.from_pretrained(folder)
    old_style = Layer0Scorer.from_pretrained(legacy)
    assert old_style.scorer_id == new_style.scorer_id
    np.testing.assert_array_equal(old_style.score(ids).ds_heads,
                                  new_style.score(ids).ds_heads)


def test_scorer_id_stable_and_sensitive(models, tmp_path):
    _, folder = models["llama"]
    first = Layer0Scorer.from_pretrained(folder)
    second = Layer0Scorer.from_pretrained(folder)
    assert first.scorer_id == second.scorer_id
    assert first.scorer_id_for(64) == second.scorer_id_for(64)
    assert first.scorer_id_for(64) != first.scorer_id_for(128)
    other_model = save(tiny_model("llama", seed=7), tmp_path / "other")
    assert Layer0Scorer.from_pretrained(other_model).scorer_id != first.scorer_id
    bf16 = Layer0Scorer.from_pretrained(folder, dtype=torch.bfloat16)
    assert bf16.scorer_id != first.scorer_id
    fixed_k = Layer0Scorer.from_pretrained(folder, min_distance=16)
    assert fixed_k.scorer_id != first.scorer_id
    assert fixed_k.scorer_id_for(64) == first.scorer_id_for(64)    # 64 // 4 == 16
    assert fixed_k.scorer_id_for(128) != first.scorer_id_for(128)
    summary = first.config_summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["scorer_id"] == first.scorer_id
    assert set(summary["tensors_read"]) == LAYER0_NAMES


def test_bfloat16_scores_close_to_float32(models):
    _, folder = models["qwen2"]
    ids = random_ids(2, 32, seed=3)
    out32 = Layer0Scorer.from_pretrained(folder).score(ids)
    out16 = Layer0Scorer.from_pretrained(folder, dtype="bfloat16").score(ids)
    assert_rel_close(out16.ds, out32.ds, 5e-2)
    assert not np.array_equal(out16.ds, out32.ds)


def test_mistral_sliding_window(tmp_path):
    model = tiny_model("mistral", sliding_window=40)
    scorer = Layer0Scorer.from_pretrained(save(model, tmp_path / "sw"))
    assert_matches_reference(scorer, model, random_ids(1, 40), 10)
    with pytest.raises(InputError, match=r"sliding-window attention \(40 tokens\)"):
        scorer.score(random_ids(1, 41))


def test_invalid_options_refused(models):
    _, folder = models["llama"]
    with pytest.raises(InputError, match="kernel"):
        Layer0Scorer.from_pretrained(folder, kernel="cuda-magic")
    with pytest.raises(InputError, match="dtype"):
        Layer0Scorer.from_pretrained(folder, dtype=torch.int8)
    with pytest.raises(InputError, match="min_distance"):
        Layer0Scorer.from_pretrained(folder, min_distance=-1)
    with pytest.raises(InputError, match="min_distance 20"):
        Layer0Scorer.from_pretrained(folder, min_distance=20).score(random_ids(1, 20))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            Layer0Scorer.from_pretrained(folder, device="cuda")
    scorer = Layer0Scorer.from_pretrained(folder, kernel="auto")
    assert scorer.kernel == "torch"


TRITON_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from longattn_spark.scorers.longattn import Layer0Scorer, build_model_input
    windows = torch.randint(3, 200, (2, 40), generator=torch.Generator().manual_seed(0))
    ids = build_model_input(windows, bos_id=1, seq_len=32)
    triton = Layer0Scorer.from_pretrained(sys.argv[1], kernel="triton")
    torch_kernel = Layer0Scorer.from_pretrained(sys.argv[1], kernel="torch")
    a, b = triton.score(ids), torch_kernel.score(ids)
    print(json.dumps({"kernel": triton.kernel,
                      "ds": float(np.max(np.abs(a.ds_heads / b.ds_heads - 1))),
                      "var": float(np.max(np.abs(a.var_heads / b.var_heads - 1)))}))
""")


def test_triton_kernel_plugs_into_the_scorer(models):
    """kernel="triton" calls the Triton engineer's kernel with the scorer's q/k (run by
    Triton's CPU interpreter here) and agrees with the torch kernel."""
    _, folder = models["llama"]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", TRITON_CHILD, str(folder)], env=env,
                            capture_output=True, text=True, check=True)
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["kernel"] == "triton"
    assert stats["ds"] <= 1e-5 and stats["var"] <= 1e-5


def test_triton_kernel_on_cpu_needs_the_interpreter(models, monkeypatch):
    _, folder = models["llama"]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match="kernel 'triton' needs a CUDA device"):
        Layer0Scorer.from_pretrained(folder, kernel="triton")


def test_build_model_input():
    window = np.arange(10, 30)
    ids = build_model_input(window, bos_id=7, seq_len=12)
    assert ids.dtype == torch.long and ids.shape == (1, 12)
    assert ids[0].tolist() == [7] + list(range(10, 21))
    batch = build_model_input(torch.stack([torch.arange(20), torch.arange(100, 120)]),
                              bos_id=1, seq_len=8)
    assert batch[:, 0].tolist() == [1, 1] and batch[1, 1:].tolist() == list(range(100, 107))
    ragged = build_model_input([list(range(9)), np.arange(50, 80)], bos_id=0, seq_len=10)
    assert ragged[0].tolist() == [0] + list(range(9))
    assert ragged[1, -1].item() == 58
    with pytest.raises(InputError, match="window 1 has 8 tokens"):
        build_model_input([list(range(9)), list(range(8))], bos_id=0, seq_len=10)


def test_smoke_test_model(tmp_path, llama3_tokenizer_dir):
    folder = write_smoke_test_model(tmp_path / "smoke", vocab_size=1000, hidden_size=64,
                                    num_attention_heads=4, num_key_value_heads=2,
                                    tokenizer_dir=llama3_tokenizer_dir)
    assert "SMOKE-TEST" in (folder / "README.md").read_text()
    assert "mean nothing" in (folder / "README.md").read_text().lower()
    assert (folder / "tokenizer.json").read_bytes() == \
        (llama3_tokenizer_dir / "tokenizer.json").read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert (config.get("rope_parameters") or config["rope_scaling"])["rope_type"] == "llama3"
    scorer = Layer0Scorer.from_pretrained(folder)
    windows = torch.randint(0, 1000, (2, 70), generator=torch.Generator().manual_seed(0))
    out = scorer.score(build_model_input(windows, bos_id=scorer.bos_id, seq_len=64))
    assert np.all((out.ds > 0.05) & (out.ds < 1.0)) and np.all(out.variance > 0)
    assert out.ds[0] != out.ds[1]
    again = write_smoke_test_model(tmp_path / "again", vocab_size=1000, hidden_size=64,
                                   num_attention_heads=4, num_key_value_heads=2)
    assert Layer0Scorer.from_pretrained(again).scorer_id == scorer.scorer_id
