"""A conformance kit for model families, in the spirit of scikit-learn's ``check_estimator``.

``check_family(MyFamily)`` fits the family on small synthetic data (300
training, 100 validation and 200 test events, 4 features) for every task it
declares and checks what the pipeline relies on (docs/plugins.md):

- ``declarations``: name, tasks, parameters, search space (every bound and
  choice builds an instance), flags of the right types (a family declaring
  ``streams_training`` overrides ``fit_stream``); a task the family
  lacks is refused with a FamilyError naming the family;
- ``unknown_parameter``: an unknown hyper-parameter raises a FamilyError
  naming the family and the parameter;
- ``scores``: ``fit`` returns the instance; ``predict_score`` has the shape
  and range of the task (classification: (n,) in [0, 1] and oriented towards
  signal; multiclass: (n, K) probabilities with rows summing to 1; regression:
  (n,) correlated with the target; anomaly: (n,), far-away events scoring
  higher; clustering: integer labels >= -1; dimreduction: (n,) finite);
  ``info`` and ``history`` are JSON-serialisable;
- ``batches``: scoring the events in two batches gives the same scores;
- ``determinism``: two fits with the same seed give identical predictions;
- ``sample_weight``: weights move the result the way they must (up-weighted
  signal raises the signal score, down-weighted regions lose their say, ...);
- ``save_load``: ``save``/``restore`` through JSON metadata give identical
  predictions, also after the pipeline sets ``n_threads`` and ``use_device``;
- ``no_pickle``: no saved file is a pickle; torch files load with
  ``weights_only=True``, skops files with hepml's trusted types, ``.npz`` and
  ``.npy`` with ``allow_pickle=False``;
- ``native_importance``: ``None`` or feature index -> finite importance;
- ``epoch_callback`` (``iterative`` families): ``fit`` reports a finite
  validation loss every iteration, fills ``history["validation_loss"]``,
  and an exception raised by the callback (pruning) ends ``fit``;
- ``missing_class`` (multiclass): K columns even when a class has no
  training event;
- ``onnx``: ``exports_onnx`` families write a model whose ``score`` equals
  ``predict_score`` under ONNX Runtime; the others refuse with a FamilyError.
- ``stream`` (``streams_training`` families): ``fit_stream`` over the
  training events in chunks gives scores of the task's shape and meaning,
  identical for the same seed; a ``streams_validation`` family's fit with
  the validation split in chunks predicts as with it in memory.

A failed check raises :class:`FamilyCheckError` (an ``AssertionError``) naming
the family, the task and the check.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import FamilyError
from ..tasks import names as _task_names
from .base import Family

SEED = 7
N_TRAIN, N_VAL, N_TEST, N_FEATURES = 300, 100, 200, 4
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pck", ".dill", ".sav")
UNKNOWN_PARAM = "hepml_check_no_such_parameter"


class FamilyCheckError(AssertionError):
    """A family failed a conformance check.

    Attributes
    ----------
    family, task, check : str
        The family's name, the task checked (``"-"`` for class-level checks)
        and the check's name.
    """

    def __init__(self, family: str, task: str | None, check: str, detail: str):
        self.family, self.task, self.check = family, task or "-", check
        where = f"family '{family}'" + (f", task '{task}'" if task else "")
        super().__init__(f"{where}: check '{check}' failed: {detail}")


class _Failed(Exception):
    """Raised by a check with what went wrong (turned into FamilyCheckError)."""


def _require(condition, detail: str) -> None:
    if not condition:
        raise _Failed(detail)


# -- synthetic data ------------------------------------------------------------
def _draw(task: str, n: int, rng) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(X, y, region) for ``task``: ``region`` marks the events the weight check re-weights."""
    if task == "clustering":  # a dense strip along feature 0
        X = np.column_stack([rng.uniform(-3, 3, n), rng.normal(0, 0.1, (n, N_FEATURES - 1))])
        return X.astype(np.float32), None, X[:, 0] > 1.0
    X = rng.normal(size=(n, N_FEATURES))
    if task == "dimreduction":
        X = X * np.array([2.0, 1.5, 0.5, 0.3])
        return X.astype(np.float32), None, np.abs(X[:, 0]) > 1.0
    if task == "anomaly":
        return X.astype(np.float32), None, X[:, 0] > 0.5
    if task == "regression":
        noise = rng.normal(size=n)
        return X.astype(np.float32), 2 * X[:, 0] + X[:, 1] + noise, noise > 0
    d = X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=n)
    y = (d > 0.5) if task == "classification" else np.digitize(d, [0.0, 1.0])
    y = y.astype(np.int64)
    return X.astype(np.float32), y, y == (1 if task == "classification" else 0)


class _Case:
    """One family and task under check: its data, fits and cached reference model."""

    def __init__(self, cls, task: str, params: dict | None):
        self.cls, self.task, self.params = cls, task, dict(params or {})
        rng = np.random.default_rng(20240)
        self.X, self.y, self.region = _draw(task, N_TRAIN, rng)
        self.Xv, self.yv, _ = _draw(task, N_VAL, rng)
        self.Xt, self.yt, self.region_t = _draw(task, N_TEST, rng)
        self.n_classes = 3 if task == "multiclass" else None

    def make(self, seed: int = SEED) -> Family:
        fam = self.cls(task=self.task, params=dict(self.params), seed=seed, n_threads=1, device="cpu")
        fam.n_classes = self.n_classes  # as the pipeline does before fit
        return fam

    def fit(self, weights=None, seed: int = SEED, y=None, callback=None) -> Family:
        fam = self.make(seed)
        if callback is not None:
            fam.set_epoch_callback(callback)
        w = np.ones(N_TRAIN) if weights is None else weights
        self.last_returned = fam.fit(
            self.X, self.y if y is None else y, sample_weight=w, X_val=self.Xv, y_val=self.yv, w_val=np.ones(N_VAL)
        )
        return fam

    @cached_property
    def fitted(self) -> Family:
        fam = self.fit()
        self.returned_self = self.last_returned is fam
        return fam

    @cached_property
    def scores(self) -> np.ndarray:
        return np.asarray(self.fitted.predict_score(self.Xt))

    @cached_property
    def saved(self) -> Path:
        """A directory (removed with the case) holding the reference model as the train step writes it."""
        from ..io import write_json
        from ..registry import META_FILE

        self._tmp = tempfile.TemporaryDirectory(prefix="hepml-check-")
        directory = Path(self._tmp.name)
        files = self.fitted.save(directory)
        _require(
            isinstance(files, list) and files and all(isinstance(f, str) for f in files),
            f"save must return the list of file names it wrote, not {files!r}",
        )
        missing = [f for f in files if not (directory / f).is_file()]
        _require(not missing, f"save returned file(s) it did not write: {missing}")
        write_json(directory / META_FILE, self.meta(files))
        return directory

    def restore(self) -> Family:
        """The saved reference model, loaded back as the pipeline loads it (metadata through JSON)."""
        from ..io import read_json
        from ..registry import META_FILE

        return self.cls.restore(self.saved, read_json(self.saved / META_FILE))

    def meta(self, files) -> dict:
        """The model metadata the train step writes next to the files."""
        meta = {
            "model": "check",
            "family": self.cls.name,
            "task": self.task,
            "params": self.fitted.params,
            "seed": SEED,
            "features": [f"f{i}" for i in range(N_FEATURES)],
            "target": None,
            "file_format": self.cls.file_format,
            "device": "cpu",
            "files": files,
        }
        if self.n_classes:
            meta["classes"] = list(range(self.n_classes))
        return meta


def _same(a, b, what: str, exact: bool = True) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    _require(a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}")
    ok = np.array_equal(a, b, equal_nan=True) if exact else np.allclose(a, b, rtol=1e-5, atol=1e-6)
    if not ok:
        raise _Failed(f"{what}: predictions differ (max |difference| {float(np.nanmax(np.abs(a - b))):.3g})")


# -- class-level checks -----------------------------------------------------------
def _check_declarations(cls) -> None:
    """Names, tasks, parameters, search space and flags are declared and consistent."""
    import inspect

    _require(isinstance(cls, type) and issubclass(cls, Family), f"{cls!r} is not a Family subclass")
    _require(not inspect.isabstract(cls), f"abstract methods left: {sorted(cls.__abstractmethods__)}")
    _require(isinstance(cls.name, str) and cls.name, "name must be a non-empty string")
    known = _task_names()
    _require(cls.tasks and set(cls.tasks) <= set(known), f"tasks {cls.tasks!r} must be a non-empty subset of {known}")
    _require(isinstance(cls.file_format, str) and cls.file_format, "file_format must be a non-empty string")
    flags = ("gpu_capable", "iterative", "exports_onnx", "accepts_negative_weights", "streams_training")
    for flag in (*flags, "streams_validation"):
        _require(isinstance(getattr(cls, flag), bool), f"{flag} must be True or False")
    _require(
        not cls.streams_training or cls.fit_stream is not Family.fit_stream,
        "streams_training is True but fit_stream is not overridden",
    )
    _require(not cls.streams_validation or cls.streams_training, "streams_validation needs streams_training")
    cap = cls.max_train_events
    _require(cap is None or (isinstance(cap, int) and cap > 0), f"max_train_events {cap!r}: None or an integer > 0")
    _require(isinstance(cls.default_params, dict), "default_params must be a dict")
    try:
        json.dumps(cls.default_params)
    except TypeError as exc:
        raise _Failed(f"default_params are not JSON-serialisable ({exc})") from exc
    _check_search_space(cls)
    other = next((t for t in _task_names() if t not in cls.tasks), "no_such_task")
    try:
        cls(task=other)
    except FamilyError as exc:
        _require(cls.name in str(exc), f"the FamilyError for task '{other}' does not name the family: {exc}")
    else:
        raise _Failed(f"task '{other}' is not in tasks but was accepted")


def _check_search_space(cls) -> None:
    unknown = sorted(set(cls.search_space) - set(cls.default_params))
    _require(not unknown, f"search_space names parameters not in default_params: {unknown}")
    for name, spec in cls.search_space.items():
        kind = spec.get("type")
        if kind in ("int", "float"):
            _require(
                spec.get("low") is not None and spec.get("high") is not None and spec["low"] < spec["high"],
                f"search_space.{name}: needs low < high",
            )
            points = [spec["low"], spec["high"]]
        else:
            _require(
                kind == "categorical" and spec.get("choices"),
                f"search_space.{name}: type int/float with low/high, or categorical with choices",
            )
            points = list(spec["choices"])
        for value in points:
            value = int(value) if kind == "int" else value
            try:
                cls(task=cls.tasks[0], params={name: value})
            except Exception as exc:
                raise _Failed(
                    f"search_space.{name} = {value!r} does not build the family: {type(exc).__name__}: {exc}"
                ) from exc


def _check_unknown_parameter(cls) -> None:
    """An unknown hyper-parameter raises a FamilyError naming the family and the parameter."""
    try:
        cls(task=cls.tasks[0], params={UNKNOWN_PARAM: 1})
    except FamilyError as exc:
        _require(
            cls.name in str(exc) and UNKNOWN_PARAM in str(exc),
            f"the FamilyError does not name the family and the parameter: {exc}",
        )
        return
    except Exception as exc:
        raise _Failed(f"raised {type(exc).__name__} instead of FamilyError: {exc}") from exc
    raise _Failed(f"unknown parameter {UNKNOWN_PARAM!r} was accepted")


# -- per-task checks ------------------------------------------------------------------
def _check_scores(case: _Case) -> None:
    """Shape, range and meaning of ``predict_score`` for the task; records serialisable."""
    fam, s, n = case.fitted, case.scores, N_TEST
    _require(case.returned_self, "fit must return the instance itself")
    _require(np.issubdtype(s.dtype, np.number), f"scores of dtype {s.dtype} are not numbers")
    shape = (n, case.n_classes) if case.task == "multiclass" else (n,)
    _require(s.shape == shape, f"scores have shape {s.shape}, expected {shape}")
    _require(np.all(np.isfinite(s)), "scores are not all finite")
    _SCORE_MEANING[case.task](case, s)
    _require(isinstance(fam.info, dict) and isinstance(fam.history, dict), "info and history must be dicts")
    from ..io import write_json

    with tempfile.TemporaryDirectory() as tmp:
        try:
            write_json(Path(tmp) / "record.json", {"info": fam.info, "history": fam.history, "params": fam.params})
        except TypeError as exc:
            raise _Failed(f"info, history or params are not JSON-serialisable ({exc})") from exc


def _classification_scores(case: _Case, s) -> None:
    from sklearn.metrics import roc_auc_score

    _require(s.min() >= 0 and s.max() <= 1, f"scores outside [0, 1]: [{s.min():.3g}, {s.max():.3g}]")
    auc = roc_auc_score(case.yt, s)
    _require(auc > 0.6, f"test AUC {auc:.3f}: the score must be the probability of signal (label 1)")


def _multiclass_scores(case: _Case, s) -> None:
    _require(s.min() >= 0 and s.max() <= 1, f"probabilities outside [0, 1]: [{s.min():.3g}, {s.max():.3g}]")
    _require(np.allclose(s.sum(axis=1), 1.0, atol=1e-5), "rows of class probabilities do not sum to 1")
    accuracy = float(np.mean(s.argmax(axis=1) == case.yt))
    _require(accuracy > 0.45, f"test accuracy {accuracy:.3f} (chance 1/3): column i must be class i")


def _regression_scores(case: _Case, s) -> None:
    r = float(np.corrcoef(s, case.yt)[0, 1])
    _require(r > 0.3, f"correlation {r:.3f} with the target: the score must be the prediction")


def _anomaly_scores(case: _Case, s) -> None:
    far = np.asarray(case.fitted.predict_score(case.Xt + np.float32(6.0)), dtype=np.float64)
    _require(far.mean() > s.mean(), "events far from the training data must score higher (more anomalous)")


def _clustering_scores(case: _Case, s) -> None:
    _require(np.all(s == np.round(s)) and s.min() >= -1, "cluster labels must be integers >= -1 (-1: noise)")


_SCORE_MEANING: dict[str, Callable] = {
    "classification": _classification_scores,
    "multiclass": _multiclass_scores,
    "regression": _regression_scores,
    "anomaly": _anomaly_scores,
    "clustering": _clustering_scores,
    "dimreduction": lambda case, s: None,
}


def _check_batches(case: _Case) -> None:
    """Scoring in two batches gives the scores of one call (predict works in batches)."""
    k = N_TEST // 3
    parts = [np.asarray(case.fitted.predict_score(case.Xt[:k])), np.asarray(case.fitted.predict_score(case.Xt[k:]))]
    _same(np.concatenate(parts), case.scores, "two batches vs one", exact=False)


def _check_stream(case: _Case) -> None:
    """``streams_training``: ``fit_stream`` over the training events in chunks gives a
    model whose scores have the task's shape, range and meaning, the same for the same seed."""
    from types import SimpleNamespace

    from ..dataset import ArraySource

    def fit():
        fam = case.make()
        source = ArraySource(case.X, case.y, np.ones(N_TRAIN), chunk_events=70, task=case.task)
        out = fam.fit_stream(source, X_val=case.Xv, y_val=case.yv, w_val=np.ones(N_VAL))
        _require(out is fam, "fit_stream must return the instance itself")
        return fam

    fam = fit()
    s = np.asarray(fam.predict_score(case.Xt))
    shape = (N_TEST, case.n_classes) if case.task == "multiclass" else (N_TEST,)
    _require(s.shape == shape and np.all(np.isfinite(s)), f"streamed scores have shape {s.shape}, expected {shape}")
    _SCORE_MEANING[case.task](SimpleNamespace(fitted=fam, Xt=case.Xt, yt=case.yt, n_classes=case.n_classes), s)
    _same(fit().predict_score(case.Xt), s, f"a second streamed fit with seed {SEED}")
    if case.make().streams_validation:  # the validation split in chunks: the same fit as in memory
        fam = case.make()
        val = ArraySource(case.Xv, case.yv, np.ones(N_VAL), chunk_events=50, task=case.task)
        source = ArraySource(case.X, case.y, np.ones(N_TRAIN), chunk_events=70, task=case.task)
        _require(fam.fit_stream(source, X_val=val) is fam, "fit_stream must return the instance itself")
        _same(fam.predict_score(case.Xt), s, "a streamed fit with the validation split in chunks", exact=False)


def _check_determinism(case: _Case) -> None:
    """Two fits with the same seed give identical predictions."""
    _same(case.fit().predict_score(case.Xt), case.scores, f"a second fit with seed {SEED}")


def _weights(case: _Case, factor: float) -> np.ndarray:
    w = np.where(case.region, factor, 1.0)
    return w * len(w) / w.sum()  # mean 1, as the train step passes them


def _check_sample_weight(case: _Case) -> None:
    """Re-weighting a region of the training events moves the result the way it must.

    Classification, multiclass, regression: up-weighting (20x) signal, class 0,
    or the events above the true regression function must move the scores
    (the signal score, class 0's probability, the prediction) up for more
    test events than down, by at least 10% of them, and raise their mean.
    Anomaly: down-weighting (1/100) a region must make its events more
    anomalous relative to the rest. Clustering, dimreduction: down-weighting
    a region must change the clusters or the first component.
    """
    up = case.task in ("classification", "multiclass", "regression")
    s_u = np.asarray(case.scores, dtype=np.float64)
    s_w = np.asarray(case.fit(_weights(case, 20.0 if up else 0.01)).predict_score(case.Xt), dtype=np.float64)
    if up:
        if case.task == "multiclass":
            s_u, s_w = s_u[:, 0], s_w[:, 0]
        rose, fell = float(np.mean(s_w > s_u)), float(np.mean(s_w < s_u))
        what = {
            "classification": "signal 20x",
            "multiclass": "class 0 20x",
            "regression": "events above the truth 20x",
        }[case.task]
        _require(
            rose - fell > 0.1 and s_w.mean() > s_u.mean(),
            f"up-weighting {what} moved {rose:.0%} of the test scores up and {fell:.0%} down, the mean by "
            f"{s_w.mean() - s_u.mean():+.3g} (needs 10% more up than down, and a higher mean): "
            "sample_weight ignored?",
        )
    elif case.task == "anomaly":
        r = case.region_t
        gain = (s_w[r].mean() - s_w[~r].mean()) - (s_u[r].mean() - s_u[~r].mean())
        _require(
            gain > 0,
            "down-weighting a region 100x did not make its events more anomalous than the rest: sample_weight ignored?",
        )
    else:
        _check_changed(case.task, s_u, s_w)


def _check_negative_weights(case: _Case) -> None:
    """A family declaring ``accepts_negative_weights`` fits on signed weights
    (every 5th event negative, mean 1) and its scores keep the task's shape,
    range and meaning (as in ``scores``)."""
    w = np.where(np.arange(N_TRAIN) % 5 == 0, -1.0, 1.0)
    try:
        s = np.asarray(case.fit(w * len(w) / w.sum()).predict_score(case.Xt))
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        raise _Failed(
            f"accepts_negative_weights is True but fit on signed weights failed: {type(exc).__name__}: {exc}"
        ) from exc
    shape = (N_TEST, case.n_classes) if case.task == "multiclass" else (N_TEST,)
    _require(
        s.shape == shape and np.all(np.isfinite(s)),
        f"after a fit on signed weights the scores have shape {s.shape} (expected {shape}) or are not finite",
    )
    _SCORE_MEANING[case.task](case, s)


def _check_changed(task: str, s_u, s_w) -> None:
    if task == "clustering":
        from sklearn.metrics import adjusted_rand_score

        same = adjusted_rand_score(s_u, s_w)
        _require(
            same < 0.99,
            f"down-weighting a region 100x left the clusters unchanged (ARI {same:.3f}): sample_weight ignored?",
        )
    else:
        same = abs(float(np.corrcoef(s_u, s_w)[0, 1]))
        _require(
            same < 0.99,
            f"down-weighting a region 100x left the first component unchanged (|r| {same:.3f}): sample_weight ignored?",
        )


def _check_save_load(case: _Case) -> None:
    """save/restore gives identical predictions, also with other threads and devices."""
    loaded = case.restore()
    _same(loaded.predict_score(case.Xt), case.scores, "the loaded model")
    loaded.n_threads = 2  # predict sets the step's threads on the loaded model
    _same(loaded.predict_score(case.Xt), case.scores, "the loaded model with n_threads = 2", exact=False)
    for device in ("cpu", "auto"):  # predict passes the model's device request, "auto" by default
        loaded.use_device(device)
        _require(isinstance(loaded.info.get("device"), str), f"use_device({device!r}) must set info['device']")
        _same(loaded.predict_score(case.Xt), case.scores, f"the loaded model after use_device({device!r})", exact=False)


def _check_no_pickle(case: _Case) -> None:
    """No saved file is (or holds) a pickle that loading would execute."""
    for path in sorted(p for p in case.saved.rglob("*") if p.is_file()):
        _check_safe_file(path)


def _check_safe_file(path: Path) -> None:
    name = path.name
    _require(path.suffix.lower() not in PICKLE_SUFFIXES, f"{name}: a pickle file")
    head = path.read_bytes()[:2]
    _require(not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), f"{name}: starts like a pickle")
    try:
        if path.suffix == ".skops":
            from .sk import skops_load

            skops_load(path)
        elif path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        elif zipfile.is_zipfile(path):
            _check_safe_zip(path)
    except _Failed:
        raise
    except Exception as exc:
        raise _Failed(f"{name} does not load safely: {type(exc).__name__}: {exc}") from exc


def _check_safe_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        members = z.namelist()
    if any(m.endswith(".pkl") for m in members):  # torch.save's format: only tensors may be in it
        import torch

        torch.load(path, weights_only=True, map_location="cpu")
    elif members and all(m.endswith(".npy") for m in members):  # .npz
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                z[key]
    else:
        bad = [m for m in members if m.lower().endswith(PICKLE_SUFFIXES)]
        _require(not bad, f"{path.name} holds pickle file(s) {bad}")


def _check_native_importance(case: _Case) -> None:
    """``native_importance`` of a loaded model is None or feature index -> finite value >= 0."""
    raw = case.restore().native_importance()  # as the importance step calls it
    if raw is None:
        return
    _require(isinstance(raw, dict), f"native_importance must return a dict or None, not {type(raw).__name__}")
    bad = [k for k in raw if not (isinstance(k, (int, np.integer)) and 0 <= k < N_FEATURES)]
    _require(not bad, f"keys {bad} are not feature column indices 0..{N_FEATURES - 1}")
    values = np.asarray(list(raw.values()), dtype=np.float64)
    _require(np.all(np.isfinite(values)) and np.all(values >= 0), "importances must be finite and >= 0")


class _Prune(Exception):
    """What the check's callback raises to stand for a pruned trial."""


def _check_epoch_callback(case: _Case) -> None:
    """An iterative family reports a finite validation loss every iteration and stops when told."""
    seen: list[tuple[int, dict]] = []
    fam = case.fit(callback=lambda epoch, metrics: seen.append((epoch, dict(metrics))))
    _require(
        seen,
        "iterative = True but fit never called the epoch callback (see set_epoch_callback and "
        "report_epoch): tuning could not prune it",
    )
    epochs = [e for e, _ in seen]
    _require(epochs == sorted(set(epochs)) and epochs[0] >= 0, f"epochs {epochs[:5]}... must be 0-based, increasing")
    losses = [m.get("validation_loss") for _, m in seen]
    _require(
        all(isinstance(v, float) and np.isfinite(v) for v in losses),
        "every report must hold a finite float 'validation_loss' when fit has a validation set",
    )
    curve = fam.history.get("validation_loss")
    _require(curve and np.all(np.isfinite(curve)), "history['validation_loss'] (the learning curve) is empty")

    def prune(epoch, metrics):
        raise _Prune()

    try:
        case.fit(callback=prune)
    except _Prune:
        return
    raise _Failed("an exception raised by the epoch callback did not end fit (tuning prunes so)")


def _check_missing_class(case: _Case) -> None:
    """K columns of probabilities even when a class has no training event."""
    y = np.where(case.y == 2, 1, case.y)  # no event of class 2
    s = np.asarray(case.fit(y=y).predict_score(case.Xt))
    _require(
        s.shape == (N_TEST, 3),
        f"scores have shape {s.shape} with n_classes = 3 but class 2 absent from training; expected {(N_TEST, 3)}",
    )
    _require(np.allclose(s.sum(axis=1), 1.0, atol=1e-5), "rows do not sum to 1 when a class is absent")


def _check_onnx(case: _Case) -> None:
    """``to_onnx`` reproduces ``predict_score`` (``exports_onnx``) or refuses naming the family."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        if not case.cls.exports_onnx:
            try:
                case.fitted.to_onnx(path, N_FEATURES)
            except FamilyError as exc:
                _require(case.cls.name in str(exc), f"the FamilyError does not name the family: {exc}")
                return
            raise _Failed("exports_onnx is False but to_onnx did not raise FamilyError")
        case.fitted.to_onnx(path, N_FEATURES)
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(["score"], {"features": case.Xt.astype(np.float32)})[0]
    _require(got.shape == case.scores.shape, f"ONNX score has shape {got.shape}, predict_score {case.scores.shape}")
    diff = float(np.max(np.abs(got - case.scores)))
    _require(
        diff < 1e-4 * max(1.0, float(np.max(np.abs(case.scores)))),
        f"ONNX score differs from predict_score by up to {diff:.3g}",
    )


# -- running them -----------------------------------------------------------------------
#: (name, function, applies to (cls, task)); class-level checks come first
_CLASS_CHECKS = (("declarations", _check_declarations), ("unknown_parameter", _check_unknown_parameter))
_TASK_CHECKS: tuple[tuple[str, Callable, Callable], ...] = (
    ("scores", _check_scores, lambda cls, task: True),
    ("batches", _check_batches, lambda cls, task: True),
    ("determinism", _check_determinism, lambda cls, task: True),
    ("sample_weight", _check_sample_weight, lambda cls, task: True),
    ("negative_weights", _check_negative_weights, lambda cls, task: cls.accepts_negative_weights),
    ("save_load", _check_save_load, lambda cls, task: True),
    ("no_pickle", _check_no_pickle, lambda cls, task: True),
    ("native_importance", _check_native_importance, lambda cls, task: True),
    ("epoch_callback", _check_epoch_callback, lambda cls, task: cls.iterative),
    ("missing_class", _check_missing_class, lambda cls, task: task == "multiclass"),
    ("onnx", _check_onnx, lambda cls, task: True),
    ("stream", _check_stream, lambda cls, task: cls.streams_training),
)


def _named(cls, task: str | None, check: str, fn: Callable, arg) -> Callable[[], None]:
    """``fn(arg)`` with any failure turned into a FamilyCheckError naming family, task and check."""

    def run() -> None:
        try:
            fn(arg)
        except _Failed as exc:
            raise FamilyCheckError(getattr(cls, "name", repr(cls)), task, check, str(exc)) from None
        except Exception as exc:
            raise FamilyCheckError(
                getattr(cls, "name", repr(cls)), task, check, f"raised {type(exc).__name__}: {exc}"
            ) from exc

    return run


def family_checks(cls, params: dict | None = None, tasks=None) -> list[tuple[str | None, str, Callable[[], None]]]:
    """Every check of ``cls`` as ``(task, check name, run)``, for ``pytest.mark.parametrize``.

    The checks of one task share the reference fit (made by the first check
    that needs it), so run them in one process.

    Parameters
    ----------
    cls : type
        A :class:`~hepml_steps.families.base.Family` subclass.
    params : dict, optional
        Hyper-parameters for every fit (e.g. fewer trees, to keep checks fast).
    tasks : iterable of str, optional
        The tasks to check; default: all of ``cls.tasks``.

    Returns
    -------
    list of (str or None, str, callable)
        Task (``None`` for class-level checks), check name, and a callable that
        raises :class:`FamilyCheckError` when the check fails.
    """
    checks = [(None, name, _named(cls, None, name, fn, cls)) for name, fn in _CLASS_CHECKS]
    for task in getattr(cls, "tasks", ()) if tasks is None else tasks:
        case = _LazyCase(cls, task, params)
        checks += [
            (task, name, _named(cls, task, name, lambda c, f=fn: f(c.get()), case))
            for name, fn, applies in _TASK_CHECKS
            if applies(cls, task)
        ]
    return checks


class _LazyCase:
    """Builds the :class:`_Case` on first use, so listing checks fits nothing."""

    def __init__(self, cls, task: str, params: dict | None):
        self.args, self.case = (cls, task, params), None

    def get(self) -> _Case:
        if self.case is None:
            self.case = _Case(*self.args)
        return self.case


def check_family(cls, params: dict | None = None, tasks=None) -> None:
    """Check that a family keeps the plugin contract (docs/plugins.md); raise on the first failure.

    Fits ``cls`` on small synthetic data (a few hundred events) for every task
    it declares and runs every check of this module.

    Parameters
    ----------
    cls : type
        A :class:`~hepml_steps.families.base.Family` subclass.
    params : dict, optional
        Hyper-parameters for every fit (e.g. fewer trees, to keep checks fast).
    tasks : iterable of str, optional
        The tasks to check; default: all of ``cls.tasks``.

    Raises
    ------
    FamilyCheckError
        An ``AssertionError`` naming the family, the task and the failed check.

    Examples
    --------
    >>> from hepml_steps.families import check_family
    >>> check_family(MyFamily, params={"n_estimators": 20})  # doctest: +SKIP
    """
    for _task, _name, run in family_checks(cls, params, tasks):
        run()
