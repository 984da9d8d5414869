"""How many of a category's natural windows already hold a seam, and how a recipe ranks them
against the splice control by that count: the bundles of the boilerplate corpus
(``demo.boilerplate``) are pieces of unrelated standard-library modules, each behind a banner
line ``# ---- vendored/<module> ...``, so a natural bundle window is itself a join of unrelated
texts wherever it holds a banner.

Reads ``recipe_probe.py``'s cache (run that first); scores nothing.

    .venv/bin/python benchmarks/natural_seams.py --recipe recommended
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import recipe_probe  # noqa: E402
from longattn_spark.probe.auc import auc_with_interval, bootstrap_seed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model folder (default: SmolLM2 imported)")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "longattn-spark" / "recipe-probe")
    parser.add_argument("--category", default="boilerplate/bundle")
    parser.add_argument("--marker", default="# ---- vendored/",
                        help="the text that starts a new piece in a natural window")
    parser.add_argument("--recipe", action="append", default=[])
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    if args.category.count("/") != 1:
        parser.error(f"--category {args.category!r}: source/category, e.g. boilerplate/bundle")
    if not args.model:
        from longattn_spark.models.gguf import cached_smollm2

        args.model = str(cached_smollm2())
    from tokenizers import Tokenizer

    from longattn_spark.weights.configs import bos_token_id

    tokenizer = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    bos_id = bos_token_id(json.loads((Path(args.model) / "config.json").read_text()), None)
    source, category = args.category.split("/")
    rows = recipe_probe.probe_rows(args.cache, source, category, args.window, bos_id, 8)
    ids = {}
    for path in sorted(args.cache.glob(f"{source}-{category}-*.npz")):
        z = np.load(path)
        ids.update({str(w): z["ids"][i] for i, (w, k) in enumerate(zip(z["window_id"], z["kind"]))
                    if str(k) == "natural"})
    kinds = np.array([r["kind"] for r in rows])
    natural = kinds == "natural"
    markers = np.array([tokenizer.decode(ids[r["window_id"]].tolist()).count(args.marker)
                        if r["kind"] == "natural" else -1 for r in rows])
    counts = np.bincount(markers[natural])
    print(f"{args.category}: {natural.sum()} natural windows; by pieces started inside "
          f"({args.marker!r}): " + ", ".join(f"{c}: {n}" for c, n in enumerate(counts)))
    for recipe in args.recipe or ["recommended"]:
        ranked = recipe_probe.recipe_ranks(rows, recipe)[0]
        splices = ranked[kinds == "splice"]
        for label, keep in (("all", natural), ("no piece starts inside", natural & (markers == 0)),
                            ("one or more start inside", natural & (markers > 0))):
            if keep.any():
                r = auc_with_interval(ranked[keep], splices,
                                      bootstrap_seed(args.seed, category, label, recipe),
                                      args.bootstrap)
                print(f"  {Path(recipe).stem}: natural windows {label} (n {keep.sum()}) over "
                      f"splices: {r.auc:.2f} [{r.lo:.2f}, {r.hi:.2f}]")


if __name__ == "__main__":
    main()
