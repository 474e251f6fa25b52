"""Gradient-boosted decision trees (BDT) with XGBoost.

Saved as XGBoost's own UBJSON format (``model.ubj``): no pickle. Trains with
the native API so event weights, a validation set (learning curve, optional
early stopping) and a per-iteration callback (used for pruning while tuning)
are all first-class. Early stopping (``early_stopping_rounds`` > 0) watches
the validation log-loss, the metric of the learning curves and of pruning.
Learning curve: the validation loss XGBoost evaluates for early stopping
and pruning, and the training loss on evenly spaced training events: about
1/:data:`TRAIN_CURVE_FRACTION` of them, and roughly between
:data:`TRAIN_CURVE_MIN_EVENTS` and :data:`TRAIN_CURVE_EVENTS` (every k-th
event, k = ceil(n / target): a fit of 2,001–64,000 events gets 1,000–2,000;
every event of a fit of at most 2,000). Its evaluation costs about 0.5 µs per curve
event and iteration against ~6 µs per training event and iteration for the
boosting itself (2 cores, depth 5), so it stays within ~3 % of the fit at
any size, not one more pass over the training set (``benchmarks/overhead.py``:
a 10,000-event curve on 100k training events cost 9 %). The same events
every iteration: the curve is smooth, its level known to ~1 % (2,000 events).
In memory, features of at most 64 MiB go into a plain ``DMatrix`` (as a
bare script's: 5 % faster at 100k events), larger ones into a
``QuantileDMatrix`` (one byte per value, no float copy of X); the trees are
the same. Data larger than memory: ``fit_stream`` (``streams_training``)
builds an ``xgboost.ExtMemQuantileDMatrix`` (its pages cached on disk) from the
batches of a FitSource above :data:`EXTERNAL_MEMORY_ABOVE` training events
(``external_memory: auto``, the default; ``true``: always), else (``false``, or a
GPU) a ``QuantileDMatrix`` in memory.
Progress: an INFO line on ``hepml.xgboost`` every ceil(n_estimators/20)
iterations and after the last, with the training and validation losses
XGBoost evaluates anyway, e.g.
``xgboost: iteration 20/200 train_loss 0.4123 val_loss 0.4301 (1.2 s)``.
``device="cuda"`` uses the GPU when this XGBoost build has CUDA and a device
is visible; otherwise it falls back to CPU and says so.

Weight units (:func:`curvature_scale`): ``min_child_weight`` (and
``reg_lambda``) bound a leaf's *hessian* sum, which for the logistic loss is
Σ w·p(1−p), not Σ w. With ``weighting: physical`` and a signal yield 1 % of
the background, p ≈ 0.01 at the start and the hessian per unit weight is ~25
times smaller than for a balanced sample: on a small training set no child
reaches ``min_child_weight = 1`` and the BDT learns no split at all. So for
classification and multiclass ``fit`` multiplies the weights by the factor
that gives the start of the fit the total hessian of a balanced sample of as
many unit-weight events; ``min_child_weight`` then means the same under every
``weighting`` (the factor is 1 for ``balanced``). XGBoost refuses negative
weights (``accepts_negative_weights`` is False).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import tempfile
import time
import traceback

import numpy as np

from .. import stopping
from .base import Family, is_source, log_progress

log = logging.getLogger("hepml.xgboost")


def _cuda_usable(xgb) -> tuple[bool, str]:
    if not xgb.build_info().get("USE_CUDA", False):
        return False, "this XGBoost build has no CUDA support (xgboost-cpu); install 'xgboost' for GPUs"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False, "CUDA_VISIBLE_DEVICES hides every GPU"
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no CUDA driver (libcuda.so.1) on this node"
    return True, "CUDA available"


def curvature_scale(y, w, task: str) -> float:
    """The factor XGBoost's fit multiplies the weights ``w`` by (see the module docstring).

    For K classes with weight fractions p_c = W_c / W, the hessian of class
    column c at the start of the fit is W·p_c(1−p_c) (binary: one column);
    the factor brings the smallest of them to n·(1/K)(1−1/K), its value for
    a balanced sample of n unit-weight events. 1 for regression, or when a
    class has no positive weight.

    Parameters
    ----------
    y : ndarray of shape (n_events,)
        0/1 labels or class indices.
    w : ndarray of shape (n_events,) or None
        The fit weights (non-negative).
    task : str

    Returns
    -------
    float
    """
    if w is None or task not in ("classification", "multiclass") or len(w) == 0:
        return 1.0
    w = np.asarray(w, dtype=np.float64)
    y = np.asarray(y)
    return curvature_scale_from_sums(len(w), {c: float(w[y == c].sum()) for c in np.unique(y)}, task)


def curvature_scale_from_sums(n: int, class_sums: dict | None, task: str) -> float:
    """:func:`curvature_scale` from ``n`` events and the fit weights' sum per class
    (``{class: sum}``, as a streamed source gives them); 1 without classes."""
    if not class_sums or task not in ("classification", "multiclass") or n == 0:
        return 1.0
    per_class = [float(v) for v in class_sums.values()]
    k = max(len(per_class), 2)
    total = float(sum(per_class))
    if total <= 0 or len(per_class) < 2 or min(per_class) <= 0:
        return 1.0
    curvature = min(wc * (total - wc) / total for wc in per_class)
    return float(n * (1 / k) * (1 - 1 / k) / curvature)


class XGBoostFamily(Family):
    name = "xgboost"
    handles_missing = True  # NaN is XGBoost's missing value: a default direction per split
    tasks = ("classification", "multiclass", "regression")
    default_params = {
        "n_estimators": 200,
        "max_depth": 6,
        "learning_rate": 0.1,
        "subsample": 1.0,
        "colsample_bytree": 1.0,
        "min_child_weight": 1.0,
        "reg_lambda": 1.0,
        "reg_alpha": 0.0,
        "gamma": 0.0,
        "max_bin": 256,
        "early_stopping_rounds": 0,
        "external_memory": "auto",
    }
    search_space = {
        "n_estimators": {"type": "int", "low": 50, "high": 600, "log": True},
        "max_depth": {"type": "int", "low": 2, "high": 10},
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
        "subsample": {"type": "float", "low": 0.5, "high": 1.0},
        "colsample_bytree": {"type": "float", "low": 0.5, "high": 1.0},
        "min_child_weight": {"type": "float", "low": 0.1, "high": 20.0, "log": True},
        "reg_lambda": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
    }
    gpu_capable = True
    score_dtype = "float32"  # Booster.predict's
    streams_training = True  # fit_stream: a binned matrix (on disk by default) from a FitSource's batches
    streams_validation = True  # and the validation split's QuantileDMatrix from the batches of another
    file_format = "xgboost-ubj"
    iterative = True
    exports_onnx = True

    def _booster_params(self) -> dict:
        p = self.params
        # the learning curves need the loss only; an "auc" eval metric would sort the
        # training set every iteration and triple the fit time (benchmarks/overhead.py)
        objective, metric = {
            "classification": ("binary:logistic", ["logloss"]),
            "multiclass": ("multi:softprob", ["mlogloss"]),
            "regression": ("reg:squarederror", ["rmse"]),
        }[self.task]
        extra = {"num_class": self.n_classes} if self.task == "multiclass" else {}
        return {
            "objective": objective,
            "eval_metric": metric,
            "tree_method": "hist",
            **extra,
            "max_depth": int(p["max_depth"]),
            "eta": float(p["learning_rate"]),
            "subsample": float(p["subsample"]),
            "colsample_bytree": float(p["colsample_bytree"]),
            "min_child_weight": float(p["min_child_weight"]),
            "lambda": float(p["reg_lambda"]),
            "alpha": float(p["reg_alpha"]),
            "gamma": float(p["gamma"]),
            "max_bin": int(p["max_bin"]),
            "seed": self.seed,
            "nthread": self.n_threads,
            "device": self._device,
        }

    def _select_device(self, xgb, step: str) -> None:
        """CUDA when asked for (or ``auto``) and usable, else the CPU (warned
        about when CUDA was asked for)."""
        self._device = "cpu"
        if self.device in ("cuda", "auto"):
            ok, why = _cuda_usable(xgb)
            if ok:
                self._device = "cuda"
            elif self.device == "cuda":
                log.warning("GPU requested for xgboost but not usable (%s): %s on CPU", why, step)
            self.info["device_note"] = why
        self.info["device"] = self._device

    def use_device(self, device: str) -> None:
        import xgboost as xgb

        self.device = device
        self._select_device(xgb, "inference")
        self.booster.set_param({"device": self._device})

    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None, w_val=None):
        import xgboost as xgb

        self._select_device(xgb, "training")
        if self.task == "multiclass":
            self.n_classes = self.classes_count(y)
        if sample_weight is not None:
            self.info["weight_scale"] = curvature_scale(y, sample_weight, self.task)
            sample_weight = np.asarray(sample_weight, dtype=np.float64) * self.info["weight_scale"]
        if X.nbytes <= _PLAIN_DMATRIX_BYTES:  # small: the library's plain DMatrix, as a bare script's
            dtrain = xgb.DMatrix(X, label=y, weight=sample_weight, nthread=self.n_threads)
        else:  # quantised on the fly (one byte per value): a DMatrix would hold a copy of X besides its bins
            dtrain = xgb.QuantileDMatrix(
                X, label=y, weight=sample_weight, max_bin=int(self.params["max_bin"]), nthread=self.n_threads
            )
        if _curve_step(len(X)) == 1:
            curve = dtrain
        else:  # the training loss of the learning curve on evenly spaced events (module docstring)
            idx = _curve_index(len(X))
            w = None if sample_weight is None else sample_weight[idx]
            curve = xgb.DMatrix(X[idx], label=np.asarray(y)[idx], weight=w, nthread=self.n_threads)
        return self._boost(xgb, dtrain, curve, (X_val, y_val, w_val))

    def fit_stream(self, source, X_val=None, y_val=None, w_val=None):
        """Train from a :class:`~hepml_steps.dataset.FitSource`: on the CPU, with
        ``external_memory: true`` or (``auto``, the default) above
        :data:`EXTERNAL_MEMORY_ABOVE` training events, an
        ``xgboost.ExtMemQuantileDMatrix`` built from an ``xgboost.DataIter``
        over its chunks, gathered into batches of :data:`PAGE_BYTES`
        (:func:`_pages`), whose binned pages are cached on disk in a temporary
        directory (``tempfile``: ``$TMPDIR``, which Snakemake sets to the
        job's ``resources.tmpdir``; on a tmpfs the cache is memory again) and
        removed after the fit: 40 bytes per event at 15 features without
        missing values, 85 with 1 % NaN (measured at 200k events; also
        removed on SIGTERM or SIGINT, :mod:`hepml_steps.stopping`; SIGKILL
        leaves it). Otherwise (``external_memory: false``, ``auto`` at or below
        :data:`EXTERNAL_MEMORY_ABOVE` events, or a GPU) an in-memory
        ``xgboost.QuantileDMatrix`` over the same batches (one byte per value
        with ``max_bin`` <= 256, plus XGBoost's row and column indexes). Both
        give the same trees (same sketch, same bins; compared
        model for model). At 10M events (6M × 15 training, 300 trees of depth
        5, 2 threads) the train step peaked at 742 MiB on disk against 942 MiB
        in memory, in 97 s against 95 s (with a page per 65,536-event chunk
        the disk cache took 141 s). The validation split is a QuantileDMatrix
        with the training bins (``ref``), built from the chunks of ``X_val``
        when it is a FitSource. Same objective, weights (``curvature_scale``
        from the source's class sums) and learning curve as :meth:`fit`; the
        bin edges come from XGBoost's streaming quantile sketch, so the trees
        may differ slightly from those of :meth:`fit` (statistically
        equivalent).

        Raises
        ------
        StorageError
            The disk cache cannot be written (a full or missing ``$TMPDIR``).
        """
        import xgboost as xgb

        self._select_device(xgb, "training")
        sums = source.class_weight_sums
        if self.task == "multiclass":
            self.n_classes = int(self.n_classes or int(max(sums)) + 1)
        self.info["weight_scale"] = curvature_scale_from_sums(source.n_events, sums, self.task)
        with tempfile.TemporaryDirectory(prefix="hepml-xgboost-") as cache:
            try:
                self._fit_binned(xgb, source, cache, (X_val, y_val, w_val))
            except BaseException as exc:
                # the frames the tracebacks keep (xgb.train's; a matrix's __init__ in the chained
                # XGBoostError of a stop during binning) hold the matrices, whose cache files
                # XGBoost removes when they go (warning when they are gone): let them go first
                _clear_frames(exc)
                gc.collect()
                raise
        return self

    @classmethod
    def resolve_params(cls, params: dict) -> dict:
        """:meth:`Family.resolve_params`, and ``external_memory`` checked: true, false or
        ``"auto"``, else a FamilyError naming the family, so a bad value stops a job (or a
        tuning study) at its start, whether the fit would stream or not."""
        from ..errors import FamilyError

        resolved = super().resolve_params(params)
        value = resolved["external_memory"]
        if not (isinstance(value, bool) or value == "auto"):
            raise FamilyError(f"xgboost: params.external_memory must be true, false or 'auto', got {value!r}")
        return resolved

    def _external_memory(self, n_events: int) -> bool:
        """Whether a streamed fit of ``n_events`` training events caches its binned matrix on
        disk: ``params.external_memory`` true, or ``"auto"`` above :data:`EXTERNAL_MEMORY_ABOVE`."""
        value = self.params["external_memory"]
        return int(n_events) > EXTERNAL_MEMORY_ABOVE if value == "auto" else bool(value)

    def _fit_binned(self, xgb, source, cache: str, validation) -> None:
        """Bin ``source`` (on disk under ``cache`` on the CPU with ``external_memory``) and boost."""
        external = self._external_memory(source.n_events) and self._device == "cpu"
        # the disk cache pays per page at every iteration: 32 MiB batches; an in-memory matrix
        # builds as fast from the chunks as they come, and holds one less batch (0: no gathering)
        kw = {"cache_prefix": os.path.join(cache, "train")} if external else {"page_bytes": 0}
        it = _SourceIter(source, self.info["weight_scale"], _curve_step(source.n_events), **kw)
        matrix = xgb.ExtMemQuantileDMatrix if external else xgb.QuantileDMatrix
        try:
            with stopping.deferred():  # a stop while XGBoost calls back into the iterator: on leaving
                dtrain = matrix(it, max_bin=int(self.params["max_bin"]), nthread=self.n_threads)
        except xgb.core.XGBoostError as e:
            _raise_cache_error(e, cache if external else None)
            raise
        X_curve, y_curve, w_curve = it.curve()
        curve = xgb.DMatrix(X_curve, label=y_curve, weight=w_curve, nthread=self.n_threads)
        it.release()
        self.info["streamed"] = {
            "events": int(source.n_events),
            "chunks": it.n_chunks,
            "batches": it.n_batches,  # what XGBoost was handed: the chunks gathered (_pages)
            "matrix": "external memory (disk cache)" if external else "in memory",
        }
        self._boost(xgb, dtrain, curve, validation)

    def _boost(self, xgb, dtrain, curve, validation):
        """Boost on ``dtrain``, evaluating ``curve`` (the training loss) and the ``validation``
        split (X, y, w; or a FitSource, y and w None; X None or no events: none), binned with
        the training bins; fill history and info."""
        X_val, y_val, w_val = validation
        if X_val is not None and len(X_val) == 0:
            X_val = None
        dval = None
        # the training max_bin: another one is refused by XGBoost (or bins differently)
        binned = {"ref": dtrain, "max_bin": int(self.params["max_bin"]), "nthread": self.n_threads}
        if is_source(X_val):  # streamed: binned chunk by chunk, no float copy of the split held
            with stopping.deferred():
                dval = xgb.QuantileDMatrix(_SourceIter(X_val, 1.0, None, page_bytes=0), **binned)
        elif X_val is not None:
            dval = xgb.QuantileDMatrix(X_val, label=y_val, weight=w_val, **binned)
        evals = [(curve, "train")]
        if dval is not None:
            evals.append((dval, "validation"))
        record: dict = {}
        n_rounds = int(self.params["n_estimators"])
        callbacks = [_IterationHook(self, n_rounds)]
        esr = int(self.params["early_stopping_rounds"]) or None
        # C++ log messages reach Python through a ctypes callback too: a stop is held until
        # the iteration ends (_IterationHook), then raised
        with stopping.deferred():
            self.booster = xgb.train(
                self._booster_params(),
                dtrain,
                num_boost_round=n_rounds,
                evals=evals,
                evals_result=record,
                verbose_eval=False,
                early_stopping_rounds=esr if dval is not None else None,
                callbacks=callbacks,
            )
        for split, metrics in record.items():
            for metric, values in metrics.items():
                key = {"logloss": "loss", "mlogloss": "loss", "rmse": "loss"}.get(metric, metric)
                self.history[f"{split}_{key}"] = [float(v) for v in values]
        if esr and dval is not None:
            self.info["best_iteration"] = int(self.booster.best_iteration)
        self.info["n_trees"] = int(self.booster.num_boosted_rounds())
        if self.info["n_trees"] < n_rounds and self.info.get("best_iteration") is not None:
            log.info(
                "%s: stopped early after iteration %d/%d; best iteration %d",
                self.name,
                self.info["n_trees"],
                n_rounds,
                self.info["best_iteration"] + 1,
            )
        return self

    @property
    def _loss_metric(self) -> str:
        return {"classification": "logloss", "multiclass": "mlogloss"}.get(self.task, "rmse")

    def _iteration_range(self):
        best = self.info.get("best_iteration")
        return (0, best + 1) if best is not None else (0, 0)

    def predict_score(self, X):
        import xgboost as xgb

        if getattr(self, "_device", "cpu") == "cpu":
            # scores X where it lies (no DMatrix copy of the batch); the same scores as a DMatrix
            # predict, bit for bit (float32 or float64 X, NaN as missing)
            out = self.booster.inplace_predict(X, iteration_range=self._iteration_range(), missing=np.nan)
        else:  # a CUDA booster would fall back to a DMatrix (with a warning) for host arrays anyway
            out = self.booster.predict(xgb.DMatrix(X, nthread=self.n_threads), iteration_range=self._iteration_range())
        out = np.asarray(out).astype(np.float64)
        return out.reshape(len(X), -1) if self.task == "multiclass" else out

    def native_importance(self) -> dict[int, float]:
        """Total gain per feature column index (a feature no tree splits on is left out)."""
        gains = self.booster.get_score(importance_type="total_gain")  # keyed "f0", "f1", ...
        return {int(k[1:]): float(v) for k, v in gains.items()}

    def save(self, directory) -> list[str]:
        from pathlib import Path

        if self.info.get("best_iteration") is not None:
            # keep only the trees up to the best iteration so the file is the model
            self.booster = self.booster[: self.info["best_iteration"] + 1]
            self.info["best_iteration"] = None
        self.booster.save_model(str(Path(directory) / "model.ubj"))
        return ["model.ubj"]

    @classmethod
    def load(cls, directory, meta: dict) -> XGBoostFamily:
        from pathlib import Path

        import xgboost as xgb

        from ..errors import FamilyError, culprit

        self = cls(task=meta["task"], params=meta.get("params", {}), seed=meta.get("seed", 0))
        self.booster = xgb.Booster()
        path = Path(directory) / "model.ubj"
        with culprit(path, FamilyError, "not a readable XGBoost model"):
            self.booster.load_model(str(path))
        return self

    def to_onnx(self, path, n_features: int) -> None:
        """Write the BDT as ONNX (onnxmltools); output "score" = predict_score."""
        from .onnx_export import export_xgboost

        export_xgboost(self.booster, self.task, n_features, path)


#: at most this many progress lines per fit (plus the last iteration's)
PROGRESS_LINES = 20
#: the training loss of the learning curve is evaluated on every k-th training event,
#: k = ceil(n_train / target), target = n_train / TRAIN_CURVE_FRACTION clipped to
#: [TRAIN_CURVE_MIN_EVENTS, TRAIN_CURVE_EVENTS] (all events when k = 1)
TRAIN_CURVE_EVENTS = 10_000
#: an in-memory fit of at most this many bytes of features uses a plain DMatrix
_PLAIN_DMATRIX_BYTES = 64 << 20
TRAIN_CURVE_MIN_EVENTS = 2_000
TRAIN_CURVE_FRACTION = 32


def _curve_step(n: int) -> int:
    """Every how many of ``n`` training events one enters the training-loss curve (1: all)."""
    target = min(TRAIN_CURVE_EVENTS, max(TRAIN_CURVE_MIN_EVENTS, n // TRAIN_CURVE_FRACTION))
    return max(1, math.ceil(n / target))


def _curve_index(n: int) -> np.ndarray:
    return np.arange(0, n, _curve_step(n))


def _clear_frames(exc: BaseException) -> None:
    """``traceback.clear_frames`` for ``exc`` and the exceptions chained to it (causes, contexts)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def _raise_cache_error(error, cache: str | None) -> None:
    """Raise a StorageError for an XGBoostError that says the external-memory cache
    under ``cache`` (None: no cache) could not be written (a full or missing disk)."""
    from ..errors import StorageError

    text = str(error)
    if cache is None or not (cache in text or "No space left" in text):
        return
    reason = text.split("\n", 1)[0].rsplit(": ", 1)[-1].strip()  # e.g. "No space left on device"
    raise StorageError(
        f"xgboost: cannot write its external-memory cache in {cache} ($TMPDIR, the job's resources.tmpdir):"
        f" {reason}; free space there, point TMPDIR at a larger disk, or set the model's"
        " params.external_memory: false (the binned matrix in memory)"
    ) from error


#: ``external_memory: auto`` caches a streamed fit's binned matrix on disk above this many
#: training events. Below, the binned matrix is small and one in memory trains faster in the
#: same peak: at 600k events x 15 features (300 trees of depth 5, 2 threads) the fit took
#: 8.9 s in memory against 10.5-11.6 s with the disk cache, the train step peaking at
#: 322-324 MiB against 321-326; at 10M events the disk cache saved 200 MiB in the same time.
EXTERNAL_MEMORY_ABOVE = 2_000_000

#: bytes of float32 features per batch handed to XGBoost (:func:`_pages`): an
#: ExtMemQuantileDMatrix makes a page of each batch and pays per page at every iteration
PAGE_BYTES = 32 * 1024 * 1024


def _pages(chunks, page_bytes: int | None = None):
    """The ``(X, y, w)`` chunks of a FitSource gathered, in order, into batches of
    about ``page_bytes`` (default :data:`PAGE_BYTES`) of features (``X`` float32:
    ``page_bytes / (4 n_features)`` events; a chunk of that size or more passes
    alone; empty chunks are left out).

    XGBoost's external-memory matrix makes one page of each batch and reads
    every page at every boosting iteration: plain XGBoost at 6M × 15 training
    events, 60 trees, 2 threads, took 18.3 s with pages of 65,536 events (a
    Parquet row group), 13.3 s with 262k, 11.9 s with 524k, against 12.0 s in
    memory; in the train step at 10M events, 141 s with chunk pages, 97 s with
    these batches, 95 s in memory. The in-memory ``QuantileDMatrix`` builds as
    fast from either. Memory: one batch
    (allocated per batch, so XGBoost may keep it until it has consumed it)
    besides the chunk being copied in. Yields views of the batch's arrays
    (C-contiguous).
    """
    page_bytes = PAGE_BYTES if page_bytes is None else page_bytes
    buf, n = None, 0
    for X, y, w in chunks:
        if not len(X):
            continue
        size = max(1, page_bytes // (4 * max(1, X.shape[1])))
        if buf is not None and n + len(X) > len(buf[0]):
            yield tuple(None if a is None else a[:n] for a in buf)
            buf, n = None, 0
        if len(X) >= size:
            yield X, y, w
            continue
        if buf is None:
            buf = tuple(None if a is None else np.empty((size, *a.shape[1:]), a.dtype) for a in (X, y, w))
        for b, a in zip(buf, (X, y, w)):
            if b is not None:
                b[n : n + len(X)] = a
        n += len(X)
    if n:
        yield tuple(None if a is None else a[:n] for a in buf)


class _SourceIter:
    """An ``xgboost.DataIter`` over the chunks of a FitSource gathered into
    batches of :data:`PAGE_BYTES` (:func:`_pages`; weights times ``scale``),
    keeping every ``step``-th event of the first pass for the training-loss
    curve (``step`` None: none kept); ``cache_prefix``: an external-memory
    matrix's cache files; ``page_bytes``: :func:`_pages`' (0: the chunks as they come, for an
    in-memory matrix: at 600k x 15 training events the train step peaked 18 MiB lower, 305
    MiB against 322-325, in the same time)."""

    def __new__(
        cls, source, scale: float, step: int | None, cache_prefix: str | None = None, page_bytes: int | None = None
    ):
        import xgboost as xgb

        class It(xgb.DataIter):
            def __init__(self):
                super().__init__(release_data=True, cache_prefix=cache_prefix)
                self._chunks, self._kept, self._offset, self.passes, self.n_chunks = None, None, 0, 0, 0
                self._n_kept, self.n_batches = 0, 0

            def _counted(self):
                for chunk in source.chunks():
                    self.n_chunks += self.passes == 0
                    yield chunk

            def next(self, input_data):
                if stopping.pending():  # a stop held (stopping.deferred): end the pass now
                    return False
                if self._chunks is None:
                    self._chunks = _pages(self._counted(), page_bytes)
                try:
                    X, y, w = next(self._chunks)
                except StopIteration:
                    return False
                w = w * scale
                if self.passes == 0:
                    self.n_batches += 1
                if self.passes == 0 and step is not None:
                    first = (-self._offset) % step
                    if self._kept is None:  # one array per column for the whole curve sample
                        n = len(range(0, source.n_events, step))
                        self._kept = tuple(np.empty((n, *a.shape[1:]), a.dtype) for a in (X, y, w))
                    # copied in: a strided view would keep every chunk alive (the whole matrix), and
                    # small per-chunk copies kept between the freed chunks pinned glibc's heap
                    part = range(first, len(X), step)
                    for kept, a in zip(self._kept, (X, y, w)):
                        kept[self._n_kept : self._n_kept + len(part)] = a[first::step]
                    self._n_kept += len(part)
                    self._offset += len(X)
                input_data(data=X, label=y, weight=w)
                return True

            def reset(self):
                if self._chunks is not None:
                    self.passes += 1
                self._chunks = None

            def curve(self):
                return tuple(a[: self._n_kept] for a in self._kept)

            def release(self):
                self._kept = None

        return It()


class _IterationHook:
    """XGBoost callback run after every boosting iteration, reading only the
    evaluation XGBoost has already done for ``evals`` (nothing is computed):

    - forwards the validation loss to :meth:`Family.report_epoch` (tuning's
      pruning), when there is a validation set;
    - logs a progress line (:func:`~hepml_steps.families.base.log_progress`)
      every ``ceil(n_rounds / PROGRESS_LINES)`` iterations and after the last
      one (also when early stopping ends the fit).
    """

    def __new__(cls, family, n_rounds: int):
        import xgboost as xgb

        metric = family._loss_metric
        every = max(1, math.ceil(n_rounds / PROGRESS_LINES))
        started = time.perf_counter()

        class Hook(xgb.callback.TrainingCallback):
            last = None  # (iteration, metrics) of the latest iteration not yet logged

            def after_iteration(self, model, epoch, evals_log):
                losses = {
                    f"{split}_loss": float(values[metric][-1])
                    for split, values in evals_log.items()
                    if values.get(metric)
                }
                self.last = (epoch + 1, losses)
                if (epoch + 1) % every == 0 or epoch + 1 == n_rounds:
                    self.log()
                if "validation_loss" in losses:
                    family.report_epoch(epoch, {"validation_loss": losses["validation_loss"]})
                return stopping.pending()  # a stop held (stopping.deferred): end the boosting here

            def after_training(self, model):
                self.log()  # the last iteration, when early stopping ended the fit off the grid
                return model

            def log(self):
                if self.last is not None:
                    log_progress(
                        log,
                        family.name,
                        "iteration",
                        self.last[0],
                        n_rounds,
                        self.last[1],
                        time.perf_counter() - started,
                    )
                    self.last = None

        return Hook()
