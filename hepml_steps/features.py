"""Feature preparation: selection, derived columns, standardisation, PCA.

Everything is *fitted on the training split only* and stored in a small JSON
file (``transform.json``) that is then applied, unchanged, to validation and
test. Derived columns are expressions over columns, e.g.
``pt_sum: "j1_pt + j2_pt"`` or ``log_met: "log(met + 1)"``; they are parsed and
checked by :mod:`hepml_steps.expressions` against what numexpr accepts
(arithmetic, comparisons, ``&``/``|``/``~`` on comparisons, numexpr's
element-wise functions; bounded in size and in constant powers) and only then
evaluated with numexpr, so no arbitrary code can run and nothing runs for long.
"""
from __future__ import annotations

import logging

import numpy as np

from . import cli
from .columns import RESERVED, SPLITS
from .errors import ConfigError, DataError, culprit
from .expressions import check_expression
from .io import read_json, read_parquet, write_json, write_parquet

log = logging.getLogger("hepml.features")


def _add_derived(df, derived: dict):
    import numexpr

    for name, expr in derived.items():
        where = f"features.derived.{name}"
        used = check_expression(name, expr, df.columns)
        local = {}
        for c in used:
            with culprit(where, DataError, f"column '{c}' is not numeric ({df[c].dtype})"):
                local[c] = df[c].to_numpy(dtype=np.float64)
        with culprit(where, ConfigError, f"numexpr cannot evaluate {expr!r}"):
            values = np.asarray(numexpr.evaluate(expr, local_dict=local, global_dict={}), dtype=np.float64)
        if values.ndim == 0:
            values = np.full(len(df), float(values))
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise DataError(f"features.derived.{name} = {expr!r} gives {bad} non-finite values; "
                            "guard it (e.g. log(x + 1), where(x > 0, ..., 0))")
        df[name] = values
    return df


def fit(train_path: str, columns=None, derived=None, standardize=True, pca=None) -> dict:
    """Fit the transform on the training split; return it as a JSON-able dict."""
    derived = dict(derived or {})
    df = read_parquet(train_path)
    for name in derived:
        if name in df.columns or name in RESERVED:
            raise ConfigError(f"features.derived.{name}: a column of that name already exists")
    df = _add_derived(df, derived)
    available = [c for c in df.columns if c not in RESERVED]
    if columns is None:
        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        columns = [c for c in available if is_numeric_dtype(df[c].dtype) and not is_bool_dtype(df[c].dtype)]
    else:
        missing = [c for c in columns if c not in available]
        if missing:
            raise DataError(f"features.columns: {missing} not in {train_path} "
                            f"(available: {available})")
        columns = list(columns)
    if not columns:
        raise DataError(f"no feature columns left in {train_path}")
    X = df[columns].to_numpy(dtype=np.float64)
    transform = {"columns": columns, "derived": derived, "standardize": bool(standardize),
                 "n_fit_events": int(len(df))}
    if standardize:
        mean, std = X.mean(axis=0), X.std(axis=0)
        constant = [c for c, s in zip(columns, std) if s == 0]
        if constant:
            log.warning("constant feature(s) on train, left unscaled: %s", constant)
        std[std == 0] = 1.0
        transform.update(mean=mean.tolist(), std=std.tolist())
        X = (X - mean) / std
    outputs = list(columns)
    if pca:
        n = int(pca)
        if not 1 <= n <= len(columns):
            raise ConfigError(f"features.pca = {n} must be between 1 and the number of features ({len(columns)})")
        centre = X.mean(axis=0)
        _, s, vt = np.linalg.svd(X - centre, full_matrices=False)
        var = s ** 2 / max(len(X) - 1, 1)
        transform.update(pca_mean=centre.tolist(), pca_components=vt[:n].tolist(),
                         pca_explained_variance_ratio=(var[:n] / var.sum()).tolist())
        outputs = [f"pc{i}" for i in range(n)]
    transform["outputs"] = outputs
    return transform


def apply(df, transform: dict):
    """Return a table with the reserved columns of ``df`` plus the transformed features."""
    import pandas as pd

    df = _add_derived(df.copy(), transform.get("derived", {}))
    X = df[transform["columns"]].to_numpy(dtype=np.float64)
    if transform.get("standardize"):
        X = (X - np.asarray(transform["mean"])) / np.asarray(transform["std"])
    if "pca_components" in transform:
        X = (X - np.asarray(transform["pca_mean"])) @ np.asarray(transform["pca_components"]).T
    out = df[[c for c in df.columns if c in RESERVED]].reset_index(drop=True)
    feats = pd.DataFrame(X.astype(np.float32), columns=transform["outputs"])
    return pd.concat([out, feats], axis=1)


def features(inputs: dict[str, str], outs: dict[str, str], transform_out: str, columns=None,
             derived=None, standardize=True, pca=None) -> dict:
    """Fit on ``inputs['train']``, write the transform and the three transformed splits."""
    transform = fit(inputs["train"], columns, derived, standardize, pca)
    for s in SPLITS:
        write_parquet(outs[s], apply(read_parquet(inputs[s]), transform))
    write_json(transform_out, transform)
    return transform


def load_transform(path: str) -> dict:
    return read_json(path)


def main(argv=None) -> int:
    def build(p):
        for s in SPLITS:
            p.add_argument(f"--{s}", required=True, help=f"{s} split table")
            p.add_argument(f"--out-{s}", required=True)
        p.add_argument("--transform", required=True, help="where to write transform.json")
        p.add_argument("--params", type=cli.json_arg, default={},
                       help='JSON: {"columns": [...]|null, "derived": {...}, "standardize": bool, "pca": n|null}')

    def call(a):
        prm = a.params
        features({s: getattr(a, s) for s in SPLITS}, {s: getattr(a, f"out_{s}") for s in SPLITS},
                 a.transform, prm.get("columns"), prm.get("derived"), prm.get("standardize", True), prm.get("pca"))

    return cli.run(build, call, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
