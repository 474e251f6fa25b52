"""The conformance kit: every built-in family and the example plugin pass
``check_family``; deliberately broken families fail it, naming the check."""

import importlib.util
import inspect
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from hepml_steps import registry
from hepml_steps.families import FamilyCheckError, check_family, family_checks
from hepml_steps.families.base import Family
from tests.test_families import FAST

ROOT = Path(__file__).resolve().parents[1]


def _example_plugin():
    """The example plugin's family, loaded from its file: neither installed nor put on
    sys.path (which would expose its entry points to the registry of every later test)."""
    path = ROOT / "tests" / "plugin_pkg" / "hepml_plugin_demo" / "__init__.py"
    spec = importlib.util.spec_from_file_location("hepml_plugin_demo_checked", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.NearestCentroidFamily


NearestCentroidFamily = _example_plugin()


def _all_checks():
    families = [(name, registry.get(name)) for name in registry.BUILTIN]
    families.append(("nearest_centroid (plugin)", NearestCentroidFamily))
    for name, cls in families:
        for task, check, run in family_checks(cls, FAST.get(name)):
            yield pytest.param(run, id=f"{name}-{task or 'class'}-{check}")


@pytest.mark.parametrize("run", list(_all_checks()))
def test_family_passes_check(run):
    run()


def test_check_family_runs_every_check_of_the_plugin():
    check_family(NearestCentroidFamily)
    names = [check for _, check, _ in family_checks(NearestCentroidFamily)]
    assert names[:2] == ["declarations", "unknown_parameter"]
    assert {"scores", "determinism", "sample_weight", "save_load", "no_pickle", "onnx"} <= set(names)
    assert "epoch_callback" not in names and "missing_class" not in names  # not iterative, not multiclass


# -- deliberately broken families --------------------------------------------------------
class IgnoresWeights(NearestCentroidFamily):
    name = "ignores_weights"

    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None):
        return super().fit(X, y)


class NotSeeded(NearestCentroidFamily):
    name = "not_seeded"

    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None):
        super().fit(X, y, sample_weight)
        jitter = np.random.default_rng().normal(0, 1e-3, (2, X.shape[1]))  # no seed
        self.centroids = (np.asarray(self.centroids) + jitter).tolist()
        return self


class Pickles(NearestCentroidFamily):
    name = "pickles"

    def save(self, directory):
        (Path(directory) / "model.bin").write_bytes(pickle.dumps((self.centroids, self.log_prior)))
        return ["model.bin"]

    @classmethod
    def load(cls, directory, meta):
        self = cls(task=meta["task"], params=meta["params"])
        self.centroids, self.log_prior = pickle.loads((Path(directory) / "model.bin").read_bytes())
        return self


class SilentIterative(NearestCentroidFamily):
    name = "silent_iterative"
    iterative = True  # but fit never calls report_epoch: tuning could never prune it


class AcceptsAnything(NearestCentroidFamily):
    name = "accepts_anything"

    @classmethod
    def resolve_params(cls, params):
        return {**cls.default_params, **params}


class ScoresBackground(NearestCentroidFamily):
    name = "scores_background"

    def predict_score(self, X):
        return 1.0 - super().predict_score(X)


class PromisesOnnx(NearestCentroidFamily):
    name = "promises_onnx"
    exports_onnx = True  # without a to_onnx: the default refuses


class ValidationWithoutStreaming(NearestCentroidFamily):
    name = "validation_without_streaming"
    streams_validation = True  # needs streams_training


class StreamedValidationChangesTheFit(NearestCentroidFamily):
    """Streams, but its fit with the validation split in chunks is not the one with it in memory."""

    name = "streamed_validation_changes"
    streams_training = streams_validation = True

    def fit_stream(self, source, X_val=None, y_val=None, w_val=None):
        from hepml_steps.families.base import is_source

        X, y, w = (np.concatenate(a) for a in zip(*source.chunks()))
        self.fit(X, y, w)
        if is_source(X_val):
            self.centroids = self.centroids * 1.5
        return self


class CentroidsMulticlass(Family):
    """Nearest weighted centroid for K classes, with the classes' weight fractions
    as priors; K taken from the training labels (not ``classes_count``), so a
    class absent from training loses its column."""

    name = "centroids_multiclass"
    tasks = ("multiclass",)
    file_format = "json"

    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None):
        w = np.ones(len(y)) if sample_weight is None else sample_weight
        k = range(int(y.max()) + 1)
        self.centroids = np.array([np.average(X[y == c], axis=0, weights=w[y == c]) for c in k])
        self.log_priors = np.log([w[y == c].sum() / w.sum() for c in k])
        return self

    def predict_score(self, X):
        d = np.stack([np.linalg.norm(X - c, axis=1) for c in self.centroids], axis=1)
        logits = self.log_priors - d
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def save(self, directory):
        state = {"centroids": self.centroids.tolist(), "log_priors": self.log_priors.tolist()}
        (Path(directory) / "centroids.json").write_text(json.dumps(state))
        return ["centroids.json"]

    @classmethod
    def load(cls, directory, meta):
        self = cls(task=meta["task"], params=meta["params"])
        state = json.loads((Path(directory) / "centroids.json").read_text())
        self.centroids, self.log_priors = np.array(state["centroids"]), np.array(state["log_priors"])
        return self


@pytest.mark.parametrize(
    "cls, task, check",
    [
        (IgnoresWeights, "classification", "sample_weight"),
        (NotSeeded, "classification", "determinism"),
        (Pickles, "classification", "no_pickle"),
        (SilentIterative, "classification", "epoch_callback"),
        (AcceptsAnything, None, "unknown_parameter"),
        (ScoresBackground, "classification", "scores"),
        (PromisesOnnx, "classification", "onnx"),
        (CentroidsMulticlass, "multiclass", "missing_class"),
        (ValidationWithoutStreaming, None, "declarations"),
        (StreamedValidationChangesTheFit, "classification", "stream"),
    ],
)
def test_broken_family_fails_the_check_it_breaks(cls, task, check):
    with pytest.raises(FamilyCheckError) as err:
        check_family(cls)
    assert (err.value.family, err.value.check) == (cls.name, check)
    assert err.value.task == (task or "-")
    assert f"family '{cls.name}'" in str(err.value) and f"check '{check}' failed" in str(err.value)
    if task:
        assert f"task '{task}'" in str(err.value)


def test_a_check_that_raises_is_named_too():
    class Crashes(NearestCentroidFamily):
        name = "crashes"

        def predict_score(self, X):
            raise ValueError("boom")

    with pytest.raises(
        FamilyCheckError,
        match=r"family 'crashes', task 'classification': check 'scores' "
        r"failed: raised ValueError: boom",
    ):
        check_family(Crashes)


def test_abstract_family_is_named():
    class Half(Family):
        name = "half"
        tasks = ("classification",)
        file_format = "json"

        def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None):
            return self

    with pytest.raises(
        FamilyCheckError,
        match=r"check 'declarations' failed: abstract methods left: "
        r"\['load', 'predict_score', 'save'\]",
    ):
        check_family(Half)


def test_docs_list_every_hook_of_the_base_family():
    """docs/plugins.md names every public attribute and method a family has."""
    doc = (ROOT / "docs" / "plugins.md").read_text()
    probe = NearestCentroidFamily()
    public = {n for n in dir(probe) if not n.startswith("_")} - {"centroids"}
    public |= {n for n, _ in inspect.getmembers(Family) if not n.startswith("_")}
    missing = sorted(n for n in public if f"`{n}" not in doc)
    assert not missing, f"docs/plugins.md does not describe: {missing}"
