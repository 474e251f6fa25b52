"""Read the toy sample or the user's ROOT / Parquet / CSV files into one
canonical Parquet table (see :mod:`hepml_steps.columns`).

Each input is ``{path, tree, label, weight, name, format, process}``:

- ``path``: ``.root`` (a TTree or RNTuple read with uproot; ``tree`` may be
  left out when the file holds exactly one), ``.parquet``/``.pq`` or ``.csv``;
  ``format`` (root/parquet/csv) overrides the suffix;
- ``label``: 1 or 0 for every event of the file — TMVA's
  AddSignalTree/AddBackgroundTree. Without it the ``label_column`` must hold
  1 (signal) / 0 (background);
- ``weight``: a global weight multiplying the file's event weights (TMVA's
  per-tree weight); event weights come from ``weight_column`` (default 1);
- ``name``: the name hashed into the event ids (default: the file's name);
- ``process``: an integer written to the ``process`` column for every event of
  the file — TMVA's multiclass ``AddTree(tree, className)``; train a
  ``multiclass`` model with ``target: process``. Give it for every input or
  for none; ``process`` is never a training feature.

``event_id`` comes from ``event_id_column`` (integers, unique over all
inputs) or is deterministic: a 23-bit hash of the input's name in the high
bits and the entry number in the low 40, so it does not depend on the order
of the inputs. ``columns`` selects branches/columns (default: every flat
numeric one; others are skipped with a warning); only those are read.
``target_column`` is copied to ``target``. Events with NaN/inf in a feature
are dropped with a logged and recorded count (``nonfinite: drop``) or stop
the step (``fail``).
"""
from __future__ import annotations

import hashlib
import logging
import math
import numbers
import re
from pathlib import Path

import numpy as np

from . import cli
from .columns import EVENT_ID, LABEL, PROCESS, SCORE, SPLIT, TARGET, TRUTH_LLR, WEIGHT
from .errors import ConfigError, DataError, culprit, describe
from .io import write_json, write_parquet

log = logging.getLogger("hepml.ingest")

SUFFIXES = {".root": "root", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
FORMATS = ("root", "parquet", "csv")
NONFINITE = ("drop", "fail")
INPUT_KEYS = ("path", "tree", "label", "weight", "name", "format", "process")
#: uproot class names of the tables a ROOT input may name.
TREE_CLASSES = ("TTree", "TNtuple", "TNtupleD", "ROOT::RNTuple")
ENTRY_BITS = 40
NAME_BITS = 63 - ENTRY_BITS
#: ROOT type names that cannot be a flat numeric column (arrays, containers, strings).
_NOT_FLAT = re.compile(r"[\[\]<>*]|string|TString|char\*", re.IGNORECASE)


# --------------------------------------------------------------------------- helpers

def _listing(names, limit: int = 20) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(map(str, names[:limit])) + more or "none"


def numeric_array(col) -> np.ndarray | None:
    """A 1-d numeric numpy array for ``col`` (pandas Series or numpy array), or
    None when it is not numeric. Booleans become int8; nullable columns with
    missing values become float64 with NaN."""
    import pandas as pd

    if isinstance(col, pd.Series):
        dt = col.dtype
        if isinstance(dt, np.dtype):
            col = col.to_numpy()
        elif pd.api.types.is_bool_dtype(dt) or (pd.api.types.is_numeric_dtype(dt)
                                                 and hasattr(dt, "numpy_dtype")):
            if col.isna().any():
                return col.to_numpy(dtype=np.float64, na_value=np.nan)
            col = col.to_numpy(dtype=dt.numpy_dtype)
        else:
            return None
    arr = np.asarray(col)
    if arr.ndim != 1:
        return None
    if arr.dtype == np.bool_:
        return arr.astype(np.int8)
    if arr.dtype.kind in "iuf":
        return arr
    return None


def hashed_ids(name: str, n: int) -> np.ndarray:
    """Deterministic non-negative int64 ids for entries ``0..n-1`` of the input
    called ``name``: :func:`name_prefix` in the top 23 bits, the entry number in
    the low 40 (inputs up to ~10^12 entries)."""
    if n >= 1 << ENTRY_BITS:
        raise DataError(f"{name}: {n} entries exceed the 2^{ENTRY_BITS} the hashed event ids allow; "
                        "give an event_id_column")
    return (np.int64(name_prefix(name)) << np.int64(ENTRY_BITS)) | np.arange(n, dtype=np.int64)


def name_prefix(name: str) -> int:
    """The 23-bit hash (blake2b) of an input's name used in :func:`hashed_ids`."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << NAME_BITS) - 1)


def _check_inputs(inputs) -> list[dict]:
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ConfigError("data.files.inputs: give a non-empty list of {path, tree, label, weight}")
    for i, spec in enumerate(inputs):
        where = f"data.files.inputs[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a mapping with at least 'path', got {spec!r}")
        if not spec.get("path"):
            raise ConfigError(f"{where}: 'path' is required")
        unknown = sorted(set(spec) - set(INPUT_KEYS))
        if unknown:
            raise ConfigError(f"{where} ({spec['path']}): unknown key(s) {unknown}; allowed: {list(INPUT_KEYS)}")
        label = spec.get("label")
        if label is not None and (isinstance(label, bool) or label not in (0, 1)):
            raise ConfigError(f"{where} ({spec['path']}): label must be 1 (signal) or 0 (background), got {label!r}")
        weight = spec.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, numbers.Real)
                                   or not math.isfinite(weight)):
            raise ConfigError(f"{where} ({spec['path']}): weight must be a finite number, got {weight!r}")
        process = spec.get("process")
        if process is not None and (isinstance(process, bool) or not isinstance(process, numbers.Integral)):
            raise ConfigError(f"{where} ({spec['path']}): process must be an integer (the class index), "
                              f"got {process!r}")
        if spec.get("format") is not None and spec["format"] not in FORMATS:
            raise ConfigError(f"{where} ({spec['path']}): format {spec['format']!r} unknown; use one of {FORMATS}")
    with_process = [s["path"] for s in inputs if s.get("process") is not None]
    if with_process and len(with_process) != len(inputs):
        without = [s["path"] for s in inputs if s.get("process") is None]
        raise ConfigError(f"data.files.inputs: 'process' is given for {_listing(with_process)} but not for "
                          f"{_listing(without)}; give every input its process or none")
    return list(inputs)


def _format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}'; use one of {sorted(SUFFIXES)} "
                        "(or set the input's 'format')")
    return fmt


# --------------------------------------------------------------------------- readers

def _select(path_desc: str, available: list[str], columns: list[str] | None, needed: list[str],
            flat_numeric) -> tuple[list[str], list[str]]:
    """Names to read and names skipped (non-numeric, only when ``columns`` is None)."""
    explicit = list(dict.fromkeys([*(columns or []), *needed]))
    missing = [c for c in explicit if c not in available]
    if missing:
        raise DataError(f"{path_desc}: no column(s)/branch(es) {missing} (has: {_listing(available)})")
    if columns is not None:
        return explicit, []
    read = [c for c in available if c in needed or flat_numeric(c)]
    return read, [c for c in available if c not in read]


def _read_root(path: Path, tree: str | None, columns, needed):
    import uproot

    with culprit(path, context="cannot read as a ROOT file"), uproot.open(path) as f:
        trees = sorted({k.rsplit(";", 1)[0] for k, cls in f.classnames().items()
                        if cls in TREE_CLASSES or cls.startswith("TTree")})
        if tree is None:
            if len(trees) != 1:
                raise DataError(f"{path}: holds {len(trees)} trees ({_listing(trees)}); name one with 'tree'")
            tree = trees[0]
        elif tree not in trees:
            raise DataError(f"{path}: no tree '{tree}' (trees: {_listing(trees)})")
        t = f[tree]
        desc = f"{path} (tree {tree})"
        types = dict(t.typenames())
        read, skipped = _select(desc, list(t.keys()), columns, needed,
                                lambda c: not _NOT_FLAT.search(types.get(c, "")))
        data = {}
        for c in read:
            try:
                data[c] = t[c].array(library="np")
            except Exception as exc:
                raise DataError(f"{desc}: cannot read branch '{c}' ({types.get(c)}): {describe(exc)}") from exc
        return data, int(t.num_entries), skipped, tree, desc


def _read_table(path: Path, fmt: str, columns, needed):
    import pandas as pd

    with culprit(path, context=f"cannot read as {fmt}"):
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            available = [n for n in schema.names if not n.startswith("__index_level_")]

            def flat(c):
                t = schema.field(c).type
                return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)

            read, skipped = _select(str(path), available, columns, needed, flat)
            df = pd.read_parquet(path, columns=read)
            n = pq.read_metadata(path).num_rows
        else:
            available = list(pd.read_csv(path, nrows=0).columns)
            read, skipped = _select(str(path), available, columns, needed, lambda c: True)
            df = pd.read_csv(path, usecols=read)
            n = len(df)
    return {c: df[c] for c in read}, n, skipped, None, str(path)


# --------------------------------------------------------------------------- one input

def _labels(data, n, spec, label_column, desc):
    if spec.get("label") is not None:
        return np.full(n, int(spec["label"]), dtype=np.int8), f"file label {int(spec['label'])}"
    raw = data[label_column]
    arr = numeric_array(raw)
    if arr is None:
        raise DataError(f"{desc}: label column '{label_column}' must hold 0 (background) or 1 (signal); "
                        f"it is not numeric (dtype {raw.dtype}; values such as "
                        f"{sorted({str(v) for v in np.asarray(raw, dtype=object)[:1000]})[:5]})")
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        raise DataError(f"{desc}: label column '{label_column}' must hold 0 (background) or 1 (signal); "
                        f"found {np.unique(arr[~ok])[:5].tolist()} in {int((~ok).sum())} events")
    return arr.astype(np.int8), f"column {label_column}"


def _weights(data, n, spec, weight_column, desc):
    file_w = 1.0 if spec.get("weight") is None else float(spec["weight"])
    if not weight_column:
        return np.full(n, file_w), file_w
    raw = data[weight_column]
    import pandas as pd

    arr = numeric_array(raw)
    if arr is None or pd.api.types.is_bool_dtype(raw.dtype):
        raise DataError(f"{desc}: weight column '{weight_column}' is not numeric (dtype {raw.dtype})")
    w = arr.astype(np.float64) * file_w
    bad = ~np.isfinite(w)
    if bad.any():
        raise DataError(f"{desc}: weight column '{weight_column}' has {int(bad.sum())} NaN/inf values")
    return w, file_w


def _column_ids(data, event_id_column, desc):
    raw = data[event_id_column]
    arr = numeric_array(raw)
    if arr is None:
        raise DataError(f"{desc}: event id column '{event_id_column}' must hold integers (dtype {raw.dtype})")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise DataError(f"{desc}: event id column '{event_id_column}' has values above 2^63-1")
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(arr) & (np.floor(arr) == arr) & (np.abs(arr) < 2.0 ** 63)
        if not ok.all():
            raise DataError(f"{desc}: event id column '{event_id_column}' must hold integers; "
                            f"found {arr[~ok][0].item()!r} ({int((~ok).sum())} non-integer values)")
    return arr.astype(np.int64)


def _ingest_one(spec, columns, label_column, weight_column, event_id_column, target_column, nonfinite):
    path = Path(spec["path"])
    fmt = _format(path, spec.get("format"))
    if not path.is_file():
        raise DataError(f"missing input file: {path}")
    use_label_column = spec.get("label") is None
    if use_label_column and not label_column:
        raise DataError(f"{path}: no label: give the input 'label: 1' (signal) or 'label: 0' (background), "
                        "or set data.files.label_column")
    needed = [c for c in (label_column if use_label_column else None, weight_column, event_id_column,
                          target_column) if c]
    needed = list(dict.fromkeys(needed))
    if fmt == "root":
        data, n, skipped, tree, desc = _read_root(path, spec.get("tree"), columns, needed)
    else:
        data, n, skipped, tree, desc = _read_table(path, fmt, columns, needed)
    if n == 0:
        raise DataError(f"{desc}: no events")

    label, label_source = _labels(data, n, spec, label_column, desc)
    weight, file_w = _weights(data, n, spec, weight_column, desc)
    ids = _column_ids(data, event_id_column, desc) if event_id_column else None

    # features: everything read except the sources of label / weight / event id
    sources = {c for c in (label_column, weight_column, event_id_column) if c}
    features: dict[str, np.ndarray] = {}
    for c, raw in data.items():
        if c in sources:
            continue
        if c == PROCESS and spec.get("process") is not None:
            log.warning("%s: column '%s' is replaced by the input's process %d", desc, c, spec["process"])
            continue
        if c in (EVENT_ID, LABEL, WEIGHT, SPLIT, SCORE):
            log.warning("%s: column '%s' is a canonical column name; ignored (the canonical '%s' is %s)",
                        desc, c, c, "computed by ingest" if c in (EVENT_ID, LABEL, WEIGHT) else "added later")
            continue
        arr = numeric_array(raw)
        if arr is None:
            dtype = getattr(raw, "dtype", type(raw))
            if columns is not None or c == target_column:
                raise DataError(f"{desc}: column '{c}' is not a flat numeric column (dtype {dtype})")
            skipped.append(c)
            continue
        features[c] = arr
    if skipped:
        log.warning("%s: skipping non-numeric column(s) %s", desc, _listing(skipped))
    if target_column:
        arr = numeric_array(data[target_column])
        if arr is None:
            raise DataError(f"{desc}: target column '{target_column}' is not numeric")
        if TARGET in features and target_column != TARGET:
            log.warning("%s: column '%s' is replaced by a copy of target_column '%s'", desc, TARGET, target_column)
        if columns is not None and target_column not in columns:
            features.pop(target_column, None)
        features[TARGET] = arr.copy()

    # non-finite values in features (truth_llr is not a feature)
    bad = np.zeros(n, dtype=bool)
    per_col = {}
    for c, arr in features.items():
        if c == TRUTH_LLR or arr.dtype.kind != "f":
            continue
        nf = ~np.isfinite(arr)
        if nf.any():
            per_col[c] = int(nf.sum())
            bad |= nf
    n_bad = int(bad.sum())
    if n_bad:
        if nonfinite == "fail":
            raise DataError(f"{desc}: {n_bad} of {n} events have NaN/inf values, per column {per_col} "
                            "(data.nonfinite: fail; use 'drop' to drop them)")
        log.warning("%s: dropping %d of %d events with NaN/inf values, per column %s", desc, n_bad, n, per_col)
    keep = ~bad if n_bad else slice(None)
    table = {LABEL: label[keep], WEIGHT: weight[keep]}
    if ids is not None:
        table[EVENT_ID] = ids[keep]
    table.update((c, a[keep]) for c, a in features.items())
    if spec.get("process") is not None:
        table[PROCESS] = np.full(n, int(spec["process"]), dtype=np.int64)[keep]
    record = {"path": str(path), "format": fmt, "tree": tree, "name": spec.get("name") or path.name,
              "n_read": n, "n_dropped_nonfinite": n_bad, "nonfinite_by_column": per_col,
              "n_kept": n - n_bad, "label": label_source, "file_weight": file_w,
              "skipped_columns": skipped, "process": spec.get("process")}
    log.info("%s: read %d events, kept %d (%s, file weight %g)", desc, n, n - n_bad, label_source, file_w)
    return table, keep, record


# --------------------------------------------------------------------------- step

def ingest(inputs: list[dict], out, label_column: str | None = None, weight_column: str | None = None,
           event_id_column: str | None = None, columns: list[str] | None = None,
           target_column: str | None = None, nonfinite: str = "drop", summary_out=None) -> dict:
    """Read every input, check it, and write one canonical table to ``out``.

    Returns the summary (also written to ``summary_out`` when given). Nothing
    is written when an input is unusable.
    """
    import pandas as pd

    if nonfinite not in NONFINITE:
        raise ConfigError(f"data.nonfinite: '{nonfinite}' unknown; use one of {list(NONFINITE)}")
    inputs = _check_inputs(inputs)
    if columns is not None:
        if isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns):
            raise ConfigError(f"data.files.columns: give a list of column names, got {columns!r}")
        columns = list(dict.fromkeys(columns))

    # hashed event ids: the names must be distinct, and so must their hash prefixes
    if not event_id_column:
        prefixes: dict[int, str] = {}
        for spec in inputs:
            name = spec.get("name") or Path(spec["path"]).name
            other = prefixes.setdefault(name_prefix(name), name)
            if other == name and sum((s.get("name") or Path(s["path"]).name) == name for s in inputs) > 1:
                raise ConfigError(f"data.files.inputs: two inputs are named '{name}'; give them distinct 'name's "
                                  "(event ids are hashed from the name) or set event_id_column")
            if other != name:
                raise ConfigError(f"data.files.inputs: the names '{other}' and '{name}' hash to the same event-id "
                                  "prefix; give one of them another 'name' or set event_id_column")

    tables, records = [], []
    for spec in inputs:
        table, keep, record = _ingest_one(spec, columns, label_column, weight_column, event_id_column,
                                          target_column, nonfinite)
        if not event_id_column:
            table[EVENT_ID] = hashed_ids(record["name"], record["n_read"])[keep]
        tables.append(table)
        records.append(record)

    # the same columns in every input
    first = tables[0]
    for table, record in zip(tables[1:], records[1:]):
        if set(table) != set(first):
            only_first = [c for c in first if c not in table]
            only_this = [c for c in table if c not in first]
            raise DataError(f"{records[0]['path']} and {record['path']} differ in columns: "
                            f"only in {records[0]['path']}: {only_first}; only in {record['path']}: {only_this}; "
                            "select common columns with data.files.columns")

    order = [EVENT_ID, LABEL, WEIGHT] + [c for c in first if c not in (EVENT_ID, LABEL, WEIGHT)]
    n_total = sum(len(t[LABEL]) for t in tables)
    if n_total == 0:
        raise DataError(f"no events left to ingest from {_listing(r['path'] for r in records)} "
                        f"(read {sum(r['n_read'] for r in records)}, "
                        f"dropped {sum(r['n_dropped_nonfinite'] for r in records)} with NaN/inf)")
    merged = {}
    for c in order:
        parts = [t.pop(c) for t in tables]
        merged[c] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    del tables
    merged[LABEL] = merged[LABEL].astype(np.int8, copy=False)
    merged[WEIGHT] = merged[WEIGHT].astype(np.float64, copy=False)

    ids = pd.Series(merged[EVENT_ID])
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        value = int(merged[EVENT_ID][dup][0])
        sizes = np.cumsum([0] + [r["n_kept"] for r in records])
        where = np.flatnonzero(merged[EVENT_ID] == value)
        files = sorted({records[int(np.searchsorted(sizes, i, side="right")) - 1]["path"] for i in where})
        source = f"column '{event_id_column}'" if event_id_column else "hashed ids"
        raise DataError(f"event_id {value} ({source}) occurs {len(where)} times, in {', '.join(files)}; "
                        f"{int(ids.duplicated().sum())} duplicate id(s) in all: event ids must be unique "
                        "across all inputs")

    events = pd.DataFrame(merged, copy=False)
    del merged
    y, w = events[LABEL].to_numpy(), events[WEIGHT].to_numpy()
    n_sig, n_bkg = int((y == 1).sum()), int((y == 0).sum())
    if n_sig == 0 or n_bkg == 0:  # every task is judged on how it separates signal from background
        src = f"label column '{label_column}'" if label_column else "the per-file labels"
        raise DataError(f"{src} of {_listing(r['path'] for r in records)} give(s) one class only: "
                        f"{'no background' if n_bkg == 0 else 'no signal'} events "
                        f"({n_sig} signal, {n_bkg} background)")
    write_parquet(out, events)
    summary = {
        "output": str(out), "n_events": int(len(events)), "n_signal": n_sig, "n_background": n_bkg,
        "sum_weights_signal": float(w[y == 1].sum()), "sum_weights_background": float(w[y == 0].sum()),
        "n_dropped_nonfinite": sum(r["n_dropped_nonfinite"] for r in records),
        "files": records, "columns": list(events.columns),
        "features": [c for c in events.columns if c not in (EVENT_ID, LABEL, WEIGHT, TRUTH_LLR, TARGET, PROCESS)],
        "label_column": label_column, "weight_column": weight_column, "target_column": target_column,
        "event_id": f"column {event_id_column}" if event_id_column else
                    f"hash: blake2b(name) top {NAME_BITS} bits << {ENTRY_BITS} | entry",
        "nonfinite": nonfinite,
    }
    log.info("ingested %d events (%d signal, %d background) from %d input(s) into %s",
             summary["n_events"], n_sig, n_bkg, len(records), out)
    if summary_out:
        write_json(summary_out, summary)
    return summary


def _columns_arg(text: str) -> list[str] | None:
    cols = [c.strip() for c in text.split(",") if c.strip()]
    return cols or None


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--inputs-json", type=cli.json_arg, required=True,
                       help="JSON list of {path, tree, label, weight, name, format}")
        p.add_argument("--out", required=True, help="canonical events table (.parquet)")
        p.add_argument("--summary", help="summary JSON")
        p.add_argument("--label-column")
        p.add_argument("--weight-column")
        p.add_argument("--event-id-column")
        p.add_argument("--columns", type=_columns_arg, default=None,
                       help="comma-separated columns/branches; empty = every numeric one")
        p.add_argument("--target-column")
        p.add_argument("--nonfinite", default="drop", help="drop | fail")

    return cli.run(build, lambda a: ingest(
        a.inputs_json, a.out, label_column=a.label_column, weight_column=a.weight_column,
        event_id_column=a.event_id_column, columns=a.columns, target_column=a.target_column,
        nonfinite=a.nonfinite, summary_out=a.summary), argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
