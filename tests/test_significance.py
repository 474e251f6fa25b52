"""Expected significance and the optimal cut (hepml_steps.significance)."""

import math

import numpy as np
import pytest

from hepml_steps.errors import DataError
from hepml_steps.metrics import threshold_metrics
from hepml_steps.significance import (
    FIGURES,
    asimov_significance,
    optimal_cut,
    s_over_sqrt_b,
    s_over_sqrt_s_plus_b,
    significance_scan,
)


def textbook_asimov(s, b):
    """CCGV eq. 97, as printed."""
    return math.sqrt(2 * ((s + b) * math.log(1 + s / b) - s))


def textbook_asimov_unc(s, b, sigma):
    """Cowan's medsigNote eq. 20, as printed."""
    v = sigma**2
    return math.sqrt(
        2
        * (
            (s + b) * math.log((s + b) * (b + v) / (b * b + (s + b) * v))
            - b * b / v * math.log(1 + v * s / (b * (b + v)))
        )
    )


# -- the formulas ------------------------------------------------------------------
def test_asimov_known_values():
    # S=10, B=100: sqrt(2(110 ln 1.1 - 10)) = sqrt(0.96823955695...) (50-digit mpmath reference)
    assert asimov_significance(10, 100) == pytest.approx(0.98399164475694061, rel=1e-14)
    assert asimov_significance(5, 1) == pytest.approx(3.3913291834819958, rel=1e-14)
    # with sigma_b = 10 % of B = 10 events, and sigma_b = 0.5 for B = 1
    assert asimov_significance(10, 100, 0.1) == pytest.approx(0.69019606329653020, rel=1e-13)
    assert asimov_significance(5, 1, 0.5) == pytest.approx(2.7637239405443073, rel=1e-13)
    for s, b in [(10, 100), (5, 1), (0.3, 7.0), (200, 3)]:
        assert asimov_significance(s, b) == pytest.approx(textbook_asimov(s, b), rel=1e-12)
        for d in (0.05, 0.3, 1.0):
            assert asimov_significance(s, b, d) == pytest.approx(textbook_asimov_unc(s, b, d * b), rel=1e-10)


def test_asimov_uncertainty_tends_to_the_known_background_formula():
    z0 = asimov_significance(10, 100)
    diffs = [z0 - asimov_significance(10, 100, d) for d in (1e-2, 1e-3, 1e-4)]
    assert all(dz > 0 for dz in diffs)  # an uncertainty costs significance
    assert diffs[1] / diffs[0] == pytest.approx(1e-2, rel=0.05)  # O(delta^2)
    assert diffs[2] / diffs[1] == pytest.approx(1e-2, rel=0.05)
    assert asimov_significance(10, 100, 1e-8) == pytest.approx(z0, rel=1e-12)
    assert asimov_significance(10, 100, 1e-300) == z0


def test_small_signal_limits():
    s, b = 1e-3, 1e6
    assert asimov_significance(s, b) == pytest.approx(s / math.sqrt(b), rel=1e-8)
    assert asimov_significance(s, b) == pytest.approx(s_over_sqrt_b(s, b), rel=1e-8)
    # with uncertainty: S / sqrt(B + sigma_b^2), sigma_b = 1 % of B
    assert asimov_significance(s, b, 0.01) == pytest.approx(s / math.sqrt(b + (0.01 * b) ** 2), rel=1e-8)
    assert asimov_significance(s, b, 0.01) == pytest.approx(s_over_sqrt_b(s, b, 0.01), rel=1e-8)
    # and where the textbook form has lost every digit (S/B = 1e-12), the result still holds
    assert asimov_significance(1e-6, 1e6) == pytest.approx(1e-9, rel=1e-8)


def test_simple_ratios_and_conventions():
    assert s_over_sqrt_b(10, 100) == 1.0
    assert s_over_sqrt_b(10, 100, 0.1) == pytest.approx(10 / math.sqrt(200))
    assert s_over_sqrt_s_plus_b(10, 90) == 1.0
    assert s_over_sqrt_s_plus_b(10, 90, 0.1) == pytest.approx(10 / math.sqrt(181))
    s = np.array([-1.0, 0.0, 2.0, 2.0, 2.0, -3.0])
    b = np.array([4.0, 4.0, 0.0, -1.0, 4.0, 1.0])
    z = asimov_significance(s, b)
    assert z[:2].tolist() == [0.0, 0.0]  # no excess: q0 = 0
    assert np.isnan(z[2]) and np.isnan(z[3])  # no positive background: undefined
    assert z[4] == pytest.approx(textbook_asimov(2, 4))
    r = s_over_sqrt_b(s, b)
    assert r[0] == -0.5 and np.isnan(r[2]) and np.isnan(r[3])
    assert np.isnan(s_over_sqrt_s_plus_b(s, b)[5])  # S + B < 0
    for fn in (s_over_sqrt_b, s_over_sqrt_s_plus_b, asimov_significance):
        with pytest.raises(DataError, match="rel_bkg_uncertainty"):
            fn(1, 1, -0.1)
        with pytest.raises(DataError, match="rel_bkg_uncertainty"):
            fn(1, 1, math.nan)


# -- the scan and the optimal cut -----------------------------------------------------
# signal 0.9 (w 2), 0.8 (1), 0.4 (1); background 0.85 (0.1), 0.8 (0.9: tied), 0.7 (1), 0.5 (3), 0.2 (10)
SCORE = np.array([0.9, 0.8, 0.4, 0.85, 0.8, 0.7, 0.5, 0.2])
Y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
W = np.array([2.0, 1.0, 1.0, 0.1, 0.9, 1.0, 3.0, 10.0])
# by hand, cut -> (S, B, raw background events) for score >= cut
HAND = {
    0.9: (2, 0.0, 0),
    0.85: (2, 0.1, 1),
    0.8: (3, 1.0, 2),
    0.7: (3, 2.0, 3),
    0.5: (3, 5.0, 4),
    0.4: (4, 5.0, 4),
    0.2: (4, 15.0, 5),
}


def test_scan_enumerates_every_distinct_cut():
    scan = significance_scan(Y, SCORE, W)
    assert scan["cut"].tolist() == list(HAND)  # tightest first
    assert scan["s"].tolist() == pytest.approx([v[0] for v in HAND.values()])
    assert scan["b"].tolist() == pytest.approx([v[1] for v in HAND.values()])
    assert scan["n_b"].tolist() == [v[2] for v in HAND.values()]
    assert scan["n_s"].tolist() == [1, 1, 2, 2, 2, 3, 3]
    assert scan["eps_s"].tolist() == pytest.approx([v[0] / 4 for v in HAND.values()])
    assert scan["eps_b"].tolist() == pytest.approx([v[1] / 15 for v in HAND.values()])
    for i, (s, b, _) in enumerate(HAND.values()):
        if b == 0:
            assert all(np.isnan(scan[f][i]) for f in FIGURES)
            continue
        assert scan["s_over_sqrt_b"][i] == pytest.approx(s / math.sqrt(b))
        assert scan["s_over_sqrt_s_plus_b"][i] == pytest.approx(s / math.sqrt(s + b))
        assert scan["asimov"][i] == pytest.approx(textbook_asimov(s, b))


def test_scan_on_a_given_grid_and_the_threshold_convention():
    scan = significance_scan(Y, SCORE, W, cuts=[np.inf, 1.0, 0.8, 0.75, 0.0, -np.inf])
    assert scan["s"].tolist() == [0, 0, 3, 3, 4, 4]
    assert scan["b"].tolist() == pytest.approx([0, 0, 1.0, 1.0, 15.0, 15.0])
    # the same selection as threshold_metrics (score >= threshold is signal)
    for c in (0.85, 0.8, 0.45):
        tm = threshold_metrics(Y, SCORE, c, W)
        one = significance_scan(Y, SCORE, W, cuts=[c])
        assert one["s"][0] == pytest.approx(tm["tp"]) and one["b"][0] == pytest.approx(tm["fp"])
        assert one["eps_s"][0] == pytest.approx(tm["sensitivity"])
        assert one["eps_b"][0] == pytest.approx(1 - tm["specificity"])


def test_scan_matches_brute_force_with_signed_weights():
    rng = np.random.default_rng(3)
    n = 500
    y = rng.integers(0, 2, n)
    score = np.round(rng.uniform(size=n), 2)  # many ties
    w = rng.normal(1.0, 1.0, n)  # about 16 % negative
    w[:20] = 0.0
    scan = significance_scan(y, score, w, rel_bkg_uncertainty=0.2)
    for i, c in enumerate(scan["cut"]):
        sel = score >= c
        s, b = w[sel & (y == 1)].sum(), w[sel & (y == 0)].sum()
        assert scan["s"][i] == pytest.approx(s, abs=1e-9) and scan["b"][i] == pytest.approx(b, abs=1e-9)
        assert scan["n_b"][i] == np.sum(sel & (y == 0) & (w != 0))
        expected = asimov_significance(s, b, 0.2)
        assert (np.isnan(scan["asimov"][i]) and np.isnan(expected)) or scan["asimov"][i] == pytest.approx(expected)
    perm = rng.permutation(n)
    again = significance_scan(y[perm], score[perm], w[perm], rel_bkg_uncertainty=0.2)
    for k in ("cut", "s", "b", "n_b"):
        np.testing.assert_allclose(again[k], scan[k], atol=1e-9)


def test_optimal_cut_by_hand_and_the_low_background_guard():
    # S/sqrt(B) per cut: 0.85 -> 2/sqrt(0.1) = 6.32 (one MC event), 0.8 -> 3, 0.7 -> 2.12, ...
    off = optimal_cut(Y, SCORE, W, figure="s_over_sqrt_b", min_background=0, min_background_events=0)
    assert off["cut"] == 0.85 and off["z_max"] == pytest.approx(2 / math.sqrt(0.1))
    assert (off["s"], off["b"], off["n_b"]) == (2.0, pytest.approx(0.1), 1)
    assert off["eps_s"] == 0.5 and off["eps_b"] == pytest.approx(0.1 / 15)
    one_event = optimal_cut(Y, SCORE, W, figure="s_over_sqrt_b", min_background=1, min_background_events=0)
    assert one_event["cut"] == 0.8 and one_event["z_max"] == pytest.approx(3.0)
    three_mc = optimal_cut(Y, SCORE, W, figure="s_over_sqrt_b", min_background=1, min_background_events=3)
    assert three_mc["cut"] == 0.7 and three_mc["z_max"] == pytest.approx(3 / math.sqrt(2))
    # the defaults (B >= 1 expected and >= 10 MC events) leave nothing here
    none = optimal_cut(Y, SCORE, W, figure="s_over_sqrt_b")
    assert math.isnan(none["cut"]) and math.isnan(none["z_max"]) and none["n_b"] == 0
    # Asimov: 0.85 -> Z(2, 0.1) = 2.96, 0.8 -> Z(3, 1) = 2.26, 0.7 -> 1.78, 0.5 -> 1.23, 0.4 -> 1.61, 0.2 -> ...
    za = optimal_cut(Y, SCORE, W, min_background=0, min_background_events=0)
    assert za["figure"] == "asimov" and za["cut"] == 0.85
    assert za["z_max"] == pytest.approx(textbook_asimov(2, 0.1))
    za = optimal_cut(Y, SCORE, W, min_background=1, min_background_events=0)
    assert za["cut"] == 0.8 and za["z_max"] == pytest.approx(textbook_asimov(3, 1))
    # S/sqrt(S+B): 0.85 -> 1.38, 0.8 -> 1.5, 0.7 -> 1.34, 0.5 -> 1.06, 0.4 -> 1.33, 0.2 -> 0.92
    ssb = optimal_cut(Y, SCORE, W, figure="s_over_sqrt_s_plus_b", min_background=0, min_background_events=0)
    assert ssb["cut"] == 0.8 and ssb["z_max"] == pytest.approx(1.5)
    # a 50 % background uncertainty favours the purer selection more: Z_A(2, 0.1) still wins,
    # and the figure is Cowan's formula at that cut
    unc = optimal_cut(Y, SCORE, W, rel_bkg_uncertainty=0.5, min_background=0, min_background_events=0)
    assert unc["cut"] == 0.85 and unc["z_max"] == pytest.approx(textbook_asimov_unc(2, 0.1, 0.05))
    assert unc["rel_bkg_uncertainty"] == 0.5


def test_optimal_cut_on_a_realistic_sample_respects_the_guard():
    rng = np.random.default_rng(0)
    n_s, n_b = 2000, 20000
    score = np.r_[rng.beta(5, 2, n_s), rng.beta(2, 5, n_b)]
    y = np.r_[np.ones(n_s), np.zeros(n_b)]
    w = np.r_[np.full(n_s, 50 / n_s), np.full(n_b, 5000 / n_b)]  # 50 signal, 5000 background expected
    for figure in FIGURES:
        best = optimal_cut(y, score, w, figure=figure)
        assert best["b"] >= 1.0 and best["n_b"] >= 10
        scan = significance_scan(y, score, w)
        ok = (scan["b"] >= 1.0) & (scan["n_b"] >= 10)
        assert best["z_max"] == pytest.approx(np.nanmax(scan[figure][ok]))
        assert 0.0 < best["eps_s"] < 1.0 and 0.0 < best["eps_b"] < 1.0
    # with no guard, S/sqrt(B) runs off to the tightest cuts
    wild = optimal_cut(y, score, w, figure="s_over_sqrt_b", min_background=0, min_background_events=0)
    assert wild["n_b"] < 10


def test_negative_background_cuts_are_skipped():
    # a negative-weight background event at the top makes B < 0 at the tightest cuts
    score = np.array([0.95, 0.9, 0.6, 0.3, 0.1])
    y = np.array([0, 1, 1, 0, 0])
    w = np.array([-2.0, 5.0, 5.0, 4.0, 20.0])
    scan = significance_scan(y, score, w)
    assert scan["b"].tolist() == [-2.0, -2.0, -2.0, 2.0, 22.0]
    assert np.all(np.isnan(scan["asimov"][:3]))
    best = optimal_cut(y, score, w, min_background=0, min_background_events=0)
    assert best["cut"] == 0.3 and best["z_max"] == pytest.approx(textbook_asimov(10, 2))


def test_refusals():
    with pytest.raises(DataError, match="unknown figure"):
        optimal_cut(Y, SCORE, W, figure="s_over_b")
    with pytest.raises(DataError, match="must be >= 0"):
        optimal_cut(Y, SCORE, W, min_background=-1)
    with pytest.raises(DataError, match="NaN or infinite"):
        significance_scan(Y, np.r_[SCORE[:-1], np.nan], W)
    with pytest.raises(DataError, match="cut is NaN"):
        significance_scan(Y, SCORE, W, cuts=[0.5, np.nan])
    with pytest.raises(DataError, match="weights"):
        significance_scan(Y, SCORE, W[:-1])
    # no signal weight at all: efficiencies undefined, every Z_A 0
    scan = significance_scan(np.zeros(4), [0.1, 0.2, 0.3, 0.4])
    assert np.all(np.isnan(scan["eps_s"])) and np.all(scan["asimov"] == 0)


def test_scan_figures_argument_takes_a_name_and_still_checks_the_uncertainty():
    one = significance_scan(Y, SCORE, W, figures="asimov")
    assert "asimov" in one and "s_over_sqrt_b" not in one
    np.testing.assert_array_equal(one["asimov"], significance_scan(Y, SCORE, W)["asimov"])
    with pytest.raises(DataError, match="rel_bkg_uncertainty"):
        significance_scan(Y, SCORE, W, figures=(), rel_bkg_uncertainty=-0.1)
    with pytest.raises(DataError, match="unknown figure"):
        significance_scan(Y, SCORE, W, figures=("z",))


def test_scan_on_given_cuts_matches_brute_force():
    """Given cuts (any order, repeated, ±inf), the yields are binned per cut without
    sorting the events: the same as selecting score >= cut event by event."""
    rng = np.random.default_rng(4)
    n = 800
    y = rng.integers(0, 2, n)
    score = np.round(rng.uniform(size=n), 2).astype(np.float32)
    w = rng.normal(1.0, 1.0, n)
    w[:30] = 0.0
    cuts = np.r_[0.5, np.inf, np.quantile(score, [0.9, 0.1, 0.5]), -np.inf, 0.5, score[7]]
    scan = significance_scan(y, score, w, cuts=cuts)
    np.testing.assert_array_equal(scan["cut"], cuts)
    for i, c in enumerate(cuts):
        sel = score >= c
        assert scan["s"][i] == pytest.approx(w[sel & (y == 1)].sum(), abs=1e-9)
        assert scan["b"][i] == pytest.approx(w[sel & (y == 0)].sum(), abs=1e-9)
        assert scan["n_s"][i] == np.sum(sel & (y == 1) & (w != 0))
        assert scan["n_b"][i] == np.sum(sel & (y == 0) & (w != 0))


def test_optimal_cut_reports_the_mc_statistics_and_whether_the_guard_set_it():
    """At the best cut: the simulated background events, √Σw² of their weights (the MC
    uncertainty of B), and at_guard when a tighter cut refused by the guard scored higher (the
    optimum then rests on the minimum number of simulated events)."""
    rng = np.random.default_rng(3)
    n = 20000
    y = (rng.random(n) < 0.5).astype(int)
    score = np.where(y == 1, rng.beta(5, 2, n), rng.beta(2, 5, n))
    w = np.where(y == 1, 0.01, rng.choice([-1.0, 2.0, 3.0], n))  # signed, unequal background weights
    best = optimal_cut(y, score, w)
    sel = (y == 0) & (score >= best["cut"])
    assert best["n_b"] == int(np.sum(sel & (w != 0)))
    assert best["b_mc_error"] == pytest.approx(np.sqrt(np.sum(w[sel] ** 2)))
    # S/sqrt(B) grows as B falls: the guard of 10 simulated events sets the optimum
    guarded = optimal_cut(y, score, np.where(y == 1, 1.0, 0.001), figure="s_over_sqrt_b", min_background=0)
    assert guarded["at_guard"] and guarded["n_b"] == 10
    free = optimal_cut(
        y, score, np.where(y == 1, 1.0, 0.001), figure="s_over_sqrt_b", min_background=0, min_background_events=0
    )
    assert not free["at_guard"] and free["n_b"] < 10 and free["z_max"] > guarded["z_max"]
