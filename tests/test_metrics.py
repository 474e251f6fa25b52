"""Figures of merit against hand-computed weighted confusion matrices and scikit-learn."""

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from hepml_steps import metrics as M
from hepml_steps.errors import DataError

# Six events, hand-computed at threshold 0.5:
#   label  score  weight   called   -> cell
#     1     0.9     2.0    signal      tp += 2
#     1     0.4     1.0    bkg         fn += 1
#     1     0.7     0.5    signal      tp += 0.5
#     0     0.6     3.0    signal      fp += 3
#     0     0.2     1.0    bkg         tn += 1
#     0     0.1     4.0    bkg         tn += 4
Y = np.array([1, 1, 1, 0, 0, 0])
S = np.array([0.9, 0.4, 0.7, 0.6, 0.2, 0.1])
W = np.array([2.0, 1.0, 0.5, 3.0, 1.0, 4.0])


def test_weighted_confusion_by_hand():
    m = M.threshold_metrics(Y, S, 0.5, W)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2.5, 1.0, 3.0, 5.0)
    sns, spc, prec = 2.5 / 3.5, 5.0 / 8.0, 2.5 / 5.5
    assert m["sensitivity"] == pytest.approx(sns)
    assert m["specificity"] == pytest.approx(spc)
    assert m["precision"] == pytest.approx(prec)
    assert m["accuracy"] == pytest.approx(7.5 / 11.5)
    assert m["error_rate"] == pytest.approx(4.0 / 11.5)
    assert m["roc_combined"] == pytest.approx(math.sqrt(sns**2 + spc**2) / math.sqrt(2))
    assert m["f1"] == pytest.approx(2 * prec * sns / (prec + sns))
    assert m["geometric_mean"] == pytest.approx(math.sqrt(sns * spc))


def test_threshold_moves_events_between_cells():
    m = M.threshold_metrics(Y, S, 0.65, W)  # the 0.6 background event is now rejected
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2.5, 0.0, 8.0, 1.0)
    assert m["precision"] == 1.0


def test_undefined_ratios_are_nan_not_errors():
    m = M.threshold_metrics(Y, S, 2.0, W)  # nothing called signal
    assert math.isnan(m["precision"]) and math.isnan(m["f1"])
    assert m["specificity"] == 1.0 and m["sensitivity"] == 0.0


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(3)
    n = 5000
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * y)))
    s = np.round(s, 2)  # ties on purpose
    w = rng.exponential(1.0, n)
    return y, s, w


def test_auc_and_roc_match_sklearn_with_weights_and_ties(sample):
    y, s, w = sample
    assert M.roc_auc(y, s, w) == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = M.roc_curve(y, s, w)
    f2, t2, _ = skm.roc_curve(y, s, sample_weight=w, drop_intermediate=False)
    assert np.allclose(fpr, f2) and np.allclose(tpr, t2)


def test_auc_is_the_area_under_roc_curve_with_signed_weights_and_ties(sample):
    """roc_auc sums the weights per score value; the area is that of the per-event curve."""
    y, s, w = sample
    signed = w * np.where(np.random.default_rng(1).random(len(w)) < 0.2, -1.0, 1.0)
    for weights in (w, signed, None):
        fpr, tpr, _ = M.roc_curve(y, s, weights)
        assert M.roc_auc(y, s, weights) == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-13)


def test_auc_does_not_depend_on_event_order(sample):
    y, s, w = sample
    p = np.random.default_rng(0).permutation(len(y))
    assert M.roc_auc(y[p], s[p], w[p]) == pytest.approx(M.roc_auc(y, s, w), abs=1e-14)


def test_weights_matter(sample):
    y, s, w = sample
    w2 = w * np.where(s > 0.7, 5.0, 1.0)
    assert abs(M.roc_auc(y, s, w2) - M.roc_auc(y, s, w)) > 1e-3


def test_signal_efficiency_at_fixed_background_efficiency():
    # continuous scores: background uniform, signal uniform on [0.5, 1.5]
    rng = np.random.default_rng(1)
    b, s = rng.uniform(0, 1, 200_000), rng.uniform(0.5, 1.5, 200_000)
    y = np.r_[np.ones_like(s), np.zeros_like(b)]
    x = np.r_[s, b]
    # cut c = 1 - eff_b keeps signal fraction min(1, 1.5 - c)
    effs = M.signal_efficiency_at(y, x, [0.1, 0.3, 0.6])
    assert effs == pytest.approx([0.6, 0.8, 1.0], abs=0.01)
    assert M.signal_efficiency_at(y, x, 0.1) == pytest.approx(0.6, abs=0.01)
    with pytest.raises(DataError, match="background efficiencies"):
        M.signal_efficiency_at(y, x, 1.5)


def test_losses_by_hand():
    y, p, w = np.array([1, 0]), np.array([0.8, 0.4]), np.array([1.0, 3.0])
    assert M.zero_one_loss(y, p, w) == 0.0
    assert M.mse(y, p, w) == pytest.approx((0.04 + 3 * 0.16) / 4)
    assert M.absolute_loss(y, p, w) == pytest.approx((0.2 + 3 * 0.4) / 4)
    assert M.hinge_loss(y, p, w) == pytest.approx((0.4 + 3 * 0.8) / 4)  # margins 0.6 and 0.2
    assert M.cross_entropy(y, p, w) == pytest.approx((-math.log(0.8) - 3 * math.log(0.6)) / 4)
    assert M.cross_entropy(y, p, w) == pytest.approx(skm.log_loss(y, p, sample_weight=w))
    assert M.zero_one_loss(np.array([1, 0]), np.array([0.2, 0.9])) == 1.0


def test_one_class_is_a_clear_error():
    with pytest.raises(DataError, match="signal and background"):
        M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])


def test_non_finite_scores_are_a_clear_error_for_the_roc():
    # sklearn's roc_curve refuses them; the old hand-written sort gave an order-dependent curve for NaN
    with pytest.raises(DataError, match="1 scores are NaN or infinite"):
        M.roc_auc([1, 0, 1, 0], [0.2, np.nan, 0.7, 0.1])


def test_ks_same_distribution_passes_shifted_fails():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=3000), rng.normal(size=3000)
    same = M.ks_overtraining(a, b)
    shifted = M.ks_overtraining(a + 0.3, b)
    assert same["pvalue"] > 0.01 and shifted["pvalue"] < 1e-6
    # unweighted statistic equals scipy's
    from scipy.stats import ks_2samp

    assert same["statistic"] == pytest.approx(ks_2samp(a, b).statistic)


def test_ks_uses_effective_sample_size():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=2000), rng.normal(0.1, 1, size=2000)
    flat = M.ks_overtraining(a, b)
    w = np.r_[np.full(20, 100.0), np.full(1980, 0.01)]  # 20 events carry nearly all weight
    spiky = M.ks_overtraining(a, b, w, w)
    assert spiky["n_eff_train"] < 30 < flat["n_eff_train"] == pytest.approx(2000)
    assert spiky["pvalue"] > flat["pvalue"]


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    y = rng.uniform(50, 200, 4000)
    p = y * (1 + rng.normal(0, 0.1, 4000)) + 2.0
    w = rng.uniform(0.5, 2.0, 4000)
    m = M.regression_metrics(y, p, w)
    assert m["mse"] == pytest.approx(skm.mean_squared_error(y, p, sample_weight=w))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p, sample_weight=w))
    assert m["r2"] == pytest.approx(skm.r2_score(y, p, sample_weight=w))
    assert m["relative_resolution_68"] == pytest.approx(0.1, rel=0.08)
    assert m["bias"] == pytest.approx(2.0, abs=1.0)


def test_clustering_metrics():
    rng = np.random.default_rng(4)
    X = np.r_[rng.normal(0, 0.3, (300, 2)), rng.normal(5, 0.3, (300, 2))]
    truth = np.r_[np.zeros(300), np.ones(300)]
    good = M.clustering_metrics(X, truth.astype(int), y_true=truth)
    assert good["n_clusters"] == 2 and good["silhouette"] > 0.8 and good["adjusted_rand"] == pytest.approx(1.0)
    noisy = M.clustering_metrics(X, np.r_[np.full(10, -1), rng.integers(0, 2, 590)], y_true=truth)
    assert noisy["noise_fraction"] == pytest.approx(10 / 600) and noisy["silhouette"] < 0.1
    assert abs(noisy["adjusted_rand"]) < 0.1


# -- corner cases kept when the commodity figures moved to sklearn.metrics ---------
def test_f1_is_nan_when_no_signal_event_is_selected():
    # tp = 0 with fp, fn > 0: precision = sensitivity = 0, F1 = 2PR/(P+R) = 0/0
    m = M.threshold_metrics([1, 0, 1, 0], [0.1, 0.9, 0.2, 0.3])
    assert (m["precision"], m["sensitivity"]) == (0.0, 0.0) and math.isnan(m["f1"])


def test_all_weights_zero_gives_nan_ratios_not_an_error():
    m = M.threshold_metrics(Y, S, 0.5, np.zeros(len(Y)))
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0.0, 0.0, 0.0, 0.0)
    assert all(math.isnan(m[k]) for k in ("accuracy", "precision", "sensitivity", "specificity", "f1"))
    with pytest.raises(DataError, match="total event weight is zero"):
        M.mse(Y, S, np.zeros(len(Y)))


def test_hinge_loss_keeps_the_signal_label_with_one_class_only():
    # margins 2*0.6-1 = 0.2 and 2*0.2-1 = -0.6 for two signal events
    assert M.hinge_loss([1, 1], [0.6, 0.2]) == pytest.approx((0.8 + 1.6) / 2)
    assert M.hinge_loss([0, 0], [0.6, 0.2]) == pytest.approx((1.2 + 0.4) / 2)


def test_cross_entropy_clips_at_eps_not_machine_epsilon():
    # a confident wrong score costs -ln(1e-15), not -ln(2.2e-16)
    assert M.cross_entropy([1, 0], [0.0, 0.0]) == pytest.approx(-math.log(1e-15) / 2)
    assert M.cross_entropy([1], [1.5]) == pytest.approx(-math.log1p(-1e-15))  # a discriminant above 1 is clipped


def test_zero_weight_events_do_not_change_the_curve(sample):
    y, s, w = sample
    w0 = np.where(np.arange(len(y)) % 4 == 0, 0.0, w)
    keep = w0 > 0
    assert M.roc_auc(y, s, w0) == pytest.approx(M.roc_auc(y[keep], s[keep], w0[keep]), abs=1e-12)
    eff = M.signal_efficiency_at(y[keep], s[keep], 0.1, w0[keep])
    assert M.signal_efficiency_at(y, s, 0.1, w0) == pytest.approx(eff)


def test_negative_weights_give_an_auc(sample):
    # signed (NLO) weights can make the weighted ROC curve go backwards; sklearn's
    # roc_auc_score refuses such a curve, the trapezoidal area does not
    y, s, w = sample
    wn = np.where(np.arange(len(y)) % 5 == 0, -0.3 * w, w)
    fpr, _, _ = M.roc_curve(y, s, wn)
    assert np.any(np.diff(fpr) < 0)
    assert 0.5 < M.roc_auc(y, s, wn) < 1.0


def test_regression_r2_is_nan_when_undefined():
    m = M.regression_metrics([3.0, 3.0, 3.0], [1.0, 2.0, 3.0])  # constant target
    assert math.isnan(m["r2"]) and m["mse"] == pytest.approx(5 / 3)
    assert math.isnan(M.regression_metrics([2.0], [2.5])["r2"])  # one event


def test_non_finite_predictions_give_undefined_losses_not_errors():
    # a diverged model: its figures are written as null, the step goes on
    assert math.isnan(M.mse([1, 0], [np.nan, 0.2])) and math.isnan(M.hinge_loss([1, 0], [np.nan, 0.2]))
    assert math.isnan(M.cross_entropy([1, 0], [np.nan, 0.2]))
    m = M.regression_metrics([1.0, 2.0, 3.0], [1.0, np.nan, 3.0])
    assert not any(math.isfinite(m[k]) for k in ("mse", "rmse", "mae", "r2"))


def test_clustering_purity_by_hand():
    # clusters 0: {a, a, b}, 1: {b, b}, noise: {a}: majorities 2 + 2 + 1 of 6
    m = M.clustering_metrics(None, [0, 0, 0, 1, 1, -1], y_true=["a", "a", "b", "b", "b", "a"])
    assert m["purity"] == pytest.approx(5 / 6) and m["n_clusters"] == 2 and m["noise_fraction"] == pytest.approx(1 / 6)


def test_multiclass_with_no_scored_events_is_nan_not_an_error():
    m = M.multiclass_metrics([-1, -1], np.eye(3)[:2])
    assert m["unseen_class_fraction"] == 1.0 and np.sum(m["confusion"]) == 0
    assert all(math.isnan(m[k]) for k in ("accuracy", "f1_macro", "roc_auc", "cross_entropy", "precision_class0"))


def test_multiclass_cross_entropy_of_float32_probabilities_is_quiet():
    # float32 rows miss 1 by ~1e-7: sklearn's log_loss over all columns would warn
    rng = np.random.default_rng(8)
    P = rng.dirichlet(np.ones(4), 200).astype(np.float32).astype(np.float64)
    y = rng.integers(0, 4, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ce = M.multiclass_metrics(y, P)["cross_entropy"]
    assert ce == pytest.approx(np.mean(-np.log(P[np.arange(200), y])))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_roc_figures_refuse_non_finite_weights(bad):
    w = np.ones(6)
    w[2] = bad
    with pytest.raises(DataError, match="1 event weights are NaN or infinite"):
        M.roc_auc([1, 0, 1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3, 0.7, 0.2], w)


@pytest.mark.parametrize("chunk", [3, 64, M.GROUP_CHUNK])
def test_roc_curve_and_auc_from_score_groups_match_sklearn(monkeypatch, chunk):
    """The ROC curve is summed per distinct score in chunks of events (hand-written for
    memory): equal to sklearn's per-event curve with ties across chunk boundaries,
    zero weights (no point of their own, as sklearn drops them), signed weights and
    float32 scores (grouped exactly, thresholds returned as float64)."""
    monkeypatch.setattr(M.score_groups, "__defaults__", (chunk, True))
    rng = np.random.default_rng(11)
    n = 3000
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + y, 1)  # few distinct values: every chunk boundary cuts a tie
    w = rng.exponential(1.0, n)
    w[rng.random(n) < 0.05] = 0.0
    w[s == s.max()] = 0.0  # the highest score is carried by weight-0 events only: no point
    signed = w * np.where(rng.random(n) < 0.15, -1.0, 1.0)
    for score in (s, s.astype(np.float32)):
        for weights in (w, signed):
            fpr, tpr, thr = M.roc_curve(y, score, weights)
            f2, t2, th2 = skm.roc_curve(y, score.astype(np.float64), sample_weight=weights, drop_intermediate=False)
            assert thr.dtype == np.float64 and np.array_equal(thr, th2)
            np.testing.assert_allclose(fpr, f2, rtol=0, atol=1e-13)
            np.testing.assert_allclose(tpr, t2, rtol=0, atol=1e-13)
            assert M.roc_auc(y, score, weights) == pytest.approx(np.trapezoid(t2, f2), abs=1e-13)
        assert M.roc_auc(y, score, w) == pytest.approx(skm.roc_auc_score(y, score, sample_weight=w), abs=1e-13)


@pytest.mark.parametrize("chunk", [7, 1000, M.GROUP_CHUNK])
def test_roc_curve_thinned_as_computed_is_a_subset_of_the_whole_curve(monkeypatch, chunk):
    """roc_curve(max_points=m) keeps points of the whole curve only, exactly, in order: its ends,
    at most about 3m + 2 of them for non-negative weights, the tight cuts (the first points) dense,
    and every point it leaves out within 1/m in both efficiencies of the kept point before it,
    with ties across chunk boundaries, weight-0 events and signed weights."""
    monkeypatch.setattr(M.score_groups, "__defaults__", (chunk, True))
    rng = np.random.default_rng(21)
    n, m = 20_000, 100
    y = rng.integers(0, 2, n)
    w = rng.exponential(1.0, n)
    w[rng.random(n) < 0.02] = 0.0
    signed = w * np.where(rng.random(n) < 0.15, -1.0, 1.0)
    for score, weights in (
        (rng.normal(size=n) + y, w),
        (np.round(rng.normal(size=n) + y, 2), w),
        (rng.normal(size=n).astype(np.float32) + y, signed),
    ):
        fpr, tpr, thr = M.roc_curve(y, score, weights)
        f, t, th = M.roc_curve(y, score, weights, max_points=m)
        at = np.searchsorted(-thr, -th)  # thresholds run from +inf down
        assert np.array_equal(thr[at], th) and np.array_equal(fpr[at], f) and np.array_equal(tpr[at], t)
        assert at[0] == 0 and at[-1] == len(thr) - 1 and np.all(np.diff(at) > 0)
        if weights is w:
            assert len(th) <= 3 * m + 2
        assert len(th) < len(thr) and np.array_equal(at[:10], np.arange(10))  # the tightest cuts all kept
        before = at[np.searchsorted(at, np.arange(len(thr)), side="right") - 1]  # each point's kept predecessor
        if weights is w:
            assert np.abs(fpr - fpr[before]).max() < 1 / m and np.abs(tpr - tpr[before]).max() < 1 / m
    with pytest.raises(DataError, match="max_points"):
        M.roc_curve(y, score, weights, max_points=0)


@pytest.mark.parametrize("chunk", [5, M.GROUP_CHUNK])
def test_ks_statistic_equals_the_largest_cdf_distance(monkeypatch, chunk):
    """The KS statistic from weights summed per distinct value (hand-written for memory)
    is the largest distance of the two weighted CDFs evaluated at every value of
    either sample; unweighted, scipy's; float32 scores give the float64 result."""
    from scipy.stats import ks_2samp

    monkeypatch.setattr(M.score_groups, "__defaults__", (chunk, True))
    rng = np.random.default_rng(12)
    a, b = np.round(rng.normal(size=700), 1), np.round(rng.normal(0.1, 1, size=400), 1)  # ties within and across
    wa, wb = rng.exponential(1.0, 700), rng.exponential(1.0, 400) * np.where(rng.random(400) < 0.1, -1.0, 1.0)
    grid = np.union1d(a, b)

    def cdf(x, w):
        return np.array([w[x <= g].sum() for g in grid]) / w.sum()

    got = M.ks_overtraining(a, b, wa, wb)
    assert got["statistic"] == pytest.approx(np.max(np.abs(cdf(a, wa) - cdf(b, wb))), abs=1e-14)
    assert M.ks_overtraining(a, b)["statistic"] == pytest.approx(ks_2samp(a, b).statistic, abs=1e-14)
    narrow = M.ks_overtraining(a.astype(np.float32), b.astype(np.float32), wa, wb)
    wide = M.ks_overtraining(a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64), wa, wb)
    assert narrow == wide


@pytest.mark.parametrize("fn", [M.roc_auc, M.roc_curve])
def test_roc_refuses_labels_other_than_0_and_1(fn):
    """A label of -1 (or 2) is neither signal nor background: refused, not taken as background."""
    with pytest.raises(DataError, match=r"labels must be 1 \(signal\) or 0 \(background\); 2 are not"):
        fn([-1, 1, -1, 1], [0.1, 0.9, 0.2, 0.8])
    assert fn(np.array([False, True, False, True]), [0.1, 0.9, 0.2, 0.8]) is not None  # booleans are labels
