"""notebooks/explore_scores.ipynb runs headless (nbclient) against tables built here.

The kernel is this interpreter (a kernelspec written to a temporary JUPYTER_PATH), so the test
needs nothing beyond ``setup.sh``. It starts its own embedded Spark with an in-memory catalog
and reads the path tables passed in LONGATTN_* environment variables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from longattn_spark.config import SelectConfig
from longattn_spark.select import select_options, select_windows
from longattn_spark.demo.smoke_model import write_smoke_test_model
from longattn_spark.tables.refs import TableRef
from longattn_spark.tables.schemas import SCORES, WINDOWS
from longattn_spark.tables.writes import ensure_table, set_properties

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_scores.ipynb"
KERNEL = "longattn-test"
L = 64
CATEGORIES = {"arxiv": 40, "book": 30, "code": 30}


def write_rows(spark, path: Path, spec, rows: list[dict]) -> str:
    ref = TableRef(str(path))
    ensure_table(spark, ref, spec)
    spark.createDataFrame([tuple(r.get(n) for n in spec.column_names) for r in rows],
                          spec.schema).write.format("delta").mode("append").save(ref.location)
    return str(path)


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory) -> dict[str, str]:
    """Windows and scores written with the table schemas (a tiny smoke-test model named as
    the scorer's model), and a selection made by the selection library."""
    root = tmp_path_factory.mktemp("notebook")
    model = write_smoke_test_model(root / "model", hidden_size=32, num_attention_heads=4,
                                   num_key_value_heads=2, num_hidden_layers=1,
                                   intermediate_size=64, dtype="float32")
    rng = np.random.default_rng(5)
    windows, scores = [], []
    for category, size in CATEGORIES.items():
        for i in range(size):
            wid = f"{category}-{i:03d}"
            windows.append({"window_id": wid, "doc_id": f"{category}-doc-{i % 7}",
                            "category": category, "window_index": i // 7, "token_start": 0,
                            "n_tokens": L, "input_ids": [int(x) for x in
                                                         rng.integers(0, 120000, L)]})
            scores.append({"window_id": wid, "scorer_id": "l0-nb", "category": category,
                           "ds": float(rng.uniform(0.2, 0.6)),
                           "variance": float(10 ** rng.uniform(-7, -5.5)), "seq_len": L,
                           "min_distance": L // 4, "model": str(model)})
    paths = {"windows": write_rows(spark, root / "windows", WINDOWS, windows),
             "scores": write_rows(spark, root / "scores", SCORES, scores)}
    set_properties(spark, TableRef(paths["scores"]), {"longattn.scorer.l0-nb": json.dumps(
        {"scorer_id": "l0-nb", "model": str(model), "seq_len": L, "min_distance": L // 4})})
    paths["selection"] = str(root / "selection")
    select_windows(spark, select_options(SelectConfig(keep_fraction=0.5)),
                   TableRef(paths["windows"]), TableRef(paths["scores"]),
                   TableRef(paths["selection"]))
    paths["model"] = str(model)
    paths["root"] = str(root)
    return paths


@pytest.fixture
def kernel_env(tmp_path, monkeypatch, tables, llama3_tokenizer_dir):
    """A kernelspec running this interpreter, and the notebook's parameters."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "longattn test kernel", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_REMOTE",
                 "SPARK_CONNECT_MODE_ENABLED", "DATABRICKS_RUNTIME_VERSION"):
        monkeypatch.delenv(name, raising=False)
    values = {"LONGATTN_WINDOWS": tables["windows"], "LONGATTN_SCORES": tables["scores"],
              "LONGATTN_SELECTION": tables["selection"], "LONGATTN_MODEL": tables["model"],
              "LONGATTN_TOKENIZER": str(llama3_tokenizer_dir),
              "LONGATTN_LAKEHOUSE": str(tmp_path / "lakehouse"),
              "LONGATTN_SPARK_MASTER": "local[2]"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def outputs_of(nb, output_type: str | None = None):
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output_type is None or output["output_type"] == output_type:
                yield output


def text_of(nb) -> str:
    parts = []
    for output in outputs_of(nb):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
            parts.append(output["data"].get("text/html", ""))
    return "\n".join(parts)


def test_notebook_runs_headless_and_draws_its_plots(kernel_env, tables):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    assert not list(outputs_of(nb, "error"))
    images = [o for o in outputs_of(nb) if "image/png" in o.get("data", {})]
    # paper comparison, distributions, LDS, kept per category, scatter, profile,
    # another alpha, another cut
    assert len(images) == 8
    text = text_of(nb)
    assert "SMOKE-TEST MODEL" in text
    assert "mass at distance >= k" in text
    for category in CATEGORIES:
        assert category in text
    assert tables["scores"] in text
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "IDENTIFIER(:scores)" in code and "report.plot_lds_histograms" in code
