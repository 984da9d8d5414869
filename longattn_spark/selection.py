"""Selection: per-category normalized scores, the LDS and the cut (paper §3.2.3, §4.2).

The SQL lives in ``longattn_spark/sql/select_*.sql`` (readable and runnable on its own in a
SQL editor: named parameters such as ``:alpha`` and ``IDENTIFIER(:scores)`` for tables); this
module validates the options, binds the parameters, runs the statements in order and writes
the selection table. Nothing user-given is pasted into SQL text.

Method, within each category of the windows (paper §4.2), over the *usable* windows:

- ``--normalize zscore`` (default, paper eq. 8): z(x) = (x - mean) / stddev_samp,
  ``lds = z(DS) + alpha * z(DU)`` with DU = -variance.
- ``--normalize minmax`` (the authors' released code): ``lds = minmax(DS) - alpha *
  minmax(variance)``.
- A category with a single usable window (stddev_samp undefined) or zero spread (stddev or
  range 0) gets z = 0 for that score: it carries nothing to rank by, and the cut then falls by
  the tie order below.
- Usable means: the window exists in the windows table with an n_tokens, and ds and variance
  are finite. Other scores (NULL, NaN, infinite, no window) are not ranked; they are written to
  the selection table with ``selected = false``, NULL z/lds and an ``excluded_reason``, and
  counted in the summary, so every score of the scorer is accounted for.

Cuts, within each category (``--min-lds`` may be combined with either of the first two):

- ``--keep-fraction f``: the top ``floor(f * n + 1e-9)`` windows by LDS (``int(n * f)`` as in
  the released code). By default the cut value comes from ``percentile_approx`` at
  ``--accuracy`` (rank error at most n / accuracy; exact when n <= accuracy in practice):
  windows with LDS strictly above it are kept, and of the windows whose LDS equals it, as many
  as ``floor(f * n)`` still needs, in the tie order below (so ties are split as the exact cut
  splits them: a category whose windows all tie keeps ``floor(f * n)``, the same ones as
  ``--exact``); ``--exact`` uses the exact cut below.
- ``--token-budget N``: the longest prefix of the category's LDS order whose tokens do not
  exceed the category's budget, so the budget is met to within one window. With ``--mix
  arxiv=0.33,...`` the category gets ``floor(N * share)`` (shares sum to at most 1; categories
  not named get nothing, as in the paper's Table 7 mixes); without ``--mix`` the budget is split
  in proportion to each category's usable tokens, which keeps the corpus' own mix. A budget
  larger than a category's data takes all of it, and the summary says so. Always exact.
- ``--min-lds x``: windows with ``lds >= x``.
- ``--method random --seed s`` (the paper's Random baseline): in each category, as many
  windows (or, with ``--token-budget``, at most as many tokens) as the LDS cut with the same
  options takes, drawn from the same usable windows in the order of ``xxhash64(window_id,
  seed)``: deterministic per seed, different across seeds.

Order and ties: windows rank by LDS (or the random hash) descending, then by
``xxhash64(window_id)`` descending, then by window_id ascending: a fixed total order, so every
cut is reproducible.

No step gathers a category into one task. Per-category mean, stddev, min and max are one
grouped aggregate, collected to the driver (a few numbers per category) and broadcast back.
The approximate cut is a grouped ``percentile_approx`` (sketches merged across tasks) and one
grouped count of the windows above and at it; a tie it splits is placed like an exact cut. The
exact cut (see :func:`exact_cuts`) is found by histogram refinement: grouped aggregates of windows and
tokens per equal-width bucket of the ordering key narrow each category's cut down to a bracket
of at most ``candidate_limit`` windows, and only that bracket is collected to the driver to
place the cut exactly. Ranking is never done by a window function over a category.

``selection_id`` is a hash of the parameters, the scorer and the identities and Delta versions
of the windows and scores tables, which are read pinned to those versions. A selection whose id
is already in the table is not recomputed; the write replaces the selection's own partition
(``replaceWhere``), so a retried or repeated run never duplicates rows, and the same selection
can be rebuilt later by time travel with ``--windows-version`` / ``--scores-version``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from longattn_spark.config import LongAttnConfig, SelectConfig
from longattn_spark.errors import ConfigError, TableError

MAX_ABS_ALPHA = 10.0
HASH_MIN = -float(2 ** 63)
HASH_MAX = float(2 ** 63)
DEFAULT_BUCKETS = 1024
DEFAULT_CANDIDATE_LIMIT = 100_000
MAX_REFINEMENTS = 100
_SELECTION_ID = re.compile(r"^[0-9a-f]{24}$")
# Delta collects min/max statistics only for the leading columns (window_id, category,
# n_tokens, ds): enough for skipping, and cheaper to write than all sixteen.
SELECTION_TABLE_PROPERTIES = {"delta.dataSkippingNumIndexedCols": "4"}


# ---------------------------------------------------------------------------------------------
# Pure part: options, ids, budgets and the exact-cut arithmetic
# ---------------------------------------------------------------------------------------------

@cache
def load_sql(name: str) -> str:
    """The text of ``longattn_spark/sql/<name>.sql``."""
    return resources.files("longattn_spark").joinpath("sql", f"{name}.sql").read_text()


@dataclass(frozen=True)
class SelectOptions:
    """Validated selection options (see the module docstring for their meaning)."""

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

    @property
    def uses_approx_cut(self) -> bool:
        return self.keep_fraction > 0 and not self.exact

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters; options that do not change the result are recorded as None
        (the seed of an LDS selection, the accuracy of an exact cut)."""
        return {
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
                         exact=bool(cfg.exact), accuracy=int(cfg.accuracy))


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


def chosen_scorer_id(requested: str, available: Mapping[str, int], table: str) -> str:
    """The scorer to select on: the requested one, or the only one in the table."""
    listing = ", ".join(f"{sid} ({n} windows)" for sid, n in sorted(available.items()))
    if requested:
        if requested not in available:
            raise ConfigError(f"--scorer-id {requested!r} has no scores in {table}; scorer_ids "
                              f"there: {listing}")
        return requested
    if len(available) > 1:
        raise ConfigError(f"scores table {table} holds several scorers; choose one with "
                          f"--scorer-id: {listing}")
    return next(iter(available))


@dataclass(frozen=True)
class CategoryStats:
    """Per-category aggregates of ``select_category_stats.sql``."""

    category: str | None
    windows: int
    excluded: int
    n: int
    tokens: int
    max_window_tokens: int | None
    mean_ds: float | None
    sd_ds: float | None
    min_ds: float | None
    max_ds: float | None
    mean_var: float | None
    sd_var: float | None
    min_var: float | None
    max_var: float | None

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> CategoryStats:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


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


def _interval(lo: float, hi: float, scale: float) -> tuple[float, float]:
    a, b = lo * scale, hi * scale
    return (min(a, b), max(a, b))


def _z_range(lo: float | None, hi: float | None, center: float | None, spread: float | None,
             normalize: str, negate: bool) -> tuple[float, float]:
    """Range of a normalized score over a category, computed as select_ranked.sql does."""
    if lo is None or hi is None:
        return (0.0, 0.0)
    if normalize == "minmax":
        return (0.0, 1.0) if hi > lo else (0.0, 0.0)
    if spread is None or not spread > 0:
        return (0.0, 0.0)
    if negate:
        return ((center - hi) / spread, (center - lo) / spread)
    return ((lo - center) / spread, (hi - center) / spread)


def sort_key_bounds(options: SelectOptions, method: str, stats: CategoryStats
                    ) -> tuple[float, float]:
    """Bounds of the ordering key over a category: no pass over the data needed, since the
    z-scores of the extremes bound every window's (IEEE arithmetic is monotone)."""
    if method == "random":
        return (HASH_MIN, HASH_MAX)
    z_ds = _z_range(stats.min_ds, stats.max_ds, stats.mean_ds, stats.sd_ds,
                    options.normalize, negate=False)
    z_du = _z_range(stats.min_var, stats.max_var, stats.mean_var, stats.sd_var,
                    options.normalize, negate=True)
    weight = -options.alpha if options.normalize == "minmax" else options.alpha
    du_lo, du_hi = _interval(z_du[0], z_du[1], weight)
    lo, hi = z_ds[0] + du_lo, z_ds[1] + du_hi
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


@dataclass(frozen=True)
class CategorySummary:
    """One category of a written selection, as printed."""

    category: str | None
    windows: int
    excluded: dict[str, int]
    usable_tokens: int
    selected: int
    tokens_selected: int
    cut_lds: float | None
    budget: int | None = None

    @property
    def usable(self) -> int:
        return self.windows - sum(self.excluded.values())


@dataclass(frozen=True)
class SelectionResult:
    """What a select run did; ``message`` explains a run that selected nothing."""

    selection_id: str | None
    table: str
    scorer_id: str | None
    windows_version: int | None
    scores_version: int | None
    options: SelectOptions
    written: bool
    categories: tuple[CategorySummary, ...] = ()
    notes: tuple[str, ...] = ()
    message: str = ""


def summaries_from_rows(rows: Iterable[Mapping[str, Any]], options: SelectOptions
                        ) -> tuple[CategorySummary, ...]:
    """Fold ``select_summary.sql`` rows (per category and exclusion reason) into one summary
    per category, with the token budget each category had."""
    acc: dict[Any, dict[str, Any]] = {}
    for r in rows:
        a = acc.setdefault(r["category"], {"windows": 0, "excluded": {}, "usable_tokens": 0,
                                           "selected": 0, "tokens_selected": 0,
                                           "cut_lds": None})
        a["windows"] += int(r["windows"])
        if r["excluded_reason"] is None:
            a["usable_tokens"] += int(r["tokens"])
            a["selected"] += int(r["selected"])
            a["tokens_selected"] += int(r["tokens_selected"])
            a["cut_lds"] = r["cut_lds"]
        else:
            a["excluded"][r["excluded_reason"]] = int(r["windows"])
    budgets: dict[Any, int] = {}
    if options.token_budget:
        budgets = token_budgets(options, {c: a["usable_tokens"] for c, a in acc.items()
                                          if c is not None})
    return tuple(CategorySummary(category=c, budget=budgets.get(c), **a)
                 for c, a in sorted(acc.items(), key=lambda kv: (kv[0] is None, kv[0] or "")))


def summary_notes(options: SelectOptions, categories: Iterable[CategorySummary]) -> tuple[str, ...]:
    """Human-readable remarks: budgets larger than the data, categories left out by --mix,
    scores that could not be ranked."""
    cats = list(categories)
    notes = []
    usable = sum(c.usable_tokens for c in cats)
    if options.token_budget and options.token_budget > usable:
        notes.append(f"token budget {options.token_budget:,} exceeds the {usable:,} usable "
                     "tokens: took all of them")
    for c in cats:
        if c.budget is not None and c.budget >= c.usable_tokens and c.usable_tokens > 0:
            notes.append(f"{c.category}: budget {c.budget:,} tokens >= its {c.usable_tokens:,} "
                         "usable tokens: took all")
    if options.mix:
        named = dict(options.mix)
        left_out = [str(c.category) for c in cats if c.category not in named and c.usable]
        if left_out:
            notes.append(f"not in --mix, so nothing selected: {', '.join(left_out)}")
    excluded: dict[str, int] = {}
    for c in cats:
        for reason, n in c.excluded.items():
            excluded[reason] = excluded.get(reason, 0) + n
    if excluded:
        detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(excluded.items()))
        notes.append(f"{sum(excluded.values())} scores could not be ranked ({detail}); they are "
                     "in the selection table with selected = false and lds = null")
    return tuple(notes)


def format_summary(result: SelectionResult) -> str:
    """The summary printed by the select job."""
    if not result.categories:
        return result.message
    opts = result.options
    cut = (f"keep-fraction {opts.keep_fraction:g}" if opts.keep_fraction else
           f"token-budget {opts.token_budget:,}" if opts.token_budget else "")
    if opts.min_lds is not None:
        cut = f"{cut}, min-lds {opts.min_lds:g}" if cut else f"min-lds {opts.min_lds:g}"
    state = "written to" if result.written else "already in"
    inputs = (f"  scorer {result.scorer_id}, windows v{result.windows_version}, scores "
              f"v{result.scores_version}; {opts.method}, {opts.normalize}, "
              f"alpha {opts.alpha:g}, {cut}")
    lines = [f"selection {result.selection_id} {state} {result.table}", inputs]
    header = (f"  {'category':<16}{'windows':>10}{'excluded':>10}{'selected':>10}"
              f"{'tokens selected':>18}{'budget':>16}{'cut (min lds)':>15}")
    lines.append(header)
    for c in result.categories:
        budget = f"{c.budget:,}" if c.budget is not None else "-"
        cut_lds = f"{c.cut_lds:.6g}" if c.cut_lds is not None else "-"
        lines.append(f"  {c.category!s:<16}{c.windows:>10,}{sum(c.excluded.values()):>10,}"
                     f"{c.selected:>10,}{c.tokens_selected:>18,}{budget:>16}{cut_lds:>15}")
    total_windows = sum(c.windows for c in result.categories)
    lines.append(f"  {'total':<16}{total_windows:>10,}"
                 f"{sum(sum(c.excluded.values()) for c in result.categories):>10,}"
                 f"{sum(c.selected for c in result.categories):>10,}"
                 f"{sum(c.tokens_selected for c in result.categories):>18,}")
    if opts.method == "random":
        lines.append("  (random baseline: the cut column shows the smallest LDS drawn)")
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Spark part
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SelectionInputs:
    """The tables a selection reads, pinned to Delta versions, and the scorer used."""

    windows: Any  # TableRef
    scores: Any  # TableRef
    windows_version: int
    scores_version: int
    scorer_id: str


def table_ref(text: str, option: str):
    """A TableRef whose errors name the option it came from."""
    from longattn_spark.tables import TableRef

    try:
        return TableRef(text)
    except TableError as exc:
        raise TableError(f"{option}: {exc}") from None


def pinned_version(spark, ref, requested: int | None, option: str) -> int:
    """The Delta version to read: the requested one (checked to exist) or the current one."""
    if not ref.exists(spark):
        raise TableError(f"{option}: table {ref} does not exist")
    current = ref.version(spark)
    if requested is None or requested < 0:
        return current
    if requested > current:
        raise TableError(f"{option}-version {requested}: table {ref} is at version {current}")
    return requested


def scorer_counts(spark, scores_view: str) -> dict[str, int]:
    rows = spark.sql(load_sql("select_scorer_ids"), args={"scores": scores_view}).collect()
    return {r["scorer_id"]: int(r["windows"]) for r in rows}


class _Views:
    """Temporary views of one selection run, named uniquely and dropped at the end."""

    def __init__(self, spark) -> None:
        self.spark = spark
        self.prefix = f"longattn_sel_{uuid.uuid4().hex[:10]}"
        self.names: list[str] = []

    def add(self, name: str, df) -> str:
        view = f"{self.prefix}_{name}"
        df.createOrReplaceTempView(view)
        self.names.append(view)
        return view

    def sql(self, name: str, statement: str, **args: Any) -> str:
        return self.add(name, self.spark.sql(load_sql(statement), args=args))

    def drop(self) -> None:
        for view in self.names:
            self.spark.catalog.dropTempView(view)


def _scores_view(views: _Views, inputs: SelectionInputs) -> str:
    """The scores table at its pinned version, with ``method`` and ``score`` as NULL when
    that version predates them (LongAttn rows), so select_scored.sql reads any scorer."""
    from pyspark.sql import functions as F

    frame = inputs.scores.read(views.spark, inputs.scores_version)
    present = {c.lower() for c in frame.columns}
    for column, kind in (("method", "string"), ("score", "double")):
        if column not in present:
            frame = frame.withColumn(column, F.lit(None).cast(kind))
    return views.add("scores", frame)


def _rows_view(views: _Views, name: str, rows: list[dict[str, Any]], schema: str) -> str:
    return views.add(name, views.spark.createDataFrame(rows, schema=schema))


_BRACKET_SCHEMA = "category string, stage int, lo double, hi double, pinned_key double"
_CUT_SCHEMA = ("category string, mode string, threshold double, key double, tiebreak double, "
               "window_id string")


def exact_cuts(views: _Views, ranked: str, targets: Mapping[str, Target],
               stats: Mapping[str, CategoryStats], bounds: Mapping[str, tuple[float, float]],
               buckets: int = DEFAULT_BUCKETS, candidate_limit: int = DEFAULT_CANDIDATE_LIMIT
               ) -> dict[str, Cut]:
    """Exact cut per category by histogram refinement.

    Each pass is one grouped aggregate (``select_cut_histogram.sql``) over the windows inside
    the categories' brackets: every task counts its own windows and tokens per (category,
    bucket), and only those partial counts are shuffled, so a category is never pulled into one
    task. The driver walks the bucket counts from the top and narrows each bracket to the bucket
    holding the cut (by a factor of about ``buckets`` per pass), until a bracket holds at most
    ``candidate_limit`` windows; those are collected and the cut is placed exactly, in the
    total order (sort_key desc, tiebreak desc, window_id asc). Ties larger than the limit are
    split on the tiebreak hash (stage 2).
    """
    cuts: dict[str, Cut] = {}
    brackets: dict[str, Bracket] = {}
    for category, target in targets.items():
        st = stats[category]
        start = initial_bracket(category, target, st.n, st.tokens, bounds[category])
        if isinstance(start, Cut):
            cuts[category] = start
        else:
            brackets[category] = start
    return {**cuts, **refined_cuts(views, ranked, targets, brackets, buckets, candidate_limit)}


def refined_cuts(views: _Views, ranked: str, targets: Mapping[str, Target],
                 brackets: Mapping[str, Bracket], buckets: int = DEFAULT_BUCKETS,
                 candidate_limit: int = DEFAULT_CANDIDATE_LIMIT) -> dict[str, Cut]:
    """Narrow each bracket by histogram passes until it is small enough to collect, then
    place the cut exactly among its windows (see :func:`exact_cuts`)."""
    cuts: dict[str, Cut] = {}
    brackets = dict(brackets)
    for _ in range(MAX_REFINEMENTS):
        pending = [b for b in brackets.values() if not b.ready(candidate_limit)]
        if not pending:
            break
        histogram = _bracket_rows(views, ranked, pending, "select_cut_histogram",
                                  buckets=buckets)
        for b in pending:
            brackets[b.category] = narrowed_bracket(b, targets[b.category],
                                                    histogram.get(b.category, []))
    else:
        raise RuntimeError(f"exact cut did not converge in {MAX_REFINEMENTS} passes")
    if brackets:
        candidates = _bracket_rows(views, ranked, list(brackets.values()), None)
        for category, b in brackets.items():
            cuts[category] = cut_from_candidates(b, targets[category],
                                                 candidates.get(category, []))
    return cuts


def _bracket_rows(views: _Views, ranked: str, brackets: list[Bracket], statement: str | None,
                  **args: Any) -> dict[str, list[dict[str, Any]]]:
    """Rows of ``statement`` over the windows inside ``brackets`` (the windows themselves
    when ``statement`` is None), grouped by category."""
    rows = [{"category": b.category, "stage": b.stage, "lo": b.lo, "hi": b.hi,
             "pinned_key": b.pinned_key} for b in brackets]
    bracket_view = _rows_view(views, f"brackets_{uuid.uuid4().hex[:6]}", rows, _BRACKET_SCHEMA)
    bracketed = views.sql(f"bracketed_{uuid.uuid4().hex[:6]}", "select_bracketed",
                          ranked=ranked, brackets=bracket_view)
    query = (views.spark.sql(load_sql(statement), args={"bracketed": bracketed, **args})
             if statement else views.spark.table(bracketed))
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in query.collect():
        grouped.setdefault(r["category"], []).append(r.asDict())
    return grouped


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


def approx_cuts(views: _Views, ranked: str, options: SelectOptions,
                stats: Mapping[str, CategoryStats], **refine: Any) -> dict[str, Cut]:
    """Keep-fraction cut from a grouped ``percentile_approx`` of the LDS, ties at the
    threshold split in the exact cut's order (see :func:`approx_cut`)."""
    rows = views.spark.sql(load_sql("select_cut_approx"), args={
        "ranked": ranked, "percentage": round(1.0 - options.keep_fraction, 12),
        "accuracy": options.accuracy}).collect()
    keep = keep_counts(options.keep_fraction, {c: s.n for c, s in stats.items()})
    cuts: dict[str, Cut] = {}
    brackets: dict[str, Bracket] = {}
    for r in rows:
        category = r["category"]
        if category not in keep:
            continue
        cut = approx_cut(category, keep[category], float(r["threshold"]), int(r["above"]),
                         int(r["tied"]))
        if isinstance(cut, Bracket):
            brackets[category] = cut
        else:
            cuts[category] = cut
    targets = {c: Target("count", keep[c]) for c in brackets}
    return {**cuts, **refined_cuts(views, ranked, targets, brackets, **refine)}


def lds_cuts(views: _Views, ranked: str, options: SelectOptions,
             stats: Mapping[str, CategoryStats], **refine: Any) -> dict[str, Cut]:
    """The LDS cut of every category (--min-lds is applied on top, in select_flagged.sql)."""
    usable = {c: s for c, s in stats.items() if c is not None and s.n > 0}
    if options.keep_fraction >= 1 or not (options.keep_fraction or options.token_budget):
        return {c: Cut(c, "all") for c in usable}
    if options.keep_fraction and not options.exact:
        return approx_cuts(views, ranked, options, usable, **refine)
    if options.keep_fraction:
        counts = keep_counts(options.keep_fraction, {c: s.n for c, s in usable.items()})
        targets = {c: Target("count", k) for c, k in counts.items()}
    else:
        budgets = token_budgets(options, {c: s.tokens for c, s in usable.items()})
        targets = {c: Target("tokens", b) for c, b in budgets.items()}
    bounds = {c: sort_key_bounds(options, "lds", s) for c, s in usable.items()}
    return exact_cuts(views, ranked, targets, usable, bounds, **refine)


def random_cuts(views: _Views, ranked_random: str, flagged_lds: str, options: SelectOptions,
                stats: Mapping[str, CategoryStats], **refine: Any) -> dict[str, Cut]:
    """The random baseline: per category as many windows (or tokens, with a token budget) as
    the LDS cut keeps, in seeded hash order."""
    totals = views.spark.sql(load_sql("select_totals"),
                             args={"flagged": flagged_lds}).collect()
    measure = "tokens" if options.token_budget else "count"
    targets = {r["category"]: Target(measure, int(r["tokens_selected"] if options.token_budget
                                                  else r["selected"]))
               for r in totals if r["category"] is not None and stats[r["category"]].n > 0}
    usable = {c: stats[c] for c in targets}
    bounds = {c: sort_key_bounds(options, "random", s) for c, s in usable.items()}
    return exact_cuts(views, ranked_random, targets, usable, bounds, **refine)


def _cuts_view(views: _Views, name: str, cuts: Mapping[str, Cut]) -> str:
    return _rows_view(views, name, [dataclasses.asdict(c) for c in cuts.values()], _CUT_SCHEMA)


@contextlib.contextmanager
def selection_rows(spark, inputs: SelectionInputs, options: SelectOptions, selection_id: str,
                   params: str, buckets: int = DEFAULT_BUCKETS,
                   candidate_limit: int = DEFAULT_CANDIDATE_LIMIT) -> Iterator[Any]:
    """The rows of the selection table (a DataFrame with SELECTION's columns), valid inside the
    ``with`` block; the joined scores are cached meanwhile."""
    from pyspark import StorageLevel

    views = _Views(spark)
    scored_df = None
    refine = {"buckets": buckets, "candidate_limit": candidate_limit}
    try:
        scored_df = spark.sql(load_sql("select_scored"), args={
            "scores": _scores_view(views, inputs),
            "windows": inputs.windows.sql_name(spark, inputs.windows_version),
            "scorer_id": inputs.scorer_id}).persist(StorageLevel.MEMORY_AND_DISK)
        scored = views.add("scored", scored_df)
        stats_df = spark.sql(load_sql("select_category_stats"), args={"scored": scored})
        stats_rows = stats_df.collect()
        stats = {r["category"]: CategoryStats.from_mapping(r) for r in stats_rows}
        check_mix_categories(options.mix, stats)
        stats_view = views.add("stats", spark.createDataFrame(stats_rows, stats_df.schema))
        ranked_args = {"scored": scored, "stats": stats_view, "normalize": options.normalize,
                       "alpha": options.alpha, "seed": options.seed}
        ranked = views.sql("ranked", "select_ranked", method="lds", **ranked_args)
        cuts = _cuts_view(views, "cuts", lds_cuts(views, ranked, options, stats, **refine))
        min_lds = options.min_lds if options.min_lds is not None else float("-inf")
        flagged = views.sql("flagged", "select_flagged", ranked=ranked, cuts=cuts,
                            min_lds=min_lds)
        if options.method == "random":
            ranked = views.sql("ranked_random", "select_ranked", method="random", **ranked_args)
            cuts = _cuts_view(views, "cuts_random",
                              random_cuts(views, ranked, flagged, options, stats, **refine))
            flagged = views.sql("flagged_random", "select_flagged", ranked=ranked, cuts=cuts,
                                min_lds=float("-inf"))
        yield spark.sql(load_sql("select_rows"), args={
            "flagged": flagged, "selection_id": selection_id, "scorer_id": inputs.scorer_id,
            "params": params, "windows_version": inputs.windows_version,
            "scores_version": inputs.scores_version})
    finally:
        views.drop()
        if scored_df is not None:
            scored_df.unpersist()


def resolve_inputs(spark, windows, scores, scorer_id: str = "",
                   windows_version: int | None = None, scores_version: int | None = None
                   ) -> SelectionInputs | str:
    """Pin the input tables to versions and choose the scorer; a message instead when the
    scores table holds nothing to select from."""
    wv = pinned_version(spark, windows, windows_version, "--windows")
    sv = pinned_version(spark, scores, scores_version, "--scores")
    available = scorer_counts(spark, scores.sql_name(spark, sv))
    if not available:
        return (f"scores table {scores} holds no scores (version {sv}); nothing to select. "
                "Run the score job first.")
    chosen = chosen_scorer_id(scorer_id, available, str(scores))
    return SelectionInputs(windows, scores, wv, sv, chosen)


def selection_present(spark, table, selection_id: str) -> bool:
    return bool(spark.sql(load_sql("select_exists"), args={
        "selection": table.sql_name(spark), "selection_id": selection_id}).collect())


def read_summary(spark, table, selection_id: str, options: SelectOptions
                 ) -> tuple[CategorySummary, ...]:
    """Per-category summary of a selection, read back from the selection table."""
    rows = spark.sql(load_sql("select_summary"), args={
        "selection": table.sql_name(spark), "selection_id": selection_id}).collect()
    return summaries_from_rows([r.asDict() for r in rows], options)


def write_selection(spark, table, rows, selection_id: str) -> None:
    """Write one selection as its own partition, replacing it if present (idempotent)."""
    from longattn_spark.tables import SELECTION, retry_on_conflict

    if not _SELECTION_ID.match(selection_id):
        raise ValueError(f"not a selection id: {selection_id!r}")
    writer = (rows.select(*SELECTION.column_names).write.format("delta").mode("overwrite")
              .option("replaceWhere", f"selection_id = '{selection_id}'"))
    if table.is_path:
        retry_on_conflict(lambda: writer.save(table.location), what=f"writing {table}")
    else:
        retry_on_conflict(lambda: writer.saveAsTable(table.text), what=f"writing {table}")


def select_windows(spark, options: SelectOptions, windows, scores, table, *,
                   scorer_id: str = "", windows_version: int | None = None,
                   scores_version: int | None = None, buckets: int = DEFAULT_BUCKETS,
                   candidate_limit: int = DEFAULT_CANDIDATE_LIMIT) -> SelectionResult:
    """Run one selection into ``table`` (TableRefs) and summarize it."""
    from longattn_spark.tables import SELECTION, ensure_table

    inputs = resolve_inputs(spark, windows, scores, scorer_id, windows_version, scores_version)
    if isinstance(inputs, str):
        return SelectionResult(None, str(table), None, None, None, options, written=False,
                               message=inputs)
    params = params_json(options, str(windows), str(scores))
    selection_id = selection_id_for(params, inputs.scorer_id, inputs.windows_version,
                                    inputs.scores_version)
    ensure_table(spark, table, SELECTION, properties=SELECTION_TABLE_PROPERTIES)
    written = not selection_present(spark, table, selection_id)
    if written:
        with selection_rows(spark, inputs, options, selection_id, params, buckets,
                            candidate_limit) as rows:
            write_selection(spark, table, rows, selection_id)
    categories = read_summary(spark, table, selection_id, options)
    return SelectionResult(selection_id, str(table), inputs.scorer_id, inputs.windows_version,
                           inputs.scores_version, options, written, categories,
                           summary_notes(options, categories))


def run_select_job(cfg: LongAttnConfig) -> SelectionResult:
    """``longattn-spark select``: select from the configured tables and print a summary."""
    from longattn_spark.session import get_spark

    sc = cfg.select
    options = select_options(sc)
    windows = table_ref(sc.windows, "--windows")
    scores = table_ref(sc.scores, "--scores")
    table = table_ref(sc.table, "--table")
    spark = get_spark(cfg.spark)
    result = select_windows(spark, options, windows, scores, table, scorer_id=sc.scorer_id,
                            windows_version=sc.windows_version,
                            scores_version=sc.scores_version)
    print(format_summary(result))
    return result
