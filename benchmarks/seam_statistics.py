"""Model-free seam statistics against the probe's controls: loss gain's ``min_cohesion`` beside
the repetition statistics' ``min_split_jaccard``, on the same natural windows and controls as
``benchmarks/recipe_probe.py`` (its corpora, sampling, seed and ``probe.controls``), in
seconds: no model pass.

What it answers: splices are the kind the recommended recipe misses most (0.56-0.79 in eight
of eleven categories, benchmarks/RESULTS.md), and its seam term is ``min_cohesion``, the
lowest Jaccard share of distinct tokens between the S tokens before and after a point. A seam
statistic that separates splices better on its own is a lead for the recipe; whether the
recipe gains needs the model's components too (``recipe_probe.py``).

Each statistic as its scorer computes it, higher = more like one text:
- ``min_cohesion`` (``scorers/lossgain/losses.py``), on the model input x (BOS + the window's
  first L - 1 ids): the lowest Jaccard share of distinct tokens between the S tokens before
  and after a point;
- ``min_split_idf`` (``scorers/cohesion/stats.py``), on the window's first L - 1 ids: as
  ``min_split_jaccard`` with each distinct token weighted by its inverse document frequency
  (squared, the default) among every window of the category here, natural and controls (what
  ``probe`` plans for ``--method cohesion`` over its staging table);
- ``min_split_jaccard`` (``scorers/repetition/stats.py``), on the window's first L - 1 ids:
  the lowest, over the points p of the middle half, of the Jaccard share of distinct tokens
  between everything before p and everything from p on. Before it shipped (repetition-4), a
  variant weighting each distinct token by 1 / its count in the window was measured here and
  was not better (benchmarks/RESULTS.md).

AUC of natural over each control kind with its seeded bootstrap 95% interval.

    .venv/bin/python benchmarks/seam_statistics.py [--natural 70] [--first 0] [--window 1024]
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
from longattn_spark.scorers.cohesion.stats import min_split_idf, vocabulary_of  # noqa: E402
from longattn_spark.scorers.lossgain.losses import min_cohesion  # noqa: E402
from longattn_spark.scorers.repetition.stats import min_split_jaccard  # noqa: E402


STATISTICS = {
    "min_cohesion": lambda x, s, v: min_cohesion(x, s),
    "min_split_jaccard": lambda x, s, v: min_split_jaccard(x[1:]),  # the window's ids, no BOS
    # the category's vocabulary v: every probe window of the category (natural and controls),
    # as the probe's score job plans it for --method cohesion
    "min_split_idf": lambda x, s, v: min_split_idf(x[1:], v, 2.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model folder, for its tokenizer and BOS "
                        "(default: SmolLM2 imported)")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--natural", type=int, default=70)
    parser.add_argument("--first", type=int, default=0,
                        help="the natural sample starts at this window of the seeded order "
                             "(donors: the 2 * --natural windows from there); e.g. 70 for "
                             "windows the default run did not use")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if args.first < 0 or args.natural < 2:
        parser.error("--first must be >= 0 and --natural >= 2")
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
          f"natural windows per category from window {args.first} of the seeded order, "
          f"seed {args.seed}")
    results: dict = {}
    loaded: dict = {}
    for source, category in PLAN:
        if source not in loaded:
            loaded = {source: documents(source, args.shared)}
        if loaded[source] is None:
            print(f"{source}/{category}: no corpus under {args.shared}, skipped")
            continue
        windows = sampled(tokenizer, loaded[source], category, width, args.seed)
        natural = windows[args.first:args.first + args.natural]
        if len(natural) < 2:
            print(f"{source}/{category}: {len(windows)} windows, fewer than 2 from window "
                  f"{args.first} on (--first): skipped")
            continue
        donors = windows[args.first:args.first + 2 * args.natural]
        controls, _ = build_controls(natural, donors, KINDS, args.seed,
                                     width, k, default_block(width, k))
        kinds = np.array(["natural"] * len(natural) + [c.kind for c in controls])
        inputs = [np.concatenate([[bos], ids[:width - 1]]).astype(np.int64)
                  for ids in [w.input_ids for w in natural] + [c.input_ids for c in controls]]
        name = f"{source}/{category}"
        vocabulary = vocabulary_of(x[1:] for x in inputs)
        for stat, function in STATISTICS.items():
            values = np.array([function(x, k, vocabulary) for x in inputs])
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
                                               "natural": args.natural, "first": args.first,
                                               "seed": args.seed,
                                               "results": results}, indent=1, sort_keys=True)
                                   + "\n")


if __name__ == "__main__":
    main()
