"""The expression language of selection recipes (``--rank``, ``--where``): parsed here into a
small typed tree, checked against the components the scorers declare, before any Spark job.
Pure Python: ``spark.py`` turns a checked tree into Spark Column expressions (select), and
``evaluate.py`` evaluates it with numpy (probe, tests). An expression is never pasted into SQL.

Grammar (lowest precedence first; keywords are case-insensitive)::

    expr    := and ('or' and)*
    and     := not ('and' not)*
    not     := 'not' not | compare
    compare := sum (('<' | '<=' | '>' | '>=' | '==' | '=' | '!=' | '<>') sum)?
    sum     := product (('+' | '-') product)*
    product := unary (('*' | '/') unary)*
    unary   := ('-' | '+') unary | atom
    atom    := number | name | name '.' name | function '(' expr (',' expr)* ')' | '(' expr ')'

- A name is a component of one of the recipe's scorers (``dependency_gain``), qualified by
  the scorer's name (its method, or its ``as`` alias) when several scorers are joined
  (``lossgain.dependency_gain``); an unqualified name must belong to exactly one scorer.
  A name may instead be a parameter of the recipe (``alpha``).
- Category statistics, computed per category over the windows being selected (in the probe:
  over the category's natural windows): ``z(e)`` = (e - mean) / sample standard deviation
  (0 when the category has one window or no spread), ``pct(e)`` = the share of the windows
  whose e is lower, ties counting half (mid-rank percentile, in [0, 1]), ``minmax(e)`` =
  (e - min) / (max - min) (0 without spread). Their argument holds no statistic.
- ``abs(e)``, ``ln(e)`` (null for e <= 0), ``least(a, b, ...)``, ``greatest(a, b, ...)``;
  ``a / b`` is null when b is 0.
- Types: arithmetic and statistics take and give numbers; comparisons give booleans;
  ``and``/``or``/``not`` take booleans (SQL's three-valued logic: a null compares as
  unknown). A rank is a number, a filter a boolean. A filter that is not true (false or
  unknown) drops the window.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from longattn_spark.errors import ConfigError

NUMBER, BOOLEAN = "number", "boolean"
#: statistics over the category: their value depends on the other windows
STATISTICS = ("z", "pct", "minmax")
#: row-wise functions and the number of arguments they take (None: two or more)
FUNCTIONS: dict[str, int | None] = {"z": 1, "pct": 1, "minmax": 1, "abs": 1, "ln": 1,
                                    "least": None, "greatest": None}
COMPARISONS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "=": "==",
               "!=": "!=", "<>": "!="}
KEYWORDS = ("and", "or", "not")

_TOKEN = re.compile(r"""\s*(?:
    (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|==|!=|<>|[-+*/(),.<>=])
)""", re.VERBOSE)


# --- the tree ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Name:
    """A name as written: ``qualifier.name`` or ``name``."""

    name: str
    qualifier: str | None = None

    def __str__(self) -> str:
        return f"{self.qualifier}.{self.name}" if self.qualifier else self.name


@dataclass(frozen=True)
class Component:
    """A resolved component: scorer ``scorer`` (its name in the recipe), component ``name``."""

    scorer: str
    name: str

    @property
    def key(self) -> str:
        """``scorer.name``: how the component is named in a joined row."""
        return f"{self.scorer}.{self.name}"


@dataclass(frozen=True)
class Param:
    name: str
    value: float


@dataclass(frozen=True)
class Unary:
    op: str  # "-" | "not"
    operand: Node


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / < <= > >= == != and or
    left: Node
    right: Node


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Node, ...]


Node = Num | Name | Component | Param | Unary | Binary | Call


# --- parsing -------------------------------------------------------------------------------------

@dataclass
class _Tokens:
    items: list[tuple[str, str]]
    text: str
    where: str
    position: int = 0

    def peek(self) -> tuple[str, str] | None:
        return self.items[self.position] if self.position < len(self.items) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise self.error("ends too early")
        self.position += 1
        return token

    def accept(self, *values: str) -> str | None:
        token = self.peek()
        if token is not None and token[0] != "number" and token[1].lower() in values:
            self.position += 1
            return token[1].lower()
        return None

    def expect(self, value: str) -> None:
        if self.accept(value) is None:
            found = self.peek()
            raise self.error(f"expected {value!r}, found "
                             f"{found[1]!r}" if found else f"expected {value!r} at the end")

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.where} {self.text!r}: {message}")


def _tokenize(text: str, where: str) -> list[tuple[str, str]]:
    items, position = [], 0
    stripped = text.rstrip()
    while position < len(stripped):
        match = _TOKEN.match(stripped, position)
        if match is None or match.end() == position:
            raise ConfigError(f"{where} {text!r}: unexpected character "
                              f"{stripped[position:].lstrip()[:1]!r} at position {position}")
        kind = match.lastgroup
        items.append((kind, match.group(kind)))
        position = match.end()
    return items


def parse(text: str, where: str = "expression") -> Node:
    """The tree of ``text`` (names not yet resolved); one-line ``ConfigError`` naming
    ``where`` (e.g. ``--rank``) on a syntax error."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: empty expression")
    tokens = _Tokens(_tokenize(text, where), text, where)
    node = _or(tokens)
    if tokens.peek() is not None:
        raise tokens.error(f"unexpected {tokens.peek()[1]!r}")
    return node


def _or(t: _Tokens) -> Node:
    node = _and(t)
    while t.accept("or"):
        node = Binary("or", node, _and(t))
    return node


def _and(t: _Tokens) -> Node:
    node = _not(t)
    while t.accept("and"):
        node = Binary("and", node, _not(t))
    return node


def _not(t: _Tokens) -> Node:
    if t.accept("not"):
        return Unary("not", _not(t))
    return _compare(t)


def _compare(t: _Tokens) -> Node:
    node = _sum(t)
    op = t.accept(*COMPARISONS)
    if op is not None:
        node = Binary(COMPARISONS[op], node, _sum(t))
        if t.peek() is not None and t.peek()[1] in COMPARISONS:
            raise t.error("comparisons do not chain; join them with 'and'")
    return node


def _sum(t: _Tokens) -> Node:
    node = _product(t)
    while (op := t.accept("+", "-")) is not None:
        node = Binary(op, node, _product(t))
    return node


def _product(t: _Tokens) -> Node:
    node = _unary(t)
    while (op := t.accept("*", "/")) is not None:
        node = Binary(op, node, _unary(t))
    return node


def _unary(t: _Tokens) -> Node:
    if t.accept("-"):
        return Unary("-", _unary(t))
    if t.accept("+"):
        return _unary(t)
    return _atom(t)


def _atom(t: _Tokens) -> Node:
    kind, value = t.take()
    if kind == "number":
        return Num(float(value))
    if kind == "op":
        if value == "(":
            node = _or(t)
            t.expect(")")
            return node
        raise t.error(f"unexpected {value!r}")
    if value.lower() in KEYWORDS:
        raise t.error(f"unexpected {value!r}")
    if t.accept("("):
        args = [_or(t)]
        while t.accept(","):
            args.append(_or(t))
        t.expect(")")
        return Call(value.lower(), tuple(args))
    if t.accept("."):
        kind2, name = t.take()
        if kind2 != "name":
            raise t.error(f"expected a component name after {value + '.'!r}")
        return Name(name, value)
    return Name(value)


# --- resolution and types ------------------------------------------------------------------------

@dataclass(frozen=True)
class Expression:
    """A checked expression: its text, its resolved tree, its type, and what it reads."""

    text: str
    tree: Node
    type: str
    where: str

    @property
    def components(self) -> tuple[Component, ...]:
        """The components read, each once, in order of appearance."""
        return tuple(dict.fromkeys(n for n in walk(self.tree) if isinstance(n, Component)))

    @property
    def statistics(self) -> tuple[Call, ...]:
        """The category statistics (z, pct, minmax calls), each once."""
        return tuple(dict.fromkeys(n for n in walk(self.tree)
                                   if isinstance(n, Call) and n.function in STATISTICS))

    def __str__(self) -> str:
        return self.text


def walk(node: Node) -> Iterator[Node]:
    """Every node of the tree, parents first."""
    yield node
    if isinstance(node, Unary):
        yield from walk(node.operand)
    elif isinstance(node, Binary):
        yield from walk(node.left)
        yield from walk(node.right)
    elif isinstance(node, Call):
        for arg in node.args:
            yield from walk(arg)


def compile_expression(text: str, components: Mapping[str, Sequence[str]],
                       params: Mapping[str, float] | None = None, *, want: str = NUMBER,
                       where: str = "expression") -> Expression:
    """Parse ``text`` and resolve its names against ``components`` (scorer name -> the
    components it declares) and ``params``; check its types (``want``: NUMBER for a rank,
    BOOLEAN for a filter). One-line ``ConfigError`` naming ``where`` and the culprit."""
    tree = parse(text, where)
    resolved = _resolve(tree, components, dict(params or {}), text, where, inside=None)
    kind = _type_of(resolved, text, where)
    if kind != want:
        raise ConfigError(f"{where} {text!r}: is a {kind}, but {where} needs a {want}"
                          + (" (a comparison such as x > 0)" if want == BOOLEAN else ""))
    return Expression(text=text, tree=resolved, type=kind, where=where)


def _resolve(node: Node, components: Mapping[str, Sequence[str]], params: dict[str, float],
             text: str, where: str, inside: str | None) -> Node:
    def again(child: Node, inside_: str | None = inside) -> Node:
        return _resolve(child, components, params, text, where, inside_)

    if isinstance(node, Name):
        return _resolve_name(node, components, params, text, where)
    if isinstance(node, Unary):
        return Unary(node.op, again(node.operand))
    if isinstance(node, Binary):
        return Binary(node.op, again(node.left), again(node.right))
    if isinstance(node, Call):
        arity = FUNCTIONS.get(node.function, -1)
        if arity == -1:
            raise ConfigError(f"{where} {text!r}: unknown function {node.function}(); "
                              f"known: {', '.join(f + '()' for f in FUNCTIONS)}")
        if arity is None and len(node.args) < 2:
            raise ConfigError(f"{where} {text!r}: {node.function}() takes two or more "
                              f"arguments")
        if arity is not None and len(node.args) != arity:
            raise ConfigError(f"{where} {text!r}: {node.function}() takes {arity} argument"
                              f"{'s' if arity > 1 else ''}, got {len(node.args)}")
        if node.function in STATISTICS:
            if inside is not None:
                raise ConfigError(f"{where} {text!r}: {node.function}() inside {inside}(): a "
                                  f"category statistic cannot contain another")
            return Call(node.function, tuple(again(a, node.function) for a in node.args))
        return Call(node.function, tuple(again(a) for a in node.args))
    return node


def _resolve_name(node: Name, components: Mapping[str, Sequence[str]],
                  params: Mapping[str, float], text: str, where: str) -> Node:
    scorers = ", ".join(components) or "(none)"
    if node.qualifier is not None:
        if node.qualifier not in components:
            raise ConfigError(f"{where} {text!r}: unknown scorer {node.qualifier!r} in "
                              f"{node}; the recipe's scorers: {scorers}")
        if node.name not in components[node.qualifier]:
            raise ConfigError(f"{where} {text!r}: scorer {node.qualifier!r} has no component "
                              f"{node.name!r}; its components: "
                              f"{', '.join(components[node.qualifier])}")
        return Component(node.qualifier, node.name)
    owners = [s for s, names in components.items() if node.name in names]
    if node.name in params:
        if owners:
            raise ConfigError(f"{where} {text!r}: {node.name!r} is both a parameter and a "
                              f"component of {', '.join(owners)}; qualify the component")
        value = float(params[node.name])
        if not math.isfinite(value):
            raise ConfigError(f"{where} {text!r}: parameter {node.name} = {value} is not finite")
        return Param(node.name, value)
    if len(owners) == 1:
        return Component(owners[0], node.name)
    if len(owners) > 1:
        raise ConfigError(f"{where} {text!r}: {node.name!r} is a component of "
                          f"{' and '.join(owners)}; qualify it, e.g. {owners[0]}.{node.name}")
    known = [f"{s}.{c}" if len(components) > 1 else c
             for s, names in components.items() for c in names]
    extra = f"; parameters: {', '.join(params)}" if params else ""
    raise ConfigError(f"{where} {text!r}: unknown component {node.name!r}; known: "
                      f"{', '.join(known) or '(none)'}{extra}")


def _type_of(node: Node, text: str, where: str) -> str:
    def need(child: Node, kind: str, what: str) -> None:
        found = _type_of(child, text, where)
        if found != kind:
            raise ConfigError(f"{where} {text!r}: {what} needs a {kind}, got a {found} "
                              f"({describe(child)})")

    if isinstance(node, (Num, Component, Param)):
        return NUMBER
    if isinstance(node, Unary):
        if node.op == "not":
            need(node.operand, BOOLEAN, "'not'")
            return BOOLEAN
        need(node.operand, NUMBER, "unary '-'")
        return NUMBER
    if isinstance(node, Binary):
        if node.op in ("and", "or"):
            need(node.left, BOOLEAN, f"'{node.op}'")
            need(node.right, BOOLEAN, f"'{node.op}'")
            return BOOLEAN
        need(node.left, NUMBER, f"'{node.op}'")
        need(node.right, NUMBER, f"'{node.op}'")
        return BOOLEAN if node.op in COMPARISONS.values() else NUMBER
    if isinstance(node, Call):
        for arg in node.args:
            need(arg, NUMBER, f"{node.function}()")
        return NUMBER
    raise AssertionError(f"unresolved node {node!r}")


def describe(node: Node) -> str:
    """The node written back as an expression (for messages and column names)."""
    if isinstance(node, Num):
        return f"{node.value:g}"
    if isinstance(node, (Name, Component)):
        return node.key if isinstance(node, Component) else str(node)
    if isinstance(node, Param):
        return node.name
    if isinstance(node, Unary):
        return f"not {describe(node.operand)}" if node.op == "not" else \
            f"-{describe(node.operand)}"
    if isinstance(node, Binary):
        return f"({describe(node.left)} {node.op} {describe(node.right)})"
    return f"{node.function}({', '.join(describe(a) for a in node.args)})"
