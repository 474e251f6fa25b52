"""A self-contained model bundle: score *raw* events with a trained model.

The train step writes, beside the model files and ``hepml_model.json``, a
``preprocessing.json`` holding everything needed to go from the columns as
ingest makes them (``Jet_pt_0``, an alias, a flat branch) to the model's
input vector:

- ``ingest``: the ``data.files`` settings that make the raw columns from a
  file's branches (``columns``, ``aliases``; :mod:`hepml_steps.jagged`
  expressions such as ``Jet_pt[0]``). ``cut`` is recorded but **never
  applied** when scoring: every event gets a score, including those a
  training cut would have removed;
- ``transform``: the fitted part of ``transform.json``
  (:mod:`hepml_steps.features`): derived columns, standardisation, fill
  values, missing indicators, categories, PCA, the output columns — only
  what makes the model's features (:func:`hepml_steps.features.restrict`),
  so scoring never needs the model's own target or another model's features;
- ``format`` (:data:`FORMAT`) and ``hepml_version``.

Its fingerprint (sha256 of its canonical JSON, :func:`fingerprint`) is
recorded in ``hepml_model.json`` (``preprocessing_sha256``), together with the
model's ``features`` (their order), ``task`` and ``classes``.
:func:`load` refuses a bundle whose ``preprocessing.json`` does not match
that fingerprint (it was swapped or edited), whose format or hepml version
differs from this hepml's, or that has no ``preprocessing.json`` (a model
trained before bundles); :meth:`Bundle.score` refuses a frame lacking a
needed column, naming the column and the model. Nothing is unpickled: the
model is restored by its family (:func:`hepml_steps.registry.load_model`).

Missing values follow the training: NaN stays NaN for families that handle
missing values (XGBoost, HistGradientBoosting), and is replaced by the
train fill value (``transform.fill``) for the others, as
:mod:`hepml_steps.dataset` does for the prepared splits.

``Bundle.score(frame)`` is the one scoring API (the apply step, the MLflow
pyfunc wrapper, a notebook).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from .errors import DataError
from .io import read_json

log = logging.getLogger("hepml.bundle")

#: file name of the preprocessing in a model directory
FILE = "preprocessing.json"
#: format of ``preprocessing.json``; a bundle of another format is refused
FORMAT = 1
#: keys of ``transform.json`` a bundle keeps (the fitted preprocessing)
TRANSFORM_KEYS = (
    "columns",
    "derived",
    "standardize",
    "mean",
    "std",
    "fill",
    "fill_value",
    "categories",
    "missing_indicators",
    "outputs",
    "pca_mean",
    "pca_components",
)
#: keys of the ingest settings a bundle keeps (how raw columns are made from branches)
INGEST_KEYS = ("columns", "aliases", "cut")


def hepml_version() -> str:
    from . import __version__

    return __version__


def fingerprint(pre: dict) -> str:
    """sha256 (hex) of ``pre`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(pre, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def make(transform: dict, ingest: dict | None = None, features: list[str] | None = None) -> dict:
    """The content of ``preprocessing.json`` from a fitted transform and the ingest settings;
    with ``features`` (the model's), only the part of the transform that makes them
    (:func:`hepml_steps.features.restrict`): scoring then needs no column the model does
    not use (another model's feature, its own target)."""
    from .features import restrict

    if features is not None:
        transform = restrict(transform, features)
    t = {k: transform[k] for k in TRANSFORM_KEYS if k in transform}
    pre = {
        "format": FORMAT,
        "hepml_version": hepml_version(),
        "transform": t,
        "ingest": {k: (ingest or {}).get(k) for k in INGEST_KEYS},
    }
    return json.loads(json.dumps(pre))  # as it will read back from the file (the fingerprint's input)


def raw_columns(transform: dict) -> list[str]:
    """The columns of a raw frame the transform reads: its columns that are not
    derived, then the inputs of the derived columns, each once."""
    from .features import expression_columns

    derived = transform.get("derived") or {}
    need = [c for c in transform["columns"] if c not in derived]
    known = set(need)
    for expr in derived.values():
        for c in expression_columns(expr):
            if c not in derived and c not in known:
                need.append(c)
                known.add(c)
    return need


class Bundle:
    """A loaded model bundle (see the module docstring); make it with :func:`load`.

    Attributes
    ----------
    name : str
        The model's name.
    meta : dict
        ``hepml_model.json``.
    pre : dict
        ``preprocessing.json``.
    features : list of str
        The model's input columns (prepared names), in order.
    task : str
    classes : list or None
        Class index ``i`` of a multiclass score is the target value ``classes[i]``.
    raw_columns : list of str
        The raw columns :meth:`score` needs.
    """

    def __init__(self, directory, model, meta: dict, pre: dict):
        self.directory, self.model, self.meta, self.pre = Path(directory), model, meta, pre
        self.name, self.task, self.classes = meta["model"], meta["task"], meta.get("classes")
        self.features = list(meta["features"])
        self.transform = {**pre["transform"], "targets": []}
        self.raw_columns = raw_columns(self.transform)

    @property
    def what(self) -> str:
        return f"model '{self.name}' ({self.directory})"

    def score_columns(self) -> list[str]:
        """The names of this model's score columns in an applied file."""
        from . import tasks

        if tasks.get(self.task).name == "multiclass":
            return [f"{self.name}_prob_{i}" for i in range(len(self.classes or []))]
        return [f"{self.name}_score"]

    def prepare(self, frame, derived: bool = True) -> np.ndarray:
        """The model's input matrix (float32, n_events × n_features) of a raw frame
        (``derived=False``: a frame that already holds the derived columns, as the
        ONNX model's ``raw`` input does)."""
        from . import dataset, features

        transform = self.transform if derived else {**self.transform, "derived": {}}
        need = self.raw_columns if derived else list(self.transform["columns"])
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise DataError(
                f"{self.what} needs column(s) {missing} missing from the input (has: {list(frame.columns)[:20]})"
            )
        table = features.apply(frame[need], transform, self.what)
        X = np.array(table[self.features].to_numpy(dtype=np.float32), copy=True)
        fill = self.transform.get("fill") or {}
        if "pca_components" not in self.transform and fill and not dataset.handles_missing(self.meta["family"]):
            for j, c in enumerate(self.features):
                bad = np.isnan(X[:, j])
                if c in fill and bad.any():
                    X[bad, j] = fill[c]
        return X

    def score(self, frame, batch_size: int = 100_000, derived: bool = True) -> np.ndarray:
        """The model's scores of every event of ``frame`` (a pandas DataFrame of raw columns).

        Returns
        -------
        ndarray of shape (n_events,) or (n_events, n_classes)
            As ``predict_score``: P(signal), the regressed value, or class probabilities.

        Raises
        ------
        DataError
            A needed column is missing (naming it and the model).
        """
        X = self.prepare(frame, derived)
        if not len(X):
            from . import tasks

            return tasks.get(self.task).empty_scores(self.classes)
        return np.concatenate(
            [np.asarray(self.model.predict_score(X[i : i + batch_size])) for i in range(0, len(X), batch_size)]
        )

    def score_table(self, frame) -> dict[str, np.ndarray]:
        """Score column name -> values (see :meth:`score_columns`)."""
        s = self.score(frame)
        names = self.score_columns()
        if s.ndim == 2:
            return {n: s[:, i].astype(np.float32) for i, n in enumerate(names)}
        return {names[0]: s.astype(np.float32)}

    # ------------------------------------------------------------------ reading raw files

    def column_plan(self, src) -> dict:
        """Raw column -> (where, text, parsed body) of the expression making it from ``src``'s branches."""
        from .inputs import Settings
        from .jagged import column_name, parse

        ing = self.pre.get("ingest") or {}
        s = Settings(columns=ing.get("columns"), aliases=dict(ing.get("aliases") or {})).check()
        by_name = {}
        for entry in s.columns or []:
            if entry in src.branches or entry in s.alias_bodies:
                continue
            try:
                body = parse("data.files.columns", entry)
            except Exception:  # noqa: BLE001 - a plain name not in this file: looked up below
                continue
            by_name[column_name(body)] = entry
        plan, missing = {}, []
        for c in self.raw_columns:
            if c in s.alias_bodies:
                plan[c] = (f"data.files.aliases.{c}", s.aliases[c], ast.Name(id=c, ctx=ast.Load()))
            elif c in src.branches:
                plan[c] = ("branch", c, ast.Name(id=c, ctx=ast.Load()))
            elif c in by_name:
                plan[c] = ("data.files.columns", by_name[c], parse("data.files.columns", by_name[c]))
            else:
                missing.append(c)
        if missing:
            raise DataError(f"{src.desc}: {self.what} needs branch(es)/column(s) {missing}, not in the file")
        return plan, s.alias_bodies


def load(directory) -> Bundle:
    """Load a model bundle written by the train step.

    Raises
    ------
    DataError
        No ``preprocessing.json``; a format or hepml version other than this
        hepml's; a ``preprocessing.json`` whose fingerprint is not the one
        recorded with the model (each naming the model).
    """
    from . import registry

    directory = Path(directory)
    meta = read_json(directory / registry.META_FILE)
    name = meta.get("model", directory.name) if isinstance(meta, dict) else directory.name
    what = f"model '{name}' ({directory})"
    path = directory / FILE
    if not path.is_file():
        raise DataError(f"{what}: no {FILE} (trained by a hepml without model bundles: retrain it)")
    pre = read_json(path)
    if not isinstance(pre, dict) or pre.get("format") != FORMAT:
        raise DataError(
            f"{what}: {FILE} format {pre.get('format') if isinstance(pre, dict) else None!r} "
            f"is not this hepml's ({FORMAT})"
        )
    made = {pre.get("hepml_version"), meta.get("hepml_version", pre.get("hepml_version"))}
    if made != {hepml_version()}:
        raise DataError(
            f"{what}: made by hepml {' / '.join(sorted(map(str, made)))}, this is hepml "
            f"{hepml_version()}; retrain the model with this version"
        )
    want, got = meta.get("preprocessing_sha256"), fingerprint(pre)
    if want != got:
        raise DataError(
            f"{what}: {FILE} does not match the preprocessing the model was trained with "
            f"(sha256 {got[:12]}..., recorded {str(want)[:12]}...); it was replaced or edited"
        )
    model, meta = registry.load_model(directory)
    model.use_device("cpu")
    return Bundle(directory, model, meta, pre)


def from_file(bundles, path, fmt: str | None = None, tree: str | None = None, chunk_size: int = 100_000):
    """Yield ``(source, arrays, frame)`` chunks of a file: the raw columns every bundle needs
    (computed with the bundles' ingest expressions) as a pandas DataFrame.

    ``arrays`` are the branches read for the chunk (name -> values).
    """
    import pandas as pd

    from .jagged import STRING, Typer
    from .readers import file_format, open_source

    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing input file: {path}")
    fmt = file_format(path, fmt)
    with open_source(path, fmt, tree) as src:
        plans, read = [], []
        for b in bundles:
            plan, aliases = b.column_plan(src)
            typer = Typer(src.desc, src.branches, aliases)
            for c, (where, text, body) in plan.items():
                br = src.branches.get(text)
                if br is not None and br.kind == STRING:
                    read.append(text)
                else:
                    try:
                        read += typer.column(where, text, body)[1]
                    except DataError as exc:
                        raise DataError(f"{exc}: {b.what} needs column '{c}'") from exc
            plans.append((plan, aliases))
        read = list(dict.fromkeys(read))
        yield from _chunks(src, plans, read, chunk_size, pd)


def _chunks(src, plans, read, chunk_size, pd):
    from .jagged import Evaluator

    for _start, n, arrays in src.chunks(read, chunk_size):
        cols = {}
        for plan, aliases in plans:
            ev = Evaluator(src.desc, arrays, aliases, n)
            for c, (where, text, body) in plan.items():
                if c in cols:
                    continue
                v = arrays.get(text) if text in arrays else None
                if v is not None and not isinstance(v, np.ndarray) and hasattr(v, "to_pylist"):
                    cols[c] = pd.Series(v.to_pylist(), dtype=object)
                    continue
                v = ev.value(where, text, body)
                cols[c] = v.astype(np.int8) if v.dtype == np.bool_ else v
        yield src, n, pd.DataFrame(cols)
