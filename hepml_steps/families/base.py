"""The contract every model family implements (built-in or third-party).

A family is a class deriving from :class:`Family`. It *declares*

- ``name``: the key used in ``config.yaml`` (``models.<model>.family``);
- ``tasks``: the tasks it supports, a subset of :data:`TASKS`;
- ``default_params``: every hyper-parameter it accepts, with its default;
  unknown keys in the config are rejected with the list of known ones;
- ``search_space``: default Optuna search space, ``{param: spec}`` with spec
  ``{"type": "int"|"float", "low": .., "high": .., "log": bool}`` or
  ``{"type": "categorical", "choices": [...]}``;
- ``gpu_capable``: whether it can run on a CUDA device;
- ``file_format``: a short name of its safe on-disk format
  (e.g. ``"xgboost-ubj"``, ``"torch-state-dict"``, ``"skops"``);
- ``iterative``: whether it trains in iterations that can report a
  validation metric (used for pruning and learning curves);
- ``max_train_events``: optional default cap on training events for
  families that scale badly (``None`` = no cap);

and *implements*

- ``fit(X, y, sample_weight=None, X_val=None, y_val=None, w_val=None)``;
- ``predict_score(X)``: one float per event: signal probability
  (classification), prediction (regression), anomaly score (higher = more
  anomalous), cluster index (clustering), or the first component
  (dimensionality reduction); for ``multiclass`` an events x classes array
  of class probabilities (rows sum to 1);
- ``save(directory)``: write the model files, return their names;
- ``load(directory, meta)`` (classmethod): rebuild a fitted instance from the
  files written by ``save`` without unpickling anything a user could swap.

``X`` is a float32 numpy array (events x features), ``y`` a numpy array
(0/1 labels, class indices 0..K-1 for ``multiclass``, or regression targets),
weights float64. For ``multiclass`` the pipeline sets ``self.n_classes = K``
before ``fit``; ``predict_score`` must return K columns even when a class has
no training events (as can happen in a cross-validation fold). After ``fit`` a family
may fill ``self.history`` (per-iteration train/validation metrics) and
``self.info`` (anything worth recording, e.g. the device used).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ..errors import FamilyError

TASKS = ("classification", "multiclass", "regression", "anomaly", "clustering", "dimreduction")


class Family(ABC):
    name: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()
    default_params: ClassVar[dict[str, Any]] = {}
    search_space: ClassVar[dict[str, dict]] = {}
    gpu_capable: ClassVar[bool] = False
    file_format: ClassVar[str] = ""
    iterative: ClassVar[bool] = False
    max_train_events: ClassVar[int | None] = None

    def __init__(self, task: str = "classification", params: dict | None = None,
                 seed: int = 0, n_threads: int = 1, device: str = "cpu"):
        if task not in self.tasks:
            raise FamilyError(
                f"family '{self.name}' does not support task '{task}' "
                f"(it supports: {', '.join(self.tasks)})")
        self.task = task
        self.params = self.resolve_params(params or {})
        self.seed = int(seed)
        self.n_threads = int(n_threads)
        self.device = device
        self.history: dict[str, list[float]] = {}
        self.info: dict[str, Any] = {}
        #: multiclass: the number of classes K, set by the pipeline before ``fit``
        #: (a cross-validation fold may lack a class; the outputs still have K columns)
        self.n_classes: int | None = None

    @classmethod
    def resolve_params(cls, params: dict) -> dict:
        """Defaults overlaid with ``params``; unknown keys raise naming the family."""
        unknown = sorted(set(params) - set(cls.default_params))
        if unknown:
            raise FamilyError(
                f"unknown hyper-parameter(s) {unknown} for family '{cls.name}'; "
                f"known: {sorted(cls.default_params)}")
        return {**cls.default_params, **params}

    # -- to implement -------------------------------------------------------
    @abstractmethod
    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None) -> "Family":
        """Train on ``X``/``y`` honouring ``sample_weight``; validation set optional."""

    @abstractmethod
    def predict_score(self, X):
        """One float per event (see the module docstring for its meaning per task)."""

    @abstractmethod
    def save(self, directory) -> list[str]:
        """Write the model files into ``directory``; return their file names."""

    @classmethod
    @abstractmethod
    def load(cls, directory, meta: dict) -> "Family":
        """Rebuild a fitted instance from ``save``'s files (no pickle)."""

    def classes_count(self, y) -> int:
        """K for a multiclass fit: ``n_classes`` when the pipeline set it, else max(y) + 1."""
        import numpy as np

        return int(self.n_classes) if self.n_classes else int(np.max(y)) + 1

    def use_device(self, device: str) -> None:
        """Run inference of a loaded model on ``device`` (GPU-capable families
        move the model there when it is usable, else stay on the CPU and warn)."""
        self.device = device
        self.info["device"] = "cpu"

    # -- helpers -------------------------------------------------------------
    @classmethod
    def describe(cls) -> dict:
        return {
            "name": cls.name, "tasks": list(cls.tasks), "default_params": dict(cls.default_params),
            "search_space": dict(cls.search_space), "gpu_capable": cls.gpu_capable,
            "file_format": cls.file_format, "iterative": cls.iterative,
            "max_train_events": cls.max_train_events,
        }
