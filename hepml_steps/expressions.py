"""Derived-column expressions: what numexpr accepts, checked before it runs.

A derived column (``features.derived``) is an expression over the columns of
a split, evaluated event by event by numexpr on float64 columns. numexpr
builds its program by handing the string to Python, so the expression is
first parsed (never evaluated) with :mod:`ast` and checked here against what
numexpr 2.14 really computes:

- names are columns; calls are numexpr's element-wise functions
  (:data:`FUNCTIONS`, with their number of arguments) and
  ``where(condition, a, b)``; no attributes, subscripts, keywords or strings;
- ``+ - * / % **`` and unary ``-`` apply to numbers (a boolean may meet a
  number: ``(j1_pt > 30) * j1_pt``); comparisons give booleans, one at a time
  (``a < b < c`` is refused); ``&``, ``|`` and ``~`` apply to booleans only
  (numexpr has no bitwise operations on floats: it fails with "couldn't find
  matching opcode for 'and_ddd'"); ``and``, ``or`` and ``not`` are refused
  (numexpr cannot use them);
- sizes: at most :data:`MAX_LENGTH` characters, :data:`MAX_NODES` syntax-tree
  nodes, depth :data:`MAX_DEPTH`;
- powers: numexpr computes constant sub-expressions with Python integers,
  so ``j1_pt ** 9 ** 9 ** 9`` would run for hours. An exponent may not hold
  a power, a constant exponent is at most :data:`MAX_EXPONENT` in magnitude,
  and a constant power may not have a constant power as its base.

Reductions (``sum``, ``prod``, ``min``, ``max``) are refused: they would mix
events, differently in every split. So are complex numbers and strings.
"""

from __future__ import annotations

import ast
import difflib
import operator
from collections.abc import Callable
from typing import NoReturn

from .errors import ConfigError

MAX_LENGTH = 1000
MAX_NODES = 500
MAX_DEPTH = 64
MAX_EXPONENT = 64

NUMBER, BOOLEAN = "number", "boolean"

#: numexpr's element-wise functions: name -> (number of arguments, kind of result).
#: All take numbers; ``where`` is checked on its own.
FUNCTIONS: dict[str, tuple[int, str]] = {
    **{
        f: (1, NUMBER)
        for f in (
            "abs",
            "arccos",
            "arccosh",
            "arcsin",
            "arcsinh",
            "arctan",
            "arctanh",
            "ceil",
            "copy",
            "cos",
            "cosh",
            "exp",
            "expm1",
            "floor",
            "log",
            "log10",
            "log1p",
            "log2",
            "ones_like",
            "round",
            "sign",
            "sin",
            "sinh",
            "sqrt",
            "tan",
            "tanh",
            "trunc",
        )
    },
    **{f: (2, NUMBER) for f in ("arctan2", "copysign", "fmod", "hypot", "maximum", "minimum", "nextafter")},
    **{f: (1, BOOLEAN) for f in ("isfinite", "isinf", "isnan", "signbit")},
}
#: numexpr functions a derived column may not use, and why.
REFUSED = {
    **{
        f: "is a reduction over all events (a derived column is computed per event)"
        for f in ("sum", "prod", "min", "max")
    },
    **{f: "works on complex numbers (derived columns are real)" for f in ("complex", "conj", "real", "imag")},
    "contains": "works on strings (derived columns are numbers)",
}
_ARITHMETIC = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Mod: "%", ast.Pow: "**"}
_LOGICAL = {ast.BitAnd: "&", ast.BitOr: "|"}
_COMPARISONS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
_CONSTANT_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}


def check_expression(name: str, expr: str, columns) -> list[str]:
    """Check the derived column ``name = expr`` over ``columns``; return the columns it uses.

    Parameters
    ----------
    name : str
        The derived column's name (its key under ``features.derived``).
    expr : str
        The expression, e.g. ``"sqrt(j1_pt**2 + j2_pt**2)"``.
    columns : iterable of str
        The columns of the table it is computed on.

    Returns
    -------
    list of str
        The columns ``expr`` reads, each once, in order of appearance.

    Raises
    ------
    ConfigError
        ``features.derived.<name>: <reason>`` when numexpr would refuse the
        expression, could run for long on it, or it is not a per-event
        number (see the module docstring).
    """
    checker = _Checker(f"features.derived.{name}", set(columns))
    checker.kind(_parse(checker, expr).body)
    return list(dict.fromkeys(checker.used))


def _parse(checker: _Checker, expr) -> ast.Expression:
    return parse_expression(expr, checker.fail)


def parse_expression(expr, fail: Callable[[str], NoReturn]) -> ast.Expression:
    """Parse ``expr`` (never evaluate it) within the size bounds of this module.

    Parameters
    ----------
    expr : str
        The expression text.
    fail : callable
        Called with the reason (``cannot parse 'x +': ...``, ``expression too
        long ...``) when ``expr`` is not a string, does not parse, or exceeds
        :data:`MAX_LENGTH` characters, :data:`MAX_NODES` nodes or depth
        :data:`MAX_DEPTH`; it must raise. Shared with :mod:`hepml_steps.jagged`.

    Returns
    -------
    ast.Expression
        The syntax tree, unchecked beyond its size.
    """
    if not isinstance(expr, str):
        fail(f"give the expression as a string, not {type(expr).__name__}")
    if len(expr) > MAX_LENGTH:
        fail(f"expression too long ({len(expr)} characters; at most {MAX_LENGTH})")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        fail(f"cannot parse {expr!r}: {getattr(exc, 'msg', None) or exc}")
    nodes, depth, stack = 0, 0, [(tree, 1)]
    while stack:  # no recursion: the tree may be deep
        node, d = stack.pop()
        nodes, depth = nodes + 1, max(depth, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    if nodes > MAX_NODES or depth > MAX_DEPTH:
        fail(f"expression too large ({nodes} nodes, depth {depth}; at most {MAX_NODES} and {MAX_DEPTH})")
    return tree


class _Checker:
    """Walks an expression's tree, returning each node's kind (number or boolean)."""

    def __init__(self, where: str, columns: set[str]):
        self.where, self.columns, self.used = where, columns, []

    def fail(self, reason: str) -> NoReturn:
        raise ConfigError(f"{self.where}: {reason}")

    def kind(self, node: ast.AST) -> str:
        check = getattr(self, f"_{type(node).__name__}", None)
        if check is None:
            self.fail(
                f"{snippet(node)!r} is not allowed: use columns, numbers, + - * / % **, comparisons, "
                "& | ~ on comparisons, and numexpr's functions"
            )
        return check(node)

    def _Constant(self, node):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            self.fail(f"only numbers may be constants, not {node.value!r}")
        return NUMBER

    def _Name(self, node):
        if node.id not in self.columns:
            self.fail(f"unknown column '{node.id}'{hint(node.id, self.columns)}")
        if node.id in FUNCTIONS or node.id in REFUSED or node.id == "where" or "__" in node.id:
            self.fail(f"numexpr cannot read a column named '{node.id}' (a function name or one with '__')")
        self.used.append(node.id)
        return NUMBER

    def _Attribute(self, node):
        self.fail(f"attribute access '.{node.attr}' is not allowed")

    def _BoolOp(self, node):
        self.fail(
            f"'{'and' if isinstance(node.op, ast.And) else 'or'}' is not supported by numexpr: "
            "use '&' or '|' between comparisons in parentheses"
        )

    def _UnaryOp(self, node):
        kind = self.kind(node.operand)
        if isinstance(node.op, ast.Not):
            self.fail("'not' is not supported by numexpr: use '~(...)' on a comparison")
        if isinstance(node.op, ast.Invert):
            if kind != BOOLEAN:
                self.fail("'~' applies to booleans (comparisons such as ~(j1_pt > 30)), not to numbers")
            return BOOLEAN
        if kind != NUMBER:
            self.fail("unary '-' applies to numbers, not to booleans: use where(cond, -1.0, 0.0)")
        return NUMBER

    def _BinOp(self, node):
        left, right = self.kind(node.left), self.kind(node.right)
        op = type(node.op)
        if op in _LOGICAL:
            if left != BOOLEAN or right != BOOLEAN:
                sym = _LOGICAL[op]
                self.fail(
                    f"'{sym}' applies to booleans (comparisons such as (j1_pt > 30) {sym} (j2_pt > 30)), not to numbers"
                )
            return BOOLEAN
        if op not in _ARITHMETIC:
            self.fail(f"operator {type(node.op).__name__} is not supported: use + - * / % **")
        if left == right == BOOLEAN:
            self.fail(f"'{_ARITHMETIC[op]}' of two booleans: use '&' or '|', or where(cond, 1.0, 0.0)")
        if op is ast.Pow:
            self._power(node)
        return NUMBER

    def _Compare(self, node):
        if len(node.ops) > 1:
            self.fail("chained comparison: write (a < b) & (b < c)")
        if not isinstance(node.ops[0], _COMPARISONS):
            self.fail(f"comparison {type(node.ops[0]).__name__} is not supported: use < <= > >= == !=")
        self.kind(node.left)
        self.kind(node.comparators[0])
        return BOOLEAN

    def _Call(self, node):
        fn = node.func.id if isinstance(node.func, ast.Name) else None
        if fn is None:
            self.fail(f"only numexpr's functions may be called, not {snippet(node.func)!r}")
        if fn in REFUSED:
            self.fail(f"'{fn}' {REFUSED[fn]}")
        if fn != "where" and fn not in FUNCTIONS:
            self.fail(f"unknown function '{fn}'{hint(fn, [*FUNCTIONS, 'where'])}")
        n_args, result = FUNCTIONS.get(fn, (3, None))
        if node.keywords or len(node.args) != n_args:
            self.fail(f"'{fn}' takes {n_args} positional argument(s), got {len(node.args) + len(node.keywords)}")
        kinds = [self.kind(arg) for arg in node.args]
        if fn == "where":
            if kinds[0] != BOOLEAN:
                self.fail("where(cond, a, b) needs a comparison such as j1_pt > 30 as its condition")
            return NUMBER if NUMBER in kinds[1:] else BOOLEAN
        if BOOLEAN in kinds:
            self.fail(f"'{fn}' applies to numbers, not to booleans: use where(cond, 1.0, 0.0)")
        return result

    def _power(self, node: ast.BinOp) -> None:
        """Refuse powers whose constant parts numexpr would compute for long."""
        if _has_power(node.right):
            self.fail(f"exponent too large: the exponent {snippet(node.right)!r} holds a power")
        if not _is_constant(node.right):
            return
        value = self._constant(node.right)
        if abs(value) > MAX_EXPONENT:
            self.fail(f"exponent too large: {snippet(node.right)} (at most {MAX_EXPONENT} in magnitude)")
        if _is_constant(node.left) and _has_power(node.left):
            self.fail(
                f"exponent too large: a constant power of a constant power, {snippet(node)!r}; write the number out"
            )

    def _constant(self, node: ast.AST) -> float:
        """The value of a constant exponent: numbers, + - * / % and unary signs."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self._constant(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _CONSTANT_OPS:
            try:
                return _CONSTANT_OPS[type(node.op)](self._constant(node.left), self._constant(node.right))
            except (ZeroDivisionError, OverflowError) as exc:
                self.fail(f"constant exponent {snippet(node)!r}: {exc}")
        self.fail(f"a constant exponent must be arithmetic of numbers, not {snippet(node)!r}")


def _is_constant(node: ast.AST) -> bool:
    return not any(isinstance(n, ast.Name) for n in ast.walk(node))


def _has_power(node: ast.AST) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(node))


def snippet(node: ast.AST) -> str:
    """The source of ``node``, cut to 60 characters (for messages)."""
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def hint(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, sorted(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
