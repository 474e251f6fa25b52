"""A third-party hepml family: weighted nearest-centroid classifier.

Score = a logistic function of how much closer an event is to the signal
centroid than to the background centroid (divided by ``temperature``), plus
the log-ratio of the classes' total weights, so the score is the signal
probability of the *weighted* training sample. Saved as JSON: no pickle.

Check it with ``hepml_steps.families.check_family(NearestCentroidFamily)``.
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
        self.log_prior = float(np.log(w[y == 1].sum() / w[y == 0].sum()))
        return self

    def predict_score(self, X):
        b, s = (np.linalg.norm(X - np.asarray(c), axis=1) for c in self.centroids)
        t = float(self.params["temperature"])
        return 1.0 / (1.0 + np.exp(-(b - s) / t - self.log_prior))

    def save(self, directory):
        state = {"centroids": self.centroids, "log_prior": self.log_prior}
        (Path(directory) / "centroids.json").write_text(json.dumps(state))
        return ["centroids.json"]

    @classmethod
    def load(cls, directory, meta):
        self = cls(task=meta["task"], params=meta.get("params", {}), seed=meta.get("seed", 0))
        state = json.loads((Path(directory) / "centroids.json").read_text())
        self.centroids, self.log_prior = state["centroids"], state["log_prior"]
        return self
