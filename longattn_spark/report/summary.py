"""The report's first screen: a summary box saying what was selected (windows, tokens and
share per category), by which recipe or scorer, and each probe's verdict per category and
control kind, or that it was not probed and the command that would probe it.

Pure (no Spark): everything here is folded from what the report has already read, the
selection job's own per-category summary (``ReportData.counts``) and the probe sections'
results (``probe.report.ProbeSection``), so no number is computed twice.

Recipes (issue 29) are optional: a selection made by one carries ``"recipe": {"name",
"sha256", "text"}`` in its ``params`` JSON (the text read back from the selection table's
property by ``select.cut.params_with_recipe_text``), and a probe that ranked by one carries
``"recipe": {"name", "sha256"}`` in its table's ``longattn.probe`` property. Without a recipe,
a selection or a probe is named by its scorer's method, e.g. ``longattn (LDS)``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from longattn_spark.report.data import ReportData, ReportInputs
from longattn_spark.stats import category_label

LONGATTN = "longattn"


def recipe_of(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``recipe`` object of a selection's params or a probe's record, when it names one
    (a method's default ranking, recorded as the recipe of source ``--method NAME``, is named
    by its method instead)."""
    recipe = (record or {}).get("recipe")
    if isinstance(recipe, Mapping) and recipe.get("name") and \
            not str(recipe.get("source") or "").startswith("--method "):
        return dict(recipe)
    return None


def method_label(method: str | None, normalize: str | None = None) -> str:
    """A scorer's method and the value a selection ranks it by: ``longattn (LDS)`` (LongAttn's
    LDS within the category), ``prolong (z(score))`` for any other method."""
    method = method or LONGATTN
    if method == LONGATTN:
        return f"{method} (LDS{', minmax' if normalize == 'minmax' else ''})"
    return f"{method} (z(score))"


def selection_label(inputs: ReportInputs) -> str:
    """What selected the data: the recipe's name, else the random baseline, else the scorer's
    method (the report's label when there is no selection as well)."""
    params = inputs.selection_params or {}
    recipe = recipe_of(params)
    if recipe:
        return f"recipe {recipe['name']}"
    if inputs.selection_id and params.get("method") == "random":
        return "random baseline"
    return method_label(inputs.scorer_method, params.get("normalize"))


def probe_label(record: Mapping[str, Any]) -> str:
    """What a probe ranked by: its recipe's name, else its scorer's method."""
    recipe = recipe_of(record)
    if recipe:
        return f"recipe {recipe['name']}"
    return method_label(record.get("method"))


@dataclass(frozen=True)
class SelectedLine:
    """One category of the selection, or the total (``total`` True, labelled ``all``)."""

    label: str
    windows: int
    kept: int
    tokens: int
    tokens_kept: int
    #: this category's share of all tokens kept (the mix)
    mix: float | None
    total: bool = False

    @property
    def kept_share(self) -> float | None:
        return self.tokens_kept / self.tokens if self.tokens else None


@dataclass(frozen=True)
class VerdictCell:
    category: str
    kind: str
    status: str          # probe.report.VERDICT_STATUSES
    words: str           # the status in words: never colour alone
    verdict: str         # the whole verdict line (probe.auc.verdict)
    auc: float | None
    lo: float | None
    hi: float | None


@dataclass(frozen=True)
class ProbeVerdicts:
    anchor: str          # the id of the probe's section below
    label: str
    recipe_sha256: str | None
    scorer_id: str
    table: str
    kinds: tuple[str, ...]
    rows: tuple[tuple[str, tuple[VerdictCell, ...]], ...]   # (category, cells in kind order)


@dataclass(frozen=True)
class Summary:
    label: str                       # recipe or scorer method, e.g. "longattn (LDS)"
    recipe_sha256: str | None
    scorer_id: str
    selection_id: str | None
    cut: str
    lines: tuple[SelectedLine, ...]  # per category, then the total
    probes: tuple[ProbeVerdicts, ...]
    probe_command: str = ""          # when not probed: the command that probes this scorer
    probe_report_command: str = ""   # ... and the report command that shows it

    @property
    def total(self) -> SelectedLine | None:
        return next((line for line in self.lines if line.total), None)


def probe_anchor(index: int) -> str:
    """The id of the ``index``-th probe section (0: ``probe``, as with one ``--probe``)."""
    return "probe" if index == 0 else f"probe-{index + 1}"


def selection_cut(params: Mapping[str, Any]) -> str:
    """The cut in words: keep-fraction, token budget (with its mix), min-lds."""
    parts = []
    if params.get("keep_fraction"):
        parts.append(f"the top {float(params['keep_fraction']):.0%} of each category")
    if params.get("token_budget"):
        mix = params.get("mix") or {}
        parts.append(f"a budget of {int(params['token_budget']):,} tokens"
                     + (" (mix " + ", ".join(f"{k} {v}" for k, v in sorted(mix.items())) + ")"
                        if mix else ""))
    if params.get("min_lds") is not None:
        parts.append(f"LDS ≥ {params['min_lds']}")
    return " and ".join(parts)


def selected_lines(data: ReportData) -> tuple[SelectedLine, ...]:
    """Per category of the selection job's summary, then the total."""
    counts = data.counts
    all_kept = sum(c.tokens_selected for c in counts)
    lines = [SelectedLine(category_label(c.category), c.windows, c.selected, c.usable_tokens,
                          c.tokens_selected, c.tokens_selected / all_kept if all_kept else None)
             for c in counts]
    if counts:
        lines.append(SelectedLine("all", sum(c.windows for c in counts),
                                  sum(c.selected for c in counts),
                                  sum(c.usable_tokens for c in counts), all_kept,
                                  1.0 if all_kept else None, total=True))
    return tuple(lines)


def probe_verdicts(index: int, section: Any) -> ProbeVerdicts:
    """One probe section's verdicts, per category in the kinds' order."""
    from longattn_spark.probe.report import verdict_status, verdict_words

    record = section.record
    kinds = tuple(record.get("kinds") or ())
    rows = []
    for category, by_kind in section.results.items():
        cells = []
        for kind in kinds:
            r = by_kind.get(kind)
            if r is None:  # probe_results gives every kind; a cell per kind all the same
                cells.append(VerdictCell(category, kind, "skipped", verdict_words("skipped"),
                                         f"{kind}: no result", None, None, None))
                continue
            status = verdict_status(r)
            auc = r.result
            cells.append(VerdictCell(category, kind, status, verdict_words(status), r.verdict,
                                     auc.auc if auc else None, auc.lo if auc else None,
                                     auc.hi if auc else None))
        rows.append((category, tuple(cells)))
    recipe = recipe_of(record)
    return ProbeVerdicts(probe_anchor(index), probe_label(record),
                         recipe.get("sha256") if recipe else None,
                         str(record.get("scorer_id") or ""), section.table, kinds, tuple(rows))


def report_summary(data: ReportData) -> Summary:
    """The summary box of ``data``."""
    inputs = data.inputs
    recipe = recipe_of(inputs.selection_params)
    commands = data.probe_howto or ("", "")
    return Summary(
        label=selection_label(inputs), recipe_sha256=recipe.get("sha256") if recipe else None,
        scorer_id=inputs.scorer_id, selection_id=inputs.selection_id,
        cut=selection_cut(inputs.selection_params) if inputs.selection_id else "",
        lines=selected_lines(data),
        probes=tuple(probe_verdicts(i, p) for i, p in enumerate(data.probes)),
        probe_command=commands[0], probe_report_command=commands[1])


def probe_howto_commands(inputs: ReportInputs, cfg: Any) -> tuple[str, str]:
    """The exact command that probes the report's scorer (same model and every score option
    that changes a score, so the probe's scorer_id is the report's), into ``<scores>_probe``,
    and the report command that then shows it (this report's options plus ``--probe``).

    ``cfg`` is the report's ``ReportConfig``."""
    from longattn_spark.tables.refs import TableRef

    info = inputs.scorer_info
    method = inputs.scorer_method or LONGATTN
    model = info.get("model") or info.get("model_path") or "/path/to/model-folder"
    table = f"{inputs.scores}_probe"
    probe = ["longattn-spark", "probe", "--windows", inputs.windows, "--model", str(model),
             "--table", table]
    if not TableRef(table).is_path:
        probe += ["--staging", "/path/to/a/staging/folder"]
    if method != LONGATTN:
        probe += ["--method", method]
    probe += _score_flags(method, info)
    report = ["longattn-spark", "report", "--windows", inputs.windows, "--scores",
              inputs.scores, "--selection", inputs.selection, "--output", cfg.output,
              "--scorer-id", inputs.scorer_id]
    if inputs.selection_id and cfg.selection_id:
        report += ["--selection-id", inputs.selection_id]
    for flag, value in (("--model", cfg.model), ("--tokenizer", cfg.tokenizer),
                        ("--profile-window-id", cfg.profile_window_id)):
        if value:
            report += [flag, value]
    report += ["--probe", table]
    return _join(probe), _join(report)


def _score_flags(method: str, info: Mapping[str, Any]) -> list[str]:
    """The score flags that reproduce a recorded scorer (defaults left out)."""
    flags: list[str] = []
    requested = info.get("requested") if isinstance(info.get("requested"), Mapping) else {}
    if requested.get("dtype") not in (None, "", "auto"):
        flags += ["--dtype", str(requested["dtype"])]
    seq_len, min_distance = info.get("seq_len"), info.get("min_distance")
    if method in (LONGATTN, "lossgain") and isinstance(seq_len, int):
        flags += ["--seq-len", str(seq_len)]
        if isinstance(min_distance, int) and min_distance != seq_len // 4:
            flags += ["--min-distance", str(min_distance)]
    if method == LONGATTN:
        if info.get("layer"):
            flags += ["--layer", str(info["layer"])]
        if info.get("rope_theta_override"):
            flags += ["--rope-theta", str(info["rope_theta_override"])]
    elif method == "prolong":
        for key in ("segment_size", "pairs", "threshold", "windows_tokenizer"):
            if info.get(key) not in (None, ""):
                flags += ["--" + key.replace("_", "-"), str(info[key])]
    elif method == "lossgain" and info.get("short_context"):
        flags += ["--short-context", str(info["short_context"])]
    return flags


def _join(parts: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(p)) for p in parts)
