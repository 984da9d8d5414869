"""What the report's queries return and its renderer reads, and the pure helpers between them
(no Spark): the paper's reference numbers, histograms from bucket counts, the smoke-test
model check, the comparison with the paper and the command that adds the profile."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longattn_spark.config import ReportConfig
from longattn_spark.errors import ConfigError
from longattn_spark.stats import CategoryStats, CategorySummary

CategoryScoreStats = CategoryStats
"""The report's name for the shared per-category statistics (``category_stats.sql``)."""
SelectionCount = CategorySummary
"""The report's name for the shared per-category summary of a selection."""

SMOKE_MARK = "SMOKE-TEST"
DS = "ds"
LOG10_VARIANCE = "log10_variance"
SAMPLE_SEED = 20240601

PAPER_TABLE10: dict[str, dict[str, tuple[float, float, float]]] = {
    "arxiv": {"ds": (0.25, 0.50, 0.43), "variance": (2.2e-7, 1.8e-6, 8.5e-7)},
    "book": {"ds": (0.21, 0.59, 0.40), "variance": (1.6e-7, 4.9e-6, 4.8e-7)},
    "code": {"ds": (0.18, 0.54, 0.39), "variance": (9.7e-8, 2.4e-6, 6.1e-7)},
}
"""Paper Appendix E, Table 10 (LLaMA-3.1-70B, L = 32768, LongABC-32K-Raw): (min, max, mean)
of DS and of the variance (the table's DU_T column) per category."""
PAPER_DS_RANGE = (0.18, 0.59)
PAPER_DS_MEAN = 0.4
PAPER_VARIANCE_RANGE = (1e-7, 5e-6)
PAPER_SEQ_LEN = 32768


@dataclass(frozen=True)
class ReportInputs:
    """The tables of one report, pinned to Delta versions, as names usable in
    ``IDENTIFIER(:param)`` (``*_view``), with the chosen scorer and selection."""

    windows: str
    scores: str
    selection: str
    windows_version: int
    scores_version: int
    selection_version: int | None
    windows_view: str
    scores_view: str
    selection_view: str | None
    scorer_id: str
    scorer_info: Mapping[str, Any]
    scorers: Mapping[str, int]
    selection_id: str | None
    selection_params: Mapping[str, Any]
    selection_built_on: tuple[int | None, int | None] | None
    notes: tuple[str, ...] = ()
    #: the scorer's method: from its record (a plugin as asked for), else the scores' column
    scorer_method: str | None = None

    @property
    def seq_len(self) -> int | None:
        value = self.scorer_info.get("seq_len")
        return int(value) if value is not None else None

    @property
    def min_distance(self) -> int | None:
        value = self.scorer_info.get("min_distance")
        return int(value) if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class Histogram:
    """Counts of equal-width bins: ``counts[i]`` values in ``[edges[i], edges[i + 1])``."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class LdsHistogram:
    """LDS bins of one category, split into kept and left-out windows."""

    edges: tuple[float, ...]
    selected: tuple[int, ...]
    rest: tuple[int, ...]


@dataclass(frozen=True)
class SamplePoint:
    category: str | None
    ds: float
    variance: float
    selected: bool


@dataclass(frozen=True)
class WindowSnippet:
    """A top or bottom window with the start of its text (or ids without a tokenizer)."""

    side: str
    rank: int
    window_id: str
    category: str | None
    lds: float
    ds: float | None        # recorded by the recipe (LongAttn's), else None
    variance: float | None
    selected: bool
    n_tokens: int | None
    doc_id: str | None
    window_index: int | None
    token_start: int | None
    head_ids: tuple[int, ...]
    text: str | None
    window_tokenizer: str | None = None


@dataclass(frozen=True)
class ComponentStats:
    """One component of the report's scorer in one category (its ``components`` map)."""

    category: str | None
    component: str
    n: int
    mean: float | None
    sd: float | None
    min: float | None
    max: float | None


@dataclass(frozen=True)
class ProfileResult:
    """The attention-distance profile of one window."""

    window_id: str
    category: str | None
    model: str
    seq_len: int
    min_distance: int
    edges: tuple[int, ...]
    mass: tuple[float, ...]
    mass_beyond_k: float
    stored_ds: float | None
    spacing: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportData:
    """Everything the HTML renderer needs; built by ``collect_report_data``."""

    inputs: ReportInputs
    generated_at: str
    smoke_model: str | None
    stats: tuple[CategoryStats, ...]
    histograms: Mapping[str, Mapping[str, Histogram]]
    counts: tuple[CategorySummary, ...] = ()
    lds: Mapping[str, LdsHistogram] = field(default_factory=dict)
    sample: tuple[SamplePoint, ...] = ()
    top: tuple[WindowSnippet, ...] = ()
    bottom: tuple[WindowSnippet, ...] = ()
    snippet_note: str = ""
    profile: ProfileResult | None = None
    profile_howto: str = ""
    bins: int = 40
    sample_points: int = 2000
    snippet_tokens: int = 300
    profile_window_id: str | None = None
    comparison: Any = None                       # compare.Comparison with a second scorer
    comparison_snippets: Mapping[str, str] = field(default_factory=dict)
    #: probe.report.ProbeSection per table of --probe T1,T2,... (in that order)
    probes: tuple[Any, ...] = ()
    #: not probed: the command that probes the scorer and the report command that shows it
    probe_howto: tuple[str, str] | None = None
    #: per category and component of the scorer: count, mean, sd, min, max
    components: tuple[ComponentStats, ...] = ()

    @property
    def probe(self) -> Any:
        """The first probe section (the one of a single ``--probe T``), or None."""
        return self.probes[0] if self.probes else None


def histogram_range(lo: float | None, hi: float | None) -> tuple[float, float]:
    """Bin range for values in [lo, hi]; a single value gets a small range around it."""
    if lo is None or hi is None:
        return (0.0, 1.0)
    if hi > lo:
        return (float(lo), float(hi))
    pad = max(abs(float(lo)) * 0.05, 1e-9)
    return (float(lo) - pad, float(lo) + pad)


def histogram_from_buckets(lo: float, hi: float, bins: int,
                           buckets: Iterable[tuple[int, int]]) -> Histogram:
    """A histogram from ``(bucket, count)`` pairs with 1-based buckets (``width_bucket``)."""
    counts = [0] * bins
    for bucket, n in buckets:
        counts[min(max(int(bucket), 1), bins) - 1] += int(n)
    width = (hi - lo) / bins
    edges = tuple(lo + i * width for i in range(bins)) + (hi,)
    return Histogram(edges, tuple(counts))


def is_smoke_test_model(path: str | None) -> bool:
    """True when ``path`` is a local model folder whose README.md says SMOKE-TEST (written by
    ``longattn_spark.demo.smoke_model``)."""
    if not path:
        return False
    readme = Path(str(path)).expanduser() / "README.md"
    try:
        return SMOKE_MARK in readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def first_smoke_model(paths: Iterable[str | None]) -> str | None:
    return next((p for p in paths if is_smoke_test_model(p)), None)


def parse_scorer_property(properties: Mapping[str, str], scorer_id: str) -> dict[str, Any]:
    """The JSON the score job stores in the table property ``longattn.scorer.<scorer_id>``
    (empty when missing or unreadable)."""
    text = properties.get(f"longattn.scorer.{scorer_id}")
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def paper_comparison_note(total: CategoryStats | None, seq_len: int | None) -> str:
    """One paragraph comparing the overall DS and variance with the paper's Table 10."""
    paper = (f"Paper, Appendix E Table 10 (LLaMA-3.1-70B, L = {PAPER_SEQ_LEN:,}): DS between "
             f"{PAPER_DS_RANGE[0]:g} and {PAPER_DS_RANGE[1]:g} (mean about {PAPER_DS_MEAN:g}), "
             f"variance between {PAPER_VARIANCE_RANGE[0]:.0e} and "
             f"{PAPER_VARIANCE_RANGE[1]:.0e}.")
    if total is None or total.mean_ds is None:
        return paper + " This table has no finite scores to compare."
    length = f"L = {seq_len:,}" if seq_len else "L unknown"
    here = (f" Here ({length}): DS between {total.min_ds:.3g} and {total.max_ds:.3g} (mean "
            f"{total.mean_ds:.3g}), variance between {total.min_var:.2e} and "
            f"{total.max_var:.2e}.")
    ds_inside = PAPER_DS_RANGE[0] <= total.min_ds and total.max_ds <= PAPER_DS_RANGE[1]
    var_inside = (PAPER_VARIANCE_RANGE[0] <= total.min_var
                  and total.max_var <= PAPER_VARIANCE_RANGE[1])
    verdict = (f" DS is {'inside' if ds_inside else 'outside'} the paper's range and the "
               f"variance {'inside' if var_inside else 'outside'} it.")
    caveat = ""
    if seq_len and seq_len != PAPER_SEQ_LEN:
        caveat = (" The variance is not comparable across sequence lengths: it is the variance "
                  "of an L×L matrix divided by L² − 1, so its scale changes strongly with L. DS "
                  "depends on the model and on k = L/4 as well.")
    return paper + here + verdict + caveat


def select_config_of(params: Mapping[str, Any], **changes: Any):
    """A ``SelectConfig`` with a stored selection's parameters (its ``params`` JSON), then
    ``changes`` (e.g. ``alpha=1.0``): to recompute or vary a selection."""
    import dataclasses

    from longattn_spark.config import SelectConfig

    mix = params.get("mix") or {}
    values = {
        "method": params.get("method") or "lds",
        "normalize": params.get("normalize") or "zscore",
        "alpha": float(params.get("alpha", 0.5)),
        "keep_fraction": float(params.get("keep_fraction") or 0.0),
        "token_budget": int(params.get("token_budget") or 0),
        "mix": ",".join(f"{k}={v}" for k, v in sorted(mix.items())),
        "min_lds": float("nan") if params.get("min_lds") is None else float(params["min_lds"]),
        "seed": int(params.get("seed") or 0),
        "exact": bool(params.get("exact", False)),
        "accuracy": int(params.get("accuracy") or 10000),
    }
    return dataclasses.replace(SelectConfig(**values), **changes)


def profile_howto_command(inputs: ReportInputs, cfg: ReportConfig, window_id: str | None
                          ) -> str:
    """The exact command that adds the attention-distance profile to this report."""
    model = inputs.scorer_info.get("model") or inputs.scorer_info.get("model_path") \
        or "/path/to/model-folder"
    parts = ["longattn-spark", "report", "--windows", inputs.windows, "--scores",
             inputs.scores, "--selection", inputs.selection, "--output", cfg.output,
             "--scorer-id", inputs.scorer_id, "--model", str(model)]
    if window_id:
        parts += ["--profile-window-id", window_id]
    if cfg.tokenizer:
        parts += ["--tokenizer", cfg.tokenizer]
    return " ".join(shlex.quote(p) for p in parts)


def version_notes(built_on: tuple[int | None, int | None], windows_version: int,
                   scores_version: int) -> list[str]:
    notes = []
    if built_on[0] is not None and built_on[0] != windows_version:
        notes.append(f"The selection was built on windows version {built_on[0]}; the table is "
                     f"now at version {windows_version}.")
    if built_on[1] is not None and built_on[1] != scores_version:
        notes.append(f"The selection was built on scores version {built_on[1]}; the table is "
                     f"now at version {scores_version}.")
    return notes


def json_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def snippet_note(identity: str | None, source: str | None, window_tokenizers: Iterable[str]
                 ) -> str:
    """What the snippets show, and a warning when the tokenizer is not the ingest one."""
    if identity is None:
        return ("No tokenizer given: the snippets show token ids. Pass --tokenizer FOLDER (a "
                "folder with tokenizer.json) to see text.")
    used = sorted({t for t in window_tokenizers if t})
    if used and identity not in used:
        return (f"Decoded with {source} ({identity}), but the windows were tokenized with "
                f"{', '.join(used)}: the text may be wrong.")
    return f"Decoded with {source} ({identity})."


def probe_tables(text: str) -> list[str]:
    """The tables of ``report --probe T1,T2,...`` (one table: a list of one)."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def validate_report_config(cfg: ReportConfig) -> None:
    """Cheap checks before Spark starts; messages name the option."""
    if not cfg.output:
        raise ConfigError("--output is required: the HTML file to write")
    for name, minimum in (("bins", 2), ("profile_buckets", 1), ("top_windows", 0),
                          ("snippet_tokens", 0), ("sample_points", 1)):
        if getattr(cfg, name) < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {minimum}, got "
                              f"{getattr(cfg, name)}")
    if cfg.profile_spacing not in ("log", "linear"):
        raise ConfigError(f"--profile-spacing must be log or linear, got "
                          f"{cfg.profile_spacing!r}")
    tables = probe_tables(cfg.probe)
    if cfg.probe and (len(tables) != cfg.probe.count(",") + 1 or len(set(tables)) < len(tables)):
        raise ConfigError(f"--probe {cfg.probe!r}: give probe tables separated by commas, "
                          "each once")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"--device {cfg.device!r}: use auto, cpu, cuda or cuda:N")
