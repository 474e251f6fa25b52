"""A third-party hepml family: weighted nearest-centroid classifier.

Score = softmax-like closeness to the signal centroid versus the background
centroid (in standardised feature space). Saved as JSON: no pickle.
"""
import json
from pathlib import Path

import numpy as np

from hepml_steps.families.base import Family


class NearestCentroidFamily(Family):
    name = "nearest_centroid"
    tasks = ("classification",)
    default_params = {"temperature": 1.0}
    search_space = {"temperature": {"type": "float", "low": 0.1, "high": 10.0, "log": True}}
    file_format = "json"

    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None):
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight)
        self.centroids = [np.average(X[y == c], axis=0, weights=w[y == c]).tolist() for c in (0, 1)]
        return self

    def predict_score(self, X):
        b, s = (np.linalg.norm(X - np.asarray(c), axis=1) for c in self.centroids)
        t = float(self.params["temperature"])
        return 1.0 / (1.0 + np.exp(-(b - s) / t))

    def save(self, directory):
        (Path(directory) / "centroids.json").write_text(json.dumps(self.centroids))
        return ["centroids.json"]

    @classmethod
    def load(cls, directory, meta):
        self = cls(task=meta["task"], params=meta.get("params", {}))
        self.centroids = json.loads((Path(directory) / "centroids.json").read_text())
        return self
