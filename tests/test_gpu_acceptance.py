"""benchmarks/gpu_acceptance.py's dry run: the whole prepared GPU call on the CPU with tiny
shapes (the Triton kernels under their interpreter), importing no pyspark, writing a JSON
whose every figure says it is not a GPU measurement, and never the real
benchmarks/gpu_acceptance.json. Real scorers and models; the script runs as a child process
(TRITON_INTERPRET must be set before triton is imported)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_acceptance.py"
REAL_JSON = REPO / "benchmarks" / "gpu_acceptance.json"

FIGURES = {
    "layer0_8b_tokens_per_s", "layer0_8b_floor_fraction", "layer0_8b_scores_vs_today",
    "layer0_8b_speedup", "layer0_70b_tokens_per_s", "layer0_70b_floor_fraction",
    "layer0_70b_scores_vs_today", "layer0_70b_speedup", "lossgain_w128_x_forward",
    "lossgain_w128_floor_fraction", "prolong_w128", "lossgain_w256_x_forward",
    "lossgain_w256_floor_fraction", "prolong_w256", "probe_cost", "probe_build_share",
    "gpu_tests", "total_seconds"}


def run_script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("acceptance") / "dry.json"
    existed = REAL_JSON.is_file()
    before = REAL_JSON.read_bytes() if existed else None
    done = run_script("--dry-run", "--json", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert REAL_JSON.is_file() == existed
    if existed:
        assert REAL_JSON.read_bytes() == before
    return done, json.loads(out.read_text())


def test_dry_run_json_structure(dry_run) -> None:
    _, result = dry_run
    assert result["schema"] == 1 and result["issue"] == 31 and result["dry_run"] is True
    assert "no figure here is a GPU measurement" in result["note"]
    env = result["environment"]
    for key in ("device", "driver", "torch", "triton", "transformers", "commit",
                "code_sha256", "date"):
        assert env[key], key
    assert env["device"] == "cpu (dry run)" and env["triton_interpret"] == "1"
    assert len(env["code_sha256"]) == 64
    sections = result["sections"]
    assert {"rates", "layer0_8b", "layer0_70b", "whole_lm_w128", "whole_lm_w256", "probe",
            "gpu_tests"} <= set(sections)
    assert not [name for name, section in sections.items() if "error" in section]
    # the same code as on the GPU: the fused path ran (under the interpreter), the probe
    # scored its controls with it, loss gain ran SDPA attention
    assert sections["layer0_8b"]["kernel_fused"] == "fused"
    assert sections["layer0_8b"]["kernel_today"] == "triton"
    assert sections["probe"]["kernel"] == "fused"
    from longattn_spark.probe.controls import KINDS

    assert sections["probe"]["controls"] == len(KINDS) * sections["probe"]["natural_windows"]
    assert sections["whole_lm_w128"]["attn_implementation"] == "sdpa"
    floor = sections["layer0_8b"]["floor"]["causal_half"]
    assert floor["total_s"] == pytest.approx(floor["sums_s"] + floor["projection_s"])
    # the GPU tests are collected (they import without pyspark), not run
    tests = sections["gpu_tests"]
    assert tests["collect_only"] is True and tests["returncode"] == 0
    assert "tests collected" in tests["summary"]


def test_every_figure_is_marked_a_dry_run(dry_run) -> None:
    done, result = dry_run
    figures = result["figures"]
    assert {f["id"] for f in figures} == FIGURES
    for figure in figures:
        assert figure["dry_run"] is True and figure["gpu_measurement"] is False, figure
        assert figure["met"] is None and figure["error"] is False, figure
        assert figure["device"] == "cpu (dry run)"
        assert figure["shown"].endswith("(dry run)"), figure
        assert figure["goal"]
    table = done.stdout
    assert "DRY RUN on the CPU with tiny shapes: no figure above is a GPU measurement." in table
    rows = [line.rsplit("|", 1)[-1].strip() for line in table.splitlines()
            if line.count(" | ") == 3]
    assert rows[0] == "met" and set(rows[1:]) == {"dry run"}   # no row is judged


def test_dry_run_never_writes_the_real_json() -> None:
    existed = REAL_JSON.is_file()
    done = run_script("--dry-run", "--json", str(REAL_JSON), timeout=120)
    assert done.returncode == 2
    assert "a dry run never writes benchmarks/gpu_acceptance.json" in done.stderr
    assert REAL_JSON.is_file() == existed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_the_script_chooses_the_dry_run() -> None:
    existed = REAL_JSON.is_file()
    # no --dry-run, no --json: the GPU defaults (the sections skipped: only the choice)
    done = run_script("--skip", "layer0,whole_lm,probe,tests", timeout=120)
    assert "no CUDA device is visible: running the dry run" in done.stdout
    assert done.returncode == 0
    assert REAL_JSON.is_file() == existed   # its default JSON is the GPU one: not written


def test_the_script_refuses_pyspark() -> None:
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_acceptance"] = module   # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["gpu_acceptance"]
    for name in ("pyspark", "pyspark.sql", "py4j", "delta.tables"):
        with pytest.raises(ImportError, match="no Java or pyspark"):
            module._NoSpark().find_spec(name)
    assert module._NoSpark().find_spec("torch") is None
