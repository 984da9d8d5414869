"""A demo corpus from files every machine with Python has: no download.

Three categories, each a different kind of long text:

- ``code``: the Python standard library's own sources (``*.py``);
- ``docs``: the standard library's documentation as ``pydoc`` renders it (prose, signatures);
- ``legal``: license and notice files shipped by the installed Python packages.
"""

from __future__ import annotations

import json
import pydoc
import sysconfig
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

DOC_MODULES = ("argparse", "asyncio.events", "collections", "concurrent.futures", "csv",
               "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum",
               "functools", "http.client", "inspect", "itertools", "json", "logging",
               "multiprocessing.pool", "os", "pathlib", "pickle", "re", "shutil", "socket",
               "sqlite3", "statistics", "string", "subprocess", "tarfile", "threading",
               "typing", "unittest.case", "urllib.request", "zipfile", "ssl", "random",
               "tempfile", "textwrap", "configparser", "optparse")
LICENSE_PREFIXES = ("license", "licence", "copying", "notice")


def code_documents(min_chars: int) -> Iterator[dict]:
    """Standard-library modules, largest first (deterministic order)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in stdlib.glob("*.py") if p.stat().st_size >= min_chars]
    for path in sorted(files, key=lambda p: (-p.stat().st_size, p.name)):
        text = path.read_text(encoding="utf-8", errors="strict")
        yield {"id": f"code/{path.name}", "category": "code", "text": text}


def docs_documents(min_chars: int) -> Iterator[dict]:
    """pydoc's plain-text documentation of standard-library modules."""
    for name in DOC_MODULES:
        try:
            text = pydoc.plain(pydoc.render_doc(name, renderer=pydoc.plaintext))
        except (ImportError, pydoc.ErrorDuringImport):
            continue
        if len(text) >= min_chars:
            yield {"id": f"docs/{name}", "category": "docs", "text": text}


def legal_documents(min_chars: int) -> Iterator[dict]:
    """License and notice files of installed distributions, one document per distinct file."""
    seen: set[str] = set()
    candidates = []
    for dist in metadata.distributions():
        for file in dist.files or []:
            if file.name.lower().startswith(LICENSE_PREFIXES):
                candidates.append((dist.metadata["Name"] or "unknown", file, dist))
    for name, file, dist in sorted(candidates, key=lambda c: (c[0].lower(), str(c[1]))):
        path = Path(dist.locate_file(file))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) < min_chars or text in seen:
            continue
        seen.add(text)
        yield {"id": f"legal/{name.lower()}/{file.name}", "category": "legal", "text": text}


def cut_at_line(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters at the end of a line (0: uncut)."""
    if not max_chars or len(text) <= max_chars:
        return text
    end = text.rfind("\n", 0, max_chars)
    return text[:end + 1 if end > 0 else max_chars]


def build_demo_corpus(output: str | Path, max_docs_per_category: int = 40,
                      min_chars: int = 8000, max_chars: int = 0) -> dict[str, int]:
    """Write ``output`` (JSONL: id, category, text), each text cut to about ``max_chars``
    (0: whole); return documents per category."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    ids: set[str] = set()
    with output.open("w", encoding="utf-8") as f:
        for source in (code_documents, docs_documents, legal_documents):
            for doc in source(min_chars):
                if counts.get(doc["category"], 0) >= max_docs_per_category:
                    break
                if doc["id"] in ids:  # two installed copies of one distribution
                    continue
                ids.add(doc["id"])
                doc = {**doc, "text": cut_at_line(doc["text"], max_chars)}
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                counts[doc["category"]] = counts.get(doc["category"], 0) + 1
    return counts
