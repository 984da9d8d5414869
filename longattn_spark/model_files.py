"""Getting a model's layer-0 files to the executors.

A local path, or a mounted volume (``/Volumes/...``, ``/dbfs/...``) that every node sees, is
used where it is. A remote URI (``s3://``, ``s3a://``, ``abfss://``, ``gs://``, ``dbfs:/``,
``file:/``...) is copied by the driver through Hadoop's FileSystem (so any store the cluster
can read works) into a local staging folder holding only what scoring needs: ``config.json``,
the tokenizer/generation configs when present, the safetensors index, and the shards that
hold the layer-0 tensors. That folder is shipped to each executor once with
``SparkContext.addFile`` and found there with ``SparkFiles.get``.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from longattn_spark.errors import InputError
from longattn_spark.scoring.checkpoint import (
    NAME_PREFIXES,
    PICKLE_INDEX,
    PICKLE_SINGLE,
    ROLE_NAMES,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
)

SMALL_FILES = ("config.json", "generation_config.json", "tokenizer_config.json")
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class ModelLocation:
    """Where executors find the model: a path they can read, or a shipped folder name."""

    local_dir: str            # on the driver
    shipped_name: str | None  # SparkFiles name when the folder was shipped with addFile

    def executor_path(self) -> str:
        """The model folder as seen from the executor this runs on."""
        if self.shipped_name is None:
            return self.local_dir
        from pyspark import SparkFiles

        return SparkFiles.get(self.shipped_name)


def is_remote(model: str) -> bool:
    return bool(_URI.match(model)) and not model.startswith("/")


def files_needed(file_names: list[str], index: dict | None) -> list[str]:
    """The files of a checkpoint folder that scoring reads (pure: names in, names out)."""
    needed = [name for name in SMALL_FILES if name in file_names]
    if index is not None:
        weight_map = index.get("weight_map", {})
        wanted = {prefix + name for prefix in NAME_PREFIXES for name in ROLE_NAMES.values()}
        shards = sorted({file for tensor, file in weight_map.items() if tensor in wanted})
        index_name = SAFETENSORS_INDEX if SAFETENSORS_INDEX in file_names else PICKLE_INDEX
        return needed + [index_name] + shards
    for single in (SAFETENSORS_SINGLE, PICKLE_SINGLE):
        if single in file_names:
            return needed + [single]
    return needed


def locate_model(spark, model: str) -> ModelLocation:
    """Local paths as they are; remote URIs staged on the driver and shipped to executors."""
    if not model:
        raise InputError("--model is required: a folder with config.json and safetensors")
    if not is_remote(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise InputError(f"--model {model}: no such folder")
        return ModelLocation(local_dir=str(path.resolve()), shipped_name=None)
    staged = _stage_remote(spark, model)
    spark.sparkContext.addFile(str(staged), recursive=True)
    return ModelLocation(local_dir=str(staged), shipped_name=staged.name)


def _stage_remote(spark, uri: str) -> Path:
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    root = jvm.org.apache.hadoop.fs.Path(uri)
    fs = root.getFileSystem(conf)
    if not fs.exists(root):
        raise InputError(f"--model {uri}: no such folder")
    names = [status.getPath().getName() for status in fs.listStatus(root)]
    index = None
    for index_name in (SAFETENSORS_INDEX, PICKLE_INDEX):
        if index_name in names:
            stream = fs.open(jvm.org.apache.hadoop.fs.Path(root, index_name))
            try:
                index = json.loads(jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
            finally:
                stream.close()
            break
    needed = files_needed(names, index)
    if "config.json" not in needed:
        raise InputError(f"--model {uri}: no config.json")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    staged = Path(tempfile.gettempdir()) / "longattn-models" / f"longattn-model-{digest}"
    staged.mkdir(parents=True, exist_ok=True)
    for name in needed:
        target = staged / name
        if target.exists():
            continue
        partial = staged / f".{name}.partial"
        fs.copyToLocalFile(False, jvm.org.apache.hadoop.fs.Path(root, name),
                           jvm.org.apache.hadoop.fs.Path(str(partial)), True)
        partial.rename(target)
    return staged
