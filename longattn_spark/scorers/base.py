"""The one interface every scoring method implements (``longattn-spark score --method M``).

A method is one object (an instance of a ``ScorerMethod`` subclass) in one package beside its
math (``scorers/<name>/``); the registry (``longattn_spark.scorers``) finds the built-in ones
by package and a plugin by ``package.module:attr``. A method owns three things the rest of the
product reads without naming it:

- **its options**: ``Options``, a frozen dataclass (``scorers.options``), reaching it as
  ``--option NAME=VALUE``, YAML ``score: {options: {...}}`` or a recipe's ``options``;
- **its components**: ``components``, the numbers it computes per window, stored in the
  scores table's ``components`` map (no schema edit for a new method);
- **its default ranking**: ``ranking(normalize)``, an expression over its components
  evaluated per category (``recipes.expr``), used by select, probe, compare and report when no
  recipe or ``--rank`` says otherwise.

The score job (``longattn_spark.score.job``) calls it in this order and has no other knowledge
of it:

Driver, before any Spark job:

1. ``validate(cfg, options)``: checks of its options against the shared ones (``--seq-len``,
   ...) that need no Spark (one-line ``ConfigError``); unknown options and bad values were
   refused when the options were built.
2. ``locate(spark, cfg)``: which model files it needs (``weights.locate.locate_model``: every
   file of a whole causal LM by default; None for a method without a model).
3. ``inspect(spark, cfg, location)``: the model checked and described from config.json and
   the weight headers, without loading it (errors: one line, before the windows are read).

Driver, before any task (the windows table is read once for its window sizes and tokenizers):

4. ``plan(ctx)`` -> ``MethodPlan``: the scorer_id (with its fingerprint of the weights and
   its options), the settings the executors get (a frozen, hashable dataclass with a
   ``run: RunSettings``), the description recorded in the table property
   ``longattn.scorer.<scorer_id>``, the tokenizer decision (``ctx.check_tokenizer(scorer_id)``
   for the shared check), and the constant columns of its rows (e.g. ``seq_len``).

Executors (``scorers.executor``: one mapInArrow function for every method):

5. ``load(settings, device)``: the scorer, built once per Python worker and cached. It should
   have ``device`` (a ``torch.device``) and ``dtype`` (a ``torch.dtype``): every row records
   them.
6. ``prepare(batch, scorer, settings)``: mark the windows it cannot score
   (``batch.reject(i, reason, detail)``, reasons from ``longattn_spark.reasons``) and return
   whatever ``score_rows`` needs (e.g. the ``[N, L]`` id matrix).
7. ``score_rows(prepared, rows, scorer, settings)``: one dict per row of ``rows`` (at most
   ``--batch-size`` of them) holding every name of ``components`` (a float each) and of
   ``out_fields`` (a struct column: a dict), or a ``batch.Reject(reason, detail)`` for a window
   it cannot score after all. CUDA running out of memory here becomes one line naming
   ``--batch-size``; a row with a component that is not finite becomes a ``non_finite_score``
   reject.
8. ``run_info(scorer)``: (kernel, note) of what ran, read after each chunk.

Output columns: the ``components`` map; ``out_fields`` are typed columns of the scores table
that a built-in method also fills (``tables.schemas.SCORES``, same name and type: LongAttn's
``ds`` and per-head arrays, ``score`` and the ProLong / loss gain structs of earlier releases);
``MethodPlan.constants`` fills others with one value per run; ``method`` is set to ``name``;
every other column is null.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import types as T

from longattn_spark.reasons import WRONG_LENGTH
from longattn_spark.scorers.batch import Reject, WindowBatch
from longattn_spark.scorers.options import NoOptions, build_options, given_options
from longattn_spark.scorers.settings import RunSettings, run_settings

__all__ = ["IdsOnlyMethod", "MethodPlan", "PlanContext", "Ranking", "Reject", "RunSettings",
           "ScorerMethod", "WindowBatch"]


@dataclass
class PlanContext:
    """What the driver knows when a method plans: the session, the options, the model (as
    located and inspected), the windows to score, and the shared tokenizer check."""

    spark: Any
    cfg: Any                     # ScoreConfig
    options: Any                 # the method's Options, built and checked
    location: Any                # weights.location.ModelLocation (None: no model)
    model: Any                   # what ``inspect`` returned
    sizes: list[int]             # window sizes (n_tokens) in the windows table
    window_tokenizers: list[str]  # tokenizer identities of the windows to score
    #: ``check_tokenizer(scorer_id)``: the model folder's tokenizer against the windows'
    #: (``score.plan.check_tokenizer``); returns the record to store with the scorer
    check_tokenizer: Callable[[str], dict]
    #: one line for the run summary; ``check_tokenizer`` sets it, or the method does
    tokenizer_check: str = ""

    def run_settings(self) -> RunSettings:
        """The executors' device, dtype (``auto`` decided here), threads and model files."""
        return run_settings(self.spark, self.cfg, self.location)


@dataclass(frozen=True)
class Ranking:
    """How a method ranks windows by default: ``rank``, an expression over its components
    (``recipes.expr``; category statistics such as ``z()`` are taken per category), the
    numbers it names (``params``, e.g. alpha), and the selection-table columns it fills
    (``record``: ``ds``, ``variance``, ``z_ds``, ``z_du`` -> expressions)."""

    rank: str
    params: tuple[tuple[str, float], ...] = ()
    record: tuple[tuple[str, str], ...] = ()


@dataclass
class MethodPlan:
    """What a method decided on the driver (``ScorerMethod.plan``)."""

    scorer_id: str
    settings: Hashable           # frozen dataclass with ``run: RunSettings``; sent to executors
    describe: dict               # JSON-able: recorded in longattn.scorer.<scorer_id>
    tokenizer: dict              # {"model", "windows", "check"}: recorded with the scorer
    seq_len: int | None = None   # tokens per scored sequence, when the method has one L
    min_distance: int | None = None
    #: scores-table columns with one value for every row of this run (e.g. seq_len)
    constants: dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> str:
        return self.settings.run.dtype


class ScorerMethod:
    """Base class of a scoring method (module docstring). Subclasses set ``name``,
    ``components`` (and ``Options``, ``out_fields``) and implement ``plan``, ``load``,
    ``prepare`` and ``score_rows``."""

    #: the ``--method`` name and the value of the scores table's ``method`` column
    name: str = ""
    #: one line for ``--help`` and the README
    summary: str = ""
    #: the method's own options: a frozen dataclass of ``scorers.options.option`` fields
    Options: type = NoOptions
    #: the numbers it computes per window (names of the scores table's ``components`` map)
    components: Sequence[str] = ()
    #: components a window may lack (None: not stored, not a reject), e.g. a mean over none
    optional_components: Sequence[str] = ()
    #: typed columns of the scores table it also fills (``tables.schemas.SCORES`` fields)
    out_fields: Sequence[T.StructField] = ()
    #: whether it reads a model (``--model``); a method without one locates and inspects
    #: nothing and its executors load no weights
    needs_model: bool = True
    #: whether its executors run torch (device, threads, CUDA out-of-memory)
    uses_torch: bool = True

    # --- what it owns ---------------------------------------------------------------------

    def options(self, cfg) -> Any:
        """Its ``Options`` from a ``ScoreConfig`` (``--option``, aliases, YAML), checked."""
        return build_options(self.name, self.Options, given_options(cfg))

    def options_from(self, given) -> Any:
        """Its ``Options`` from a mapping (a recipe's ``options``), checked."""
        return build_options(self.name, self.Options, dict(given))

    def ranking(self, normalize: str = "zscore") -> Ranking:
        """The default ranking: its ``score`` component normalized within the category
        (``z``; ``minmax`` with ``normalize="minmax"``), the selection's ``lds`` of earlier
        releases for every method but LongAttn."""
        function = "minmax" if normalize == "minmax" else "z"
        return Ranking(rank=f"{function}(score)",
                       record=(("z_ds", f"{function}(score)"), ("z_du", "0")))

    # --- driver ---------------------------------------------------------------------------

    def validate(self, cfg, options) -> None:
        """One-line ``ConfigError`` for options that do not fit the shared ones (no Spark
        here). Default: nothing to check."""

    def locate(self, spark, cfg, options):
        """The model files this method reads (``weights.location.ModelLocation``): the whole
        model folder by default; None without a model."""
        if not self.needs_model:
            return None
        from longattn_spark.weights.locate import locate_model

        return locate_model(spark, cfg.model)

    def inspect(self, spark, cfg, options, location) -> Any:
        """The model checked and described without loading it; passed to ``plan`` as
        ``ctx.model``. Default: nothing to check."""
        return None

    def plan(self, ctx: PlanContext) -> MethodPlan:
        raise NotImplementedError

    # --- executors --------------------------------------------------------------------------

    def cache_key(self, settings) -> Hashable:
        """What identifies a loaded scorer in the per-worker cache (default: the settings)."""
        return settings

    def load(self, settings, device: str) -> Any:
        raise NotImplementedError

    def prepare(self, batch: WindowBatch, scorer, settings) -> Any:
        """Reject what cannot be scored; return what ``score_rows`` needs (default: the
        batch itself)."""
        return batch

    def score_rows(self, prepared, rows: list[int], scorer, settings) -> list[dict]:
        raise NotImplementedError

    def run_info(self, scorer) -> tuple[str, str | None]:
        """(kernel, note) of what the scorer ran (default: its ``kernel`` attribute or
        "torch", and its ``kernel_note`` when set)."""
        return (getattr(scorer, "kernel", "torch") or "torch",
                getattr(scorer, "kernel_note", None) or None)


class IdsOnlyMethod(ScorerMethod):
    """Base class of a method computed from the windows' token ids alone (``repetition``,
    ``cohesion``): no model to locate, no tokenizer to check, numpy on the executors' CPU
    cores, every window scored over all of its ids (no BOS, no ``--seq-len``); a window whose
    ids are missing or not ``n_tokens`` of them is a ``wrong_length`` reject. Subclasses set
    ``rank_template``, their default ranking with ``{f}`` for the normalizing function."""

    needs_model = False
    uses_torch = False
    rank_template: str = ""

    def ranking(self, normalize: str = "zscore") -> Ranking:
        rank = self.rank_template.format(f="minmax" if normalize == "minmax" else "z")
        return Ranking(rank=rank, record=(("z_ds", rank), ("z_du", "0")))

    @staticmethod
    def cpu_run() -> RunSettings:
        """The run settings of every task: the CPU, float64, one thread, no model files."""
        return RunSettings(location=None, device="cpu", dtype="float64", allow_pickle=False,
                           threads=1)

    @staticmethod
    def ids_only_tokenizer(ctx: PlanContext) -> dict:
        """The tokenizer record of a method that reads no model: nothing to check."""
        ctx.tokenizer_check = "not needed (no model: the statistics are of the ids)"
        return {"model": None, "windows": sorted(ctx.window_tokenizers), "check": "no_model"}

    def prepare(self, batch: WindowBatch, scorer, settings) -> WindowBatch:
        for i in batch.rows_not_n_tokens().nonzero()[0]:
            batch.reject(int(i), WRONG_LENGTH, f"{batch.lengths[i]} token ids (n_tokens column "
                                               f"{batch.n_tokens[i]})")
        return batch

    def run_info(self, scorer) -> tuple[str, str | None]:
        return "numpy", None
