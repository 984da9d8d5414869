"""The HTML report on real local Spark and Delta tables, and the attention-distance profile
against a naive full-matrix computation.

Tables: windows of real tokenized text written with the schema of ``longattn_spark.tables.schemas``,
scored by the real score job (a tiny random smoke-test model) and selected by the real
selection, for the main cases; rows written with the schemas for a scores table of two
real-looking (non-smoke) scorers. Expected numbers are computed here with pandas from the
tables' rows, independently of the report's SQL.
"""

from __future__ import annotations

import html
import json
import math
import re
import sysconfig
from dataclasses import dataclass
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from longattn_spark import cli
from longattn_spark.config import ReportConfig, ScoreConfig, SelectConfig
from longattn_spark.errors import ConfigError
from longattn_spark.report import (
    build_report,
    resolve_report_inputs,
    score_histograms,
    score_stats,
    window_profile,
)
from longattn_spark.score.job import score_windows
from longattn_spark.scorers.longattn.attention_sums import ds_and_variance, tail_attention_sums
from longattn_spark.scorers.longattn.profile import (
    attention_distance_profile,
    distance_bucket_edges,
    mass_from,
)
from longattn_spark.select import select_options, select_windows
from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.tables.refs import TableRef
from longattn_spark.tables.schemas import SCORES, WINDOWS
from longattn_spark.tables.writes import ensure_table, set_properties
from longattn_spark.tokenizer import load_tokenizer_spec

from helpers import lds_reference

W = 128
DOCS = {"arxiv": ["argparse.py", "difflib.py"], "book": ["textwrap.py", "csv.py"],
        "code": ["heapq.py", "shlex.py"]}
PNG = "data:image/png;base64,"
SECTIONS = ("Inputs", "DS and variance per category", "Compared with the paper",
            "LDS and the selection cut", "Windows and tokens selected per category",
            "Top and bottom windows by LDS", "Attention-distance profile",
            "How this report was computed")


# ------------------------------------------------------------------------------------------
# The attention-distance profile (pure torch)
# ------------------------------------------------------------------------------------------

def naive_profile(q: torch.Tensor, k: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Full L×L softmax per head in float64, masses summed per distance bucket."""
    q, k = q.double(), k.double()
    batch, q_heads, seq_len, head_dim = q.shape
    keys = k.repeat_interleave(q_heads // k.shape[1], dim=1)
    logits = q @ keys.transpose(-1, -2) / math.sqrt(head_dim)
    distance = torch.arange(seq_len)[:, None] - torch.arange(seq_len)[None, :]
    p = logits.masked_fill(distance < 0, float("-inf")).softmax(dim=-1)
    mass = [p[..., (distance >= a) & (distance < b)].sum() for a, b in pairwise(edges)]
    return torch.stack(mass) / (batch * q_heads * seq_len)


@pytest.mark.parametrize("shape,spacing,block_rows", [
    ((1, 4, 97, 16, 2), "log", 7),        # GQA, ragged last block
    ((2, 3, 64, 8, 3), "linear", 64),     # batch of two, MHA, one block
    ((1, 8, 130, 32, 1), "log", None),    # MQA, default block size
])
def test_profile_matches_the_naive_full_matrix(shape, spacing, block_rows):
    batch, q_heads, seq_len, head_dim, kv_heads = shape
    gen = torch.Generator().manual_seed(seq_len)
    q = torch.randn(batch, q_heads, seq_len, head_dim, generator=gen) * 1.5
    k = torch.randn(batch, kv_heads, seq_len, head_dim, generator=gen) * 1.5
    k_min = seq_len // 4
    profile = attention_distance_profile(q, k, 12, spacing=spacing, extra_edges=(k_min,),
                                         block_rows=block_rows)
    assert profile.mass.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(profile.mass >= 0)
    expected = naive_profile(q, k, profile.edges)
    assert torch.allclose(profile.mass, expected, atol=1e-5, rtol=0)
    # With k among the edges, the mass at distance >= k is the DS of the scorer's math.
    sum_p, sum_p2 = tail_attention_sums(q, k, k_min)
    ds_heads, _ = ds_and_variance(sum_p, sum_p2, seq_len)
    assert mass_from(profile, k_min) == pytest.approx(ds_heads.mean().item(), abs=1e-5)


def test_profile_accepts_one_window_without_batch_dimension_and_low_precision():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(4, 50, 8, generator=gen)
    k = torch.randn(2, 50, 8, generator=gen)
    full = attention_distance_profile(q, k, 6)
    half = attention_distance_profile(q.bfloat16(), k.bfloat16(), 6)
    assert full.mass.shape == half.mass.shape
    assert torch.allclose(full.mass, naive_profile(q[None], k[None], full.edges), atol=1e-5)
    assert torch.allclose(full.mass, half.mass, atol=2e-2)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        attention_distance_profile(torch.randn(3, 10, 4), torch.randn(2, 10, 4))


@pytest.mark.parametrize("seq_len,n,spacing", [(1024, 24, "log"), (100, 7, "linear"),
                                               (8, 30, "log"), (32768, 24, "log")])
def test_bucket_edges_cover_every_distance_once(seq_len, n, spacing):
    k_min = seq_len // 4
    edges = distance_bucket_edges(seq_len, n, spacing, extra_edges=(k_min,))
    assert edges[0] == 0 and edges[-1] == seq_len
    assert torch.all(edges[1:] > edges[:-1])
    assert k_min in edges.tolist()
    assert len(edges) - 1 <= n + 1


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pipeline:
    windows: str
    scores: str
    selection: str
    model: Path
    selection_id: str
    root: Path


@pytest.fixture(scope="module")
def pipeline(spark, tmp_path_factory, llama3_tokenizer_dir) -> Pipeline:
    """Windows of real tokenized text (standard-library sources cut into W-token pieces,
    written with the WINDOWS schema), then the real score job with a random smoke-test model
    and the real selection, as the demo runs them."""
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("report")
    spec = load_tokenizer_spec(llama3_tokenizer_dir)
    tokenizer = Tokenizer.from_file(str(llama3_tokenizer_dir / "tokenizer.json"))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for category, names in DOCS.items():
        for name in names:
            ids = tokenizer.encode((stdlib / name).read_text()[:9000]).ids
            for index, start in enumerate(range(0, len(ids) - W + 1, W)):
                rows.append({"window_id": f"{name}#{start}", "doc_id": name,
                             "category": category, "window_index": index,
                             "token_start": start, "n_tokens": W,
                             "input_ids": ids[start:start + W], "tokenizer": spec.identity})
    windows, scores, selection = (str(root / n) for n in ("windows", "scores", "selection"))
    write_rows(spark, windows, WINDOWS, rows)
    # 12 query heads: the probe's per-head AUC table is wider than a printed page
    model = write_smoke_test_model(root / "model", hidden_size=96, num_attention_heads=12,
                                   num_key_value_heads=2, num_hidden_layers=1,
                                   intermediate_size=64, dtype="float32")
    score_windows(spark, ScoreConfig(windows=windows, model=str(model), table=scores,
                                     device="cpu"), progress=False)
    result = select_windows(spark, select_options(SelectConfig(keep_fraction=0.5)),
                            TableRef(windows), TableRef(scores), TableRef(selection))
    return Pipeline(windows, scores, selection, model, result.selection_id, root)


def write_rows(spark, path: str, spec, rows: list[dict]) -> str:
    ref = TableRef(path)
    ensure_table(spark, ref, spec)
    spark.createDataFrame([tuple(r.get(n) for n in spec.column_names) for r in rows],
                          spec.schema).write.format("delta").mode("append").save(ref.location)
    return path


def rows_frame(spark, table: str) -> pd.DataFrame:
    df = TableRef(table).read(spark)
    return df.drop(*[c for c in ("input_ids", "ds_heads", "var_heads") if c in df.columns]) \
        .toPandas()


class ReportParser(HTMLParser):
    """Collects ``data-value`` cells per table and row, and the ``data-side`` snippets."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self.sides: list[tuple[str, str]] = []
        self._table = self._row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table and "data-category" in a:
            self._row = a["data-category"]
            self.tables.setdefault(self._table, {})[self._row] = {}
        elif tag == "td" and self._row is not None and "data-stat" in a:
            self.tables[self._table][self._row][a["data-stat"]] = a["data-value"]
        elif tag == "div" and "data-side" in a:
            self.sides.append((a["data-side"], a["data-window-id"]))

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = self._row = None


def parse(text: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(text)
    return parser


def value(cell: str) -> float:
    return float(cell)


def expected_stats(scores: pd.DataFrame) -> dict[str, dict[str, float]]:
    finite = scores[np.isfinite(scores["ds"]) & np.isfinite(scores["variance"])]
    out = {}
    for key, part in [*finite.groupby("category"), ("__total__", finite)]:
        out[key] = {"windows": len(scores if key == "__total__"
                                   else scores[scores["category"] == key]),
                    "mean_ds": part["ds"].mean(), "sd_ds": part["ds"].std(ddof=1),
                    "min_ds": part["ds"].min(), "max_ds": part["ds"].max(),
                    "mean_var": part["variance"].mean(), "sd_var": part["variance"].std(ddof=1),
                    "min_var": part["variance"].min(), "max_var": part["variance"].max()}
    return out


def assert_stats_table(parsed: ReportParser, scores: pd.DataFrame) -> None:
    table = parsed.tables["score-stats"]
    expected = expected_stats(scores)
    assert set(table) == set(expected)
    for category, stats in expected.items():
        for name, want in stats.items():
            assert value(table[category][name]) == pytest.approx(want, rel=1e-9, abs=1e-15), \
                (category, name)


def section_text(text: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', text, re.DOTALL)
    assert match, section_id
    return match.group(1)


# ------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_report(spark, pipeline, llama3_tokenizer_dir) -> str:
    path = build_report(spark, ReportConfig(
        windows=pipeline.windows, scores=pipeline.scores, selection=pipeline.selection,
        output=str(pipeline.root / "full" / "report.html"), model=str(pipeline.model),
        tokenizer=str(llama3_tokenizer_dir), device="cpu", top_windows=3))
    return Path(path).read_text()


def test_full_report_has_its_plots_sections_and_banner(full_report):
    # distributions + paper comparison, LDS histograms, counts bars, scatter, profile
    assert full_report.count(PNG) == 6
    for title in SECTIONS:
        assert title in full_report, title
    assert 'id="smoke-test-banner"' in full_report
    assert "SMOKE-TEST MODEL" in full_report
    assert "src=\"http" not in full_report and "<script" not in full_report


def test_full_report_numbers_match_the_tables(spark, pipeline, full_report):
    parsed = parse(full_report)
    assert_stats_table(parsed, rows_frame(spark, pipeline.scores))
    selection = rows_frame(spark, pipeline.selection)
    selection = selection[selection["selection_id"] == pipeline.selection_id]
    counts = parsed.tables["selection-counts"]
    for category, part in selection.groupby("category"):
        kept = part[part["selected"]]
        assert int(counts[category]["selected"]) == len(kept)
        assert int(counts[category]["tokens_selected"]) == int(kept["n_tokens"].sum())
        assert value(counts[category]["cut_lds"]) == pytest.approx(kept["lds"].min())
    ranked = selection.dropna(subset=["lds"]).sort_values(["lds", "window_id"],
                                                          ascending=[False, True])
    tops = [w for side, w in parsed.sides if side == "top"]
    bottoms = [w for side, w in parsed.sides if side == "bottom"]
    assert tops == list(ranked["window_id"][:3])
    assert bottoms == list(ranked.sort_values(["lds", "window_id"])["window_id"][:3])
    assert pipeline.selection_id in full_report


def test_full_report_decodes_snippets_with_the_tokenizer(spark, pipeline, full_report,
                                                         llama3_tokenizer_dir):
    from tokenizers import Tokenizer

    top = parse(full_report).sides[0][1]
    ids = TableRef(pipeline.windows).read(spark).filter(f"window_id = '{top}'") \
        .first()["input_ids"][:300]
    text = Tokenizer.from_file(str(llama3_tokenizer_dir / "tokenizer.json")).decode(ids)
    windows = section_text(full_report, "windows")
    assert html.escape(text[:80], quote=True) in windows
    assert "ids: " not in windows


def test_profile_section_checks_itself_against_the_stored_ds(full_report):
    profile = section_text(full_report, "profile")
    assert PNG in profile
    assert "SMOKE-TEST model" in profile
    numbers = re.search(r"stored DS of this window is ([0-9.]+); the mass at distance ≥ k "
                        r"here is ([0-9.]+)", profile)
    assert numbers, profile[:500]
    assert float(numbers.group(1)) == pytest.approx(float(numbers.group(2)), abs=1e-5)


def test_report_command_without_model_says_how_to_get_the_profile(spark, pipeline, capsys):
    output = pipeline.root / "cli" / "report.html"
    code = cli.run(["report", "--windows", pipeline.windows, "--scores", pipeline.scores,
                    "--selection", pipeline.selection, "--output", str(output),
                    "--top-windows", "2", "--bins", "20"])
    assert code == 0, capsys.readouterr().err
    text = output.read_text()
    assert text.count(PNG) == 5
    assert 'id="smoke-test-banner"' in text
    command = re.search(r'<pre id="profile-command">(.*?)</pre>', text, re.DOTALL).group(1)
    assert command.startswith("longattn-spark report --windows ")
    assert f"--model {pipeline.model}" in command
    assert "ids: " in section_text(text, "windows")
    assert "No tokenizer given" in text
    assert str(output.resolve()) in capsys.readouterr().out


def test_histograms_counted_in_spark_match_numpy(spark, pipeline):
    inputs = resolve_report_inputs(spark, ReportConfig(
        windows=pipeline.windows, scores=pipeline.scores, selection=pipeline.selection))
    stats = score_stats(spark, inputs.scores_view, inputs.scorer_id)
    hists = score_histograms(spark, inputs.scores_view, inputs.scorer_id, stats, bins=15)
    scores = rows_frame(spark, pipeline.scores)
    for category, part in scores.groupby("category"):
        for measure, values in (("ds", part["ds"]), ("log10_variance",
                                                     np.log10(part["variance"]))):
            h = hists[category][measure]
            counts, _ = np.histogram(values, bins=np.array(h.edges))
            assert list(h.counts) == list(counts), (category, measure)


def test_unknown_selection_or_profile_window_is_a_config_error(spark, pipeline):
    base = {"windows": pipeline.windows, "scores": pipeline.scores,
            "selection": pipeline.selection}
    with pytest.raises(ConfigError, match=f"--selection-id 'nope'.*{pipeline.selection_id}"):
        resolve_report_inputs(spark, ReportConfig(**base, selection_id="nope"))
    cfg = ReportConfig(**base, model=str(pipeline.model), device="cpu")
    inputs = resolve_report_inputs(spark, cfg)
    with pytest.raises(ConfigError, match="--profile-window-id 'missing'"):
        window_profile(spark, inputs, cfg, "missing")


# ------------------------------------------------------------------------------------------
# Two non-smoke scorers, no selection table: rows written with the table schemas
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_scorers(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("two_scorers")
    real_model = root / "llama-3.1-8b"
    real_model.mkdir()
    (real_model / "README.md").write_text("# Llama 3.1 8B\n")
    rng = np.random.default_rng(11)
    windows, scores = [], []
    for category, size in (("arxiv", 30), ("book", 20), ("web", 25)):
        for i in range(size):
            wid = f"{category}-{i:03d}"
            windows.append({"window_id": wid, "doc_id": f"doc-{wid}", "category": category,
                            "window_index": 0, "token_start": 0, "n_tokens": 64,
                            "input_ids": [int(x) for x in rng.integers(0, 1000, 64)]})
            for scorer in ("l0-aaa", "l0-bbb"):
                scores.append({"window_id": wid, "scorer_id": scorer, "category": category,
                               "ds": float(rng.uniform(0.2, 0.6)),
                               "variance": float(10 ** rng.uniform(-7, -5.5)),
                               "seq_len": 64, "min_distance": 16, "model": str(real_model)})
    scores[0]["ds"] = float("nan")
    scores[7]["variance"] = None
    tables = {name: write_rows(spark, str(root / name), spec, rows)
              for name, spec, rows in (("windows", WINDOWS, windows), ("scores", SCORES, scores))}
    set_properties(spark, TableRef(tables["scores"]), {"longattn.scorer.l0-aaa": json.dumps(
        {"scorer_id": "l0-aaa", "model": str(real_model), "seq_len": 64, "min_distance": 16})})
    return tables["windows"], tables["scores"], str(root / "no_selection"), root


def test_several_scorers_need_a_scorer_id_and_the_error_lists_them(spark, two_scorers):
    windows, scores, selection, _ = two_scorers
    with pytest.raises(ConfigError, match=r"--scorer-id.*l0-aaa \(75 windows\).*l0-bbb"):
        resolve_report_inputs(spark, ReportConfig(windows=windows, scores=scores,
                                                  selection=selection))
    with pytest.raises(ConfigError, match="--scorer-id 'l0-ccc'"):
        resolve_report_inputs(spark, ReportConfig(windows=windows, scores=scores,
                                                  selection=selection, scorer_id="l0-ccc"))


def test_report_of_a_real_model_without_selection(spark, two_scorers):
    windows, scores, selection, root = two_scorers
    path = build_report(spark, ReportConfig(windows=windows, scores=scores, selection=selection,
                                            scorer_id="l0-aaa", output=str(root / "r.html")))
    text = Path(path).read_text()
    assert "smoke-test-banner" not in text and "SMOKE-TEST" not in text
    # distributions, the comparison with the paper, and the two scorers' scatter
    assert text.count(PNG) == 3
    parsed = parse(text)
    table = rows_frame(spark, scores)
    mine = table[table["scorer_id"] == "l0-aaa"]
    assert_stats_table(parsed, mine)
    assert parsed.tables["score-stats"]["arxiv"]["not_finite"] == "1"
    assert parsed.tables["score-stats"]["__total__"]["not_finite"] == "1"
    assert "No selection table at" in section_text(text, "selection")
    assert "l0-bbb" in section_text(text, "inputs")
    assert "--scorer-id l0-aaa" in section_text(text, "profile")
    # two scorers in the table: the comparison section, with pandas' Spearman per category
    comparison = section_text(text, "comparison")
    assert "Two scorers compared" in comparison and "l0-bbb" in comparison
    values = {}
    for scorer, frame in table.groupby("scorer_id"):
        frame = frame[np.isfinite(frame.ds.astype(float)) & np.isfinite(
            frame.variance.astype(float))].copy()
        frame["lds"] = lds_reference(frame)
        values[scorer] = frame.set_index("window_id")[["category", "lds"]]
    both = values["l0-aaa"].join(values["l0-bbb"].lds.rename("lds_b"), how="inner")
    for category, group in both.groupby("category"):
        expected = group.lds.rank().corr(group.lds_b.rank())
        cell = re.search(rf'<tr data-category="{category}">.*?data-stat="spearman" '
                         r'data-value="([^"]+)"', comparison)
        assert float(cell.group(1)) == pytest.approx(expected, rel=1e-9), category


# ------------------------------------------------------------------------------------------
# The summary box's parts (pure)
# ------------------------------------------------------------------------------------------

def test_selection_and_probe_labels_name_the_recipe_else_the_scorer_method():
    from longattn_spark.report.data import ReportInputs
    from longattn_spark.report.summary import probe_label, selection_label

    def inputs(params, method="longattn", selection_id="sel-1"):
        return ReportInputs("w", "s", "x", 1, 1, 1, "w", "s", "x", "l0-abc", {}, {"l0-abc": 1},
                            selection_id, params, (1, 1), scorer_method=method)

    assert selection_label(inputs({"method": "lds"})) == "longattn (LDS)"
    assert selection_label(inputs({"method": "lds", "normalize": "minmax"})) == \
        "longattn (LDS, minmax)"
    assert selection_label(inputs({"method": "lds"}, "prolong")) == "prolong (z(score))"
    assert selection_label(inputs({"method": "lds"}, None)) == "longattn (LDS)"
    assert selection_label(inputs({}, "lossgain", None)) == "lossgain (z(score))"
    assert selection_label(inputs({"method": "random"})) == "random baseline"
    recipe = {"name": "far-code", "sha256": "ab" * 32, "text": "rank: z(ds)"}
    assert selection_label(inputs({"method": "lds", "recipe": recipe})) == "recipe far-code"
    assert selection_label(inputs({"recipe": {"sha256": "cd"}})) == "longattn (LDS)"
    assert probe_label({"method": "longattn"}) == "longattn (LDS)"
    assert probe_label({"method": "probe_scorers:ORACLE"}) == "probe_scorers:ORACLE (z(score))"
    assert probe_label({"method": "longattn", "recipe": {"name": "r1", "sha256": "ef"}}) == \
        "recipe r1"


def test_verdict_status_agrees_with_the_verdict_line():
    """The colour of a summary cell (its status) says what the verdict's words say."""
    from longattn_spark.probe.auc import AucResult
    from longattn_spark.probe.report import verdict_status, verdict_words
    from longattn_spark.probe.results import KindResult

    starts = {"separates": "separates natural text from splice controls (",
              "weak": "separates natural text from splice controls only weakly",
              "no": "does not separate", "skipped": "splice: skipped"}
    seen = set()
    for auc, lo, hi in [(0.9, 0.8, 0.97), (0.6, 0.51, 0.7), (0.6, 0.5, 0.7), (0.65, 0.45, 0.8),
                        (0.599, 0.52, 0.68), (0.3, 0.2, 0.45), (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)]:
        r = KindResult("c", "splice", 5, 5, AucResult(auc, lo, hi, 5, 5))
        status = verdict_status(r)
        seen.add(status)
        assert r.verdict.startswith(starts[status]), (auc, lo, r.verdict)
        assert r.verdict.startswith(verdict_words(status).split(" only")[0])
    skipped = KindResult("c", "splice", 5, 0, skipped="too few documents")
    assert verdict_status(skipped) == "skipped" and skipped.verdict.startswith(starts["skipped"])
    assert seen == {"separates", "weak", "no"}


def test_several_probe_tables_are_comma_separated_each_once():
    from longattn_spark.report.data import probe_tables, validate_report_config

    assert probe_tables("/a/probe") == ["/a/probe"]
    assert probe_tables("/a/p1, /a/p2") == ["/a/p1", "/a/p2"]
    assert probe_tables("") == []
    validate_report_config(ReportConfig(output="r.html", probe="/a/p1,/a/p2"))
    for bad in ("/a/p1,,/a/p2", "/a/p1,/a/p1", "/a/p1,"):
        with pytest.raises(ConfigError, match="--probe"):
            validate_report_config(ReportConfig(output="r.html", probe=bad))


# ------------------------------------------------------------------------------------------
# In a real browser: the system's headless Chromium (Playwright) on the pipeline's reports
# ------------------------------------------------------------------------------------------

ORACLE_RECIPE = {"name": "oracle-kinds", "sha256": "0f" * 32}
STATUS_WORDS = {"separates": "separates", "weak": "separates only weakly",
                "no": "does not separate", "skipped": "skipped"}
PLOTS = ("comparison with Table 10", "DS and variance histograms per category",
         "LDS histograms", "windows and tokens kept", "DS against variance",
         "attention-distance profile")


@dataclass(frozen=True)
class Probed:
    report: Path                 # the report with --probe <the command's table>,<oracle>
    tables: tuple[str, str]
    scorer_ids: tuple[str, str]  # of each probe table's record
    probe_command: str           # as the not-probed report shows them
    report_command: str


def not_probed_report(pipeline: Pipeline) -> Path:
    return pipeline.root / "full" / "report.html"


def summary_command(text: str, pre_id: str) -> str:
    match = re.search(rf'<pre id="{pre_id}">(.*?)</pre>', text, re.DOTALL)
    assert match, pre_id
    return html.unescape(match.group(1))


@pytest.fixture(scope="module")
def probed(spark, pipeline, full_report, llama3_tokenizer_dir) -> Probed:
    """The pipeline probed twice: by the command the not-probed report's summary shows, run
    as shown (the CLI, in this process), and by a scorer that knows each window's kind
    (tests/probe_scorers.py ORACLE: AUC 1) whose probe record names a recipe, as issue 29's
    probes will; then the report of both (``--probe T1,T2``)."""
    import shlex

    from longattn_spark.cli import parse_config
    from longattn_spark.probe.job import PROPERTY, probe_record

    probe_command = summary_command(full_report, "probe-command")
    report_command = summary_command(full_report, "probe-report-command")
    argv = shlex.split(probe_command)
    assert argv[:2] == ["longattn-spark", "probe"]
    assert cli.run(argv[1:]) == 0
    table = parse_config(argv[1:])[1].probe.table
    oracle = str(pipeline.root / "probe_oracle")
    spark.sparkContext.addPyFile(str(Path(__file__).with_name("probe_scorers.py")))
    assert cli.run(["probe", "--windows", pipeline.windows, "--model", str(pipeline.model),
                    "--table", oracle, "--method", "probe_scorers:ORACLE", "--per-category",
                    "4", "--bootstrap", "200", "--device", "cpu"]) == 0
    record = probe_record(spark, TableRef(oracle))
    set_properties(spark, TableRef(oracle), {PROPERTY: json.dumps(
        {**record, "recipe": ORACLE_RECIPE}, sort_keys=True)})
    path = build_report(spark, ReportConfig(
        windows=pipeline.windows, scores=pipeline.scores, selection=pipeline.selection,
        output=str(pipeline.root / "probed" / "report.html"), model=str(pipeline.model),
        tokenizer=str(llama3_tokenizer_dir), device="cpu", top_windows=3,
        probe=f"{table},{oracle}"))
    scorer_ids = tuple(probe_record(spark, TableRef(t))["scorer_id"] for t in (table, oracle))
    return Probed(Path(path), (table, oracle), scorer_ids, probe_command, report_command)


@dataclass
class Rendered:
    page: object
    errors: list[str]
    failed: list[str]
    requests: list[str]


@pytest.fixture
def render(browser):
    """``render(path, width, height)``: the file opened in a fresh page of the session's
    Chromium, recording console errors, page errors, failed requests and every request."""
    contexts = []

    def open_page(path: Path, width: int, height: int) -> Rendered:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        seen = Rendered(page, [], [], [])
        page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: seen.errors.append(str(e)))
        page.on("requestfailed", lambda r: seen.failed.append(f"{r.url[:100]} {r.failure}"))
        page.on("request", lambda r: seen.requests.append(r.url))
        page.goto(path.as_uri(), wait_until="load")
        return seen

    yield open_page
    for context in contexts:
        context.close()


def assert_renders_cleanly(shown: Rendered, path: Path, plots: set[str]) -> None:
    """No console or page error, no failed request, nothing fetched but the file itself, every
    image decoded with its plot's name as alt text, and no horizontal scrolling of the page."""
    page = shown.page
    assert shown.errors == [] and shown.failed == []
    assert {u for u in shown.requests if not u.startswith("data:")} == {path.as_uri()}
    # decoded to the last row: a plot's background is opaque, and a PNG cut short still has
    # its size (from its header) but leaves its missing rows transparent
    images = page.evaluate("""() => [...document.images].map(img => {
        if (!img.complete || !img.naturalWidth) return [img.alt, false, img.naturalWidth, 0];
        const canvas = document.createElement('canvas');
        [canvas.width, canvas.height] = [img.naturalWidth, img.naturalHeight];
        const context = canvas.getContext('2d');
        context.drawImage(img, 0, 0);
        const row = context.getImageData(0, canvas.height - 1, canvas.width, 1).data;
        let opaque = 0;
        for (let i = 3; i < row.length; i += 4) opaque += row[i] === 255;
        return [img.alt, true, img.naturalWidth, opaque]})""")
    assert sorted(alt for alt, *_ in images) == sorted(plots)
    assert all(done and width > 0 and opaque == width for _, done, width, opaque in images), \
        images
    widths = page.evaluate("[document.scrollingElement.scrollWidth, "
                           "document.scrollingElement.clientWidth, window.innerWidth]")
    assert widths[0] <= widths[1] == widths[2], widths


def probe_plots(labels: list[tuple[str, bool]]) -> set[str]:
    out = set()
    for label, has_ds in labels:
        out.add(f"selection score distributions of natural and control windows (probe: {label})")
        if has_ds:
            out.add(f"DS distributions of natural and control windows (probe: {label})")
    return out


def section_aucs(page, anchor: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(category, kind) -> (AUC data-value, interval text) of a probe section's AUC table."""
    rows = page.eval_on_selector_all(
        f"#{anchor}-auc tr[data-kind]", "rows => rows.map(r => [r.dataset.category, "
        "r.dataset.kind, r.querySelector('[data-stat=auc]').dataset.value, "
        "r.children[3].textContent])")
    return {(c, k): (v, interval) for c, k, v, interval in rows}


def test_first_screen_says_what_was_selected_and_each_probes_verdict(browser, render, spark,
                                                                     pipeline, probed, tmp_path):
    shown = render(probed.report, 1280, 800)
    page = shown.page
    page.screenshot(path=str(tmp_path / "probed-1280x800.png"))
    page.screenshot(path=str(tmp_path / "probed-1280-full.png"), full_page=True)
    labels = [("longattn (LDS)", True), (f"recipe {ORACLE_RECIPE['name']}", False)]
    assert_renders_cleanly(shown, probed.report, set(PLOTS) | probe_plots(labels))

    scorer_id = resolve_report_inputs(spark, ReportConfig(
        windows=pipeline.windows, scores=pipeline.scores, selection=pipeline.selection)).scorer_id
    for text in (page.title(), page.inner_text("h1")):
        assert "longattn (LDS)" in text and scorer_id in text, text
    # the summary box and every verdict cell lie in the first screen (top 800 px)
    assert page.evaluate("window.scrollY") == 0
    box = page.locator("#summary").bounding_box()
    # (y was 150-210 px across Chromium builds and their fonts: the heading above may wrap)
    assert box["y"] < 300 and box["height"] > 100
    cells = page.eval_on_selector_all(
        "#summary td.verdict", "els => els.map(e => {const b = e.getBoundingClientRect(); "
        "return {probe: e.closest('[data-probe]').dataset.probe, "
        "category: e.parentElement.dataset.category, kind: e.dataset.kind, "
        "status: e.dataset.status, value: e.dataset.value, text: e.innerText, "
        "bottom: b.bottom, colour: getComputedStyle(e).backgroundColor}})")
    assert len(cells) == 2 * 3 * 5  # probes x categories x kinds
    assert max(c["bottom"] for c in cells) <= 800
    lead = page.inner_text("#summary-lead")
    assert "longattn (LDS)" in lead and scorer_id in lead and "top 50%" in lead
    titles = page.eval_on_selector_all("#summary .probe-title", "els => els.map(e => e.innerText)")
    assert "longattn (LDS)" in titles[0] and probed.scorer_ids[0] in titles[0]
    assert f"recipe {ORACLE_RECIPE['name']}" in titles[1] and ORACLE_RECIPE["sha256"][:12] in \
        titles[1] and probed.scorer_ids[1] == "probe-test-oracle" in titles[1]
    # each cell: the probe section's AUC, and the verdict's status in words and colour
    colours: dict[str, set[str]] = {}
    for c in cells:
        auc, interval = section_aucs(page, c["probe"])[(c["category"], c["kind"])]
        assert c["value"] == auc
        words = c["text"].splitlines()[0]
        assert words == STATUS_WORDS[c["status"]], c
        if c["kind"] == "concat":  # two documents per category: concat needs three
            assert c["status"] == "skipped" and auc == ""
        else:
            lo = float(interval.strip("[]").split(",")[0])
            expected = ("no" if float(auc) < 0.6 else "weak" if lo <= 0.5 else "separates")
            assert c["status"] == expected, c
            assert f"AUC {float(auc):.2f}" in c["text"]
        if c["probe"] == "probe-2" and c["kind"] != "concat":
            assert (c["status"], c["value"]) == ("separates", "1.0")
        colours.setdefault(c["status"], set()).add(c["colour"])
    assert {"separates", "skipped"} <= set(colours) and len(colours) >= 3
    assert all(len(v) == 1 for v in colours.values()), colours
    assert len({next(iter(v)) for v in colours.values()}) == len(colours), colours
    # what was selected: the selection table's rows, counted here with pandas
    selection = rows_frame(spark, pipeline.selection)
    selection = selection[selection["selection_id"] == pipeline.selection_id]
    kept = selection[selection["selected"]]
    table = parse(probed.report.read_text()).tables["summary-selection"]
    for category, part in selection.groupby("category"):
        row = table[category]
        assert (int(row["windows"]), int(row["kept"])) == (len(part), int(part["selected"].sum()))
        tokens = int(kept[kept["category"] == category]["n_tokens"].sum())
        assert int(row["tokens_kept"]) == tokens
        assert float(row["mix"]) == pytest.approx(tokens / kept["n_tokens"].sum(), rel=1e-12)
    assert int(table["__total__"]["kept"]) == len(kept)
    # the links lead to the sections below, the last probe's included
    targets = page.eval_on_selector_all("#summary a[href^='#']",
                                        "els => els.map(e => e.getAttribute('href').slice(1))")
    assert {"inputs", "scores", "selection", "windows", "profile", "probe", "probe-2",
            "method"} <= set(targets)
    assert page.evaluate("ids => ids.every(id => document.getElementById(id) !== null)",
                         targets)
    page.click("#summary nav a[href='#probe-2']")
    page.wait_for_function("window.scrollY > 800")
    assert abs(page.locator("#probe-2").bounding_box()["y"]) < 2


def test_a_phone_renders_it_with_wide_tables_scrolling_in_their_own_box(render, probed,
                                                                        tmp_path):
    shown = render(probed.report, 390, 844)
    shown.page.screenshot(path=str(tmp_path / "probed-390x844.png"))
    shown.page.screenshot(path=str(tmp_path / "probed-390-full.png"), full_page=True)
    labels = [("longattn (LDS)", True), (f"recipe {ORACLE_RECIPE['name']}", False)]
    assert_renders_cleanly(shown, probed.report, set(PLOTS) | probe_plots(labels))
    boxes = shown.page.eval_on_selector_all(
        ".scroll", "els => els.map(e => [e.querySelector('table').id, e.scrollWidth, "
        "e.clientWidth, getComputedStyle(e).overflowX, e.getBoundingClientRect().right])")
    wider = [(table, overflow) for table, inner, outer, overflow, _ in boxes if inner > outer]
    assert {"score-stats", "summary-probe"} <= {table for table, _ in wider}, boxes
    assert {overflow for _, overflow in wider} == {"auto"}, boxes  # scrolled, not cut off
    assert all(right <= 390 for *_, right in boxes), boxes


def test_not_probed_report_says_so_on_its_first_screen_with_the_command(render, pipeline,
                                                                        probed, tmp_path):
    import shlex

    from longattn_spark.cli import parse_config

    path = not_probed_report(pipeline)
    shown = render(path, 1280, 800)
    shown.page.screenshot(path=str(tmp_path / "not-probed-1280x800.png"))
    assert_renders_cleanly(shown, path, set(PLOTS))
    page = shown.page
    assert page.locator("#summary td.verdict").count() == 0
    assert page.inner_text("#not-probed").startswith("Not probed")
    assert page.locator("#probe-report-command").bounding_box()["y"] + \
        page.locator("#probe-report-command").bounding_box()["height"] <= 800
    assert page.inner_text("#probe-command") == probed.probe_command
    # the command, run as shown (the probed fixture), probed this report's scorer
    scorer_id = re.search(r"--scorer-id (\S+)", probed.report_command).group(1)
    assert probed.scorer_ids[0] == scorer_id
    assert scorer_id in page.title() and "longattn (LDS)" in page.title()
    # and the report command is this report's, plus --probe with that table
    _, cfg = parse_config(shlex.split(probed.report_command)[1:])
    assert (cfg.report.windows, cfg.report.scores, cfg.report.selection, cfg.report.output,
            cfg.report.model, cfg.report.probe) == (pipeline.windows, pipeline.scores,
                                                    pipeline.selection, str(path),
                                                    str(pipeline.model), probed.tables[0])


def test_it_prints_to_pdf_on_pages_of_readable_width(render, probed, tmp_path):
    """Print media at the A4 page's printable width (210 mm less two 12 mm margins = 703 CSS
    px): nothing wider than the page, rows and plots kept whole; then Chromium's PDF."""
    shown = render(probed.report, 703, 1000)
    page = shown.page
    page.emulate_media(media="print")
    wide = page.evaluate("""() => {
        const width = document.documentElement.clientWidth;
        return [...document.querySelectorAll('table, img, pre, section, .scroll, .summary')]
            .filter(e => e.getBoundingClientRect().right > width + 0.5
                         || e.scrollWidth > e.clientWidth + 1)
            .map(e => [e.tagName, e.id || e.className, e.getBoundingClientRect().right,
                       e.scrollWidth])}""")
    assert wide == []
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 703
    # numbers are never broken across lines: every number cell is one line of text
    broken = page.evaluate("""() => [...document.querySelectorAll('td[data-stat]')]
        .filter(td => { const r = document.createRange(); r.selectNodeContents(td);
                        return r.getClientRects().length > 1 })
        .map(td => [td.closest('table').id, td.dataset.stat, td.textContent])""")
    assert broken == []
    # 12 heads: the per-head AUCs come as two tables of 8 and 4 heads
    heads = [page.locator(f"#probe-heads{s} tr").first.locator("th").count()
             for s in ("", "-2")]
    assert heads == [2 + 16, 2 + 8]
    avoid = page.evaluate("['tr', 'img', '.win', '#summary'].map(s => "
                          "getComputedStyle(document.querySelector(s)).breakInside)")
    assert avoid == ["avoid"] * 4
    shown_plots = page.eval_on_selector_all("img", "els => els.map(e => e.offsetWidth)")
    assert len(shown_plots) == 9 and min(shown_plots) > 300, shown_plots
    height = page.evaluate("document.scrollingElement.scrollHeight")
    page.screenshot(path=str(tmp_path / "print-media-top.png"))
    pdf = page.pdf(format="A4", print_background=True, prefer_css_page_size=True)
    (tmp_path / "report.pdf").write_bytes(pdf)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", pdf))
    printable = (297 - 24) / 25.4 * 96  # CSS px per page
    assert math.ceil(height / printable) <= pages <= 2 * math.ceil(height / printable) + 2
    # every plot is in it, as an image of the PDF, and its size is that of its plots and text
    assert len(re.findall(rb"/Subtype\s*/Image", pdf)) == len(shown_plots)
    images = sum(len(m) * 3 // 4 for m in re.findall(
        r'src="data:image/png;base64,([^"]+)"', probed.report.read_text()))
    assert images // 2 <= len(pdf) <= 20_000_000, (len(pdf), images)
