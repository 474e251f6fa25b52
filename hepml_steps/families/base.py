"""The contract every model family implements (built-in or third-party).

A family is a class deriving from :class:`Family`. Everything the pipeline
(train, tune, predict, importance) reads from a family class or calls on a
family instance is declared here, with its default; nothing is looked up with
``hasattr`` or reached through a family's private attributes. A family

- *declares* class attributes: ``name``, ``tasks``, ``default_params``,
  ``search_space``, ``gpu_capable``, ``file_format``, ``iterative``,
  ``max_train_events``, ``exports_onnx``, ``accepts_negative_weights``,
  ``streams_training``;
- *implements* ``fit``, ``predict_score``, ``save`` and ``load``;
- *may override* the optional hooks, whose defaults are safe:
  ``use_device`` (stay on the CPU), ``native_importance`` (none),
  ``fit_stream`` (refuse, naming the family: only a ``streams_training``
  family trains from batches),
  ``to_onnx`` (refuse, naming the family), ``set_epoch_callback`` (store the
  callback; only an ``iterative`` family's ``fit`` calls it, through
  :meth:`Family.report_epoch`);
- *gets* from the base class: the constructor, ``resolve_params`` (unknown
  hyper-parameters are a :class:`~hepml_steps.errors.FamilyError` naming the
  family and the parameter), ``classes_count``, ``restore`` and ``describe``.

``X`` is a float32 numpy array (events x features), ``y`` a numpy array
(0/1 labels, class indices 0..K-1 for ``multiclass``, regression targets, or
``None`` for anomaly, clustering and dimensionality reduction), weights
float64. An iterative family logs its progress with :func:`log_progress`
(one INFO line per epoch or every few iterations). docs/plugins.md lists
every hook with what the pipeline does with it;
:func:`hepml_steps.families.check_family` checks a family against this
contract on small synthetic data.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from ..errors import FamilyError

#: ``f(epoch, metrics)``: called by an iterative family after every iteration.
EpochCallback = Callable[[int, dict], None]


def log_progress(
    logger: logging.Logger, family: str, unit: str, step: int, total: int, metrics: dict, elapsed_s: float
) -> None:
    """Log one INFO progress line of a training loop, e.g.
    ``mlp: epoch 3/20 train_loss 0.4123 val_loss 0.4301 (12.3 s)``.

    Parameters
    ----------
    logger : logging.Logger
        The family module's logger (``hepml.<module>``).
    family : str
        The family's ``name``, which starts the line.
    unit : str
        ``"epoch"`` or ``"iteration"``.
    step, total : int
        1-based number of the step just finished, and the number planned.
    metrics : dict of str to float
        Printed in order with 4 significant digits; a ``validation_`` prefix
        is shortened to ``val_``.
    elapsed_s : float
        Seconds since training started (wall clock).
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    values = " ".join(f"{k.replace('validation_', 'val_', 1)} {float(v):.4g}" for k, v in metrics.items())
    logger.info("%s: %s %d/%d %s(%.1f s)", family, unit, step, total, f"{values} " if values else "", elapsed_s)


def is_source(x) -> bool:
    """Whether ``x`` is a :class:`~hepml_steps.dataset.FitSource` (events read chunk by
    chunk) rather than an array."""
    return hasattr(x, "chunks") and hasattr(x, "n_events")


class Family(ABC):
    """Base class of every model family; see the module docstring and docs/plugins.md.

    Parameters
    ----------
    task : str, default "classification"
        One of the family's ``tasks``; another task raises FamilyError.
    params : dict, optional
        Hyper-parameters overriding ``default_params`` (unknown keys raise FamilyError).
    seed : int, default 0
        Seed of every random number the fit uses: the same seed, data and
        ``n_threads`` must give identical predictions.
    n_threads : int, default 1
        CPU threads for ``fit`` and ``predict_score``. The pipeline may change
        the attribute on a loaded model before predicting, so read it at call time.
    device : str, default "cpu"
        ``"cpu"``, ``"cuda"`` (``"cuda:<i>"``) or ``"auto"``; only ``gpu_capable``
        families use anything but the CPU.

    Attributes
    ----------
    history : dict of str to list of float
        Filled by ``fit``: per-iteration metrics (``train_loss``,
        ``validation_loss``, ...) for the learning curves. Empty by default.
    info : dict
        Filled by ``fit`` and ``use_device``: anything worth recording, at
        least ``info["device"]`` (where the model runs). JSON-serialisable.
    n_classes : int or None
        ``multiclass``: the number of classes K, set by the pipeline before
        ``fit`` and after ``load``; ``predict_score`` returns K columns even
        when a class has no training events (a cross-validation fold).
    epoch_callback : callable or None
        Set through :meth:`set_epoch_callback`; ``None`` by default.
    """

    #: the key used in ``config.yaml`` (``models.<model>.family``)
    name: ClassVar[str] = ""
    #: the tasks the family supports, a subset of ``hepml_steps.tasks.names()``
    tasks: ClassVar[tuple[str, ...]] = ()
    #: every hyper-parameter it accepts, with its default (JSON-serialisable values)
    default_params: ClassVar[dict[str, Any]] = {}
    #: default Optuna space: ``{param: {"type": "int"|"float", "low", "high", "log"}}``
    #: or ``{param: {"type": "categorical", "choices": [...]}}``
    search_space: ClassVar[dict[str, dict]] = {}
    #: whether it can run on a CUDA device (else the config refuses ``gpus`` > 0)
    gpu_capable: ClassVar[bool] = False
    #: short name of its safe on-disk format (``"xgboost-ubj"``, ``"skops"``, ...)
    file_format: ClassVar[str] = ""
    #: whether ``fit`` reports a validation loss every iteration through
    #: :meth:`report_epoch` (tuning prunes it; the learning curves read ``history``)
    iterative: ClassVar[bool] = False
    #: default cap on training events for families that scale badly (``None``: no cap)
    max_train_events: ClassVar[int | None] = None
    #: whether :meth:`to_onnx` writes an ONNX copy of a fitted model
    exports_onnx: ClassVar[bool] = False
    #: whether ``fit`` and the predictions take NaN in ``X`` as a missing value
    #: (XGBoost, HistGradientBoosting); otherwise :mod:`hepml_steps.dataset`
    #: fills NaN with the train medians of the features step before ``fit``
    handles_missing: ClassVar[bool] = False
    #: the dtype of the library's own scores, which :meth:`predict_score` widens to
    #: float64 (float32 for XGBoost and torch): the predict step stores them in it,
    #: value for value, and the readers of prediction tables widen them again
    score_dtype: ClassVar[str] = "float64"
    #: whether ``fit`` trains correctly on negative event weights (signed NLO
    #: generator weights): the config accepts ``negative_weights: keep`` only
    #: for such families; under ``ignore`` (default) and ``abs`` the fit never
    #: sees a negative weight
    accepts_negative_weights: ClassVar[bool] = False
    #: whether :meth:`fit_stream` trains from batches (data larger than memory):
    #: train then hands a large training split as a
    #: :class:`~hepml_steps.dataset.FitSource` instead of arrays
    streams_training: ClassVar[bool] = False
    #: whether :meth:`fit_stream` also takes the validation split as a
    #: :class:`~hepml_steps.dataset.FitSource` (``X_val``; ``y_val`` and
    #: ``w_val`` None), read chunk by chunk, instead of arrays in memory: train
    #: then streams it too (2M validation events × 15 features held as arrays
    #: cost 146 MiB throughout the fit)
    streams_validation: ClassVar[bool] = False

    def __init__(
        self,
        task: str = "classification",
        params: dict | None = None,
        seed: int = 0,
        n_threads: int = 1,
        device: str = "cpu",
    ):
        if task not in self.tasks:
            raise FamilyError(
                f"family '{self.name}' does not support task '{task}' (it supports: {', '.join(self.tasks)})"
            )
        self.task = task
        self.params = self.resolve_params(params or {})
        self.seed = int(seed)
        self.n_threads = int(n_threads)
        self.device = device
        self.history: dict[str, list[float]] = {}
        self.info: dict[str, Any] = {}
        self.n_classes: int | None = None
        self.epoch_callback: EpochCallback | None = None

    @classmethod
    def resolve_params(cls, params: dict) -> dict:
        """The family's hyper-parameters: ``default_params`` overlaid with ``params``.

        Parameters
        ----------
        params : dict
            Hyper-parameters from the config or a tuning trial.

        Returns
        -------
        dict
            Every key of ``default_params``.

        Raises
        ------
        FamilyError
            When ``params`` holds a key ``default_params`` lacks, naming the
            family, the unknown key(s) and the known ones.
        """
        unknown = sorted(set(params) - set(cls.default_params))
        if unknown:
            raise FamilyError(
                f"unknown hyper-parameter(s) {unknown} for family '{cls.name}'; known: {sorted(cls.default_params)}"
            )
        return {**cls.default_params, **params}

    # -- to implement -------------------------------------------------------
    @abstractmethod
    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None) -> Family:
        """Train on ``X``/``y`` honouring ``sample_weight``; return ``self``.

        Parameters
        ----------
        X : ndarray of shape (n_events, n_features), float32
        y : ndarray of shape (n_events,) or None
            0/1 labels, class indices 0..K-1 (``multiclass``), regression
            targets, or ``None`` (anomaly: background events only; clustering;
            dimensionality reduction).
        sample_weight : ndarray of shape (n_events,), float64, optional
            Event weights as set by ``training.weighting``; they must change
            the fit (an up-weighted event counts more). Never negative unless
            the family declares ``accepts_negative_weights`` (and the config
            asks for ``negative_weights: keep``).
        X_val, y_val, w_val : optional
            The validation split (same conventions), for learning curves,
            early stopping and :meth:`report_epoch`.
        """

    @abstractmethod
    def predict_score(self, X):
        """Score every event; row ``i`` depends on ``X[i]`` only (predict runs in batches).

        Parameters
        ----------
        X : ndarray of shape (n_events, n_features), float32

        Returns
        -------
        ndarray of shape (n_events,), or (n_events, K) for ``multiclass``
            classification: signal probability in [0, 1]; multiclass: class
            probabilities, rows summing to 1; regression: the prediction in
            target units; anomaly: higher = more anomalous; clustering: the
            cluster index (-1 for noise); dimreduction: the first component.
        """

    @abstractmethod
    def save(self, directory) -> list[str]:
        """Write the fitted model into ``directory`` (no pickle); return the file names.

        Parameters
        ----------
        directory : path-like
            An existing, empty directory.

        Returns
        -------
        list of str
            The names of the files written (recorded in the model metadata).
        """

    @classmethod
    @abstractmethod
    def load(cls, directory, meta: dict) -> Family:
        """Rebuild the fitted instance from ``save``'s files without unpickling.

        Parameters
        ----------
        directory : path-like
            The directory ``save`` wrote.
        meta : dict
            The model metadata (``task``, ``params``, ``seed``, ``features``,
            ``classes`` for multiclass, ...) as read back from JSON.

        Returns
        -------
        Family
            An instance whose ``predict_score`` equals the saved model's.

        Raises
        ------
        FamilyError
            When a file is not what the family wrote, naming the file.
        """

    # -- optional hooks, with their defaults ------------------------------------
    def fit_stream(self, source, X_val=None, y_val=None, w_val=None) -> Family:
        """Train from batches of training events; return ``self`` (``streams_training`` families).

        The train step calls it instead of :meth:`fit` when the training split
        holds more than ``training.stream_above_events`` events. The result
        must be statistically equivalent to :meth:`fit` on the same events
        (same model, hyper-parameters and weights; the order in which events
        are seen may differ).

        Parameters
        ----------
        source : hepml_steps.dataset.FitSource
            ``source.chunks(rng=None)`` yields ``(X, y, w)`` chunks (float32
            features, targets, fit weights) as many times as asked;
            ``source.shuffled_batches(batch_size, buffer_events, rng)``
            shuffled mini-batches; ``n_events``, ``n_features``, ``columns``,
            ``class_weight_sums`` describe the whole split.
        X_val, y_val, w_val : optional
            The validation split in memory, as for :meth:`fit`; or, for a
            ``streams_validation`` family, ``X_val`` a FitSource of the
            validation split (its chunks' ``w`` the validation fit weights, as
            ``w_val``) and ``y_val``, ``w_val`` None (:func:`is_source`).

        Raises
        ------
        FamilyError
            Default: always, naming the family (set ``streams_training`` and
            override this to stream).
        """
        raise FamilyError(f"family '{self.name}' cannot train from batches (streams_training is False)")

    def use_device(self, device: str) -> None:
        """Run inference of a loaded model on ``device`` (called by predict).

        Default: stay on the CPU and record ``info["device"] = "cpu"``.
        GPU-capable families move the model when the device is usable, else
        stay on the CPU and warn.

        Parameters
        ----------
        device : str
            ``"cpu"``, ``"auto"``, ``"cuda"`` or ``"cuda:<i>"``.
        """
        self.device = device
        self.info["device"] = "cpu"

    def set_epoch_callback(self, callback: EpochCallback | None) -> None:
        """Ask ``fit`` to call ``callback(epoch, metrics)`` after every iteration.

        Tuning sets it to report the validation loss to Optuna and prune
        (by raising out of the callback). Default: store it in
        ``epoch_callback``; only a family declaring ``iterative = True`` calls
        it, from its training loop, through :meth:`report_epoch`.

        Parameters
        ----------
        callback : callable or None
            ``f(epoch, metrics)``, ``epoch`` 0-based, ``metrics`` holding at
            least ``"validation_loss"`` (lower is better) when ``fit`` has a
            validation set. ``None`` removes it.
        """
        self.epoch_callback = callback

    def report_epoch(self, epoch: int, metrics: dict) -> None:
        """Pass one iteration's metrics to the epoch callback, if any (for ``fit`` to call).

        An exception raised by the callback propagates out of ``fit``: that
        is how tuning prunes a trial, so do not catch it.

        Parameters
        ----------
        epoch : int
            0-based iteration number.
        metrics : dict of str to float
            ``validation_loss`` (required when there is a validation set),
            ``train_loss`` and others optional.
        """
        if self.epoch_callback is not None:
            self.epoch_callback(epoch, metrics)

    def native_importance(self) -> dict[int, float] | None:
        """The model's own importance of each feature (e.g. tree gain, |coefficients|).

        Default: ``None`` (the importance step then records only the
        permutation importance).

        Returns
        -------
        dict of int to float, or None
            Feature column index (0-based) -> non-negative importance; an
            index left out counts as 0.
        """
        return None

    def to_onnx(self, path, n_features: int) -> None:
        """Write the fitted model as ONNX (train does when ``exports_onnx`` is True).

        The graph takes a float32 input ``features`` of shape
        ``[N, n_features]`` and gives an output ``score`` equal to
        :meth:`predict_score` (``[N]``, or ``[N, K]`` for multiclass).

        Parameters
        ----------
        path : path-like
            The file to write (atomically).
        n_features : int
            The number of input features.

        Raises
        ------
        FamilyError
            Default: always, naming the family (set ``exports_onnx`` and
            override this to support ONNX).
        """
        raise FamilyError(f"family '{self.name}' cannot export ONNX (exports_onnx is False)")

    # -- given by the base class ------------------------------------------------
    def classes_count(self, y) -> int:
        """K for a multiclass fit: ``n_classes`` when the pipeline set it, else max(y) + 1."""
        import numpy as np

        return int(self.n_classes) if self.n_classes else int(np.max(y)) + 1

    @classmethod
    def restore(cls, directory, meta: dict) -> Family:
        """What the pipeline calls to load a model: :meth:`load`, then the
        pipeline's own state (``n_classes`` from ``meta["classes"]``). Not to override.
        """
        model = cls.load(directory, meta)
        if meta.get("classes"):
            model.n_classes = len(meta["classes"])
        return model

    @classmethod
    def describe(cls) -> dict:
        """The class's declarations as a JSON-serialisable dict."""
        return {
            "name": cls.name,
            "tasks": list(cls.tasks),
            "default_params": dict(cls.default_params),
            "search_space": dict(cls.search_space),
            "gpu_capable": cls.gpu_capable,
            "file_format": cls.file_format,
            "iterative": cls.iterative,
            "max_train_events": cls.max_train_events,
            "exports_onnx": cls.exports_onnx,
            "accepts_negative_weights": cls.accepts_negative_weights,
            "streams_training": cls.streams_training,
            "streams_validation": cls.streams_validation,
        }
