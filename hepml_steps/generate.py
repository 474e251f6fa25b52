"""Embedded toy data: a resonance X -> two massless "jets", signal vs background,
with the exact per-event log-likelihood ratio (``truth_llr``).

Generative model
----------------
Each event has a latent vector ``z`` whose components are drawn
*independently*, with a known density per class (parameters in
:data:`DEFAULTS`, overridable with ``physics={...}``):

================  ==========================================  ==========================================
variable          signal (cls 1)                              background (cls 0)
================  ==========================================  ==========================================
``m``             Gaussian(m_mean_signal, m_width_signal)     exponential, decay length m_slope_background
                  truncated to [m_min, m_max]                 truncated to [m_min, m_max]
``pt``            Gamma(pt_shape, pt_scale_signal)            Gamma(pt_shape, pt_scale_background)
``y``             Normal(0, y_width_signal)                   Normal(0, y_width_background)
``phi``           uniform on [-pi, pi)                        same
``cos_theta``     ∝ 1 + a c², a = cos_theta_a_signal (0:      ∝ 1 + a c², a = cos_theta_a_background
                  flat, density 1/2) on [-1, 1]               (1: density 3/8 (1 + c²)) on [-1, 1]
``phi_star``      uniform on [-pi, pi)                        same
``met``           exponential, mean met_mean_signal           exponential, mean met_mean_background
``n_extra_jets``  Poisson(n_extra_jets_mean_signal)           Poisson(n_extra_jets_mean_background)
``n_pv``          Poisson(n_pv_mean)  (nuisance)              same
================  ==========================================  ==========================================

so ``log p_c(z)`` is the sum of the per-variable log densities
(:func:`log_density_var`, :func:`log_density`) and
``truth_llr = log p_s(z) - log p_b(z)``. The ``phi``, ``phi_star`` and
``n_pv`` terms are identical for both classes and cancel.

Deterministic map to the detector (:func:`to_detector`)
-------------------------------------------------------
X's lab four-vector is built from (m, pt, y, phi):
``mT = sqrt(m² + pt²)``, ``E = mT cosh y``, ``pz = mT sinh y``,
``px = pt cos phi``, ``py = pt sin phi``. The X rest frame is the one reached
from the lab by the pure (rotation-free) boost along X's momentum, so its
axes are parallel to the lab's x, y, z axes. In it, daughter 1 has momentum
``q = (m/2)(sinθ* cosφ*, sinθ* sinφ*, cosθ*)`` and daughter 2 ``-q``
(both massless, energy m/2). Boosting back to the lab gives
``p1,2 = ±q + P [1/2 ± (P·q) / (m (E + m))]``. The daughters are then ordered
by transverse momentum (``j1`` leading) and described by (pt, eta, phi); the
high-level columns (``m_jj``, ``pt_jj``, ``y_jj``, ``|Δη|``, ``Δφ`` in
[0, π], ``ΔR``) are computed *from the jet columns*, as an analysis would.
Without detector smearing ``m_jj = m``, ``pt_jj = pt`` and ``y_jj = y``.
``met``, ``n_extra_jets`` and ``n_pv`` are passed through unchanged.

Why ``truth_llr`` is the exact likelihood ratio of the observed columns
-----------------------------------------------------------------------
Write ``x = f(z)``. The kinematic part of ``f`` maps the six variables
(m, pt, y, phi, cosθ*, φ*) to the six jet variables (pt, eta, phi of j1, j2).
Apart from the pt ordering this map is invertible (the pair four-vector gives
m, pt, y, phi; boosting j1 back to the pair rest frame gives the direction
(θ*, φ*)), and it is the *same* map for both classes. The density of ``x`` is
``p_c(x) = Σ_{z ∈ f⁻¹(x)} p_c(z) / |det J_f(z)|``.

*Jacobian:* ``J_f`` depends on ``z`` only, not on the class, so in the
ratio ``p_s(x) / p_b(x)`` the factor ``1/|det J_f|`` cancels.

*pt ordering:* ordering the daughters by pt makes ``f`` 2-to-1. The two
preimages of ``x`` are ``z`` and ``z' = ι(z)`` with the involution
``ι: (cosθ*, φ*) -> (-cosθ*, φ* + π)`` (``q -> -q``, i.e. the daughters swap
roles), all other components unchanged. Every class density is symmetric
under ``ι`` (the cosθ* densities are even, φ* is uniform), so
``p_c(z') = p_c(z)`` for both classes; ``ι`` is measure preserving, so
``|det J_f(z')| = |det J_f(z)|``. Hence ``p_c(x) = 2 p_c(z) / |det J_f(z)|``
and ``p_s(x) / p_b(x) = p_s(z) / p_b(z)``: the LLR of the latent vector is the
LLR of what is written out. A classifier trained on the written columns can
therefore at best reach the AUC of ``truth_llr`` (the Bayes AUC).

*Finite output:* a daughter's pseudorapidity diverges as its pt -> 0, so
``|eta|`` is capped at :data:`ETA_MAX` (= 20) and nothing is rejected (a
rejection would change the class normalisations). The cap only acts on a set
of probability of order 1e-9 per event, where the map above stops being
invertible; ``truth_llr`` is still the exact LLR of ``z`` there.

Output table
------------
``event_id`` (int64, 0..N-1), ``label`` (int8), ``weight`` (float64: every
signal event ``yields['signal'] / N_signal``, every background event
``yields['background'] / N_background``), ``truth_llr`` (float64; never a
training feature), then the float64 feature columns :data:`FEATURES`.
Events are generated in chunks (``rng = default_rng([seed, chunk_index])``,
exact signal count per chunk, order shuffled), so memory stays at one chunk
and 10 million events work; each chunk becomes one Parquet row group or one
extension of the ROOT tree ``events``.
"""

from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path

import numpy as np
from scipy import special

from . import cli
from .columns import EVENT_ID, LABEL, TRUTH_LLR, WEIGHT
from .errors import ConfigError
from .io import ROW_GROUP_EVENTS, atomic_path, dictionary_columns, row_group_events, write_json

log = logging.getLogger("hepml.generate")

#: Parameters of the latent densities (GeV for masses and momenta).
DEFAULTS: dict[str, float] = {
    # pair mass: truncated Gaussian (signal) vs truncated exponential (background)
    "m_min": 50.0,
    "m_max": 300.0,
    "m_mean_signal": 125.0,
    "m_width_signal": 15.0,
    "m_slope_background": 60.0,  # decay length of exp(-(m - m_min)/slope)
    # pair pT: Gamma(pt_shape, scale)
    "pt_shape": 2.0,
    "pt_scale_signal": 30.0,
    "pt_scale_background": 22.0,
    # pair rapidity: Normal(0, width)
    "y_width_signal": 1.0,
    "y_width_background": 1.4,
    # decay angle: density ∝ 1 + a cos²θ* on [-1, 1]
    "cos_theta_a_signal": 0.0,
    "cos_theta_a_background": 1.0,
    # missing transverse energy: exponential with this mean
    "met_mean_signal": 30.0,
    "met_mean_background": 22.0,
    # extra jets: Poisson means
    "n_extra_jets_mean_signal": 1.6,
    "n_extra_jets_mean_background": 1.0,
    # pile-up vertices: Poisson, identical for both classes (nuisance)
    "n_pv_mean": 25.0,
}

#: Latent variables, in sampling order.
LATENT = ("m", "pt", "y", "phi", "cos_theta", "phi_star", "met", "n_extra_jets", "n_pv")
LOW_LEVEL = ("j1_pt", "j1_eta", "j1_phi", "j2_pt", "j2_eta", "j2_phi")
HIGH_LEVEL = ("m_jj", "pt_jj", "y_jj", "delta_eta_jj", "delta_phi_jj", "delta_r_jj")
EXTRA = ("met", "n_extra_jets", "n_pv")
#: Feature columns written, in order.
FEATURES = LOW_LEVEL + HIGH_LEVEL + EXTRA
#: Cap on |eta| of a daughter (keeps every output finite).
ETA_MAX = 20.0
DEFAULT_YIELDS = {"signal": 1000.0, "background": 100000.0}
FORMATS = {".parquet": "parquet", ".root": "root"}
TREE = "events"

_POSITIVE = (
    "m_width_signal",
    "m_slope_background",
    "pt_shape",
    "pt_scale_signal",
    "pt_scale_background",
    "y_width_signal",
    "y_width_background",
    "met_mean_signal",
    "met_mean_background",
    "n_extra_jets_mean_signal",
    "n_extra_jets_mean_background",
    "n_pv_mean",
)
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- config


def resolve_physics(physics: dict | None = None) -> dict[str, float]:
    """DEFAULTS updated with ``physics``; raises ConfigError naming a bad key."""
    if physics is None:
        physics = {}
    if not isinstance(physics, dict):
        raise ConfigError(f"physics must be a mapping of parameter -> number, got {type(physics).__name__}")
    unknown = sorted(set(physics) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown physics key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    p = dict(DEFAULTS)
    for key, value in physics.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ConfigError(f"physics.{key} = {value!r} must be a finite number")
        p[key] = float(value)
    for key in _POSITIVE:
        if not p[key] > 0:
            raise ConfigError(f"physics.{key} = {p[key]} must be > 0")
    if not p["m_min"] > 0:
        raise ConfigError(f"physics.m_min = {p['m_min']} must be > 0 (massless daughters need m > 0)")
    if not p["m_max"] > p["m_min"]:
        raise ConfigError(f"physics.m_max = {p['m_max']} must be > physics.m_min = {p['m_min']}")
    for key in ("cos_theta_a_signal", "cos_theta_a_background"):
        if not p[key] >= 0:
            raise ConfigError(f"physics.{key} = {p[key]} must be >= 0")
    _tn_bounds(p)  # signal mass window must carry probability
    return p


def _check_cls(cls) -> int:
    if isinstance(cls, bool) or cls not in (0, 1):
        raise ConfigError(f"cls = {cls!r} must be 1 (signal) or 0 (background)")
    return int(cls)


def _suffix(cls: int) -> str:
    return "signal" if cls == 1 else "background"


# --------------------------------------------------------------------------- densities


def _tn_bounds(p: dict) -> tuple[float, float, float, float, bool]:
    """Standardised truncation of the signal mass Gaussian, robust in the tails.

    Returns (a, b, log Z, Fa, flip): when the window lies above the mean the
    problem is mirrored (x -> -x) so the CDF values stay accurate.
    """
    mu, sigma = p["m_mean_signal"], p["m_width_signal"]
    a, b = (p["m_min"] - mu) / sigma, (p["m_max"] - mu) / sigma
    flip = a > 0
    if flip:
        a, b = -b, -a
    fa, fb = float(special.ndtr(a)), float(special.ndtr(b))
    z = fb - fa
    if not z > 0:
        raise ConfigError(
            f"physics.m_mean_signal = {mu} with m_width_signal = {sigma} puts no probability in "
            f"[m_min, m_max] = [{p['m_min']}, {p['m_max']}]"
        )
    return a, b, math.log(z), fa, flip


def _cos_theta_sample(u: np.ndarray, a: float) -> np.ndarray:
    """Inverse CDF of (1 + a c²) / (2 (1 + a/3)) on [-1, 1], a >= 0 (Cardano)."""
    if a == 0:
        return 2.0 * u - 1.0
    # F(c) = u  <=>  c³ + P c + Q = 0,  P = 3/a > 0 (one real root),  Q = (3/a + 1)(1 - 2u)
    P = 3.0 / a
    Q = (P + 1.0) * (1.0 - 2.0 * u)
    h = -0.5 * Q
    r = np.sqrt(h * h + P**3 / 27.0)
    # the two cube-root arguments multiply to -P³/27; take the one free of cancellation
    t = np.cbrt(np.where(h >= 0, h + r, h - r))
    c = t - P / (3.0 * t)
    return np.clip(c, -1.0, 1.0)


def _poisson_logpmf(k: np.ndarray, mean: float) -> np.ndarray:
    out = np.full(k.shape, -np.inf)
    ok = (k >= 0) & (k == np.floor(k)) & np.isfinite(k)
    kk = k[ok]
    out[ok] = kk * math.log(mean) - mean - special.gammaln(kk + 1.0)
    return out


def log_density_var(name: str, values, cls: int, physics: dict | None = None) -> np.ndarray:
    """Log density (log pmf for the Poisson counts) of one latent variable for class ``cls``.

    Returns ``-inf`` outside the support.
    """
    p = resolve_physics(physics)
    cls = _check_cls(cls)
    s = _suffix(cls)
    x = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "m":
            lo, hi = p["m_min"], p["m_max"]
            inside = (x >= lo) & (x <= hi)
            if cls == 1:
                mu, sigma = p["m_mean_signal"], p["m_width_signal"]
                _, _, log_z, _, _ = _tn_bounds(p)
                t = (x - mu) / sigma
                val = -0.5 * t * t - 0.5 * _LOG_2PI - math.log(sigma) - log_z
            else:
                lam = p["m_slope_background"]
                # log of exp(-(m-lo)/lam) / (lam (1 - exp(-(hi-lo)/lam)))
                val = -(x - lo) / lam - math.log(lam) - math.log(-math.expm1(-(hi - lo) / lam))
            return np.where(inside, val, -np.inf)
        if name == "pt":
            k, theta = p["pt_shape"], p[f"pt_scale_{s}"]
            val = (k - 1.0) * np.log(x) - x / theta - special.gammaln(k) - k * math.log(theta)
            return np.where(x > 0, val, -np.inf)
        if name == "y":
            sigma = p[f"y_width_{s}"]
            t = x / sigma
            return -0.5 * t * t - 0.5 * _LOG_2PI - math.log(sigma)
        if name in ("phi", "phi_star"):
            return np.where((x >= -math.pi) & (x < math.pi), -_LOG_2PI, -np.inf)
        if name == "cos_theta":
            a = p[f"cos_theta_a_{s}"]
            val = np.log1p(a * x * x) - math.log(2.0 * (1.0 + a / 3.0))
            return np.where((x >= -1) & (x <= 1), val, -np.inf)
        if name == "met":
            mean = p[f"met_mean_{s}"]
            return np.where(x >= 0, -x / mean - math.log(mean), -np.inf)
        if name == "n_extra_jets":
            return _poisson_logpmf(x, p[f"n_extra_jets_mean_{s}"])
        if name == "n_pv":
            return _poisson_logpmf(x, p["n_pv_mean"])
    raise ConfigError(f"unknown latent variable {name!r}; known: {list(LATENT)}")


def log_density(z: dict, cls: int, physics: dict | None = None) -> np.ndarray:
    """Per-event log density of the latent vector ``z`` (sum over :data:`LATENT`)."""
    p = resolve_physics(physics)
    missing = [k for k in LATENT if k not in z]
    if missing:
        raise ConfigError(f"latent vector lacks {missing}")
    total = None
    for name in LATENT:
        term = log_density_var(name, z[name], cls, p)
        total = term if total is None else total + term
    return total


# --------------------------------------------------------------------------- sampling


def sample_latent(rng: np.random.Generator, n: int, cls: int, physics: dict | None = None) -> dict[str, np.ndarray]:
    """Draw ``n`` latent vectors of class ``cls`` (1 signal, 0 background); float64 arrays."""
    p = resolve_physics(physics)
    cls = _check_cls(cls)
    s = _suffix(cls)
    n = int(n)
    z: dict[str, np.ndarray] = {}
    lo, hi = p["m_min"], p["m_max"]
    u = rng.random(n)
    if cls == 1:
        mu, sigma = p["m_mean_signal"], p["m_width_signal"]
        a, b, log_z, fa, flip = _tn_bounds(p)
        t = np.clip(special.ndtri(fa + u * math.exp(log_z)), a, b)
        z["m"] = mu + sigma * (-t if flip else t)
    else:
        lam = p["m_slope_background"]
        z["m"] = np.clip(lo - lam * np.log1p(u * np.expm1(-(hi - lo) / lam)), lo, hi)
    z["pt"] = rng.gamma(p["pt_shape"], p[f"pt_scale_{s}"], n)
    z["y"] = rng.normal(0.0, p[f"y_width_{s}"], n)
    z["phi"] = rng.uniform(-math.pi, math.pi, n)
    z["cos_theta"] = _cos_theta_sample(rng.random(n), p[f"cos_theta_a_{s}"])
    z["phi_star"] = rng.uniform(-math.pi, math.pi, n)
    z["met"] = rng.exponential(p[f"met_mean_{s}"], n)
    z["n_extra_jets"] = rng.poisson(p[f"n_extra_jets_mean_{s}"], n).astype(np.float64)
    z["n_pv"] = rng.poisson(p["n_pv_mean"], n).astype(np.float64)
    return z


# --------------------------------------------------------------------------- detector map


def _wrap_phi(phi: np.ndarray) -> np.ndarray:
    return (phi + np.pi) % (2.0 * np.pi) - np.pi


def _daughter(sign: float, q, P, m, E):
    """Lab (pt, eta, phi) of the daughter with rest-frame momentum ``sign * q``."""
    qx, qy, qz = (sign * c for c in q)
    px, py, pz = P
    coef = 0.5 + (px * qx + py * qy + pz * qz) / (m * (E + m))
    lx, ly, lz = qx + coef * px, qy + coef * py, qz + coef * pz
    pt = np.hypot(lx, ly)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(lz / pt)
    eta = np.clip(np.nan_to_num(eta, nan=0.0), -ETA_MAX, ETA_MAX)
    return pt, eta, np.arctan2(ly, lx)


def to_detector(z: dict) -> dict[str, np.ndarray]:
    """Deterministic map latent -> detector-level columns (:data:`FEATURES` that ``z`` allows).

    Low-level jet columns are ordered by pt; the high-level columns are
    computed from them; ``met``, ``n_extra_jets``, ``n_pv`` pass through.
    """
    m = np.asarray(z["m"], dtype=np.float64)
    pt = np.asarray(z["pt"], dtype=np.float64)
    y = np.asarray(z["y"], dtype=np.float64)
    phi = np.asarray(z["phi"], dtype=np.float64)
    c = np.asarray(z["cos_theta"], dtype=np.float64)
    phs = np.asarray(z["phi_star"], dtype=np.float64)

    mt = np.sqrt(m * m + pt * pt)
    E = mt * np.cosh(y)
    P = (pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y))
    sin_t = np.sqrt(np.clip(1.0 - c * c, 0.0, None))
    half = 0.5 * m
    q = (half * sin_t * np.cos(phs), half * sin_t * np.sin(phs), half * c)
    d1 = _daughter(1.0, q, P, m, E)
    d2 = _daughter(-1.0, q, P, m, E)
    first = d1[0] >= d2[0]
    j1 = [np.where(first, a, b) for a, b in zip(d1, d2)]
    j2 = [np.where(first, b, a) for a, b in zip(d1, d2)]

    out = {
        "j1_pt": j1[0],
        "j1_eta": j1[1],
        "j1_phi": j1[2],
        "j2_pt": j2[0],
        "j2_eta": j2[1],
        "j2_phi": j2[2],
    }
    out.update(_high_level(*j1, *j2))
    for name in EXTRA:
        if name in z:
            out[name] = np.asarray(z[name], dtype=np.float64).copy()
    return out


def _high_level(pt1, eta1, phi1, pt2, eta2, phi2) -> dict[str, np.ndarray]:
    """Pair observables of two massless jets, in numerically stable forms."""
    deta = eta1 - eta2
    dphi = np.abs(_wrap_phi(phi1 - phi2))
    # m² = 2 pt1 pt2 (cosh Δη - cos Δφ) = 4 pt1 pt2 (sinh²(Δη/2) + sin²(Δφ/2))
    m = 2.0 * np.sqrt(pt1 * pt2 * (np.sinh(0.5 * deta) ** 2 + np.sin(0.5 * dphi) ** 2))
    px = pt1 * np.cos(phi1) + pt2 * np.cos(phi2)
    py = pt1 * np.sin(phi1) + pt2 * np.sin(phi2)
    with np.errstate(divide="ignore"):
        l1, l2 = np.log(pt1), np.log(pt2)
    # y = 1/2 log((E + pz)/(E - pz)), E ± pz = Σ pt e^{±eta}
    y = 0.5 * (np.logaddexp(l1 + eta1, l2 + eta2) - np.logaddexp(l1 - eta1, l2 - eta2))
    y = np.nan_to_num(y, nan=0.0, posinf=ETA_MAX, neginf=-ETA_MAX)
    return {
        "m_jj": m,
        "pt_jj": np.hypot(px, py),
        "y_jj": y,
        "delta_eta_jj": np.abs(deta),
        "delta_phi_jj": dphi,
        "delta_r_jj": np.hypot(deta, dphi),
    }


# --------------------------------------------------------------------------- generation


def generate_chunk(
    n: int, n_signal: int, seed: int, chunk_index: int, event_id_start: int, physics: dict | None = None
):
    """One chunk of ``n`` events (exactly ``n_signal`` signal), without the weight column.

    Uses ``rng = np.random.default_rng([seed, chunk_index])``; the order is
    shuffled with the same generator; event ids run from ``event_id_start``.
    """
    import pandas as pd

    return pd.DataFrame(_chunk_columns(n, n_signal, seed, chunk_index, event_id_start, physics))


#: Events per slice of a chunk in which the likelihood ratio and the detector map are computed
#: (they are elementwise): their temporaries are a slice's, not a chunk's.
SLICE_EVENTS = ROW_GROUP_EVENTS


def _chunk_columns(
    n: int, n_signal: int, seed: int, chunk_index: int, event_id_start: int, physics: dict | None = None, weights=None
) -> dict[str, np.ndarray]:
    """The columns of :func:`generate_chunk` (with ``weight``, third, when ``weights`` = (signal,
    background) is given), as numpy arrays.

    The random draws are made for the whole chunk, in the same order as ever; ``truth_llr`` and
    the detector columns are then computed slice by slice (:data:`SLICE_EVENTS`) into arrays of
    the chunk's length, so the chunk's memory is its output columns plus the six latent
    columns the detector map reads (``met``, ``n_extra_jets`` and ``n_pv`` are output as drawn).
    """
    p = resolve_physics(physics)
    n, n_signal = int(n), int(n_signal)
    if n < 1:
        raise ConfigError(f"n = {n} events per chunk must be >= 1")
    if not 0 <= n_signal <= n:
        raise ConfigError(f"n_signal = {n_signal} must lie in [0, n = {n}]")
    rng = np.random.default_rng([int(seed), int(chunk_index)])
    zs = sample_latent(rng, n_signal, 1, p)
    zb = sample_latent(rng, n - n_signal, 0, p)
    order = rng.permutation(n)
    z = {k: np.concatenate([zs.pop(k), zb.pop(k)])[order] for k in LATENT}
    label = np.concatenate([np.ones(n_signal, np.int8), np.zeros(n - n_signal, np.int8)])[order]
    del zs, zb, order
    cols = {EVENT_ID: np.arange(event_id_start, event_id_start + n, dtype=np.int64), LABEL: label}
    if weights is not None:
        cols[WEIGHT] = np.where(label == 1, weights[0], weights[1])
    cols[TRUTH_LLR] = np.empty(n, np.float64)
    computed = [k for k in FEATURES if k not in EXTRA]
    cols.update((k, np.empty(n, np.float64)) for k in computed)
    for a in range(0, n, SLICE_EVENTS):
        part = {k: v[a : a + SLICE_EVENTS] for k, v in z.items()}
        cols[TRUTH_LLR][a : a + SLICE_EVENTS] = log_density(part, 1, p) - log_density(part, 0, p)
        det = to_detector({k: part[k] for k in LATENT if k not in EXTRA})
        for k in computed:
            cols[k][a : a + SLICE_EVENTS] = det[k]
        del part, det
    cols.update((k, np.asarray(z.pop(k), dtype=np.float64)) for k in EXTRA)  # to_detector's pass-through
    return {k: cols[k] for k in (EVENT_ID, LABEL, *([WEIGHT] if weights is not None else []), TRUTH_LLR, *FEATURES)}


def signal_per_chunk(n_events: int, n_signal: int, chunk_size: int) -> list[tuple[int, int]]:
    """(chunk size, signal count) per chunk; signal spread proportionally, total exact."""
    out, cum_n, cum_s = [], 0, 0
    while cum_n < n_events:
        size = min(chunk_size, n_events - cum_n)
        cum_n += size
        s = n_signal * cum_n // n_events  # integer arithmetic: exact, monotone, <= size per chunk
        out.append((size, s - cum_s))
        cum_s = s
    return out


def _check_yields(yields: dict | None) -> dict[str, float]:
    if yields is None:
        return dict(DEFAULT_YIELDS)
    if not isinstance(yields, dict):
        raise ConfigError(f"yields must be a mapping with keys signal, background; got {yields!r}")
    unknown = sorted(set(yields) - set(DEFAULT_YIELDS))
    if unknown:
        raise ConfigError(f"unknown yields key(s) {unknown}; expected 'signal' and 'background'")
    out = {}
    for key in DEFAULT_YIELDS:
        if key not in yields:
            raise ConfigError(f"yields.{key} is missing")
        v = yields[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):
            raise ConfigError(f"yields.{key} = {v!r} must be a finite number > 0")
        out[key] = float(v)
    return out


def _format(out: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = FORMATS.get(out.suffix.lower())
        if fmt is None:
            raise ConfigError(f"out = {str(out)!r}: unsupported suffix {out.suffix!r}; use one of {sorted(FORMATS)}")
    if fmt not in FORMATS.values():
        raise ConfigError(f"fmt = {fmt!r} is not supported; use one of {sorted(FORMATS.values())}")
    return fmt


def generate(
    out,
    n_events: int,
    signal_fraction: float = 0.5,
    seed: int = 42,
    chunk_size: int = 1_000_000,
    yields: dict | None = None,
    physics: dict | None = None,
    fmt: str | None = None,
    summary_out=None,
) -> dict:
    """Write ``n_events`` toy events to ``out`` (Parquet or ROOT tree ``events``), chunk by chunk."""
    out = Path(out)
    for key, value in (("n_events", n_events), ("chunk_size", chunk_size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{key} = {value!r} must be an integer")
    if n_events < 1:
        raise ConfigError(f"n_events = {n_events} must be >= 1")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size = {chunk_size} must be >= 1")
    if (
        isinstance(signal_fraction, bool)
        or not isinstance(signal_fraction, numbers.Real)
        or not 0 < signal_fraction < 1
    ):
        raise ConfigError(f"signal_fraction = {signal_fraction!r} must lie strictly between 0 and 1")
    p = resolve_physics(physics)
    yields = _check_yields(yields)
    fmt = _format(out, fmt)
    n_events, chunk_size, seed = int(n_events), int(chunk_size), int(seed)
    n_signal = int(math.floor(signal_fraction * n_events + 0.5))
    n_background = n_events - n_signal
    if n_signal == 0 or n_background == 0:
        raise ConfigError(
            f"n_events = {n_events} with signal_fraction = {signal_fraction} gives "
            f"{n_signal} signal and {n_background} background events; both must be >= 1"
        )
    w_sig = yields["signal"] / n_signal
    w_bkg = yields["background"] / n_background
    plan = signal_per_chunk(n_events, n_signal, chunk_size)

    def chunks():
        start = 0
        for index, (size, sig) in enumerate(plan):
            cols = _chunk_columns(size, sig, seed, index, start, p, weights=(w_sig, w_bkg))
            log.info("chunk %d/%d: %d events (%d signal)", index + 1, len(plan), size, sig)
            start += size
            yield cols
            del cols

    with atomic_path(out) as tmp:
        if fmt == "parquet":
            _write_parquet(tmp, chunks(), row_group_events(n_events))
        else:
            _write_root(tmp, chunks())

    summary = {
        "path": str(out),
        "format": fmt,
        "n_events": n_events,
        "n_signal": n_signal,
        "n_background": n_background,
        "signal_fraction": float(signal_fraction),
        "yields": yields,
        "weight_signal": w_sig,
        "weight_background": w_bkg,
        "seed": seed,
        "chunk_size": chunk_size,
        "n_chunks": len(plan),
        "physics": p,
        "features": list(FEATURES),
    }
    log.info("wrote %d events (%d signal, %d background) to %s", n_events, n_signal, n_background, out)
    if summary_out:
        write_json(summary_out, summary)
    return summary


def _write_parquet(path: Path, chunks, rows_per_group: int) -> None:
    """Write ``chunks`` (dicts of columns) to ``path`` in row groups of at most ``rows_per_group`` events."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for cols in chunks:
            table = pa.table(cols)  # the numpy arrays, not copied
            if writer is None:
                writer = pq.ParquetWriter(
                    path, table.schema, compression="zstd", use_dictionary=dictionary_columns(table.schema)
                )
            writer.write_table(table, row_group_size=rows_per_group)  # bounds the readers' memory
            del table, cols
    finally:
        if writer is not None:
            writer.close()


def _write_root(path: Path, chunks) -> None:
    import uproot

    with uproot.recreate(path) as f:
        for i, arrays in enumerate(chunks):
            if i == 0:  # a classic TTree (uproot would write an RNTuple for f[name] = arrays)
                f.mktree(TREE, {k: v.dtype for k, v in arrays.items()}, title="hepml toy events")
            f[TREE].extend(arrays)


def main(argv=None) -> int:
    from .io import release_freed_memory

    if argv is None:  # the step's own process (python -m), never a caller's: see io.release_freed_memory
        release_freed_memory(arrow_cpp=True)

    def build(p):
        p.add_argument("--out", required=True, help="output file (.parquet or .root)")
        p.add_argument("--n-events", type=int, required=True)
        p.add_argument("--signal-fraction", type=float, default=0.5)
        p.add_argument("--seed", type=int, default=42)
        p.add_argument("--chunk-size", type=int, default=1_000_000)
        p.add_argument(
            "--yields-json",
            type=cli.json_arg,
            default=None,
            help='expected yields, e.g. \'{"signal": 1000, "background": 100000}\'',
        )
        p.add_argument(
            "--physics-json", type=cli.json_arg, default=None, help="overrides of generate.DEFAULTS, as a JSON object"
        )
        p.add_argument("--summary", default=None, help="write the summary JSON here")

    return cli.run(
        build,
        lambda a: generate(
            a.out,
            a.n_events,
            a.signal_fraction,
            a.seed,
            a.chunk_size,
            a.yields_json,
            a.physics_json,
            summary_out=a.summary,
        ),
        argv,
        "Generate the embedded toy dataset.",
    )


if __name__ == "__main__":
    raise SystemExit(main())
