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
    model = write_smoke_test_model(root / "model", hidden_size=32, num_attention_heads=4,
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
