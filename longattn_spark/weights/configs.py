"""What a model folder's small JSON files say that more than one method reads: the BOS token
id (config.json, else generation_config.json) and a JSON object that may be missing or
broken (generation_config.json is optional, and a bad one is treated as absent)."""

from __future__ import annotations

from typing import Any

GENERATION_CONFIG = "generation_config.json"


def bos_token_id(raw_config: dict[str, Any], generation_config: dict[str, Any] | None
                 ) -> int | None:
    """BOS id from config.json, else generation_config.json (the first of a list)."""
    bos = raw_config.get("bos_token_id")
    if bos is None and generation_config:
        bos = generation_config.get("bos_token_id")
    if isinstance(bos, (list, tuple)):
        bos = bos[0] if bos else None
    return None if bos is None else int(bos)


def optional_json(data: bytes | None) -> dict[str, Any] | None:
    """The JSON object in ``data``, or None when there is none (missing, not JSON, not an
    object)."""
    import json

    if data is None:
        return None
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None
