"""The Databricks bundle (databricks.yml + resources/*.yml), checked without Databricks.

- Every job loads with ``databricks-bundles``' own classes (``Job.from_dict``), as written
  (``${var.*}`` kept as variables) and resolved for each target.
- The DAG is ingest -> score -> select -> export -> report; score alone runs on the GPU job
  cluster (dedicated access mode, ML GPU runtime, the same Spark confs as
  conf/databricks-cluster.json: executors own a GPU, default tasks a fraction of it, scoring
  tasks a whole one through --task-gpus); the others on a serverless environment with the
  bundle's wheel.
- Every task's entry point is the wheel's console script, and its parameters, with
  ``${var.*}`` and ``{{job.parameters.*}}`` replaced by their defaults, parse with the CLI's
  own parser; every reference is defined, the stages read the tables the previous ones wrote.
- ``test_checks_catch_breaks`` breaks a copy of the bundle in several ways and asserts that
  the checks above fail on each.
- With a bundle JSON schema (``DATABRICKS_BUNDLE_SCHEMA=path``, or ``databricks bundle
  schema`` when the Databricks CLI is on the PATH) the whole configuration is validated
  against it; skipped otherwise.

``LONGATTN_BUNDLE_ROOT`` points the checks at another copy of the bundle (the default is the
repository).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from databricks.bundles.jobs import Job

from longattn_spark.cli import COMMANDS, parse_config

REPO = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = Path(os.environ.get("LONGATTN_BUNDLE_ROOT", REPO))

PIPELINE = ("ingest", "score", "select", "export", "report")
GPU_STAGE = "score"
TARGETS = ("dev", "prod")
JOB_KEY = "longattn_pipeline"
# Bundle references that are not variables, with sample values for resolving.
CONTEXT = {
    "workspace.current_user.userName": "someone@example.com",
    "workspace.current_user.short_name": "someone",
}
VAR_REF = re.compile(r"\$\{([A-Za-z0-9_.\-\[\]]+)\}")
DYNAMIC_REF = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
JOB_PARAM = re.compile(r"job\.parameters\.([A-Za-z0-9_\-]+)$")
# GPU instance families: AWS g4dn/g5/g6/p3/p4/p5, Azure NC/ND/NV, GCP a2/a3/g2.
GPU_NODE = re.compile(r"^(g4dn|g5|g6e?|p3|p4d|p4de|p5)\.|^Standard_N[CDV]|^(a2|a3|g2)-")
DEDICATED = {"SINGLE_USER", "DATA_SECURITY_MODE_DEDICATED"}


# --- loading ---------------------------------------------------------------------------------

@dataclass
class Bundle:
    root: Path
    config: dict                          # databricks.yml
    resource_files: dict[Path, dict]      # every included file
    jobs: dict[str, tuple[Path, dict]]    # job key -> (its file, its raw definition)


def load_bundle(root: Path = BUNDLE_ROOT) -> Bundle:
    config = yaml.safe_load((root / "databricks.yml").read_text())
    assert isinstance(config, dict), "databricks.yml: not a mapping"
    files: dict[Path, dict] = {}
    for pattern in config.get("include", []):
        matched = sorted(root.glob(pattern))
        assert matched, f"include {pattern!r} matches no file"
        for path in matched:
            files[path] = yaml.safe_load(path.read_text()) or {}
    jobs: dict[str, tuple[Path, dict]] = {}
    sources = [(root / "databricks.yml", config), *files.items()]
    for path, doc in sources:
        for key, job in ((doc.get("resources") or {}).get("jobs") or {}).items():
            assert key not in jobs, f"job {key} defined twice"
            jobs[key] = (path, job)
    return Bundle(root, config, files, jobs)


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle()


def variable_values(b: Bundle, target: str) -> dict[str, Any]:
    """Bundle variables for a target: defaults, the target's overrides, references resolved."""
    declared = b.config.get("variables") or {}
    values = {name: (spec or {}).get("default") for name, spec in declared.items()}
    targets = b.config.get("targets") or {}
    assert target in targets, f"no target {target!r}"
    for name, value in ((targets[target] or {}).get("variables") or {}).items():
        assert name in declared, f"target {target} sets undeclared variable {name!r}"
        values[name] = value["default"] if isinstance(value, dict) else value
    missing = sorted(name for name, value in values.items() if value is None)
    assert not missing, f"target {target}: variables without a value: {missing}"
    context = {**CONTEXT, "bundle.name": b.config["bundle"]["name"], "bundle.target": target}
    resolved: dict[str, Any] = {}

    def resolve(name: str, seen: tuple[str, ...]) -> Any:
        if name in resolved:
            return resolved[name]
        assert name not in seen, f"variable cycle: {' -> '.join((*seen, name))}"
        lookup = {**context, **{f"var.{n}": None for n in values}}
        value = substitute(values[name], lambda ref: (resolve(ref[4:], (*seen, name))
                                                       if ref.startswith("var.")
                                                       else context[ref]), lookup)
        resolved[name] = value
        return value

    for name in values:
        resolve(name, ())
    return resolved


def substitute(value: Any, get, known: dict[str, Any]) -> Any:
    """Replace every ``${ref}`` in strings of ``value`` (recursively); a whole-string reference
    keeps the referenced value's type."""
    if isinstance(value, dict):
        return {k: substitute(v, get, known) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, get, known) for v in value]
    if not isinstance(value, str):
        return value
    for ref in VAR_REF.findall(value):
        assert ref in known, f"unknown reference ${{{ref}}}"
    whole = VAR_REF.fullmatch(value)
    if whole:
        return get(whole.group(1))
    return VAR_REF.sub(lambda m: str(get(m.group(1))), value)


def resolve_target(b: Bundle, target: str, value: Any) -> Any:
    """``value`` with every ``${var.*}`` / bundle / workspace reference resolved for a target."""
    variables = variable_values(b, target)
    context = {**CONTEXT, "bundle.name": b.config["bundle"]["name"], "bundle.target": target}
    known = {**context, **{f"var.{n}": v for n, v in variables.items()}}
    return substitute(value, known.__getitem__, known)


def job_parameters(job: dict) -> dict[str, Any]:
    return {p["name"]: p.get("default") for p in job.get("parameters") or []}


def fill_job_parameters(value: Any, params: dict[str, Any]) -> Any:
    """Replace ``{{job.parameters.X}}`` with X's (resolved) default."""
    if isinstance(value, list):
        return [fill_job_parameters(v, params) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        m = JOB_PARAM.match(match.group(1))
        assert m, f"unsupported dynamic value reference {{{{{match.group(1)}}}}}"
        assert m.group(1) in params, f"job parameter {m.group(1)!r} is not defined"
        return str(params[m.group(1)])

    return DYNAMIC_REF.sub(one, value)


def pipeline_job(b: Bundle) -> tuple[Path, dict]:
    assert JOB_KEY in b.jobs, f"no job {JOB_KEY!r} in the bundle (jobs: {sorted(b.jobs)})"
    return b.jobs[JOB_KEY]


def tasks_by_key(job: dict) -> dict[str, dict]:
    tasks = {t["task_key"]: t for t in job.get("tasks") or []}
    assert len(tasks) == len(job.get("tasks") or []), "duplicate task_key"
    return tasks


def walk_strings(value: Any):
    if isinstance(value, dict):
        for v in value.values():
            yield from walk_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk_strings(v)
    elif isinstance(value, str):
        yield value


def pyproject(b: Bundle) -> dict:
    return tomllib.loads((b.root / "pyproject.toml").read_text())


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


# --- checks (each raises AssertionError naming what is wrong) --------------------------------

def check_bundle_config(b: Bundle) -> None:
    c = b.config
    allowed = {"bundle", "include", "artifacts", "variables", "targets", "resources",
               "workspace", "presets", "permissions", "run_as", "sync", "experimental",
               "python", "scripts", "environments"}
    assert set(c) <= allowed, f"databricks.yml: unknown top-level keys {sorted(set(c) - allowed)}"
    assert (c.get("bundle") or {}).get("name"), "databricks.yml: bundle.name is missing"
    included = set(b.resource_files)
    resource_dir = b.root / "resources"
    for path in sorted(resource_dir.glob("*.yml")) + sorted(resource_dir.glob("*.yaml")):
        assert path in included, f"{path.name} is not matched by databricks.yml include"
    targets = c.get("targets") or {}
    assert set(TARGETS) <= set(targets), f"targets {sorted(targets)} lack one of {TARGETS}"
    assert targets["dev"].get("mode") == "development", "target dev: mode is not development"
    assert targets["dev"].get("default") is True, "target dev is not the default target"
    prod = targets["prod"]
    assert prod.get("mode") == "production", "target prod: mode is not production"
    # The CLI refuses production mode without an explicit root_path (one copy per target).
    assert (prod.get("workspace") or {}).get("root_path"), \
        "target prod: mode production needs workspace.root_path"
    defaults = [n for n, t in targets.items() if (t or {}).get("default")]
    assert len(defaults) == 1, f"exactly one default target expected, got {defaults}"


def check_jobs_load(b: Bundle) -> None:
    """databricks-bundles' classes accept every job, as written and resolved per target."""
    for key, (path, job) in b.jobs.items():
        try:
            Job.from_dict(copy.deepcopy(job))
        except Exception as exc:  # noqa: BLE001 - the loader raises ValueError/TypeError/...
            raise AssertionError(f"{path.name}: job {key} does not load: {exc}") from exc
        for target in TARGETS:
            resolved = resolve_target(b, target, job)
            try:
                loaded = Job.from_dict(copy.deepcopy(resolved))
            except Exception as exc:  # noqa: BLE001
                raise AssertionError(f"{path.name}: job {key} ({target}) does not load: "
                                     f"{exc}") from exc
            assert loaded.as_dict(), f"job {key} ({target}) is empty"


def check_dag(b: Bundle) -> None:
    _, job = pipeline_job(b)
    tasks = tasks_by_key(job)
    assert set(tasks) == set(PIPELINE), f"tasks {sorted(tasks)} != {sorted(PIPELINE)}"
    for task in tasks.values():
        for dep in task.get("depends_on") or []:
            assert dep["task_key"] in tasks, \
                f"task {task['task_key']} depends on unknown task {dep['task_key']!r}"
    for previous, stage in zip((None, *PIPELINE), PIPELINE):
        deps = sorted(d["task_key"] for d in tasks[stage].get("depends_on") or [])
        expected = [] if previous is None else [previous]
        assert deps == expected, f"task {stage} depends on {deps}, expected {expected}"


def check_compute(b: Bundle) -> None:
    """score alone on the dedicated GPU job cluster; the others on serverless environments."""
    _, job = pipeline_job(b)
    tasks = tasks_by_key(job)
    clusters = {c["job_cluster_key"]: c for c in job.get("job_clusters") or []}
    environments = {e["environment_key"]: e for e in job.get("environments") or []}
    score = tasks[GPU_STAGE]
    assert not score.get("environment_key"), "score runs on a serverless environment"
    assert not score.get("existing_cluster_id") and not score.get("new_cluster"), \
        "score must run on the bundle's GPU job cluster"
    key = score.get("job_cluster_key")
    assert key in clusters, f"score's job_cluster_key {key!r} is not a job cluster"
    assert any("whl" in lib for lib in score.get("libraries") or []), \
        "score's cluster does not install the wheel (libraries: whl)"
    for target in TARGETS:
        spec = resolve_target(b, target, clusters[key]["new_cluster"])
        mode = spec.get("data_security_mode")
        assert mode in DEDICATED, f"GPU cluster ({target}): access mode {mode!r} is not dedicated"
        version = str(spec.get("spark_version", ""))
        assert "-gpu-ml-" in version, \
            f"GPU cluster ({target}): spark_version {version!r} is not an ML GPU runtime"
        node = str(spec.get("node_type_id", ""))
        assert GPU_NODE.search(node), f"GPU cluster ({target}): {node!r} is not a GPU node type"
        workers = spec.get("num_workers") or (spec.get("autoscale") or {}).get("max_workers")
        assert int(workers or 0) >= 1, f"GPU cluster ({target}): no workers"
    for stage in PIPELINE:
        if stage == GPU_STAGE:
            continue
        task = tasks[stage]
        for field in ("job_cluster_key", "existing_cluster_id", "new_cluster"):
            assert not task.get(field), f"task {stage} sets {field}: it must run serverless"
        env_key = task.get("environment_key")
        assert env_key in environments, \
            f"task {stage}: environment_key {env_key!r} is not a job environment"
        spec = environments[env_key].get("spec") or {}
        assert spec.get("environment_version") or spec.get("client"), \
            f"environment {env_key}: no environment_version"
        assert any(str(d).endswith(".whl") for d in spec.get("dependencies") or []), \
            f"environment {env_key} does not install the wheel"


def check_gpu_confs(b: Bundle) -> None:
    """Executors own a GPU, a default-profile task only a fraction (tokenization and SQL use
    every core), the scoring stage a whole GPU per task; same confs as the cluster JSON."""
    _, job = pipeline_job(b)
    tasks = tasks_by_key(job)
    clusters = {c["job_cluster_key"]: c for c in job.get("job_clusters") or []}
    cluster_json = json.loads((b.root / "conf" / "databricks-cluster.json").read_text())
    key = tasks[GPU_STAGE].get("job_cluster_key")
    assert key in clusters, f"score's job_cluster_key {key!r} is not a job cluster"
    for target in TARGETS:
        spec = resolve_target(b, target, clusters[key]["new_cluster"])
        conf = {k: str(v) for k, v in (spec.get("spark_conf") or {}).items()}
        executor = float(conf.get("spark.executor.resource.gpu.amount", 0))
        task = float(conf.get("spark.task.resource.gpu.amount", 0))
        assert executor >= 1 and executor.is_integer(), \
            f"({target}) spark.executor.resource.gpu.amount {executor} is not a whole GPU"
        assert 0 < task < 1, (f"({target}) spark.task.resource.gpu.amount {task}: every task "
                              "would hold a whole GPU (or none is declared)")
        assert conf == cluster_json["spark_conf"], \
            f"({target}) GPU cluster spark_conf differs from conf/databricks-cluster.json"
        for field in ("spark_version", "data_security_mode"):
            assert spec.get(field) == cluster_json[field], \
                f"({target}) GPU cluster {field} differs from conf/databricks-cluster.json"
    for target in TARGETS:
        cfg = parsed_tasks(b, target)[GPU_STAGE]
        assert cfg.score.task_gpus >= 1 and float(cfg.score.task_gpus).is_integer(), \
            f"({target}) score's --task-gpus {cfg.score.task_gpus}: the scoring stage needs " \
            "a whole GPU per task"


def check_wheel(b: Bundle) -> None:
    """One whl artifact built into <path>/dist; every task installs exactly that folder's wheel."""
    artifacts = b.config.get("artifacts") or {}
    wheels = {k: a for k, a in artifacts.items() if (a or {}).get("type") == "whl"}
    assert len(wheels) == 1, f"expected one artifact of type whl, got {sorted(wheels)}"
    (name, artifact), = wheels.items()
    project = (b.root / artifact.get("path", ".")).resolve()
    assert (project / "pyproject.toml").is_file(), f"artifact {name}: no pyproject.toml there"
    build = artifact.get("build", "")
    assert re.search(r"(pip wheel|uv build|-m build)", build) and "dist" in build, \
        f"artifact {name}: build {build!r} does not build a wheel into dist"
    dist = project / "dist"
    path, job = pipeline_job(b)
    refs = [lib["whl"] for t in job.get("tasks") or [] for lib in t.get("libraries") or []
            if "whl" in lib]
    refs += [d for e in job.get("environments") or []
             for d in (e.get("spec") or {}).get("dependencies") or [] if str(d).endswith(".whl")]
    assert refs, "no task installs the wheel"
    for ref in refs:
        where = (path.parent / ref).resolve()
        assert where.parent == dist and where.name.endswith(".whl"), \
            f"{path.name}: wheel {ref!r} is not the artifact's {dist.relative_to(b.root.resolve())}"


def check_entry_points(b: Bundle) -> None:
    project = pyproject(b)["project"]
    scripts = project.get("scripts") or {}
    commands = {c.name for c in COMMANDS}
    _, job = pipeline_job(b)
    for key, task in tasks_by_key(job).items():
        wheel = task.get("python_wheel_task")
        assert wheel, f"task {key} is not a python_wheel_task"
        assert normalize(wheel["package_name"]) == normalize(project["name"]), \
            f"task {key}: package_name {wheel['package_name']!r} is not {project['name']!r}"
        entry = wheel["entry_point"]
        assert entry in scripts, f"task {key}: entry_point {entry!r} is not in " \
                                 f"[project.scripts] ({sorted(scripts)})"
        module_name, _, attr = scripts[entry].partition(":")
        target = getattr(import_module(module_name), attr, None)
        assert callable(target), f"[project.scripts] {entry} = {scripts[entry]} is not callable"
        params = wheel.get("parameters") or []
        assert params and params[0] == key, \
            f"task {key} runs command {params[:1]}, expected {key!r}"
        assert params[0] in commands, f"task {key}: {params[0]!r} is not a CLI command"


def check_references(b: Bundle) -> None:
    """Every ${var.X} is declared; every {{job.parameters.X}} is defined and every job
    parameter is used."""
    declared = set(b.config.get("variables") or {})
    for path, doc in [(b.root / "databricks.yml", b.config), *b.resource_files.items()]:
        for text in walk_strings(doc):
            for ref in VAR_REF.findall(text):
                if ref.startswith("var."):
                    assert ref[4:] in declared, f"{path.name}: ${{{ref}}} is not declared"
                else:
                    assert ref in CONTEXT or ref in ("bundle.name", "bundle.target"), \
                        f"{path.name}: unexpected reference ${{{ref}}}"
    path, job = pipeline_job(b)
    defined = [p["name"] for p in job.get("parameters") or []]
    assert len(defined) == len(set(defined)), f"{path.name}: a job parameter is defined twice"
    used: set[str] = set()
    for text in walk_strings(job.get("tasks") or []):
        for ref in DYNAMIC_REF.findall(text):
            m = JOB_PARAM.match(ref)
            assert m, f"{path.name}: unsupported reference {{{{{ref}}}}}"
            assert m.group(1) in defined, \
                f"{path.name}: {{{{job.parameters.{m.group(1)}}}}} is not a job parameter"
            used.add(m.group(1))
    unused = sorted(set(defined) - used)
    assert not unused, f"{path.name}: job parameters used by no task: {unused}"


def parsed_tasks(b: Bundle, target: str) -> dict:
    """Each task's parameters, references filled with defaults, through the CLI's parser."""
    _, job = pipeline_job(b)
    resolved = resolve_target(b, target, job)
    params = job_parameters(resolved)
    out = {}
    for key, task in tasks_by_key(resolved).items():
        argv = [str(a) for a in fill_job_parameters(
            task["python_wheel_task"].get("parameters") or [], params)]
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                command, cfg = parse_config(argv)
        except SystemExit as exc:
            raise AssertionError(f"task {key} ({target}): the CLI rejects {argv}: "
                                 f"{err.getvalue().strip()}") from exc
        except Exception as exc:  # noqa: BLE001 - ConfigError and friends
            raise AssertionError(f"task {key} ({target}): {exc}") from exc
        assert command.name == key, f"task {key} runs {command.name}"
        out[key] = cfg
    return out


def check_cli_parameters(b: Bundle, target: str) -> None:
    """The stages parse and read what the previous ones wrote."""
    p = parsed_tasks(b, target)
    ingest, score, select = p["ingest"].ingest, p["score"].score, p["select"].select
    export, report = p["export"].export, p["report"].report
    windows = ingest.table
    for stage, value in (("score --windows", score.windows), ("select --windows", select.windows),
                         ("export --windows", export.windows),
                         ("report --windows", report.windows)):
        assert value == windows, f"({target}) {stage} {value!r} is not ingest's {windows!r}"
    for stage, value in (("select --scores", select.scores), ("report --scores", report.scores)):
        assert value == score.table, f"({target}) {stage} {value!r} is not score's {score.table!r}"
    for stage, value in (("export --selection", export.selection),
                         ("report --selection", report.selection)):
        assert value == select.table, \
            f"({target}) {stage} {value!r} is not select's {select.table!r}"
    assert export.tokenizer == ingest.tokenizer, \
        f"({target}) export decodes with {export.tokenizer!r}, ingest cut with {ingest.tokenizer!r}"
    tables = [windows, ingest.rejects_table, score.table, score.rejects_table, select.table]
    assert len(set(tables)) == len(tables), f"({target}) two stages share a table: {tables}"
    for table in tables:
        assert "/" not in table and len(table.split(".")) == 3, \
            f"({target}) {table!r} is not a Unity Catalog name catalog.schema.table"
    # Unity Catalog tables: the score stream's checkpoint must be given, on a Volume.
    assert score.checkpoint_location, \
        f"({target}) score writes {score.table!r} without --checkpoint-location"
    for what, path in (("score --checkpoint-location", score.checkpoint_location),
                       ("score --model", score.model), ("ingest --tokenizer", ingest.tokenizer),
                       ("export --output", export.output), ("report --output", report.output)):
        assert path.startswith("/Volumes/"), f"({target}) {what} {path!r} is not on a Volume"
    assert 0 < select.keep_fraction <= 1, f"({target}) keep fraction {select.keep_fraction}"


ALL_CHECKS = (check_bundle_config, check_jobs_load, check_dag, check_compute, check_gpu_confs,
              check_wheel, check_entry_points, check_references,
              *(lambda b, t=t: check_cli_parameters(b, t) for t in TARGETS))


# --- the tests on the bundle -----------------------------------------------------------------

def test_bundle_config(bundle):
    check_bundle_config(bundle)


def test_jobs_load_with_databricks_bundles(bundle):
    check_jobs_load(bundle)


def test_dag_is_the_pipeline(bundle):
    check_dag(bundle)


def test_score_alone_on_the_dedicated_gpu_cluster(bundle):
    check_compute(bundle)


def test_only_scoring_tasks_hold_a_whole_gpu(bundle):
    check_gpu_confs(bundle)


def test_tasks_install_the_bundle_wheel(bundle):
    check_wheel(bundle)


def test_entry_points_exist(bundle):
    check_entry_points(bundle)


def test_references_are_defined(bundle):
    check_references(bundle)


@pytest.mark.parametrize("target", TARGETS)
def test_parameters_parse_with_the_cli(bundle, target):
    check_cli_parameters(bundle, target)


@pytest.mark.parametrize("target", TARGETS)
def test_job_parameters_resolve(bundle, target):
    _, job = pipeline_job(bundle)
    params = job_parameters(resolve_target(bundle, target, job))
    schema = variable_values(bundle, target)["schema"]
    assert params["windows_table"].split(".")[1] == schema
    assert not any(VAR_REF.search(str(v)) for v in params.values()), params


# --- the checks catch a broken bundle --------------------------------------------------------

JOB_FILE = "resources/longattn_pipeline.job.yml"


def _job(doc: dict) -> dict:
    return doc["resources"]["jobs"][JOB_KEY]


def _task(doc: dict, key: str) -> dict:
    return next(t for t in _job(doc)["tasks"] if t["task_key"] == key)


def _args(doc: dict, key: str) -> list:
    return _task(doc, key)["python_wheel_task"]["parameters"]


def _drop_flag(args: list, flag: str) -> None:
    i = args.index(flag)
    del args[i:i + 2]


def _set_flag(args: list, flag: str, value: str) -> None:
    args[args.index(flag) + 1] = value


def _rename_flag(args: list, old: str, new: str) -> None:
    args[args.index(old)] = new


def _cluster(doc: dict) -> dict:
    return _job(doc)["job_clusters"][0]["new_cluster"]


def _run_score_serverless(doc: dict) -> None:
    score = _task(doc, "score")
    del score["job_cluster_key"], score["libraries"]
    score["environment_key"] = "serverless"


def _run_ingest_on_gpu(doc: dict) -> None:
    ingest = _task(doc, "ingest")
    del ingest["environment_key"]
    ingest["job_cluster_key"] = "gpu_scoring"


def _misspell_field(doc: dict) -> None:
    select = _task(doc, "select")
    select["enviroment_key"] = select.pop("environment_key")


# (id, file, how it is broken, a fragment of the failure expected)
BREAKS = [
    ("misspelled flag", JOB_FILE,
     lambda d: _rename_flag(_args(d, "select"), "--keep-fraction", "--keep-fracton"),
     "unrecognized arguments: --keep-fracton"),
    ("missing required flag", JOB_FILE, lambda d: _drop_flag(_args(d, "ingest"), "--input"),
     "the following arguments are required: --input"),
    # the shipped `--config databricks` has a model, so only the unused parameter shows it
    ("model parameter not passed", JOB_FILE, lambda d: _drop_flag(_args(d, "score"), "--model"),
     "used by no task: ['model']"),
    ("wrong dependency order", JOB_FILE,
     lambda d: _task(d, "select").update(depends_on=[{"task_key": "ingest"}]),
     "task select depends on ['ingest']"),
    ("report before export", JOB_FILE,
     lambda d: (_task(d, "report").update(depends_on=[{"task_key": "select"}]),
                _task(d, "export").update(depends_on=[{"task_key": "report"}])),
     "depends on ['report']"),
    ("unknown dependency", JOB_FILE,
     lambda d: _task(d, "report").update(depends_on=[{"task_key": "exports"}]),
     "unknown task 'exports'"),
    ("missing job parameter", JOB_FILE,
     lambda d: _job(d).update(parameters=[p for p in _job(d)["parameters"]
                                          if p["name"] != "alpha"]),
     "'alpha'"),
    ("misspelled job parameter reference", JOB_FILE,
     lambda d: _set_flag(_args(d, "export"), "--selection",
                         "{{job.parameters.selection_tabel}}"),
     "selection_tabel"),
    ("unused job parameter", JOB_FILE,
     lambda d: _set_flag(_args(d, "select"), "--alpha", "0.5"), "used by no task: ['alpha']"),
    ("undeclared variable", JOB_FILE,
     lambda d: _cluster(d).update(node_type_id="${var.gpu_node}"), "${var.gpu_node}"),
    ("misspelled job field", JOB_FILE, _misspell_field, "enviroment_key"),
    ("invalid access mode", JOB_FILE,
     lambda d: _cluster(d).update(data_security_mode="DEDICATED"), "DEDICATED"),
    ("standard access mode", JOB_FILE,
     lambda d: _cluster(d).update(data_security_mode="USER_ISOLATION"), "not dedicated"),
    ("score on serverless", JOB_FILE, _run_score_serverless,
     "score runs on a serverless environment"),
    ("ingest on the GPU cluster", JOB_FILE, _run_ingest_on_gpu, "task ingest sets"),
    ("CPU runtime", "databricks.yml",
     lambda d: d["variables"]["gpu_spark_version"].update(default="17.3.x-scala2.13"),
     "not an ML GPU runtime"),
    ("a whole GPU per task", "databricks.yml",
     lambda d: d["variables"]["gpu_task_fraction"].update(default="1"),
     "every task would hold a whole GPU"),
    ("scoring tasks share a GPU", JOB_FILE,
     lambda d: _set_flag(_args(d, "score"), "--task-gpus", "0.5"), "a whole GPU per task"),
    ("wrong entry point", JOB_FILE,
     lambda d: _task(d, "select")["python_wheel_task"].update(entry_point="longattn_spark"),
     "entry_point 'longattn_spark'"),
    ("wrong package", JOB_FILE,
     lambda d: _task(d, "ingest")["python_wheel_task"].update(package_name="longattn"),
     "package_name 'longattn'"),
    ("task runs another command", JOB_FILE,
     lambda d: _args(d, "export").__setitem__(0, "report"), "task export runs"),
    ("no checkpoint location", JOB_FILE,
     lambda d: _drop_flag(_args(d, "score"), "--checkpoint-location"), "checkpoint_location"),
    ("export reads the scores table", JOB_FILE,
     lambda d: _set_flag(_args(d, "export"), "--windows", "{{job.parameters.scores_table}}"),
     "export --windows"),
    ("wheel from elsewhere", JOB_FILE,
     lambda d: _task(d, "score").update(libraries=[{"whl": "./dist/*.whl"}]),
     "is not the artifact's"),
    ("prod without root_path", "databricks.yml",
     lambda d: d["targets"]["prod"].pop("workspace"), "root_path"),
    ("dev not in development mode", "databricks.yml",
     lambda d: d["targets"]["dev"].update(mode="develop"), "mode is not development"),
]


def bundle_copy(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    shutil.copy(BUNDLE_ROOT / "databricks.yml", root)
    shutil.copy(BUNDLE_ROOT / "pyproject.toml", root)
    shutil.copytree(BUNDLE_ROOT / "resources", root / "resources")
    (root / "conf").mkdir()
    shutil.copy(BUNDLE_ROOT / "conf" / "databricks-cluster.json", root / "conf")
    return root


def failures(root: Path) -> list[str]:
    try:
        b = load_bundle(root)
    except AssertionError as exc:
        return [str(exc)]
    found = []
    for check in ALL_CHECKS:
        try:
            check(b)
        except AssertionError as exc:
            found.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a bug in the check
            found.append(f"check crashed: {exc!r}")
    return found


def test_the_copy_passes(tmp_path):
    assert failures(bundle_copy(tmp_path)) == []


@pytest.mark.parametrize("name,file,breaker,fragment", BREAKS, ids=[b[0] for b in BREAKS])
def test_checks_catch_breaks(tmp_path, name, file, breaker, fragment):
    root = bundle_copy(tmp_path)
    path = root / file
    doc = yaml.safe_load(path.read_text())
    breaker(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    found = failures(root)
    assert found, f"break {name!r} went unnoticed"
    assert not any(f.startswith("check crashed") for f in found), found
    assert any(fragment in f for f in found), f"break {name!r}: {found}"


# --- the README's commands ------------------------------------------------------------------

def readme_databricks_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("### Databricks\n")
    end = text.index("\n#", start + 1)
    return text[start:end]


def test_readme_databricks_commands(bundle):
    """The README's bundle commands name the bundle's targets, job, parameters and variables;
    its lists name every job parameter and variable; its SQL creates the dev files Volume."""
    section = readme_databricks_section()
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    commands = [line.split("#")[0].split() for line in lines if line.startswith("databricks ")]
    assert {c[2] for c in commands} >= {"validate", "deploy", "run"}, commands
    _, job = pipeline_job(bundle)
    params = {p["name"] for p in job["parameters"]}
    variables = set(bundle.config["variables"])
    targets = set(bundle.config["targets"])
    for words in commands:
        assert words[:2] == ["databricks", "bundle"], words
        for i, word in enumerate(words):
            if word in ("-t", "--target"):
                assert words[i + 1] in targets, words
            elif word == "--params":
                names = {kv.split("=")[0] for kv in words[i + 1].split(",")}
                assert names <= params, f"README: unknown job parameters {names - params}"
            elif word == "--var":
                name = words[i + 1].split("=")[0]
                assert name in variables, f"README: unknown variable {name}"
        if words[2] == "run":
            keys = [w for w in words[3:] if not w.startswith("-") and "=" not in w
                    and w not in targets]
            assert keys == [JOB_KEY], f"README runs {keys}, the bundle's job is {JOB_KEY}"
    mentioned = set(re.findall(r"`([a-z_]+)`", section))
    assert params <= mentioned, f"README does not list job parameters {params - mentioned}"
    assert variables <= mentioned, f"README does not list variables {variables - mentioned}"
    volume = re.search(r"CREATE VOLUME (\w+)\.(\w+)\.(\w+)", section).groups()
    files_volume = variable_values(bundle, "dev")["files_volume"]
    assert files_volume == "/Volumes/" + "/".join(volume), (files_volume, volume)
    schema = re.search(r"CREATE SCHEMA (\w+)\.(\w+)", section).groups()
    dev = variable_values(bundle, "dev")
    assert schema == (dev["catalog"], dev["schema"]), schema


# --- the wheel the bundle builds, and the bundle schema --------------------------------------

def test_wheel_has_the_entry_point_and_config(tmp_path, bundle):
    """The wheel a task installs has the console script and ``--config databricks``."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    shutil.copytree(REPO / "longattn_spark", src / "longattn_spark",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "dist"
    # The venv's setuptools when it can build the project (fast, offline), else pip's isolated
    # build environment (setuptools from the package index), as the bundle's build does.
    requires = pyproject(bundle)["build-system"]["requires"]
    setuptools_min = next(int(r.split(">=")[1].split(".")[0]) for r in requires
                          if r.startswith("setuptools>="))
    try:
        from importlib.metadata import version
        isolation = int(version("setuptools").split(".")[0]) < setuptools_min
    except Exception:  # noqa: BLE001 - not installed
        isolation = True
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    *([] if isolation else ["--no-build-isolation"]),
                    "--wheel-dir", str(out), str(src)], check=True)
    wheel, = out.glob("*.whl")
    project = pyproject(bundle)["project"]
    assert wheel.name.startswith(normalize(project["name"]) + "-")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    _, job = pipeline_job(bundle)
    for task in job["tasks"]:
        entry = task["python_wheel_task"]["entry_point"]
        assert f"{entry} = {project['scripts'][entry]}" in entry_points, entry_points
    assert "longattn_spark/conf/databricks.yaml" in names


def bundle_schema() -> dict | None:
    path = os.environ.get("DATABRICKS_BUNDLE_SCHEMA")
    if path:
        text = Path(path).read_text()
    elif shutil.which("databricks"):
        run = subprocess.run(["databricks", "bundle", "schema"], capture_output=True, text=True,
                             timeout=60)
        if run.returncode != 0:
            return None
        text = run.stdout
    else:
        return None
    # The schema's patterns use \p{L} / \p{N} (Go, ECMA); Python's re spells them otherwise.
    text = text.replace(r"[\\p{L}\\p{N}]", r"[^\\W_]").replace(r"\\p{L}", r"[^\\W\\d_]")
    return json.loads(text)


def test_bundle_against_the_cli_schema(bundle):
    schema = bundle_schema()
    if schema is None:
        pytest.skip("no bundle schema: set DATABRICKS_BUNDLE_SCHEMA or put the Databricks CLI "
                    "on the PATH")
    jsonschema = pytest.importorskip("jsonschema")
    merged = copy.deepcopy(bundle.config)
    for doc in bundle.resource_files.values():
        for kind, items in (doc.get("resources") or {}).items():
            merged.setdefault("resources", {}).setdefault(kind, {}).update(items)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = []
    for error in validator.iter_errors(merged):
        error = jsonschema.exceptions.best_match([error])  # the deepest failing branch
        errors.append(f"{'/'.join(map(str, error.absolute_path))}: {error.message[:200]}")
    assert not errors, errors
