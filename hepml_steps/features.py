"""Feature preparation: selection, derived columns, standardisation, PCA.

Everything is *fitted on the training split only* and stored in a small JSON
file (``transform.json``) that is then applied, unchanged, to validation and
test. Derived columns are expressions over columns, e.g.
``pt_sum: "j1_pt + j2_pt"`` or ``log_met: "log(met + 1)"``; they are parsed and
checked by :mod:`hepml_steps.expressions` against what numexpr accepts
(arithmetic, comparisons, ``&``/``|``/``~`` on comparisons, numexpr's
element-wise functions; bounded in size and in constant powers) and only then
evaluated with numexpr, so no arbitrary code can run and nothing runs for long.

**Memory.** The fit reads only the columns it needs from the training split
(the features and the derived columns' inputs, never the reserved ones) and
holds them once as a float64 matrix (n_train × n_features); each split is
then prepared in batches of ``io.row_group_events`` of the split's events
(:data:`BATCH_EVENTS`, a row group of the split, up to 16.8M events), reading only the
columns the transform needs and writing the prepared table batch by batch
(:func:`apply_file`): the same values as :func:`apply` of the whole split.

A prepared table holds, in this order:

- the reserved columns (:data:`~hepml_steps.columns.RESERVED`: ``event_id``,
  ``label``, ``weight``, ``truth_llr``, ``target``, ``process``), passed through
  untouched;
- ``target:<name>``: an unstandardised copy of each model's target ``<name>``
  (``targets``, from the rule: every model's ``target``) that is not itself
  reserved, taken after the derived columns are added and before anything is
  scaled, in the column's own dtype and physical units;
- the transformed features (float32): the selected columns, standardised, or
  their principal components.

Why a copy: a model's target may be a feature of other models (the dijet mass
``m_jj`` is regressed from the jets' pT, η and φ, and is an input of the
classifiers), so the one column cannot be both standardised and kept in GeV;
a target may also be a derived column, or a column the feature selection
leaves out. The copy keeps the target beside its event, row for row, so the
steps that fit or judge a model read it from the prepared split
(:func:`hepml_steps.tasks.target_column`) and nothing joins the raw split back
by ``event_id``. Copies are never features (:func:`~hepml_steps.columns.is_feature`).
A target that is not a column of the table is not copied; the training step
names it and its model.

**Missing values** (``data.nonfinite: keep``; ingest turns ±inf into NaN).
The prepared table keeps NaN where a value is missing: XGBoost and
scikit-learn's HistGradientBoosting learn a direction for missing values
(``handles_missing`` on their family), and the one prepared table serves
every model. The transform holds, per output column, the value that stands
for a missing one (``fill``, in prepared units: the train median, or
``features.fill_value`` in physical units, scaled as the column is), fitted
on train only; :mod:`hepml_steps.dataset` fills NaN with it when it reads a
split for a family that does not handle missing values, so those families
see imputed values and the others see NaN. The fill values also travel in
the prepared split's Parquet metadata (``attrs["hepml"]``), so the data
boundary needs no second file. With ``features.missing_indicators`` each
column missing in some training event gets a 0/1 column ``<name>_missing``
(also for the families that handle NaN). PCA cannot carry NaN: with
``pca`` the features step fills the missing values itself, before the
projection. A column missing in every training event is left out with a
warning; missing counts per column and split are in ``missing``.

**Constant columns**: a numeric column whose train standard deviation is at
most ``CONSTANT_RTOL`` (1e-9) times its largest absolute value is constant:
float noise (14.63 ± 1e-15) counts as constant, so it is never divided by a
standard deviation of ~1e-15 (14.63 would become ~1e12). Such columns are left
out of the features with a warning listing them (``left_out`` in the transform).

**Categorical columns** (strings, pandas categoricals; ingest keeps flat
string branches): one-hot encoded, the categories fitted on train (sorted,
missing values a category of their own), one 0/1 column ``<name>_cat<i>`` per
category ``categories[<name>][i]``; a value not seen in train sets none of
them (counted per split in ``unseen``); the one-hot columns of a model's
target are never that model's features (``derived_from`` in the table's
attrs, :func:`derived_columns`). A column with more than
``features.max_categories`` categories on train is an identifier or free
text rather than a category: left out with a warning when chosen by default,
an error when listed in ``features.columns``.

**Identifier-like columns**: integer-valued columns named like a run or
event number (:data:`ID_NAMES`), or unique in every training event, or
monotone in event order, are listed in ``identifier_like`` (with why); the
training step's leakage check (:mod:`hepml_steps.leakage`) flags them.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from . import cli
from .columns import LABEL, PROCESS, RESERVED, SPLITS, is_feature, target_copy
from .errors import ConfigError, DataError, culprit
from .expressions import check_expression
from .io import (
    ROW_GROUP_EVENTS,
    atomic_path,
    columns_of,
    parquet_file,
    read_batches,
    read_json,
    release_freed_memory,
    row_group_events,
    write_json,
)

log = logging.getLogger("hepml.features")

#: a column is constant when its train std <= CONSTANT_RTOL * max |value|
CONSTANT_RTOL = 1e-9
#: default of ``features.max_categories``
MAX_CATEGORIES = 20
#: names (lower case) of run / lumi-block / event-number columns: identifiers, never physics
ID_NAMES = (
    "run",
    "runnumber",
    "lumi",
    "lumiblock",
    "luminosityblock",
    "event",
    "eventnumber",
    "evt",
    "evtnum",
    "event_number",
    "run_number",
    "id",
    "entry",
)
#: events needed before "all unique" or "monotone" marks an integer column as an identifier
ID_MIN_EVENTS = 100
#: key of the prepared table's Parquet metadata (``DataFrame.attrs``) read by :mod:`hepml_steps.dataset`
ATTRS_KEY = "hepml"
#: events per batch of the fit's reading, and of the splits' preparation (:func:`apply_file`) up to 16.8M events
BATCH_EVENTS = ROW_GROUP_EVENTS
#: suffixes of the missing-indicator and one-hot columns
MISSING_SUFFIX, CATEGORY_SUFFIX = "_missing", "_cat"


def _add_derived(df, derived: dict):
    """Add the derived columns; NaN in an input gives NaN (a missing value), but
    a non-finite value from finite inputs (``log(0)``) is an error."""
    import numexpr

    for name, expr in derived.items():
        where = f"features.derived.{name}"
        used = check_expression(name, expr, [c for c in df.columns if c not in RESERVED])
        local = {}
        for c in used:
            with culprit(where, DataError, f"column '{c}' is not numeric ({df[c].dtype})"):
                local[c] = df[c].to_numpy(dtype=np.float64)
        with culprit(where, ConfigError, f"numexpr cannot evaluate {expr!r}"):
            values = np.asarray(numexpr.evaluate(expr, local_dict=local, global_dict={}), dtype=np.float64)
        if values.ndim == 0:
            values = np.full(len(df), float(values))
        inputs_ok = np.ones(len(df), dtype=bool)
        for v in local.values():
            inputs_ok &= np.isfinite(v)
        bad = int((~np.isfinite(values) & inputs_ok).sum())
        if bad:
            raise DataError(
                f"features.derived.{name} = {expr!r} gives {bad} non-finite values; "
                "guard it (e.g. log(x + 1), where(x > 0, ..., 0))"
            )
        values[~np.isfinite(values)] = np.nan  # missing inputs: missing value
        df[name] = values
    return df


def _is_categorical(dtype) -> bool:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    return not is_numeric_dtype(dtype) and not is_bool_dtype(dtype)


def _numeric(df, c) -> np.ndarray:
    """A numeric column as float64, ±inf as NaN (missing)."""
    x = np.array(df[c].to_numpy(dtype=np.float64, na_value=np.nan), copy=True)
    x[np.isinf(x)] = np.nan
    return x


def _category_values(series) -> list:
    """The values of a categorical column as Python objects, missing ones None."""
    import pandas as pd

    values = series.astype(object).to_numpy()
    missing = pd.isna(values)
    return [None if m else str(v) for v, m in zip(values, missing)]


def _identifier(name: str, x: np.ndarray) -> str | None:
    """Why a raw numeric column looks like an identifier, or None."""
    finite = x[np.isfinite(x)]
    if finite.size == 0 or not np.all(np.floor(finite) == finite):
        return None
    if name.lower() in ID_NAMES:
        return f"integer column named like an identifier ({name})"
    if finite.size >= ID_MIN_EVENTS:
        if np.unique(finite).size == finite.size:
            return "integer column unique in every training event"
        d = np.diff(finite)
        if np.unique(finite).size > 1 and (np.all(d >= 0) or np.all(d <= 0)):
            return "integer column monotone in event order"
    return None


def _candidates(dtypes: dict, columns, available: list, train_path: str) -> tuple[list, list]:
    """The numeric (or boolean) and the categorical columns the features may use, by dtype.

    Raises
    ------
    DataError
        A listed column is not in the table.
    """
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    if columns is not None:
        missing = [c for c in columns if c not in available]
        if missing:
            raise DataError(f"features.columns: {missing} not in {train_path} (available: {available})")
        columns = list(columns)
    else:
        columns = [c for c in available if not is_bool_dtype(dtypes[c])]
    numeric = [c for c in columns if is_numeric_dtype(dtypes[c]) or is_bool_dtype(dtypes[c])]
    return numeric, [c for c in columns if c not in numeric]


def _choose(cats: dict, listed: bool, max_categories: int) -> tuple[dict, dict]:
    """The categories of the categorical columns (``cats``: name -> whole training column),
    and those left out (with why).

    Raises
    ------
    DataError
        A listed column with more than ``max_categories`` categories.
    """
    categorical, left_out = {}, {}
    for c, values in cats.items():
        found = sorted(set(_category_values(values)), key=lambda v: (v is None, str(v)))
        if len(found) > max_categories:
            why = (
                f"{len(found)} distinct values on train, more than features.max_categories = {max_categories} "
                "(an identifier or free text, not a category)"
            )
            if listed:
                raise DataError(f"features.columns: '{c}' has {why}; raise features.max_categories or leave it out")
            left_out[c] = why
        else:
            categorical[c] = found
    return categorical, left_out


def _read_fit(train_path: str, need: list, derived: dict, numeric: list, categorical: list, batch_size: int):
    """The training matrix of ``numeric`` (float64, n_train × n_numeric, C order, ±inf as NaN)
    and the ``categorical`` columns (name -> whole column), read batch by batch.

    The values are those of :func:`_numeric` of the whole column (derived
    columns are element-wise, so computed per batch)."""
    import pandas as pd

    pf = parquet_file(train_path)
    X = np.empty((pf.metadata.num_rows, len(numeric)))
    parts, start = {c: [] for c in categorical}, 0
    for batch in _batches(pf, need, batch_size, train_path):
        df = _add_derived(batch.to_pandas(), derived)
        stop = start + len(df)
        for j, c in enumerate(numeric):
            X[start:stop, j] = _numeric(df, c)
        for c in categorical:
            parts[c].append(df[c])
        start = stop
    if start != len(X):
        raise DataError(f"{train_path}: read {start} events, its metadata says {len(X)}")
    cats = {c: pd.concat(v, ignore_index=True) if len(v) > 1 else v[0].reset_index(drop=True) for c, v in parts.items()}
    return X, cats


def fit(
    train_path: str,
    columns=None,
    derived=None,
    standardize=True,
    pca=None,
    targets=None,
    *,
    fill_value=None,
    missing_indicators=False,
    max_categories=MAX_CATEGORIES,
    batch_size=None,
) -> dict:
    """Fit the transform on the training split; return it as a JSON-able dict.

    Reads only the columns it needs, ``batch_size`` events at a time
    (default :data:`BATCH_EVENTS`), into one float64 matrix
    (n_train × n_numeric features): the fit's memory is that matrix plus
    one column's temporary copies (NaN-aware mean, standard deviation, median).

    Parameters
    ----------
    train_path : str
        The training split (Parquet).
    columns : list of str, optional
        The feature columns (default: every non-reserved, non-boolean column,
        numeric or categorical).
    derived : dict of str to str, optional
        Derived column name -> numexpr expression.
    standardize : bool
        Scale each numeric feature to mean 0, standard deviation 1 on train.
    pca : int, optional
        Keep this many principal components instead of the features.
    targets : list of str, optional
        The models' target columns, copied unstandardised (module docstring).
    fill_value : float, optional
        The value (physical units) standing for a missing one; default the train median.
    missing_indicators : bool
        Add a 0/1 column ``<name>_missing`` per column missing in some training event.
    max_categories : int
        Most categories a categorical column may have.
    batch_size : int, optional
        Events read at a time.

    Returns
    -------
    dict
        ``columns`` (numeric, then categorical), ``derived``, ``standardize``,
        ``targets`` (the copied ones), ``outputs``, ``n_fit_events``, the fitted
        ``mean``/``std``/PCA, ``fill``, ``categories``, ``left_out``,
        ``identifier_like`` and ``missing`` (see the module docstring).

    Raises
    ------
    ConfigError
        A derived column's name is taken, a bad expression or PCA size.
    DataError
        A selected column is missing or has too many categories; no feature column is left.
    """
    import pandas as pd

    derived = dict(derived or {})
    names = columns_of(train_path)
    for name in derived:
        if name in names or name in RESERVED:
            raise ConfigError(f"features.derived.{name}: a column of that name already exists")
    need = _fit_columns(names, columns, derived)
    dtypes = parquet_file(train_path).schema_arrow.empty_table().select(need).to_pandas().dtypes.to_dict()
    dtypes.update(dict.fromkeys(derived, np.dtype(np.float64)))
    names = names + list(derived)
    available = [c for c in names if is_feature(c)]
    numeric, categorical = _candidates(dtypes, columns, available, train_path)
    X, cats = _read_fit(train_path, need, derived, numeric, categorical, batch_size or BATCH_EVENTS)
    n_events = len(X)
    categories, left_out = _choose(cats, columns is not None, int(max_categories))
    n_missing, identifiers = {}, {}
    for j, c in enumerate(numeric):  # one column at a time: never a second copy of the matrix
        x = np.ascontiguousarray(X[:, j])
        n_missing[c] = int(np.isnan(x).sum())
        if n_missing[c] == len(x):
            left_out[c] = "missing (NaN/inf) in every training event"
        elif len(x):
            finite = x[~np.isnan(x)]
            if finite.std() <= CONSTANT_RTOL * np.abs(finite).max():
                left_out[c] = f"constant on train ({finite.mean():.6g})"
        if c not in left_out and (why := _identifier(c, x)):
            identifiers[c] = why
    gone = [c for c in numeric if c in left_out]
    if gone:
        log.warning("feature column(s) left out: %s", {c: left_out[c] for c in gone})
    for c, why in left_out.items():
        if c not in gone:
            log.warning("categorical column '%s' left out: %s", c, why)
    numeric_read, numeric = numeric, [c for c in numeric if c not in left_out]
    if not numeric and not categories:
        raise DataError(f"no feature columns left in {train_path}" + (f" (left out: {left_out})" if left_out else ""))
    indicators = [c for c in numeric if missing_indicators and n_missing[c]]
    outputs = _outputs(numeric, indicators, categories)
    clash = [o for o in outputs[len(numeric) :] if o in names]
    if clash:
        raise DataError(
            f"feature column name(s) {clash} taken: the missing-indicator / one-hot columns of "
            "other columns need them; rename the columns"
        )
    kept = sorted({t for t in targets or () if t in names and t not in RESERVED})
    transform = {
        "columns": numeric + list(categories),
        "derived": derived,
        "standardize": bool(standardize),
        "targets": kept,
        "n_fit_events": n_events,
        "categories": categories,
        "missing_indicators": indicators,
        "left_out": left_out,
        "identifier_like": identifiers,
        "missing": {"train": {c: n for c, n in n_missing.items() if n and c in numeric}},
    }
    gone = [j for j, c in enumerate(numeric_read) if c in left_out]
    if gone:
        X = np.delete(X, gone, axis=1)
    df = pd.DataFrame(cats, index=pd.RangeIndex(n_events))  # the categorical columns, for _assemble
    if standardize and numeric:
        mean, std = _by_column(np.nanmean, X), _by_column(np.nanstd, X)
        transform.update(mean=mean.tolist(), std=std.tolist())
        X -= mean  # in place: the same values as (X - mean) / std, without two more copies
        X /= std
    fill = _by_column(np.nanmedian, X) if numeric else np.empty(0)
    if fill_value is not None:
        fill = np.full(len(numeric), float(fill_value))
        if standardize:
            fill = (fill - np.asarray(transform["mean"])) / np.asarray(transform["std"])
    transform["fill"] = dict(zip(numeric, fill.tolist()))
    transform["fill_value"] = fill_value
    transform["outputs"] = outputs
    if pca:
        transform.update(_fit_pca(_assemble(df, X, transform, fill_missing=True)[0], int(pca)))
        transform["outputs"] = [f"pc{i}" for i in range(int(pca))]
    return transform


def _by_column(reduce, X: np.ndarray) -> np.ndarray:
    """``reduce`` (a NaN-aware NumPy reduction) of each column of ``X`` (n_events ×
    n_columns), one column at a time: NumPy's NaN reductions copy their input, so
    reducing the whole matrix at once doubled the fit's peak memory. The values
    equal ``reduce(X, axis=0)`` to the last bits of a sum (about 1e-14 relative;
    the median exactly)."""
    return np.array([reduce(X[:, j]) for j in range(X.shape[1])], dtype=np.float64)


def _fit_columns(names: list[str], columns, derived: dict) -> list[str]:
    """The columns of the training split (``names``, in file order) that :func:`fit`
    reads: the listed features (or every feature column) and the derived columns' inputs.

    Raises
    ------
    ConfigError
        A derived column's expression is refused (see :func:`hepml_steps.expressions.check_expression`).
    """
    known = [c for c in names if c not in RESERVED]
    wanted = set(columns) if columns is not None else {c for c in names if is_feature(c)}
    for name, expr in derived.items():
        wanted.update(check_expression(name, expr, known))
        known.append(name)
    return [c for c in names if c in wanted]


def _assemble(df, X, transform: dict, fill_missing: bool = False):
    """The feature matrix (numeric as scaled, indicators, one-hots) and the unseen-category counts."""
    numeric = _numeric_columns(transform)
    missing = np.isnan(X)
    parts = [X.copy()]
    if fill_missing and missing.any():
        parts[0][missing] = np.take(np.asarray([transform["fill"][c] for c in numeric]), np.nonzero(missing)[1])
    ind = [numeric.index(c) for c in transform.get("missing_indicators", [])]
    parts += [missing[:, ind].astype(np.float64)] if ind else []
    unseen = {}
    for c, cats in transform.get("categories", {}).items():
        index = {v: i for i, v in enumerate(cats)}
        codes = np.array([index.get(v, -1) for v in _category_values(df[c])], dtype=np.int64)
        onehot = np.zeros((len(df), len(cats)))
        ok = codes >= 0
        onehot[np.nonzero(ok)[0], codes[ok]] = 1.0
        parts.append(onehot)
        if (~ok).any():
            unseen[c] = int((~ok).sum())
    return np.column_stack(parts) if parts else X, unseen


def _outputs(numeric: list[str], indicators: list[str], categories: dict) -> list[str]:
    """The feature columns, in order: the numeric ones, their missing indicators, the one-hots."""
    return (
        numeric
        + [c + MISSING_SUFFIX for c in indicators]
        + [f"{c}{CATEGORY_SUFFIX}{i}" for c, cats in categories.items() for i in range(len(cats))]
    )


def expression_columns(expr: str) -> list[str]:
    """The column names a (checked) derived expression reads, in order of appearance."""
    import ast

    tree = ast.parse(expr, mode="eval")
    funcs = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return list(dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in funcs))


def restrict(transform: dict, outputs: list[str]) -> dict:
    """``transform`` limited to what makes the feature columns ``outputs`` (a model's
    features): the columns, statistics, categories, indicators and derived columns they
    come from, so that scoring needs no other column (another model's feature, this
    model's own target). A transform with PCA is returned as it is (every component
    reads every column).

    Returns
    -------
    dict
        A transform :func:`apply` makes ``outputs`` with (among its own outputs).
    """
    if "pca_components" in transform:
        return transform
    wanted = set(outputs)
    numeric = _numeric_columns(transform)
    categories = {
        c: cats
        for c, cats in (transform.get("categories") or {}).items()
        if any(f"{c}{CATEGORY_SUFFIX}{i}" in wanted for i in range(len(cats)))
    }
    indicators = [c for c in transform.get("missing_indicators", []) if c + MISSING_SUFFIX in wanted]
    kept = [c for c in numeric if c in wanted or c in indicators]
    columns = [c for c in transform["columns"] if c in kept or c in categories]
    derived, todo = {}, [c for c in columns if c in (transform.get("derived") or {})]
    while todo:  # the derived columns kept, and those their expressions read
        name = todo.pop()
        if name not in derived:
            derived[name] = transform["derived"][name]
            todo += [c for c in expression_columns(derived[name]) if c in transform["derived"]]
    out = {
        **transform,
        "columns": columns,
        "derived": {k: v for k, v in transform.get("derived", {}).items() if k in derived},  # their order
        "categories": categories,
        "missing_indicators": indicators,
        "fill": {c: v for c, v in (transform.get("fill") or {}).items() if c in kept},
        "outputs": _outputs(kept, indicators, categories),
    }
    for key in ("mean", "std"):
        if key in transform:
            out[key] = [transform[key][numeric.index(c)] for c in kept]
    return out


def _numeric_columns(transform: dict) -> list[str]:
    """The numeric columns of ``transform`` (all of ``columns`` but the categorical ones)."""
    return [c for c in transform["columns"] if c not in transform.get("categories", {})]


def _fit_pca(X, n: int) -> dict:
    """The first ``n`` principal components of ``X`` (n_events × n_features, as scaled)."""
    if not 1 <= n <= X.shape[1]:
        raise ConfigError(f"features.pca = {n} must be between 1 and the number of features ({X.shape[1]})")
    centre = X.mean(axis=0)
    _, s, vt = np.linalg.svd(X - centre, full_matrices=False)
    var = s**2 / max(len(X) - 1, 1)
    return {
        "pca_mean": centre.tolist(),
        "pca_components": vt[:n].tolist(),
        "pca_explained_variance_ratio": (var[:n] / var.sum()).tolist(),
    }


def apply(df, transform: dict, where: str = "table", counts: dict | None = None):
    """The prepared table of ``df``: its reserved columns, the target copies and
    the transformed features (see the module docstring).

    ``counts``, when given, receives ``missing`` and ``unseen`` counts per column.
    The table's ``attrs["hepml"]`` holds the fill values and identifier-like
    columns (written into the Parquet metadata).

    Raises
    ------
    DataError
        A column the transform needs is missing from ``df``, or a derived column fails.
    """
    got = {}
    table = _apply(df, transform, where, got)
    if got["unseen"]:
        log.warning("%s: values of categorical column(s) not seen in train (no category set): %s", where, got["unseen"])
    if counts is not None:
        counts.update(got)
    return table


def _apply(df, transform: dict, where: str, counts: dict):
    """:func:`apply` without the warning; ``counts`` receives the ``missing`` and ``unseen`` counts."""
    import pandas as pd

    df = _add_derived(df.copy(), transform.get("derived", {}))
    missing = [c for c in transform["columns"] + transform.get("targets", []) if c not in df.columns]
    if missing:
        raise DataError(f"{where}: column(s) {missing} used by the fitted transform are missing")
    numeric = _numeric_columns(transform)
    X = np.column_stack([_numeric(df, c) for c in numeric]) if numeric else np.empty((len(df), 0))
    if transform.get("standardize") and numeric:
        X = (X - np.asarray(transform["mean"])) / np.asarray(transform["std"])
    n_missing = {c: int(n) for c, n in zip(numeric, np.isnan(X).sum(axis=0)) if n}
    X, unseen = _assemble(df, X, transform, fill_missing="pca_components" in transform)
    counts.update(missing=n_missing, unseen=unseen)
    if "pca_components" in transform:
        X = (X - np.asarray(transform["pca_mean"])) @ np.asarray(transform["pca_components"]).T
    out = df[[c for c in df.columns if c in RESERVED]].reset_index(drop=True)
    copies = pd.DataFrame({target_copy(t): df[t].to_numpy() for t in transform.get("targets", [])})
    feats = pd.DataFrame(X.astype(np.float32), columns=transform["outputs"])
    table = pd.concat([out, copies, feats], axis=1)
    table.attrs[ATTRS_KEY] = {
        "fill": {} if "pca_components" in transform else transform.get("fill", {}),
        "identifier_like": transform.get("identifier_like", {}),
        "derived_from": {} if "pca_components" in transform else derived_columns(transform),
    }
    return table


def derived_columns(transform: dict) -> dict[str, list[str]]:
    """Column -> the feature columns made from it besides itself: its one-hot columns
    ``<name>_cat<i>`` and its missing indicator ``<name>_missing`` (a model whose target
    the column is must not learn from them: :func:`hepml_steps.dataset.select_features`)."""
    out: dict[str, list[str]] = {}
    for c in transform.get("missing_indicators", []):
        out.setdefault(c, []).append(c + MISSING_SUFFIX)
    for c, cats in transform.get("categories", {}).items():
        out.setdefault(c, []).extend(f"{c}{CATEGORY_SUFFIX}{i}" for i in range(len(cats)))
    return out


def _apply_columns(names: list[str], transform: dict) -> list[str]:
    """The columns of a split (``names``, in file order) that applying ``transform`` reads:
    the reserved ones (passed through), the features, the targets and the derived columns' inputs."""
    known = [c for c in names if c not in RESERVED]
    wanted = set(transform["columns"]) | set(transform.get("targets", []))
    for name, expr in transform.get("derived", {}).items():
        wanted.update(check_expression(name, expr, known))
        known.append(name)
    return [c for c in names if c in RESERVED or c in wanted]


def apply_file(path: str, out: str, transform: dict, batch_size: int | None = None) -> dict:
    """Write the prepared table of the split ``path`` to ``out``, ``batch_size`` events at a time.

    The same table as :func:`apply` of the whole split (row for row, value for
    value), read as record batches of only the columns the transform needs
    (:func:`_apply_columns`) and written batch by batch with one Parquet
    writer, so memory holds one batch, not the split. ``out`` is written
    atomically: on any error no (partial) file is left.

    Parameters
    ----------
    path : str
        A split (Parquet).
    out : str
        The prepared split (Parquet, zstd).
    transform : dict
        The fitted transform (:func:`fit`).
    batch_size : int or None
        Events per batch, each written as one row group (None:
        ``io.row_group_events`` of the split's events, 65,536 up to 16.8M events).

    Returns
    -------
    dict
        ``missing`` and ``unseen``: counts per column over the whole split.

    Raises
    ------
    DataError
        The split is missing or unreadable, lacks a column the transform
        needs, or a derived column fails.
    StorageError
        ``out`` cannot be written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = parquet_file(path)
    batch_size = batch_size or row_group_events(pf.metadata.num_rows)
    need = _apply_columns(columns_of(path), transform)
    total = {"missing": {}, "unseen": {}}
    with atomic_path(out) as tmp:
        writer = None
        try:
            for batch in _batches(pf, need, batch_size, path):
                got = {}
                frame = _apply(batch.to_pandas(), transform, path, got)
                for key in total:
                    for c, n in got[key].items():
                        total[key][c] = total[key].get(c, 0) + n
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    meta = {**(table.schema.metadata or {}), b"PANDAS_ATTRS": json.dumps(frame.attrs).encode()}
                    schema = table.schema.with_metadata(meta)  # as DataFrame.to_parquet writes attrs
                    # dictionary encoding for the class columns only: tried on unique
                    # values (ids, features) it costs time and makes the file larger
                    small = [c for c in (LABEL, PROCESS) if c in schema.names]
                    writer = pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=small)
                with culprit(path, context="a batch's column types differ from the first batch's"):
                    table = table.cast(schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
    if total["unseen"]:
        log.warning(
            "%s: values of categorical column(s) not seen in train (no category set): %s", path, total["unseen"]
        )
    return total


def _batches(pf, columns: list[str], batch_size: int, path: str):
    """The record batches of ``columns`` of the Parquet file ``pf``, as tables; one empty table for no events.

    Read by :func:`hepml_steps.io.read_batches` (pyarrow's batches, value for value, a row
    group at a time): pyarrow's own reader held about twice a batch besides it, which
    made the step's peak at 1M events 253 MiB, 1.54x the fit matrix above a 20,000-event run."""
    import pyarrow as pa

    with culprit(path, context="cannot read as parquet"):
        any_rows = False
        for batch in read_batches(pf, batch_size, columns):
            any_rows = True
            yield pa.Table.from_batches([batch])
        if not any_rows:
            yield pf.schema_arrow.empty_table().select(columns)


def features(
    inputs: dict[str, str],
    outs: dict[str, str],
    transform_out: str,
    columns=None,
    derived=None,
    standardize=True,
    pca=None,
    targets=None,
    batch_size: int | None = None,
    **options,
) -> dict:
    """Fit on ``inputs['train']``, write the transform and the three prepared splits.

    ``targets``: the models' target columns, kept unstandardised (see :func:`fit`);
    ``options``: ``fill_value``, ``missing_indicators``, ``max_categories`` of :func:`fit`.
    The fit reads the training split's feature columns whole; the splits are
    then prepared ``batch_size`` events at a time (None: a row group of :func:`apply_file`).
    The transform records the missing values and unseen categories per split and column."""
    transform = fit(inputs["train"], columns, derived, standardize, pca, targets, batch_size=batch_size, **options)
    transform["missing"], transform["unseen"] = {}, {}
    for s in SPLITS:
        counts = apply_file(inputs[s], outs[s], transform, batch_size)
        transform["missing"][s], transform["unseen"][s] = counts["missing"], counts["unseen"]
    write_json(transform_out, transform)
    return transform


def load_transform(path: str) -> dict:
    return read_json(path)


#: keys of ``features`` (config) the step reads
PARAMS = ("columns", "derived", "standardize", "pca", "fill_value", "missing_indicators", "max_categories")


def main(argv=None) -> int:
    def build(p):
        for s in SPLITS:
            p.add_argument(f"--{s}", required=True, help=f"{s} split table")
            p.add_argument(f"--out-{s}", required=True)
        p.add_argument("--transform", required=True, help="where to write transform.json")
        p.add_argument(
            "--params",
            type=cli.json_arg,
            default={},
            help='JSON: {"columns": [...]|null, "derived": {...}, "standardize": bool, "pca": n|null, '
            '"fill_value": x|null, "missing_indicators": bool, "max_categories": n}',
        )
        p.add_argument(
            "--targets",
            type=cli.json_arg,
            default=[],
            help="JSON list: the models' target columns, kept unstandardised as target:<name>",
        )

    def call(a):
        if argv is None:  # the step's own process (python -m), never a caller's: see io.release_freed_memory
            release_freed_memory()
        prm = a.params
        opts = {k: prm[k] for k in ("fill_value", "missing_indicators", "max_categories") if prm.get(k) is not None}
        features(
            {s: getattr(a, s) for s in SPLITS},
            {s: getattr(a, f"out_{s}") for s in SPLITS},
            a.transform,
            prm.get("columns"),
            prm.get("derived"),
            prm.get("standardize", True),
            prm.get("pca"),
            a.targets,
            **opts,
        )

    return cli.run(build, call, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
