"""Tests of the embedded toy generator (hepml_steps.generate)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import integrate, stats
from sklearn.metrics import roc_auc_score

from hepml_steps import generate as g
from hepml_steps.errors import ConfigError

from .conftest import ROOT

CONTINUOUS = ("m", "pt", "y", "phi", "cos_theta", "phi_star", "met")
DISCRETE = ("n_extra_jets", "n_pv")
P_MIN = 1e-3


def _support(name: str, cls: int, p: dict) -> tuple[float, float]:
    """Integration range holding all but a negligible part of the density."""
    s = "signal" if cls == 1 else "background"
    if name == "m":
        return p["m_min"], p["m_max"]
    if name == "pt":
        return 0.0, 80.0 * p[f"pt_scale_{s}"]
    if name == "y":
        w = p[f"y_width_{s}"]
        return -15.0 * w, 15.0 * w
    if name in ("phi", "phi_star"):
        return -math.pi, math.pi
    if name == "cos_theta":
        return -1.0, 1.0
    if name == "met":
        return 0.0, 60.0 * p[f"met_mean_{s}"]
    raise AssertionError(name)


def _numerical_cdf(name: str, cls: int, physics: dict | None = None):
    """CDF by trapezoidal integration of exp(log_density_var) on a fine grid (not renormalised)."""
    p = g.resolve_physics(physics)
    lo, hi = _support(name, cls, p)
    grid = np.linspace(lo, hi, 400_001)
    grid[-1] = np.nextafter(hi, lo) if name in ("phi", "phi_star") else hi  # half-open support
    dens = np.exp(g.log_density_var(name, grid, cls, physics))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    return lambda x: np.interp(x, grid, cdf, left=0.0, right=cdf[-1])


# --------------------------------------------------------------------------- densities


@pytest.mark.parametrize("cls", [1, 0])
@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_latent_matches_density(name, cls):
    z = g.sample_latent(np.random.default_rng(1234 + cls), 20_000, cls)
    assert set(z) == set(g.LATENT)
    assert all(v.dtype == np.float64 and v.shape == (20_000,) for v in z.values())
    result = stats.kstest(z[name], _numerical_cdf(name, cls))
    assert result.pvalue > P_MIN, (name, cls, result)


@pytest.mark.parametrize("a", [0.3, 1.0, 4.0, 50.0])
def test_cos_theta_sampler_any_shape(a):
    """The Cardano inversion is right for every a >= 0, not just the default."""
    physics = {"cos_theta_a_background": a}
    z = g.sample_latent(np.random.default_rng(7), 20_000, 0, physics)
    assert np.all(np.abs(z["cos_theta"]) <= 1)
    assert stats.kstest(z["cos_theta"], _numerical_cdf("cos_theta", 0, physics)).pvalue > P_MIN


@pytest.mark.parametrize("cls", [1, 0])
@pytest.mark.parametrize("name", DISCRETE)
def test_poisson_latent_matches_pmf(name, cls):
    n = 20_000
    x = g.sample_latent(np.random.default_rng(99 + cls), n, cls)[name]
    assert np.array_equal(x, np.round(x)) and x.min() >= 0
    pmf = np.exp(g.log_density_var(name, np.arange(200.0), cls))
    expected = n * pmf
    # bins with expectation >= 5, the rest merged into the two tails
    keep = np.flatnonzero(expected >= 5)
    lo, hi = keep[0], keep[-1]
    edges = np.concatenate([[-0.5], np.arange(lo, hi + 1) + 0.5, [np.inf]])
    observed = np.histogram(x, bins=edges)[0]
    exp_binned = np.concatenate([[expected[: lo + 1].sum()], expected[lo + 1 : hi + 1], [n - expected[: hi + 1].sum()]])
    if exp_binned[-1] < 1:  # negligible upper tail: fold into the last bin
        observed = np.concatenate([observed[:-2], [observed[-2:].sum()]])
        exp_binned = np.concatenate([exp_binned[:-2], [exp_binned[-2:].sum()]])
    assert stats.chisquare(observed, exp_binned).pvalue > P_MIN


@pytest.mark.parametrize("cls", [1, 0])
@pytest.mark.parametrize("name", CONTINUOUS)
def test_density_integrates_to_one(name, cls):
    p = g.resolve_physics()
    lo, hi = _support(name, cls, p)
    f = lambda x: float(np.exp(g.log_density_var(name, np.array([x]), cls)[0]))  # noqa: E731
    points = [p["m_mean_signal"]] if name == "m" else None
    total = integrate.quad(f, lo, hi, points=points, limit=500, epsabs=1e-12, epsrel=1e-10)[0]
    assert total == pytest.approx(1.0, abs=1e-7)
    # zero density outside the support
    outside = {
        "m": [lo - 1, hi + 1],
        "pt": [-1.0],
        "phi": [-4.0, math.pi],
        "phi_star": [4.0],
        "cos_theta": [-1.01, 1.01],
        "met": [-0.5],
        "y": [],
    }[name]
    if outside:
        assert np.all(np.isneginf(g.log_density_var(name, np.array(outside), cls)))


@pytest.mark.parametrize("cls", [1, 0])
@pytest.mark.parametrize("name", DISCRETE)
def test_pmf_sums_to_one(name, cls):
    assert np.exp(g.log_density_var(name, np.arange(500.0), cls)).sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.isneginf(g.log_density_var(name, np.array([-1.0, 2.5]), cls)))


def test_log_density_is_sum_of_terms_and_llr_cancels_nuisances():
    z = g.sample_latent(np.random.default_rng(3), 1000, 1)
    for cls in (0, 1):
        total = sum(g.log_density_var(k, z[k], cls) for k in g.LATENT)
        np.testing.assert_allclose(g.log_density(z, cls), total, rtol=1e-12)
    for k in ("phi", "phi_star", "n_pv"):
        np.testing.assert_array_equal(g.log_density_var(k, z[k], 1), g.log_density_var(k, z[k], 0))


def test_truth_llr_is_calibrated():
    """With equal class counts, P(signal | llr) = sigmoid(llr): checked in 20 quantile bins."""
    df = g.generate_chunk(100_000, 50_000, seed=5, chunk_index=0, event_id_start=0)
    prob = 1.0 / (1.0 + np.exp(-df["truth_llr"].to_numpy()))
    label = df["label"].to_numpy()
    bins = np.quantile(prob, np.linspace(0, 1, 21))
    idx = np.clip(np.searchsorted(bins, prob, side="right") - 1, 0, 19)
    obs = np.bincount(idx, weights=label, minlength=20)
    exp = np.bincount(idx, weights=prob, minlength=20)
    var = np.bincount(idx, weights=prob * (1 - prob), minlength=20)
    chi2 = float(np.sum((obs - exp) ** 2 / var))
    assert stats.chi2.sf(chi2, 20) > P_MIN, chi2


# --------------------------------------------------------------------------- detector map


def _swap(z: dict) -> dict:
    z2 = dict(z)
    z2["cos_theta"] = -z["cos_theta"]
    z2["phi_star"] = (z["phi_star"] + 2 * math.pi) % (2 * math.pi) - math.pi  # phi* + pi, wrapped
    return z2


@pytest.fixture(scope="module")
def latent():
    rng = np.random.default_rng(11)
    zs, zb = g.sample_latent(rng, 20_000, 1), g.sample_latent(rng, 20_000, 0)
    return {k: np.concatenate([zs[k], zb[k]]) for k in g.LATENT}


def test_detector_reproduces_pair_kinematics(latent):
    d = g.to_detector(latent)
    assert set(d) == set(g.FEATURES)
    np.testing.assert_allclose(d["m_jj"], latent["m"], rtol=1e-9)
    np.testing.assert_allclose(d["pt_jj"], latent["pt"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(d["y_jj"], latent["y"], rtol=1e-9, atol=1e-9)
    assert np.all(d["j1_pt"] >= d["j2_pt"])
    assert np.all((d["delta_phi_jj"] >= 0) & (d["delta_phi_jj"] <= math.pi))
    for k in ("j1_phi", "j2_phi"):
        assert np.all(np.abs(d[k]) <= math.pi)
    np.testing.assert_allclose(d["delta_eta_jj"], np.abs(d["j1_eta"] - d["j2_eta"]), atol=1e-12)
    np.testing.assert_allclose(d["delta_r_jj"], np.hypot(d["delta_eta_jj"], d["delta_phi_jj"]), rtol=1e-12)
    for k in g.EXTRA:
        np.testing.assert_array_equal(d[k], latent[k])


def _four(pt, eta, phi):
    return np.stack([pt * np.cosh(eta), pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)])


def test_detector_inverts_to_decay_angles(latent):
    """Boosting j1 back to the pair rest frame (lab-parallel axes) recovers ±(θ*, φ*)."""
    d = g.to_detector(latent)
    j1 = _four(d["j1_pt"], d["j1_eta"], d["j1_phi"])
    pair = j1 + _four(d["j2_pt"], d["j2_eta"], d["j2_phi"])
    m = np.sqrt(pair[0] ** 2 - (pair[1:] ** 2).sum(0))
    beta = pair[1:] / pair[0]
    gamma = pair[0] / m
    bp = (beta * j1[1:]).sum(0)
    b2 = (beta**2).sum(0)
    rest = j1[1:] + ((gamma - 1) * bp / b2 - gamma * j1[0]) * beta
    n = rest / np.linalg.norm(rest, axis=0)
    s = np.sqrt(1 - latent["cos_theta"] ** 2)
    n_true = np.stack([s * np.cos(latent["phi_star"]), s * np.sin(latent["phi_star"]), latent["cos_theta"]])
    same = np.abs(n - n_true).max(0)
    flipped = np.abs(n + n_true).max(0)
    assert np.all(np.minimum(same, flipped) < 1e-6)
    assert 0.2 < np.mean(same < flipped) < 0.8  # both daughters lead sometimes


def test_swap_involution_leaves_detector_and_densities_unchanged(latent):
    z2 = _swap(latent)
    d1, d2 = g.to_detector(latent), g.to_detector(z2)
    for k in g.FEATURES:
        np.testing.assert_allclose(d2[k], d1[k], rtol=1e-9, atol=1e-9, err_msg=k)
    for cls in (0, 1):
        np.testing.assert_allclose(g.log_density(z2, cls), g.log_density(latent, cls), rtol=1e-12)


def test_extreme_kinematics_stay_finite():
    physics = {"y_width_background": 8.0, "pt_scale_background": 0.05, "m_min": 1.0, "m_slope_background": 2.0}
    df = g.generate_chunk(50_000, 100, seed=3, chunk_index=0, event_id_start=0, physics=physics)
    assert np.isfinite(df.to_numpy(dtype=np.float64)).all()
    assert df[["j1_eta", "j2_eta"]].abs().to_numpy().max() <= g.ETA_MAX


# --------------------------------------------------------------------------- chunks and files


def test_generate_chunk_contents():
    df = g.generate_chunk(5000, 1234, seed=1, chunk_index=3, event_id_start=100)
    assert list(df.columns) == ["event_id", "label", "truth_llr", *g.FEATURES]
    assert df["event_id"].dtype == np.int64 and df["label"].dtype == np.int8
    assert all(df[c].dtype == np.float64 for c in ["truth_llr", *g.FEATURES])
    np.testing.assert_array_equal(df["event_id"], np.arange(100, 5100))
    assert int(df["label"].sum()) == 1234
    assert 0 < df["label"].to_numpy()[:1234].sum() < 1234  # shuffled, not signal-first
    assert np.isfinite(df.to_numpy(dtype=np.float64)).all()
    pd.testing.assert_frame_equal(df, g.generate_chunk(5000, 1234, 1, 3, 100))
    assert not df.equals(g.generate_chunk(5000, 1234, 1, 4, 100))


@pytest.mark.parametrize("n,s,c", [(10, 5, 3), (10_007, 3_002, 1000), (7, 1, 100), (100, 99, 1), (1000, 500, 333)])
def test_signal_per_chunk_exact(n, s, c):
    plan = g.signal_per_chunk(n, s, c)
    assert sum(size for size, _ in plan) == n and sum(k for _, k in plan) == s
    assert all(0 <= k <= size <= c for size, k in plan)


def test_chunked_parquet_counts_weights_and_summary(tmp_path):
    out, summ = tmp_path / "toy.parquet", tmp_path / "toy.json"
    yields = {"signal": 12.5, "background": 3456.0}
    res = g.generate(out, 10_007, signal_fraction=0.3, seed=9, chunk_size=1000, yields=yields, summary_out=summ)
    pf = pq.ParquetFile(out)
    assert pf.metadata.num_row_groups == 11
    assert [pf.metadata.row_group(i).num_rows for i in range(11)] == [1000] * 10 + [7]
    df = pd.read_parquet(out)
    assert len(df) == 10_007
    np.testing.assert_array_equal(df["event_id"], np.arange(10_007))
    assert df["event_id"].is_unique
    assert int(df["label"].sum()) == 3002 == res["n_signal"]
    assert res["n_background"] == 7005
    w = df["weight"].to_numpy()
    sig = df["label"].to_numpy() == 1
    assert w[sig].sum() == pytest.approx(12.5, rel=1e-12)
    assert w[~sig].sum() == pytest.approx(3456.0, rel=1e-12)
    assert np.all(w[sig] == 12.5 / 3002) and np.all(w[~sig] == 3456.0 / 7005)
    assert np.isfinite(df.to_numpy(dtype=np.float64)).all()
    assert json.loads(summ.read_text()) == json.loads(json.dumps(res))
    for key in ("n_events", "n_signal", "n_background", "yields", "seed", "chunk_size", "physics"):
        assert key in res
    assert res["physics"] == g.DEFAULTS and res["yields"] == yields
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_row_groups_grow_with_the_sample(tmp_path, monkeypatch):
    """Each chunk is written in row groups of io.row_group_events(n_events): more events than
    MAX_ROW_GROUPS x ROW_GROUP_EVENTS make larger row groups, the same values."""
    import pyarrow.parquet as pq

    from hepml_steps import io as hio

    def sizes(path):
        md = pq.ParquetFile(path).metadata
        return [md.row_group(g).num_rows for g in range(md.num_row_groups)]

    monkeypatch.setattr(hio, "ROW_GROUP_EVENTS", 100)
    g.generate(tmp_path / "a.parquet", 3000, seed=1, chunk_size=1000)
    assert sizes(tmp_path / "a.parquet") == [100] * 30
    monkeypatch.setattr(hio, "MAX_ROW_GROUPS", 4)  # 3,000 events: row groups of 800
    g.generate(tmp_path / "b.parquet", 3000, seed=1, chunk_size=1000)
    assert sizes(tmp_path / "b.parquet") == [800, 200] * 3
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))


def test_only_columns_that_repeat_values_are_dictionary_encoded(tmp_path):
    """The sample's floats and event ids are written plain (a dictionary of unique values costs
    time, size and the writer's memory); the label, an integer that repeats, as a dictionary."""
    import pyarrow.parquet as pq

    g.generate(tmp_path / "t.parquet", 3000, seed=1, chunk_size=1000)
    md = pq.ParquetFile(tmp_path / "t.parquet").metadata
    rg = md.row_group(0)
    dictionary = {rg.column(i).path_in_schema for i in range(rg.num_columns) if rg.column(i).has_dictionary_page}
    assert "label" in dictionary and not dictionary & {"event_id", "weight", "truth_llr", "met"}, dictionary


def test_same_seed_same_file_different_seed_different(tmp_path):
    a, b, c = (tmp_path / f"{x}.parquet" for x in "abc")
    g.generate(a, 3000, seed=1, chunk_size=700)
    g.generate(b, 3000, seed=1, chunk_size=700)
    g.generate(c, 3000, seed=2, chunk_size=700)
    assert a.read_bytes() == b.read_bytes()
    da, dc = pd.read_parquet(a), pd.read_parquet(c)
    assert not np.allclose(da["m_jj"], dc["m_jj"])
    assert da["label"].sum() == dc["label"].sum() == 1500


def test_root_matches_parquet(tmp_path):
    import uproot

    g.generate(tmp_path / "t.parquet", 2500, seed=4, chunk_size=1000, physics={"m_mean_signal": 90.0})
    g.generate(tmp_path / "t.root", 2500, seed=4, chunk_size=1000, physics={"m_mean_signal": 90.0})
    pdf = pd.read_parquet(tmp_path / "t.parquet")
    with uproot.open(tmp_path / "t.root") as f:
        assert f.classnames() == {"events;1": "TTree"}  # a classic TTree, as ROOT users expect
        tree = f["events"]
        assert tree.num_entries == 2500
        arrays = tree.arrays(library="np")
    assert set(arrays) == set(pdf.columns)
    for col in pdf.columns:
        assert arrays[col].dtype == pdf[col].dtype, col
        np.testing.assert_array_equal(arrays[col], pdf[col].to_numpy(), err_msg=col)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"n_events": 0}, "n_events"),
        ({"signal_fraction": 0.0}, "signal_fraction"),
        ({"signal_fraction": 1.0}, "signal_fraction"),
        ({"signal_fraction": 1.5}, "signal_fraction"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"physics": {"m_mass_typo": 3.0}}, "m_mass_typo"),
        ({"physics": {"m_width_signal": -1.0}}, "m_width_signal"),
        ({"physics": {"m_max": 10.0}}, "m_max"),
        ({"yields": {"signal": 1.0}}, "background"),
        ({"yields": {"signal": 1.0, "background": 1.0, "other": 2.0}}, "other"),
        ({"out": "toy.csv"}, "suffix"),
        ({"fmt": "hdf5"}, "fmt"),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path, kwargs, key):
    args = {"out": "toy.parquet", "n_events": 100}
    args.update(kwargs)
    args["out"] = tmp_path / args["out"]
    with pytest.raises(ConfigError, match=key):
        g.generate(**args)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_file(tmp_path, capsys):
    out, summ = tmp_path / "cli.parquet", tmp_path / "cli.json"
    rc = g.main(
        [
            "--out",
            str(out),
            "--n-events",
            "1500",
            "--signal-fraction",
            "0.2",
            "--seed",
            "3",
            "--chunk-size",
            "400",
            "--yields-json",
            '{"signal": 2.0, "background": 8.0}',
            "--physics-json",
            '{"m_width_signal": 10.0}',
            "--summary",
            str(summ),
        ]
    )
    assert rc == 0
    df = pd.read_parquet(out)
    assert len(df) == 1500 and int(df["label"].sum()) == 300
    assert df["weight"].sum() == pytest.approx(10.0)
    s = json.loads(summ.read_text())
    assert s["physics"]["m_width_signal"] == 10.0 and s["chunk_size"] == 400
    rc = g.main(["--out", str(tmp_path / "bad.parquet"), "--n-events", "10", "--physics-json", '{"nope": 1}'])
    assert rc == 1
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "bad.parquet").exists()


def test_module_entry_point(tmp_path):
    out = tmp_path / "m.root"
    proc = subprocess.run(
        [sys.executable, "-m", "hepml_steps.generate", "--out", str(out), "--n-events", "200"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


# --------------------------------------------------------------------------- physics benchmark


@pytest.fixture(scope="module")
def samples():
    train = g.generate_chunk(200_000, 100_000, seed=101, chunk_index=0, event_id_start=0)
    test = g.generate_chunk(200_000, 100_000, seed=202, chunk_index=0, event_id_start=200_000)
    return train, test


def test_bayes_auc_in_target_range(samples):
    _, test = samples
    auc = roc_auc_score(test["label"], test["truth_llr"])
    assert 0.90 <= auc <= 0.95, auc


def test_low_level_logistic_clearly_worse(samples):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = samples
    cols = list(g.LOW_LEVEL)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(train[cols], train["label"])
    auc_lr = roc_auc_score(test["label"], model.predict_proba(test[cols])[:, 1])
    bayes = roc_auc_score(test["label"], test["truth_llr"])
    assert auc_lr <= bayes - 0.05, (auc_lr, bayes)


def test_xgboost_approaches_but_does_not_beat_bayes(samples):
    import xgboost

    train, test = samples
    cols = list(g.FEATURES)
    model = xgboost.XGBClassifier(
        tree_method="hist", n_estimators=200, max_depth=6, learning_rate=0.1, n_jobs=2, random_state=0
    )
    model.fit(train[cols], train["label"])
    auc_xgb = roc_auc_score(test["label"], model.predict_proba(test[cols])[:, 1])
    bayes = roc_auc_score(test["label"], test["truth_llr"])
    assert auc_xgb < bayes, (auc_xgb, bayes)
    assert auc_xgb > bayes - 0.02, (auc_xgb, bayes)  # the written columns carry the information
