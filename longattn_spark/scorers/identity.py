"""The one scorer_id hash: ``<prefix>-`` + 24 hex digits of SHA-256 over the canonical JSON
(sorted keys, no whitespace) of everything that changes a method's scores. Every method
(``l0-`` LongAttn, ``pl-`` ProLong, ``lg-`` loss gain, plugins) names its rows with it, so two
runs with the same id are comparable. A value JSON cannot encode is written as ``str(value)``
(a field that encodes today keeps its id: JSON without ``default`` would have refused it)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def scorer_id(prefix: str, fields: dict[str, Any]) -> str:
    """``<prefix>-<24 hex>``: SHA-256 of ``fields`` as canonical JSON."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return f"{prefix}-" + hashlib.sha256(canonical.encode()).hexdigest()[:24]
