"""Model-free seam statistics against the probe's controls: the shipped ``min_cohesion`` beside
candidates that are not shipped, on the same natural windows and controls as
``benchmarks/recipe_probe.py`` (its corpora, sampling, seed and ``probe.controls``), in
seconds: no model pass.

What it answers: splices are the kind the recommended recipe misses most (0.56-0.79 in eight
of eleven categories, benchmarks/RESULTS.md), and its seam term is ``min_cohesion``, the
lowest Jaccard share of distinct tokens between the S tokens before and after a point. A seam
statistic that separates splices better on its own is a lead for the recipe; whether the
recipe gains needs the model's components too (``recipe_probe.py``).

Each statistic is computed on the model input x (BOS + the window's first L - 1 ids, as loss
gain scores it), higher = more like one text:
- ``min_cohesion``: the shipped component (``scorers/lossgain/losses.py``), S-token sides;
- ``min_split_jaccard`` (candidate): the lowest, over the points p in [S, L - S], of the
  Jaccard share of distinct tokens between everything before p and everything from p on;
- ``min_split_jaccard_w`` (candidate): the same with each distinct token weighted by
  1 / (its count in the window), so tokens that recur everywhere weigh less.

AUC of natural over each control kind with its seeded bootstrap 95% interval.

    .venv/bin/python benchmarks/seam_statistics.py [--natural 70] [--window 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from recipe_probe import PLAN, documents, sampled  # noqa: E402

from longattn_spark.probe.auc import auc_with_interval, bootstrap_seed  # noqa: E402
from longattn_spark.probe.controls import KINDS, build_controls, default_block  # noqa: E402
from longattn_spark.scorers.lossgain.losses import min_cohesion  # noqa: E402


def min_split_jaccard(x: np.ndarray, short_context: int, weighted: bool = False) -> float:
    """min over p in [S, L - S] of J(set(x[:p]), set(x[p:])) (module docstring), O(L log L):
    a distinct token is before p when its first position is < p, after when its last is
    >= p, and in both when first < p <= last."""
    n = x.size
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.full(counts.size, n)
    last = np.full(counts.size, -1)
    np.minimum.at(first, inverse, np.arange(n))
    np.maximum.at(last, inverse, np.arange(n))
    weight = 1.0 / counts if weighted else np.ones(counts.size)
    before = np.cumsum(np.bincount(first, weights=weight, minlength=n + 1))  # first <= p - 1
    after = np.cumsum(np.bincount(last, weights=weight, minlength=n + 1)[::-1])[::-1]  # >= p
    points = np.arange(short_context, n - short_context + 1)
    a, b = before[points - 1], after[points]
    both = a + b - weight.sum()  # first < p and last >= p
    return float(np.min(both / (a + b - both)))


STATISTICS = {
    "min_cohesion": lambda x, s: min_cohesion(x, s),
    "min_split_jaccard": lambda x, s: min_split_jaccard(x, s),
    "min_split_jaccard_w": lambda x, s: min_split_jaccard(x, s, weighted=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model folder, for its tokenizer and BOS "
                        "(default: SmolLM2 imported)")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--natural", type=int, default=70)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    from tokenizers import Tokenizer

    from longattn_spark.weights.configs import bos_token_id

    if not args.model:
        from longattn_spark.models.gguf import cached_smollm2

        args.model = str(cached_smollm2())
    tokenizer = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    bos = bos_token_id(json.loads((Path(args.model) / "config.json").read_text()), None)
    width, k = args.window, args.window // 4
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"tokenizer of {args.model}; W = L = {width}, S = k = {k}; up to {args.natural} "
          f"natural windows per category, seed {args.seed}")
    results: dict = {}
    loaded: dict = {}
    for source, category in PLAN:
        if source not in loaded:
            loaded = {source: documents(source, args.shared)}
        if loaded[source] is None:
            print(f"{source}/{category}: no corpus under {args.shared}, skipped")
            continue
        windows = sampled(tokenizer, loaded[source], category, width, args.seed)
        natural = windows[:args.natural]
        controls, _ = build_controls(natural, windows[:2 * args.natural], KINDS, args.seed,
                                     width, k, default_block(width, k))
        kinds = np.array(["natural"] * len(natural) + [c.kind for c in controls])
        inputs = [np.concatenate([[bos], ids[:width - 1]]).astype(np.int64)
                  for ids in [w.input_ids for w in natural] + [c.input_ids for c in controls]]
        name = f"{source}/{category}"
        for stat, function in STATISTICS.items():
            values = np.array([function(x, k) for x in inputs])
            res = {}
            for kind in KINDS:
                r = auc_with_interval(values[kinds == "natural"], values[kinds == kind],
                                      bootstrap_seed(args.seed, name, stat, kind),
                                      args.bootstrap)
                res[kind] = {"auc": r.auc, "lo": r.lo, "hi": r.hi, "n": r.n_natural}
            results.setdefault(stat, {})[name] = res
    for stat, by_category in results.items():
        print(f"\n{stat}: AUC of natural over control [95% interval]")
        print(f"{'corpus/category':22}" + "".join(f"{k:>20}" for k in KINDS))
        for name, res in by_category.items():
            print(f"{name:22}" + "".join(
                f"{res[k]['auc']:8.2f} [{res[k]['lo']:.2f},{res[k]['hi']:.2f}]" for k in KINDS))
        for kind in ("splice", "concat"):
            aucs = [res[kind]["auc"] for res in by_category.values()]
            print(f"{kind}: mean {np.mean(aucs):.3f}, min {np.min(aucs):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "window": width,
                                               "natural": args.natural, "seed": args.seed,
                                               "results": results}, indent=1, sort_keys=True)
                                   + "\n")


if __name__ == "__main__":
    main()
