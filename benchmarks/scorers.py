"""Every scorer side by side on the same windows and the same model, in one run on the CPU:
seconds and LM tokens per window for LongAttn at layer 0 and at a deeper layer, ProLong and
loss gain, against plain forward passes of the same model.

    .venv/bin/python benchmarks/scorers.py                       # random SmolLM2-135M-shaped model
    .venv/bin/python benchmarks/scorers.py --model /models/SmolLM2-135M --seq-len 1024
    .venv/bin/python benchmarks/scorers.py --windows 2 --seq-len 512 --layer 3 --repeats 3

Model: ``--model`` (a folder with config.json + safetensors, e.g. the real SmolLM2 folder
``longattn-spark import-gguf`` writes), else a random Llama with SmolLM2-135M's shape (hidden
576, 30 layers, 9 query / 3 KV heads of 64, MLP 1536, vocabulary 49152, tied embeddings)
written by ``write_smoke_test_model``: its scores mean nothing, its cost is real. Windows:
``--windows`` rows of random token ids (the cost does not depend on the text). Everything runs
in float32 with torch's default threads.

Rows (each call scores all windows together, as the score job's ``--batch-size`` does):

- forward: ``model(input_ids)`` over the [B, L] inputs, logits included: one plain full
  forward pass (the unit of the loss-gain target);
- forward, N+1 layers: the model's body cut to its first N+1 decoder layers (no head): the
  unit of the LongAttn-at-layer-N target;
- longattn layer 0 / layer N: ``Layer0Scorer`` (``layer=N`` where the scorer has it);
- prolong: ``ProLongScorer`` on the same model object, C = ``--segment-size``, pairs scaled
  to keep the released ratio (500 pairs per 256 segments, as ``prolong_vs_longattn.py``);
- lossgain: ``LossGainScorer`` on the same model object, S = L // 4.

Timing: one warm-up call each, then ``--repeats`` rounds in which the methods take turns (a
change in the machine's load touches all alike); the best round of each is reported, as
wall seconds per window (and process CPU seconds, steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SMOLLM2_SHAPE = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152}
LOSSGAIN_TARGET = 2.3
LONGATTN_TARGET = 1.2


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def timed(function: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def prolong_pairs(seq_len: int, segment_size: int) -> int:
    segments = seq_len // segment_size
    return max(1, min(segments * (segments - 1) // 2, round(segments * 500 / 256)))


def build_methods(folder: Path, inputs: torch.Tensor, windows: list[np.ndarray], layer: int,
                  segment_size: int) -> tuple[dict[str, Callable[[], object]], dict[str, int],
                                              dict[str, str]]:
    """The timed calls, LM tokens per window of each, and notes."""
    from transformers import AutoModelForCausalLM

    from longattn_spark.scorers.longattn import Layer0Scorer
    from longattn_spark.scorers.lossgain import lm_tokens_per_window
    from longattn_spark.scorers.lossgain.scorer import LossGainScorer
    from longattn_spark.scorers.prolong.scorer import DEFAULT_SEED_RULE, ProLongScorer

    batch, seq_len = (int(n) for n in inputs.shape)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.requires_grad_(False)
    bos = int(inputs[0, 0])
    layers = int(model.config.num_hidden_layers)
    if not 0 <= layer < layers:
        raise SystemExit(f"--layer {layer}: the model has layers 0..{layers - 1}")
    notes: dict[str, str] = {}
    methods: dict[str, Callable[[], object]] = {}
    tokens: dict[str, int] = {}

    def forward() -> object:
        with torch.inference_mode():
            return model(input_ids=inputs, use_cache=False).logits

    methods["forward"], tokens["forward"] = forward, seq_len
    for depth in sorted({1, layer + 1}):
        cut = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                   num_hidden_layers=depth).eval()

        def forward_cut(cut=cut) -> object:
            with torch.inference_mode():
                return cut.base_model(input_ids=inputs, use_cache=False).last_hidden_state

        methods[f"forward, {depth} layers"] = forward_cut
        tokens[f"forward, {depth} layers"] = seq_len
    shallow = Layer0Scorer.from_pretrained(folder, device="cpu", dtype=torch.float32)
    methods["longattn layer 0"] = lambda: shallow.score(inputs)
    tokens["longattn layer 0"] = seq_len
    if "layer" in inspect.signature(Layer0Scorer.from_pretrained).parameters:
        deep = Layer0Scorer.from_pretrained(folder, device="cpu", dtype=torch.float32,
                                            layer=layer)
        methods[f"longattn layer {layer}"] = lambda: deep.score(inputs)
        tokens[f"longattn layer {layer}"] = seq_len
    else:
        notes["longattn"] = "Layer0Scorer has no layer argument here: deeper layers not timed"
    pairs = prolong_pairs(seq_len, segment_size)
    prolong = ProLongScorer(model, path=folder, raw_config={}, device=torch.device("cpu"),
                            dtype=torch.float32, segment_size=segment_size, pairs=pairs,
                            threshold=0.1, seed_rule=DEFAULT_SEED_RULE, window_size=None,
                            allow_pickle=False, kv_reuse=True, batch_size=None,
                            memory_budget_bytes=None)
    ids = [w[:seq_len] for w in windows]
    names = [f"w{i}" for i in range(batch)]
    methods["prolong"] = lambda: prolong.score_windows(ids, names)
    tokens["prolong"] = (seq_len // segment_size) * segment_size + pairs * segment_size
    notes["prolong"] = f"C = {segment_size}, {pairs} pairs per window, KV reuse"
    lossgain = LossGainScorer(model, bos_id=bos, device=torch.device("cpu"),
                              dtype=torch.float32)
    methods["lossgain"] = lambda: lossgain.score(inputs)
    tokens["lossgain"] = lm_tokens_per_window(seq_len, seq_len // 4)
    notes["lossgain"] = f"S = {seq_len // 4}"
    return methods, tokens, notes


def repeat_control(folder: Path, seq_len: int, count: int) -> None:
    """Loss gain of natural passages against the same passages repeated end to end (the
    first half of the window, twice), with the model's own tokenizer on pydoc's topic texts
    (documentation prose every Python has): the known trade-off of the method."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer

    from longattn_spark.scorers.lossgain.scorer import LossGainScorer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    scorer = LossGainScorer.from_pretrained(folder)
    natural, repeated = [], []
    for name in sorted(topics):
        ids = tokenizer.encode(topics[name], add_special_tokens=False).ids
        if len(ids) < seq_len:
            continue
        natural.append(ids[:seq_len])
        half = ids[:seq_len // 2]
        repeated.append((half + half + half)[:seq_len])
        if len(natural) == count:
            break
    a = scorer.score_windows(natural, seq_len=seq_len)
    b = scorer.score_windows(repeated, seq_len=seq_len)
    print(f"repeat control: {len(natural)} pydoc topics of >= {seq_len} tokens, L = {seq_len}, "
          f"S = {seq_len // 4}, {folder}")
    print(f"{'':12}{'score':>9}{'key_share':>11}{'full_loss':>11}{'short_loss':>12}")
    for label, results in (("natural", a), ("repeated", b)):
        for r in results:
            print(f"{label:12}{r.score:9.3f}{r.key_share:11.3f}{r.full_loss:11.3f}"
                  f"{r.short_loss:12.3f}")
    mean_a = float(np.mean([r.score for r in a]))
    mean_b = float(np.mean([r.score for r in b]))
    print(f"mean score: natural {mean_a:.3f}, repeated {mean_b:.3f}, ratio "
          f"{mean_b / mean_a:.1f}x; each repeated passage / its natural passage: "
          f"{', '.join(f'{y.score / x.score:.1f}x' for x, y in zip(a, b))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model folder (default: random, SmolLM2 "
                        "shape)")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--layer", type=int, default=3, help="the deeper LongAttn layer N")
    parser.add_argument("--segment-size", type=int, default=64, help="ProLong's C")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 gives the steadiest CPU "
                        "seconds on a shared machine")
    parser.add_argument("--repeat-control", type=int, default=0, metavar="N",
                        help="with --model: only score N natural passages against the same "
                        "passages repeated end to end (the method's known trade-off)")
    args = parser.parse_args()
    if args.repeat_control:
        if not args.model:
            parser.error("--repeat-control needs --model (a trained model with its tokenizer)")
        repeat_control(args.model, args.seq_len, args.repeat_control)
        return
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()   # the cut models' unused layers are expected
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="longattn-scorers-bench-") as work:
        if args.model:
            folder = args.model
            described = f"{folder}"
        else:
            from longattn_spark.demo.smoke_model import write_smoke_test_model

            folder = write_smoke_test_model(Path(work) / "model", dtype="float32",
                                            rope_scaling=None, max_position_embeddings=8192,
                                            **SMOLLM2_SHAPE)
            described = f"random Llama, SmolLM2-135M shape {SMOLLM2_SHAPE}"
        import json

        config = json.loads((Path(folder) / "config.json").read_text())
        bos = config.get("bos_token_id")
        bos = int(bos[0] if isinstance(bos, list) else bos if bos is not None else 1)
        rng = np.random.default_rng(0)
        vocab = int(config["vocab_size"])
        windows = [rng.integers(0, vocab, args.seq_len).astype(np.int64)
                   for _ in range(args.windows)]
        inputs = torch.tensor(np.stack([np.concatenate([[bos], w[:args.seq_len - 1]])
                                        for w in windows]))
        methods, tokens, notes = build_methods(Path(folder), inputs, windows, args.layer,
                                               args.segment_size)
        print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with "
              f"{torch.get_num_threads()} threads, load average {load_average()}")
        print(f"model: {described}; float32 on the CPU")
        print(f"windows: {args.windows} x L = {args.seq_len} random ids, scored together per "
              f"call; {args.repeats} rounds, best of each")
        for name, function in methods.items():  # warm-up, not timed
            function()
        best = {name: (float("inf"), float("inf")) for name in methods}
        for _ in range(args.repeats):
            for name, function in methods.items():
                wall, cpu = timed(function)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    per_window = {name: (wall / args.windows, cpu / args.windows)
                  for name, (wall, cpu) in best.items()}
    print()
    print(f"{'method':<24} {'wall s/window':>13} {'CPU s/window':>13} {'LM tokens/window':>17}"
          f"  note")
    for name, (wall, cpu) in per_window.items():
        print(f"{name:<24} {wall:>13.3f} {cpu:>13.3f} {tokens[name]:>17,}  "
              f"{notes.get(name.split(' ')[0] if name.startswith('longattn') else name, '')}")
    print()
    forward = per_window["forward"]
    gain = per_window["lossgain"]
    print(f"lossgain / forward: wall {gain[0] / forward[0]:.2f}x, CPU {gain[1] / forward[1]:.2f}x "
          f"(target <= {LOSSGAIN_TARGET}x)")
    cut = per_window[f"forward, {args.layer + 1} layers"]
    deep = per_window.get(f"longattn layer {args.layer}")
    if deep is not None:
        print(f"longattn layer {args.layer} / forward through {args.layer + 1} layers: wall "
              f"{deep[0] / cut[0]:.2f}x, CPU {deep[1] / cut[1]:.2f}x (target <= "
              f"{LONGATTN_TARGET}x)")
    else:
        print(f"longattn layer {args.layer}: {notes['longattn']}")
    shallow, one = per_window["longattn layer 0"], per_window["forward, 1 layers"]
    print(f"longattn layer 0 / forward through 1 layer: wall {shallow[0] / one[0]:.2f}x, CPU "
          f"{shallow[1] / one[1]:.2f}x; / full forward: wall {shallow[0] / forward[0]:.2f}x")
    if "prolong" in per_window:
        print(f"prolong / forward: wall {per_window['prolong'][0] / forward[0]:.2f}x")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
