"""A model folder's weight files: their names (safetensors, one file or an index and its
shards; pickled ``.bin`` the same way), and the one refusal of pickled weights (they can run
code when loaded) unless ``--allow-pickle``; even then they are read with
``torch.load(weights_only=True)``. No Spark, and torch only where a pickle is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from longattn_spark.errors import InputError

if TYPE_CHECKING:
    import torch

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


def pickle_refused(path: str) -> InputError:
    """The error for pickled weights without ``--allow-pickle`` (``path``: the .bin file)."""
    return InputError(f"{path}: pickled .bin weights can run arbitrary code when loaded and are "
                      f"refused; convert the model to safetensors, or pass --allow-pickle "
                      f"(allow_pickle=True) if you trust this file")


def pickle_not_in_place(path: str, where: str) -> InputError:
    """A pickled checkpoint has no header to read remotely: only a local or mounted folder."""
    return InputError(f"{path}: a pickled .bin checkpoint can only be scored from a local or "
                      f"mounted folder; convert it to safetensors to read it from {where}")


def uses_safetensors(folder: Path, allow_pickle: bool) -> bool:
    """True: the folder's weights are safetensors; False: pickled .bin, only with
    ``allow_pickle`` (``pickle_refused`` otherwise)."""
    if any((folder / name).is_file() for name in (SAFETENSORS_INDEX, SAFETENSORS_SINGLE)):
        return True
    pickles = [name for name in (PICKLE_INDEX, PICKLE_SINGLE) if (folder / name).is_file()]
    if not pickles:
        raise InputError(f"{folder}: no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX} in the "
                         f"model folder")
    if not allow_pickle:
        raise pickle_refused(str(folder / pickles[0]))
    return False


def load_pickled_state_dict(file_path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, memory-mapped where the file format allows it; only called
    after the caller opted in with allow_pickle=True."""
    import pickle

    import torch

    try:
        try:
            state = torch.load(file_path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            state = torch.load(file_path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise InputError(f"{file_path}: cannot load it as a weights-only state dict "
                         f"({exc})") from None
    if not isinstance(state, dict):
        raise InputError(f"{file_path}: expected a state dict of tensors")
    return state
