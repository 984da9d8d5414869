"""Long documents for tests, from files every Python installation has (the demo corpus's
standard-library sources): the suite needs nothing outside the repository."""

from __future__ import annotations

from longattn_spark.demo.corpus import code_documents


def long_documents(category: str, n: int, chars: int, offset: int = 0,
                   ids: list[str] | None = None) -> list[dict]:
    """``n`` documents of exactly ``chars`` characters (the standard library's largest
    modules, largest first, from the ``offset``-th on), labelled ``category``, with their
    module names as ids unless ``ids`` are given. Deterministic for one Python version."""
    found = [d for _, d in zip(range(offset + n), code_documents(chars))][offset:]
    if len(found) < n:
        raise AssertionError(f"the standard library has fewer than {offset + n} modules of "
                             f"{chars} characters")
    return [{"id": ids[i] if ids else f"{category}/{d['id'].removeprefix('code/')}",
             "category": category, "text": d["text"][:chars]} for i, d in enumerate(found)]
