"""Reading an input in chunks: ROOT (TTree or RNTuple, with uproot), Parquet
(pyarrow, by batches) and CSV (pandas, by chunks of rows).

What a branch or column holds is decided by the awkward type of what is read
(:func:`classify`), never by ROOT's type names: a TTree's ``int32_t`` counter
``nMuon`` and an RNTuple's ``std::int32_t`` field are both ``int32``, a
TTree's ``float[]`` and an RNTuple's ``std::vector<float>`` both
``var * float32``, so the same content gives the same table in both formats.

Every reader yields chunks of at most ``step`` entries as a dict of branch ->
values, in one form whatever the format: a numpy array for one number or
condition per event (missing values, in Parquet/CSV, become NaN: the column
is then float64), an awkward array ``var * <number>`` for a collection
(fixed-size arrays become ``var``, missing elements NaN), and a pyarrow
array for strings (a label may hold strings). Only the branches asked for
are read, so memory follows the chunk, not the file.

:func:`expand_files` turns an input's ``path`` — a file, a glob, a list of
them, or a directory with a ``pattern`` — into its sorted files.
"""

from __future__ import annotations

import contextlib
import glob
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import DataError, culprit, describe
from .jagged import BOOLEAN, COLLECTION, EVENT, NUMBER, STRING, Branch

SUFFIXES = {".root": "root", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
FORMATS = ("root", "parquet", "csv")
#: uproot class names of the tables a ROOT input may name.
TREE_CLASSES = ("TTree", "TNtuple", "TNtupleD", "ROOT::RNTuple")
#: rows of a CSV file read to learn its columns' types
CSV_PROBE_ROWS = 10_000
_GLOB = frozenset("*?[")


# --------------------------------------------------------------------------- files


def expand_files(path, pattern: str | None = None) -> tuple[list[str], list[str]]:
    """The files of an input, sorted, and the patterns that matched nothing.

    Parameters
    ----------
    path : str or list of str
        A file, a glob (``data/sig_*.root``, ``**`` for any depth), a list of
        them, or — with ``pattern`` — a directory.
    pattern : str, optional
        A glob inside the directory ``path`` (``*.root``).

    Returns
    -------
    files : list of str
        Every matching file (directories are not files; ``./`` and ``a/../``
        normalised away), each once, sorted.
    unmatched : list of str
        The entries of ``path`` (or the directory's pattern) that matched nothing.
        An existing file is taken as it is, even when its name holds ``[`` or ``*``.
    """
    entries = [path] if isinstance(path, str) else list(path)
    if pattern is not None:
        entries = [os.path.join(glob.escape(str(p)), pattern) for p in entries]
    files, unmatched = set(), []
    for entry in entries:
        entry = str(entry)
        if os.path.isfile(entry):
            found = [entry]
        elif _GLOB & set(entry):
            found = [f for f in glob.glob(entry, recursive=True) if os.path.isfile(f)]
        else:
            found = []
        files.update(os.path.normpath(f) for f in found)
        if not found:
            unmatched.append(entry)
    return sorted(files), unmatched


def file_format(path: Path, fmt: str | None) -> str:
    """``fmt`` when given, else the format of ``path``'s suffix."""
    if fmt:
        return fmt
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unknown file type '{path.suffix}'; use one of {sorted(SUFFIXES)} (or set the input's 'format')"
        )
    return fmt


def listing(names, limit: int = 20) -> str:
    """``a, b, c`` (at most ``limit`` names, then the count), or ``none``."""
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(map(str, names[:limit])) + more or "none"


# --------------------------------------------------------------------------- types


def classify(name: str, typ) -> Branch:
    """A :class:`~hepml_steps.jagged.Branch` from the awkward type of the values
    read (``ak.Array(...).type.content`` or a record's field type)."""
    import awkward as ak

    text = str(typ)
    t = _unwrap(typ)
    if isinstance(t, ak.types.NumpyType):
        kind = _primitive_kind(t.primitive)
        return Branch(name, EVENT if kind else None, kind, text)
    if isinstance(t, (ak.types.ListType, ak.types.RegularType)):
        if t.parameter("__array__") in ("string", "bytestring"):
            return Branch(name, EVENT, STRING, text)
        content = _unwrap(t.content)
        if isinstance(content, ak.types.NumpyType) and _primitive_kind(content.primitive):
            return Branch(name, COLLECTION, _primitive_kind(content.primitive), text)
    return Branch(name, None, None, text)


def _unwrap(typ):
    import awkward as ak

    while isinstance(typ, ak.types.OptionType) or (
        isinstance(typ, ak.types.Type) and typ.parameter("__array__") == "categorical" and hasattr(typ, "content")
    ):
        typ = typ.content
    return typ


def _primitive_kind(primitive: str) -> str | None:
    if primitive == "bool":
        return BOOLEAN
    if primitive.startswith(("int", "uint", "float")):
        return NUMBER
    return None


def _collection(values):
    """An awkward ``var * number`` array: no missing lists (empty), no missing
    elements (NaN), fixed-size arrays made variable."""
    import awkward as ak

    if ak.type(values).content.__class__ is ak.types.OptionType:
        values = ak.fill_none(values, [], axis=0)
    if isinstance(_unwrap(ak.type(values).content), ak.types.RegularType):
        values = ak.from_regular(values, axis=1)
    inner = ak.type(values).content.content
    if isinstance(inner, ak.types.OptionType):
        primitive = getattr(inner.content, "primitive", "float64")
        if not ak.any(ak.is_none(values, axis=1)):  # nullable, none missing: the type without the option
            return ak.fill_none(values, np.dtype(primitive).type(0), axis=-1)
        if primitive in ("float32", "float64"):
            return ak.fill_none(values, np.dtype(primitive).type(np.nan), axis=-1)
        values = ak.fill_none(ak.values_astype(values, np.float64), np.nan, axis=-1)
    return values


def _flat_arrow(col):
    """numpy values of a flat pyarrow array; nulls become NaN (float64)."""
    import pyarrow as pa

    if col.null_count:
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return col.to_numpy(zero_copy_only=False)


# --------------------------------------------------------------------------- sources


class Source(ABC):
    """One open file of an input: its branches and its chunks.

    Attributes
    ----------
    path : Path
    format : str
        ``root``, ``parquet`` or ``csv``.
    tree : str or None
        The TTree/RNTuple read (ROOT only).
    desc : str
        ``<path>`` or ``<path> (tree <name>)``, for messages.
    branches : dict
        Name -> :class:`~hepml_steps.jagged.Branch`, in the file's order.
    num_entries : int
        Entries in the file (CSV: those of the first rows read when it has
        fewer than :data:`CSV_PROBE_ROWS`, else unknown until read: -1).
    """

    path: Path
    format: str
    tree: str | None = None
    desc: str
    branches: dict[str, Branch]
    num_entries: int

    @abstractmethod
    def chunks(self, names: list[str], step: int) -> Iterator[tuple[int, int, dict]]:
        """Yield ``(first entry, number of entries, {name: values})`` chunks of at most ``step`` entries."""


class _RootSource(Source):
    def __init__(self, path: Path, file, tree: str | None):
        self.path, self.format = path, "root"
        trees = sorted(
            {
                k.rsplit(";", 1)[0]
                for k, cls in file.classnames().items()
                if cls in TREE_CLASSES or cls.startswith("TTree")
            }
        )
        if tree is None:
            if len(trees) != 1:
                raise DataError(f"{path}: holds {len(trees)} trees ({listing(trees)}); name one with 'tree'")
            tree = trees[0]
        elif tree not in trees:
            raise DataError(f"{path}: no tree '{tree}' (trees: {listing(trees)})")
        self.tree, self._t = tree, file[tree]
        self.desc = f"{path} (tree {tree})"
        self.num_entries = int(self._t.num_entries)
        self.branches = self._classify()

    def _classify(self) -> dict[str, Branch]:
        """Each branch's type: the awkward form uproot reads it as (no data read)."""
        t = self._t
        if hasattr(t, "branches"):  # TTree: one interpretation per branch
            out = {}
            for key in dict.fromkeys(t.keys()):
                try:
                    out[key] = classify(key, t[key].interpretation.awkward_form(t.file).type)
                except Exception as exc:  # noqa: PERF203 - an unreadable branch must not hide the others
                    out[key] = Branch(key, None, None, f"unreadable by uproot ({describe(exc)})")
            return out
        form = t.to_akform()[0]  # RNTuple: a record form of its top-level fields
        return {name: classify(name, content.type) for name, content in zip(form.fields, form.contents)}

    def chunks(self, names, step):
        wanted = set(names)
        if not wanted:
            yield from _ranges(self.num_entries, step)
            return
        with culprit(self.desc, context="cannot read"):
            for arrays, report in self._t.iterate(
                filter_name=lambda n: n in wanted, step_size=step, library="ak", report=True
            ):
                yield (
                    int(report.tree_entry_start),
                    len(arrays),
                    {n: _normalize(self.branches[n], arrays[n]) for n in names},
                )
                del arrays, report  # not alive while the next chunk is read


class _ParquetSource(Source):
    def __init__(self, path: Path):
        import awkward as ak
        import pyarrow.parquet as pq

        self.path, self.format, self.desc = path, "parquet", str(path)
        # pre_buffer=False: pyarrow's pre-buffering keeps what it read until the file is closed
        self._file = pq.ParquetFile(path, pre_buffer=False)
        schema = self._file.schema_arrow
        names = [n for n in schema.names if not n.startswith("__index_level_")]
        empty = ak.from_arrow(schema.empty_table().select(names))
        self.branches = {n: classify(n, empty.type.content.contents[i]) for i, n in enumerate(empty.fields)}
        self.num_entries = int(self._file.metadata.num_rows)

    def chunks(self, names, step):
        if not names:
            yield from _ranges(self.num_entries, step)
            return
        from .io import read_batches

        start = 0
        # io.read_batches: pyarrow's batches, a row group at a time column by column (its
        # iter_batches held about twice the batch besides it: ingest at 1M events, 200,000-event
        # chunks, peaked at 228 MiB with it)
        with culprit(self.path, context="cannot read as parquet"):
            for batch in read_batches(self._file, step, list(names)):
                arrays, rows = {n: self._values(n, batch.column(n)) for n in names}, batch.num_rows
                yield start, rows, arrays
                del arrays, batch  # not alive while the next chunk is read
                start += rows

    def _values(self, name, col):
        import awkward as ak

        b = self.branches[name]
        if b.shape == COLLECTION:
            return _collection(ak.from_arrow(col))
        if b.kind == STRING or b.shape is None:
            return col
        return _flat_arrow(col)


class _CsvSource(Source):
    def __init__(self, path: Path):
        import pandas as pd

        self.path, self.format, self.desc = path, "csv", str(path)
        probe = pd.read_csv(path, nrows=CSV_PROBE_ROWS)
        self.branches = {c: _csv_branch(c, probe[c]) for c in probe.columns}
        self.num_entries = len(probe) if len(probe) < CSV_PROBE_ROWS else -1

    def chunks(self, names, step):
        import pandas as pd

        start = 0
        cols = list(names) or [next(iter(self.branches))]
        with culprit(self.path, context="cannot read as csv"):
            for df in pd.read_csv(self.path, usecols=cols, chunksize=step):
                arrays = {}
                for c in names:
                    b = _csv_branch(c, df[c])
                    planned = self.branches[c]
                    if (
                        planned.kind != STRING
                        and b.kind != planned.kind
                        and not ({b.kind, planned.kind} <= {NUMBER, BOOLEAN})
                    ):
                        raise DataError(
                            f"{self.desc}: column '{c}' holds {planned.type} in its first rows but "
                            f"{b.type} in rows {start}-{start + len(df) - 1}"
                        )
                    arrays[c] = _csv_values(df[c])
                n = len(df)
                yield start, n, arrays
                del arrays, df  # not alive while the next chunk is read
                start += n


def _csv_branch(name: str, series) -> Branch:
    import pandas as pd

    dt = series.dtype
    if pd.api.types.is_bool_dtype(dt):
        return Branch(name, EVENT, BOOLEAN, "bool")
    if pd.api.types.is_numeric_dtype(dt):
        return Branch(name, EVENT, NUMBER, str(dt))
    return Branch(name, EVENT, STRING, "string")


def _csv_values(series):
    import pandas as pd
    import pyarrow as pa

    dt = series.dtype
    if isinstance(dt, np.dtype) and dt.kind in "iufb":
        return series.to_numpy()
    if pd.api.types.is_bool_dtype(dt) or pd.api.types.is_numeric_dtype(dt):
        if series.isna().any():
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        return series.to_numpy(dtype=dt.numpy_dtype)
    return pa.array(series.astype(object), from_pandas=True)


def _normalize(branch: Branch, values):
    """ROOT values in the common form (see the module docstring)."""
    import awkward as ak

    if branch.shape == COLLECTION:
        return _collection(values)
    if branch.kind == STRING or branch.shape is None:
        return ak.to_arrow(values, extensionarray=False)
    if isinstance(ak.type(values).content, ak.types.OptionType):
        return _flat_arrow(ak.to_arrow(values, extensionarray=False))
    return ak.to_numpy(values)


def _ranges(n: int, step: int):
    for start in range(0, n, step):
        yield start, min(step, n - start), {}


@contextlib.contextmanager
def open_source(path: Path, fmt: str, tree: str | None = None) -> Iterator[Source]:
    """Open one file of an input.

    Raises
    ------
    DataError
        The file cannot be read as ``fmt`` (naming it), holds several trees and
        none is named, or lacks the named tree.
    """
    if fmt == "root":
        import uproot

        with culprit(path, context="cannot read as a ROOT file"):
            file = uproot.open(path, object_cache=None, array_cache=None)
        try:
            with culprit(path, context="cannot read as a ROOT file"):
                source = _RootSource(path, file, tree)
            yield source
        finally:
            file.close()
        return
    with culprit(path, context=f"cannot read as {fmt}"):
        source = _ParquetSource(path) if fmt == "parquet" else _CsvSource(path)
    yield source
