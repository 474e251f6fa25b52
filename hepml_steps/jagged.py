"""Expressions over an input's branches, TMVA-style: jagged collections,
selection cuts and aliases (``data.files.columns``, ``cut``, ``aliases``).

A NanoAOD-like file holds numbers per event (``MET_pt``, the counter
``nJet``) and collections: a variable number of values per event
(``Jet_pt``, which uproot reads as ``var * float32``; fixed-size arrays such
as ``float[3]`` count as collections too). An expression makes one value per
event out of them:

====================  ===========================================  ================
expression            value per event                              column name
====================  ===========================================  ================
``Jet_pt[0]``         element 0 (counting from 0); NaN when the    ``Jet_pt_0``
                      event has fewer objects (TMVA's ``x[0]``)
``len(Jet_pt)``       number of objects                            ``len_Jet_pt``
``max(Jet_btag)``     largest value; NaN when there is none        ``max_Jet_btag``
                      (NaN elements are passed over; only NaN: -inf)
``min(x)``            smallest value; NaN when there is none       ``min_x``
``sum(x)``            sum; 0 when empty; of a condition: a count   ``sum_x``
``mean(x)``           mean; NaN when empty                         ``mean_x``
``any(c)``/``all(c)`` some / every object passes the condition     ``any_c``/``all_c``
====================  ===========================================  ================

**Column names.** A branch keeps its name; ``x[i]`` is ``x_i`` and ``f(x)`` is
``f_x`` when ``x`` is a branch or an alias. Any other expression listed in
``columns`` needs a name: give it under ``data.files.aliases``
(``{lead_pt: "Jet_pt[0]", ht30: "sum(Jet_pt[Jet_pt > 30])"}``) and list the
name; the alias's name is its column name. Aliases may combine anything
below (``"Jet_pt[0] + Jet_pt[1]"``) and use other aliases, not themselves.

**What an expression may hold.** Branch and alias names, numbers,
``+ - * / % **`` (the exponent a number of magnitude at most
:data:`MAX_EXPONENT`), comparisons (chains such as ``0 < x < 1`` included),
``and``/``or``/``not`` (or ``& | ~``) between conditions, the element-wise
functions of :data:`FUNCTIONS`, the reductions above, ``x[i]`` with a whole
number ``i`` (at most :data:`MAX_INDEX`), and filters ``Jet_pt[Jet_eta < 2.4]``
(the objects passing a per-object condition, to which ``[i]`` and the
reductions then apply). Arithmetic between a collection and a per-event value
applies to every object; between two collections it needs the same number of
objects in every event (collections of one counter, ``Jet_pt * Jet_mass``).

A cut is a condition per event: ``len(Jet_pt) >= 2 and Jet_pt[0] > 30``. A
per-object condition (``Jet_pt > 30``) is refused there: say ``any(...)``,
``all(...)`` or ``sum(...) >= n``. NaN compares false, so ``Jet_pt[1] > 30``
drops events with fewer than two jets.

**How.** Nothing is ever evaluated by Python: an expression is parsed with
:mod:`ast` and checked in three stages — its syntax when the configuration is
read (:func:`parse`, a :class:`~hepml_steps.errors.ConfigError` naming the
key), its types against the branches of each input (:class:`Typer`: flat or
collection, condition or number; a :class:`~hepml_steps.errors.DataError`
naming the file and the expression), and finally it is computed chunk by
chunk with awkward/numpy, vectorised over events (:class:`Evaluator`).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from .errors import ConfigError, DataError, describe
from .expressions import hint, parse_expression, snippet

#: shapes: one value per event, or a collection (a list per event)
EVENT, COLLECTION = "per event", "collection"
#: kinds of values
NUMBER, BOOLEAN, STRING = "number", "condition", "string"

#: reductions over a collection (one argument), giving one value per event
REDUCTIONS = ("len", "max", "min", "sum", "mean", "any", "all")
#: element-wise functions: name -> number of arguments (numpy's functions of that name)
FUNCTIONS = {
    **{
        f: 1
        for f in (
            "abs",
            "sqrt",
            "exp",
            "log",
            "log10",
            "sin",
            "cos",
            "tan",
            "sinh",
            "cosh",
            "tanh",
            "arcsin",
            "arccos",
            "arctan",
            "arcsinh",
            "arccosh",
            "arctanh",
        )
    },
    **{f: 2 for f in ("arctan2", "hypot", "minimum", "maximum")},
}
MAX_EXPONENT = 64
MAX_INDEX = 10_000

_ARITHMETIC = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.Mod: np.mod,
    ast.Pow: np.power,
}
_LOGICAL = {
    ast.BitAnd: ("&", np.logical_and),
    ast.BitOr: ("|", np.logical_or),
    ast.And: ("and", np.logical_and),
    ast.Or: ("or", np.logical_or),
}
_COMPARISONS = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}
_ALLOWED = (
    "use branch names, numbers, x[i], x[condition], len/max/min/sum/mean/any/all(x), "
    "+ - * / % **, comparisons, and/or/not"
)


def counter_hint(name: str, branches: dict) -> str:
    """`` (no counter branch nJet here: len(Jet_pt) counts the objects)`` when ``name`` is a
    NanoAOD counter, ``n`` + a collection's prefix, that the file lacks while it holds a
    collection branch of that prefix (a file written without counters: an RNTuple from
    uproot, a flat ntuple's arrays); else ``""``. ``branches``: name -> Branch."""
    if len(name) < 2 or name[0] != "n" or not name[1].isupper():
        return ""
    prefix = name[1:] + "_"
    held = [b for b, branch in branches.items() if b.startswith(prefix) and branch.shape == COLLECTION]
    return f" (no counter branch {name} here: len({held[0]}) counts the objects)" if held else ""


@dataclass(frozen=True)
class Kind:
    """What an expression gives: its shape (:data:`EVENT` or :data:`COLLECTION`)
    and kind (:data:`NUMBER` or :data:`BOOLEAN`)."""

    shape: str
    kind: str


@dataclass(frozen=True)
class Branch:
    """What a reader found in one branch or column, from the awkward type of
    what it reads (never from ROOT's type names).

    Attributes
    ----------
    name : str
    shape : str or None
        :data:`EVENT`, :data:`COLLECTION`, or None when expressions cannot use it
        (records, nested lists, complex numbers).
    kind : str or None
        :data:`NUMBER`, :data:`BOOLEAN`, :data:`STRING` (per event only; a
        label may hold strings) or None.
    type : str
        The awkward type, e.g. ``var * float32`` (for messages and the record).
    """

    name: str
    shape: str | None
    kind: str | None
    type: str

    @property
    def numeric(self) -> bool:
        """Numbers or conditions, per event or per object."""
        return self.shape is not None and self.kind in (NUMBER, BOOLEAN)

    @property
    def flat(self) -> bool:
        """One number or condition per event: a feature by itself."""
        return self.shape == EVENT and self.kind in (NUMBER, BOOLEAN)


# --------------------------------------------------------------------------- syntax


def parse(where: str, expr) -> ast.expr:
    """Check the syntax of ``expr`` and return its tree (the expression's body).

    Parameters
    ----------
    where : str
        The setting, for messages: ``data.files.cut``, ``data.files.aliases.lead_pt``.
    expr : str

    Raises
    ------
    ConfigError
        ``<where>: <expr>: <reason>`` when it does not parse, is too large, or
        holds anything outside the grammar of the module docstring.
    """

    def fail(reason: str) -> NoReturn:
        raise ConfigError(f"{where}: {reason}")

    body = parse_expression(expr, fail).body
    _Syntax(lambda reason: fail(f"{expr!r}: {reason}")).check(body)
    return body


def column_name(body: ast.expr) -> str | None:
    """The column name of a ``columns`` entry: ``x`` for a name, ``x_i`` for
    ``x[i]``, ``f_x`` for ``f(x)`` (``f`` a reduction); None for anything else."""
    if isinstance(body, ast.Name):
        return body.id
    if isinstance(body, ast.Subscript) and isinstance(body.value, ast.Name):
        index = _index(body.slice)
        if index is not None and index >= 0:
            return f"{body.value.id}_{index}"
    if (
        isinstance(body, ast.Call)
        and isinstance(body.func, ast.Name)
        and body.func.id in REDUCTIONS
        and len(body.args) == 1
        and isinstance(body.args[0], ast.Name)
    ):
        return f"{body.func.id}_{body.args[0].id}"
    return None


def _index(node: ast.expr) -> int | None:
    """The whole number of an index ``x[i]`` (``-i`` included), or None."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign, node = (-1 if isinstance(node.op, ast.USub) else 1), node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return sign * node.value
    return None


def _number(node: ast.expr) -> float | None:
    """The value of a constant number (with an optional sign), or None."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign, node = (-1 if isinstance(node.op, ast.USub) else 1), node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return sign * node.value
    return None


class _Syntax:
    """Refuses every node outside the grammar; knows nothing of the branches."""

    def __init__(self, fail: Callable[[str], NoReturn]):
        self.fail = fail

    def check(self, node: ast.AST) -> None:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            self.fail(f"{snippet(node)!r} is not allowed: {_ALLOWED}")
        method(node)

    def _Name(self, node):
        pass

    def _Constant(self, node):
        if not isinstance(node.value, (bool, int, float)):
            self.fail(f"only numbers (and True/False) may be constants, not {node.value!r}")

    def _Subscript(self, node):
        self.check(node.value)
        if isinstance(node.slice, (ast.Slice, ast.Tuple)):
            self.fail(
                f"{snippet(node)!r}: slices and several indices are not supported; use x[i] for one "
                "element or x[condition] to keep the objects that pass"
            )
        index = _index(node.slice)
        if index is not None:
            if index < 0:
                self.fail(f"{snippet(node)!r}: negative index; elements count from 0 (x[0] is the first)")
            if index > MAX_INDEX:
                self.fail(f"{snippet(node)!r}: index above {MAX_INDEX}")
        elif isinstance(node.slice, ast.Constant):
            self.fail(f"{snippet(node)!r}: an index must be a whole number from 0, not {node.slice.value!r}")
        else:
            self.check(node.slice)

    def _Call(self, node):
        fn = node.func.id if isinstance(node.func, ast.Name) else None
        if fn is None:
            self.fail(
                f"only {', '.join(REDUCTIONS)} and element-wise functions may be called, not {snippet(node.func)!r}"
            )
        if fn not in REDUCTIONS and fn not in FUNCTIONS:
            self.fail(f"unknown function '{fn}'{hint(fn, [*REDUCTIONS, *FUNCTIONS])}")
        n_args = 1 if fn in REDUCTIONS else FUNCTIONS[fn]
        if node.keywords or len(node.args) != n_args or any(isinstance(a, ast.Starred) for a in node.args):
            self.fail(f"'{fn}' takes {n_args} argument(s), got {len(node.args) + len(node.keywords)}")
        for arg in node.args:
            self.check(arg)

    def _BinOp(self, node):
        if type(node.op) not in _ARITHMETIC and type(node.op) not in _LOGICAL:
            self.fail(f"operator {type(node.op).__name__} is not supported: use + - * / % ** & |")
        if isinstance(node.op, ast.Pow):
            value = _number(node.right)
            if value is None:
                self.fail(f"{snippet(node)!r}: the exponent must be a number (x ** 2)")
            if abs(value) > MAX_EXPONENT:
                self.fail(f"{snippet(node)!r}: exponent above {MAX_EXPONENT} in magnitude")
        self.check(node.left)
        self.check(node.right)

    def _UnaryOp(self, node):
        self.check(node.operand)

    def _BoolOp(self, node):
        for value in node.values:
            self.check(value)

    def _Compare(self, node):
        for op in node.ops:
            if type(op) not in _COMPARISONS:
                self.fail(f"comparison {type(op).__name__} is not supported: use < <= > >= == !=")
        self.check(node.left)
        for comparator in node.comparators:
            self.check(comparator)


# --------------------------------------------------------------------------- types


class Typer:
    """The types of expressions over one input's branches.

    Parameters
    ----------
    desc : str
        The input, for messages (``data/sig.root (tree Events)``).
    branches : dict
        Branch name -> :class:`Branch`.
    aliases : dict
        Alias name -> parsed body (:func:`parse`).

    Raises
    ------
    DataError
        ``<desc>: <where> <expr>: <reason>`` for a missing branch, a
        collection where one value per event is needed or the reverse, a
        number where a condition is needed, an alias that uses itself.
    """

    def __init__(self, desc: str, branches: dict[str, Branch], aliases: dict[str, ast.expr]):
        self.desc, self.branches, self.aliases = desc, branches, aliases
        self._alias: dict[str, tuple[Kind, list[str]]] = {}
        self._resolving: list[str] = []
        for name in aliases:
            if name in branches:
                raise DataError(
                    f"{desc}: data.files.aliases.{name}: '{name}' is also a branch; give the alias another name"
                )

    def check(self, where: str, expr: str, body: ast.expr) -> tuple[Kind, list[str]]:
        """The kind of ``body`` and the branches it reads (aliases resolved)."""
        walk = _Typing(self, where, expr)
        return walk.kind(body), list(dict.fromkeys(walk.used))

    def column(self, where: str, expr: str, body: ast.expr) -> tuple[Kind, list[str]]:
        """As :meth:`check`, for a column: one value per event."""
        kind, used = self.check(where, expr, body)
        if kind.shape != EVENT:
            name = column_name(body) or expr
            raise DataError(
                f"{self.desc}: {where} {expr!r}: gives a collection (a list per event), not one value "
                f"per event; ask for e.g. {name}[0], len({name}), max({name})"
            )
        return kind, used

    def cut(self, where: str, expr: str, body: ast.expr) -> list[str]:
        """As :meth:`check`, for a cut: one condition per event; returns the branches."""
        kind, used = self.check(where, expr, body)
        if kind.shape != EVENT:
            raise DataError(
                f"{self.desc}: {where} {expr!r}: is one condition per object, a cut needs one per "
                "event: use any(...), all(...) or sum(...) >= n"
            )
        if kind.kind != BOOLEAN:
            raise DataError(
                f"{self.desc}: {where} {expr!r}: is a number, not a condition (true or false per "
                f"event); compare it, e.g. '{expr} > 0'"
            )
        return used

    def alias(self, name: str) -> tuple[Kind, list[str]]:
        if name not in self._alias:
            if name in self._resolving:
                chain = " -> ".join([*self._resolving[self._resolving.index(name) :], name])
                raise DataError(f"{self.desc}: data.files.aliases.{name}: uses itself ({chain})")
            self._resolving.append(name)
            try:
                self._alias[name] = self.check(
                    f"data.files.aliases.{name}", ast.unparse(self.aliases[name]), self.aliases[name]
                )
            finally:
                self._resolving.pop()
        return self._alias[name]


class _Typing:
    """One walk of :class:`Typer` over one expression."""

    def __init__(self, typer: Typer, where: str, expr: str):
        self.typer, self.where, self.expr, self.used = typer, where, expr, []

    def fail(self, reason: str) -> NoReturn:
        raise DataError(f"{self.typer.desc}: {self.where} {self.expr!r}: {reason}")

    def kind(self, node: ast.AST) -> Kind:
        return getattr(self, f"_{type(node).__name__}")(node)

    def _what(self, node: ast.AST) -> str:
        if isinstance(node, ast.Name) and node.id in self.typer.branches:
            return f"'{node.id}' is one value per event ({self.typer.branches[node.id].type})"
        return f"'{snippet(node)}' is one value per event"

    def _Name(self, node):
        branches, aliases = self.typer.branches, self.typer.aliases
        if node.id in branches:
            b = branches[node.id]
            if not b.numeric:
                self.fail(
                    f"branch '{node.id}' holds {b.type}: expressions use numbers, conditions and collections of them"
                )
            self.used.append(node.id)
            return Kind(b.shape, b.kind)
        if node.id in aliases:
            kind, used = self.typer.alias(node.id)
            self.used.extend(used)
            return kind
        self.fail(
            f"no branch or alias '{node.id}'{counter_hint(node.id, branches) or hint(node.id, [*branches, *aliases])}"
        )

    def _Constant(self, node):
        return Kind(EVENT, BOOLEAN if isinstance(node.value, bool) else NUMBER)

    def _Subscript(self, node):
        value = self.kind(node.value)
        if value.shape != COLLECTION:
            self.fail(
                f"{self._what(node.value)}, not a collection: {snippet(node)!r} needs a collection such as Jet_pt"
            )
        if _index(node.slice) is not None:
            return Kind(EVENT, NUMBER)
        mask = self.kind(node.slice)
        if mask != Kind(COLLECTION, BOOLEAN):
            self.fail(
                f"{snippet(node)!r}: a filter x[...] needs a per-object condition on the same collection, "
                f"e.g. Jet_pt[Jet_eta < 2.4]; {snippet(node.slice)!r} is "
                f"{'a condition per event' if mask.shape == EVENT else 'a number per object'}"
            )
        return value

    def _Call(self, node):
        fn = node.func.id
        kinds = [self.kind(arg) for arg in node.args]
        if fn in REDUCTIONS:
            arg = kinds[0]
            if arg.shape != COLLECTION:
                self.fail(f"{fn}() takes a collection (e.g. {fn}(Jet_pt)); {self._what(node.args[0])}")
            if fn in ("any", "all"):
                if arg.kind != BOOLEAN:
                    self.fail(f"{fn}() takes a per-object condition, e.g. {fn}(Jet_pt > 30)")
                return Kind(EVENT, BOOLEAN)
            return Kind(EVENT, NUMBER)
        return Kind(_shape(kinds), NUMBER)

    def _BinOp(self, node):
        kinds = [self.kind(node.left), self.kind(node.right)]
        if type(node.op) in _LOGICAL:
            self._conditions(_LOGICAL[type(node.op)][0], [node.left, node.right], kinds)
            return Kind(_shape(kinds), BOOLEAN)
        return Kind(_shape(kinds), NUMBER)

    def _UnaryOp(self, node):
        kind = self.kind(node.operand)
        if isinstance(node.op, (ast.Not, ast.Invert)):
            self._conditions("not" if isinstance(node.op, ast.Not) else "~", [node.operand], [kind])
            return kind
        return Kind(kind.shape, NUMBER)

    def _BoolOp(self, node):
        kinds = [self.kind(v) for v in node.values]
        self._conditions(_LOGICAL[type(node.op)][0], node.values, kinds)
        return Kind(_shape(kinds), BOOLEAN)

    def _Compare(self, node):
        kinds = [self.kind(node.left), *(self.kind(c) for c in node.comparators)]
        return Kind(_shape(kinds), BOOLEAN)

    def _conditions(self, op: str, nodes, kinds) -> None:
        for node, kind in zip(nodes, kinds):
            if kind.kind != BOOLEAN:
                self.fail(
                    f"'{op}' applies to conditions; {snippet(node)!r} is a number: compare it, e.g. {snippet(node)} > 0"
                )


def _shape(kinds) -> str:
    return COLLECTION if any(k.shape == COLLECTION for k in kinds) else EVENT


# --------------------------------------------------------------------------- values


class Evaluator:
    """Computes checked expressions on one chunk of events.

    Parameters
    ----------
    desc : str
        The file, for messages.
    arrays : dict
        Branch name -> values of the chunk: a numpy array (one per event) or an
        awkward array ``var * <number>`` (a collection).
    aliases : dict
        Alias name -> parsed body; each alias is computed once per chunk.
    n : int
        Events in the chunk (a constant expression is broadcast to it).
    """

    def __init__(self, desc: str, arrays: dict, aliases: dict[str, ast.expr], n: int):
        self.desc, self.arrays, self.aliases, self.n = desc, arrays, aliases, n
        self._alias_values: dict = {}

    def value(self, where: str, expr: str, body: ast.expr) -> np.ndarray:
        """One value per event (numpy, length ``n``) of a checked expression.

        Raises
        ------
        DataError
            ``<desc>: <where> <expr>: <reason>`` when awkward cannot compute it
            (two collections of different lengths in an event).
        """
        import awkward as ak

        try:
            with np.errstate(all="ignore"):
                out = self._eval(body)
                if isinstance(out, ak.Array):
                    out = ak.to_numpy(out)
        except DataError:
            raise
        except Exception as exc:  # awkward's broadcasting errors and the like
            reason = describe(exc)
            if "broadcast" in reason:
                reason += " (arithmetic between collections needs the same number of objects in every event)"
            raise DataError(f"{self.desc}: {where} {expr!r}: {reason}") from exc
        out = np.asarray(out)
        if out.ndim == 0:
            out = np.full(self.n, out[()])
        return out

    def _eval(self, node: ast.AST):
        return getattr(self, f"_{type(node).__name__}")(node)

    def _Name(self, node):
        if node.id in self.arrays:
            return self.arrays[node.id]
        if node.id not in self._alias_values:
            self._alias_values[node.id] = self._eval(self.aliases[node.id])
        return self._alias_values[node.id]

    def _Constant(self, node):
        return node.value

    def _Subscript(self, node):
        import awkward as ak

        value = self._eval(node.value)
        index = _index(node.slice)
        if index is None:
            return value[self._eval(node.slice)]
        value, nan = _floating(value)
        return ak.fill_none(ak.pad_none(value, index + 1, axis=1, clip=True)[:, index], nan)

    def _Call(self, node):
        import awkward as ak

        fn = node.func.id
        args = [self._eval(arg) for arg in node.args]
        if fn not in REDUCTIONS:
            return getattr(np, fn)(*args)
        (value,) = args
        if fn == "len":
            return ak.num(value, axis=1)
        if fn in ("sum", "any", "all"):
            return getattr(ak, fn)(value, axis=1)
        if fn == "mean":
            return ak.fill_none(ak.mean(value, axis=1), np.nan)
        value, nan = _floating(value)
        return ak.fill_none(getattr(ak, fn)(value, axis=1), nan)

    def _BinOp(self, node):
        left, right = self._eval(node.left), self._eval(node.right)
        if type(node.op) in _LOGICAL:
            return _LOGICAL[type(node.op)][1](left, right)
        return _ARITHMETIC[type(node.op)](left, right)

    def _UnaryOp(self, node):
        value = self._eval(node.operand)
        if isinstance(node.op, (ast.Not, ast.Invert)):
            return np.logical_not(value)
        return np.negative(value) if isinstance(node.op, ast.USub) else value

    def _BoolOp(self, node):
        return functools.reduce(_LOGICAL[type(node.op)][1], [self._eval(v) for v in node.values])

    def _Compare(self, node):
        values = [self._eval(node.left), *(self._eval(c) for c in node.comparators)]
        results = [_COMPARISONS[type(op)](a, b) for op, a, b in zip(node.ops, values, values[1:])]
        return functools.reduce(np.logical_and, results)


def _floating(value):
    """``value`` with floating-point contents (integers and booleans as
    float64, float32 kept) and the NaN of that type, for missing elements."""
    import awkward as ak

    primitive = getattr(ak.type(value).content.content, "primitive", "float64")
    if primitive in ("float32", "float64"):
        return value, np.dtype(primitive).type(np.nan)
    return ak.values_astype(value, np.float64), np.float64(np.nan)
