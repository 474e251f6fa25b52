"""scikit-learn families.

Each family wraps one estimator per task. Models are saved with skops
(``model.skops``), a format that stores no executable code; on load only
types from scikit-learn, NumPy and SciPy are trusted, so a swapped file that
asks for anything else is refused instead of executed.
"""
from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import FamilyError
from .base import Family

TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.")


def skops_dump(estimator, path) -> None:
    import skops.io as sio

    sio.dump(estimator, str(path))


def skops_load(path):
    """Load a skops file, trusting only scikit-learn/NumPy/SciPy types."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=str(path))
    bad = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if bad:
        raise FamilyError(f"refusing to load {path}: it contains types outside scikit-learn/NumPy/SciPy: {bad}")
    return sio.load(str(path), trusted=untrusted)


class SklearnFamily(Family):
    """Base for families backed by one scikit-learn estimator per task.

    Subclasses set ``estimators = {task: "module:Class"}`` and
    ``default_params``; ``fixed_params`` are passed but not configurable.
    """

    estimators: ClassVar[dict[str, str]] = {}
    fixed_params: ClassVar[dict] = {}
    file_format = "skops"
    seed_param: ClassVar[str | None] = "random_state"
    threads_param: ClassVar[str | None] = None

    def make_estimator(self):
        module, _, attr = self.estimators[self.task].partition(":")
        cls = getattr(import_module(module), attr)
        kwargs = {**self.fixed_params.get(self.task, {}), **self.estimator_params()}
        if self.seed_param:
            kwargs[self.seed_param] = self.seed
        if self.threads_param:
            kwargs[self.threads_param] = self.n_threads
        return cls(**kwargs)

    def estimator_params(self) -> dict:
        """Config params -> estimator kwargs (override to translate names)."""
        return dict(self.params)

    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None):
        self.estimator = self.make_estimator()
        if y is None:
            self.estimator.fit(X, sample_weight=sample_weight)
        else:
            self.estimator.fit(X, y, sample_weight=sample_weight)
        return self

    def predict_score(self, X):
        est = self.estimator
        if self.task == "classification":
            return est.predict_proba(X)[:, list(est.classes_).index(1)].astype(np.float64)
        return np.asarray(est.predict(X), dtype=np.float64)

    def save(self, directory) -> list[str]:
        skops_dump(self.estimator, Path(directory) / "model.skops")
        return ["model.skops"]

    @classmethod
    def load(cls, directory, meta: dict) -> "SklearnFamily":
        self = cls(task=meta["task"], params=meta.get("params", {}), seed=meta.get("seed", 0))
        self.estimator = skops_load(Path(directory) / "model.skops")
        return self


class LogisticRegressionFamily(SklearnFamily):
    name = "logistic_regression"
    tasks = ("classification",)
    estimators = {"classification": "sklearn.linear_model:LogisticRegression"}
    default_params = {"C": 1.0, "max_iter": 1000, "tol": 1e-4}
    search_space = {"C": {"type": "float", "low": 1e-4, "high": 1e3, "log": True}}
    seed_param = "random_state"
