"""The scorer interface: LongAttn at layer N, and a plugin method through the real score job.

LongAttn at layer N (``score --method longattn --layer N``): the layers below N run in full
(transformers' decoder layers, SDPA) and layer N's attention goes through the tail-sum kernels.

- DS and variance per head equal, within 1e-4, the same sums taken over transformers' own
  eager attention probabilities at layer N (``output_attentions=True``), on tiny random
  Llama and Qwen2 models (Qwen2: q/k biases);
- only the tensors of layers <= N are read (layer N: its norm and q/k only), and the
  fingerprint covers them: layer 0 keeps today's scorer_id, every other layer has its own;
- the score job writes layer N's scores (as the library scorer computes them) under that
  scorer_id; a ``--layer`` outside the model is one line before any Spark job.

A plugin (``--method package.module:attr``, shipped with ``addPyFile``) runs in the real job:
its ``score`` lands in the scores table with its ``method``, every other column null; a NaN
score is a ``non_finite_score`` reject; ``compare`` ranks it against a LongAttn scorer by its
score (the LongAttn scorer by its LDS) with no method-specific code.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from longattn_spark.config import ScoreConfig
from longattn_spark.errors import ConfigError
from longattn_spark.score.job import score_windows
from longattn_spark.scorers.longattn import Layer0Scorer, build_model_input
from longattn_spark.tables.refs import TableRef, table_properties
from longattn_spark.tables.schemas import WINDOWS
from longattn_spark.tables.writes import ensure_table

from helpers import lds_reference, spark_jobs_in, with_options

LAYERS = 3
L = 48
VOCAB = 128


def tiny(kind: str, folder, seed: int = 0):
    """A tiny random causal LM saved as safetensors, with weights large enough that
    attention is far from uniform and layers change the hidden states."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM),
                                 "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[kind]
    config = config_class(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4,
                          num_key_value_heads=2, num_hidden_layers=LAYERS,
                          intermediate_size=64, max_position_embeddings=256, bos_token_id=1,
                          attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn_like(parameter)
            parameter.copy_(1 + 0.1 * noise if "norm" in name else 0.3 * noise)
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("layer_models")
    return {kind: (tiny(kind, root / kind, seed=i), root / kind)
            for i, kind in enumerate(("llama", "qwen2"))}


def eager_reference(model, ids: torch.Tensor, layer: int, min_distance: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(ds, variance) per head ``[B, H]`` from transformers' eager attention probabilities
    at ``layer``: the whole L x L matrix, float64 sums (independent of the scorer)."""
    with torch.no_grad():
        probs = model(ids, output_attentions=True).attentions[layer].double()
    seq_len = ids.shape[1]
    n = torch.arange(seq_len)[:, None]
    j = torch.arange(seq_len)[None, :]
    far = (j <= n - min_distance).double()
    sum_p = (probs * far).sum((-1, -2))
    sum_p2 = (probs ** 2 * far).sum((-1, -2))
    variance = (sum_p2 - sum_p ** 2 / seq_len ** 2) / (seq_len ** 2 - 1)
    return (sum_p / seq_len).numpy(), variance.numpy()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("layer", range(LAYERS))
def test_layer_n_equals_transformers_eager_attention(models, kind, layer):
    model, folder = models[kind]
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(layer)
    ids = torch.randint(2, VOCAB, (2, L), generator=generator)
    ids[:, 0] = 1
    scorer = Layer0Scorer.from_pretrained(folder, layer=layer, kernel="torch")
    out = scorer.score(ids)
    ds, variance = eager_reference(model, ids, layer, L // 4)
    np.testing.assert_allclose(out.ds_heads, ds, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(out.var_heads, variance, rtol=1e-4, atol=1e-12)
    # The layers differ (so a scorer reading the wrong layer would fail above).
    other, _ = eager_reference(model, ids, (layer + 1) % LAYERS, L // 4)
    assert np.abs(other - ds).max() > 1e-3


def test_only_layers_up_to_n_are_read_and_the_id_says_which(models):
    _, folder = models["qwen2"]
    by_layer = [Layer0Scorer.from_pretrained(folder, layer=n) for n in range(LAYERS)]
    for n, scorer in enumerate(by_layer):
        read = scorer.checkpoint.tensor_names_read
        layers = {int(m.group(1)) for name in read if (m := re.search(r"layers\.(\d+)\.", name))}
        assert layers == set(range(n + 1))
        # layer N itself: its input norm and q/k (+ bias) only
        own = sorted(name for name in read if f"layers.{n}." in name)
        assert own == sorted(f"model.layers.{n}.{t}" for t in (
            "input_layernorm.weight", "self_attn.k_proj.bias", "self_attn.k_proj.weight",
            "self_attn.q_proj.bias", "self_attn.q_proj.weight"))
        assert not any(name.startswith("lm_head") or "model.norm" in name for name in read)
        assert scorer.config_summary()["layer"] == n
    ids = {s.scorer_id_for(L) for s in by_layer}
    assert len(ids) == LAYERS
    default = Layer0Scorer.from_pretrained(folder)
    assert default.scorer_id_for(L) == by_layer[0].scorer_id_for(L)
    assert default.checkpoint.fingerprint() == by_layer[0].checkpoint.fingerprint()


def test_layer_outside_the_model_is_a_config_error(models):
    _, folder = models["llama"]
    with pytest.raises(ConfigError, match=rf"--layer {LAYERS}: .*config\.json has {LAYERS} "
                                          rf"layers \(0\.\.{LAYERS - 1}\)") as info:
        Layer0Scorer.from_pretrained(folder, layer=LAYERS)
    assert "\n" not in str(info.value)


def windows_table(spark, path, rows: int = 6) -> str:
    """A windows table of ``rows`` windows of L tokens (ids inside the tiny vocabulary)."""
    ensure_table(spark, TableRef(str(path)), WINDOWS)
    rng = np.random.default_rng(0)
    frame = spark.createDataFrame(
        [{**dict.fromkeys(WINDOWS.column_names), "window_id": f"w{i}", "doc_id": f"d{i}",
          "category": "code" if i % 2 else "docs", "window_index": 0, "token_start": 0,
          "n_tokens": L, "input_ids": rng.integers(2, VOCAB, L).tolist(), "char_start": 0,
          "char_end": 10, "tokenizer": "t"} for i in range(rows)], WINDOWS.schema)
    frame.write.format("delta").mode("append").save(str(path))
    return str(path)


def test_score_job_at_layer_n(spark, models, tmp_path):
    model, folder = models["llama"]
    windows = windows_table(spark, tmp_path / "windows")
    cfg = ScoreConfig(windows=windows, model=str(folder), table=str(tmp_path / "scores"),
                      device="cpu", files_per_batch=100, options={"layer": 2})
    errors = []

    def bad_layer():
        with pytest.raises(ConfigError, match=f"--layer {LAYERS}: ") as info:
            score_windows(spark, with_options(cfg, layer=LAYERS), progress=False)
        errors.append(str(info.value))

    assert spark_jobs_in(spark, bad_layer) == []
    assert "\n" not in errors[0] and not (tmp_path / "scores").exists()

    summary = score_windows(spark, cfg, progress=False)
    torch.set_num_threads(1)
    scorer = Layer0Scorer.from_pretrained(folder, layer=2)
    assert summary.scorer_id == scorer.scorer_id_for(L) != \
        Layer0Scorer.from_pretrained(folder).scorer_id_for(L)
    got = {r["window_id"]: r for r in TableRef(cfg.table).read(spark).collect()}
    source = {r["window_id"]: r["input_ids"] for r in TableRef(windows).read(spark).collect()}
    assert summary.scored == len(got) == len(source)
    for window_id, row in got.items():
        out = scorer.score(build_model_input(source[window_id], bos_id=1, seq_len=L))
        assert row["ds"] == pytest.approx(out.ds[0], rel=1e-6)
        assert row["variance"] == pytest.approx(out.variance[0], rel=1e-6)
        assert (row["method"], row["seq_len"], row["min_distance"]) == ("longattn", L, L // 4)
    record = json.loads(table_properties(spark, TableRef(cfg.table))[
        f"longattn.scorer.{summary.scorer_id}"])
    assert record["layer"] == 2


PLUGIN = """
from dataclasses import dataclass

import torch

from longattn_spark.scorers.base import MethodPlan, RunSettings, ScorerMethod
from longattn_spark.tables.schemas import SCORES


@dataclass(frozen=True)
class Settings:
    run: RunSettings


class Loaded:
    device = torch.device("cpu")
    dtype = torch.float64


class MeanId(ScorerMethod):
    name = "meanid"
    components = ("score",)
    out_fields = (SCORES.schema["score"],)

    def plan(self, ctx):
        return MethodPlan(scorer_id="meanid-1", settings=Settings(run=ctx.run_settings()),
                          describe={"what": "mean token id"},
                          tokenizer=ctx.check_tokenizer("meanid-1"))

    def load(self, settings, device):
        return Loaded()

    def score_rows(self, batch, rows, scorer, settings):
        return [{"score": float("nan") if batch.window_ids[i] == "w0"
                 else float(batch.ids(i).mean())} for i in rows]


METHOD = MeanId()
"""


def test_plugin_method_in_the_job_with_rejects_and_compare(spark, models, tmp_path):
    import pandas as pd

    from longattn_spark.compare import compare_scorers

    _, folder = models["llama"]
    plugin = tmp_path / "a1_meanid_plugin.py"
    plugin.write_text(PLUGIN)
    spark.sparkContext.addPyFile(str(plugin))
    windows = windows_table(spark, tmp_path / "windows", rows=9)
    table = str(tmp_path / "scores")
    cfg = ScoreConfig(windows=windows, model=str(folder), table=table, device="cpu",
                      files_per_batch=100, method="a1_meanid_plugin:METHOD")
    summary = score_windows(spark, cfg, progress=False)
    assert summary.scorer_id == "meanid-1"
    assert summary.scored == 8 and summary.rejected == {"non_finite_score": 1}
    rejects = TableRef(table + "_rejects").read(spark).collect()
    assert [(r["window_id"], r["reason"]) for r in rejects] == [("w0", "non_finite_score")]
    assert "score = nan" in rejects[0]["detail"]
    source = {r["window_id"]: r["input_ids"] for r in TableRef(windows).read(spark).collect()}
    rows = [r.asDict() for r in TableRef(table).read(spark).collect()]
    for row in rows:
        assert row["method"] == "meanid"
        assert row["score"] == pytest.approx(np.mean(source[row["window_id"]]))
        assert row["ds"] is None and row["seq_len"] is None and row["prolong"] is None
    longattn = score_windows(spark, dataclasses.replace(cfg, method="longattn"),
                             progress=False)
    result = compare_scorers(spark, TableRef(table), longattn.scorer_id, "meanid-1")
    assert [r.split(":")[0] for r in result.rankings] == ["longattn", "meanid"]
    got = pd.DataFrame([r.asDict() for r in TableRef(table).read(spark).collect()])
    lds = got[got.method == "longattn"].copy()
    lds["value"] = lds_reference(lds)
    merged = lds.drop(columns="score").merge(
        got[got.method == "meanid"][["window_id", "score"]], on="window_id")
    for agreement in result.categories:
        part = merged[merged.category == agreement.category]
        assert agreement.windows == len(part)
        assert agreement.spearman == pytest.approx(
            part.value.rank().corr(part.score.rank()), abs=1e-9)
