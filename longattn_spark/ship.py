"""The package travels with the job to a Spark Connect server.

A Spark Connect server runs the jobs' Python UDFs (tokenizing, scoring, exporting) in its own
Python, where nobody may have installed longattn-spark (Databricks standard access mode,
serverless, a plain ``SparkConnectServer``). So a remote session gets the installed package
as a zip artifact (``SparkSession.addArtifacts(zip, pyfile=True)``) before its first UDF. The
zip is built from the package's own files and cached on disk per version and content hash.

Third-party packages (tokenizers, torch, ...) are not shipped: compiled wheels must match the
server's platform. One that is missing there ends the job with one line naming it and how to
install it on the server (``missing_server_package``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import tempfile
import zipfile
from pathlib import Path

import longattn_spark

PACKAGE = "longattn_spark"
DISTRIBUTION = "longattn-spark"
#: Where built zips are kept (outside git, like Spark's ivy cache).
CACHE = Path("~/.cache/longattn-spark/ship")
#: Every zip entry gets this time, so that the same files give the same bytes.
_EPOCH = (2020, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".so.tmp")


def package_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """(name in the zip, file) for every file of the installed package, sorted."""
    root = Path(root or Path(longattn_spark.__file__).parent)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in filenames:
            if name.endswith(_SKIP_SUFFIXES):
                continue
            path = Path(dirpath) / name
            found.append((f"{PACKAGE}/{path.relative_to(root).as_posix()}", path))
    return sorted(found)


def content_hash(files: list[tuple[str, Path]]) -> str:
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def package_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0"


def package_zip(cache: Path | None = None) -> Path:
    """The zip of the installed package (``longattn_spark/...``, importable from
    ``sys.path``), built once per version and content: ``<cache>/longattn_spark-<version>-
    <hash>.zip``. Written to a temporary name and renamed, so concurrent jobs never see half
    a zip."""
    files = package_files()
    folder = Path(cache or CACHE).expanduser()
    target = folder / f"{PACKAGE}-{package_version()}-{content_hash(files)}.zip"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".building-", suffix=".zip", dir=folder)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for name, path in files:
                info = zipfile.ZipInfo(name, date_time=_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                out.writestr(info, path.read_bytes())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


_SHIPPED: set[str] = set()


def ship_package(spark) -> Path | None:
    """Add the package zip to a Spark Connect session's Python path on the server (once per
    session); None for a classic session, whose executors use the driver's installation or
    spark-submit's ``--py-files``/``--archives``."""
    from longattn_spark import paths

    if not paths.is_connect(spark):
        return None
    key = getattr(spark, "session_id", None) or str(id(spark))
    zipped = package_zip()
    if key not in _SHIPPED:
        spark.addArtifacts(str(zipped), pyfile=True)
        _SHIPPED.add(key)
    return zipped


_NO_MODULE = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '([^']+)'")


def missing_server_package(exc: BaseException) -> str | None:
    """When ``exc`` is a Python UDF that failed on the server because a package is missing
    there: one line naming the package and how to install it on the server; else None."""
    if type(exc).__name__ != "PythonException" and "PythonException" not in str(exc)[:200]:
        return None
    found = _NO_MODULE.search(str(exc))
    if found is None:
        return None
    module = found.group(1).split(".")[0]
    if module == PACKAGE:
        return (f"the server's Python cannot import {PACKAGE} although it was shipped with "
                "the job (addArtifacts): check that the server allows Python artifacts")
    requirement = requirement_of(module)
    return (f"the Spark Connect server's Python has no package {module!r} (needed on the "
            f"executors): install {requirement} there: as a cluster library (Databricks: "
            "Compute > Libraries > PyPI), as a dependency of the serverless environment "
            "(Environment > Dependencies), or with pip in the server's Python")


def requirement_of(module: str) -> str:
    """The PyPI requirement that provides ``module``, as this package declares it (e.g.
    ``tokenizers>=0.20``), else the distribution's name, else the module's."""
    try:
        dists = importlib.metadata.packages_distributions().get(module) or [module]
    except Exception:  # noqa: BLE001 - metadata is a nicety here
        dists = [module]
    names = {d.lower().replace("_", "-") for d in dists}
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        declared = []
    for spec in declared:
        base = spec.split(";")[0].strip()
        name = re.split(r"[\s<>=!~\[]", base, maxsplit=1)[0].lower().replace("_", "-")
        if name in names:
            return re.sub(r"\[[^\]]*\]", "", base).replace(" ", "")
    return sorted(dists)[0]
