"""The one interface every scoring method implements (``longattn-spark score --method M``).

A method is one object (an instance of a ``ScorerMethod`` subclass) that the registry
(``longattn_spark.scorers``) finds by name. The score job (``longattn_spark.score.job``) calls
it in this order and has no other knowledge of it:

Driver, before any Spark job:

1. ``validate(cfg)``: the method's options in ``ScoreConfig`` (one-line ``ConfigError``).
2. ``locate(spark, cfg)``: which model files it needs (``weights.locate.locate_model``:
   every file of a whole causal LM by default, LongAttn's files up to its layer).
3. ``inspect(spark, cfg, location)``: the model checked and described from config.json and
   the weight headers, without loading it (errors: one line, before the windows are read).

Driver, before any task (the windows table is read once for its window sizes and tokenizers):

4. ``plan(ctx)`` -> ``MethodPlan``: the scorer_id (with its fingerprint of the weights), the
   settings the executors get (a frozen, hashable dataclass with a ``run: RunSettings``), the
   description recorded in the table property ``longattn.scorer.<scorer_id>``, the
   tokenizer decision (``ctx.check_tokenizer(scorer_id)`` for the shared check), and the
   constant columns of its rows (e.g. ``seq_len``).

Executors (``scorers.executor``: one mapInArrow function for every method):

5. ``load(settings, device)``: the scorer, built once per Python worker and cached. It should
   have ``device`` (a ``torch.device``) and ``dtype`` (a ``torch.dtype``): every row records
   them.
6. ``prepare(batch, scorer, settings)``: mark the windows it cannot score
   (``batch.reject(i, reason, detail)``, reasons from ``longattn_spark.reasons``) and return
   whatever ``score_rows`` needs (e.g. the ``[N, L]`` id matrix).
7. ``score_rows(prepared, rows, scorer, settings)``: one dict per row of ``rows`` (at most
   ``--batch-size`` of them), keyed by the names of ``out_fields`` (a struct column: a dict),
   or a ``batch.Reject(reason, detail)`` for a window it cannot score after all. CUDA
   running out of memory here becomes one line naming ``--batch-size``; a row whose
   ``finite_columns`` are not finite becomes a ``non_finite_score`` reject.
8. ``run_info(scorer)``: (kernel, note) of what ran, read after each chunk.

Output columns: ``out_fields`` are columns of the scores table (``tables.schemas.SCORES``, same name
and type), e.g. ``score`` and a struct of the method's components; ``MethodPlan.constants``
fills others with one value per run; ``method`` is set to ``name``; every other column is null.
``score`` is what ``select``, ``compare`` and ``probe`` rank by, for every method but LongAttn
(whose rows have ``ds`` and ``variance`` and are ranked by their per-category LDS).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import types as T

from longattn_spark.errors import ConfigError
from longattn_spark.scorers.batch import Reject, WindowBatch
from longattn_spark.scorers.settings import RunSettings, run_settings

__all__ = ["MethodPlan", "PlanContext", "Reject", "RunSettings", "ScorerMethod", "WindowBatch"]


@dataclass
class PlanContext:
    """What the driver knows when a method plans: the session, the options, the model (as
    located and inspected), the windows to score, and the shared tokenizer check."""

    spark: Any
    cfg: Any                     # ScoreConfig
    location: Any                # weights.location.ModelLocation
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
    """Base class of a scoring method (module docstring). Subclasses set ``name`` and
    ``out_fields`` and implement ``plan``, ``load``, ``prepare`` and ``score_rows``."""

    #: the ``--method`` name and the value of the scores table's ``method`` column
    name: str = ""
    #: one line for ``--help`` and the README
    summary: str = ""
    #: the method's columns of the scores table (``tables.schemas.SCORES`` fields)
    out_fields: Sequence[T.StructField] = ()
    #: columns that must be finite for a row to be kept (else a ``non_finite_score`` reject)
    finite_columns: Sequence[str] = ("score",)
    #: whether the executors need the whole model folder (a causal LM) rather than LongAttn's
    #: layer files
    whole_model: bool = True
    #: whether ``--windows-tokenizer`` (decode and re-tokenize the windows) is supported
    retokenizes: bool = False

    # --- driver ---------------------------------------------------------------------------

    def validate(self, cfg) -> None:
        """One-line ``ConfigError`` for options this method cannot use (no Spark here)."""
        if cfg.windows_tokenizer and not self.retokenizes:
            raise ConfigError(f"--windows-tokenizer is for --method prolong; --method "
                              f"{self.name} scores the window's ids and needs the windows' "
                              f"tokenizer in the model")

    def locate(self, spark, cfg):
        """The model files this method reads (``weights.location.ModelLocation``): the whole
        model folder, or (``whole_model`` False) LongAttn's files of layer 0."""
        if not self.whole_model:
            from longattn_spark.scorers.longattn.locate import locate_layers

            return locate_layers(spark, cfg.model)
        from longattn_spark.weights.locate import locate_model

        return locate_model(spark, cfg.model)

    def inspect(self, spark, cfg, location) -> Any:
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

