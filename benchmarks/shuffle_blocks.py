"""Shuffles of other block sizes against recipes: does a recipe's verdict on the probe's
shuffle control (blocks of 64 tokens at W = 1024) hold when the text is broken in more places
(blocks of 16 or 32 tokens) or fewer (128)?

For each category: the first ``--natural`` windows of ``recipe_probe.py``'s sample (the same
seeded hash order), each shuffled in blocks of every size in ``--blocks`` (the probe's own
``shuffle``, with a generator of (seed, window_id, "shuffle<block>")), scored by loss gain with
the real SmolLM2-135M (model passes cached under ``--cache``). They are ranked beside
everything ``recipe_probe.py``'s cache holds for that category (its natural windows and
controls, ``--probe-cache``; run that first), as the probe ranks them, and the AUC of natural
over each block size's shuffles is printed ("64" is the probe's own shuffle control).

    .venv/bin/python benchmarks/shuffle_blocks.py --recipe recommended \\
        --recipe benchmarks/recipes/recommended-lossgain-4.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import recipe_probe  # noqa: E402
from longattn_spark.probe.auc import auc_with_interval, bootstrap_seed  # noqa: E402
from longattn_spark.probe.controls import control_rng, shuffle  # noqa: E402

CATEGORIES = ("demo/code", "boilerplate/logs", "books/book", "lib/readme")


def shuffled_file(cache: Path, source: str, category: str, natural: int,
                  blocks: tuple[int, ...]) -> Path:
    return cache / f"{source}-{category}-{natural}-{'_'.join(map(str, blocks))}.npz"


def collect(args, source: str, category: str, tokenizer, scorer) -> Path | None:
    """Score the category's shuffles unless cached; None when its corpus is not here."""
    target = shuffled_file(args.cache, source, category, args.natural, args.blocks)
    if target.exists():
        return target
    docs = recipe_probe.documents(source, args.shared)
    if docs is None:
        return None
    import torch

    windows = recipe_probe.sampled(tokenizer, docs, category, args.window,
                                   args.seed)[:args.natural]
    rows = [(f"shuffle{block}", w.window_id,
             shuffle(w, block, control_rng(args.seed, w.window_id, f"shuffle{block}")).input_ids)
            for block in args.blocks for w in windows]
    ids = np.stack([r[2][:args.window - 1] for r in rows]).astype(np.int64)
    started = time.time()
    full, short = [], []
    for begin in range(0, len(ids), 4):
        x = torch.from_numpy(ids[begin:begin + 4])
        x = torch.cat([torch.full((x.shape[0], 1), scorer.bos_id), x], 1)
        f, s = scorer.losses(x, args.window // 4)
        full.append(f)
        short.append(s)
    np.savez_compressed(target, kind=np.array([r[0] for r in rows]),
                        window_id=np.array([r[1] for r in rows]),
                        ids=np.stack([r[2] for r in rows]).astype(np.int32),
                        full=np.concatenate(full), short=np.concatenate(short))
    print(f"{target.name}: {len(rows)} windows in {time.time() - started:.0f} s", flush=True)
    return target


def ranked_rows(args, source: str, category: str, shuffled: Path, bos_id: int) -> list[dict]:
    """The probe cache's rows of the category and the new shuffles, as the probe holds them."""
    rows = recipe_probe.probe_rows(args.probe_cache, source, category, args.window, bos_id, 8)
    z = np.load(shuffled)
    for i in range(len(z["kind"])):
        rows.append({"kind": str(z["kind"][i]), "category": category,
                     "window_id": str(z["window_id"][i]),
                     "components": recipe_probe.scorer_components(
                         z["ids"][i], z["full"][i], z["short"][i], args.window, bos_id, 8)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model folder (default: SmolLM2 imported)")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "longattn-spark" / "shuffle-blocks")
    parser.add_argument("--probe-cache", type=Path,
                        default=Path.home() / ".cache" / "longattn-spark" / "recipe-probe")
    parser.add_argument("--category", action="append", default=[],
                        help=f"source/category (repeatable; default {', '.join(CATEGORIES)})")
    parser.add_argument("--natural", type=int, default=10)
    parser.add_argument("--blocks", default="16,32,128")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--recipe", action="append", default=[],
                        help="a recipe over loss gain and repetition components (repeatable; "
                             "default recommended)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    try:
        args.blocks = tuple(int(b) for b in args.blocks.split(","))
    except ValueError:
        parser.error(f"--blocks {args.blocks!r}: comma-separated integers, e.g. 16,32,128")
    if any(b < 1 or args.window % b for b in args.blocks):
        parser.error(f"--blocks {args.blocks}: each must divide --window {args.window}")
    for name in args.category:
        if name.count("/") != 1:
            parser.error(f"--category {name!r}: source/category, e.g. demo/code")
    if not args.model:
        from longattn_spark.models.gguf import cached_smollm2

        args.model = str(cached_smollm2())
    from tokenizers import Tokenizer

    from longattn_spark.scorers.lossgain.scorer import LossGainScorer
    from longattn_spark.weights.configs import bos_token_id

    tokenizer = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    bos_id = bos_token_id(json.loads((Path(args.model) / "config.json").read_text()), None)
    args.cache.mkdir(parents=True, exist_ok=True)
    scorer = None
    kinds = tuple(f"shuffle{b}" for b in args.blocks) + ("shuffle",)
    results: dict = {}
    for name in args.category or CATEGORIES:
        source, category = name.split("/")
        if not shuffled_file(args.cache, source, category, args.natural, args.blocks).exists():
            scorer = scorer or LossGainScorer.from_pretrained(args.model)
        shuffled = collect(args, source, category, tokenizer, scorer)
        if shuffled is None:
            print(f"{name}: corpus not found under {args.shared}, skipped")
            continue
        rows = ranked_rows(args, source, category, shuffled, bos_id)
        kind_of = np.array([r["kind"] for r in rows])
        for recipe in args.recipe or ["recommended"]:
            ranked = recipe_probe.recipe_ranks(rows, recipe)[0]
            natural = ranked[kind_of == "natural"]
            out = {}
            for kind in kinds:
                r = auc_with_interval(natural, ranked[kind_of == kind],
                                      bootstrap_seed(args.seed, category, kind, recipe),
                                      args.bootstrap)
                out[kind.removeprefix("shuffle") or "64"] = {
                    "auc": r.auc, "lo": r.lo, "hi": r.hi, "n_natural": r.n_natural,
                    "n_control": r.n_control}
            results.setdefault(recipe, {})[name] = out
            print(f"{name:18} {Path(recipe).stem:28} n {len(natural):3}  " + "  ".join(
                f"block {b:>3}: {v['auc']:.2f} [{v['lo']:.2f}, {v['hi']:.2f}]"
                for b, v in sorted(out.items(), key=lambda kv: int(kv[0]))), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "natural": args.natural,
                                               "blocks": args.blocks, "results": results},
                                              indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
