"""``longattn-spark demo``: the whole pipeline on the embedded local Spark, no download.

corpus (standard library sources, pydoc documentation, license files) -> ingest -> score ->
select -> export -> report, all under one output folder. Without ``--model`` it scores with a
SMOKE-TEST model (tiny, random weights, the real Llama-3 tokenizer): the pipeline is real,
the scores mean nothing. With ``--model PATH`` (a Llama / Mistral / Qwen2 folder with
config.json, safetensors and tokenizer.json) the scores are real.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from longattn_spark.config import (
    ExportConfig,
    IngestConfig,
    LongAttnConfig,
    ReportConfig,
    ScoreConfig,
    SelectConfig,
)
from longattn_spark.demo.corpus import build_demo_corpus
from longattn_spark.errors import InputError


@dataclass(frozen=True)
class DemoPaths:
    """Everything the demo writes, under one folder."""

    root: Path

    @property
    def corpus(self) -> Path:
        return self.root / "corpus" / "demo.jsonl"

    @property
    def smoke_model(self) -> Path:
        return self.root / "smoke-test-model"

    def table(self, name: str) -> str:
        return str(self.root / "tables" / name)

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def report(self) -> Path:
        return self.root / "report.html"


def demo_config(cfg: LongAttnConfig, model: str, tokenizer: str) -> LongAttnConfig:
    """The job sections the demo runs, all pointing into the demo folder."""
    paths = DemoPaths(Path(cfg.demo.output).resolve())
    windows, scores, selection = (paths.table(n) for n in ("windows", "scores", "selection"))
    return dataclasses.replace(
        cfg,
        spark=dataclasses.replace(cfg.spark, lakehouse=str(paths.root / "lakehouse")),
        ingest=IngestConfig(input=str(paths.corpus), tokenizer=tokenizer,
                            window_size=cfg.demo.window_size, table=windows),
        score=ScoreConfig(windows=windows, model=model, table=scores, batch_size=4),
        select=SelectConfig(windows=windows, scores=scores, table=selection,
                            keep_fraction=0.5),
        export=ExportConfig(selection=selection, windows=windows, output=str(paths.export),
                            format="jsonl", shards=4, tokenizer=tokenizer),
        report=ReportConfig(windows=windows, scores=scores, selection=selection,
                            output=str(paths.report), model=model, tokenizer=tokenizer),
    )


def demo_model_and_tokenizer(cfg: LongAttnConfig) -> tuple[str, str]:
    """(model folder, tokenizer folder): the user's model, or a new smoke-test model with the
    real Llama-3 tokenizer."""
    from longattn_spark.ingest.tokenize import llama3_tokenizer_dir

    if cfg.demo.model:
        model = Path(cfg.demo.model).expanduser()
        if not (model / "config.json").is_file():
            raise InputError(f"--model {model}: expected a folder with config.json, "
                             "model.safetensors (or model.safetensors.index.json + shards) "
                             "and tokenizer.json")
        tokenizer = model if (model / "tokenizer.json").is_file() else llama3_tokenizer_dir()
        return str(model), str(tokenizer)
    from longattn_spark.demo.smoke_model import write_smoke_test_model

    paths = DemoPaths(Path(cfg.demo.output).resolve())
    tokenizer = llama3_tokenizer_dir()
    if not (paths.smoke_model / "config.json").is_file():
        write_smoke_test_model(paths.smoke_model, tokenizer_dir=tokenizer)
    return str(paths.smoke_model), str(tokenizer)


def run_demo(cfg: LongAttnConfig) -> DemoPaths:
    """Build the corpus and model, then run every job; print where everything is."""
    from longattn_spark.export.job import run_export_job
    from longattn_spark.ingest.job import run_ingest_job
    from longattn_spark.report.job import run_report_job
    from longattn_spark.score.job import run_score_job
    from longattn_spark.select.job import run_select_job

    started = time.perf_counter()
    paths = DemoPaths(Path(cfg.demo.output).resolve())
    counts = build_demo_corpus(paths.corpus, cfg.demo.max_docs_per_category)
    print(f"demo corpus: {paths.corpus} ({', '.join(f'{c}: {n}' for c, n in counts.items())} "
          "documents, from files on this machine)")
    model, tokenizer = demo_model_and_tokenizer(cfg)
    if not cfg.demo.model:
        print(f"model: {model} -- a SMOKE-TEST model with random weights: the pipeline is "
              "real, its scores MEAN NOTHING (pass --model PATH for real scores)")
    jobs = demo_config(cfg, model, tokenizer)
    for step in (run_ingest_job, run_score_job, run_select_job, run_export_job,
                 run_report_job):
        step(jobs)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s\n"
          f"  tables:  {paths.root / 'tables'} (windows, windows_rejects, scores, "
          f"scores_rejects, selection; Delta)\n"
          f"  export:  {paths.export}\n"
          f"  report:  {paths.report}")
    return paths
