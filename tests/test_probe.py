"""The probe: controls built as point 2 of issue 19 says (checked row by row from the probe
table against the windows table), AUCs and bootstrap intervals equal to an independent
computation over the same rows, the selection score equal to select's LDS over the natural
sample, re-runs idempotent, and bad input refused with one line."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longattn_spark.config import ProbeConfig, ScoreConfig
from longattn_spark.errors import ConfigError, TableError
from longattn_spark.probe import auc as auc_mod
from longattn_spark.probe.controls import (
    SourceWindow,
    build_controls,
    check_lengths,
    default_block,
    parse_kinds,
)
from longattn_spark.probe.results import probe_results
from longattn_spark.tables.refs import TableRef
from longattn_spark.tables.schemas import PROBE_SCORE_COLUMNS

from helpers import lds_reference

W = 64


# --- pure parts ---------------------------------------------------------------------------

def _windows(n_docs: int, per_doc: int, width: int = W, seed: int = 0) -> list[SourceWindow]:
    rng = np.random.default_rng(seed)
    return [SourceWindow(f"w{d}-{i}", f"doc{d}", rng.integers(0, 50000, width, dtype=np.int32))
            for d in range(n_docs) for i in range(per_doc)]


def test_controls_are_deterministic_and_keep_their_properties():
    windows = _windows(3, 3)
    k = W // 4
    a, b = (build_controls(windows[:4], windows, ("splice", "shuffle", "repeat", "concat"), 7,
                           W, k, default_block(W, k)) for _ in range(2))
    assert [c.input_ids.tolist() for c in a[0]] == [c.input_ids.tolist() for c in b[0]]
    other_seed, _ = build_controls(windows[:4], windows, ("splice",), 8, W, k, 4)
    assert [c.param for c in other_seed] != [c.param for c in a[0] if c.kind == "splice"]
    assert a[1] == {}
    assert all(len(c.input_ids) == W for c in a[0])


def test_kinds_needing_other_documents_are_skipped_with_a_reason():
    one_doc = _windows(1, 4)
    controls, skipped = build_controls(one_doc, one_doc, ("splice", "shuffle", "concat"), 0,
                                       W, 16, 4)
    assert {c.kind for c in controls} == {"shuffle"}
    assert set(skipped) == {"splice", "concat"}
    assert "1 document" in skipped["splice"]


def test_bad_kinds_and_lengths_are_one_line_errors():
    assert parse_kinds("repeat, splice") == ("repeat", "splice")
    with pytest.raises(ConfigError, match="unknown control kind 'reverse'"):
        parse_kinds("splice,reverse")
    with pytest.raises(ConfigError, match="k < L/2"):
        check_lengths(64, 32, 64)
    check_lengths(64, 31, 64)


def _auc_loop(x, y) -> float:
    total = 0.0
    for xi in x:
        for yj in y:
            total += 1.0 if xi > yj else 0.5 if xi == yj else 0.0
    return total / (len(x) * len(y))


def _interval_loop(x, y, seed, replicates):
    """The documented bootstrap, written independently: draws, then a plain AUC per
    replicate and numpy's percentile."""
    rng = np.random.default_rng(seed)
    draws_x = rng.integers(0, len(x), (replicates, len(x)))
    draws_y = rng.integers(0, len(y), (replicates, len(y)))
    aucs = [_auc_loop(np.asarray(x)[i], np.asarray(y)[j]) for i, j in zip(draws_x, draws_y)]
    return tuple(np.percentile(aucs, [2.5, 97.5]))


def test_auc_and_interval_equal_a_plain_computation():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(0.3, 1, 23), 1)   # rounded: ties between and within groups
    y = np.round(rng.normal(0.0, 1, 17), 1)
    got = auc_mod.auc_with_interval(x, y, seed=11, replicates=200)
    assert got.auc == pytest.approx(_auc_loop(x, y), abs=1e-12)
    lo, hi = _interval_loop(x, y, 11, 200)
    assert (got.lo, got.hi) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert auc_mod.auc_with_interval(y, x, 11, 200).auc == pytest.approx(1 - got.auc)
    assert "does not separate natural text from splice controls" in auc_mod.verdict(
        "splice", auc_mod.AucResult(0.55, 0.4, 0.7, 3, 3))
    assert "only weakly" in auc_mod.verdict("splice", auc_mod.AucResult(0.61, 0.47, 0.75, 3, 3))
    assert auc_mod.verdict("splice", auc_mod.AucResult(0.9, 0.8, 0.97, 3, 3)) == (
        "separates natural text from splice controls (AUC 0.900 [0.800, 0.970])")


def test_uniform_head_ds_is_the_definition_and_tends_to_0_403():
    L, k = 40, 10
    P = np.tril(np.ones((L, L))) / np.arange(1, L + 1)[:, None]
    n, j = np.indices((L, L))
    assert auc_mod.uniform_head_ds(L, k) == pytest.approx(P[j <= n - k].sum() / L, abs=1e-12)
    assert auc_mod.uniform_head_ds(32768, 8192) == pytest.approx(0.4034, abs=2e-4)
    assert auc_mod.uniform_head_ds_limit() == pytest.approx(0.75 - math.log(4) / 4)


def test_a_category_with_one_natural_window_is_skipped_not_zero():
    rows = [{"category": "c", "kind": "natural", "selection_score": 1.0, "ds": 0.1,
             "variance": 0.0, "method": "longattn"},
            {"category": "c", "kind": "shuffle", "selection_score": 0.0, "ds": 0.1,
             "variance": 0.0, "method": "longattn"}]
    result = probe_results(rows, ("shuffle", "splice"), {}, 0, PROBE_SCORE_COLUMNS, 100)
    assert result["c"]["shuffle"].result is None
    assert "at least 2 natural" in result["c"]["shuffle"].skipped
    assert result["c"]["shuffle"].as_json()["auc"] is None


# --- the real job -------------------------------------------------------------------------

def tiny_model(path: Path, seed: int = 0) -> Path:
    from longattn_spark.demo.smoke_model import write_smoke_test_model

    return write_smoke_test_model(path, vocab_size=128256, hidden_size=32,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  num_hidden_layers=1, intermediate_size=64, seed=seed,
                                  dtype="float32")


def write_windows(spark, table: str, documents: dict[str, int], per_doc: int = 3,
                  seed: int = 0) -> str:
    """A windows table written directly (no tokenizer needed): ``documents`` is
    {category: number of documents}; every window holds W random token ids."""
    from longattn_spark.tables.schemas import WINDOWS
    from longattn_spark.tables.writes import ensure_table, merge_new_rows

    rng = np.random.default_rng(seed)
    rows = []
    for category, n_docs in documents.items():
        for d in range(n_docs):
            for i in range(per_doc):
                rows.append({
                    "window_id": f"{category}-d{d}-w{i}", "doc_id": f"{category}/doc{d}",
                    "category": category, "window_index": i, "token_start": i * W,
                    "n_tokens": W, "input_ids": rng.integers(0, 120000, W).tolist(),
                    "char_start": None, "char_end": None, "tokenizer": "tok-test",
                    "ingested_at": None, "doc_sha256": f"sha-{category}-{d}"})
    ref = TableRef(table)
    ensure_table(spark, ref, WINDOWS)
    merge_new_rows(spark, ref, WINDOWS, spark.createDataFrame(rows, WINDOWS.schema))
    return table


@pytest.fixture(scope="module")
def probe_inputs(spark, tmp_path_factory):
    """A windows table (code: 4 documents, docs: 2) and a tiny model."""
    root = tmp_path_factory.mktemp("probe")
    windows = write_windows(spark, str(root / "windows"), {"code": 4, "docs": 2})
    return root, windows, tiny_model(root / "model", seed=1)


def configs(root: Path, windows: str, model: Path, name: str = "probe", **probe_overrides):
    probe = dataclasses.replace(ProbeConfig(windows=windows, table=str(root / name),
                                            per_category=6, bootstrap=200), **probe_overrides)
    return probe, ScoreConfig(model=str(model), device="cpu", files_per_batch=4)


@pytest.fixture(scope="module")
def probed(spark, probe_inputs):
    from longattn_spark.probe.job import probe

    root, windows, model = probe_inputs
    probe_cfg, score_cfg = configs(root, windows, model)
    run = probe(spark, probe_cfg, score_cfg, progress=False)
    return run, probe_cfg, score_cfg


def _table_rows(spark, table: str) -> list[dict]:
    return [r.asDict(recursive=True) for r in TableRef(table).read(spark).collect()]


def test_probe_rows_hold_the_controls_of_issue_19(spark, probe_inputs, probed):
    run, probe_cfg, _ = probed
    windows = {r["window_id"]: r for r in _table_rows(spark, probe_inputs[1])}
    rows = _table_rows(spark, probe_cfg.table)
    k, L = run.min_distance, run.seq_len
    assert (L, k) == (W, W // 4)
    kinds = {}
    for row in rows:
        kinds.setdefault((row["category"], row["kind"]), 0)
        kinds[(row["category"], row["kind"])] += 1
        a = windows[row["window_id"]]
        ids, a_ids = row["input_ids"], a["input_ids"]
        assert len(ids) == W and row["category"] == a["category"]
        assert row["scorer_id"] == run.scorer_id and row["probe_id"] == run.probe_id
        assert row["scored_window_id"] == f"{run.probe_id}/{row['kind']}/{row['window_id']}"
        assert row["ds"] is not None and len(row["ds_heads"]) == 4
        others = [windows[w] for w in row["other_window_ids"]]
        assert all(o["category"] == a["category"] for o in others)
        assert all(o["doc_id"] != a["doc_id"] for o in others)
        if row["kind"] == "natural":
            assert ids == a_ids and row["param"] is None and not others
        elif row["kind"] == "splice":
            s = row["param"]
            assert k <= s <= L - k and len(others) == 1
            assert ids[:s] == a_ids[:s] and ids[s:] == others[0]["input_ids"][:W - s]
        elif row["kind"] == "repeat":
            p = row["param"]
            assert k <= p <= L // 2
            assert ids == [a_ids[i % p] for i in range(W)]
        elif row["kind"] == "shuffle":
            b = row["param"]
            assert b < k and W % b == 0
            blocks = [tuple(a_ids[i:i + b]) for i in range(0, W, b)]
            got = [tuple(ids[i:i + b]) for i in range(0, W, b)]
            assert sorted(got) == sorted(blocks) and got != blocks
        elif row["kind"] == "nearrepeat":
            p = row["param"]
            assert k <= p <= L // 2 and ids[:p] == a_ids[:p]
            copies = [ids[i] == a_ids[i % p] for i in range(p, W)]
            assert 0.6 < sum(copies) / len(copies) < 1  # ~15% replaced by tokens of A
            assert set(ids) <= set(a_ids)
        else:
            assert row["kind"] == "concat" and len({o["doc_id"] for o in others}) >= 2
            # every run of tokens comes from another document's window, in pieces < k
            pos, pieces = 0, 0
            while pos < W:
                best = max(_longest_match(ids, pos, o["input_ids"]) for o in others)
                assert best >= 1
                pos, pieces = pos + min(best, k - 1), pieces + 1
            assert pieces >= W // (k - 1)
    assert kinds[("code", "natural")] == 6 and kinds[("code", "concat")] == 6
    assert kinds[("docs", "splice")] == 6 and ("docs", "concat") not in kinds
    assert "concat" in run.skipped["docs"]


def _longest_match(ids: list[int], pos: int, source: list[int]) -> int:
    best = 0
    for start in range(len(source)):
        n = 0
        while pos + n < len(ids) and start + n < len(source) and ids[pos + n] == source[start + n]:
            n += 1
        best = max(best, n)
    return best


def test_aucs_equal_an_independent_computation_over_the_probe_rows(spark, probed, tmp_path):
    from longattn_spark.probe.auc import bootstrap_seed
    from longattn_spark.probe.summary import write_json

    run, probe_cfg, _ = probed
    rows = _table_rows(spark, probe_cfg.table)
    # the selection score is select's LDS with the natural sample's statistics
    frame = pd.DataFrame(rows)[["category", "kind", "ds", "variance", "selection_score"]]
    assert set(frame.category) == {"code", "docs"}
    expected = lds_reference(frame, reference=frame[frame.kind == "natural"])
    for got, lds in zip(frame.selection_score, expected, strict=True):
        assert got == pytest.approx(lds, rel=1e-9, abs=1e-12)
    path = tmp_path / "probe.json"
    write_json(run, str(path))
    written = json.loads(path.read_text())
    assert set(written) == {"code", "docs"}
    assert written["docs"]["concat"]["auc"] is None and written["docs"]["concat"]["skipped"]
    for category, kinds in written.items():
        nat = [r for r in rows if r["category"] == category and r["kind"] == "natural"]
        for kind, got in kinds.items():
            ctl = [r for r in rows if r["category"] == category and r["kind"] == kind]
            if not ctl:
                continue
            assert (got["n_natural"], got["n_control"]) == (len(nat), len(ctl))
            for name, values in (("selection_score", lambda r: r["selection_score"]),
                                 ("ds", lambda r: r["ds"]), ("du", lambda r: -r["variance"]),
                                 ("ds_h2", lambda r: r["ds_heads"][2])):
                x, y = [values(r) for r in nat], [values(r) for r in ctl]
                comp = got["per_component"][name]
                assert comp["auc"] == pytest.approx(_auc_loop(x, y), abs=1e-12)
                lo, hi = _interval_loop(x, y, bootstrap_seed(probe_cfg.seed, category, kind,
                                                             name), probe_cfg.bootstrap)
                assert (comp["lo"], comp["hi"]) == (pytest.approx(lo, abs=1e-12),
                                                    pytest.approx(hi, abs=1e-12))
            assert got["auc"] == got["per_component"]["selection_score"]["auc"]
            assert got["verdict"]


def test_a_rerun_adds_nothing_and_another_probe_is_refused(spark, probe_inputs, probed):
    from longattn_spark.probe.job import probe
    from longattn_spark.probe.plan import staging_location

    run, probe_cfg, score_cfg = probed
    before = TableRef(probe_cfg.table).version(spark)
    again = probe(spark, probe_cfg, score_cfg, progress=False)
    assert again.probe_id == run.probe_id and again.rows_written == 0 and again.scored == 0
    assert TableRef(probe_cfg.table).version(spark) == before
    assert again.results["code"]["splice"].as_json() == run.results["code"]["splice"].as_json()
    other = dataclasses.replace(probe_cfg, seed=1)
    with pytest.raises(TableError, match="holds probe .*use another --table"):
        probe(spark, other, score_cfg, progress=False)
    from longattn_spark.probe.plan import probe_id_for

    from longattn_spark.probe.plan import probe_recipe

    other_id = probe_id_for(other, score_cfg, probe_recipe(other, score_cfg), run.kinds,
                            TableRef(probe_cfg.windows).version(spark))
    assert not Path(staging_location(other, other_id)).exists()


def test_cli_refuses_bad_kinds_and_k_before_spark(capsys, tmp_path):
    from longattn_spark.cli import run as cli_run

    base = ["probe", "--model", str(tmp_path), "--table", str(tmp_path / "p")]
    assert cli_run([*base, "--kinds", "splice,mirror"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown control kind 'mirror'" in err
    assert cli_run([*base, "--seq-len", "64", "--min-distance", "32"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--min-distance 32 >= L/2" in err


def test_sink_share_equals_the_full_attention_matrix():
    import torch

    from longattn_spark.probe.reference import far_attention_sink_share

    torch.manual_seed(0)
    q, k = torch.randn(4, 40, 8) * 2, torch.randn(2, 40, 8) * 2
    L, dist = 40, 10
    logits = torch.einsum("hnd,hjd->hnj", q.double(), k.repeat_interleave(2, 0).double())
    logits = logits / 8 ** 0.5
    n, j = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    P = torch.softmax(logits.masked_fill(j > n, float("-inf")), -1)
    far = P * (j <= n - dist)
    share, per_row = far_attention_sink_share(q, k, dist, sink=4)
    assert share == pytest.approx(float(far[:, :, :4].sum() / far.sum()), rel=1e-5)
    assert per_row == pytest.approx(float(far.sum() / (4 * L)), rel=1e-5)


def test_report_shows_the_probe_section(spark, probe_inputs, probed, tmp_path):
    import html as html_lib
    import re

    from longattn_spark.config import ReportConfig
    from longattn_spark.probe.auc import uniform_head_ds
    from longattn_spark.probe.plan import staging_location
    from longattn_spark.report import build_report

    run, probe_cfg, _ = probed
    staging = staging_location(probe_cfg, run.probe_id)
    path = build_report(spark, ReportConfig(
        windows=f"{staging}/windows", scores=f"{staging}/scores",
        selection=str(tmp_path / "no_selection"), output=str(tmp_path / "r.html"),
        probe=probe_cfg.table, model=str(probe_inputs[2]), device="cpu"))
    text = Path(path).read_text()
    assert 'id="probe"' in text and 'id="probe-heads"' in text
    for category, kinds in run.results.items():
        for kind, r in kinds.items():
            row = re.search(rf'<tr data-category="{category}" data-kind="{kind}">(.*?)</tr>',
                            text).group(1)
            value = re.search(r'data-stat="auc" data-value="([^"]*)"', row).group(1)
            if r.result is None:
                assert value == "" and "skipped" in html_lib.unescape(row)
            else:
                assert float(value) == r.result.auc
                assert html_lib.escape(r.verdict, quote=True) in row
    refs = re.search(r'id="probe-references">(.*?)</table>', text, re.S).group(1)
    values = re.findall(r'data-value="([^"]*)"', refs)
    assert float(values[0]) == uniform_head_ds(run.seq_len, run.min_distance)
    assert 0.0 <= float(values[2]) <= 1.0
    assert text.count("data:image/png;base64,") >= 2


def test_probe_with_the_real_smollm2_model(spark, tmp_path, smollm2_dir):
    """End to end with real weights at W = 256: the structure, and AUCs in [0, 1] equal to
    the plain computation over the probe table's rows (no claim that the score separates)."""
    import sysconfig

    from longattn_spark.config import IngestConfig
    from longattn_spark.ingest import ingest
    from longattn_spark.tokenizer import load_tokenizer_spec
    from longattn_spark.probe.job import probe

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = tmp_path / "docs.jsonl"
    with source.open("w") as f:
        for category, names in (("code", ["argparse.py", "csv.py", "heapq.py"]),
                                ("prose", ["LICENSE.txt", "this.py", "textwrap.py"])):
            for name in names:
                text = (stdlib / name).read_text()[:3500]
                f.write(json.dumps({"id": name, "text": text, "category": category}) + "\n")
    windows = str(tmp_path / "windows")
    ingest(spark, IngestConfig(input=str(source), tokenizer=str(smollm2_dir), window_size=256,
                               table=windows, partitions=2),
           load_tokenizer_spec(smollm2_dir))
    probe_cfg = ProbeConfig(windows=windows, table=str(tmp_path / "probe"), per_category=4,
                            bootstrap=200)
    run = probe(spark, probe_cfg, ScoreConfig(model=str(smollm2_dir), device="cpu"),
                progress=False)
    rows = _table_rows(spark, probe_cfg.table)
    assert run.seq_len == 256 and run.min_distance == 64
    assert all(len(r["input_ids"]) == 256 and len(r["ds_heads"]) == 9 for r in rows)
    for category, kinds in run.results.items():
        nat = [r["selection_score"] for r in rows
               if r["category"] == category and r["kind"] == "natural"]
        for kind, result in kinds.items():
            ctl = [r["selection_score"] for r in rows
                   if r["category"] == category and r["kind"] == kind]
            assert result.result is not None, result.skipped
            assert 0.0 <= result.result.lo <= result.result.auc <= result.result.hi <= 1.0
            assert result.result.auc == pytest.approx(_auc_loop(nat, ctl), abs=1e-12)


@pytest.mark.parametrize("method, expected", [("probe_scorers:ORACLE", 1.0),
                                              ("probe_scorers:CONSTANT", 0.5),
                                              ("probe_scorers:REVERSED", 0.0)])
def test_the_probe_can_fail_and_succeed_through_the_real_job(spark, probe_inputs, method,
                                                             expected, tmp_path):
    """Scorers that know each window's kind (tests/probe_scorers.py, shipped to the
    executors) through the real probe job: AUC 1, 0.5 and 0 for every category and kind
    built, with degenerate intervals, and the JSON of the CLI says the same."""
    from longattn_spark.cli import run as cli_run

    spark.sparkContext.addPyFile(str(Path(__file__).with_name("probe_scorers.py")))
    root, windows, model = probe_inputs
    out = tmp_path / "probe.json"
    table = str(root / f"probe-{method.split(':')[1].lower()}")
    assert cli_run(["probe", "--windows", windows, "--model", str(model), "--table", table,
                    "--method", method, "--per-category", "6", "--bootstrap", "200",
                    "--device", "cpu", "--json", str(out), "--lakehouse",
                    str(root / "lakehouse")]) == 0
    written = json.loads(out.read_text())
    rows = _table_rows(spark, table)
    assert {r["method"] for r in rows} == {method.split(":")[1].lower()}
    built = [(c, k, v) for c, kinds in written.items() for k, v in kinds.items() if v["auc"]
             is not None]
    assert len(built) == 9  # code: 5 kinds; docs: all but concat (skipped)
    for category, kind, v in built:
        assert (v["auc"], v["lo"], v["hi"]) == (expected, expected, expected)
        assert v["per_component"]["score"]["auc"] == expected
        ctl = [r for r in rows if r["category"] == category and r["kind"] == kind]
        assert v["n_control"] == len(ctl) == 6
        verdict = v["verdict"]
        assert ("does not separate" in verdict) == (expected < 0.6)
    assert "concat" in written["docs"]["concat"]["skipped"]
