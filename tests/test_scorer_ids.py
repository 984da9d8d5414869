"""scorer_ids are part of every scores table's key: the same model and options must give the
same id in every release, or a re-run scores everything again into new rows. These pins were
computed with the code before the refactor that gave scorer_id hashing one home
(``scorers.identity``); a change that alters any of them changes existing tables' ids.

The model is written by hand (config.json and safetensors of fixed tensors, no random
generator), so the ids depend on the product's hashing only.

Loss gain's pin moved on purpose four times: math version lossgain-2 added the copy components,
lossgain-3 the break components, lossgain-4 ``min_block_gain`` and lossgain-5
``loss_roughness`` (issue 29), so its rows differ and its ids with them. The repetition statistics' pin moved three times, on purpose:
repetition-2 added ``lag_match``, repetition-3 measures ``compression`` with zlib-ng (its
version is part of the id), and repetition-4 added ``min_split_jaccard``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from longattn_spark.scorers.identity import scorer_id
from longattn_spark.scorers.longattn import Layer0Scorer
from longattn_spark.scorers.longattn.locate import describe_model, locate_layers
from longattn_spark.scorers.lossgain.losses import identity_fields as lossgain_fields
from longattn_spark.scorers.lossgain.losses import scorer_id_of as lossgain_id
from longattn_spark.scorers.prolong.lds import identity_fields as prolong_fields
from longattn_spark.scorers.prolong.lds import scorer_id_of as prolong_id
from longattn_spark.weights.causal_lm import describe_causal_lm
from longattn_spark.weights.fingerprint import weights_sha256
from longattn_spark.weights.locate import locate_model

WEIGHTS = "4149079e893ee96dbd306aaf4538084ac572636ddc58abd59f612c76639cb7f3"


def _fixed(*shape: int, scale: float) -> torch.Tensor:
    count = 1
    for n in shape:
        count *= n
    return (torch.arange(count, dtype=torch.float32).reshape(shape) % 7 - 3) * scale


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A 1-layer Llama layer-0 checkpoint: config.json and four fixed tensors."""
    folder = tmp_path_factory.mktemp("pinned") / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 16,
        "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
        "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": True}))
    save_file({"model.embed_tokens.weight": _fixed(16, 8, scale=0.1),
               "model.layers.0.input_layernorm.weight": torch.ones(8),
               "model.layers.0.self_attn.q_proj.weight": _fixed(8, 8, scale=0.05),
               "model.layers.0.self_attn.k_proj.weight": _fixed(4, 8, scale=0.03)},
              str(folder / "model.safetensors"))
    return folder


def test_longattn_scorer_ids_are_pinned(model):
    scorer = Layer0Scorer.from_pretrained(model)
    assert scorer.scorer_id == "l0-521d4fe86612d36efa96d695"
    assert scorer.scorer_id_for(64) == "l0-24c4505af379cd335f1dfd9a"
    other = Layer0Scorer.from_pretrained(model, min_distance=5, dtype="bfloat16")
    assert other.scorer_id_for(32) == "l0-e454a8ae2c137f16464af69c"
    # the driver's id, from config.json and the headers only, is the same
    described = Layer0Scorer.describing(describe_model(None, locate_layers(None, str(model))))
    assert described.scorer_id_for(64) == "l0-24c4505af379cd335f1dfd9a"


def test_whole_model_fingerprint_and_ids_are_pinned(model):
    raw = json.loads((model / "config.json").read_text())
    assert weights_sha256(model, False) == WEIGHTS
    # streamed from the headers by the driver: the same digest
    assert describe_causal_lm(None, locate_model(None, str(model)),
                              allow_pickle=False).weights_sha256 == WEIGHTS
    assert prolong_id(prolong_fields(
        raw, dtype="float32", segment_size=16, pairs=-1, threshold=0.1, window_size=None,
        seed_rule="window-sha256", weights_sha256=WEIGHTS)) == "pl-8582afba977caf548c2468bc"
    assert prolong_id(prolong_fields(
        raw, dtype="bfloat16", segment_size=128, pairs=500, threshold=0.1, window_size=512,
        seed_rule="window-sha256", weights_sha256=WEIGHTS,
        retokenized_with="tok-0123456789abcdef")) == "pl-997af7a296cfd66ac67d308c"
    assert lossgain_id(lossgain_fields(raw, weights_sha256=WEIGHTS, seq_len=64,
                                       short_context=16, dtype="float32", bos_id=1)) == \
        "lg-27d2e6ecadfaf1e008cbcdfe"  # lossgain-5 (loss_roughness): was
    # lg-162c5842660a4e6bf21f190d (lossgain-4, whose rows lack loss_roughness),
    # lg-eeaeceba8ffe062311cf3b77 (lossgain-3, whose rows lack min_block_gain),
    # lg-7922fc6acb26105fd41df6e2 (lossgain-2, whose rows lack min_cohesion and loss_spike),
    # and before it lg-8418d03d72bd45ad0190ccef (whose rows lack copy_share, dependency_gain)


def test_repetition_scorer_id_is_pinned():
    """The model-free method: its id hashes its definitions and math version only."""
    from longattn_spark.scorers.base import PlanContext
    from longattn_spark.scorers.repetition.method import METHOD

    def planned(sizes: list[int], tokenizers: list[str]) -> str:
        ctx = PlanContext(spark=None, cfg=None, options=None, location=None, model=None,
                          sizes=sizes, window_tokenizers=tokenizers,
                          check_tokenizer=lambda _sid: {})
        return METHOD.plan(ctx).scorer_id

    assert planned([1024], ["tok-a"]) == planned([32768, 77], ["tok-b", "tok-c"]) == \
        "rp-4d12349fa93b4b81ab8099bb"  # repetition-4 (zlib-ng 2.3.3): was
    # rp-76efa664ad12c09d3f278d3c (repetition-3, whose rows lack min_split_jaccard),
    # rp-749a9e2d77a6373d1fce6c3a (repetition-2, lag_match) and rp-402ee08f260a338a4c68f569
    # (repetition-1, whose rows lack lag_match)


def test_one_hash_for_every_method():
    """Canonical JSON (sorted keys, no whitespace), 24 hex digits after the prefix; a value
    JSON cannot encode is hashed as its text instead of failing."""
    fields = {"b": [1, 2.5, None], "a": {"y": "z", "x": True}}
    assert scorer_id("l0", fields) == "l0-97321ace02cc7d262fa35363"
    assert scorer_id("pl", fields)[3:] == scorer_id("l0", fields)[3:]
    assert scorer_id("lg", {"path": Path("/m")}) == scorer_id("lg", {"path": "/m"})
