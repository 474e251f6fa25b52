"""Columns as physicists have them: missing values, constant and categorical
columns, leakage, and a derived regression target in GeV (issue 4 of 7)."""

import json
import logging

import numpy as np
import pandas as pd
import pytest

from hepml_steps import dataset, evaluate, leaderboard, predict, train
from hepml_steps import features as ft
from hepml_steps import ingest as ing
from hepml_steps.errors import DataError

SPLITS = ("train", "validation", "test")


def _events(n, seed, second_jet_prob=0.5):
    """Signal/background with a second-jet pT that is NaN when the event has one jet
    (more often for background), as ``Jet_pt[1]`` gives it."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.5).astype(np.int8)
    x0 = rng.normal(label * 1.0, 1.0)
    j2 = rng.normal(40 + 20 * label, 10)
    has_j2 = rng.random(n) < np.where(label == 1, 0.73, 0.40)
    j2[~has_j2] = np.nan
    return pd.DataFrame(
        {"event_id": np.arange(n) + seed * 10 * n, "label": label, "weight": np.ones(n), "x0": x0, "j2_pt": j2}
    )


def _write_splits(tmp_path, make, n=(3000, 1000, 1000)):
    paths = {}
    for i, (s, m) in enumerate(zip(SPLITS, n)):
        paths[s] = str(tmp_path / f"split_{s}.parquet")
        make(m, i).to_parquet(paths[s], index=False)
    return paths


def _prepare(tmp_path, paths, **kw):
    outs = {s: str(tmp_path / f"feat_{s}.parquet") for s in SPLITS}
    t = ft.features(paths, outs, str(tmp_path / "transform.json"), **kw)
    return t, outs


def _fit(tmp_path, outs, name, spec):
    return train.train(
        outs["train"],
        outs["validation"],
        name,
        spec,
        str(tmp_path / "models" / name),
        str(tmp_path / f"{name}.train.json"),
    )


# ----------------------------------------------------------------------------- missing values


def test_keep_nan_xgboost_uses_every_event_others_impute(tmp_path):
    paths = _write_splits(tmp_path, _events)
    t, outs = _prepare(tmp_path, paths, missing_indicators=True)
    prepared = pd.read_parquet(outs["train"])
    n_nan = int(pd.read_parquet(paths["train"])["j2_pt"].isna().sum())
    assert prepared["j2_pt"].isna().sum() == n_nan > 0  # NaN kept, every event there
    assert t["missing"]["train"] == {"j2_pt": n_nan} and "j2_pt" in t["fill"]
    assert (prepared["j2_pt_missing"] == prepared["j2_pt"].isna()).all()
    saved = json.loads((tmp_path / "transform.json").read_text())
    assert saved["fill"]["j2_pt"] == pytest.approx(np.nanmedian(prepared["j2_pt"]), abs=1e-5)

    xgb = dataset.read_fit(outs["train"], {"family": "xgboost"}, "m")
    lr = dataset.read_fit(outs["train"], {"family": "logistic_regression"}, "m")
    j = xgb.columns.index("j2_pt")
    assert len(xgb) == len(lr) == 3000
    assert np.isnan(xgb.X[:, j]).sum() == n_nan and not np.isnan(lr.X).any()
    assert np.allclose(lr.X[np.isnan(xgb.X[:, j]), j], saved["fill"]["j2_pt"])
    params = {"xgboost": {"n_estimators": 10}, "hist_gbm": {"max_iter": 10}, "logistic_regression": {}}
    for family, prm in params.items():
        rec = _fit(tmp_path, outs, family, {"family": family, "params": prm})
        assert rec["n_train"] == 3000


def test_all_nan_column_is_dropped_not_the_events(tmp_path, caplog):
    df = _events(200, 0).drop(columns=["event_id"])
    df["truth_only"] = np.nan
    path = tmp_path / "x.parquet"
    df.to_parquet(path, index=False)
    with caplog.at_level(logging.WARNING, logger="hepml.ingest"):
        rec = ing.ingest(
            [{"path": str(path)}],
            tmp_path / "o.parquet",
            label_column="label",
            columns=["x0", "j2_pt", "truth_only"],
            nonfinite="drop",
        )
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert "truth_only" not in out.columns and "truth_only" in rec["excluded"] and "truth_only" in caplog.text
    assert len(out) == int(df["j2_pt"].notna().sum())  # only the j2_pt NaN events dropped (drop policy)
    rec = ing.ingest([{"path": str(path)}], tmp_path / "k.parquet", label_column="label", nonfinite="keep")
    assert rec["n_events"] == 200 and "truth_only" in rec["excluded"]
    # and at the features step: a column missing in every training event is left out, not the events
    paths = _write_splits(tmp_path, lambda n, s: _events(n, s).assign(dead=np.nan), (300, 100, 100))
    t, outs = _prepare(tmp_path, paths)
    assert "dead" in t["left_out"] and len(pd.read_parquet(outs["train"])) == 300


# ----------------------------------------------------------------------------- constant columns


def test_float_constant_column_with_noise_left_out_with_warning(tmp_path, caplog):
    rng = np.random.default_rng(3)
    paths = _write_splits(
        tmp_path, lambda n, s: _events(n, s).assign(beam=14.63 + rng.normal(0, 1e-15, n)), (500, 100, 100)
    )
    with caplog.at_level(logging.WARNING, logger="hepml.features"):
        t, outs = _prepare(tmp_path, paths)
    assert "beam" not in t["columns"] and "constant" in t["left_out"]["beam"]
    assert "beam" in caplog.text
    assert np.nanmax(np.abs(pd.read_parquet(outs["test"])[t["outputs"]].to_numpy())) < 1e3  # nothing blown up


# ----------------------------------------------------------------------------- categorical columns


def _channel_events(n, seed):
    """The class shows only through the channel string: x0 alone is weak."""
    rng = np.random.default_rng(seed + 10)
    label = (rng.random(n) < 0.5).astype(np.int8)
    channel = np.where(rng.random(n) < np.where(label == 1, 0.9, 0.1), "ee", "mumu")
    return pd.DataFrame(
        {
            "event_id": np.arange(n) + seed * 10 * n,
            "label": label,
            "weight": np.ones(n),
            "x0": rng.normal(0.3 * label, 1.0),
            "channel": channel,
        }
    )


def test_string_category_encoded_and_lifts_auc(tmp_path):
    df = _channel_events(300, 0).drop(columns=["event_id"])
    df.to_parquet(tmp_path / "in.parquet", index=False)
    ing.ingest([{"path": str(tmp_path / "in.parquet")}], tmp_path / "o.parquet", label_column="label")
    assert set(pd.read_parquet(tmp_path / "o.parquet")["channel"]) == {"ee", "mumu"}  # ingest keeps it

    def make(n, s):
        d = _channel_events(n, s)
        if s == 2:
            d.loc[:9, "channel"] = "tautau"  # unseen in train
        return d

    paths = _write_splits(tmp_path, make)
    t, outs = _prepare(tmp_path, paths)
    assert t["categories"] == {"channel": ["ee", "mumu"]}
    assert t["unseen"]["test"] == {"channel": 10}
    test = pd.read_parquet(outs["test"])
    assert (test.loc[:9, ["channel_cat0", "channel_cat1"]].to_numpy() == 0).all()
    aucs = {}
    for name, cols in (("with", None), ("without", ["x0"])):
        _fit(tmp_path, outs, name, {"family": "logistic_regression", "features": cols})
        predict.predict(str(tmp_path / "models" / name), outs, str(tmp_path / f"{name}.pred.parquet"))
        m = evaluate.evaluate(
            str(tmp_path / f"{name}.pred.parquet"), str(tmp_path / f"{name}.m.json"), name, "classification"
        )
        aucs[name] = m["metrics"]["roc_auc"]
    assert aucs["with"] > aucs["without"] + 0.2, aucs


# ----------------------------------------------------------------------------- leakage


def _run_events(n, seed):
    """Signal MC and a data sideband with different run ranges."""
    d = _events(n, seed).drop(columns=["j2_pt"])
    rng = np.random.default_rng(seed + 20)
    d["run"] = np.where(d["label"] == 1, rng.integers(1, 10, n), rng.integers(300000, 300100, n))
    return d


def test_run_column_separating_classes_is_flagged(tmp_path, caplog):
    paths = _write_splits(tmp_path, _run_events, (1000, 300, 300))
    t, outs = _prepare(tmp_path, paths)
    assert "run" in t["identifier_like"]
    with caplog.at_level(logging.WARNING, logger="hepml.leakage"):
        rec = _fit(tmp_path, outs, "bdt", {"family": "logistic_regression"})
    flagged = {f["column"]: f for f in rec["leakage"]["flagged"]}
    a = flagged["run"]["auc"]
    assert list(flagged) == ["run"] and max(a, 1 - a) > 0.995 and "run" in caplog.text
    assert rec["leakage"]["aucs"]["x0"] < 0.9
    predict.predict(str(tmp_path / "models" / "bdt"), outs, str(tmp_path / "p.parquet"))
    evaluate.evaluate(
        str(tmp_path / "p.parquet"),
        str(tmp_path / "m.json"),
        "bdt",
        "classification",
        extra=str(tmp_path / "bdt.train.json"),
    )
    rows = leaderboard.leaderboard([str(tmp_path / "m.json")], str(tmp_path / "lb.csv"), str(tmp_path / "lb.md"))
    assert "run" in rows[0]["leakage"] and "Possible leakage" in (tmp_path / "lb.md").read_text()
    with pytest.raises(DataError, match="possible leakage.*'run'"):
        _fit(tmp_path, outs, "strict", {"family": "logistic_regression", "leakage": "fail"})


# ----------------------------------------------------------------------------- derived target in GeV


def _dilepton_events(n, seed, smear=5.0):
    """Two leptons (pT in GeV, η, φ); the target m_ll is derived from them, the
    feature is a measurement of it smeared by ``smear`` GeV."""
    rng = np.random.default_rng(seed + 30)
    pt1, pt2 = rng.uniform(20, 120, n), rng.uniform(20, 120, n)
    eta1, eta2 = rng.uniform(-2.4, 2.4, n), rng.uniform(-2.4, 2.4, n)
    phi1, phi2 = rng.uniform(-np.pi, np.pi, n), rng.uniform(-np.pi, np.pi, n)
    m = np.sqrt(2 * pt1 * pt2 * (np.cosh(eta1 - eta2) - np.cos(phi1 - phi2)))
    return pd.DataFrame(
        {
            "event_id": np.arange(n) + seed * 10 * n,
            "label": (rng.random(n) < 0.5).astype(np.int8),
            "weight": np.ones(n),
            "l1_pt": pt1,
            "l1_eta": eta1,
            "l1_phi": phi1,
            "l2_pt": pt2,
            "l2_eta": eta2,
            "l2_phi": phi2,
            "m_meas": m + rng.normal(0, smear, n),
        }
    )


def test_derived_dilepton_mass_target_reported_in_gev(tmp_path):
    paths = _write_splits(tmp_path, _dilepton_events)
    derived = {"m_ll": "sqrt(2 * l1_pt * l2_pt * (cosh(l1_eta - l2_eta) - cos(l1_phi - l2_phi)))"}
    _, outs = _prepare(tmp_path, paths, derived=derived, targets=["m_ll"])
    test = pd.read_parquet(outs["test"])
    assert test["target:m_ll"].mean() > 50  # GeV, not standardised
    spec = {"family": "linear_regression", "task": "regression", "target": "m_ll", "features": ["m_meas"]}
    _fit(tmp_path, outs, "mll", spec)
    predict.predict(str(tmp_path / "models" / "mll"), outs, str(tmp_path / "p.parquet"))
    pred = pd.read_parquet(tmp_path / "p.parquet")
    assert pred["score"].mean() == pytest.approx(test["target:m_ll"].mean(), rel=0.05)  # predictions in GeV
    m = evaluate.evaluate(str(tmp_path / "p.parquet"), str(tmp_path / "m.json"), "mll", "regression")["metrics"]
    print(f"derived m_ll target: resolution_68 = {m['resolution_68']:.2f} GeV (true smearing 5 GeV)")
    assert 4.0 < m["resolution_68"] < 6.0
