"""Delta's optimistic-concurrency conflicts: recognized (delta-spark's typed exceptions on a
classic session, Delta's error classes on Spark Connect) and retried with back-off."""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Callable
from typing import TypeVar

R = TypeVar("R")


def conflict_types() -> tuple[type[BaseException], ...]:
    """delta-spark's typed exceptions for optimistic-concurrency conflicts (importing
    ``delta.exceptions.captured`` makes py4j raise them instead of a generic error); none
    where delta-spark's Python package is not installed (Databricks serverless)."""
    try:
        importlib.import_module("delta.exceptions.captured")  # installs the conversion
    except ImportError:
        return ()
    from delta.exceptions import (
        ConcurrentAppendException,
        ConcurrentDeleteDeleteException,
        ConcurrentDeleteReadException,
        ConcurrentTransactionException,
        ConcurrentWriteException,
        DeltaConcurrentModificationException,
        MetadataChangedException,
        ProtocolChangedException,
    )

    return (ConcurrentAppendException, ConcurrentDeleteDeleteException,
            ConcurrentDeleteReadException, ConcurrentTransactionException,
            ConcurrentWriteException, DeltaConcurrentModificationException,
            MetadataChangedException, ProtocolChangedException)


def retry_on_conflict(action: Callable[[], R], what: str, attempts: int = 8) -> R:
    """Run ``action``, retrying Delta's optimistic-concurrency conflicts with back-off."""
    conflict_types()  # before the action: py4j then raises delta-spark's typed exceptions
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:
            if not is_write_conflict(exc) or attempt + 1 == attempts:
                raise
            time.sleep(0.5 * 2 ** attempt * (1 + random.random()))
    raise AssertionError("unreachable")


#: Delta's error classes for optimistic-concurrency conflicts (what a Spark Connect client
#: sees; classic sessions also get delta-spark's typed exceptions).
CONFLICT_ERROR_CLASSES = ("DELTA_CONCURRENT_APPEND", "DELTA_CONCURRENT_DELETE_DELETE",
                          "DELTA_CONCURRENT_DELETE_READ", "DELTA_CONCURRENT_TRANSACTION",
                          "DELTA_CONCURRENT_WRITE", "DELTA_METADATA_CHANGED",
                          "DELTA_PROTOCOL_CHANGED")


def error_class(exc: BaseException) -> str:
    """The Spark error class (condition) of ``exc``, '' when it has none."""
    condition = getattr(exc, "getCondition", None) or getattr(exc, "getErrorClass", None)
    try:
        return (condition() if condition is not None else None) or ""
    except Exception:  # noqa: BLE001 - an exception without an error class
        return ""


def is_write_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is one of Delta's optimistic-concurrency conflicts (worth a retry)."""
    return isinstance(exc, conflict_types()) or error_class(exc).startswith(
        CONFLICT_ERROR_CLASSES)
