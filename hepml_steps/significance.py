"""Expected discovery significance of a cut on a classifier score, and the best cut.

A physicist picks a classifier and its working point by the significance the
selection is expected to reach. Here the per-event weights are *expected
yields*: a signal event of weight w stands for w expected signal events in
the data set analysed (cross-section x luminosity / generated events, times
1/f when the sample is a fraction f of the simulation, e.g. a test split).
A cut ``c`` selects the events with ``score >= c``, the convention of
:func:`hepml_steps.metrics.threshold_metrics` and of the ROC curve in
:mod:`hepml_steps.metrics`. Then

- S(c) = Σ w over selected signal, B(c) = Σ w over selected background
  (expected events), ε_S(c) = S(c)/S_tot, ε_B(c) = B(c)/B_tot;
- the figures of merit (:data:`FIGURES`), with an optional relative
  background uncertainty δ, σ_b = δ·B:

  ``s_over_sqrt_b``
      S/√(B + σ_b²): S/√B for δ = 0; the small-S limit of the Asimov
      significance below.
  ``s_over_sqrt_s_plus_b``
      S/√(S + B + σ_b²).
  ``asimov``
      the median significance of a Poisson counting experiment from the
      Asimov data set (G. Cowan, K. Cranmer, E. Gross, O. Vitells,
      "Asymptotic formulae for likelihood-based tests of new physics",
      Eur. Phys. J. C 71 (2011) 1554, eq. 97),

          Z_A = sqrt(2[(S + B) ln(1 + S/B) − S]),

      and with the background uncertainty σ_b (G. Cowan, "Discovery
      sensitivity for a counting experiment with background uncertainty",
      2012, https://www.pp.rhul.ac.uk/~cowan/stat/medsig/medsigNote.pdf,
      eq. 20; the same expression as ``ExpectedSignificance`` in K. Cranmer
      and G. Cowan's "Fast Asimov Utils"),

          Z_A = sqrt(2[(S + B) ln((S + B)(B + σ_b²) / (B² + (S + B)σ_b²))
                       − (B²/σ_b²) ln(1 + σ_b² S / (B(B + σ_b²)))]),

      which tends to the first as σ_b → 0, and to S/√(B + σ_b²) for S ≪ B.

Conventions for what the formulas do not cover (signed generator weights can
make any sum zero or negative):

- B ≤ 0: every figure is ``nan`` (no background estimate to test against;
  written ``null`` in JSON);
- S ≤ 0 with B > 0: ``asimov`` is 0 (the discovery test statistic q0 is
  defined as 0 for a signal-strength estimate below 0, CCGV eq. 12), the
  ratios keep their sign; S + B + σ_b² ≤ 0 makes ``s_over_sqrt_s_plus_b``
  ``nan``.

S/√B grows without bound as B → 0 at the tightest cuts, where a handful of
simulated background events (or none) are left and the estimate of B means
nothing. :func:`optimal_cut` therefore only considers cuts keeping at least
``min_background`` expected background events *and* ``min_background_events``
simulated ones (defaults 1 and 10).

Numerics: the Asimov formulas are evaluated in a rearranged form, with
g(x) = ln(1 + x) − x summed as a series for small x, which avoids the
cancellation of the two O(S) terms when S ≪ B (the textbook form loses
about log10(B/S) digits).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import DataError
from .metrics import GROUP_CHUNK, _score_arrays, score_groups

#: the figures of merit :func:`optimal_cut` can maximise
FIGURES = ("s_over_sqrt_b", "s_over_sqrt_s_plus_b", "asimov")

_SERIES_BELOW = 0.05  # |x| under which g(x) is summed as a series
_SERIES_TERMS = 16  # error < 0.05**17/17 relative to x**2/2: below 1e-20


def _log1p_minus_x(x):
    """g(x) = ln(1 + x) − x without cancellation for small |x| (x > −1)."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.log1p(flat)
        out -= flat
    small = np.abs(flat) < _SERIES_BELOW
    if small.any():  # the series on the small |x| only (in place: one scan may have 10^7 cuts)
        xs = flat[small]
        # −x²/2 + x³/3 − x⁴/4 + ... by Horner, from the highest term down
        acc = np.zeros_like(xs)
        for k in range(_SERIES_TERMS, 1, -1):
            acc *= xs
            acc += (-1.0) ** (k + 1) / k
        acc *= xs
        acc *= xs
        out[small] = acc
    return out.reshape(x.shape)


def _as_float(out):
    return float(out) if np.ndim(out) == 0 else out


def _sigma2(b, rel_bkg_uncertainty):
    if not (rel_bkg_uncertainty >= 0 and math.isfinite(rel_bkg_uncertainty)):
        raise DataError(f"significance: rel_bkg_uncertainty must be a finite number >= 0, got {rel_bkg_uncertainty!r}")
    return (rel_bkg_uncertainty * b) ** 2


def s_over_sqrt_b(s, b, rel_bkg_uncertainty: float = 0.0):
    """S/√(B + σ_b²), σ_b = δ·B: S/√B for δ = 0.

    Parameters
    ----------
    s, b : float or array-like of shape (n_cuts,)
        Expected signal and background yields (events).
    rel_bkg_uncertainty : float, default 0
        δ, the relative uncertainty of B (0.1 = 10 %).

    Returns
    -------
    float or ndarray of shape (n_cuts,)
        In standard deviations; ``nan`` where B ≤ 0.
    """
    s, b = np.asarray(s, dtype=np.float64), np.asarray(b, dtype=np.float64)
    var = b + _sigma2(b, rel_bkg_uncertainty)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _as_float(np.where(b > 0, s / np.sqrt(np.where(b > 0, var, 1.0)), np.nan))


def s_over_sqrt_s_plus_b(s, b, rel_bkg_uncertainty: float = 0.0):
    """S/√(S + B + σ_b²), σ_b = δ·B: S/√(S + B) for δ = 0.

    Parameters are those of :func:`s_over_sqrt_b`. Returns ``nan`` where
    B ≤ 0 or S + B + σ_b² ≤ 0.
    """
    s, b = np.asarray(s, dtype=np.float64), np.asarray(b, dtype=np.float64)
    var = s + b + _sigma2(b, rel_bkg_uncertainty)
    ok = (b > 0) & (var > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _as_float(np.where(ok, s / np.sqrt(np.where(ok, var, 1.0)), np.nan))


def asimov_significance(s, b, rel_bkg_uncertainty: float = 0.0):
    """Median expected discovery significance Z_A of a counting experiment.

    Parameters
    ----------
    s, b : float or array-like of shape (n_cuts,)
        Expected signal and background yields (events).
    rel_bkg_uncertainty : float, default 0
        δ, the relative uncertainty of B; σ_b = δ·B.

    Returns
    -------
    float or ndarray of shape (n_cuts,)
        Z_A in standard deviations: sqrt(2[(S + B) ln(1 + S/B) − S]) for
        δ = 0 (Cowan, Cranmer, Gross, Vitells, Eur. Phys. J. C 71 (2011)
        1554, eq. 97), else Cowan's formula with background uncertainty
        (medsigNote 2012, eq. 20; see the module docstring). ``nan`` where
        B ≤ 0; 0 where S ≤ 0.

    Raises
    ------
    DataError
        If ``rel_bkg_uncertainty`` is negative or not finite.

    Notes
    -----
    With r = S/B, v = σ_b², u = r·v/(B + v) and g(x) = ln(1 + x) − x, the
    bracket of the formula with uncertainty equals
    S²/(B + v) + (S + B)·g(r) − (S + B + B²/v)·g(u), and for v = 0 it is
    S²/B + (S + B)·g(r) (the last term tends to 0). Computed so, no two
    terms of order S cancel.
    """
    s, b = np.broadcast_arrays(np.asarray(s, dtype=np.float64), np.asarray(b, dtype=np.float64))
    v = _sigma2(b, rel_bkg_uncertainty)
    ok = (b > 0) & (s > 0)
    sb, bb, vv = np.where(ok, s, 1.0), np.where(ok, b, 1.0), np.where(ok, v, 0.0)
    r = sb / bb
    half_q = sb * sb / (bb + vv) + (sb + bb) * _log1p_minus_x(r)
    if rel_bkg_uncertainty > 0:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            u = r * vv / (bb + vv)
            extra = np.where(vv > 0, (sb + bb + bb * bb / np.where(vv > 0, vv, 1.0)) * _log1p_minus_x(u), 0.0)
        half_q = half_q - extra
    z = np.sqrt(np.maximum(2.0 * half_q, 0.0))
    return _as_float(np.where(ok, z, np.where(b > 0, 0.0, np.nan)))


_FIGURE_FUNCTIONS = {
    "s_over_sqrt_b": s_over_sqrt_b,
    "s_over_sqrt_s_plus_b": s_over_sqrt_s_plus_b,
    "asimov": asimov_significance,
}


def _every_score(sig, s, w) -> tuple[dict, float, float]:
    """The selected yields and event counts at every distinct score as the cut,
    highest first, and the total signal and background yields: running sums over :func:`hepml_steps.metrics.score_groups`
    (one sort, chunk by chunk; the arrays are per distinct score, the
    temporaries per event are the sort order and one chunk)."""
    # allocated for every event, filled per distinct score: the pages past the
    # last are never touched (not resident) and resize gives them back
    out = {k: np.empty(len(s), dtype=d) for k, d in (("cut", np.float64), ("s", np.float64), ("b", np.float64))}
    out.update({k: np.empty(len(s), dtype=np.int64) for k in ("n_s", "n_b")})
    at, run = 0, dict.fromkeys(("s", "b", "n_s", "n_b"), 0)
    for group in score_groups(sig, s, w):
        n = len(group[0])
        out["cut"][at : at + n] = group[0]
        for key, a in zip(("s", "b", "n_s", "n_b"), group[1:]):
            part = out[key][at : at + n]
            np.cumsum(a, out=part)
            part += run[key]
            run[key] = part[-1]
        at += n
    for a in out.values():
        a.resize(at, refcheck=False)
    return out, float(run["s"]), float(run["b"])


def _at_cuts(sig, s, w, cut, chunk: int = GROUP_CHUNK) -> tuple[dict, float, float]:
    """The selected yields and event counts at the given cuts (any order, ±inf
    allowed), and the total signal and background yields: each event's weight goes to the bin of the sorted distinct cuts
    it passes (:func:`numpy.bincount`, ``chunk`` events at a time: no sort of
    the events), and a cut selects the bins from its own up."""
    edges = np.unique(cut)  # ascending; an event passes edges[:j], j = searchsorted(edges, score, "right")
    sums = {k: np.zeros(len(edges) + 1) for k in ("s", "b")}
    counts = {k: np.zeros(len(edges) + 1, dtype=np.int64) for k in ("n_s", "n_b")}
    for start in range(0, len(s), chunk):
        sc, sg, wc = s[start : start + chunk], sig[start : start + chunk], w[start : start + chunk]
        j = np.searchsorted(edges, sc, side="right")
        sums["s"] += np.bincount(j, weights=np.where(sg, wc, 0.0), minlength=len(edges) + 1)
        sums["b"] += np.bincount(j, weights=np.where(sg, 0.0, wc), minlength=len(edges) + 1)
        nonzero = wc != 0
        counts["n_s"] += np.bincount(j[nonzero & sg], minlength=len(edges) + 1)
        counts["n_b"] += np.bincount(j[nonzero & ~sg], minlength=len(edges) + 1)
    # passing edge i means bin j > i: the sums over bins i+1.. (from the top bin down)
    at = np.searchsorted(edges, cut, side="left") + 1
    out = {"cut": cut}
    for key, per_bin in (*sums.items(), *counts.items()):
        above = np.cumsum(per_bin[::-1])[::-1]  # above[j]: bins j and higher
        out[key] = above[at]
    return out, float(sums["s"].sum()), float(sums["b"].sum())


def significance_scan(
    y, score, sample_weight=None, cuts=None, rel_bkg_uncertainty: float = 0.0, figures=FIGURES
) -> dict:
    """Yields, efficiencies and every figure of merit over a grid of score cuts.

    Vectorised: the events are sorted by score once and the yields are
    cumulative sums, so the cost is O(n log n) for any number of cuts.

    Parameters
    ----------
    y : array-like of shape (n_events,)
        1 for signal, anything else for background.
    score : array-like of shape (n_events,)
        Finite discriminant, higher = more signal-like.
    sample_weight : array-like of shape (n_events,), optional
        Expected yield of each event (events; may be negative). By default
        every event counts once.
    cuts : array-like of shape (n_cuts,), optional
        The cuts, in units of ``score``; a cut ``c`` selects
        ``score >= c``. By default every distinct score, from the highest
        (tightest) to the lowest (everything selected): every distinct
        selection the score allows.
    rel_bkg_uncertainty : float, default 0
        δ, the relative background uncertainty σ_b/B of the figures.
    figures : sequence of str, default :data:`FIGURES`
        The figures of merit computed (fewer: less memory, each costs a few
        arrays of shape (n_cuts,)).

    Returns
    -------
    dict of str to ndarray of shape (n_cuts,)
        ``cut``; ``s`` and ``b``, the selected signal and background yields
        (events); ``eps_s`` and ``eps_b``, the weighted efficiencies
        S/S_tot and B/B_tot (``nan`` when the class's total weight is not
        positive); ``n_s`` and ``n_b``, the numbers of selected simulated
        signal and background events of non-zero weight; and one array per
        name in ``figures`` (standard deviations), with the conventions of
        the module docstring.

    Raises
    ------
    DataError
        If the lengths of the arrays differ, a score or a cut is NaN or
        infinite (``cuts`` may hold ±inf), or ``rel_bkg_uncertainty`` is
        negative.
    """
    sig, s, w = _score_arrays(y, score, sample_weight)
    if not np.all(np.isfinite(s)):
        raise DataError(f"significance: {int(np.sum(~np.isfinite(s)))} scores are NaN or infinite")
    figures = (figures,) if isinstance(figures, str) else tuple(figures)
    _sigma2(0.0, rel_bkg_uncertainty)  # refuses a negative or non-finite δ, whatever the figures
    unknown = [f for f in figures if f not in _FIGURE_FUNCTIONS]
    if unknown:
        raise DataError(f"significance: unknown figure(s) {unknown}; known: {', '.join(FIGURES)}")
    if cuts is None:
        out, s_tot, b_tot = _every_score(sig, s, w)
    else:
        cut = np.asarray(cuts, dtype=np.float64).ravel()
        if np.any(np.isnan(cut)):
            raise DataError("significance: a cut is NaN")
        out, s_tot, b_tot = _at_cuts(sig, s, w, cut)
    out["eps_s"] = out["s"] / s_tot if s_tot > 0 else np.full(len(out["cut"]), np.nan)
    out["eps_b"] = out["b"] / b_tot if b_tot > 0 else np.full(len(out["cut"]), np.nan)
    for name in figures:
        out[name] = np.atleast_1d(_FIGURE_FUNCTIONS[name](out["s"], out["b"], rel_bkg_uncertainty))
    return out


def optimal_cut(
    y,
    score,
    sample_weight=None,
    figure: str = "asimov",
    rel_bkg_uncertainty: float = 0.0,
    min_background: float = 1.0,
    min_background_events: int = 10,
) -> dict:
    """The score cut maximising a figure of merit, among cuts with enough background.

    Parameters
    ----------
    y, score, sample_weight
        As for :func:`significance_scan` (weights = expected yields).
    figure : {"asimov", "s_over_sqrt_b", "s_over_sqrt_s_plus_b"}, default "asimov"
        The figure to maximise (see :data:`FIGURES` and the module docstring).
    rel_bkg_uncertainty : float, default 0
        δ = σ_b/B, the relative background uncertainty.
    min_background : float, default 1.0
        Only cuts keeping B ≥ this many expected background events count.
    min_background_events : int, default 10
        ... and at least this many simulated background events of non-zero
        weight: together they stop the maximisation from running to the
        tightest cuts, where S/√B → ∞ as B → 0 on a background estimate of
        a few simulated events. Set both to 0 to switch the guard off.

    Returns
    -------
    dict
        ``figure``; ``cut`` (select ``score >= cut``), ``z_max`` (the
        figure there, standard deviations), ``s`` and ``b`` (expected
        yields, events), ``eps_s``, ``eps_b``, ``n_b`` (simulated background
        events selected), ``b_mc_error`` (√Σw² of the selected background,
        events: the statistical uncertainty of ``b`` from the simulation's
        size), ``at_guard`` (True when a tighter cut, refused by the guard,
        had a larger figure: the optimum is set by the minimum background,
        not by the score, and ``z_max`` rests on the few simulated events
        there), ``rel_bkg_uncertainty``. Every candidate is a distinct score
        value (see :func:`significance_scan`); on a tie the tightest cut
        wins. When no cut passes the guard or no figure is defined, every
        number is ``nan`` (``n_b`` 0, ``at_guard`` False).

    Raises
    ------
    DataError
        If ``figure`` is unknown, a minimum is negative, or as for
        :func:`significance_scan`.
    """
    if figure not in FIGURES:
        raise DataError(f"significance: unknown figure {figure!r}; known: {', '.join(FIGURES)}")
    if not (min_background >= 0 and min_background_events >= 0):
        raise DataError(
            f"significance: min_background ({min_background!r}) and min_background_events "
            f"({min_background_events!r}) must be >= 0"
        )
    scan = significance_scan(y, score, sample_weight, rel_bkg_uncertainty=rel_bkg_uncertainty, figures=())
    out = {"figure": figure, "rel_bkg_uncertainty": float(rel_bkg_uncertainty)}
    # the figure over blocks of cuts (its temporaries: a dozen arrays of one block), the
    # first (tightest) of the largest values kept, as numpy.nanargmax over all cuts
    i, best = -1, -np.inf
    for start in range(0, len(scan["cut"]), GROUP_CHUNK):
        part = slice(start, start + GROUP_CHUNK)
        allowed = (scan["b"][part] >= min_background) & (scan["n_b"][part] >= min_background_events)
        z = np.where(allowed, _FIGURE_FUNCTIONS[figure](scan["s"][part], scan["b"][part], rel_bkg_uncertainty), np.nan)
        if np.any(np.isfinite(z)):
            j = int(np.nanargmax(z))
            if z[j] > best:
                i, best = start + j, float(z[j])
    if i < 0:
        nan = dict.fromkeys(("cut", "z_max", "s", "b", "eps_s", "eps_b", "b_mc_error"), math.nan)
        return {**out, **nan, "n_b": 0, "at_guard": False}
    # the cuts tighter than the chosen one (the scan runs from the tightest), figures unguarded
    at_guard = False
    for start in range(0, i, GROUP_CHUNK):
        part = slice(start, min(start + GROUP_CHUNK, i))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = _FIGURE_FUNCTIONS[figure](scan["s"][part], scan["b"][part], rel_bkg_uncertainty)
        if np.any(np.asarray(z) > best):
            at_guard = True
            break
    sig, s, w = _score_arrays(y, score, sample_weight)
    selected = ~sig & (s >= scan["cut"][i])
    return {
        **out,
        "cut": float(scan["cut"][i]),
        "z_max": best,
        "s": float(scan["s"][i]),
        "b": float(scan["b"][i]),
        "eps_s": float(scan["eps_s"][i]),
        "eps_b": float(scan["eps_b"][i]),
        "n_b": int(scan["n_b"][i]),
        "b_mc_error": float(np.sqrt(np.sum(np.square(w[selected])))),
        "at_guard": at_guard,
    }
