"""The driver's side of a model on shared storage: ``locate_model`` reads only small files
through ``longattn_spark.paths`` (the Hadoop FileSystem the job reads; a scheme-less path is
the cluster's default filesystem): the folder listing, config.json, the checkpoint index. It
decides which files scoring needs and records each one's fully qualified path, size and
modification time in a ``ModelLocation``, which travels to the executors in the task closure;
nothing is copied to the driver's disk. Validating the model and hashing its weights as they
stream past is ``weights.reader`` / ``weights.fingerprint``; fetching on the executors is
``weights.location``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from longattn_spark import paths
from longattn_spark.errors import InputError
from longattn_spark.weights.files import (
    PICKLE_INDEX,
    PICKLE_SINGLE,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
)
from longattn_spark.weights.location import ModelFile, ModelLocation

#: The small files any scoring reads beside the weights, when the folder has them.
SMALL_FILES = ("config.json", "generation_config.json", "tokenizer_config.json")

#: ``needed(file names, parsed checkpoint index or None)`` -> the names scoring reads.
FilesNeeded = Callable[[Sequence[str], "dict | None"], list[str]]


#: Files of a model folder, besides its weights, that a whole-model load reads (config,
#: generation config, tokenizer files); no code (.py), since remote code is never run.
WHOLE_MODEL_SUFFIXES = (".json", ".txt", ".model", ".tiktoken")


def files_needed_whole(file_names: Sequence[str], index: dict | None) -> list[str]:
    """The files a whole causal LM needs (ProLong): every small config / tokenizer file
    (``WHOLE_MODEL_SUFFIXES``) and every weight file of one format: the safetensors index
    and all the shards it lists, or model.safetensors; pickled ``.bin`` only when there is
    no safetensors (pure: names in, names out)."""
    weight_names = {SAFETENSORS_INDEX, PICKLE_INDEX, SAFETENSORS_SINGLE, PICKLE_SINGLE}
    small = [name for name in sorted(file_names) if name.endswith(WHOLE_MODEL_SUFFIXES)
             and name not in weight_names]
    pickle_index_only = SAFETENSORS_INDEX not in file_names and SAFETENSORS_SINGLE in file_names
    if index is not None and not pickle_index_only:
        index_name = SAFETENSORS_INDEX if SAFETENSORS_INDEX in file_names else PICKLE_INDEX
        shards = sorted(set(index.get("weight_map", {}).values()))
        return small + [index_name] + shards
    for single in (SAFETENSORS_SINGLE, PICKLE_SINGLE):
        if single in file_names:
            return small + [single]
    return small


def is_remote(spark, model: str) -> bool:
    """Whether executors must fetch ``model``: any URI (``file:`` included, which reads the
    executor's own disk through Hadoop), or a scheme-less path on a non-local default FS."""
    return paths.has_scheme(model) or not paths.is_local(spark, model)


def locate_model(spark, model: str, option: str = "--model", *,
                 needed: FilesNeeded = files_needed_whole) -> ModelLocation:
    """Check the model folder and list what scoring needs, reading small files only: the
    files ``needed`` chooses from the folder's file names and its checkpoint index (default:
    every file a whole causal LM needs, ``files_needed_whole``; LongAttn passes the files of
    its layers, ``scorers.longattn.locate.files_needed``).

    One-line ``InputError`` naming the path and its filesystem when the folder is missing, is
    not a folder, has no config.json, or lacks a shard its index lists."""
    if not model:
        raise InputError(f"{option} is required: a folder with config.json and safetensors")
    found = paths.status(spark, model)
    if found is None:
        raise InputError(f"{option} {paths.where(spark, model)}: no such folder")
    if not found.is_dir:
        raise InputError(f"{option} {paths.where(spark, model)}: not a folder (a model folder "
                         f"holds config.json and safetensors)")
    entries = {e.name: e for e in paths.list_dir(spark, model) if not e.is_dir}
    if "config.json" not in entries:
        raise InputError(f"{option} {paths.where(spark, model)}: no config.json in this folder")
    index = None
    for index_name in (SAFETENSORS_INDEX, PICKLE_INDEX):
        if index_name in entries:
            text = paths.read_bytes(spark, entries[index_name].path)
            try:
                index = json.loads(text)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InputError(f"{option} {paths.where(spark, entries[index_name].path)}: "
                                 f"not a valid checkpoint index ({exc})") from None
            break
    wanted = needed(sorted(entries), index)
    missing = [name for name in wanted if name not in entries]
    if missing:
        raise InputError(f"{option} {paths.where(spark, model)}: {', '.join(missing)} listed in "
                         f"the checkpoint index but missing")
    if not is_remote(spark, model):
        return ModelLocation(model=model, folder=str(paths.local_path(found.path)),
                             in_place=True, files=tuple(
            ModelFile(n, entries[n].path, entries[n].length, entries[n].modified_ms)
            for n in wanted))
    # Fetched: every path fully qualified, so that the executors' FsShell reads the same
    # filesystem whatever its default.
    return ModelLocation(model=model, folder=_qualified(found.path), in_place=False,
                         files=tuple(ModelFile(n, _qualified(entries[n].path), entries[n].length,
                                               entries[n].modified_ms) for n in wanted),
                         hadoop_settings=paths.hadoop_settings(spark))


def _qualified(path: str) -> str:
    return path if paths.has_scheme(path) else "file://" + path
