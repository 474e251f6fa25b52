"""One registry for built-in and third-party model families.

Built-in families are listed here as ``"module:Class"`` strings so that
listing them imports nothing heavy; a family's module (and its library:
xgboost, torch, ...) is imported only when that family is asked for.

Third parties register a family without touching this package through the
``hepml.families`` entry-point group, e.g. in their ``pyproject.toml``::

    [project.entry-points."hepml.families"]
    my_bdt = "my_package.module:MyBDTFamily"

The entry-point name is the family name used in ``config.yaml``. A plugin
that fails to import only breaks models that use it; the error names the
plugin and the import error.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

from .errors import FamilyError

ENTRY_POINT_GROUP = "hepml.families"

BUILTIN: dict[str, str] = {
    "xgboost": "hepml_steps.families.xgb:XGBoostFamily",
    "logistic_regression": "hepml_steps.families.sk:LogisticRegressionFamily",
    "linear_regression": "hepml_steps.families.sk:LinearRegressionFamily",
    "decision_tree": "hepml_steps.families.sk:DecisionTreeFamily",
    "random_forest": "hepml_steps.families.sk:RandomForestFamily",
    "adaboost": "hepml_steps.families.sk:AdaBoostFamily",
    "hist_gbm": "hepml_steps.families.sk:HistGradientBoostingFamily",
    "svm": "hepml_steps.families.sk:SVMFamily",
    "naive_bayes": "hepml_steps.families.sk:GaussianNBFamily",
    "kmeans": "hepml_steps.families.sk:KMeansFamily",
    "knn": "hepml_steps.families.arrays:KNNFamily",
    "dbscan": "hepml_steps.families.arrays:DBSCANFamily",
    "pca": "hepml_steps.families.arrays:PCAFamily",
    "mlp": "hepml_steps.families.torch_nets:MLPFamily",
    "autoencoder": "hepml_steps.families.torch_nets:AutoencoderFamily",
}


_CLASSIFIERS = ("classification", "multiclass")
#: The tasks of each built-in family, known without importing it, so a config
#: asking a family for a task it lacks fails when Snakemake parses it rather
#: than when the job starts (tests check this against each class's ``tasks``).
BUILTIN_TASKS: dict[str, tuple[str, ...]] = {
    **{
        name: (*_CLASSIFIERS, "regression")
        for name in ("xgboost", "decision_tree", "random_forest", "adaboost", "hist_gbm", "svm", "knn", "mlp")
    },
    "logistic_regression": _CLASSIFIERS,
    "naive_bayes": _CLASSIFIERS,
    "linear_regression": ("regression",),
    "kmeans": ("clustering",),
    "dbscan": ("clustering",),
    "pca": ("dimreduction",),
    "autoencoder": ("anomaly",),
}


def _plugin_entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, str]:
    """Every registered family, imported or not.

    Returns
    -------
    dict of str to str
        Family name -> where it comes from (``module:Class``), built-ins first,
        then plugins (a plugin cannot replace a built-in name).
    """
    found = dict(BUILTIN)
    for name, ep in _plugin_entry_points().items():
        if name in found:
            continue  # built-ins win; a plugin cannot silently replace one
        found[name] = ep.value
    return found


def get(name: str):
    """The family class registered as ``name``, imported now.

    Parameters
    ----------
    name : str
        A built-in family or a plugin's entry-point name.

    Returns
    -------
    type
        A :class:`~hepml_steps.families.base.Family` subclass.

    Raises
    ------
    FamilyError
        When no family has that name, its library is not installed, or a
        plugin fails to import or is not a Family subclass (naming the plugin,
        its entry point and the import error).
    """
    if name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        try:
            cls = getattr(import_module(module), attr)
        except ImportError as exc:
            raise FamilyError(f"family '{name}' needs a library that is not installed: {exc}") from exc
        return cls
    eps = _plugin_entry_points()
    if name not in eps:
        raise FamilyError(f"unknown model family '{name}'; known families: {', '.join(sorted(available()))}")
    ep = eps[name]
    try:
        cls = ep.load()
    except Exception as exc:  # a broken third-party plugin must name itself
        raise FamilyError(
            f"plugin family '{name}' (entry point {ep.value!r} in group '{ENTRY_POINT_GROUP}') "
            f"failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    from .families.base import Family

    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise FamilyError(f"plugin family '{name}' ({ep.value}) is not a hepml_steps.families.base.Family subclass")
    return cls


#: Name of the JSON file that describes a saved model directory.
META_FILE = "hepml_model.json"


def requested_device(spec: dict) -> str:
    """The device a model's config asks for.

    Parameters
    ----------
    spec : dict
        The model's config entry (``device``, default ``"auto"``; ``gpus``).

    Returns
    -------
    str
        ``device`` as given, except that ``auto`` with ``gpus`` > 0 is a request
        for ``"cuda"`` (so falling back to the CPU is warned about, not silent).
    """
    device = str(spec.get("device", "auto"))
    return "cuda" if device == "auto" and int(spec.get("gpus") or 0) > 0 else device


def load_model(directory):
    """Load a fitted model written by the train step (family from its metadata).

    Raises
    ------
    FamilyError
        When the metadata names no family, or a model file is unreadable or
        not what the family wrote (naming the file).
    DataError
        When the metadata file is missing or not JSON.
    """
    from pathlib import Path

    from .io import read_json

    path = Path(directory) / META_FILE
    meta = read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("family"), str):
        raise FamilyError(f"{path}: not a hepml model metadata file (no 'family')")
    return get(meta["family"]).restore(directory, meta), meta
