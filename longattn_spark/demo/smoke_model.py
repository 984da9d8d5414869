"""A small random Llama checkpoint for demos and end-to-end tests, built offline in seconds.

Its weights are random, so its scores mean nothing; it exists so that the whole pipeline
(ingest -> score -> select -> export) can run with no download. By default it has the
Llama-3 vocabulary size and ``llama3`` rope scaling, so the real Llama-3 tokenizer's ids fit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from longattn_spark.errors import InputError

SMOKE_README = """# SMOKE-TEST model (random weights)

This folder holds a tiny randomly initialised `LlamaForCausalLM` (hidden size {hidden_size},
{num_attention_heads} query heads, {num_key_value_heads} key/value heads, {num_hidden_layers}
layers, vocabulary {vocab_size}, seed {seed}), written by
`longattn_spark.demo.smoke_model.write_smoke_test_model`.

Its weights are random: the DS / variance scores it produces MEAN NOTHING. Use it only to
check that the pipeline runs. Score real data with a real model (e.g. Llama-3.1-8B).
"""

LLAMA3_ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
LLAMA3_BOS_ID = 128000
LLAMA3_EOS_ID = 128001
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def write_smoke_test_model(path: str | Path, *, vocab_size: int = 128256,
                           hidden_size: int = 256, num_attention_heads: int = 8,
                           num_key_value_heads: int = 2, num_hidden_layers: int = 2,
                           intermediate_size: int = 512, rope_scaling: str | None = "llama3",
                           max_position_embeddings: int = 131072, seed: int = 0,
                           tokenizer_dir: str | Path | None = None,
                           dtype: str = "bfloat16") -> Path:
    """Write a random ``LlamaForCausalLM`` checkpoint (safetensors) with a README saying it
    is a smoke-test model; copy the tokenizer files of ``tokenizer_dir`` beside it if given.

    ``rope_scaling``: ``"llama3"`` (Llama-3.1's settings, rope_theta 500000) or None (plain
    RoPE, rope_theta 10000). Embeddings are tied to keep the file small; ``dtype`` is the
    stored dtype (bfloat16, like Llama-3.1's release, or float32). The same arguments give
    the same bytes.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if rope_scaling not in ("llama3", None):
        raise ValueError(f"rope_scaling must be 'llama3' or None, got {rope_scaling!r}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        num_hidden_layers=num_hidden_layers, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        rope_theta=500000.0 if rope_scaling else 10000.0,
        rope_scaling=dict(LLAMA3_ROPE_SCALING) if rope_scaling else None,
        bos_token_id=LLAMA3_BOS_ID if vocab_size > LLAMA3_EOS_ID else 0,
        eos_token_id=LLAMA3_EOS_ID if vocab_size > LLAMA3_EOS_ID else 1,
        tie_word_embeddings=True, rms_norm_eps=1e-5)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    _init_random_weights(model, seed)
    model.to(getattr(torch, dtype)).save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").write_text(SMOKE_README.format(
        hidden_size=hidden_size, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, num_hidden_layers=num_hidden_layers,
        vocab_size=vocab_size, seed=seed))
    if tokenizer_dir is not None:
        _copy_tokenizer_files(Path(tokenizer_dir), folder)
    return folder


def write_random_layer0_checkpoint(path: str | Path, *, hidden_size: int,
                                   num_attention_heads: int, num_key_value_heads: int,
                                   head_dim: int, vocab_size: int,
                                   dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
                                   seed: int = 0) -> Path:
    """A random Llama-3.1-shaped (llama3 RoPE) checkpoint holding only the tensors layer-0
    scoring reads: config.json + model.safetensors. For benchmarks at real shapes, where a
    whole model would not fit; ``device`` is where the random numbers are drawn (a GPU makes
    a 128k-row embedding in a moment)."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    big_vocab = vocab_size > LLAMA3_EOS_ID
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
              "hidden_size": hidden_size, "num_attention_heads": num_attention_heads,
              "num_key_value_heads": num_key_value_heads, "head_dim": head_dim,
              "vocab_size": vocab_size, "intermediate_size": 4 * hidden_size,
              "num_hidden_layers": 1, "max_position_embeddings": 131072,
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
              "bos_token_id": LLAMA3_BOS_ID if big_vocab else 1,
              "eos_token_id": LLAMA3_EOS_ID if big_vocab else 2,
              "torch_dtype": str(dtype).removeprefix("torch."),
              "rope_scaling": dict(LLAMA3_ROPE_SCALING)}
    (folder / "config.json").write_text(json.dumps(config))
    generator = torch.Generator(device=device).manual_seed(seed)

    def normal(*size: int, std: float) -> torch.Tensor:
        values = torch.randn(*size, generator=generator, device=device) * std
        return values.to(dtype).cpu()

    qk_std = hidden_size ** -0.5
    layer = "model.layers.0."
    save_file({"model.embed_tokens.weight": normal(vocab_size, hidden_size, std=1.0),
               layer + "input_layernorm.weight": torch.ones(hidden_size, dtype=dtype),
               layer + "self_attn.q_proj.weight": normal(num_attention_heads * head_dim,
                                                         hidden_size, std=qk_std),
               layer + "self_attn.k_proj.weight": normal(num_key_value_heads * head_dim,
                                                         hidden_size, std=qk_std)},
              str(folder / "model.safetensors"))
    return folder


def _init_random_weights(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights: norms 1, matrices N(0, 0.02²) except q_proj/k_proj, drawn with std
    hidden_size^-0.5 so that layer-0 logits have a spread of about 1 (flat attention would
    give every window nearly the same score). Faster than transformers' own init, which
    matters for the 128k-row embedding."""
    generator = torch.Generator().manual_seed(seed)
    qk_std = model.config.hidden_size ** -0.5
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                parameter.fill_(1.0)
            else:
                std = qk_std if name.endswith(("q_proj.weight", "k_proj.weight")) else 0.02
                parameter.normal_(0.0, std, generator=generator)
    model.tie_weights()


def _copy_tokenizer_files(source: Path, target: Path) -> None:
    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    if "tokenizer.json" not in copied:
        raise InputError(f"{source}: no tokenizer.json to copy into the smoke model")
    for name in copied:
        shutil.copyfile(source / name, target / name)
