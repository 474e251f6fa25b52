"""Leakage check before a fit: a feature that alone separates the classes.

A column that tells signal from background by itself almost perfectly is
rarely physics: an identifier (signal MC and a data sideband with different
``run`` ranges), a truth branch, or a column filled differently per sample.
Trained on, it gives AUC 1.000 and a model that learns nothing usable.

For a task that separates signal from background
(:attr:`hepml_steps.tasks.Task.separates_signal`) each feature's
single-variable AUC on the training split is computed with
:func:`sklearn.metrics.roc_auc_score`, weighted by the fit weights
(negative weights left out of this diagnostic), on at most
:data:`MAX_EVENTS` events (a fixed random subsample); a missing value (NaN)
counts as a value below every other, so a column missing in one class only
is caught too. A feature is flagged when its AUC is ≥ ``auc`` or ≤ 1 −
``auc`` (default 0.995), or when the features step found it identifier-like
(an integer column named run/event/..., unique in every event, or monotone in
event order; ``identifier_like`` of :mod:`hepml_steps.features`).

Flags are logged, recorded (the training record's ``leakage``) and shown on
the leaderboard; ``training.leakage: fail`` makes them an error, ``off``
skips the check.
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import DataError

log = logging.getLogger("hepml.leakage")

ACTIONS = ("warn", "fail", "off")
#: default single-variable AUC from which a feature is flagged (and 1 − it)
AUC_LIMIT = 0.995
#: events used at most for the AUCs
MAX_EVENTS = 200_000


def single_variable_aucs(X, labels, weights=None, max_events: int = MAX_EVENTS, seed: int = 0) -> np.ndarray:
    """The AUC of each column of ``X`` alone as a score for ``labels``.

    Parameters
    ----------
    X : ndarray of shape (n_events, n_features)
        NaN counts as a value below every other.
    labels : ndarray of shape (n_events,)
        1 signal, 0 background.
    weights : ndarray of shape (n_events,), optional
        Event weights; events with weight ≤ 0 are left out.
    max_events : int
        A fixed random subsample of at most this many events is used.

    Returns
    -------
    ndarray of shape (n_features,)
        NaN where a class has no events.
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = np.flatnonzero(w > 0)
    if len(keep) > max_events:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_events, replace=False))
    y, w = labels[keep], w[keep]
    if len(np.unique(y)) < 2:
        return np.full(X.shape[1], np.nan)
    out = np.empty(X.shape[1])
    for j in range(X.shape[1]):
        x = np.asarray(X[keep, j], dtype=np.float64)
        nan = np.isnan(x)
        if nan.all():
            out[j] = 0.5
            continue
        if nan.any():
            x = np.where(nan, np.nanmin(x) - 1.0, x)
        out[j] = roc_auc_score(y, x, sample_weight=w)
    return out


def check(data, what: str, action: str = "warn", auc: float = AUC_LIMIT, separates: bool = True) -> dict:
    """Flag leaking features of a training :class:`~hepml_steps.dataset.Dataset`.

    Parameters
    ----------
    data : Dataset
        The training split as the model sees it (``X``, ``labels``,
        ``fit_weights``, ``columns``, ``prepared``).
    what : str
        How messages name the model.
    action : {"warn", "fail", "off"}
    auc : float
        Flag a feature whose AUC is ≥ ``auc`` or ≤ 1 − ``auc``.
    separates : bool
        Whether the task separates signal from background (else only the
        identifier-like columns are checked).

    Returns
    -------
    dict
        ``action``, ``auc_limit``, ``aucs`` (column -> AUC), ``flagged``
        (list of ``{column, auc, reason}``).

    Raises
    ------
    DataError
        ``action`` is ``fail`` and a feature is flagged.
    """
    if action == "off":
        return {"action": "off", "flagged": []}
    aucs = {}
    if separates:
        w = data.fit_weights if data.fit_weights is not None else data.weights
        aucs = dict(zip(data.columns, single_variable_aucs(data.X, data.labels, w).tolist()))
    ids = (data.prepared or {}).get("identifier_like") or {}
    flagged = []
    for c in data.columns:
        a = aucs.get(c)
        reasons = []
        if a is not None and np.isfinite(a) and (a >= auc or a <= 1 - auc):
            reasons.append(f"separates the classes alone (AUC {a:.4f})")
        if c in ids:
            reasons.append(ids[c])
        if reasons:
            flagged.append({"column": c, "auc": a, "reason": "; ".join(reasons)})
    record = {"action": action, "auc_limit": auc, "aucs": aucs, "flagged": flagged}
    if flagged:
        text = "; ".join(f"'{f['column']}': {f['reason']}" for f in flagged)
        hint = "leave it out (features.exclude, features.columns or the model's features) or set training.leakage: warn"
        if action == "fail":
            raise DataError(f"{what}: possible leakage: {text}; {hint} (training.leakage: fail)")
        log.warning("%s: possible leakage: %s; a model trained on it learns the sample, not the physics", what, text)
    return record
