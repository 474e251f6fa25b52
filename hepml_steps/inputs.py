"""The settings of ``data.files``, checked when the configuration is parsed and
again by the ingest step: the inputs (their ``path`` expanded into sorted
``files``), columns, aliases, cuts and label values, and the names hashed
into event ids.

:func:`check_config` is what :func:`hepml_steps.config.load` calls: every
problem is a :class:`~hepml_steps.errors.ConfigError` whose message starts
with the key (``data.files.inputs[1].path: no file matches 'data/bkg_*.root'``,
``data.files.cut: cannot parse ...``), before any job runs. What can only be
checked against the files (a branch that is missing, a collection where one
value per event is needed) is checked by :mod:`hepml_steps.ingest` and named
with the file.
"""

from __future__ import annotations

import ast
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .columns import EVENT_ID, LABEL, PROCESS, SCORE, SPLIT, TARGET, TRUTH_LLR, WEIGHT
from .errors import ConfigError, DataError
from .jagged import column_name, parse
from .readers import FORMATS, expand_files, listing

NONFINITE = ("drop", "fail", "keep")
INPUT_KEYS = ("path", "pattern", "tree", "label", "weight", "name", "format", "process", "cut")
#: keys the configuration adds to an input when it expands ``path``
RESOLVED_KEYS = ("files",)
ENTRY_BITS = 40
NAME_BITS = 63 - ENTRY_BITS
#: events read per chunk (``data.files.chunk_size``)
CHUNK_SIZE = 200_000
#: canonical names a branch may not take (the canonical column is computed or added later)
CANONICAL = (EVENT_ID, LABEL, WEIGHT, SPLIT, SCORE)


# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """The checked settings of ``data.files`` (everything but the inputs)."""

    label_column: str | None = None
    weight_column: str | None = None
    event_id_column: str | None = None
    target_column: str | None = None
    columns: list[str] | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    cut: str | None = None
    signal_values: list | None = None
    background_values: list | None = None
    nonfinite: str = "drop"
    chunk_size: int = CHUNK_SIZE
    exclude: list[str] = field(default_factory=list)
    alias_bodies: dict[str, ast.expr] = field(default_factory=dict)
    cut_body: ast.expr | None = None

    def check(self) -> Settings:
        """Check types and the syntax of every expression; parse them.

        Raises
        ------
        ConfigError
            Naming the key (``data.files.cut: ...``).
        """
        if self.nonfinite not in NONFINITE:
            raise ConfigError(f"data.nonfinite: '{self.nonfinite}' unknown; use one of {list(NONFINITE)}")
        if not isinstance(self.aliases, dict):
            raise ConfigError(f"data.files.aliases: give a mapping of name: expression, got {self.aliases!r}")
        if self.columns is not None:
            if isinstance(self.columns, str) or not all(isinstance(c, str) and c for c in self.columns):
                raise ConfigError(f"data.files.columns: give a list of column names, got {self.columns!r}")
            self.columns = list(dict.fromkeys(self.columns))
            for entry in self.columns:
                check_column_syntax(entry, self.aliases)
        for name, expr in self.aliases.items():
            if not (isinstance(name, str) and name.isidentifier()):
                raise ConfigError(f"data.files.aliases: {name!r}: an alias's name must be an identifier")
            if name in (*CANONICAL, TARGET, PROCESS, TRUTH_LLR):
                raise ConfigError(
                    f"data.files.aliases.{name}: '{name}' is a column ingest writes itself; choose another name"
                )
            self.alias_bodies[name] = parse(f"data.files.aliases.{name}", expr)
        if self.cut is not None:
            self.cut_body = parse("data.files.cut", self.cut)
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ConfigError(f"data.files.chunk_size: a whole number of events >= 1, got {self.chunk_size!r}")
        self.exclude = list(self.exclude or [])
        _check_label_values(self)
        return self


def check_column_syntax(entry: str, aliases: dict) -> None:
    """A ``columns`` entry that parses as an expression other than a name must
    be a valid one with an automatic name (others may be branch names with odd
    characters: they are looked up in the files)."""
    if entry in aliases:
        return
    try:
        body = ast.parse(entry, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return
    if isinstance(body, ast.Name):
        return
    body = parse("data.files.columns", entry)
    if column_name(body) is None:
        raise ConfigError(
            f"data.files.columns: {entry!r} has no automatic column name (only x, x[i] and "
            f"len/max/min/sum/mean/any/all(x) do); name it under data.files.aliases "
            f"(e.g. my_var: {entry!r}) and list the name"
        )


def _check_label_values(s: Settings) -> None:
    for key in ("signal_values", "background_values"):
        values = getattr(s, key)
        if values is None:
            continue
        if (
            isinstance(values, (str, bytes))
            or not isinstance(values, (list, tuple))
            or not values
            or not all(isinstance(v, (str, bool, numbers.Real)) for v in values)
        ):
            raise ConfigError(
                f"data.files.{key}: give a non-empty list of values (strings, numbers, true/false), got {values!r}"
            )
        if not s.label_column:
            raise ConfigError(f"data.files.{key}: values of the label column, but data.files.label_column is not set")
    if s.signal_values is not None and s.background_values is not None:
        both = [v for v in s.signal_values if any(same_value(v, w) for w in s.background_values)]
        if both:
            raise ConfigError(f"data.files.signal_values and background_values both hold {both}")


def check_inputs(inputs, expand: bool = True, error: type = ConfigError) -> list[dict]:
    """Check every input's keys and values; with ``expand``, give each a
    ``files`` list (:func:`~hepml_steps.readers.expand_files`).

    Parameters
    ----------
    inputs : list of dict
        ``data.files.inputs``; modified in place (``files`` added).
    expand : bool
        Expand ``path`` where ``files`` is not given yet.
    error : type
        The error for a path that matches no file (the configuration's
        :class:`ConfigError` when parsed; the step's :class:`DataError`).

    Raises
    ------
    ConfigError
        ``data.files.inputs[i] (<path>): ...`` for an unknown key or a bad value;
        ``data.files.inputs[i].path: no file matches '<pattern>'``.
    """
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ConfigError("data.files.inputs: give a non-empty list of {path, tree, label, weight}")
    for i, spec in enumerate(inputs):
        where = f"data.files.inputs[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a mapping with at least 'path', got {spec!r}")
        path = spec.get("path")
        if not path or not (
            isinstance(path, str) or (isinstance(path, (list, tuple)) and all(isinstance(p, str) and p for p in path))
        ):
            raise ConfigError(f"{where}: 'path' is required: a file, a glob or a list of them")
        unknown = sorted(set(spec) - set(INPUT_KEYS) - set(RESOLVED_KEYS))
        if unknown:
            raise ConfigError(f"{where} ({path}): unknown key(s) {unknown}; allowed: {list(INPUT_KEYS)}")
        label = spec.get("label")
        if label is not None and (isinstance(label, bool) or label not in (0, 1)):
            raise ConfigError(f"{where} ({path}): label must be 1 (signal) or 0 (background), got {label!r}")
        weight = spec.get("weight")
        if weight is not None and (
            isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight)
        ):
            raise ConfigError(f"{where} ({path}): weight must be a finite number, got {weight!r}")
        process = spec.get("process")
        if process is not None and not (
            (isinstance(process, numbers.Integral) and not isinstance(process, bool) and process >= 0)
            or (isinstance(process, str) and process.strip())
        ):
            raise ConfigError(
                f"{where} ({path}): process must be a class index (an integer >= 0) or a class name "
                f"(a non-empty string such as ttbar), got {process!r}"
            )
        if spec.get("format") is not None and spec["format"] not in FORMATS:
            raise ConfigError(f"{where} ({path}): format {spec['format']!r} unknown; use one of {FORMATS}")
        if spec.get("cut") is not None:
            parse(f"{where}.cut", spec["cut"])
        if expand and not spec.get("files"):
            spec["files"] = _expand(spec, where, error)
    with_process = [s["path"] for s in inputs if s.get("process") is not None]
    if with_process and len(with_process) != len(inputs):
        without = [s["path"] for s in inputs if s.get("process") is None]
        raise ConfigError(
            f"data.files.inputs: 'process' is given for {listing(with_process)} but not for "
            f"{listing(without)}; give every input its process or none"
        )
    named = [s["path"] for s in inputs if isinstance(s.get("process"), str)]
    if named and len(named) != len(inputs):
        numbered = [s["path"] for s in inputs if not isinstance(s.get("process"), str)]
        raise ConfigError(
            f"data.files.inputs: 'process' is a class name for {listing(named)} but a number for "
            f"{listing(numbered)}; use names or numbers for all"
        )
    return list(inputs)


def labelled(inputs: list[dict], label_column: str | None) -> bool:
    """Whether the inputs carry signal/background labels: all of them, or none.

    Labelled: ``label_column`` is set (an input's own ``label`` wins over it),
    or every input has a ``label``. Unlabelled: no input has a ``label`` and
    there is no ``label_column``; only models whose task needs no labels can
    run then (regression, clustering, dimensionality reduction; see
    :meth:`hepml_steps.tasks.Task.needs_labels`), and the canonical table has
    no ``label`` column.

    Raises
    ------
    ConfigError
        Some inputs have a ``label`` and others none, without ``label_column``.
    """
    if label_column:
        return True
    named = [(f"data.files.inputs[{i}] ({s['path']})", s.get("label") is not None) for i, s in enumerate(inputs)]
    with_label = [n for n, has in named if has]
    if with_label and len(with_label) != len(inputs):
        without = [n for n, has in named if not has]
        raise ConfigError(
            f"data.files.inputs: 'label' is given for {listing(with_label)} but not for "
            f"{listing(without)}; label every input (or set data.files.label_column), or none "
            "(unlabelled inputs: regression, clustering and dimreduction models only)"
        )
    return bool(with_label)


def _expand(spec: dict, where: str, error: type) -> list[str]:
    path, pattern = spec["path"], spec.get("pattern")
    if pattern is None and isinstance(path, str) and Path(path).is_dir():
        raise error(f"{where}.path: '{path}' is a directory; give a 'pattern' such as '*.root'")
    files, unmatched = expand_files(path, pattern)
    literal = [u for u in unmatched if not set("*?[") & set(u)]
    if error is DataError and literal == unmatched and pattern is None:
        return sorted({*files, *literal})  # the step names a missing file (after its type) when it opens it
    if unmatched:
        raise error(f"{where}.path: no file matches {unmatched[0]!r}")
    return files


def check_config(files: dict, features: dict | None = None) -> None:
    """The parse-time checks of ``data.files`` (``source: files``), called by
    :func:`hepml_steps.config.load`: expand every input's files, check the
    syntax of columns, aliases and cuts, the label values, and that every
    input is labelled or none is (:func:`labelled`).

    Raises
    ------
    ConfigError
        One line starting with the key.
    """
    check_inputs(files["inputs"])
    _settings(files, (features or {}).get("exclude"))
    labelled(files["inputs"], files.get("label_column"))


def _settings(files: dict, exclude=None) -> Settings:
    return Settings(
        label_column=files.get("label_column"),
        weight_column=files.get("weight_column"),
        event_id_column=files.get("event_id_column"),
        columns=files.get("columns"),
        aliases=dict(files.get("aliases") or {}),
        cut=files.get("cut"),
        signal_values=files.get("signal_values"),
        background_values=files.get("background_values"),
        chunk_size=files.get("chunk_size") or CHUNK_SIZE,
        exclude=list(exclude or []),
    ).check()


def input_name(spec: dict) -> str:
    """The name hashed into an input's event ids (see the module docstring)."""
    if spec.get("name"):
        return spec["name"]
    path = spec["path"]
    if isinstance(path, str):
        return f"{Path(path).name}/{spec['pattern']}" if spec.get("pattern") else Path(path).name
    return "+".join(Path(p).name for p in path)


# --------------------------------------------------------------------------- ids


def hashed_ids(name: str, n: int) -> np.ndarray:
    """Deterministic non-negative int64 ids for entries ``0..n-1`` of the input
    called ``name``: :func:`name_prefix` in the top 23 bits, the entry number in
    the low 40 (inputs up to ~10^12 entries)."""
    return entry_ids(name, np.arange(n, dtype=np.int64))


def entry_ids(name: str, entries: np.ndarray) -> np.ndarray:
    """As :func:`hashed_ids`, for the given entry numbers of the input ``name``."""
    entries = np.asarray(entries, dtype=np.int64)
    if entries.size and entries.max() >= 1 << ENTRY_BITS:
        raise DataError(
            f"{name}: {int(entries.max()) + 1} entries exceed the 2^{ENTRY_BITS} the hashed event "
            "ids allow; give an event_id_column"
        )
    return (np.int64(name_prefix(name)) << np.int64(ENTRY_BITS)) | entries


def name_prefix(name: str) -> int:
    """The 23-bit hash (blake2b) of an input's name used in :func:`hashed_ids`."""
    import hashlib

    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << NAME_BITS) - 1)


def check_names(inputs: list[dict]) -> None:
    """Hashed event ids need distinct input names with distinct hash prefixes."""
    prefixes: dict[int, str] = {}
    names = [input_name(s) for s in inputs]
    for name in names:
        other = prefixes.setdefault(name_prefix(name), name)
        if other == name and names.count(name) > 1:
            raise ConfigError(
                f"data.files.inputs: two inputs are named '{name}'; give them distinct 'name's "
                "(event ids are hashed from the name) or set event_id_column"
            )
        if other != name:
            raise ConfigError(
                f"data.files.inputs: the names '{other}' and '{name}' hash to the same event-id "
                "prefix; give one of them another 'name' or set event_id_column"
            )


def same_value(a, b) -> bool:
    """Label values match as numbers when both are numbers (true/false are 1/0), else as text."""
    if isinstance(a, (numbers.Real, np.bool_)) and isinstance(b, (numbers.Real, np.bool_)):
        return float(a) == float(b)
    return str(a) == str(b)
