"""The package's structure, checked statically (Python's ``ast``, no import, no Spark).

What is enforced:

- **No import cycle** among ``longattn_spark`` modules, counting every import statement:
  module level, under ``if TYPE_CHECKING:`` and inside functions alike. A function-level
  import runs later than a module-level one, but a cycle through it is still two modules that
  cannot be understood (or moved) one without the other, so it counts. ``from P import name``
  is an edge to ``P.name`` when that is a module, else to ``P`` (its ``__init__``). Not seen:
  imports by string (``importlib.import_module``, the method registry's ``BUILTIN``), and the
  implicit run of a parent package's ``__init__`` when a submodule is imported.
- **No cycle between the top-level sub-packages** (``scorers``, ``score``, ``weights``, ...;
  a top-level module such as ``tokenizer`` counts as one): shared parts sit below the stages
  that use them.
- **No private name across packages**: ``from M import _name``, or ``alias._name`` on an
  imported ``longattn_spark`` module, is allowed only within the package that defines it.
- ``scorers`` never imports ``score``; ``report`` and ``probe`` do not import each other both
  ways (the report imports the probe's public section builder, ``probe.report``).
- **No module over 500 lines.**
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "longattn_spark"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    source: str      # importing module
    target: str      # imported module (a package means its __init__)
    names: tuple[str, ...]   # names taken from ``target`` (``from target import a, b``)
    kind: str        # module, type_checking or function
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def package_of(module: str) -> str:
    """The package a module belongs to: itself for a package, else its parent."""
    return module if modules()[module].name == "__init__.py" else module.rsplit(".", 1)[0]


def top_level(module: str) -> str:
    """``longattn_spark.<first part>``: the sub-package (or top-level module) of ``module``."""
    return ".".join(module.split(".")[:2])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if package_of(module) == module else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports_of(module: str, tree: ast.Module) -> list[Import]:
    found: list[Import] = []

    def add(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    found.append(Import(module, alias.name, (), kind, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            if target.split(".")[0] != PACKAGE:
                return
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in modules():
                    found.append(Import(module, submodule, (), kind, node.lineno))
                else:
                    found.append(Import(module, target, (alias.name,), kind, node.lineno))

    def walk(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            child_kind = kind
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                child_kind = "function"
            elif isinstance(child, ast.If) and _is_type_checking(child.test) and kind == "module":
                for inner in child.body:
                    add(inner, "type_checking")
                    walk(inner, "type_checking")
                for inner in child.orelse:
                    add(inner, kind)
                    walk(inner, kind)
                continue
            add(child, child_kind)
            walk(child, child_kind)

    walk(tree, "module")
    return found


@functools.cache
def trees() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(), str(path)) for name, path in modules().items()}


@functools.cache
def imports() -> tuple[Import, ...]:
    return tuple(i for name, tree in trees().items() for i in _imports_of(name, tree))


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of the directed graph ``edges``: its strongly connected components
    of more than one node (Tarjan), each sorted; empty when the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def _where(source: str, target: str, group=lambda m: m) -> str:
    lines = {f"{modules()[i.source].relative_to(ROOT.parent)}:{i.line} ({i.kind})"
             for i in imports() if group(i.source) == source and group(i.target) == target}
    return ", ".join(sorted(lines))


def _described(cycle: list[str], edges: dict[str, set[str]], group=lambda m: m) -> str:
    """A cycle's members and the import lines between them."""
    members = set(cycle)
    return " <-> ".join(cycle) + ": " + "; ".join(
        f"{a} -> {b} at {_where(a, b, group)}" for a in cycle for b in sorted(edges[a])
        if b in members)


def test_no_import_cycle_between_modules():
    edges: dict[str, set[str]] = {}
    for i in imports():
        if i.source != i.target:
            edges.setdefault(i.source, set()).add(i.target)
    cycles = [_described(cycle, edges) for cycle in import_cycles(edges)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_import_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for i in imports():
        source, target = top_level(i.source), top_level(i.target)
        if source != target and target != PACKAGE:
            edges.setdefault(source, set()).add(target)
    cycles = [_described(cycle, edges, top_level) for cycle in import_cycles(edges)]
    assert not cycles, "package cycles:\n" + "\n".join(cycles)


def _module_aliases(tree: ast.Module, module: str) -> dict[str, str]:
    """Names bound to ``longattn_spark`` modules anywhere in ``tree`` -> the module."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE and alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            for alias in node.names:
                if f"{target}.{alias.name}" in modules():
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
    return aliases


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses() -> list[str]:
    """Every use of another package's private name: ``file:line module._name``."""
    found = []
    for i in imports():
        for name in i.names:
            if _private(name) and package_of(i.target) != package_of(i.source):
                found.append(f"{modules()[i.source].relative_to(ROOT.parent)}:{i.line} "
                             f"{i.target}.{name}")
    for module, tree in trees().items():
        aliases = _module_aliases(tree, module)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id in aliases and _private(node.attr):
                target = aliases[node.value.id]
                if package_of(target) != package_of(module):
                    found.append(f"{modules()[module].relative_to(ROOT.parent)}:{node.lineno} "
                                 f"{target}.{node.attr}")
    return sorted(found)


def test_no_private_name_is_used_across_packages():
    found = private_uses()
    assert not found, "private names used outside their package:\n" + "\n".join(found)


def test_scorers_never_import_score():
    found = [f"{modules()[i.source].relative_to(ROOT.parent)}:{i.line} imports {i.target}"
             for i in imports() if top_level(i.source) == f"{PACKAGE}.scorers"
             and top_level(i.target) == f"{PACKAGE}.score"]
    assert not found, "scorers imports score:\n" + "\n".join(found)


def test_report_and_probe_do_not_import_each_other_both_ways():
    report, probe = f"{PACKAGE}.report", f"{PACKAGE}.probe"
    report_to_probe = _where(report, probe, top_level)
    probe_to_report = _where(probe, report, top_level)
    assert not (report_to_probe and probe_to_report), \
        f"report -> probe: {report_to_probe}; probe -> report: {probe_to_report}"


def test_no_module_over_500_lines():
    found = [f"{path.relative_to(ROOT.parent)}: {lines} lines" for path, lines in (
        (path, len(path.read_text().splitlines())) for path in modules().values())
        if lines > MAX_LINES]
    assert not found, "modules over 500 lines:\n" + "\n".join(found)


def test_the_checks_see_imports_of_every_kind():
    """The import reader itself: module-level, TYPE_CHECKING and function-level imports, and
    ``from`` imports of a submodule, are all seen (else the checks above pass vacuously)."""
    kinds = {(i.source, i.target): i.kind for i in imports()}
    assert kinds[(f"{PACKAGE}.cli", f"{PACKAGE}.config")] == "module"
    assert "type_checking" in {i.kind for i in imports()}
    assert "function" in {i.kind for i in imports()}
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "d": {"d"}}) == []
