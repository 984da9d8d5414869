"""Recipes against the probe's controls, on several corpora, large enough for intervals of
about +-0.1: the evidence behind the ``recommended`` recipe (README, benchmarks/RESULTS.md).

For each corpus and category: the first ``--natural`` windows (W tokens, Algorithm 1) in
seeded hash order are the natural sample, the first twice as many the donors; every control
kind is built from them by the probe's own code (``probe.controls``); every window is scored
by the product's scorers called as libraries (no Spark: the same code the score job's
executors run): loss gain with the real SmolLM2-135M (per-token losses, then
``lossgain_from_losses`` with the copy and break components), the repetition statistics, the
cohesion statistic (its vocabulary: every window of the category in the cache, natural and
controls, as ``probe`` plans it over its staging table), and LongAttn at layer 0. Then each recipe is ranked as ``probe`` ranks it (``probe.ranking``: filters and rank
over the natural sample's category statistics, a filtered row ranked last) and the AUC of
natural over each control kind is printed with its seeded bootstrap 95% interval.

Corpora: the demo corpus (standard-library sources, pydoc, license files), the generated
boilerplate corpus (``demo.boilerplate``: bundled sources behind license headers, templated
records, service logs), and, when ``--shared`` holds them, Gutenberg books and arXiv papers
(also as ``arxiv-text``: the same papers with the ids of their formula and citation
placeholders removed, ``placeholders_without_ids``), and library text from site-packages
(``library_documents``: transformers' modeling sources, package READMEs, C++ headers); books,
arXiv and the library text are held out (not used to choose the recipe).

Model passes are cached per (corpus, category, chunk of 10 natural windows) under
``--cache``, so an interrupted run resumes and recipes are re-ranked in seconds. A chunk's
controls draw their donors from the first ``2 * --natural`` windows of the run that scored it:
a cache grown from ``--natural 40`` to 70 holds four chunks built with 80 donors and three with
140, and a run from an empty cache at 70 would draw the first four from 140.

    .venv/bin/python benchmarks/recipe_probe.py --natural 70 --json benchmarks/recipe_probe.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from longattn_spark.ingest.windowing import sliding_windows  # noqa: E402
from longattn_spark.probe.auc import (  # noqa: E402
    auc_with_interval,
    bootstrap_means,
    bootstrap_seed,
    win_matrix,
)
from longattn_spark.probe.controls import (  # noqa: E402
    KINDS,
    SourceWindow,
    build_controls,
    default_block,
)
from longattn_spark.probe.ranking import FILTERED, rank_rows  # noqa: E402
from longattn_spark.recipes.checked import check_recipe  # noqa: E402
from longattn_spark.recipes.recipe import load_recipe  # noqa: E402
from longattn_spark.scorers.cohesion.stats import cohesion_stats, vocabulary_of  # noqa: E402
from longattn_spark.scorers.lossgain.losses import (  # noqa: E402
    copied_targets,
    lossgain_from_losses,
    min_cohesion,
)
from longattn_spark.scorers.lossgain.method import METHOD as LOSSGAIN  # noqa: E402
from longattn_spark.scorers.repetition.stats import repetition_stats  # noqa: E402

CHUNK = 10
PLAN = [("demo", "code"), ("boilerplate", "logs"), ("demo", "legal"), ("boilerplate", "records"),
        ("demo", "docs"), ("boilerplate", "bundle"), ("books", "book"), ("arxiv", "arxiv"),
        ("lib", "modeling"), ("lib", "readme"), ("lib", "cpp"), ("arxiv-text", "arxiv-text")]
RECIPES = ("longattn", "lossgain", "recommended")
#: the kinds of the issue's target (shuffle is reported, not targeted); the held-out sources
TARGET_KINDS = ("splice", "concat", "repeat", "nearrepeat")
HELD_OUT = ("books", "arxiv", "lib", "arxiv-text")
#: unarXive's placeholders: a formula, citation, table or figure as ``{{kind:uuid}}``
PLACEHOLDER = re.compile(r"\{\{(formula|cite|table|figure):[^}]*\}\}")


def chosen_plan(text: str) -> list[tuple[str, str]]:
    """The (corpus, category) pairs of ``--categories``, in PLAN's order; all without it."""
    if not text:
        return list(PLAN)
    wanted = {name.strip() for name in text.split(",") if name.strip()}
    unknown = wanted - {f"{s}/{c}" for s, c in PLAN}
    if unknown:
        raise SystemExit(f"--categories: unknown {', '.join(sorted(unknown))}; known: "
                         + ", ".join(f"{s}/{c}" for s, c in PLAN))
    return [(s, c) for s, c in PLAN if f"{s}/{c}" in wanted]


def mean_of_minima(by_category: dict, skip: tuple[str, ...] = ()) -> float:
    """How a recipe was compared: the mean over categories of its weakest target kind."""
    minima = [min(res[k]["auc"] for k in TARGET_KINDS if k in res)
              for name, res in by_category.items() if name.split("/")[0] not in skip]
    return float(np.mean(minima)) if minima else float("nan")


def documents(source: str, shared: Path) -> list[dict] | None:
    if source == "demo":
        from longattn_spark.demo.corpus import code_documents, docs_documents, legal_documents

        out = []
        for gen in (code_documents, docs_documents, legal_documents):
            out += [d for i, d in zip(range(40), gen(8000))]
        return out
    if source == "boilerplate":
        from longattn_spark.demo.boilerplate import boilerplate_documents

        return list(boilerplate_documents(40))
    if source == "lib":
        return library_documents()
    if source == "arxiv-text":
        papers = documents("arxiv", shared)
        return None if papers is None else [placeholders_without_ids(d) for d in papers]
    path = shared / f"{source}.jsonl"
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def placeholders_without_ids(paper: dict) -> dict:
    """An arXiv paper of category ``arxiv-text``: each ``{{formula:<uuid>}}`` (and cite, table,
    figure) placeholder without its id. The ids are random hex, about 60% of a paper window's
    tokens (36% of the characters): nothing, near or far, predicts them, and a citation's id
    repeats as a copy. A pipeline that trains on the text would drop them."""
    return {**paper, "category": "arxiv-text", "text": PLACEHOLDER.sub(r"{{\1}}", paper["text"])}


def library_documents() -> list[dict]:
    """Held-out text from this environment's site-packages: every fourth of transformers'
    ``models/*/modeling_*.py`` (category ``modeling``: sources with much code copied between
    models) and the packages' METADATA files over 6,000 characters (category ``readme``:
    their long descriptions, mostly Markdown READMEs) and torch's ``include/c10/util/*.h``
    (category ``cpp``: C++ headers). Which files exist depends on the
    installed versions (``setup.sh`` installs the project's)."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    out = [{"id": p.name, "category": "modeling", "text": p.read_text(errors="replace")}
           for p in sorted(site.glob("transformers/models/*/modeling_*.py"))[::4]]
    for p in sorted(site.glob("*.dist-info/METADATA")):
        text = p.read_text(errors="replace")
        if len(text) > 6000:
            out.append({"id": p.parent.name, "category": "readme", "text": text})
    out += [{"id": p.name, "category": "cpp", "text": p.read_text(errors="replace")}
            for p in sorted(site.glob("torch/include/c10/util/*.h"))]
    return out


def sampled(tokenizer, docs: list[dict], category: str, width: int, seed: int
            ) -> list[SourceWindow]:
    """The category's windows in seeded hash order."""
    windows = []
    for doc in docs:
        if doc["category"] != category:
            continue
        ids = np.asarray(tokenizer.encode(doc["text"], add_special_tokens=False).ids, np.int32)
        windows += [SourceWindow(f"{doc['id']}#{start}", str(doc["id"]), ids[start:end])
                    for start, end in sliding_windows(len(ids), width)]
    return sorted(windows, key=lambda w: hashlib.sha256(f"{seed}|{w.window_id}".encode())
                  .hexdigest())


class Scorers:
    """The product's scorers as libraries, loaded once."""

    def __init__(self, model: str, min_distance: int) -> None:
        from longattn_spark.scorers.longattn.scorer import Layer0Scorer
        from longattn_spark.scorers.lossgain.scorer import LossGainScorer

        self.lossgain = LossGainScorer.from_pretrained(model)
        self.layer0 = Layer0Scorer.from_pretrained(model, min_distance=min_distance)

    def model_passes(self, ids: np.ndarray, short_context: int) -> dict[str, np.ndarray]:
        import torch

        full, short, ds, var = [], [], [], []
        for begin in range(0, len(ids), 4):
            rows = torch.from_numpy(ids[begin:begin + 4].astype(np.int64))
            x = torch.cat([torch.full((rows.shape[0], 1), self.lossgain.bos_id), rows], 1)
            f, s = self.lossgain.losses(x, short_context)
            out = self.layer0.score(x)
            full.append(f)
            short.append(s)
            ds += [float(v) for v in out.ds]
            var += [float(v) for v in out.variance]
        return {"full": np.concatenate(full), "short": np.concatenate(short),
                "ds": np.array(ds), "variance": np.array(var)}


def chunk_file(cache: Path, source: str, category: str, first: int) -> Path:
    return cache / f"{source}-{category}-{first:02d}.npz"


def collect(args, scorers_factory) -> None:
    """Score every missing chunk (model passes only; components come later)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    k = args.window // 4
    loaded: dict[str, list[dict] | None] = {}
    scorers = None
    for first in range(0, args.natural, CHUNK):
        for source, category in args.plan:
            target = chunk_file(args.cache, source, category, first)
            if target.exists():
                continue
            if source not in loaded:
                loaded = {source: documents(source, args.shared)}
            if loaded[source] is None:
                continue
            windows = sampled(tokenizer, loaded[source], category, args.window, args.seed)
            natural = windows[:args.natural]
            chunk = natural[first:first + CHUNK]
            if not chunk:
                continue
            controls, _ = build_controls(chunk, windows[:2 * args.natural], KINDS, args.seed,
                                         args.window, k, default_block(args.window, k))
            rows = [("natural", w.window_id, -1, w.input_ids) for w in chunk] + \
                   [(c.kind, c.window_id, c.param, c.input_ids) for c in controls]
            scorers = scorers or scorers_factory()
            started = time.time()
            ids = np.stack([r[3][:args.window - 1] for r in rows])
            passes = scorers.model_passes(ids, k)
            np.savez_compressed(target, kind=np.array([r[0] for r in rows]),
                                window_id=np.array([r[1] for r in rows]),
                                param=np.array([r[2] for r in rows]),
                                ids=np.stack([r[3] for r in rows]).astype(np.int32), **passes)
            print(f"{target.name}: {len(rows)} windows in {time.time() - started:.0f} s",
                  flush=True)


def probe_rows(cache: Path, source: str, category: str, window: int, bos_id: int,
               copy_ngram: int) -> list[dict]:
    """Rows as the probe table holds them: kind, category, qualified components.

    A natural window already in an earlier chunk (the demo corpus can change between
    collections, shifting which windows a chunk's positions hold) is left out, with its
    controls (they carry its window_id): each natural window counts once."""
    rows = []
    seen: set[str] = set()
    for path in sorted(cache.glob(f"{source}-{category}-*.npz")):
        z = np.load(path)
        earlier = set(seen)
        for i in range(len(z["kind"])):
            if str(z["window_id"][i]) in earlier:
                continue
            if str(z["kind"][i]) == "natural":
                seen.add(str(z["window_id"][i]))
            components = scorer_components(z["ids"][i], z["full"][i], z["short"][i], window,
                                           bos_id, copy_ngram)
            components.update({"longattn.ds": float(z["ds"][i]),
                               "longattn.variance": float(z["variance"][i])})
            rows.append({"kind": str(z["kind"][i]), "category": category,
                         "window_id": str(z["window_id"][i]), "components": components,
                         "ids": z["ids"][i]})
    # cohesion's vocabulary: every probe window of the category, natural and controls, as the
    # probe's score job plans it over its staging table
    vocabulary = vocabulary_of(r["ids"] for r in rows)
    for r in rows:
        r["components"].update({f"cohesion.{n}": v for n, v in
                                cohesion_stats(r.pop("ids"), vocabulary, 2.0).items()})
    return rows


def scorer_components(ids: np.ndarray, full: np.ndarray, short: np.ndarray, window: int,
                      bos_id: int, copy_ngram: int) -> dict[str, float]:
    """One window's loss-gain and repetition components, qualified, from its ids and its
    model passes' per-token losses (as the score job's executors compute them)."""
    k = window // 4
    x = np.concatenate([[bos_id], ids[:window - 1]]).astype(np.int64)
    lg = lossgain_from_losses(full, short, k, copied_targets(x, k, copy_ngram),
                              min_cohesion(x, k))
    components = {f"lossgain.{n}": getattr(lg, n) for n in LOSSGAIN.components}
    components.update({f"repetition.{n}": v for n, v in repetition_stats(ids).items()})
    return components


def recipe_aucs(rows: list[dict], recipe_name: str, seed: int, replicates: int) -> dict:
    """AUC of natural over each control kind for one recipe, as the probe ranks it."""
    ranked, passed = recipe_ranks(rows, recipe_name)
    kinds = np.array([r["kind"] for r in rows])
    natural = ranked[kinds == "natural"]
    out = {}
    for kind in KINDS:
        control = ranked[kinds == kind]
        if len(control) and len(natural):
            r = auc_with_interval(natural, control, bootstrap_seed(seed, rows[0]["category"],
                                                                   kind, recipe_name),
                                  replicates)
            out[kind] = {"auc": r.auc, "lo": r.lo, "hi": r.hi, "n_natural": r.n_natural,
                         "n_control": r.n_control,
                         "filtered_natural": int((~passed[kinds == "natural"]).sum()),
                         "filtered_control": int((~passed[kinds == kind]).sum())}
    return out


def recipe_ranks(rows: list[dict], recipe_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's rank under one recipe as the probe ranks it (a filtered row last), and
    whether it passed the recipe's filters."""
    from longattn_spark.recipes.checked import default_recipe

    recipe = check_recipe(default_recipe("lossgain") if recipe_name == "lossgain"
                          else load_recipe(recipe_name))
    values, passed = rank_rows(rows, recipe.rank, recipe.where)
    return np.where(passed, values, FILTERED), passed


def paired_differences(rows_by_category: dict[str, list[dict]], base: str, other: str,
                       seed: int, replicates: int) -> dict:
    """AUC(other) - AUC(base) per category and kind, with a 95% interval from one bootstrap
    that draws the same natural and control windows for both recipes (the two recipes rank
    the same windows, so their difference varies far less than either AUC), and per kind the
    mean over categories, each category drawn on its own within every replicate."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for kind in KINDS:
        means = np.zeros(replicates)
        diffs = []
        for category, rows in rows_by_category.items():
            kinds = np.array([r["kind"] for r in rows])
            if not ((kinds == kind).any() and (kinds == "natural").any()):
                continue
            a, b = recipe_ranks(rows, base)[0], recipe_ranks(rows, other)[0]
            nat, ctl = kinds == "natural", kinds == kind
            delta = win_matrix(b[nat], b[ctl]) - win_matrix(a[nat], a[ctl])
            replicated = bootstrap_means(delta, rng, replicates)
            lo, hi = np.percentile(replicated, [2.5, 97.5])
            out.setdefault(kind, {})[category] = {"delta": float(delta.mean()),
                                                  "lo": float(lo), "hi": float(hi)}
            diffs.append(float(delta.mean()))
            means += replicated
        if diffs:
            means /= len(diffs)
            lo, hi = np.percentile(means, [2.5, 97.5])
            out[kind]["mean"] = {"delta": float(np.mean(diffs)), "lo": float(lo),
                                 "hi": float(hi)}
    return out


def print_paired(differences: dict, base: str, other: str) -> None:
    print(f"\n{other} - {base}: AUC difference on the same windows [95% paired interval]")
    categories = [c for c in next(iter(differences.values())) if c != "mean"]
    print(f"{'corpus/category':22}" + "".join(f"{k:>22}" for k in differences))
    for category in [*categories, "mean"]:
        print(f"{category:22}" + "".join(
            f"{d[category]['delta']:+8.3f} [{d[category]['lo']:+.2f},{d[category]['hi']:+.2f}]"
            if category in d else f"{'-':>22}" for d in differences.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model folder (default: SmolLM2 imported)")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "corpus")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "longattn-spark" / "recipe-probe")
    parser.add_argument("--natural", type=int, default=70)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default="")
    parser.add_argument("--recipe", action="append", default=[],
                        help="a recipe to rank (shipped name or YAML file; repeatable; "
                             f"default: {', '.join(RECIPES)}; 'lossgain' is the method's "
                             "default ranking)")
    parser.add_argument("--paired", action="store_true",
                        help="also print each recipe's AUC difference from the first recipe "
                             "on the same windows, with a paired bootstrap interval")
    parser.add_argument("--categories", default="",
                        help="only these corpus/category pairs, comma-separated (e.g. "
                             "demo/docs,arxiv/arxiv); default: every one of PLAN")
    parser.add_argument("--no-collect", action="store_true",
                        help="rank what the cache holds; score nothing")
    args = parser.parse_args()
    args.plan = chosen_plan(args.categories)
    import torch

    torch.set_num_threads(args.threads)
    if not args.model:
        from longattn_spark.models.gguf import cached_smollm2

        args.model = str(cached_smollm2())
    args.cache.mkdir(parents=True, exist_ok=True)
    if not args.no_collect:
        collect(args, lambda: Scorers(args.model, args.window // 4))
    from longattn_spark.weights.configs import bos_token_id

    bos = bos_token_id(json.loads((Path(args.model) / "config.json").read_text()), None)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"model {args.model}; W = L = {args.window}, S = k = {args.window // 4}; "
          f"up to {args.natural} natural windows per category (n per row in the JSON), "
          f"seed {args.seed}")
    results: dict = {}
    for recipe in args.recipe or RECIPES:
        print(f"\nrecipe {recipe}: AUC of natural over control [95% interval]")
        print(f"{'corpus/category':22}" + "".join(f"{k:>20}" for k in KINDS))
        for source, category in args.plan:
            rows = probe_rows(args.cache, source, category, args.window, bos, 8)
            if not rows:
                continue
            res = recipe_aucs(rows, recipe, args.seed, args.bootstrap)
            results.setdefault(recipe, {})[f"{source}/{category}"] = res
            print(f"{source + '/' + category:22}" + "".join(
                f"{res[k]['auc']:8.2f} [{res[k]['lo']:.2f},{res[k]['hi']:.2f}]" if k in res
                else f"{'-':>20}" for k in KINDS))
        print(f"mean over categories of the minimum AUC over {', '.join(TARGET_KINDS)}: "
              f"{mean_of_minima(results[recipe]):.3f}; tuning categories only (not "
              f"{', '.join(HELD_OUT)}): {mean_of_minima(results[recipe], HELD_OUT):.3f}")
    recipes = args.recipe or list(RECIPES)
    paired: dict = {}
    if args.paired and len(recipes) > 1:
        rows_by_category = {f"{source}/{category}": rows for source, category in args.plan
                            if (rows := probe_rows(args.cache, source, category, args.window,
                                                   bos, 8))}
        for other in recipes[1:]:
            paired[other] = paired_differences(rows_by_category, recipes[0], other, args.seed,
                                               args.bootstrap)
            print_paired(paired[other], recipes[0], other)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "window": args.window, "natural": args.natural,
            "seed": args.seed, "results": results, "paired_against_first": paired},
            indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
