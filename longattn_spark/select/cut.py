"""The selection's pure core: options, ids, budgets and the cut arithmetic (no Spark).

What the options mean is in :mod:`longattn_spark.select`. The exact cut is placed by histogram
refinement (:mod:`longattn_spark.select.queries` runs the passes): a category's order is
narrowed to a :class:`Bracket` known to hold the cut, pass by pass, until the bracket is small
enough to collect and the :class:`Cut` is placed among its windows. The functions here decide
from the counts of each pass; they never touch the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from longattn_spark.config import SelectConfig
from longattn_spark.errors import ConfigError

MAX_ABS_ALPHA = 10.0
HASH_MIN = -float(2 ** 63)
HASH_MAX = float(2 ** 63)
DEFAULT_BUCKETS = 1024
DEFAULT_CANDIDATE_LIMIT = 100_000
MAX_REFINEMENTS = 100


@dataclass(frozen=True)
class SelectOptions:
    """Validated selection options (see :mod:`longattn_spark.select` for their meaning)."""

    method: str = "lds"
    normalize: str = "zscore"
    alpha: float = 0.5
    keep_fraction: float = 0.0
    token_budget: int = 0
    mix: tuple[tuple[str, float], ...] = ()
    min_lds: float | None = None
    seed: int = 0
    exact: bool = False
    accuracy: int = 10000
    #: query heads whose mean DS and variance replace the all-head ones (sorted; empty: all)
    heads: tuple[int, ...] = ()

    @property
    def uses_approx_cut(self) -> bool:
        return self.keep_fraction > 0 and not self.exact

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters; options that do not change the result are recorded as None
        (the seed of an LDS selection, the accuracy of an exact cut)."""
        heads = {"heads": list(self.heads)} if self.heads else {}  # older ids stay as they were
        return {
            **heads,
            "method": self.method,
            "normalize": self.normalize,
            "alpha": self.alpha,
            "keep_fraction": self.keep_fraction or None,
            "token_budget": self.token_budget or None,
            "mix": dict(self.mix) or None,
            "min_lds": self.min_lds,
            "seed": self.seed if self.method == "random" else None,
            "exact": self.exact,
            "accuracy": self.accuracy if self.uses_approx_cut else None,
        }


def parse_mix(text: str) -> dict[str, float]:
    """``"arxiv=0.33,book=0.33,code=0.34"`` -> shares of the token budget per category."""
    shares: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ConfigError(f"--mix {text!r}: empty entry; expected category=share,...")
        name, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not name:
            raise ConfigError(f"--mix {text!r}: entry {item!r} is not category=share")
        try:
            share = float(value)
        except ValueError:
            raise ConfigError(f"--mix {text!r}: share of {name!r} is not a number") from None
        if not math.isfinite(share) or share <= 0:
            raise ConfigError(f"--mix {text!r}: share of {name!r} must be a positive number")
        if name in shares:
            raise ConfigError(f"--mix {text!r}: category {name!r} is named twice")
        shares[name] = share
    if sum(shares.values()) > 1 + 1e-6:
        raise ConfigError(f"--mix {text!r}: shares sum to {sum(shares.values()):.4g}; they are "
                          "fractions of --token-budget and must sum to at most 1")
    return shares


def parse_heads(text: str) -> tuple[int, ...]:
    """``"0,3,5"`` -> the query heads (sorted, each once); ``""`` -> () (all heads)."""
    if not text.strip():
        return ()
    heads: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        if not item.isdigit():
            raise ConfigError(f"--heads {text!r}: {item!r} is not a head index; expected "
                              "comma-separated head numbers from 0, e.g. 0,3,5")
        if int(item) in heads:
            raise ConfigError(f"--heads {text!r}: head {int(item)} is named twice")
        heads.append(int(item))
    return tuple(sorted(heads))


def check_heads_in_range(heads: tuple[int, ...], n_heads: int, where: str) -> None:
    """Every head must index the stored per-head arrays of ``n_heads`` entries."""
    outside = [h for h in heads if h >= n_heads]
    if outside:
        raise ConfigError(f"--heads {','.join(map(str, heads))}: head {outside[0]} is outside "
                          f"{where}, which has {n_heads} heads (0..{n_heads - 1})")


def select_options(cfg: SelectConfig) -> SelectOptions:
    """Validate the select section of the configuration."""
    if cfg.method not in ("lds", "random"):
        raise ConfigError(f"--method must be lds or random, got {cfg.method!r}")
    if cfg.normalize not in ("zscore", "minmax"):
        raise ConfigError(f"--normalize must be zscore or minmax, got {cfg.normalize!r}")
    alpha = float(cfg.alpha)
    if not math.isfinite(alpha) or abs(alpha) > MAX_ABS_ALPHA:
        raise ConfigError(f"--alpha must be a finite number in [-{MAX_ABS_ALPHA:g}, "
                          f"{MAX_ABS_ALPHA:g}] (the paper uses 0.5), got {cfg.alpha!r}")
    fraction = float(cfg.keep_fraction)
    if math.isnan(fraction) or fraction < 0 or fraction > 1:
        raise ConfigError(f"--keep-fraction must be in (0, 1] (0: unused), got "
                          f"{cfg.keep_fraction!r}")
    if cfg.token_budget < 0:
        raise ConfigError(f"--token-budget must be positive (0: unused), got {cfg.token_budget}")
    if fraction > 0 and cfg.token_budget > 0:
        raise ConfigError("give either --keep-fraction or --token-budget, not both")
    mix = parse_mix(cfg.mix) if cfg.mix.strip() else {}
    if mix and cfg.token_budget == 0:
        raise ConfigError("--mix splits a token budget: give --token-budget as well")
    min_lds = None if math.isnan(cfg.min_lds) else float(cfg.min_lds)
    if fraction == 0 and cfg.token_budget == 0 and min_lds is None:
        raise ConfigError("no cut given: use --keep-fraction, --token-budget or --min-lds")
    if cfg.accuracy < 1:
        raise ConfigError(f"--accuracy must be a positive integer, got {cfg.accuracy}")
    return SelectOptions(method=cfg.method, normalize=cfg.normalize, alpha=alpha,
                         keep_fraction=fraction, token_budget=int(cfg.token_budget),
                         mix=tuple(sorted(mix.items())), min_lds=min_lds, seed=int(cfg.seed),
                         exact=bool(cfg.exact), accuracy=int(cfg.accuracy),
                         heads=parse_heads(cfg.heads))


def params_json(options: SelectOptions, windows_table: str, scores_table: str) -> str:
    """The ``params`` column: the options plus the input tables they were applied to."""
    return json.dumps({**options.params(), "windows_table": windows_table,
                       "scores_table": scores_table}, sort_keys=True)


def selection_id_for(params: str, scorer_id: str, windows_version: int,
                     scores_version: int) -> str:
    """Deterministic id of a selection: same options, scorer and table versions, same id."""
    payload = json.dumps({"params": json.loads(params), "scorer_id": scorer_id,
                          "windows_version": windows_version,
                          "scores_version": scores_version}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


#: the selection table's property holding a recipe's text: ``longattn.recipe.<hash>``
RECIPE_PROPERTY_PREFIX = "longattn.recipe."


def params_for_rows(params: str) -> tuple[str, dict[str, str]]:
    """The ``params`` each row of a selection stores, and the table properties it needs.

    A recipe's text (a few KB) is recorded once, in the selection table's property
    ``longattn.recipe.<hash>`` (the hash of the recorded name, hash, text and source), and
    the rows' ``recipe`` object names that property instead of holding the text: every row
    repeats ``params``, and a 3 KB constant string on 10M rows cost a Delta write 22-24 s more
    than a 300-byte one on a 2-core machine (benchmarks/RESULTS.md). The selection id is still the hash
    of ``params`` with the text (``selection_id_for``), so ids are those of earlier releases;
    ``params_with_recipe_text`` gives that JSON back."""
    data = json.loads(params)
    recipe = data.get("recipe")
    if not isinstance(recipe, dict) or "text" not in recipe:
        return params, {}
    value = json.dumps(recipe, sort_keys=True)
    key = RECIPE_PROPERTY_PREFIX + hashlib.sha256(value.encode()).hexdigest()[:32]
    data["recipe"] = {**{k: v for k, v in recipe.items() if k != "text"}, "property": key}
    return json.dumps(data, sort_keys=True), {key: value}


def params_with_recipe_text(params: Mapping[str, Any], properties: Mapping[str, str]
                            ) -> dict[str, Any]:
    """A stored ``params`` object with its recipe's text back from the selection table's
    properties (``params_for_rows``); unchanged when it holds the text or names no property
    (earlier releases), or when the property is missing."""
    out = dict(params)
    recipe = out.get("recipe")
    if isinstance(recipe, Mapping) and "text" not in recipe and recipe.get("property"):
        stored = properties.get(str(recipe["property"]))
        if stored:
            out["recipe"] = {**{k: v for k, v in recipe.items() if k != "property"},
                             **json.loads(stored)}
    return out


def check_mix_categories(mix: Iterable[tuple[str, float]], categories: Iterable[str | None]
                         ) -> None:
    """Every category named by --mix must have scored windows."""
    known = sorted(c for c in categories if c is not None)
    unknown = [name for name, _ in mix if name not in known]
    if unknown:
        raise ConfigError(f"--mix names {', '.join(repr(u) for u in unknown)}, which has no "
                          f"scored windows; categories: {', '.join(known) or '(none)'}")


def keep_counts(fraction: float, usable: Mapping[str, int]) -> dict[str, int]:
    """Windows to keep per category: ``floor(f * n)``, with a tolerance for float error."""
    return {c: min(n, math.floor(fraction * n + 1e-9)) for c, n in usable.items()}


def token_budgets(options: SelectOptions, usable_tokens: Mapping[str, int]) -> dict[str, int]:
    """Token budget per category: ``floor(N * share)`` with --mix, else split in proportion to
    the categories' usable tokens (integer arithmetic, never more than N in total)."""
    budget = options.token_budget
    if options.mix:
        return {c: math.floor(budget * dict(options.mix).get(c, 0.0)) for c in usable_tokens}
    total = sum(usable_tokens.values())
    return {c: (budget * t // total if total else 0) for c, t in usable_tokens.items()}


@dataclass(frozen=True)
class Target:
    """How much of a category a cut keeps: ``amount`` windows (count) or tokens."""

    measure: str  # "count" | "tokens"
    amount: int

    def of(self, n: int, tokens: int) -> int:
        return n if self.measure == "count" else tokens


@dataclass(frozen=True)
class Cut:
    """A category's cut, as applied by ``select_flagged.sql``."""

    category: str
    mode: str  # "all" | "none" | "above" | "from" | "before"
    threshold: float | None = None
    key: float | None = None
    tiebreak: float | None = None
    window_id: str | None = None


@dataclass(frozen=True)
class Bracket:
    """The part of a category's order known to hold its exact cut.

    Stage 1 brackets ``sort_key`` in [lo, hi]; stage 2 brackets ``tiebreak`` in [lo, hi] among
    the windows whose sort_key equals ``pinned_key``. ``taken`` is the amount (windows or
    tokens) ranked before the bracket, all of which is kept; ``rows`` the windows inside it.
    """

    category: str
    stage: int
    lo: float
    hi: float
    rows: int
    taken: int
    pinned_key: float | None = None

    def ready(self, candidate_limit: int) -> bool:
        """Small enough to collect to the driver (or impossible to split further)."""
        return self.rows <= candidate_limit or (self.stage == 2 and self.lo == self.hi)


@dataclass(frozen=True)
class CutStats:
    """What the cut arithmetic needs of a category (``select.ranked.cut_statistics_columns``):
    the windows that passed (count, tokens, largest) and the range of their ordering key,
    with the category's windows and exclusions for the summary."""

    category: str | None
    n: int
    tokens: int
    max_window_tokens: int | None
    key_min: float | None
    key_max: float | None
    windows: int = 0
    excluded: int = 0

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> CutStats:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    def key_bounds(self) -> tuple[float, float]:
        """The ordering key's range over the windows that passed, widened by a hair so that
        the extremes fall inside the first histogram's outer buckets."""
        if self.key_min is None or self.key_max is None:
            return (0.0, 0.0)
        lo, hi = float(self.key_min), float(self.key_max)
        if lo == hi:
            return (lo, hi)
        margin = 1e-9 * max(1.0, abs(lo), abs(hi))
        return (lo - margin, hi + margin)


def initial_bracket(category: str, target: Target, n: int, tokens: int,
                    bounds: tuple[float, float]) -> Bracket | Cut:
    """Start of the exact cut: everything, nothing, or the whole category as one bracket."""
    if n == 0 or target.amount <= 0:
        return Cut(category, "none")
    if target.amount >= target.of(n, tokens):
        return Cut(category, "all")
    lo, hi = bounds
    if lo == hi:
        return Bracket(category, 2, HASH_MIN, HASH_MAX, n, 0, pinned_key=lo)
    return Bracket(category, 1, lo, hi, n, 0)


def narrowed_bracket(bracket: Bracket, target: Target, histogram: Iterable[Mapping[str, Any]]
                     ) -> Bracket:
    """The bucket of a refinement pass that holds the cut, as the next bracket.

    Buckets are walked from the best (highest) down, keeping whole buckets while the amount
    kept stays within the target; the first bucket that would exceed it holds the cut.
    """
    buckets = sorted(histogram, key=lambda r: r["bucket"], reverse=True)
    counted = sum(int(b["n"]) for b in buckets)
    if counted != bracket.rows:
        raise RuntimeError(f"exact cut of category {bracket.category!r}: a refinement pass "
                           f"counted {counted} windows in the bracket, expected {bracket.rows}")
    taken = bracket.taken
    for b in buckets:
        amount = target.of(int(b["n"]), int(b["tokens"]))
        if taken + amount > target.amount:
            return _bracket_of_bucket(bracket, b, taken)
        taken += amount
    raise RuntimeError(f"exact cut of category {bracket.category!r}: the bracket does not hold "
                       "the cut")


def _bracket_of_bucket(bracket: Bracket, bucket: Mapping[str, Any], taken: int) -> Bracket:
    lo, hi, rows = float(bucket["key_min"]), float(bucket["key_max"]), int(bucket["n"])
    if bracket.stage == 1 and lo == hi:
        return Bracket(bracket.category, 2, HASH_MIN, HASH_MAX, rows, taken, pinned_key=lo)
    return dataclasses.replace(bracket, lo=lo, hi=hi, rows=rows, taken=taken)


def cut_from_candidates(bracket: Bracket, target: Target,
                        candidates: Iterable[Mapping[str, Any]]) -> Cut:
    """The exact cut from the windows of the final bracket: the first window, in rank order,
    that would take the kept amount past the target is the first one left out."""
    ordered = sorted(candidates, key=lambda r: (-r["sort_key"], -r["tiebreak"],
                                                r["window_id"]))
    if len(ordered) != bracket.rows:
        raise RuntimeError(f"exact cut of category {bracket.category!r}: collected "
                           f"{len(ordered)} candidates, expected {bracket.rows}")
    taken = bracket.taken
    for r in ordered:
        amount = target.of(1, int(r["n_tokens"]))
        if taken + amount > target.amount:
            return Cut(bracket.category, "before", key=float(r["sort_key"]),
                       tiebreak=float(r["tiebreak"]), window_id=r["window_id"])
        taken += amount
    raise RuntimeError(f"exact cut of category {bracket.category!r}: the candidates do not "
                       "hold the cut")


def approx_cut(category: str, keep: int, threshold: float, above: int, tied: int
               ) -> Cut | Bracket:
    """A category's approximate keep-fraction cut from its ``percentile_approx`` threshold.

    ``above`` windows rank strictly above the threshold and are kept; ``tied`` have exactly
    the threshold's sort_key. Of those, as many as ``keep`` (= floor(f * n)) still needs are
    kept in the exact cut's tie order: all of them ('from'), none ('above'), or some, which
    is a stage-2 bracket over the tie (its cut is placed by :func:`refined_cuts`). So a
    category whose windows all tie keeps ``keep`` windows, the ones ``--exact`` keeps.
    """
    need = keep - above
    if need <= 0 or tied == 0:
        return Cut(category, "above", threshold=threshold)
    if need >= tied:
        return Cut(category, "from", threshold=threshold)
    return Bracket(category, 2, HASH_MIN, HASH_MAX, tied, above, pinned_key=threshold)
