"""The proof that a scorer is one package: a fourth method, written by this test into a
temporary package outside the repository (on the path of the driver and the executors), with
two options of its own and three components, goes through score (``--method pkg.mod:attr
--option ...``), select (its own default ranking and the keep-fraction cut, and a recipe over
its components), probe (with a recipe: AUCs equal to an independent double loop), compare
against LongAttn and the report, with no edit to the product. A wrong option value, an
unknown option and a component that is not finite end as one-line errors before any Spark
job, or as a rejects row."""

from __future__ import annotations

import json
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
from helpers import spark_jobs_in

from longattn_spark import cli
from longattn_spark.tables.refs import TableRef

PLUGIN = '''
"""A toy scoring method from outside longattn-spark."""
from dataclasses import dataclass

import numpy as np

from longattn_spark.errors import ConfigError
from longattn_spark.scorers.base import MethodPlan, Ranking, RunSettings, ScorerMethod
from longattn_spark.scorers.options import option


@dataclass(frozen=True)
class ToyOptions:
    weight: float = option(1.0, "what mean_id is multiplied by")
    bucket: int = option(7, "the modulus of bucketed")

    def check(self):
        if self.bucket < 1:
            raise ConfigError(f"--option bucket={self.bucket}: must be >= 1")


@dataclass(frozen=True)
class Settings:
    run: RunSettings
    weight: float
    bucket: int


class Toy(ScorerMethod):
    name = "toy"
    Options = ToyOptions
    components = ("mean_id", "distinct", "bucketed")
    needs_model = False
    uses_torch = False

    def ranking(self, normalize="zscore"):
        return Ranking(rank="z(mean_id) - z(distinct)")

    def plan(self, ctx):
        o = ctx.options
        run = RunSettings(location=None, device="cpu", dtype="float64", allow_pickle=False,
                          threads=1)
        return MethodPlan(scorer_id=f"toy-{o.weight:g}-{o.bucket}",
                          settings=Settings(run, o.weight, o.bucket),
                          describe={"weight": o.weight, "bucket": o.bucket},
                          tokenizer={"model": None, "windows": ctx.window_tokenizers,
                                     "check": "no_model"})

    def load(self, settings, device):
        return None

    def score_rows(self, batch, rows, scorer, settings):
        out = []
        for i in rows:
            ids = batch.ids(i)
            mean = float("nan") if batch.window_ids[i] == "w-0" else float(ids.mean())
            out.append({"mean_id": settings.weight * mean,
                        "distinct": len(set(ids.tolist())) / len(ids),
                        "bucketed": float((ids % settings.bucket).mean())})
        return out


METHOD = Toy()
'''


@pytest.fixture(scope="module")
def toy(spark, tmp_path_factory, llama3_tokenizer_dir):
    """The plugin package outside the repository, on the driver's path and shipped to the
    executors; a windows table of two categories."""
    from longattn_spark.tables.schemas import WINDOWS
    from longattn_spark.tables.writes import ensure_table

    root = tmp_path_factory.mktemp("toy")
    package = root / "site" / "toypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "toy.py").write_text(PLUGIN)
    archive = root / "toypkg.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in package.iterdir():
            z.write(path, f"toypkg/{path.name}")
    sys.path.insert(0, str(root / "site"))
    spark.sparkContext.addPyFile(str(archive))
    rng = np.random.default_rng(4)
    rows = []
    for c, (category, n) in enumerate((("book", 14), ("code", 12))):
        for i in range(n):
            ids = rng.integers(0, 50 + 30 * c + i, 256).astype(int).tolist()
            rows.append((f"{'w' if category == 'book' else 'c'}-{i}", f"d{i % 5}", category, 0,
                         0, 256, ids, None, None, "tok-test", None, None))
    windows = TableRef(str(root / "windows"))
    ensure_table(spark, windows, WINDOWS)
    spark.createDataFrame(rows, WINDOWS.schema).write.format("delta").mode("append") \
        .save(windows.location)
    yield root, windows
    sys.path.remove(str(root / "site"))


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.run(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_options_are_one_line_before_any_spark_job(spark, toy, capsys):
    root, windows = toy
    base = ["score", "--windows", windows.location, "--table", str(root / "bad"),
            "--method", "toypkg.toy:METHOD"]
    for extra, message in ((["--option", "bucket=0"], "--option bucket=0: must be >= 1"),
                           (["--option", "bucket=x"], "--option bucket=x: expected int"),
                           (["--option", "nope=1"], "--method toy has no option nope; its "
                                                    "options: weight (float, default 1.0), "
                                                    "bucket (int, default 7)"),
                           (["--layer", "2"], "--method toy has no option layer")):
        results = []
        jobs = spark_jobs_in(spark, lambda e=extra: results.append(run(base + e, capsys)))
        code, _, err = results[0]
        assert code != 0 and err.count("\n") == 1 and message in err, err
        assert jobs == []
    assert not TableRef(str(root / "bad")).exists(spark)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama without a tokenizer (LongAttn reads its layer 0)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def test_score_select_recipe_probe_compare_report(spark, toy, capsys, tmp_path, tiny_llama):
    from longattn_spark.compare import compare_scorers

    root, windows = toy
    scores = str(tmp_path / "scores")
    code, out, err = run(["score", "--windows", windows.location, "--table", scores,
                          "--method", "toypkg.toy:METHOD", "--option", "weight=2",
                          "--option", "bucket=5"], capsys)
    assert code == 0, err
    assert "toy-2-5: 26 / 26 windows (100.0%)" in out   # the progress line
    rows = pd.DataFrame([r.asDict(recursive=True) for r in TableRef(scores).read(spark)
                         .collect()]).set_index("window_id")
    rejects = TableRef(scores + "_rejects").read(spark).collect()
    assert [(r["window_id"], r["reason"]) for r in rejects] == [("w-0", "non_finite_score")]
    assert "mean_id = nan" in rejects[0]["detail"]
    source = {r["window_id"]: np.array(r["input_ids"])
              for r in windows.read(spark).collect()}
    for wid, row in rows.iterrows():
        ids = source[wid]
        assert row["components"] == pytest.approx({
            "mean_id": 2 * ids.mean(), "distinct": len(set(ids)) / len(ids),
            "bucketed": (ids % 5).mean()})
        assert row["method"] == "toy" and row["score"] is None

    # select by the method's own ranking: z(mean_id) - z(distinct), top half per category
    selection = str(tmp_path / "selection")
    code, out, err = run(["select", "--windows", windows.location, "--scores", scores,
                          "--table", selection, "--keep-fraction", "0.5", "--exact"], capsys)
    assert code == 0, err
    got = TableRef(selection).read(spark).toPandas().set_index("window_id")
    frame = pd.DataFrame({wid: r["components"] for wid, r in rows.iterrows()}).T
    frame["category"] = rows["category"]
    g = frame.groupby("category")
    z = lambda c: (frame[c] - g[c].transform("mean")) / g[c].transform("std")  # noqa: E731
    frame["rank"] = z("mean_id") - z("distinct")
    np.testing.assert_allclose(got.loc[frame.index, "rank"], frame["rank"], rtol=1e-9)
    top = frame.sort_values("rank", ascending=False).groupby("category").apply(
        lambda d: d.head(len(d) // 2))
    assert set(got.index[got.selected]) == {w for _, w in top.index}
    assert got["recipe"].iloc[0] == "toy" and "w-0" not in got.index  # a rejects row

    # a recipe over the plugin's components
    by_bucket = str(tmp_path / "by_bucket")
    code, _, err = run(["select", "--windows", windows.location, "--scores", scores,
                        "--table", by_bucket, "--keep-fraction", "0.5", "--exact",
                        "--rank", "toy.bucketed", "--where", "distinct > 0.1"], capsys)
    assert code == 0, err
    kept = TableRef(by_bucket).read(spark).filter("selected").toPandas()
    want = frame[frame.distinct > 0.1].sort_values("bucketed", ascending=False) \
        .groupby("category").apply(lambda d: d.head(len(d) // 2))
    assert set(kept.window_id) == {w for _, w in want.index}

    # probe a recipe of the plugin: AUCs equal to an independent double loop
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("name: toyrecipe\nscorers:\n  - method: toypkg.toy:METHOD\n    as: toy\n"
                      "    options: {weight: 2, bucket: 5}\nwhere:\n  - toy.distinct > 0.2\n"
                      "rank: -z(toy.bucketed)\n")
    probe = str(tmp_path / "probe")
    code, out, err = run(["probe", "--windows", windows.location, "--table", probe,
                          "--recipe", str(recipe), "--per-category", "6",
                          "--kinds", "splice,repeat,nearrepeat", "--json",
                          str(tmp_path / "probe.json")], capsys)
    assert code == 0, err
    aucs = json.loads((tmp_path / "probe.json").read_text())
    probed = [r.asDict(recursive=True) for r in TableRef(probe).read(spark).collect()]
    assert {r["scorer_id"] for r in probed} == {"toy-2-5"}
    for category in ("book", "code"):
        part = [r for r in probed if r["category"] == category]
        natural = [r for r in part if r["kind"] == "natural"]
        buckets = np.array([r["components"]["toy.bucketed"] for r in natural])
        mean, sd = buckets.mean(), buckets.std(ddof=1)

        def value(r):
            c = r["components"]
            return -(c["toy.bucketed"] - mean) / sd if c["toy.distinct"] > 0.2 \
                else float("-inf")

        for kind in ("splice", "repeat", "nearrepeat"):
            controls = [r for r in part if r["kind"] == kind]
            wins = 0.0
            for a in natural:
                for b in controls:
                    x, y = value(a), value(b)
                    wins += 1.0 if x > y else 0.5 if x == y else 0.0
            assert aucs[category][kind]["auc"] == pytest.approx(
                wins / (len(natural) * len(controls)), abs=1e-12), (category, kind)
    record = json.loads(__import__("longattn_spark.tables.refs", fromlist=["x"])
                        .table_properties(spark, TableRef(probe))["longattn.probe"])
    assert record["recipe"]["name"] == "toyrecipe"

    # probe --rank on the probe table: no scoring, the AUC of another rank
    version = TableRef(probe).version(spark)
    code, out, err = run(["probe", "--table", probe, "--rank", "toy.mean_id", "--json",
                          str(tmp_path / "rerank.json")], capsys)
    assert code == 0, err
    assert TableRef(probe).version(spark) == version   # nothing written
    assert "ranked by" in out and "--rank toy.mean_id" in out and "scored" in out
    assert "nothing: ranked again" in out and "windows scored now" not in out
    reranked = json.loads((tmp_path / "rerank.json").read_text())
    for category in ("book", "code"):
        part = [r for r in probed if r["category"] == category]
        natural = [r["components"]["toy.mean_id"] for r in part if r["kind"] == "natural"]
        repeats = [r["components"]["toy.mean_id"] for r in part if r["kind"] == "repeat"]
        wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in natural for y in repeats)
        assert reranked[category]["repeat"]["auc"] == pytest.approx(
            wins / (len(natural) * len(repeats)), abs=1e-12)

    # compare against LongAttn on the same windows, and the report
    code, _, err = run(["score", "--windows", windows.location, "--table", scores,
                        "--model", str(tiny_llama), "--device", "cpu"], capsys)
    assert code == 0, err
    comparison = compare_scorers(spark, TableRef(scores), sorted(
        r["scorer_id"] for r in TableRef(scores).read(spark).select("scorer_id").distinct()
        .collect() if r["scorer_id"].startswith("l0-"))[0], "toy-2-5")
    assert comparison.value_name("b") == "toy: z(mean_id) - z(distinct)"
    assert {c.category for c in comparison.categories} == {"book", "code"}
    report = tmp_path / "report.html"
    code, _, err = run(["report", "--windows", windows.location, "--scores", scores,
                        "--selection", selection, "--scorer-id", "toy-2-5", "--output",
                        str(report)], capsys)
    assert code == 0, err
    assert "toy" in report.read_text(encoding="utf-8")
