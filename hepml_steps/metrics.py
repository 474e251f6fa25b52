"""Figures of merit, every one honouring per-event weights.

HEP samples carry event weights (cross-section normalisation, generator
weights, sometimes negative), so every quantity here is a weighted sum:
an event of weight w counts w times. With no weights every event counts once
and the results equal the textbook (and scikit-learn) definitions.

What scikit-learn computes is taken from :mod:`sklearn.metrics` with
``sample_weight`` (confusion matrix, precision/recall/F1, accuracy, the
losses, MSE/MAE/R², contingency tables, silhouette, adjusted Rand);
this module adds what HEP needs on top: signal efficiency at fixed background
efficiency, the weighted Kolmogorov–Smirnov test with Kish effective sample
sizes, weighted quantiles and the 68 % resolution, the combined "ROC" and
geometric-mean figures at a cut, and the conventions below (undefined ratios,
unseen classes, one-class inputs) that the pipeline relies on. The ROC curve
and its area equal scikit-learn's (tests compare them) but are computed here
from the class weights summed per distinct score (:func:`score_groups`), for
memory: scikit-learn's per-event sort holds several float64 copies of every
event at once (10^7 events in a training split).

Classification (``y`` = 1 signal, 0 background; ``score`` = signal
probability or any monotone discriminant):

- :func:`threshold_metrics` at a score cut: weighted tp/fp/tn/fn, accuracy,
  error rate, precision, sensitivity (signal efficiency, recall), specificity
  (background rejection), the combined "ROC" = sqrt(SNS² + SPC²)/√2, F1 and
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


def _loss_arrays(y, score, sample_weight):
    y, s, w = _arrays(y, score, sample_weight)
    if float(w.sum()) == 0:  # sklearn would raise ZeroDivisionError (np.average) or ValueError
        raise DataError("metrics: total event weight is zero")
    return y, s, w


def _finite(a) -> bool:
    return bool(np.all(np.isfinite(a)))


def _class_sums(sig, w):
    """Signal and background total weights (``sig``: True for signal); both must be positive."""
    if not _finite(w):
        raise DataError(f"metrics: {int(np.sum(~np.isfinite(w)))} event weights are NaN or infinite")
    ws, wb = float(np.sum(w, where=sig)), float(np.sum(w, where=~sig))
    if ws <= 0 or wb <= 0:
        raise DataError(
            f"metrics: need signal and background with positive total weight (signal {ws:g}, background {wb:g})"
        )
    return ws, wb


# -- at a threshold ------------------------------------------------------------
def weighted_confusion(y, predicted, sample_weight=None) -> dict:
    """Weighted confusion matrix of a binary selection (positive = signal).

    Parameters
    ----------
    y : array-like of shape (n_events,)
        1 for signal, anything else for background.
    predicted : array-like of shape (n_events,)
        Events with ``predicted >= 0.5`` count as selected (called signal).
    sample_weight : array-like of shape (n_events,), optional
        Event weights (may be negative); by default every event counts once.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``tn``, ``fn``: summed event weights, from
        :func:`sklearn.metrics.confusion_matrix`.

    Raises
    ------
    DataError
        If the lengths of the arrays differ.
    """
    from sklearn.metrics import confusion_matrix

    y, p, w = _arrays(y, predicted, sample_weight)
    if not np.any(w):  # no events, or all of weight 0: sklearn refuses, every cell is 0
        return dict.fromkeys(("tp", "fp", "tn", "fn"), 0.0)
    tn, fp, fn, tp = confusion_matrix(y == 1, p >= 0.5, labels=[False, True], sample_weight=w).ravel()
    return {"tp": float(tp), "fp": float(fp), "tn": float(tn), "fn": float(fn)}


def threshold_metrics(y, score, threshold: float = 0.5, sample_weight=None) -> dict:
    """Every confusion-matrix figure of merit at one score cut.

    Parameters
    ----------
    y : array-like of shape (n_events,)
        1 for signal, 0 for background.
    score : array-like of shape (n_events,)
        Events with ``score >= threshold`` are called signal.
    threshold : float, default 0.5
        The cut, in units of ``score``.
    sample_weight : array-like of shape (n_events,), optional
        Event weights (may be negative); by default every event counts once.

    Returns
    -------
    dict
        The weighted cells ``tp``, ``fp``, ``tn``, ``fn``
        (:func:`weighted_confusion`); ``accuracy``, ``error_rate``,
        ``precision``, ``sensitivity`` (recall of signal) and
        ``specificity`` (recall of background) and ``f1`` from
        :func:`sklearn.metrics.precision_recall_fscore_support` and
        :func:`sklearn.metrics.accuracy_score`; ``roc_combined`` =
        sqrt(SNS² + SPC²)/√2 (the (sensitivity, specificity) point's
        distance from the origin, 1 for a perfect cut; not the ROC integral,
        which is :func:`roc_auc`) and ``geometric_mean`` = sqrt(SNS·SPC).
        A ratio with a zero denominator is ``nan``; so is F1 when no signal
        event is selected (tp = 0: 2·PRC·SNS/(PRC + SNS) is 0/0 or has an
        undefined factor; scikit-learn's 2TP/(2TP + FP + FN) would say 0).

    Raises
    ------
    DataError
        If the lengths of the arrays differ.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    y, s, w = _arrays(y, score, sample_weight)
    sig, sel = y == 1, s >= threshold
    c = weighted_confusion(sig, sel, w)
    if not np.any(w):  # sklearn refuses; every ratio is 0/0
        prec = sns_spc = f1 = np.full(2, math.nan)
    else:
        prec, sns_spc, f1, _ = precision_recall_fscore_support(
            sig, sel, labels=[False, True], sample_weight=w, zero_division=np.nan
        )
    acc = float(accuracy_score(sig, sel, sample_weight=w)) if float(w.sum()) != 0 else math.nan
    spc, sns = float(sns_spc[0]), float(sns_spc[1])
    return {
        **c,
        "accuracy": acc,
        "error_rate": 1.0 - acc,
        "precision": float(prec[1]),
        "sensitivity": sns,
        "specificity": spc,
        "roc_combined": math.sqrt(sns**2 + spc**2) / math.sqrt(2.0),
        "f1": float(f1[1]) if c["tp"] != 0 else math.nan,
        "geometric_mean": math.sqrt(sns * spc) if sns >= 0 and spc >= 0 else math.nan,
    }


# -- threshold-free ------------------------------------------------------------
#: events gathered at a time by :func:`score_groups` (its temporaries are those of one chunk,
#: about 8 arrays of it); 2^17 before: the evaluate step at 1M events peaked 6-8 MiB higher (its
#: ROC, KS and significance temporaries), in the same time (roc_auc and KS of 10^7 events: 2.4 s)
GROUP_CHUNK = 1 << 15


def _score_arrays(y, score, sample_weight=None):
    """(signal mask, scores, weights) of the ROC functions: the scores in their
    own floating type (float32 scores are not widened: sorting and grouping
    them is exact either way), the weights as float64.

    Raises
    ------
    DataError
        If the lengths of the arrays differ, or a label is neither 1 (signal)
        nor 0 (background).
    """
    s = np.asarray(score).ravel()
    if s.dtype.kind != "f":
        s = s.astype(np.float64)
    y = np.asarray(y).ravel()
    sig = y == 1
    if y.dtype != bool:
        other = ~sig & (y != 0)
        if other.any():
            raise DataError(
                f"metrics: labels must be 1 (signal) or 0 (background); {int(other.sum())} are not"
                f" (e.g. {y[other][0]!r})"
            )
        del other
    if len(sig) != len(s):
        raise DataError(f"metrics: {len(sig)} labels but {len(s)} scores")
    w = np.ones(len(s)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    if len(w) != len(s):
        raise DataError(f"metrics: {len(s)} scores but {len(w)} weights")
    return sig, s, w


def score_groups(sig, s, w, chunk: int = GROUP_CHUNK, counts: bool = True):
    """The events' weights summed per distinct score, from the highest score down.

    Parameters
    ----------
    sig : ndarray of bool, shape (n_events,)
        True for signal (or the first of two samples), False for background.
    s : ndarray of float, shape (n_events,)
        Finite scores.
    w : ndarray of float64, shape (n_events,)
        Event weights (may be negative or zero).
    chunk : int
        Events gathered at a time.
    counts : bool
        Count the events of non-zero weight (else ``ns`` and ``nb`` are None).

    Yields
    ------
    (values, ws, wb, ns, nb) : ndarrays of shape (n_groups,)
        Consecutive runs of the distinct scores in descending order (each
        value once over all yields), the summed signal and background weight
        at each, and the numbers of signal and background events of non-zero
        weight there. Every distinct score appears, also one carried only by
        events of weight 0.

    Notes
    -----
    One stable argsort of the scores (8 bytes per event), then the events are
    gathered ``chunk`` at a time in that order and summed per score with
    :func:`numpy.add.reduceat`. Written here rather than taken from
    :func:`sklearn.metrics.roc_curve` (or :func:`numpy.unique`) for memory:
    those gather every event's label, weight and score sorted in float64 at
    once (several temporaries of 8 bytes per event, 10^7 events on a training
    split), while this holds the order and one chunk.
    """
    order = np.argsort(s, kind="stable")
    carry = None  # the lowest group of the previous chunk: the next may continue it
    for stop in range(len(order), 0, -chunk):
        idx = order[max(stop - chunk, 0) : stop][::-1]
        sc, sg, wc = s[idx], sig[idx], w[idx]
        del idx
        starts = np.flatnonzero(np.concatenate(([True], sc[1:] != sc[:-1])))
        group = [
            sc[starts],
            np.add.reduceat(np.where(sg, wc, 0.0), starts),
            np.add.reduceat(np.where(sg, 0.0, wc), starts),
        ]
        if counts:
            nonzero = wc != 0
            group += [np.add.reduceat(nonzero & sg, starts, dtype=np.int64)]
            group += [np.add.reduceat(nonzero & ~sg, starts, dtype=np.int64)]
            del nonzero
        del sc, sg, wc, starts
        if carry is not None:
            if carry[0][0] == group[0][0]:  # the same score on both sides of the chunk boundary
                for a, c in zip(group[1:], carry[1:]):
                    a[0] += c[0]
            else:
                yield _padded(carry)
        carry = [a[-1:] for a in group]
        if len(group[0]) > 1:
            yield _padded([a[:-1] for a in group])
    if carry is not None:
        yield _padded(carry)


def _padded(group) -> tuple:
    return (*group, None, None) if len(group) == 3 else tuple(group)


def _check_roc(sig, s, w) -> None:
    """Refuse what has no ROC curve: one class, or scores that are not finite."""
    _class_sums(sig, w)
    if not _finite(s):  # sklearn would raise ValueError
        raise DataError(
            f"metrics: {int(np.sum(~np.isfinite(s)))} scores are NaN or infinite; the ROC curve needs finite scores"
        )


def _cumulative(a, start: float, out) -> float:
    """``out`` = start + the running sum of ``a`` (summed in order, as one cumulative sum
    over every group would be); returns the last value."""
    np.cumsum(np.concatenate(([start], a)), out=out)
    return float(out[-1])


def roc_curve(y, score, sample_weight=None, max_points: int | None = None):
    """Weighted ROC curve, equal to :func:`sklearn.metrics.roc_curve` with
    ``drop_intermediate=False`` (or, with ``max_points``, a subset of its points).

    Parameters
    ----------
    y : array-like of shape (n_events,)
        1 for signal, anything else for background.
    score : array-like of shape (n_events,)
        Finite discriminant, higher = more signal-like.
    sample_weight : array-like of shape (n_events,), optional
        Event weights; by default every event counts once.
    max_points : int, optional
        Thin the curve as it is computed, for drawing: keep the first and
        last points, each point where the signal or the background
        efficiency enters another of ``max_points`` equal bins, and the
        first point of each of ``max_points`` bins of the point index spaced
        geometrically up to the number of events (the tight cuts, which log
        scales spread out). At most about 3·``max_points`` + 2 points for
        non-negative weights; every point left out lies within
        1/``max_points`` in both efficiencies of the kept point before it.
        None (default): every point.

    Returns
    -------
    fpr, tpr, thresholds : ndarray of shape (n_points,)
        Background and signal efficiency of the cut ``score >= threshold``
        (float64), from the strictest cut (``inf``: nothing selected, (0, 0))
        to the loosest (everything, (1, 1)). Tied scores form one point, so
        the curve does not depend on event order; every point is kept unless
        ``max_points`` is given.
        Scores carried only by events of weight 0 give no point (sklearn drops
        those events; the curve is the same).

    Raises
    ------
    DataError
        If signal or background has no positive total weight (sklearn would
        return ``nan`` with a warning), a score is NaN or infinite, or the
        lengths of the arrays differ.

    Notes
    -----
    Computed from the class weights summed per distinct score
    (:func:`score_groups`), not with sklearn's per-event sort, which holds
    several float64 copies of every event at once (6·10^6 test events of a
    30M-event sample): the points and their cumulative sums are the same,
    summed per score first (tests compare with sklearn). Memory: the sort
    order (8 bytes per event), one chunk, and the curve: three float64 arrays
    of every point (one per event for continuous scores: 480 MiB for the 2·10^7
    test events of a 10^8-event sample), or with ``max_points`` the kept points only.

    Negative weights (signed NLO generator weights) enter the cumulative sums
    as they are (as in sklearn 1.9), so the efficiencies are the
    signed-weighted (physical) ones and the curve may locally go backwards;
    it still ends at (1, 1) and its area is :func:`roc_auc`.
    """
    sig, s, w = _score_arrays(y, score, sample_weight)
    _check_roc(sig, s, w)
    if max_points is not None:
        return _thinned_roc_curve(sig, s, w, int(max_points))
    # allocated for every event, filled per point: the pages past the last point are
    # never touched (not resident) and resize gives them back
    thr, tps, fps = np.empty(len(s) + 1), np.empty(len(s) + 1), np.empty(len(s) + 1)
    thr[0], tps[0], fps[0] = np.inf, 0.0, 0.0
    k, ct, cf = 1, 0.0, 0.0
    zeros = bool(np.any(w == 0))
    for v, ws, wb, ns, nb in score_groups(sig, s, w, counts=zeros):
        point = (ns + nb) > 0 if zeros else None  # a score of weight-0 events only: no point
        if zeros and not point.all():
            v, ws, wb = v[point], ws[point], wb[point]
        n = len(v)
        thr[k : k + n] = v
        ct = _cumulative(ws, ct, tps[k - 1 : k + n])
        cf = _cumulative(wb, cf, fps[k - 1 : k + n])
        k += n
    for a in (thr, tps, fps):
        a.resize(k, refcheck=False)
    tps /= tps[-1]
    fps /= fps[-1]
    return fps, tps, thr


def _thinned_roc_curve(sig, s, w, max_points: int):
    """:func:`roc_curve` with ``max_points``: the points are those of the whole curve,
    kept or not chunk by chunk (bins of the running class sums and of the log point index)."""
    if max_points < 1:
        raise DataError(f"metrics: max_points must be >= 1, got {max_points}")
    total_s, total_b = _class_sums(sig, w)
    log_ratio = math.log(len(s) + 1.0) / max_points  # the geometric bins of the point index
    kept = [(np.array([np.inf]), np.zeros(1), np.zeros(1))]
    prev = (0.0, 0.0, -1.0)  # the bins of the previous point (the first: (0, 0), index 0)
    last = None  # the last point, kept at the end when it was not
    k, ct, cf = 1, 0.0, 0.0
    zeros = bool(np.any(w == 0))
    for v, ws, wb, ns, nb in score_groups(sig, s, w, counts=zeros):
        if zeros:
            point = (ns + nb) > 0  # a score of weight-0 events only: no point
            v, ws, wb = v[point], ws[point], wb[point]
        n = len(v)
        if not n:
            continue
        # summed as roc_curve sums them (_cumulative): the kept points are among its points
        tps, fps = np.cumsum(np.concatenate(([ct], ws)))[1:], np.cumsum(np.concatenate(([cf], wb)))[1:]
        ct, cf = float(tps[-1]), float(fps[-1])
        bins = (
            np.floor(tps * (max_points / total_s)),
            np.floor(fps * (max_points / total_b)),
            np.floor(np.log(np.arange(k, k + n, dtype=np.float64)) / log_ratio),
        )
        keep = np.zeros(n, dtype=bool)
        for b, p in zip(bins, prev):
            keep[0] |= b[0] != p
            keep[1:] |= b[1:] != b[:-1]
        prev = tuple(float(b[-1]) for b in bins)
        kept.append((v[keep], tps[keep], fps[keep]))
        last = None if keep[-1] else (v[-1:], tps[-1:], fps[-1:])
        k += n
    if last is not None:
        kept.append(last)
    thr, tps, fps = (np.concatenate(a) for a in zip(*kept))
    tps /= ct
    fps /= cf
    return fps, tps, thr


def roc_auc(y, score, sample_weight=None) -> float:
    """Weighted area under the ROC curve.

    Parameters are those of :func:`roc_curve`. Returns the trapezoidal area
    under its curve (ties count one half): equal to
    :func:`sklearn.metrics.roc_auc_score` for non-negative weights, which is
    not called because its :func:`sklearn.metrics.auc` refuses the
    non-monotonic curves that negative weights can give ("x is neither
    increasing nor decreasing"), and it returns ``nan`` for one class where
    this raises :class:`DataError` (see :func:`roc_curve`).

    Notes
    -----
    With signed weights the area is the weighted Mann–Whitney statistic
    Σ_s Σ_b w_s w_b ([score_s > score_b] + ½[score_s = score_b]) / (W_S W_B),
    W_S, W_B the classes' signed totals: the unbiased estimate of the
    probability that a signal event outscores a background event under the
    physical (signed) distributions. It is not clipped. A perfect separation
    gives exactly 1 whatever the signs (every pair counts, Σ w_s w_b = W_S W_B).
    It can exceed 1 only when a model scores the negative-weight events of
    a class systematically apart from its positive-weight ones, and that
    happens on the *training* split of a model that memorises its fitted
    events: one fitted on the signs learns them (train AUCs of 1.01–1.06
    for trees and gradient boosting fitted on signed weights, the old
    behaviour), and one fitted under ``negative_weights: ignore`` memorises
    the positive-weight events only (a random forest: 1.004). On the training
    split read a value above 1 as overtraining, as the KS test; on the test
    split (events the fit never saw) it estimates a quantity in [0, 1], with
    a statistical error that grows with the fraction of negative weights.

    Computed from the class weights summed per distinct score
    (:func:`score_groups`), group by group: each signal weight at a score
    counts the background weight above it plus half that at the score (the
    pairs ranked the wrong way round), and the area is 1 minus their share
    of W_S W_B: the trapezoids of the curve's segments. Nothing per point is kept: the
    memory is the sort order (8 bytes per event) and one chunk. The area
    equals that under :func:`roc_curve` to rounding (tests compare both with
    :func:`sklearn.metrics.roc_auc_score`).
    """
    sig, s, w = _score_arrays(y, score, sample_weight)
    _check_roc(sig, s, w)
    # summed as 1 − the weight of the pairs ranked the wrong way round (a signal
    # weight times the background weight above it, half that at its own score): a
    # perfect separation gives exactly 1, every such product being 0
    wrong, above, total_s = 0.0, 0.0, 0.0
    for _, ws, wb, _, _ in score_groups(sig, s, w, counts=False):
        fps = np.cumsum(wb)
        fps += above  # background weight at or above each score
        wrong += float(np.dot(ws, fps - 0.5 * wb))
        above = float(fps[-1])
        total_s += float(ws.sum())
    return 1.0 - wrong / (total_s * above)


def signal_efficiency_at(y, score, bkg_efficiency, sample_weight=None):
    """Signal efficiency at fixed background efficiency.

    Parameters
    ----------
    y, score, sample_weight
        As for :func:`roc_curve`.
    bkg_efficiency : float or array-like of shape (n_points,)
        Background efficiencies in [0, 1].

    Returns
    -------
    float or ndarray of shape (n_points,)
        The signal efficiency, interpolated linearly along the weighted ROC
        curve; where the curve is flat in background efficiency, the highest
        signal efficiency reached there.

    Raises
    ------
    DataError
        If an efficiency lies outside [0, 1], or as for :func:`roc_curve`.
    """
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
# Each takes y (n_events,) of 1 = signal / 0 = background, score (n_events,) and
# optional sample_weight (n_events,), returns the weighted mean loss per event,
# and raises DataError when the lengths differ or the total weight is zero. A
# NaN/inf score makes the loss nan (null in JSON), as before: sklearn would raise.
def zero_one_loss(y, score, sample_weight=None, threshold: float = 0.5) -> float:
    """Weighted fraction of events misclassified by the cut ``score >= threshold``
    (:func:`sklearn.metrics.zero_one_loss`)."""
    from sklearn.metrics import zero_one_loss as sk_zero_one_loss

    y, s, w = _loss_arrays(y, score, sample_weight)
    return float(sk_zero_one_loss(y == 1, s >= threshold, sample_weight=w))


def mse(y, score, sample_weight=None) -> float:
    """Weighted mean of (score − y)² (:func:`sklearn.metrics.mean_squared_error`)."""
    from sklearn.metrics import mean_squared_error

    y, s, w = _loss_arrays(y, score, sample_weight)
    return float(mean_squared_error(y, s, sample_weight=w)) if _finite(s) else math.nan


def absolute_loss(y, score, sample_weight=None) -> float:
    """Weighted mean of |score − y| (:func:`sklearn.metrics.mean_absolute_error`)."""
    from sklearn.metrics import mean_absolute_error

    y, s, w = _loss_arrays(y, score, sample_weight)
    return float(mean_absolute_error(y, s, sample_weight=w)) if _finite(s) else math.nan


def hinge_loss(y, score, sample_weight=None) -> float:
    """Weighted mean of max(0, 1 − t·(2·score − 1)) with t = ±1 for signal /
    background: the score (a probability) mapped to a margin in [−1, 1]
    (:func:`sklearn.metrics.hinge_loss`)."""
    from sklearn.metrics import hinge_loss as sk_hinge_loss

    y, s, w = _loss_arrays(y, score, sample_weight)
    if not _finite(s):
        return math.nan
    # sklearn reads the ±1 encoding off the classes present in y, so a y of one
    # class would all count as −1: a weight-0 event of each class pins it.
    return float(
        sk_hinge_loss(np.r_[y == 1, False, True], np.r_[2 * s - 1, 0.0, 0.0], sample_weight=np.r_[w, 0.0, 0.0])
    )


def cross_entropy(y, score, sample_weight=None, eps: float = 1e-15) -> float:
    """Weighted mean of −[y·ln p + (1 − y)·ln(1 − p)], p = score clipped to
    [eps, 1 − eps] (:func:`sklearn.metrics.log_loss`; its own clip at machine
    epsilon, 2.2e-16, and its refusal of values outside [0, 1] then never act)."""
    from sklearn.metrics import log_loss

    y, s, w = _loss_arrays(y, score, sample_weight)
    p = np.clip(s, eps, 1 - eps)
    return float(log_loss(y == 1, p, labels=[False, True], sample_weight=w)) if _finite(p) else math.nan


# -- overtraining ----------------------------------------------------------------
def _n_eff(w) -> float:
    w2 = float(np.dot(w, w))
    return float(w.sum()) ** 2 / w2 if w2 > 0 else 0.0


def ks_joint(score, weight, train) -> dict:
    """:func:`ks_overtraining` on both samples held in one array each.

    Parameters
    ----------
    score : ndarray of float, shape (n_events,)
        The scores of the training and the test events (float32 is not
        widened: the test only compares them).
    weight : ndarray of float64, shape (n_events,)
        Their weights.
    train : ndarray of bool, shape (n_events,)
        True for a training event, False for a test event.

    Returns
    -------
    dict
        As :func:`ks_overtraining`.

    Notes
    -----
    Both empirical CDFs only step at the samples' distinct values, so their
    largest distance is at one of them: the events are summed per distinct
    value and sample with :func:`score_groups` (one sort, chunk by chunk), and
    1 − CDF of each sample, the weight above a value over the total, is
    compared at every value from the top down. Written here, not with
    :func:`numpy.union1d` and a CDF per sample evaluated on that grid, for
    memory: those hold several float64 copies of every event at once.
    """
    from scipy.special import kolmogorov

    wa, wb = weight[train], weight[~train]
    if len(wa) == 0 or len(wb) == 0 or wa.sum() <= 0 or wb.sum() <= 0:
        return {"statistic": math.nan, "pvalue": math.nan, "n_eff_train": 0.0, "n_eff_test": 0.0}
    na, nb = _n_eff(wa), _n_eff(wb)
    total_a, total_b = float(wa.sum()), float(wb.sum())
    del wa, wb
    d, above_a, above_b = 0.0, 0.0, 0.0
    for _, ga, gb, _, _ in score_groups(train, score, weight, counts=False):
        ca, cb = np.empty(len(ga) + 1), np.empty(len(gb) + 1)
        above_a = _cumulative(ga, above_a, ca)
        above_b = _cumulative(gb, above_b, cb)
        ca /= total_a
        cb /= total_b
        d = max(d, float(np.max(np.abs(ca - cb))))
    ne = na * nb / (na + nb)
    p = float(kolmogorov((math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d)) if ne > 0 else math.nan
    return {"statistic": d, "pvalue": min(max(p, 0.0), 1.0), "n_eff_train": na, "n_eff_test": nb}


def ks_overtraining(score_train, score_test, w_train=None, w_test=None) -> dict:
    """Weighted two-sample Kolmogorov–Smirnov test of train vs test scores.

    A small p-value means the model scores its training events differently
    from unseen ones: overtraining (the check of the TMVA Users Guide).
    scipy's :func:`scipy.stats.ks_2samp` takes no weights, hence this code.

    Parameters
    ----------
    score_train : array-like of shape (n_train,)
    score_test : array-like of shape (n_test,)
        Classifier outputs of one class on the two splits.
    w_train : array-like of shape (n_train,), optional
    w_test : array-like of shape (n_test,), optional
        Event weights, signed: the CDFs are the signed-weighted ones (the
        physical distributions; |w| would weigh the negative-weight events'
        region twice instead of cancelling it) and N_eff = (Σw)²/Σw² shrinks
        as negative weights cancel positive ones. By default every event
        counts once.

    Returns
    -------
    dict
        ``statistic``: the largest distance between the two weighted empirical
        CDFs; ``pvalue``: from the asymptotic Kolmogorov distribution at
        (√N + 0.12 + 0.11/√N)·D, N = N_train·N_test/(N_train + N_test)
        (Stephens' small-sample correction, as in Press et al., Numerical
        Recipes, §14.3), with Kish's effective sample sizes
        N_eff = (Σw)²/Σw² (L. Kish, Survey Sampling, 1965), equal to the
        event counts without weights; ``n_eff_train``, ``n_eff_test``.
        All ``nan`` (and sizes 0) when a side has no events or a total
        weight that is not positive.
    """
    a, b = (np.asarray(x).ravel() for x in (score_train, score_test))
    a, b = (x if x.dtype.kind == "f" else x.astype(np.float64) for x in (a, b))  # float32 is compared exactly
    wa = np.ones(len(a)) if w_train is None else np.asarray(w_train, dtype=np.float64).ravel()
    wb = np.ones(len(b)) if w_test is None else np.asarray(w_test, dtype=np.float64).ravel()
    train = np.zeros(len(a) + len(b), dtype=bool)
    train[: len(a)] = True
    return ks_joint(np.concatenate((a, b)), np.concatenate((wa, wb)), train)


# -- regression ------------------------------------------------------------------
def weighted_quantile(values, q, w=None):
    """Weighted quantiles, interpolated linearly between events.

    Parameters
    ----------
    values : array-like of shape (n_events,)
    q : float or array-like of shape (n_q,)
        Probabilities in [0, 1].
    w : array-like of shape (n_events,), optional
        Event weights; by default every event counts once.

    Returns
    -------
    float or ndarray of shape (n_q,)
        In the units of ``values``. Event k (sorted) sits at cumulative
        probability (W_k − w_k/2)/W; without weights that is (k − ½)/n,
        Hyndman & Fan's definition 5 (numpy's ``method="hazen"``, which takes
        no weights). Beyond the first or last event: its value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    w = np.ones_like(v) if w is None else np.asarray(w, dtype=np.float64).ravel()
    order = np.argsort(v, kind="mergesort")
    v, cw = v[order], np.cumsum(w[order])
    cdf = (cw - 0.5 * w[order]) / cw[-1]
    return np.interp(q, cdf, v)


def _sklearn_regression(y, p, w):
    """MSE, MAE and R² from sklearn; nan where undefined: for NaN/inf predictions
    (sklearn would raise), and R² of a constant target (sklearn's default
    force_finite would say 1.0 or 0.0) or of one event (nan with a warning)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    if not _finite(p):
        return math.nan, math.nan, math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = float(r2_score(y, p, sample_weight=w, force_finite=False)) if len(y) > 1 else math.nan
    return (
        float(mean_squared_error(y, p, sample_weight=w)),
        float(mean_absolute_error(y, p, sample_weight=w)),
        r2 if math.isfinite(r2) else math.nan,
    )


def regression_metrics(y, prediction, sample_weight=None) -> dict:
    """Weighted figures of a regression.

    Parameters
    ----------
    y : array-like of shape (n_events,)
        True target values (e.g. energies in GeV).
    prediction : array-like of shape (n_events,)
        Predicted values, in the units of ``y``.
    sample_weight : array-like of shape (n_events,), optional
        Event weights; by default every event counts once.

    Returns
    -------
    dict
        ``mse`` and ``mae`` (:func:`sklearn.metrics.mean_squared_error`,
        :func:`~sklearn.metrics.mean_absolute_error`), ``rmse``, ``r2``
        (:func:`~sklearn.metrics.r2_score`; ``nan`` for a constant target or
        one event), ``bias`` (mean residual prediction − y), ``resolution``
        (standard deviation of the residuals), ``resolution_68`` (half the
        width of the central 68 % of the residuals, the robust resolution; a
        Gaussian's σ), and over events with y ≠ 0, when there are any,
        ``relative_bias_median`` and ``relative_resolution_68`` of
        prediction/y − 1 (dimensionless). Squared figures are in units², the
        others in the units of ``y``.

    Raises
    ------
    DataError
        If the lengths of the arrays differ or the total weight is zero.
    """
    y, p, w = _loss_arrays(y, prediction, sample_weight)
    mse_, mae, r2 = _sklearn_regression(y, p, w)
    r = p - y
    bias = float(np.average(r, weights=w))
    q16, q84 = weighted_quantile(r, [0.16, 0.84], w)
    out = {
        "mse": mse_,
        "rmse": math.sqrt(mse_),
        "mae": mae,
        "r2": r2,
        "bias": bias,
        "resolution": math.sqrt(max(np.average((r - bias) ** 2, weights=w), 0.0)),
        "resolution_68": float(q84 - q16) / 2.0,
    }
    nz = y != 0
    if nz.any():
        rel = p[nz] / y[nz] - 1.0
        r16, r50, r84 = weighted_quantile(rel, [0.16, 0.5, 0.84], w[nz])
        out["relative_bias_median"] = float(r50)
        out["relative_resolution_68"] = float(r84 - r16) / 2.0
    return out


# -- clustering ------------------------------------------------------------------
def clustering_metrics(X, labels, y_true=None, max_events: int = 5000, seed: int = 0) -> dict:
    """Unweighted figures of a clustering.

    Parameters
    ----------
    X : array-like of shape (n_events, n_features) or None
        The clustered features (no silhouette without them).
    labels : array-like of shape (n_events,)
        Cluster index per event; −1 = noise (DBSCAN).
    y_true : array-like of shape (n_events,), optional
        True classes (e.g. signal/background).
    max_events : int, default 5000
        The silhouette is computed on at most this many events, drawn
        without replacement with ``seed`` (it costs O(n²)).

    Returns
    -------
    dict
        ``n_clusters`` (noise not counted), ``noise_fraction``,
        ``silhouette`` (:func:`sklearn.metrics.silhouette_score`; ``nan``
        unless there are 2..n−1 distinct labels), and with ``y_true``
        ``adjusted_rand`` (:func:`sklearn.metrics.adjusted_rand_score`) and
        ``purity``: the fraction of events in their cluster's majority class
        (noise counted as one cluster), from
        :func:`sklearn.metrics.cluster.contingency_matrix`.
    """
    from sklearn.metrics import adjusted_rand_score, silhouette_score
    from sklearn.metrics.cluster import contingency_matrix

    labels = np.asarray(labels).ravel().astype(np.int64)
    clusters = np.unique(labels[labels >= 0])
    out = {
        "n_clusters": int(len(clusters)),
        "noise_fraction": float(np.mean(labels < 0)) if len(labels) else math.nan,
        "silhouette": math.nan,
    }
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
        out["purity"] = (
            float(contingency_matrix(y_true, labels).max(axis=0).sum()) / len(labels) if len(labels) else math.nan
        )
    return out


# -- multiclass -------------------------------------------------------------------
def _multiclass_arrays(y, proba, sample_weight):
    P = np.asarray(proba, dtype=np.float64)
    if P.ndim != 2:
        raise DataError(f"metrics: multiclass probabilities must be events x classes, got shape {P.shape}")
    y = np.asarray(y).ravel().astype(np.int64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    if not len(y) == len(P) == len(w):
        raise DataError(f"metrics: {len(y)} labels, {len(P)} probability rows, {len(w)} weights")
    if len(y) and y.max() >= P.shape[1]:
        raise DataError(f"metrics: class index {int(y.max())} but only {P.shape[1]} probability columns")
    return y, P, w


def _per_class(y, pred, w, k):
    """Weighted confusion matrix and per-class precision, recall, F1 with
    sklearn's zero_division=0; a class neither true nor predicted gets ``nan``."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if not np.any(w):  # no events, or all of weight 0: sklearn refuses
        return np.zeros((k, k)), *(np.full(k, math.nan) for _ in range(3))
    labels = np.arange(k)
    conf = confusion_matrix(y, pred, labels=labels, sample_weight=w).astype(np.float64)
    prf = precision_recall_fscore_support(y, pred, labels=labels, sample_weight=w, zero_division=0)[:3]
    occurs = (conf.sum(axis=0) != 0) | (conf.sum(axis=1) != 0)
    return conf, *(np.where(occurs, a, math.nan) for a in prf)


def multiclass_metrics(y, proba, sample_weight=None, eps: float = 1e-15) -> dict:
    """Weighted figures of a K-class classifier.

    Parameters
    ----------
    y : array-like of shape (n_events,)
        True class index 0..K−1; −1 for a class the model never saw.
    proba : array-like of shape (n_events, K)
        Class probabilities (rows summing to 1).
    sample_weight : array-like of shape (n_events,), optional
        Event weights; by default every event counts once.
    eps : float, default 1e-15
        The true class's probability is clipped to [eps, 1] in the
        cross-entropy.

    Returns
    -------
    dict
        Events of a class the model never saw (``y`` = −1) cannot be scored
        against any of its K outputs: every figure below is computed without
        them, and their share of the total weight is ``unseen_class_fraction``.

        ``n_classes``; ``accuracy`` and ``error_rate`` of the most probable
        class; per class ``c`` ``precision_class{c}``,
        ``sensitivity_class{c}`` (recall), ``f1_class{c}``
        (:func:`sklearn.metrics.precision_recall_fscore_support` with
        ``zero_division=0``: a class never predicted has precision 0; F1 =
        2TP/(2TP + FP + FN); ``nan`` for a class neither true nor predicted)
        and ``roc_auc_class{c}``, the one-vs-rest AUC of ``proba[:, c]``
        (:func:`roc_auc`; ``nan`` unless the class and its rivals have
        positive weight); ``*_macro``, the unweighted means of precision,
        sensitivity and F1 over the classes that occur (true or predicted);
        ``roc_auc``, the mean of the defined one-vs-rest AUCs;
        ``cross_entropy``, the mean −ln p of the true class
        (:func:`sklearn.metrics.log_loss`); ``confusion``, the weighted
        confusion matrix ``confusion[true][predicted]``
        (:func:`sklearn.metrics.confusion_matrix`).

    Raises
    ------
    DataError
        If ``proba`` is not 2-D, the lengths differ, or a class index is ≥ K.
    """
    from sklearn.metrics import accuracy_score, log_loss

    y, P, w = _multiclass_arrays(y, proba, sample_weight)
    k, known, total_all = P.shape[1], y >= 0, float(w.sum())
    out: dict = {"n_classes": k, "unseen_class_fraction": float(w[~known].sum()) / total_all if total_all else math.nan}
    y, P, w = y[known], P[known], w[known]
    pred, total = P.argmax(axis=1), float(w.sum())
    conf, prec, rec, f1 = _per_class(y, pred, w, k)
    out["accuracy"] = float(accuracy_score(y, pred, sample_weight=w)) if total else math.nan
    out["error_rate"] = 1.0 - out["accuracy"]
    aucs = []
    for c in range(k):
        auc = math.nan
        if w[y == c].sum() > 0 and w[y != c].sum() > 0:
            auc = roc_auc((y == c).astype(np.float64), P[:, c], w)
        out[f"precision_class{c}"], out[f"sensitivity_class{c}"] = float(prec[c]), float(rec[c])
        out[f"f1_class{c}"], out[f"roc_auc_class{c}"] = float(f1[c]), auc
        aucs.append(auc)
    occurs = ~np.isnan(f1)  # true or predicted
    for name, a in (("precision_macro", prec), ("sensitivity_macro", rec), ("f1_macro", f1)):
        out[name] = float(np.mean(a[occurs])) if occurs.any() else math.nan
    valid = [a for a in aucs if not math.isnan(a)]
    out["roc_auc"] = float(np.mean(valid)) if valid else math.nan
    # log_loss of the true class's probability alone: over all K columns it would
    # warn whenever a row misses 1 by > 1.5e-8, as float32 model outputs do.
    p_true = np.clip(P[np.arange(len(y)), y], eps, 1.0)
    out["cross_entropy"] = (
        float(log_loss(np.ones(len(y), bool), p_true, labels=[False, True], sample_weight=w))
        if total and _finite(p_true)
        else math.nan
    )
    out["confusion"] = conf.tolist()
    return out
