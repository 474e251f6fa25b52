"""Feature preparation: selection, derived columns, standardisation, PCA.

Everything is *fitted on the training split only* and stored in a small JSON
file (``transform.json``) that is then applied, unchanged, to validation and
test. Derived columns are expressions over columns, e.g.
``pt_sum: "j1_pt + j2_pt"`` or ``log_met: "log(met + 1)"``; they are parsed and
checked by :mod:`hepml_steps.expressions` against what numexpr accepts
(arithmetic, comparisons, ``&``/``|``/``~`` on comparisons, numexpr's
element-wise functions; bounded in size and in constant powers) and only then
evaluated with numexpr, so no arbitrary code can run and nothing runs for long.

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
"""
from __future__ import annotations

import logging

import numpy as np

from . import cli
from .columns import RESERVED, SPLITS, is_feature, target_copy
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


def fit(train_path: str, columns=None, derived=None, standardize=True, pca=None, targets=None) -> dict:
    """Fit the transform on the training split; return it as a JSON-able dict.

    Parameters
    ----------
    train_path : str
        The training split (Parquet).
    columns : list of str, optional
        The feature columns (default: every numeric, non-reserved column).
    derived : dict of str to str, optional
        Derived column name -> numexpr expression.
    standardize : bool
        Scale each feature to mean 0, standard deviation 1 on train.
    pca : int, optional
        Keep this many principal components instead of the features.
    targets : list of str, optional
        The models' target columns, copied unstandardised (module docstring).

    Returns
    -------
    dict
        ``columns``, ``derived``, ``standardize``, ``targets`` (the copied
        ones), ``outputs``, ``n_fit_events`` and the fitted ``mean``/``std``/PCA.

    Raises
    ------
    ConfigError
        A derived column's name is taken, a bad expression or PCA size.
    DataError
        A selected column is missing; no feature column is left.
    """
    derived = dict(derived or {})
    df = read_parquet(train_path)
    for name in derived:
        if name in df.columns or name in RESERVED:
            raise ConfigError(f"features.derived.{name}: a column of that name already exists")
    df = _add_derived(df, derived)
    available = [c for c in df.columns if is_feature(c)]
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
    kept = sorted({t for t in targets or () if t in df.columns and t not in RESERVED})
    transform = {"columns": columns, "derived": derived, "standardize": bool(standardize),
                 "targets": kept, "n_fit_events": int(len(df))}
    if standardize:
        mean, std = X.mean(axis=0), X.std(axis=0)
        constant = [c for c, s in zip(columns, std) if s == 0]
        if constant:
            log.warning("constant feature(s) on train, left unscaled: %s", constant)
        std[std == 0] = 1.0
        transform.update(mean=mean.tolist(), std=std.tolist())
        X = (X - mean) / std
    transform.update(_fit_pca(X, int(pca)) if pca else {})
    transform["outputs"] = [f"pc{i}" for i in range(int(pca))] if pca else list(columns)
    return transform


def _fit_pca(X, n: int) -> dict:
    """The first ``n`` principal components of ``X`` (n_events × n_features, as scaled)."""
    if not 1 <= n <= X.shape[1]:
        raise ConfigError(f"features.pca = {n} must be between 1 and the number of features ({X.shape[1]})")
    centre = X.mean(axis=0)
    _, s, vt = np.linalg.svd(X - centre, full_matrices=False)
    var = s ** 2 / max(len(X) - 1, 1)
    return {"pca_mean": centre.tolist(), "pca_components": vt[:n].tolist(),
            "pca_explained_variance_ratio": (var[:n] / var.sum()).tolist()}


def apply(df, transform: dict, where: str = "table"):
    """The prepared table of ``df``: its reserved columns, the target copies and
    the transformed features (see the module docstring).

    Raises
    ------
    DataError
        A column the transform needs is missing from ``df``, or a derived column fails.
    """
    import pandas as pd

    df = _add_derived(df.copy(), transform.get("derived", {}))
    missing = [c for c in transform["columns"] + transform.get("targets", []) if c not in df.columns]
    if missing:
        raise DataError(f"{where}: column(s) {missing} used by the fitted transform are missing")
    X = df[transform["columns"]].to_numpy(dtype=np.float64)
    if transform.get("standardize"):
        X = (X - np.asarray(transform["mean"])) / np.asarray(transform["std"])
    if "pca_components" in transform:
        X = (X - np.asarray(transform["pca_mean"])) @ np.asarray(transform["pca_components"]).T
    out = df[[c for c in df.columns if c in RESERVED]].reset_index(drop=True)
    copies = pd.DataFrame({target_copy(t): df[t].to_numpy() for t in transform.get("targets", [])})
    feats = pd.DataFrame(X.astype(np.float32), columns=transform["outputs"])
    return pd.concat([out, copies, feats], axis=1)


def features(inputs: dict[str, str], outs: dict[str, str], transform_out: str, columns=None,
             derived=None, standardize=True, pca=None, targets=None) -> dict:
    """Fit on ``inputs['train']``, write the transform and the three prepared splits.

    ``targets``: the models' target columns, kept unstandardised (see :func:`fit`)."""
    transform = fit(inputs["train"], columns, derived, standardize, pca, targets)
    for s in SPLITS:
        write_parquet(outs[s], apply(read_parquet(inputs[s]), transform, inputs[s]))
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
        p.add_argument("--targets", type=cli.json_arg, default=[],
                       help="JSON list: the models' target columns, kept unstandardised as target:<name>")

    def call(a):
        prm = a.params
        features({s: getattr(a, s) for s in SPLITS}, {s: getattr(a, f"out_{s}") for s in SPLITS},
                 a.transform, prm.get("columns"), prm.get("derived"), prm.get("standardize", True), prm.get("pca"),
                 a.targets)

    return cli.run(build, call, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
