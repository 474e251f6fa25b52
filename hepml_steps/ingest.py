"""Read the toy sample or the user's ROOT / Parquet / CSV files into one
canonical Parquet table (see :mod:`hepml_steps.columns`), chunk by chunk.

**Inputs.** Each input (``data.files.inputs``) is ``{path, pattern, tree,
label, weight, name, format, process, cut}``:

- ``path``: a file, a glob (``data/sig_*.root``, TMVA's TChain), a list of
  them, or a directory with a ``pattern`` (``*.root``); expanded and sorted
  when the configuration is read (:func:`hepml_steps.inputs.check_config`), every file an input
  of the Snakemake rule. ROOT files hold a TTree or an RNTuple (``tree`` may
  be left out when a file holds exactly one; ``dir/Events`` names one in a
  TDirectory); Parquet (``.parquet``/``.pq``) and CSV by suffix, or
  ``format`` (root/parquet/csv);
- ``label``: 1 or 0 for every event of the input — TMVA's
  AddSignalTree/AddBackgroundTree. Without it the ``label_column`` gives the
  labels: 1/0 (or true/false), or the values listed in ``signal_values``
  (everything else is background) and/or ``background_values`` (with both,
  any other value is an error listing the values found) — HiggsML's
  ``s``/``b``, a telescope's ``g``/``h``, ±1. Every input is labelled or
  none is (:class:`Labels`); unlabelled inputs give a table without a
  ``label`` column, for models that need no labels;
- ``weight``: a global weight multiplying the input's event weights (TMVA's
  per-tree weight); event weights come from ``weight_column`` (a branch or an
  alias, default 1);
- ``name``: the name hashed into the event ids (default: the file's name;
  for a glob the pattern's last part, for a list the names joined by ``+``);
- ``process``: a class index (integer) or class name (``ttbar``) written to
  the ``process`` column for every event — TMVA's multiclass
  ``AddTree(tree, className)``; give it for every input or for none, names
  or numbers for all; never a feature;
- ``cut``: a selection for this input, combined (and) with
  ``data.files.cut`` for all inputs — TMVA's ``PrepareTrainingAndTestTree(cut)``.

**Columns.** ``columns`` lists branches or expressions over them
(:mod:`hepml_steps.jagged`: ``Jet_pt[0]`` -> column ``Jet_pt_0``,
``len(Jet_pt)`` -> ``len_Jet_pt``, ``max(Jet_btag)`` -> ``max_Jet_btag``;
``aliases`` name any other expression). Without it every branch with one
number, condition or string per event becomes a column (conditions as
int8; strings stay strings, and the features step encodes them as
categories), plus every per-event alias, except the bookkeeping branches
(:data:`BOOKKEEPING`), the label/weight/event-id sources, ``features.exclude``
and any column — chosen by default or listed — that is NaN/inf in every
event of some input (a truth branch of another process): left out with a
warning, never every event dropped for it. Collections are never columns by
themselves: those not used are listed once in the record
(``unused_collections``). Everything left out is in ``excluded`` with why.
``target_column`` (a branch or alias) is copied to ``target``.

**Event ids** come from ``event_id_column`` (integers, unique over all
inputs) or are deterministic: a 23-bit hash of the input's name in the high
bits and the entry number in the low 40, entries of an input's files numbered
one after the other in sorted order (TMVA's TChain), so a one-file input's ids
are its entry numbers and nothing depends on the order of the inputs.

**Memory.** ROOT is read with uproot's ``iterate``, Parquet by batches and CSV
by chunks, ``chunk_size`` events at a time, reading only the branches used.
Each chunk is cut, turned into columns and spilled to a temporary Arrow file
beside the output; a second pass drops the events with NaN/inf in a column
(``nonfinite: drop``, counted per column; ``fail`` stops; ``keep`` keeps
them, ±inf written as NaN — a missing value, see :mod:`hepml_steps.features` —
and drops only the events whose ``target`` is NaN/inf), gives every column
one type over all inputs, and writes the table with a ParquetWriter, in row
groups of at most ``io.row_group_events`` events (65,536 up to 16.8M events; they
bound the readers' memory), to a temporary file moved into place at the end. Peak memory is one
chunk plus the event ids of the uniqueness check (8 bytes per event, sorted in
place), whatever the input's size.

**Record** (``--summary``, ``ingest.json``): per input what was read, the
cut-flow (``cutflow: [{input, read, after_cut, after_nonfinite}]``), the
columns, what was excluded and why, the unused collections; ``labelled`` and
the signal/background counts and weights (null for unlabelled inputs).
"""

from __future__ import annotations

import ast
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cli
from .columns import EVENT_ID, LABEL, PROCESS, TARGET, TRUTH_LLR, WEIGHT
from .errors import ConfigError, DataError
from .inputs import (  # noqa: F401 (the step's API: config.load, tests)
    CANONICAL,
    CHUNK_SIZE,
    ENTRY_BITS,
    NAME_BITS,
    Settings,
    check_column_syntax,
    check_config,
    check_inputs,
    check_names,
    entry_ids,
    hashed_ids,
    input_name,
    labelled,
    name_prefix,
    same_value,
)
from .io import atomic_path, dictionary_columns, row_group_events, write_json
from .jagged import BOOLEAN, COLLECTION, EVENT, NUMBER, STRING, Evaluator, Typer, column_name, counter_hint, parse
from .readers import file_format, listing, open_source

log = logging.getLogger("hepml.ingest")

#: run / lumi-block / event numbers: never features unless listed in ``columns``
BOOKKEEPING = ("run", "luminosityBlock", "event", "eventNumber", "runNumber")


# --------------------------------------------------------------------------- labels, weights, ids


class Labels:
    """How events get their label: the one home of label handling.

    **Labelled inputs** (:attr:`present`): every input has a ``label``, or
    ``label_column`` is set. An input's ``label`` (1/0) wins; otherwise the
    ``label_column``'s values are mapped: by default 1 is signal and 0
    background (anything else is an error); ``signal_values`` lists the
    signal values (everything else is background), ``background_values`` the
    background ones (everything else is signal); with both lists, a value in
    neither is an error. The table's ``label`` column is int8, and both
    classes must be present.

    **Unlabelled inputs**: no input has a ``label`` and there is no
    ``label_column``. The table then has *no* ``label`` column (not a
    sentinel value that a sum or ``label == 0`` could mistake for a class):
    the split, the features step and the data boundary pass its absence on,
    and a figure that needs labels is not made. Only models whose task needs
    no labels can run (regression, clustering, dimensionality reduction:
    :meth:`hepml_steps.tasks.Task.needs_labels`), checked when the
    configuration is read.

    Some inputs labelled and others not is an error
    (:func:`hepml_steps.inputs.labelled`).
    """

    def __init__(self, s: Settings, inputs: list[dict]):
        self.column = s.label_column
        self.default = s.signal_values is None and s.background_values is None
        self.signal = [1] if self.default else s.signal_values
        self.background = [0] if self.default else s.background_values
        self.present = labelled(inputs, s.label_column)

    def needs_column(self, spec: dict) -> bool:
        """Whether the input's labels are read from ``label_column``."""
        return self.present and spec.get("label") is None

    def source(self, spec: dict) -> str | None:
        """Where the input's labels come from, for the record (None: unlabelled)."""
        if not self.present:
            return None
        return f"file label {int(spec['label'])}" if spec.get("label") is not None else f"column {self.column}"

    def of(self, spec: dict, values, n: int, desc: str) -> np.ndarray | None:
        """int8 labels (1 signal, 0 background) of ``n`` events; None for unlabelled inputs.

        Raises
        ------
        DataError
            A value that the rules do not map, listing the values found.
        """
        if not self.present:
            return None
        if spec.get("label") is not None:
            return np.full(n, int(spec["label"]), dtype=np.int8)
        uniques = _uniques(values)
        sig = [u for u in uniques if self.signal is not None and any(same_value(u, v) for v in self.signal)]
        bkg = [u for u in uniques if self.background is not None and any(same_value(u, v) for v in self.background)]
        is_sig = _isin(values, sig)
        if self.signal is not None and self.background is not None:
            unknown = [u for u in uniques if u not in sig and u not in bkg]
            if unknown:
                n_bad = int(n - is_sig.sum() - _isin(values, bkg).sum())
                shown = sorted(unknown, key=str)[:5]
                if self.default:
                    raise DataError(
                        f"{desc}: label column '{self.column}' must hold 0 (background) or 1 "
                        f"(signal); found {shown} in {n_bad} events (values found: "
                        f"{_values_text(uniques)}); map them with data.files.signal_values"
                    )
                raise DataError(
                    f"{desc}: label column '{self.column}' has {shown} in {n_bad} events, in neither "
                    f"signal_values {self.signal} nor background_values {self.background} "
                    f"(values found: {_values_text(uniques)})"
                )
        if self.signal is None:
            return (~_isin(values, bkg)).astype(np.int8)
        return is_sig.astype(np.int8)


def _uniques(values) -> list:
    if isinstance(values, np.ndarray):
        return np.unique(values).tolist()
    import pyarrow.compute as pc

    return pc.unique(values).to_pylist()


def _isin(values, chosen: list) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return np.isin(values, np.asarray(chosen, dtype=values.dtype)) if chosen else np.zeros(len(values), bool)
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.is_in(values, value_set=pa.array(chosen, type=values.type)).to_numpy(zero_copy_only=False)


def _values_text(uniques: list, limit: int = 10) -> str:
    shown = sorted(uniques, key=str)
    return f"{shown[:limit]}{f' and {len(shown) - limit} more' if len(shown) > limit else ''}"


def _weights(spec: dict, values, n: int, weight_column: str | None, desc: str) -> np.ndarray:
    file_w = 1.0 if spec.get("weight") is None else float(spec["weight"])
    if not weight_column:
        return np.full(n, file_w)
    w = values.astype(np.float64) * file_w
    bad = ~np.isfinite(w)
    if bad.any():
        raise DataError(f"{desc}: weight column '{weight_column}' has {int(bad.sum())} NaN/inf values")
    return w


def _column_ids(values: np.ndarray, event_id_column: str, desc: str) -> np.ndarray:
    arr = values
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise DataError(f"{desc}: event id column '{event_id_column}' has values above 2^63-1")
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(arr) & (np.floor(arr) == arr) & (np.abs(arr) < 2.0**63)
        if not ok.all():
            raise DataError(
                f"{desc}: event id column '{event_id_column}' must hold integers; "
                f"found {arr[~ok][0].item()!r} ({int((~ok).sum())} non-integer values)"
            )
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- plan


@dataclass
class _Expr:
    where: str
    text: str
    body: ast.expr


@dataclass
class _Plan:
    """What to read from the files of one input and what to make of it."""

    index: int
    spec: dict
    name: str
    desc: str
    columns: dict[str, _Expr]  # feature column -> expression (a plain branch is a Name)
    auto: list[str]  # columns chosen by default (dropped when NaN in every event)
    read: list[str]  # branches to read
    cuts: list[_Expr]
    sources: dict[str, _Expr]  # label / weight / event id / target -> expression
    skipped: dict[str, str]
    excluded: dict[str, str]
    collections: list[str]

    @property
    def input_desc(self) -> str:
        """The input in messages: its file for a one-file input, else its index and name."""
        files = self.spec["files"]
        return self.desc if len(files) == 1 else f"data.files.inputs[{self.index}] ({self.name}, {len(files)} files)"


def _plan(index: int, spec: dict, src, s: Settings, labels: Labels) -> _Plan:
    """Check the settings against one file's branches and decide what to read.

    Raises
    ------
    DataError
        Naming the file: a missing branch, a collection asked for as a column,
        an expression of the wrong type (:class:`~hepml_steps.jagged.Typer`).
    """
    typer = Typer(src.desc, src.branches, s.alias_bodies)
    picker = _Columns(src, s, spec.get("process") is not None)
    sources = picker.sources(spec, labels)
    if s.columns is not None:
        picker.listed()
    else:
        picker.default(typer)
    if picker.missing:
        missing = list(dict.fromkeys(picker.missing))
        counters = "".join(counter_hint(m, src.branches) for m in missing)
        raise DataError(f"{src.desc}: no column(s)/branch(es) {missing}{counters} (has: {listing(src.branches)})")
    read = _check_sources(src, s, typer, sources)
    for expr in picker.columns.values():
        if _is_string(src, expr):
            read.append(expr.text)  # a string branch: read as it is (a category for the features step)
        else:
            read += typer.column(expr.where, expr.text, expr.body)[1]
    cuts = [
        _Expr(w, text, parse(w, text))
        for w, text in (("data.files.cut", s.cut), (f"data.files.inputs[{index}].cut", spec.get("cut")))
        if text
    ]
    for cut in cuts:
        read += typer.cut(cut.where, cut.text, cut.body)
    used = set(read)
    collections = [n for n, b in src.branches.items() if b.shape == COLLECTION and n not in used]
    if s.columns is None and not picker.columns:
        x = collections[0] if collections else "X"
        raise DataError(
            f"{src.desc}: no branch holds one number per event to use as a feature"
            + (
                f"; its collections ({listing(collections)}) need an expression in data.files.columns, "
                f"e.g. {x}[0], len({x}), max({x})"
                if collections
                else ""
            )
        )
    return _Plan(
        index,
        spec,
        input_name(spec),
        src.desc,
        picker.columns,
        picker.auto,
        list(dict.fromkeys(read)),
        cuts,
        sources,
        picker.skipped,
        picker.excluded,
        collections,
    )


class _Columns:
    """Chooses an input's columns: those listed in ``columns``, or the default set."""

    def __init__(self, src, s: Settings, process: bool):
        self.src, self.s, self.process = src, s, process
        self.columns: dict[str, _Expr] = {}
        self.auto: list[str] = []
        self.skipped: dict[str, str] = {}
        self.excluded: dict[str, str] = {}
        self.missing: list[str] = []
        self.source_names = {
            c: f"the {key} column"
            for key, c in (("label", s.label_column), ("weight", s.weight_column), ("event id", s.event_id_column))
            if c
        }

    def name(self, where: str, name: str) -> _Expr:
        """A branch or alias by its name (any text: never parsed)."""
        if name not in self.src.branches and name not in self.s.alias_bodies:
            self.missing.append(name)
        return _Expr(where, name, ast.Name(id=name, ctx=ast.Load()))

    def sources(self, spec: dict, labels: Labels) -> dict[str, _Expr]:
        """The label / weight / event id / target columns (the label's values are read, not computed)."""
        s, sources = self.s, {}
        if labels.needs_column(spec):
            sources["label"] = _Expr("data.files.label_column", s.label_column, None)
            if s.label_column not in self.src.branches:
                self.missing.append(s.label_column)
        for key, col in (("weight", s.weight_column), ("event_id", s.event_id_column), ("target", s.target_column)):
            if col:
                sources[key] = self.name(f"data.files.{key}_column", col)
        if s.event_id_column and s.event_id_column not in self.src.branches:
            self.missing.append(s.event_id_column)  # a branch, not an alias
        return sources

    def add(self, out: str, expr: _Expr, entry: str) -> None:
        if out in self.source_names:
            return
        if out in CANONICAL or (out == PROCESS and self.process):
            log.warning(
                "%s: column '%s' is a canonical column name; ignored (the canonical '%s' is %s)",
                self.src.desc,
                out,
                out,
                "computed by ingest" if out in (EVENT_ID, LABEL, WEIGHT, PROCESS) else "added later",
            )
            self.excluded[out] = "a canonical column name (computed by ingest or added later)"
            return
        if out in self.columns:
            raise DataError(
                f"{self.src.desc}: data.files.columns: '{entry}' and '{self.columns[out].text}' both "
                f"give the column '{out}'; name one with data.files.aliases"
            )
        self.columns[out] = expr

    def listed(self) -> None:
        """``columns``: branches, aliases and expressions with an automatic name."""
        branches, s = self.src.branches, self.s
        for entry in s.columns:
            if entry in branches:
                b = branches[entry]
                if not b.flat and not (b.kind == STRING and b.shape == EVENT):
                    what = (
                        f"it is a collection ({b.type}); ask for {entry}[0], len({entry}), max({entry}), "
                        "...: see data.files.columns"
                        if b.shape is not None and b.kind != STRING
                        else f"it holds {b.type}"
                    )
                    raise DataError(f"{self.src.desc}: column '{entry}' is not a flat numeric branch/column: {what}")
                self.add(entry, self.name("data.files.columns", entry), entry)
            elif entry in s.alias_bodies:
                self.add(
                    entry,
                    _Expr(f"data.files.aliases.{entry}", s.aliases[entry], ast.Name(id=entry, ctx=ast.Load())),
                    entry,
                )
            else:
                try:
                    body = ast.parse(entry, mode="eval").body
                except (SyntaxError, ValueError, RecursionError, MemoryError):
                    body = None
                if body is None or isinstance(body, ast.Name):
                    self.missing.append(entry)  # a branch name that is not in the file
                    continue
                check_column_syntax(entry, s.alias_bodies)
                body = parse("data.files.columns", entry)
                self.add(column_name(body), _Expr("data.files.columns", entry, body), entry)

    def default(self, typer: Typer) -> None:
        """No ``columns``: every flat branch but the excluded ones, and every per-event alias."""
        s = self.s
        for name, b in self.src.branches.items():
            if name in self.source_names:
                self.excluded[name] = self.source_names[name]
            elif b.shape is None:
                self.skipped[name] = f"not numeric ({b.type})"
            elif not b.flat and b.kind != STRING:
                continue  # a collection: listed in the record when no expression uses it
            elif name in BOOKKEEPING:
                self.excluded[name] = (
                    "bookkeeping (run, lumi block, event number); list it in data.files.columns to keep it"
                )
            elif name in s.exclude:
                self.excluded[name] = "features.exclude"
            else:
                self.add(name, self.name("data.files.columns", name), name)
                if name in self.columns:
                    self.auto.append(name)
        for name in s.alias_bodies:
            if typer.alias(name)[0].shape == EVENT and name not in s.exclude:
                self.add(
                    name, _Expr(f"data.files.aliases.{name}", s.aliases[name], ast.Name(id=name, ctx=ast.Load())), name
                )
        if self.skipped:
            log.warning("%s: skipping non-numeric column(s) %s", self.src.desc, listing(self.skipped))


def _check_sources(src, s: Settings, typer: Typer, sources: dict[str, _Expr]) -> list[str]:
    """Check the label / weight / event id / target columns; return the branches they read."""
    read = []
    if "label" in sources:
        b = src.branches[s.label_column]
        if b.shape != EVENT:
            raise DataError(f"{src.desc}: label column '{s.label_column}' must hold one value per event, not {b.type}")
        read.append(s.label_column)
    for key in ("weight", "event_id", "target"):
        if key in sources:
            kind, used = typer.column(sources[key].where, sources[key].text, sources[key].body)
            if kind.kind != NUMBER and not (key == "target" and kind.kind == BOOLEAN):
                raise DataError(
                    f"{src.desc}: {key.replace('_', ' ')} column '{sources[key].text}' is not numeric "
                    f"({_type_of(src.branches, sources[key].text)})"
                )
            read += used
    return read


def _type_of(branches, name) -> str:
    return branches[name].type if name in branches else "an alias"


def _same_columns(a: _Plan, b: _Plan, a_desc: str, b_desc: str) -> None:
    if list(a.columns) != list(b.columns) and set(a.columns) != set(b.columns):
        only_a = [c for c in a.columns if c not in b.columns]
        only_b = [c for c in b.columns if c not in a.columns]
        raise DataError(
            f"{a_desc} and {b_desc} differ in columns: only in {a_desc}: {only_a}; "
            f"only in {b_desc}: {only_b}; select common columns with data.files.columns"
        )


# --------------------------------------------------------------------------- reading


@dataclass
class _Input:
    """Counts and spilled chunks of one input."""

    plan: _Plan
    files: list[dict] = field(default_factory=list)
    n_read: int = 0
    n_after_cut: int = 0
    nonfinite: dict[str, int] = field(default_factory=dict)
    chunks: list[tuple[Path, int, str]] = field(default_factory=list)  # (spill file, rows, source file)
    formats: list[str] = field(default_factory=list)
    trees: list[str | None] = field(default_factory=list)


def _take(values, keep: np.ndarray):
    if isinstance(values, np.ndarray):
        return values[keep]
    import awkward as ak

    if isinstance(values, ak.Array):
        return values[keep]
    import pyarrow as pa

    return values.filter(pa.array(keep))


def _read_input(state: _Input, s: Settings, labels: Labels, spill: Path, counter: list[int]) -> None:
    """Read every file of one input chunk by chunk; spill each chunk's columns to ``spill``."""
    import pyarrow as pa

    plan, spec = state.plan, state.plan.spec
    offset = 0
    for path in spec["files"]:
        path = Path(path)
        fmt = file_format(path, spec.get("format"))
        if not path.is_file():
            raise DataError(f"missing input file: {path}")
        with open_source(path, fmt, spec.get("tree")) as src:
            if src.num_entries == 0:
                state.files.append(
                    {"path": str(path), "tree": src.tree, "n_read": 0, "n_after_cut": 0, "first_entry": offset}
                )
                continue
            if src.desc == plan.desc:
                file_plan = plan
            else:  # every file is checked against the settings; all must give the same columns
                file_plan = _plan(plan.index, spec, src, s, labels)
                _same_columns(plan, file_plan, plan.desc, src.desc)
            n_file = n_cut = 0
            for start, n, arrays in src.chunks(file_plan.read, s.chunk_size):
                table, kept = _chunk(file_plan, src.desc, arrays, n, offset + start, s, labels)
                n_file += n
                n_cut += kept
                if kept:
                    for c in file_plan.columns:
                        col = table.column(c)
                        if pa.types.is_floating(col.type):
                            bad = int(np.count_nonzero(~np.isfinite(col.to_numpy())))
                            state.nonfinite[c] = state.nonfinite.get(c, 0) + bad
                    if TARGET in table.column_names and pa.types.is_floating(table.column(TARGET).type):
                        bad = int(np.count_nonzero(~np.isfinite(table.column(TARGET).to_numpy())))
                        state.nonfinite[TARGET] = state.nonfinite.get(TARGET, 0) + bad
                    chunk_path = spill / f"{counter[0]:08d}.arrow"
                    counter[0] += 1
                    with pa.OSFile(str(chunk_path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                        w.write_table(table)
                    state.chunks.append((chunk_path, kept, src.desc))
                del table, arrays  # not alive while the next chunk is read
            offset += n_file
            state.n_read += n_file
            state.n_after_cut += n_cut
            state.formats.append(fmt)
            state.trees.append(src.tree)
            state.files.append(
                {
                    "path": str(path),
                    "tree": src.tree,
                    "n_read": n_file,
                    "n_after_cut": n_cut,
                    "first_entry": offset - n_file,
                }
            )
            log.info("%s: read %d events, %d pass the cut", src.desc, n_file, n_cut)


def _chunk(plan: _Plan, desc: str, arrays: dict, n: int, first_entry: int, s: Settings, labels: Labels):
    """The columns of one chunk's events that pass the cuts, as an Arrow table, and their number."""
    import pyarrow as pa

    spec = plan.spec
    entries = np.arange(first_entry, first_entry + n, dtype=np.int64)
    if plan.cuts:
        ev = Evaluator(desc, arrays, s.alias_bodies, n)
        keep = np.ones(n, dtype=bool)
        for cut in plan.cuts:
            keep &= ev.value(cut.where, cut.text, cut.body).astype(bool)
        if not keep.all():
            arrays = {k: _take(v, keep) for k, v in arrays.items()}
            entries = entries[keep]
    m = len(entries)
    ev = Evaluator(desc, arrays, s.alias_bodies, m)
    src = plan.sources
    values = {key: ev.value(e.where, e.text, e.body) for key, e in src.items() if key != "label"}
    label = labels.of(spec, arrays.get(s.label_column) if "label" in src else None, m, desc)
    weight = _weights(spec, values.get("weight"), m, s.weight_column, desc)
    if "event_id" in values:
        ids = _column_ids(values["event_id"], s.event_id_column, desc)
    else:
        ids = entry_ids(plan.name, entries)
    cols = {EVENT_ID: ids, **({} if label is None else {LABEL: label}), WEIGHT: weight}
    for out, e in plan.columns.items():
        if e.text in arrays and not isinstance(arrays[e.text], (np.ndarray,)) and _is_text(arrays[e.text]):
            cols[out] = _as_strings(arrays[e.text])
            continue
        v = ev.value(e.where, e.text, e.body)
        cols[out] = v.astype(np.int8) if v.dtype == np.bool_ else v
    if "target" in values:
        t = values["target"]
        cols[TARGET] = t.astype(np.int8) if t.dtype == np.bool_ else np.array(t, copy=True)
    process = spec.get("process")
    if isinstance(process, str):  # a class name: a string column (as a text branch is kept)
        cols[PROCESS] = pa.repeat(pa.scalar(process, pa.string()), m)
    elif process is not None:
        cols[PROCESS] = np.full(m, int(process), dtype=np.int64)
    return pa.table(cols), m


# --------------------------------------------------------------------------- writing


def _is_string(src, expr: _Expr) -> bool:
    b = src.branches.get(expr.text)
    return isinstance(expr.body, ast.Name) and b is not None and b.kind == STRING and b.shape == EVENT


def _is_text(values) -> bool:
    import pyarrow as pa

    t = getattr(values, "type", None)
    if isinstance(t, pa.DictionaryType):
        t = t.value_type
    return t is not None and (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_null(t)
    )


def _as_strings(values):
    """A string column as an Arrow ``string`` array (categoricals decoded, missing values null)."""
    import pyarrow as pa

    if isinstance(values.type, pa.DictionaryType):
        values = values.dictionary_decode()
    return values.cast(pa.string())


def _schema(order: list[str], inputs: list[_Input]):
    """One Arrow type per column: numpy's promotion over every chunk's type (strings stay strings)."""
    import pyarrow as pa

    dtypes: dict[str, list] = {c: [] for c in order}
    strings = set()
    for state in inputs:
        for path, _, _ in state.chunks:
            schema = pa.ipc.open_file(pa.memory_map(str(path))).schema
            for c in order:
                t = schema.field(c).type
                if pa.types.is_string(t):
                    strings.add(c)
                else:
                    dtypes[c].append(t.to_pandas_dtype())
    mixed = [c for c in strings if dtypes[c]]
    if mixed:
        raise DataError(f"column(s) {mixed} hold strings in some inputs and numbers in others")
    fixed = {EVENT_ID: np.int64, LABEL: np.int8, WEIGHT: np.float64}
    return pa.schema(
        [
            (
                c,
                pa.string()
                if c in strings
                else pa.from_numpy_dtype(np.dtype(fixed.get(c) or np.result_type(*dtypes[c]))),
            )
            for c in order
        ]
    )


def _write(out: Path, order: list[str], inputs: list[_Input], s: Settings, checked: dict[int, list[str]]):
    """Second pass: drop non-finite events, cast, write; returns counts per input and the ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(order, inputs)
    # every written event's id, for the uniqueness check: 8 bytes per event, filled in place
    ids = np.empty(sum(rows for state in inputs for _, rows, _ in state.chunks), dtype=np.int64)
    group = row_group_events(len(ids))  # and a row group ends with each chunk (500 of 200k at 100M events)
    bounds, kept = [], {}
    totals = {"n": 0, "w": 0.0, "n_sig": 0, "n_bkg": 0, "w_sig": 0.0, "w_bkg": 0.0}
    with pq.ParquetWriter(str(out), schema, compression="zstd", use_dictionary=dictionary_columns(schema)) as writer:
        for state in inputs:
            check = checked[state.plan.index]
            n_bad, n_kept = 0, 0
            for path, _, desc in state.chunks:
                table = pa.ipc.open_file(pa.memory_map(str(path))).read_all().select(order)
                bad = np.zeros(table.num_rows, dtype=bool)
                for c in check:
                    col = table.column(c)
                    if pa.types.is_floating(col.type):
                        values = col.to_numpy()
                        if s.nonfinite == "keep" and c != TARGET:
                            table = _inf_as_nan(table, c, values)
                        else:
                            bad |= ~np.isfinite(values)
                if bad.any():
                    n_bad += int(bad.sum())
                    if s.nonfinite == "fail":
                        continue  # counted for the message; the step stops after this input
                    table = table.filter(pa.array(~bad))
                if table.num_rows:
                    _write_table(writer, table.cast(schema, safe=False), group, ids, bounds, totals, desc)
                    n_kept += table.num_rows
            state_n = state.n_after_cut
            if n_bad and s.nonfinite == "fail":
                raise DataError(
                    f"{state.plan.input_desc}: {n_bad} of {state_n} events have NaN/inf values, per column "
                    f"{_per_column(state, check)} (data.nonfinite: fail; use 'drop' to drop them)"
                )
            if n_bad:
                log.warning(
                    "%s: dropping %d of %d events with NaN/inf values, per column %s",
                    state.plan.input_desc,
                    n_bad,
                    state_n,
                    _per_column(state, [TARGET] if s.nonfinite == "keep" else check),
                )
            elif s.nonfinite == "keep" and _per_column(state, check):
                log.info(
                    "%s: missing (NaN/inf) values kept (data.nonfinite: keep), per column %s",
                    state.plan.input_desc,
                    _per_column(state, check),
                )
            if n_kept == 0:
                raise DataError(
                    f"no events left to ingest from {state.plan.input_desc} (read {state.n_read}, "
                    f"{state.n_after_cut} after the cut, all {n_bad} dropped with NaN/inf in "
                    f"{_per_column(state, check)})"
                )
            kept[state.plan.index] = (n_kept, n_bad)
    return kept, ids[: totals["n"]], bounds, totals


def _inf_as_nan(table, c: str, values: np.ndarray):
    """``table`` with ±inf in column ``c`` written as NaN (a missing value)."""
    import pyarrow as pa

    inf = np.isinf(values)
    if not inf.any():
        return table
    values = np.where(inf, np.nan, values)
    return table.set_column(table.schema.get_field_index(c), c, pa.array(values, type=table.column(c).type))


def _write_table(writer, table, group, ids, bounds, totals, desc):
    writer.write_table(table, row_group_size=group)  # bounds the readers' memory (split)
    ids[totals["n"] : totals["n"] + table.num_rows] = table.column(EVENT_ID).to_numpy()  # a copy: the spill unmapped
    bounds.append((table.num_rows, desc))
    w = table.column(WEIGHT).to_numpy()
    totals["n"] += table.num_rows
    totals["w"] += float(w.sum())
    if LABEL not in table.column_names:
        return  # unlabelled inputs
    y = table.column(LABEL).to_numpy()
    totals["n_sig"] += int((y == 1).sum())
    totals["n_bkg"] += int((y == 0).sum())
    totals["w_sig"] += float(w[y == 1].sum())
    totals["w_bkg"] += float(w[y == 0].sum())
    _count_negative(totals, y, w)


def _count_negative(totals: dict, y, w) -> None:
    """Add the count and sum of the negative weights of each class to ``totals["negative"]``."""
    neg = totals.setdefault("negative", {c: {"n": 0, "sum_weights": 0.0} for c in ("signal", "background")})
    for c, name in ((1, "signal"), (0, "background")):
        m = (y == c) & (w < 0)
        neg[name]["n"] += int(m.sum())
        neg[name]["sum_weights"] += float(w[m].sum())


def _per_column(state: _Input, check: list[str]) -> dict[str, int]:
    return {c: state.nonfinite[c] for c in check if state.nonfinite.get(c)}


def _check_unique(ids: np.ndarray, bounds: list[tuple[int, str]], event_id_column: str | None, table) -> None:
    """Refuse duplicate event ids. ``ids`` (every written id, in the order of ``bounds``) is
    sorted in place: 8 bytes per event and no copy; on a duplicate, the ids are read back from
    the written ``table`` to name the files."""
    if not len(ids):
        return
    ids.sort()
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if not len(dup):
        return
    value = int(ids[dup[0]])
    n_dup = len(dup)
    import pyarrow.parquet as pq

    where = np.flatnonzero(pq.read_table(table, columns=[EVENT_ID]).column(EVENT_ID).to_numpy() == value)
    ends = np.cumsum([n for n, _ in bounds])
    files = sorted({bounds[int(np.searchsorted(ends, i, side="right"))][1] for i in where})
    source = f"column '{event_id_column}'" if event_id_column else "hashed ids"
    raise DataError(
        f"event_id {value} ({source}) occurs {len(where)} times, in {', '.join(files)}; "
        f"{n_dup} duplicate id(s) in all: event ids must be unique across all inputs"
    )


# --------------------------------------------------------------------------- step


def ingest(
    inputs: list[dict],
    out,
    label_column: str | None = None,
    weight_column: str | None = None,
    event_id_column: str | None = None,
    columns: list[str] | None = None,
    target_column: str | None = None,
    nonfinite: str = "drop",
    summary_out=None,
    *,
    cut: str | None = None,
    aliases: dict | None = None,
    signal_values: list | None = None,
    background_values: list | None = None,
    chunk_size: int = CHUNK_SIZE,
    exclude=(),
) -> dict:
    """Read every input chunk by chunk, check it, and write one canonical table to ``out``.

    Parameters
    ----------
    inputs : list of dict
        ``data.files.inputs`` (see the module docstring); ``path`` globs are
        expanded here when the configuration has not done it.
    out : str or Path
        The canonical events table (Parquet).
    label_column, weight_column, event_id_column, target_column : str, optional
    columns : list of str, optional
        Branches and expressions; None: every flat numeric branch (see module docstring).
    nonfinite : {"drop", "fail", "keep"}
    summary_out : str or Path, optional
        Where to write the record (JSON).
    cut : str, optional
        Selection applied to every input (and with each input's ``cut``).
    aliases : dict, optional
        Name -> expression.
    signal_values, background_values : list, optional
        Values of ``label_column`` meaning signal / background.
    chunk_size : int
        Events read at a time.
    exclude : list of str
        Branches never taken as columns by default (``features.exclude``).

    Returns
    -------
    dict
        The record (also written to ``summary_out``).

    Raises
    ------
    ConfigError, DataError
        One line naming the input, key or expression. Nothing is written then.
    """
    s = Settings(
        label_column=label_column,
        weight_column=weight_column,
        event_id_column=event_id_column,
        target_column=target_column,
        columns=columns,
        aliases=dict(aliases or {}),
        cut=cut,
        signal_values=signal_values,
        background_values=background_values,
        nonfinite=nonfinite,
        chunk_size=chunk_size,
        exclude=list(exclude or []),
    ).check()
    inputs = check_inputs(
        [dict(spec) for spec in inputs] if isinstance(inputs, (list, tuple)) else inputs, error=DataError
    )
    if not event_id_column:
        check_names(inputs)
    labels = Labels(s, inputs)
    plans = [_first_plan(i, spec, s, labels) for i, spec in enumerate(inputs)]
    for plan in plans[1:]:
        _same_columns(plans[0], plan, plans[0].input_desc, plan.input_desc)

    out = Path(out)
    states = [_Input(plan) for plan in plans]
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".ingest-") as spill:
        counter = [0]
        for state in states:
            _read_input(state, s, labels, Path(spill), counter)
            if state.n_after_cut == 0:
                cuts = " and ".join(f"{c.where} {c.text!r}" for c in state.plan.cuts)
                raise DataError(
                    f"data.files.inputs[{state.plan.index}] ({state.plan.name}): {cuts} keeps no "
                    f"events of the {state.n_read} read"
                )
        excluded = _all_nonfinite(states)
        order = [EVENT_ID] + ([LABEL] if labels.present else []) + [WEIGHT]
        order += [c for c in plans[0].columns if c not in excluded]
        order += [TARGET] if s.target_column else []
        order += [PROCESS] if plans[0].spec.get("process") is not None else []
        checked = {
            st.plan.index: [c for c in order if c in st.plan.columns and c != TRUTH_LLR]
            + ([TARGET] if TARGET in order else [])
            for st in states
        }
        kept, ids, bounds, totals = _write(tmp, order, states, s, checked)
        _check_unique(ids, bounds, event_id_column, tmp)
        del ids
        if labels.present and (totals["n_sig"] == 0 or totals["n_bkg"] == 0):  # a labelled table has both
            src = f"label column '{label_column}'" if label_column else "the per-file labels"
            raise DataError(
                f"{src} of {listing(st.plan.input_desc for st in states)} give(s) one class only: "
                f"{'no background' if totals['n_bkg'] == 0 else 'no signal'} events "
                f"({totals['n_sig']} signal, {totals['n_bkg']} background)"
            )
    summary = _record(out, s, labels, states, kept, totals, order, excluded, checked, event_id_column)
    log.info(
        "ingested %d events (%s) from %d input(s) into %s",
        summary["n_events"],
        f"{totals['n_sig']} signal, {totals['n_bkg']} background" if labels.present else "unlabelled",
        len(states),
        out,
    )
    if summary_out:
        write_json(summary_out, summary)
    return summary


def _first_plan(index: int, spec: dict, s: Settings, labels: Labels) -> _Plan:
    """The plan of an input from its first file that has events."""
    for path in spec["files"]:
        path = Path(path)
        fmt = file_format(path, spec.get("format"))
        if not path.is_file():
            raise DataError(f"missing input file: {path}")
        with open_source(path, fmt, spec.get("tree")) as src:
            if src.num_entries == 0:
                if len(spec["files"]) == 1:
                    raise DataError(f"{src.desc}: no events")
                continue
            return _plan(index, spec, src, s, labels)
    raise DataError(f"data.files.inputs[{index}] ({input_name(spec)}): no events in its {len(spec['files'])} files")


def _all_nonfinite(states: list[_Input]) -> dict[str, str]:
    """Columns that are NaN/inf in every event of some input: left out (never every event dropped)."""
    excluded = {}
    for state in states:
        for c in state.plan.columns:
            if state.n_after_cut and state.nonfinite.get(c, 0) == state.n_after_cut and c not in excluded:
                excluded[c] = f"NaN/inf in every event of {state.plan.name}"
                log.warning(
                    "%s: column '%s' is NaN/inf in every event; left out (not a feature)%s",
                    state.plan.input_desc,
                    c,
                    " although data.files.columns lists it" if c not in state.plan.auto else "",
                )
    return excluded


def _record(
    out, s: Settings, labels: Labels, states: list[_Input], kept, totals, order, excluded, checked, event_id_column
) -> dict:
    records, cutflow = [], []
    all_excluded, unused, skipped = dict(excluded), [], {}
    for st in states:
        p = st.plan
        n_kept, n_bad = kept[p.index]
        one = len(p.spec["files"]) == 1
        records.append(
            {
                "input": p.name,
                "name": p.name,
                "path": p.spec["files"][0] if one else p.spec["path"],
                "pattern": p.spec.get("pattern"),
                "format": st.formats[0] if st.formats else None,
                "tree": st.trees[0] if st.trees else None,
                "sources": st.files,
                "n_read": st.n_read,
                "n_after_cut": st.n_after_cut,
                "n_dropped_nonfinite": n_bad,
                "nonfinite_by_column": _per_column(st, checked[p.index]),
                "n_kept": n_kept,
                "label": labels.source(p.spec),
                "file_weight": float(p.spec.get("weight") or 1.0),
                "cut": [{"where": c.where, "cut": c.text} for c in p.cuts],
                "skipped_columns": p.skipped,
                "process": p.spec.get("process"),
            }
        )
        cutflow.append({"input": p.name, "read": st.n_read, "after_cut": st.n_after_cut, "after_nonfinite": n_kept})
        for c, why in p.excluded.items():
            all_excluded.setdefault(c, why)
        unused += [c for c in p.collections if c not in unused]
        skipped.update(p.skipped)
    if unused:
        log.warning(
            "collections not used (ask for e.g. X[0], len(X), max(X) in data.files.columns): %s", listing(unused)
        )
    per_class = {
        "n_signal": totals["n_sig"],
        "n_background": totals["n_bkg"],
        "sum_weights_signal": totals["w_sig"],
        "sum_weights_background": totals["w_bkg"],
    }
    return {
        "output": str(out),
        "n_events": totals["n"],
        "sum_weights": totals["w"],
        "labelled": labels.present,
        **{k: v if labels.present else None for k, v in per_class.items()},
        "negative_weights": totals.get("negative")
        or {c: {"n": 0, "sum_weights": 0.0} for c in ("signal", "background")},
        "n_dropped_nonfinite": sum(r["n_dropped_nonfinite"] for r in records),
        "files": records,
        "cutflow": cutflow,
        "columns": order,
        "features": [c for c in order if c not in (EVENT_ID, LABEL, WEIGHT, TRUTH_LLR, TARGET, PROCESS)],
        "excluded": all_excluded,
        "skipped": skipped,
        "unused_collections": unused,
        "label_column": s.label_column,
        "signal_values": s.signal_values,
        "background_values": s.background_values,
        "weight_column": s.weight_column,
        "target_column": s.target_column,
        "cut": s.cut,
        "aliases": s.aliases,
        "event_id": f"column {event_id_column}"
        if event_id_column
        else f"hash: blake2b(name) top {NAME_BITS} bits << {ENTRY_BITS} | entry (an input's files "
        "numbered one after the other in sorted order)",
        "nonfinite": s.nonfinite,
        "chunk_size": s.chunk_size,
    }


def _columns_arg(text: str) -> list[str] | None:
    cols = [c.strip() for c in text.split(",") if c.strip()]
    return cols or None


SETTINGS_KEYS = ("columns", "aliases", "cut", "signal_values", "background_values", "chunk_size", "exclude")


def main(argv=None) -> int:
    from .io import release_freed_memory

    if argv is None:  # the step's own process (python -m), never a caller's: see io.release_freed_memory
        release_freed_memory()

    def build(p):
        p.add_argument(
            "--inputs-json",
            type=cli.json_arg,
            required=True,
            help="JSON list of {path, files, pattern, tree, label, weight, name, format, process, cut}",
        )
        p.add_argument("--out", required=True, help="canonical events table (.parquet)")
        p.add_argument("--summary", help="record (JSON): counts, cut-flow, columns, exclusions")
        p.add_argument("--label-column", help="column holding the labels (1/0, or see signal_values)")
        p.add_argument("--weight-column", help="per-event weight branch or alias")
        p.add_argument("--event-id-column", help="unique integer event id column (default: hashed)")
        p.add_argument(
            "--columns",
            type=_columns_arg,
            default=None,
            help="comma-separated columns/branches; empty = every numeric one",
        )
        p.add_argument("--target-column", help="branch or alias copied to 'target'")
        p.add_argument("--nonfinite", default="drop", help="drop | fail | keep (NaN kept as missing, ±inf as NaN)")
        p.add_argument(
            "--settings-json",
            type=cli.json_arg,
            default={},
            help=f"JSON object with any of {list(SETTINGS_KEYS)} (columns here win over --columns)",
        )

    def call(a):
        extra = a.settings_json or {}
        if not isinstance(extra, dict) or set(extra) - set(SETTINGS_KEYS):
            raise ConfigError(f"--settings-json: give an object with keys among {list(SETTINGS_KEYS)}")
        columns = extra["columns"] if "columns" in extra else a.columns
        return ingest(
            a.inputs_json,
            a.out,
            label_column=a.label_column,
            weight_column=a.weight_column,
            event_id_column=a.event_id_column,
            columns=columns,
            target_column=a.target_column,
            nonfinite=a.nonfinite,
            summary_out=a.summary,
            **{k: v for k, v in extra.items() if k != "columns" and v is not None},
        )

    return cli.run(build, call, argv, __doc__, summary=lambda r: f"{r['n_events']} events")


if __name__ == "__main__":
    raise SystemExit(main())
