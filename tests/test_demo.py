"""The README's main command, ``longattn-spark demo``, at a small size with the smoke-test model
and no probe (tests/test_real_model.py runs it with the real model and its probes): corpus ->
smoke-test model -> ingest -> score (the ``recommended`` recipe's two scorers) -> select (by
the recipe) -> export -> report, two documents per category, the demo's own window size. Expected counts come from the corpus file, the reference tokenizer and
Algorithm 1, not from the job."""

from __future__ import annotations

import json
from pathlib import Path
import re

import pytest

from longattn_spark.config import DemoConfig, LongAttnConfig
from longattn_spark.demo import run_demo
from longattn_spark.tables.refs import TableRef
from longattn_spark.ingest.windowing import sliding_windows

W = DemoConfig().window_size
DOCS_PER_CATEGORY = 2


@pytest.fixture(scope="module")
def demo(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = LongAttnConfig(demo=DemoConfig(output=str(root / "out"), window_size=W,
                                         max_docs_per_category=DOCS_PER_CATEGORY,
                                         smoke_model=True, probe_per_category=0))
    return run_demo(cfg)


@pytest.fixture(scope="module")
def expected_windows(demo, llama3_tokenizer_dir) -> dict[str, int]:
    """Windows per category, and documents too short for one, from the corpus file."""
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(llama3_tokenizer_dir / "tokenizer.json"))
    counts: dict[str, int] = {"too_short": 0}
    for line in demo.corpus.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        n_windows = len(sliding_windows(len(reference.encode(
            doc["text"], add_special_tokens=False).ids), W))
        counts[doc["category"]] = counts.get(doc["category"], 0) + n_windows
        counts["too_short"] += n_windows == 0
    return counts


def per_category(spark, table: str, where: str = "true") -> dict[str, int]:
    rows = TableRef(table).read(spark).where(where).groupBy("category").count().collect()
    return {r["category"]: r["count"] for r in rows}


def test_demo_corpus_has_three_categories(demo):
    categories = [json.loads(line)["category"]
                  for line in demo.corpus.read_text(encoding="utf-8").splitlines()]
    assert sorted(set(categories)) == ["code", "docs", "legal"]
    assert all(categories.count(c) == DOCS_PER_CATEGORY for c in set(categories))


def test_demo_writes_every_table_with_the_expected_rows(spark, demo, expected_windows):
    expected = {c: n for c, n in expected_windows.items() if c != "too_short" and n}
    assert per_category(spark, demo.table("windows")) == expected
    assert TableRef(demo.table("windows_rejects")).read(spark).count() \
        == expected_windows["too_short"]
    scores = TableRef(demo.table("scores")).read(spark)
    # the recommended recipe's scorers, each over every window
    methods = {r["method"]: r["count"] for r in scores.groupBy("method").count().collect()}
    assert methods == {"repetition": sum(expected.values()), "lossgain": sum(expected.values())}
    assert scores.select("scorer_id").distinct().count() == 2
    assert per_category(spark, demo.table("scores")) == {c: 2 * n for c, n in expected.items()}
    assert scores.join(TableRef(demo.table("windows")).read(spark), "window_id").count() \
        == 2 * sum(expected.values())
    assert TableRef(demo.table("scores_rejects")).read(spark).count() == 0
    assert per_category(spark, demo.table("selection")) == expected


def test_repetition_rows_hold_the_library_statistics_of_their_windows(spark, demo):
    """The score job's repetition rows, read back through the components map: every component
    (lag_match, the period gate's, included) equals the library's statistics of the window's
    ids; and the selection recorded the recipe with its period gate."""
    import numpy as np

    from longattn_spark.scorers.repetition.stats import COMPONENTS, repetition_stats
    from longattn_spark.select.cut import params_with_recipe_text
    from longattn_spark.tables.components import component, components_map
    from longattn_spark.tables.refs import table_properties

    scores = TableRef(demo.table("scores")).read(spark).where("method = 'repetition'")
    values = components_map(scores)
    stored = scores.select("window_id", *[component(values, c).alias(c) for c in COMPONENTS])
    windows = TableRef(demo.table("windows")).read(spark).select("window_id", "input_ids")
    rows = stored.join(windows, "window_id").collect()
    assert len(rows) == scores.count() > 0
    for row in rows:
        expected = repetition_stats(np.array(row["input_ids"]))
        assert {c: row[c] for c in COMPONENTS} == pytest.approx(expected), row["window_id"]
    assert any(row["lag_match"] > 0 for row in rows)  # the demo's windows have bigram lags
    selection = TableRef(demo.table("selection"))
    recorded = json.loads(selection.read(spark).select("params").first()["params"])
    text = params_with_recipe_text(recorded, table_properties(spark, selection))["recipe"]["text"]
    assert "- repetition.lag_match < 0.5" in text


def test_demo_keeps_half_of_each_category_and_exports_them(spark, demo):
    kept = per_category(spark, demo.table("selection"), "selected")
    total = per_category(spark, demo.table("selection"))
    for category, n in total.items():
        assert abs(kept[category] - n * 0.5) <= 1, category
    manifest = json.loads((demo.export / "manifest.json").read_text())
    assert {c: v["windows"] for c, v in manifest["categories"].items()} == kept
    from longattn_spark.export import export_files

    lines = [json.loads(line) for shard in export_files(str(demo.export))
             for line in Path(shard).read_text(encoding="utf-8").splitlines()]
    assert len(lines) == sum(kept.values())
    assert all(line["text"] and line["category"] in kept for line in lines)


def test_demo_report_embeds_its_plots_and_labels_the_smoke_model(demo):
    html = demo.report.read_text(encoding="utf-8")
    plots = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]{200,})"', html)
    assert len(plots) >= 5
    assert 'id="smoke-test-banner"' in html
    # the note under the selection's histograms gives the recipe's rank: its text is read back
    # from the selection table's property (the rows' params only name it)
    assert "rank = z(lossgain.score) - 2 * z(lossgain.short_loss) + 2 * least(" in html
    assert "(recipe recommended, among the windows where" in html
    profile = re.search(r'<section id="profile">(.*?)</section>', html, re.DOTALL)
    assert profile and "data:image/png;base64," in profile.group(1)
