"""Families whose fitted state is a handful of arrays: kNN, DBSCAN, PCA.

Their state is saved as ``model.npz`` and read back with
``allow_pickle=False``, so loading a swapped file cannot run code. Each one
honours event weights: kNN votes with the neighbours' weights, DBSCAN counts
weights towards ``min_samples``, PCA centres and decomposes the weighted
covariance.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import DataError, FamilyError, culprit
from .base import Family


class ArrayFamily(Family):
    file_format = "npz"
    state_keys: ClassVar[tuple[str, ...]] = ()

    def save(self, directory) -> list[str]:
        np.savez(Path(directory) / "model.npz", **{k: getattr(self, k) for k in self.state_keys})
        return ["model.npz"]

    @classmethod
    def load(cls, directory, meta: dict):
        self = cls(task=meta["task"], params=meta.get("params", {}), seed=meta.get("seed", 0))
        path = Path(directory) / "model.npz"
        with culprit(path, FamilyError, f"not a hepml '{cls.name}' model file"), np.load(path, allow_pickle=False) as z:
            missing = [k for k in cls.state_keys if k not in z.files]
            if missing:
                raise FamilyError(f"{path}: not a hepml '{cls.name}' model file: no array(s) {missing}")
            for k in cls.state_keys:
                setattr(self, k, z[k])
        self._prepare()
        return self

    def _prepare(self) -> None:
        """Rebuild derived helpers (e.g. a neighbour index) after fit or load."""


class KNNFamily(ArrayFamily):
    """k nearest neighbours; the score is the weighted signal fraction (or mean
    target, or each class's weighted fraction for multiclass) among the k
    neighbours. Memory and time grow with the training sample, which is capped."""

    name = "knn"
    tasks = ("classification", "multiclass", "regression")
    default_params = {"n_neighbors": 25, "weights": "uniform"}
    search_space = {"n_neighbors": {"type": "int", "low": 3, "high": 200, "log": True}}
    max_train_events = 50_000
    state_keys = ("X", "y", "w")

    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None):
        if self.params["weights"] not in ("uniform", "distance"):
            from ..errors import FamilyError

            raise FamilyError(f"family 'knn': weights must be 'uniform' or 'distance', not {self.params['weights']!r}")
        self.X = np.asarray(X, dtype=np.float32)
        self.y = np.asarray(y, dtype=np.float64)
        self.w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if len(X) < int(self.params["n_neighbors"]):
            raise DataError(f"family 'knn': {len(X)} training events are fewer than n_neighbors")
        self._prepare()
        return self

    def _prepare(self):
        from sklearn.neighbors import NearestNeighbors

        self.index = NearestNeighbors(n_neighbors=int(self.params["n_neighbors"]), n_jobs=self.n_threads).fit(self.X)

    def predict_score(self, X):
        dist, idx = self.index.kneighbors(np.asarray(X, dtype=np.float32))
        w = self.w[idx]
        if self.params["weights"] == "distance":
            w = w / np.maximum(dist, 1e-12)
        total = w.sum(axis=1)
        total[total == 0] = 1.0
        if self.task == "multiclass":
            labels = self.y[idx].astype(np.int64)
            votes = np.zeros((len(idx), self.classes_count(self.y)))
            for c in range(votes.shape[1]):
                votes[:, c] = (w * (labels == c)).sum(axis=1)
            return votes / total[:, None]
        return (w * self.y[idx]).sum(axis=1) / total


class DBSCANFamily(ArrayFamily):
    """Density-based clustering. New events take the cluster of the nearest
    core sample within ``eps`` and are noise (-1) otherwise."""

    name = "dbscan"
    tasks = ("clustering",)
    default_params = {"eps": 0.5, "min_samples": 10}
    search_space = {"eps": {"type": "float", "low": 0.05, "high": 3.0, "log": True}}
    max_train_events = 20_000
    state_keys = ("core", "core_labels")

    def fit(self, X, y=None, sample_weight=None, X_val=None, y_val=None, w_val=None):
        from sklearn.cluster import DBSCAN

        if len(X) < int(self.params["min_samples"]):
            raise DataError(f"family 'dbscan': {len(X)} training events are fewer than min_samples")
        db = DBSCAN(
            eps=float(self.params["eps"]), min_samples=int(self.params["min_samples"]), n_jobs=self.n_threads
        ).fit(X, sample_weight=sample_weight)
        self.core = np.asarray(X, dtype=np.float32)[db.core_sample_indices_]
        self.core_labels = db.labels_[db.core_sample_indices_].astype(np.int64)
        self.info["n_clusters"] = int(len(set(db.labels_)) - (1 if -1 in db.labels_ else 0))
        self.info["train_noise_fraction"] = float(np.mean(db.labels_ == -1))
        self._prepare()
        return self

    def _prepare(self):
        from sklearn.neighbors import NearestNeighbors

        self.index = NearestNeighbors(n_neighbors=1).fit(self.core) if len(self.core) else None

    def predict_score(self, X):
        if self.index is None:
            return np.full(len(X), -1.0)
        dist, idx = self.index.kneighbors(np.asarray(X, dtype=np.float32))
        labels = self.core_labels[idx[:, 0]].astype(np.float64)
        labels[dist[:, 0] > float(self.params["eps"])] = -1.0
        return labels


class PCAFamily(ArrayFamily):
    """Weighted principal component analysis. The score is the first component;
    ``transform`` gives all kept components; the explained variance is recorded."""

    name = "pca"
    tasks = ("dimreduction",)
    default_params = {"n_components": 2}
    search_space = {}
    state_keys = ("mean", "components", "explained_variance_ratio")

    def fit(self, X, y=None, sample_weight=None, X_val=None, y_val=None, w_val=None):
        X = np.asarray(X, dtype=np.float64)
        n = int(self.params["n_components"])
        if not 1 <= n <= X.shape[1]:
            raise DataError(f"family 'pca': n_components = {n} must be between 1 and {X.shape[1]} (the features)")
        w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        w = w / w.sum()
        self.mean = w @ X
        Xc = (X - self.mean) * np.sqrt(w)[:, None]
        _, s, vt = np.linalg.svd(Xc, full_matrices=False)
        var = s**2
        self.components = vt[:n]
        self.explained_variance_ratio = var[:n] / var.sum()
        self.info["explained_variance_ratio"] = self.explained_variance_ratio.tolist()
        return self

    def transform(self, X):
        """All kept components.

        Parameters
        ----------
        X : ndarray of shape (n_events, n_features)

        Returns
        -------
        ndarray of shape (n_events, n_components)
            ``(X - mean) @ components.T`` (weighted mean and components).
        """
        return (np.asarray(X, dtype=np.float64) - self.mean) @ self.components.T

    def predict_score(self, X):
        return self.transform(X)[:, 0]
