"""scikit-learn families.

Each family wraps one estimator per task. Models are saved with skops
(``model.skops``), a format that stores no executable code. skops loads its
own safe types (builtin containers, NumPy arrays, scikit-learn estimators)
without asking; any other type must be trusted by name, and only the exact
types our estimators store are (``TRUSTED_TYPES``), so a swapped file that asks
for anything else (``builtins.eval``, ``functools.partial``, ...) is refused
instead of executed.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import FamilyError, culprit
from .base import Family

# The types skops does not trust by default that the built-in families' fitted
# estimators contain (checked for every family and task): exact names, never prefixes.
TRUSTED_TYPES = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    }
)


#: Packages that importing ``skops.io`` would load for nothing: it lists
#: scikit-learn's estimators (``sklearn.utils.all_estimators``), whose walk over
#: the package imports every subpackage, ``sklearn.externals.array_api_compat.torch``
#: (all of PyTorch, ~1.5 s) and pytest among them. Neither holds an estimator.
_SKOPS_IMPORT_SKIPS = frozenset({"sklearn.externals.array_api_compat.torch", "pytest"})


class _SkipImports:
    """A meta-path finder that makes the imports of ``names`` fail (ImportError),
    which ``pkgutil.walk_packages`` skips; installed only while skops.io is imported."""

    def __init__(self, names):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name in self.names:
            raise ImportError(f"not imported while loading skops.io: {name}")
        return None


def skops_io():
    """``skops.io``, imported without PyTorch and pytest (:data:`_SKOPS_IMPORT_SKIPS`).

    Keeps a scikit-learn job's fixed cost low (benchmarks/overhead.py). The
    skipped modules stay importable afterwards (a failed import leaves no
    trace in ``sys.modules``), and a module already imported is used as is.
    """
    import sys

    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    finder = _SkipImports(_SKOPS_IMPORT_SKIPS - set(sys.modules))
    sys.meta_path.insert(0, finder)
    try:
        import skops.io as sio
    finally:
        sys.meta_path.remove(finder)
    return sio


def skops_dump(estimator, path) -> None:
    """Write a fitted scikit-learn estimator as a skops file (no pickle).

    Parameters
    ----------
    estimator : sklearn estimator
    path : path-like
        The ``.skops`` file to write.
    """
    sio = skops_io()
    sio.dump(estimator, str(path))


def skops_load(path, trusted=TRUSTED_TYPES):
    """Load a skops file; refuse it if it needs any type outside skops's safe
    set and ``trusted`` (exact type names).

    Raises
    ------
    FamilyError
        When the file asks for another type, or is not a readable skops file
        (naming the file).
    StorageError
        When the system refuses to read it.
    """
    sio = skops_io()
    with culprit(path, FamilyError, "not a readable skops model"):
        untrusted = sio.get_untrusted_types(file=str(path))
        bad = sorted(t for t in untrusted if t not in trusted)
        if bad:
            raise FamilyError(f"refusing to load {path}: it asks for types no hepml model stores: {bad}")
        return sio.load(str(path), trusted=list(untrusted))


def _by_class(values, classes, k: int | None = None) -> np.ndarray:
    """Columns of ``values`` (one per entry of ``classes``) placed at their class
    index among ``k`` columns (a class without training events gets probability 0)."""
    classes = np.asarray(classes, dtype=np.int64)
    out = np.zeros((len(values), k or int(classes.max()) + 1))
    out[:, classes] = values
    return out


def _softmax(d) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    e = np.exp(d - d.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class SklearnFamily(Family):
    """Base for families backed by one scikit-learn estimator per task.

    Subclasses set ``estimators = {task: "module:Class"}`` and
    ``default_params``; ``fixed_params`` are passed but not configurable.
    A family listing ``multiclass`` in ``tasks`` uses its classification
    estimator (scikit-learn classifiers handle K classes natively).

    Negative weights (``accepts_negative_weights``): refused by AdaBoost; the
    trees and forests let them make leaf "probabilities" negative (a forest
    then fails in ``predict_proba``), histogram gradient boosting takes Newton
    steps on negative hessians, libsvm drops the events, logistic regression's
    loss becomes unbounded below: all declare False. Gaussian naive Bayes
    (weighted moments) declares True.
    """

    estimators: ClassVar[dict[str, str]] = {}
    fixed_params: ClassVar[dict] = {}
    file_format = "skops"
    pass_n_jobs: ClassVar[bool] = True  # False where the estimator's n_jobs is deprecated

    def make_estimator(self):
        """The estimator for this task; seed and threads passed where it takes them."""
        key = "classification" if self.task == "multiclass" else self.task
        module, _, attr = self.estimators[key].partition(":")
        cls = getattr(import_module(module), attr)
        kwargs = {**self.fixed_params.get(key, {}), **self.estimator_params()}
        accepted = cls().get_params()
        if "random_state" in accepted:
            kwargs["random_state"] = self.seed
        if "n_jobs" in accepted and self.pass_n_jobs:
            kwargs["n_jobs"] = self.n_threads
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
        if self.task == "multiclass":
            return _by_class(est.predict_proba(X), est.classes_, self.n_classes)
        return np.asarray(est.predict(X), dtype=np.float64)

    def native_importance(self) -> dict[int, float] | None:
        """The estimator's impurity-based ``feature_importances_`` (trees, forests,
        AdaBoost) or its mean |coefficient| over classes (linear models, linear
        SVM); ``None`` when it has neither (HistGradientBoosting, naive Bayes,
        kernel SVM, k-means)."""
        est = self.estimator
        if hasattr(est, "feature_importances_"):
            values = np.asarray(est.feature_importances_, dtype=np.float64)
        elif hasattr(est, "coef_"):  # one row for two classes, one per class for multiclass
            values = np.abs(np.atleast_2d(est.coef_)).mean(axis=0)
        else:
            return None
        return {i: float(v) for i, v in enumerate(values)}

    def save(self, directory) -> list[str]:
        skops_dump(self.estimator, Path(directory) / "model.skops")
        return ["model.skops"]

    @classmethod
    def load(cls, directory, meta: dict) -> SklearnFamily:
        self = cls(task=meta["task"], params=meta.get("params", {}), seed=meta.get("seed", 0))
        self.estimator = skops_load(Path(directory) / "model.skops")
        return self


class LogisticRegressionFamily(SklearnFamily):
    name = "logistic_regression"
    tasks = ("classification", "multiclass")
    estimators = {"classification": "sklearn.linear_model:LogisticRegression"}
    default_params = {"C": 1.0, "max_iter": 1000, "tol": 1e-4}
    search_space = {"C": {"type": "float", "low": 1e-4, "high": 1e3, "log": True}}
    pass_n_jobs = False


class LinearRegressionFamily(SklearnFamily):
    """Ordinary least squares (alpha = 0) or ridge regression (alpha > 0)."""

    name = "linear_regression"
    tasks = ("regression",)
    estimators = {"regression": "sklearn.linear_model:Ridge"}
    default_params = {"alpha": 0.0}
    search_space = {"alpha": {"type": "float", "low": 1e-6, "high": 1e3, "log": True}}


class DecisionTreeFamily(SklearnFamily):
    name = "decision_tree"
    tasks = ("classification", "multiclass", "regression")
    estimators = {
        "classification": "sklearn.tree:DecisionTreeClassifier",
        "regression": "sklearn.tree:DecisionTreeRegressor",
    }
    default_params = {"max_depth": 8, "min_samples_leaf": 20, "min_samples_split": 2, "max_features": None}
    search_space = {
        "max_depth": {"type": "int", "low": 2, "high": 20},
        "min_samples_leaf": {"type": "int", "low": 1, "high": 200, "log": True},
    }


class RandomForestFamily(SklearnFamily):
    name = "random_forest"
    tasks = ("classification", "multiclass", "regression")
    estimators = {
        "classification": "sklearn.ensemble:RandomForestClassifier",
        "regression": "sklearn.ensemble:RandomForestRegressor",
    }
    default_params = {"n_estimators": 200, "max_depth": 12, "min_samples_leaf": 5, "max_features": "sqrt"}
    search_space = {
        "n_estimators": {"type": "int", "low": 50, "high": 500, "log": True},
        "max_depth": {"type": "int", "low": 3, "high": 24},
        "min_samples_leaf": {"type": "int", "low": 1, "high": 100, "log": True},
    }


class AdaBoostFamily(SklearnFamily):
    """AdaBoost over shallow decision trees (TMVA's classic BDT with AdaBoost)."""

    name = "adaboost"
    tasks = ("classification", "multiclass", "regression")
    estimators = {
        "classification": "sklearn.ensemble:AdaBoostClassifier",
        "regression": "sklearn.ensemble:AdaBoostRegressor",
    }
    default_params = {"n_estimators": 200, "learning_rate": 0.5, "max_depth": 3}
    search_space = {
        "n_estimators": {"type": "int", "low": 50, "high": 500, "log": True},
        "learning_rate": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        "max_depth": {"type": "int", "low": 1, "high": 6},
    }

    def estimator_params(self) -> dict:
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

        p = dict(self.params)
        tree = DecisionTreeRegressor if self.task == "regression" else DecisionTreeClassifier
        p["estimator"] = tree(max_depth=p.pop("max_depth"), random_state=self.seed)
        return p

    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None):
        """Fit on the events of positive weight: SAMME takes log(weight), so an
        event left at 0 (``negative_weights: ignore``) adds nothing but a warning."""
        if sample_weight is not None and np.any(np.asarray(sample_weight) == 0):
            keep = np.asarray(sample_weight) > 0
            X, y, sample_weight = X[keep], (None if y is None else np.asarray(y)[keep]), sample_weight[keep]
        return super().fit(X, y, sample_weight)


class HistGradientBoostingFamily(SklearnFamily):
    """scikit-learn's histogram gradient boosting (LightGBM-like)."""

    name = "hist_gbm"
    handles_missing = True  # learns a direction for NaN at every split
    tasks = ("classification", "multiclass", "regression")
    estimators = {
        "classification": "sklearn.ensemble:HistGradientBoostingClassifier",
        "regression": "sklearn.ensemble:HistGradientBoostingRegressor",
    }
    default_params = {
        "max_iter": 200,
        "learning_rate": 0.1,
        "max_leaf_nodes": 31,
        "max_depth": None,
        "min_samples_leaf": 20,
        "l2_regularization": 0.0,
    }
    search_space = {
        "max_iter": {"type": "int", "low": 50, "high": 500, "log": True},
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
        "max_leaf_nodes": {"type": "int", "low": 7, "high": 127, "log": True},
    }
    fixed_params = {"classification": {"early_stopping": False}, "regression": {"early_stopping": False}}


class SVMFamily(SklearnFamily):
    """Support vector machine (kernel and C configurable).

    Classification scores are the logistic of the decision function, so the
    0.5 threshold is the SVM's own decision boundary (no costly Platt CV);
    multiclass probabilities are the softmax of the one-vs-rest shaped
    decision functions.
    Training cost grows ~quadratically: the training sample is capped.
    """

    name = "svm"
    tasks = ("classification", "multiclass", "regression")
    estimators = {"classification": "sklearn.svm:SVC", "regression": "sklearn.svm:SVR"}
    default_params = {"C": 1.0, "kernel": "rbf", "gamma": "scale", "degree": 3}
    search_space = {
        "C": {"type": "float", "low": 1e-2, "high": 1e2, "log": True},
        "kernel": {"type": "categorical", "choices": ["rbf", "linear", "poly"]},
    }
    max_train_events = 10_000

    def predict_score(self, X):
        if self.task == "classification":
            d = self.estimator.decision_function(X)
            sign = 1.0 if list(self.estimator.classes_) == [0, 1] else -1.0
            return 1.0 / (1.0 + np.exp(-sign * np.asarray(d, dtype=np.float64)))
        if self.task == "multiclass":
            d = np.asarray(self.estimator.decision_function(X), dtype=np.float64)
            if d.ndim == 1:  # two classes: one decision function for classes_[1]
                d = np.stack([np.zeros_like(d), d], axis=1)
            return _by_class(_softmax(d), self.estimator.classes_, self.n_classes)
        return super().predict_score(X)


class GaussianNBFamily(SklearnFamily):
    """Gaussian naive Bayes. Accepts negative weights: the class priors, means
    and variances are weighted sums, so signed weights give the signed-weighted
    (physical) estimates, as TMVA's likelihood method does (a class's total
    weight must stay positive)."""

    name = "naive_bayes"
    accepts_negative_weights = True
    tasks = ("classification", "multiclass")
    estimators = {"classification": "sklearn.naive_bayes:GaussianNB"}
    default_params = {"var_smoothing": 1e-9}
    search_space = {"var_smoothing": {"type": "float", "low": 1e-12, "high": 1e-3, "log": True}}


class KMeansFamily(SklearnFamily):
    """k-means clustering; score = cluster index."""

    name = "kmeans"
    tasks = ("clustering",)
    estimators = {"clustering": "sklearn.cluster:KMeans"}
    default_params = {"n_clusters": 2, "n_init": 4, "max_iter": 300}
    search_space = {"n_clusters": {"type": "int", "low": 2, "high": 12}}

    def fit(self, X, y=None, sample_weight=None, X_val=None, y_val=None, w_val=None):
        from ..errors import DataError

        if len(X) < int(self.params["n_clusters"]):
            raise DataError(
                f"family 'kmeans': {len(X)} training events are fewer than n_clusters = {self.params['n_clusters']}"
            )
        return super().fit(X, None, sample_weight)
