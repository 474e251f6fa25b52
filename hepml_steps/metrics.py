"""Figures of merit, every one honouring per-event weights.

HEP samples carry event weights (cross-section normalisation, generator
weights, sometimes negative), so every quantity here is a weighted sum:
an event of weight w counts w times. With no weights every event counts once
and the results equal the textbook (and scikit-learn) definitions.

Classification (``y`` = 1 signal, 0 background; ``score`` = signal
probability or any monotone discriminant):

- :func:`threshold_metrics` at a score cut: weighted tp/fp/tn/fn, accuracy,
  error rate, precision, sensitivity (signal efficiency, recall), specificity
  (background rejection), TMVA's combined "ROC" = sqrt(SNS² + SPC²)/√2, F1 and
  the geometric mean sqrt(SNS·SPC);
- :func:`roc_curve`, :func:`roc_auc`, :func:`signal_efficiency_at`
  (signal efficiency at fixed background efficiency);
- losses :func:`zero_one_loss`, :func:`mse`, :func:`absolute_loss`,
  :func:`hinge_loss`, :func:`cross_entropy`;
- :func:`ks_overtraining`: weighted Kolmogorov–Smirnov test of the train
  against the test score distribution (TMVA's overtraining check).

Multiclass (``y`` = class index 0..K-1, ``proba`` = events x K class
probabilities): :func:`multiclass_metrics`. Regression:
:func:`regression_metrics`. Clustering: :func:`clustering_metrics`.
Ratios whose denominator is zero are ``nan`` (written as ``null`` in JSON).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import DataError


def _arrays(y, score, sample_weight=None):
    y = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if len(y) != len(s):
        raise DataError(f"metrics: {len(y)} labels but {len(s)} scores")
    w = np.ones_like(s) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    if len(w) != len(s):
        raise DataError(f"metrics: {len(s)} scores but {len(w)} weights")
    return y, s, w


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b != 0 else math.nan


def _class_sums(y, w):
    ws, wb = float(w[y == 1].sum()), float(w[y == 0].sum())
    if ws <= 0 or wb <= 0:
        raise DataError(f"metrics: need signal and background with positive total weight "
                        f"(signal {ws:g}, background {wb:g})")
    return ws, wb


# -- at a threshold ------------------------------------------------------------
def weighted_confusion(y, predicted, sample_weight=None) -> dict:
    """Weighted counts of true/false positives/negatives (positive = signal)."""
    y, p, w = _arrays(y, predicted, sample_weight)
    pos, sig = p >= 0.5, y == 1
    return {"tp": float(w[pos & sig].sum()), "fp": float(w[pos & ~sig].sum()),
            "tn": float(w[~pos & ~sig].sum()), "fn": float(w[~pos & sig].sum())}


def threshold_metrics(y, score, threshold: float = 0.5, sample_weight=None) -> dict:
    """All confusion-matrix figures of merit for events with ``score >= threshold``
    called signal."""
    y, s, w = _arrays(y, score, sample_weight)
    c = weighted_confusion(y, (s >= threshold).astype(np.float64), w)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    total = tp + fp + tn + fn
    sns, spc, prec = _div(tp, tp + fn), _div(tn, tn + fp), _div(tp, tp + fp)
    acc = _div(tp + tn, total)
    return {**c,
            "accuracy": acc,
            "error_rate": 1.0 - acc if not math.isnan(acc) else math.nan,
            "precision": prec,
            "sensitivity": sns,
            "specificity": spc,
            "roc_combined": math.sqrt(sns ** 2 + spc ** 2) / math.sqrt(2.0),
            "f1": _div(2 * prec * sns, prec + sns) if not (math.isnan(prec) or math.isnan(sns)) else math.nan,
            "geometric_mean": math.sqrt(sns * spc) if sns >= 0 and spc >= 0 else math.nan}


# -- threshold-free ------------------------------------------------------------
def roc_curve(y, score, sample_weight=None):
    """Weighted ROC curve: ``(fpr, tpr, thresholds)`` from the strictest cut
    (nothing selected, (0, 0)) to the loosest (everything, (1, 1)).

    Tied scores form one point, so the curve does not depend on event order.
    """
    y, s, w = _arrays(y, score, sample_weight)
    ws, wb = _class_sums(y, w)
    order = np.argsort(-s, kind="mergesort")
    s, y, w = s[order], y[order], w[order]
    tps = np.cumsum(w * (y == 1))
    fps = np.cumsum(w * (y == 0))
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tpr = np.r_[0.0, tps[last] / ws]
    fpr = np.r_[0.0, fps[last] / wb]
    thresholds = np.r_[np.inf, s[last]]
    return fpr, tpr, thresholds


def roc_auc(y, score, sample_weight=None) -> float:
    """Weighted area under the ROC curve (trapezoids; ties count one half)."""
    fpr, tpr, _ = roc_curve(y, score, sample_weight)
    return float(np.trapezoid(tpr, fpr))


def signal_efficiency_at(y, score, bkg_efficiency, sample_weight=None):
    """Signal efficiency at the given background efficiency (or efficiencies),
    interpolated linearly along the weighted ROC curve."""
    fpr, tpr, _ = roc_curve(y, score, sample_weight)
    eff = np.asarray(bkg_efficiency, dtype=np.float64)
    if np.any((eff < 0) | (eff > 1)):
        raise DataError(f"metrics: background efficiencies must lie in [0, 1], got {eff.tolist()}")
    # fpr is non-decreasing; on flat stretches take the highest tpr reached
    fpr_u, idx = np.unique(fpr[::-1], return_index=True)
    tpr_u = tpr[::-1][idx]
    out = np.interp(eff, fpr_u, tpr_u)
    return float(out) if out.ndim == 0 else out


# -- losses (score read as the signal probability) -------------------------------
def _wmean(values, w) -> float:
    total = float(w.sum())
    if total == 0:
        raise DataError("metrics: total event weight is zero")
    return float(np.sum(values * w) / total)


def zero_one_loss(y, score, sample_weight=None, threshold: float = 0.5) -> float:
    y, s, w = _arrays(y, score, sample_weight)
    return _wmean(((s >= threshold).astype(np.float64) != y).astype(np.float64), w)


def mse(y, score, sample_weight=None) -> float:
    y, s, w = _arrays(y, score, sample_weight)
    return _wmean((s - y) ** 2, w)


def absolute_loss(y, score, sample_weight=None) -> float:
    y, s, w = _arrays(y, score, sample_weight)
    return _wmean(np.abs(s - y), w)


def hinge_loss(y, score, sample_weight=None) -> float:
    """Hinge loss with labels ±1 and margin 2·score − 1 (score = probability)."""
    y, s, w = _arrays(y, score, sample_weight)
    return _wmean(np.maximum(0.0, 1.0 - (2 * y - 1) * (2 * s - 1)), w)


def cross_entropy(y, score, sample_weight=None, eps: float = 1e-15) -> float:
    y, s, w = _arrays(y, score, sample_weight)
    p = np.clip(s, eps, 1 - eps)
    return _wmean(-(y * np.log(p) + (1 - y) * np.log1p(-p)), w)


# -- overtraining ----------------------------------------------------------------
def _ecdf(values, w, grid):
    order = np.argsort(values, kind="mergesort")
    v, cw = values[order], np.cumsum(w[order])
    idx = np.searchsorted(v, grid, side="right")
    return np.where(idx > 0, cw[np.maximum(idx - 1, 0)], 0.0) / cw[-1]


def _n_eff(w) -> float:
    return float(w.sum() ** 2 / np.sum(w ** 2)) if np.sum(w ** 2) > 0 else 0.0


def ks_overtraining(score_train, score_test, w_train=None, w_test=None) -> dict:
    """Weighted two-sample Kolmogorov–Smirnov test of train vs test scores.

    The distance is between the weighted empirical CDFs; the p-value uses the
    asymptotic Kolmogorov distribution with effective sample sizes
    N_eff = (Σw)²/Σw² (equal to N without weights). A small p-value means the
    model scores its training events differently from unseen ones:
    overtraining.
    """
    from scipy.special import kolmogorov

    a = np.asarray(score_train, dtype=np.float64).ravel()
    b = np.asarray(score_test, dtype=np.float64).ravel()
    wa = np.ones_like(a) if w_train is None else np.abs(np.asarray(w_train, dtype=np.float64).ravel())
    wb = np.ones_like(b) if w_test is None else np.abs(np.asarray(w_test, dtype=np.float64).ravel())
    if len(a) == 0 or len(b) == 0 or wa.sum() == 0 or wb.sum() == 0:
        return {"statistic": math.nan, "pvalue": math.nan, "n_eff_train": 0.0, "n_eff_test": 0.0}
    grid = np.union1d(a, b)
    d = float(np.max(np.abs(_ecdf(a, wa, grid) - _ecdf(b, wb, grid))))
    na, nb = _n_eff(wa), _n_eff(wb)
    ne = na * nb / (na + nb)
    p = float(kolmogorov((math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d)) if ne > 0 else math.nan
    return {"statistic": d, "pvalue": min(max(p, 0.0), 1.0), "n_eff_train": na, "n_eff_test": nb}


# -- regression ------------------------------------------------------------------
def weighted_quantile(values, q, w=None):
    v = np.asarray(values, dtype=np.float64).ravel()
    w = np.ones_like(v) if w is None else np.asarray(w, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    v, cw = v[order], np.cumsum(w[order])
    cdf = (cw - 0.5 * w[order]) / cw[-1]
    return np.interp(q, cdf, v)


def regression_metrics(y, prediction, sample_weight=None) -> dict:
    """MSE, MAE, RMSE, R², bias (mean residual), resolution (std of residuals),
    and the robust resolution (half the central 68 % width of the residuals)
    with its relative version on prediction/target − 1."""
    y, p, w = _arrays(y, prediction, sample_weight)
    r = p - y
    mse_ = _wmean(r ** 2, w)
    ybar = _wmean(y, w)
    var_y = _wmean((y - ybar) ** 2, w)
    bias = _wmean(r, w)
    q16, q84 = weighted_quantile(r, [0.16, 0.84], w)
    out = {"mse": mse_, "rmse": math.sqrt(mse_), "mae": _wmean(np.abs(r), w),
           "r2": 1.0 - _div(mse_, var_y), "bias": bias,
           "resolution": math.sqrt(max(_wmean((r - bias) ** 2, w), 0.0)),
           "resolution_68": float(q84 - q16) / 2.0}
    nz = y != 0
    if nz.any():
        rel = p[nz] / y[nz] - 1.0
        r16, r50, r84 = weighted_quantile(rel, [0.16, 0.5, 0.84], w[nz])
        out["relative_bias_median"] = float(r50)
        out["relative_resolution_68"] = float(r84 - r16) / 2.0
    return out


# -- clustering ------------------------------------------------------------------
def clustering_metrics(X, labels, y_true=None, max_events: int = 5000, seed: int = 0) -> dict:
    """Number of clusters, noise fraction (label −1, DBSCAN), silhouette on at
    most ``max_events`` events, and — when true classes are known — the adjusted
    Rand index and the purity against signal/background."""
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    labels = np.asarray(labels).ravel().astype(np.int64)
    clusters = np.unique(labels[labels >= 0])
    out = {"n_clusters": int(len(clusters)), "noise_fraction": float(np.mean(labels < 0)) if len(labels) else math.nan,
           "silhouette": math.nan}
    if X is not None and 2 <= len(np.unique(labels)) < len(labels):
        X = np.asarray(X, dtype=np.float64)
        idx = np.arange(len(labels))
        if len(idx) > max_events:
            idx = np.sort(np.random.default_rng(seed).choice(idx, max_events, replace=False))
        if len(np.unique(labels[idx])) >= 2:
            out["silhouette"] = float(silhouette_score(X[idx], labels[idx]))
    if y_true is not None:
        y_true = np.asarray(y_true).ravel()
        out["adjusted_rand"] = float(adjusted_rand_score(y_true, labels))
        purity = 0.0
        for c in np.unique(labels):
            _, counts = np.unique(y_true[labels == c], return_counts=True)
            purity += counts.max()
        out["purity"] = purity / len(labels) if len(labels) else math.nan
    return out


# -- multiclass -------------------------------------------------------------------
def multiclass_metrics(y, proba, sample_weight=None, eps: float = 1e-15) -> dict:
    """Weighted figures of a K-class classifier (``y`` in 0..K-1, ``proba`` events x K).

    Events of a class the model never saw (``y`` = −1) cannot be scored
    against any of its K outputs: every figure below is computed without
    them, and their share of the total weight is ``unseen_class_fraction``.

    accuracy and error rate of the most probable class; per class ``c``
    precision, sensitivity (recall), F1 and the one-vs-rest ROC AUC of
    ``proba[:, c]``; the ``*_macro`` unweighted means of precision,
    sensitivity and F1 over the classes that occur (true or predicted), with
    scikit-learn's conventions (a class never predicted has precision 0;
    F1 = 2 TP / (2 TP + FP + FN)); ``roc_auc`` is the macro one-vs-rest AUC
    over the classes that have events and rivals; cross-entropy (mean −log p
    of the true class); and the weighted confusion matrix
    ``confusion[true][predicted]``.
    """
    P = np.asarray(proba, dtype=np.float64)
    if P.ndim != 2:
        raise DataError(f"metrics: multiclass probabilities must be events x classes, got shape {P.shape}")
    y = np.asarray(y).ravel().astype(np.int64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    if not len(y) == len(P) == len(w):
        raise DataError(f"metrics: {len(y)} labels, {len(P)} probability rows, {len(w)} weights")
    k = P.shape[1]
    if len(y) and y.max() >= k:
        raise DataError(f"metrics: class index {int(y.max())} but only {k} probability columns")
    known = y >= 0
    total_all = float(w.sum())
    out: dict = {"n_classes": k,
                 "unseen_class_fraction": _div(float(w[~known].sum()), total_all) if len(y) else math.nan}
    y, P, w = y[known], P[known], w[known]
    pred = P.argmax(axis=1) if len(P) else np.empty(0, dtype=np.int64)
    total = float(w.sum())
    conf = np.zeros((k, k))
    np.add.at(conf, (y, pred), w)
    out["accuracy"] = _div(float(np.trace(conf)), total)
    out["error_rate"] = 1.0 - out["accuracy"] if total else math.nan
    occurring, aucs = [], []
    for c in range(k):
        tp, n_pred, n_true = conf[c, c], conf[:, c].sum(), conf[c, :].sum()
        prec = _div(tp, n_pred) if n_pred else (0.0 if n_true else math.nan)
        rec = _div(tp, n_true) if n_true else (0.0 if n_pred else math.nan)
        fp, fn = n_pred - tp, n_true - tp
        f1 = _div(2 * tp, 2 * tp + fp + fn) if (n_pred or n_true) else math.nan
        auc = math.nan
        if w[y == c].sum() > 0 and w[y != c].sum() > 0:
            auc = roc_auc((y == c).astype(np.float64), P[:, c], w)
        out[f"precision_class{c}"], out[f"sensitivity_class{c}"] = prec, rec
        out[f"f1_class{c}"], out[f"roc_auc_class{c}"] = f1, auc
        if n_pred or n_true:
            occurring.append((prec, rec, f1))
        aucs.append(auc)
    for i, name in enumerate(("precision_macro", "sensitivity_macro", "f1_macro")):
        out[name] = float(np.mean([row[i] for row in occurring])) if occurring else math.nan
    valid = [a for a in aucs if not math.isnan(a)]
    out["roc_auc"] = float(np.mean(valid)) if valid else math.nan
    p_true = P[np.arange(len(y)), y] if len(y) else np.empty(0)
    out["cross_entropy"] = _wmean(-np.log(np.clip(p_true, eps, 1.0)), w) if total else math.nan
    out["confusion"] = conf.tolist()
    return out
