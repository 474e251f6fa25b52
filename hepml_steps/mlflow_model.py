"""A trained hepml model as an MLflow model (pyfunc flavor), logged without pickling.

``mlflow.pyfunc.load_model("runs:/<run_id>/model").predict(frame)`` scores a
pandas DataFrame. The model is logged *from code* (MLflow 3's models-from-code):
MLflow copies :mod:`hepml_steps.mlflow_code_model`, a file of three statements,
into the model and runs it on load; nothing is pickled. The MLflow model holds

* ``artifacts/hepml_model/``: the model directory the train step wrote, read
  back by :func:`hepml_steps.registry.load_model` (skops with an allow-list,
  xgboost's own format, ``torch.load(weights_only=True)``);
* ``code/hepml_steps/``: this package (the family code the loader needs), so a
  fresh environment with the pinned ``requirements.txt`` loads the model
  without installing hepml; plugin families need their own package installed;
* ``MLmodel`` with the signature, and a few rows as the input example.

Feature space: the model takes **raw** columns, as ingest writes them
(``results/split/<split>.parquet``: e.g. ``j1_pt``, ``Jet_pt_0``), and applies
its own fitted preparation (derived columns, imputation, encoding,
standardisation, PCA) through the model bundle (:mod:`hepml_steps.bundle`),
so ``predict(df)`` equals ``bundle.load(dir).score(df)``. The signature lists
those raw columns. A model directory without a bundle (``preprocessing.json``,
e.g. one trained by calling the train function without a transform) is
scored on **prepared** features instead, one ``double`` per feature.

Output: a DataFrame with one ``score`` column (what the family's
``predict_score`` gives: signal probability, regression value, anomaly score,
cluster, first principal component) or, for a multiclass model, ``prob_<i>``
per class ``i`` (class ``i`` is ``classes[i]`` of the model's metadata).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from . import registry
from .columns import PROB, SCORE
from .errors import DataError

#: key of the hepml model directory in the MLflow model's ``artifacts``
MODEL_ARTIFACT = "hepml_model"
#: the file MLflow runs to build the model on load (models from code)
CODE_MODEL = Path(__file__).with_name("mlflow_code_model.py")
#: distributions every model needs at load time (mlflow itself is added by MLflow)
BASE_DISTS = ("numpy", "pandas")
#: what each built-in family module needs besides :data:`BASE_DISTS`
FAMILY_DISTS = {
    "hepml_steps.families.xgb": ("xgboost-cpu",),
    "hepml_steps.families.sk": ("scikit-learn", "scipy", "skops"),
    "hepml_steps.families.arrays": ("scikit-learn", "scipy"),
    "hepml_steps.families.torch_nets": ("torch",),
}
LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"


class PreparedScorer:
    """Scores a DataFrame of prepared features with a model directory of the train step.

    Parameters
    ----------
    directory : str or Path
        What the train step wrote (``hepml_model.json`` and the family's files).

    Raises
    ------
    FamilyError, DataError
        From :func:`hepml_steps.registry.load_model`.
    """

    def __init__(self, directory):
        self.model, self.meta = registry.load_model(directory)
        self.model.use_device(self.meta.get("device", "cpu"))
        self.features = list(self.meta["features"])
        self.outputs = output_columns(self.meta)

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row of :attr:`outputs` per row of ``frame`` (same index).

        Raises
        ------
        DataError
            A feature column is missing from ``frame``.
        """
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise DataError(f"model '{self.meta['model']}': feature column(s) {missing} missing from the input")
        X = frame[self.features].to_numpy(dtype=np.float32)
        if not len(X):
            return pd.DataFrame({c: np.empty(0) for c in self.outputs}, index=frame.index)
        s = np.asarray(self.model.predict_score(X), dtype=np.float64)
        return pd.DataFrame(s.reshape(len(X), -1), columns=self.outputs, index=frame.index)


class BundleScorer:
    """Scores a DataFrame of raw columns with a model bundle (:func:`hepml_steps.bundle.load`).

    Raises
    ------
    DataError
        The bundle is refused (fingerprint, version) or a raw column is missing.
    """

    def __init__(self, directory):
        from . import bundle

        self.bundle = bundle.load(directory)
        self.meta, self.features = self.bundle.meta, list(self.bundle.raw_columns)
        self.outputs = output_columns(self.meta)

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row of :attr:`outputs` per row of ``frame`` (same index)."""
        s = np.asarray(self.bundle.score(frame), dtype=np.float64)
        return pd.DataFrame(s.reshape(len(frame), -1), columns=self.outputs, index=frame.index)


def has_bundle(directory) -> bool:
    """Whether the model directory holds a bundle (``preprocessing.json``)."""
    from . import bundle

    return (Path(directory) / bundle.FILE).is_file()


def load_scorer(directory):
    """The object :class:`HepmlModel` scores with: anything with ``score(frame) -> DataFrame``.

    The bundle (raw columns in) when the directory has one, else the bare model
    (prepared features in).
    """
    return BundleScorer(directory) if has_bundle(directory) else PreparedScorer(directory)


def input_columns(directory, meta: dict) -> list[str]:
    """The columns ``predict`` takes: the bundle's raw columns, else the prepared features."""
    if has_bundle(directory):
        from . import bundle
        from .io import read_json

        return bundle.raw_columns(read_json(Path(directory) / bundle.FILE)["transform"])
    return list(meta["features"])


class HepmlModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: loads the hepml model directory, scores DataFrames."""

    def load_context(self, context):
        self.scorer = load_scorer(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.scorer.score(pd.DataFrame(model_input))


def output_columns(meta: dict) -> list[str]:
    """``prob_0 .. prob_<K-1>`` for a multiclass model, else ``score``."""
    if meta.get("task") == "multiclass":
        return [f"{PROB}{i}" for i in range(len(meta.get("classes") or ()))]
    return [SCORE]


def signature(meta: dict, columns: list[str] | None = None, example: pd.DataFrame | None = None):
    """Inputs: ``columns`` (default: the prepared features), typed by the example's
    column (:func:`_column_type`; ``double`` for a column it lacks); outputs:
    :func:`output_columns`, ``double``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    def kind(c):
        return "double" if example is None or c not in example else _column_type(example[c].dtype)

    cols = list(meta["features"]) if columns is None else columns
    return ModelSignature(
        inputs=Schema([ColSpec(kind(c), c) for c in cols]),
        outputs=Schema([ColSpec("double", c) for c in output_columns(meta)]),
    )


def _column_type(dtype) -> str:
    """The MLflow column type of a raw input column of this pandas dtype: ``double`` for
    floats (float32 and float64 data both pass MLflow's schema check), ``long`` for
    integers up to 64 bits signed or 32 unsigned (NanoAOD counts such as ``nJet``, an
    ingest alias ``len(Jet_pt)``: int64 data fail a ``double`` column, a conversion
    that could lose precision), ``boolean``, ``string`` otherwise. Raises nothing."""
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "long" if dtype.itemsize < 8 or pd.api.types.is_signed_integer_dtype(dtype) else "double"
    return "double" if pd.api.types.is_numeric_dtype(dtype) else "string"


def input_example(path: str, features: list[str], n: int = 5) -> pd.DataFrame | None:
    """The first ``n`` rows of ``features`` in Parquet file ``path`` (reads one batch only)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        batch = next(f.iter_batches(batch_size=n, columns=features), None)
    return None if batch is None or batch.num_rows == 0 else batch.to_pandas()


def _lock_pins(lock: Path = LOCK) -> dict[str, str]:
    if not lock.is_file():
        return {}
    pins = {}
    for line in lock.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def _pinned(dist: str, pins: dict[str, str]) -> str:
    version = pins.get(dist.lower().replace("_", "-"))
    if version is None:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return dist
    return f"{dist}=={version}"


def pip_requirements(family: str, lock: Path = LOCK) -> list[str]:
    """The packages a model of ``family`` needs, pinned as in ``requirements.lock``.

    Given explicitly, MLflow does not infer them (which loads the model in a
    subprocess: seconds per model). A plugin family adds its own distribution,
    at its installed version. Names missing from the lock take the installed
    version.
    """
    from importlib.metadata import entry_points

    pins = _lock_pins(lock)
    where = registry.available().get(family, "")
    dists = [*BASE_DISTS, *FAMILY_DISTS.get(where.partition(":")[0], ())]
    reqs = [_pinned(d, pins) for d in dists]
    if family not in registry.BUILTIN:
        ep = next((e for e in entry_points(group=registry.ENTRY_POINT_GROUP) if e.name == family), None)
        if ep is not None and ep.dist is not None:
            reqs.append(f"{ep.dist.name}=={ep.dist.version}")
    return reqs


def warm_up(model_dir: str) -> None:
    """Do now what :func:`log` would do slowly under the store lock, once per process:
    load the model (its family's library: xgboost, torch, ...; and a check that it
    loads at all) and build MLflow's map of installed packages (~1 s), which it
    reads to check the pinned requirements."""
    load_scorer(model_dir)
    with contextlib.suppress(Exception):  # a private helper; without it MLflow builds the map itself
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map

        _init_packages_to_modules_map()


@contextlib.contextmanager
def using_tracking_uri(uri: str):
    """MLflow's fluent functions (``Model.log``, ``register_model``) on ``uri`` inside the
    block; the caller's tracking URI and ``MLFLOW_TRACKING_URI`` are as before afterwards
    (MLflow's own helper, used here, unsets the variable on the way out)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def log(
    model_dir: str,
    run_id: str,
    experiment_id: str,
    tracking_uri: str,
    meta: dict,
    example: pd.DataFrame | None,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    name: str = "model",
) -> str:
    """Log ``model_dir`` as the MLflow model ``name`` of run ``run_id``; return its model id.

    ``model_dir`` should hold only the model's files (no bookkeeping files:
    everything in it is copied into the MLflow model).
    """
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    # created here, in the run's experiment: Model.log alone would file it under the
    # active (default) experiment, where runs:/<run_id>/model does not find it
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, params=params, tags=tags)
    with using_tracking_uri(tracking_uri), warnings.catch_warnings():
        # pandas 3 on MLflow's own input-example check (``df.columns == range(...)``)
        warnings.filterwarnings("ignore", message="Operation with range is deprecated")
        Model.log(
            None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=str(CODE_MODEL),
            artifacts={MODEL_ARTIFACT: str(model_dir)},
            code_paths=[str(Path(__file__).parent)],
            signature=signature(meta, input_columns(model_dir, meta), example),
            input_example=example,
            pip_requirements=pip_requirements(meta["family"]),
        )
    if client.get_logged_model(logged.model_id).status != LoggedModelStatus.READY:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id


def registered_name(experiment: str, model: str) -> str:
    """``hepml-<experiment>-<model>``, characters other than letters, digits, ``.``,
    ``_`` and ``-`` replaced by ``_`` (the registry refuses ``/`` and ``:``)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", f"hepml-{experiment}-{model}")


def register(client, tracking_uri: str, name: str, run_id: str, model_id: str) -> str:
    """Register logged model ``model_id`` (of run ``run_id``) under ``name`` unless a
    version of that run is there already; return the version."""
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return str(existing[0].version)
    with using_tracking_uri(tracking_uri):
        version = mlflow.register_model(f"models:/{model_id}", name, await_registration_for=0)
    return str(version.version)
