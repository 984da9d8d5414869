"""LongAttn's model on the driver: which files of the folder scoring layer N reads
(``files_needed``: the small configs, and the shards holding layer N's attention tensors and
every tensor of the layers below it), located on any filesystem (``locate_layers``), and the
model described from config.json and the safetensors headers without copying any weights
(``describe_model``; the fingerprint streamed through a hash)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from longattn_spark import paths
from longattn_spark.errors import InputError
from longattn_spark.scorers.longattn.checkpoint import (
    NAME_PREFIXES,
    Layer0Checkpoint,
    describe_layer0_checkpoint,
    layer_role_names,
    load_layer0_checkpoint,
    lower_layer_names,
)
from longattn_spark.weights.files import (
    PICKLE_INDEX,
    PICKLE_SINGLE,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
)
from longattn_spark.weights.locate import SMALL_FILES, locate_model
from longattn_spark.weights.location import ModelLocation
from longattn_spark.weights.reader import ModelReader


def files_needed(file_names: Sequence[str], index: dict | None, layer: int = 0) -> list[str]:
    """The files of a checkpoint folder that LongAttn at ``layer`` reads: the small configs,
    and the shards holding layer ``layer``'s attention tensors and every tensor of the layers
    below it (pure: names in, names out)."""
    needed = [name for name in SMALL_FILES if name in file_names]
    if index is not None:
        weight_map = index.get("weight_map", {})
        wanted = {prefix + name for prefix in NAME_PREFIXES
                  for name in layer_role_names(layer).values()}
        wanted.update(name for prefix in NAME_PREFIXES
                      for name in lower_layer_names(weight_map, prefix, layer))
        shards = sorted({file for tensor, file in weight_map.items() if tensor in wanted})
        index_name = SAFETENSORS_INDEX if SAFETENSORS_INDEX in file_names else PICKLE_INDEX
        return needed + [index_name] + shards
    for single in (SAFETENSORS_SINGLE, PICKLE_SINGLE):
        if single in file_names:
            return needed + [single]
    return needed


def locate_layers(spark, model: str, layer: int = 0, option: str = "--model") -> ModelLocation:
    """The files of ``model`` that scoring layer ``layer`` reads (``files_needed``), located
    as ``weights.locate.locate_model`` does (one-line ``InputError`` on a bad folder)."""
    return locate_model(spark, model, option, needed=functools.partial(files_needed,
                                                                       layer=layer))


def describe_model(spark, location: ModelLocation, *, allow_pickle: bool = False,
                   layer: int = 0) -> Layer0Checkpoint:
    """The model's ``Layer0Checkpoint`` (for scoring ``layer``) as the driver sees it,
    without copying weights: tensors on the meta device, fingerprint hashed from the streamed
    tensor bytes (see ``checkpoint.describe_layer0_checkpoint``). A local pickled checkpoint,
    which has no header to read, is loaded in place (only with ``allow_pickle``)."""
    names = [f.name for f in location.files]
    is_pickle = not any(n in (SAFETENSORS_INDEX, SAFETENSORS_SINGLE) for n in names) and \
        any(n in (PICKLE_INDEX, PICKLE_SINGLE) for n in names)
    if location.in_place and is_pickle and allow_pickle:
        if paths.is_connect(spark) and not paths.client_sees(location.folder):
            raise InputError(f"--model {location.model}: a pickled checkpoint is loaded by the "
                             f"driver itself, which a Spark Connect client cannot do; convert "
                             f"it to safetensors (or score on a classic session)")
        return load_layer0_checkpoint(location.folder, allow_pickle=True, layer=layer)
    return describe_layer0_checkpoint(location.folder, ModelReader(spark, location),
                                      allow_pickle=allow_pickle, layer=layer)
