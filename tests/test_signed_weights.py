"""Signed (NLO) event weights: every classification family trains under the
default policy, ``keep`` is refused at parse time where a family cannot take
negative weights, the figures of merit use the signed weights correctly, and
weights whose scale starves a fit are fixed or reported."""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake.utils import update_config

from hepml_steps import config as hconfig
from hepml_steps import dataset, leaderboard, registry, train
from hepml_steps import ingest as ing
from hepml_steps import metrics as M
from hepml_steps.errors import ConfigError, DataError
from hepml_steps.families.xgb import curvature_scale
from tests.conftest import make_events
from tests.test_families import FAST

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIERS = [name for name, tasks in registry.BUILTIN_TASKS.items() if "classification" in tasks]


def signed(n: int, seed: int, negative: float = 0.2):
    """(X, y, w): the test families' toy, with a fraction ``negative`` of the weights < 0."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=n) > 0.5).astype(np.int64)
    w = np.where(rng.random(n) < negative, -1.0, 1.0) * rng.uniform(0.5, 1.5, n)
    return X, y, w


# --------------------------------------------------------------------------- the policy


def test_policies_give_the_fit_no_negative_weight_unless_kept():
    w = np.array([1.0, -1.0, 2.0, -0.5])
    y = np.array([1, 1, 0, 0])
    ignore = dataset.fit_weights(w, y, "physical", "classification")  # the default policy
    assert np.all(ignore >= 0) and ignore[1] == ignore[3] == 0 and np.isclose(ignore.mean(), 1)
    absolute = dataset.fit_weights(w, y, "physical", "classification", "abs")
    assert np.allclose(absolute, np.abs(w) * 4 / 4.5)
    kept = dataset.fit_weights(w, y, "physical", "classification", "keep")
    assert kept[1] < 0 and np.isclose(kept.mean(), 1)
    with pytest.raises(ConfigError, match="negative_weights 'drop' unknown"):
        dataset.fit_weights(w, y, "physical", "classification", "drop")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_classifier_trains_on_signed_weights_under_the_default_policy(name):
    X, y, w = signed(3000, 0)
    Xt, yt, wt = signed(2000, 1)
    fw = dataset.fit_weights(w, y, "balanced", "classification")
    model = registry.get(name)(params=FAST.get(name, {}), seed=0).fit(X, y, sample_weight=fw)
    auc = M.roc_auc(yt, model.predict_score(Xt), wt)  # judged with the signed weights
    assert 0.85 < auc <= 1.0, f"{name}: test AUC {auc:.3f}"


@pytest.mark.parametrize("name", [n for n in CLASSIFIERS if registry.get(n).accepts_negative_weights])
def test_families_that_accept_negative_weights_train_with_keep(name):
    X, y, w = signed(3000, 0)
    Xt, yt, wt = signed(2000, 1)
    fw = dataset.fit_weights(w, y, "balanced", "classification", "keep")
    assert (fw < 0).any()
    model = registry.get(name)(params=FAST.get(name, {}), seed=0).fit(X, y, sample_weight=fw)
    assert 0.85 < M.roc_auc(yt, model.predict_score(Xt), wt) <= 1.0


def test_the_declaration_is_false_by_default_and_true_only_where_the_library_takes_signed_weights():
    accepting = {n for n in registry.BUILTIN if registry.get(n).accepts_negative_weights}
    assert accepting == {"mlp", "autoencoder", "naive_bayes"}
    assert registry.get("xgboost").describe()["accepts_negative_weights"] is False


# --------------------------------------------------------------------------- parse time

DEFAULTS = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def load(override: dict):
    config = copy.deepcopy(DEFAULTS)
    update_config(config, copy.deepcopy(override))
    return hconfig.load(config, override)


def test_default_policy_is_ignore_and_reaches_every_model_spec():
    models = load({"select_models": ["bdt"]})
    assert models["bdt"]["negative_weights"] == "ignore"


def test_keep_is_refused_at_parse_time_naming_the_family():
    with pytest.raises(ConfigError) as exc:
        load({"select_models": ["bdt"], "models": {"bdt": {"negative_weights": "keep"}}})
    msg = str(exc.value)
    assert msg.startswith("models.bdt.negative_weights:") and "'xgboost'" in msg and "'ignore'" in msg
    with pytest.raises(ConfigError, match=r"^training\.negative_weights \(models\.\w+\): 'keep' but family"):
        load({"training": {"negative_weights": "keep"}})


def test_keep_is_accepted_for_a_family_that_takes_negative_weights():
    models = load(
        {
            "select_models": ["mlp"],
            "training": {"negative_weights": "abs"},
            "models": {"mlp": {"negative_weights": "keep"}},
        }
    )
    assert models["mlp"]["negative_weights"] == "keep"


# --------------------------------------------------------------------------- figures of merit


def test_auc_of_a_perfect_separation_with_signed_weights_is_one():
    for seed in range(50):
        rng = np.random.default_rng(seed)
        y = (rng.random(500) < 0.3).astype(int)
        score = np.where(y == 1, rng.uniform(0.6, 1.0, 500), rng.uniform(0.0, 0.4, 500))
        w = np.where(rng.random(500) < 0.25, -1.0, 1.0) * rng.exponential(1.0, 500)
        for c in (0, 1):  # a class's total must stay positive
            w[y == c] = np.abs(w[y == c]) if w[y == c].sum() <= 0 else w[y == c]
        assert M.roc_auc(y, score, w) <= 1.0
        assert M.roc_auc(y, score, w) == pytest.approx(1.0, abs=1e-12)


def test_signed_auc_is_the_weighted_mann_whitney_statistic():
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.5).astype(int)
    s = rng.normal(size=300) + y
    w = np.where(rng.random(300) < 0.2, -1.0, 1.0)
    ws, wb = w[y == 1], w[y == 0]
    d = s[y == 1][:, None] - s[y == 0][None, :]
    pairs = (ws[:, None] * wb[None, :]) * ((d > 0) + 0.5 * (d == 0))
    assert M.roc_auc(y, s, w) == pytest.approx(pairs.sum() / (ws.sum() * wb.sum()))


def test_ks_uses_the_signed_distributions():
    rng = np.random.default_rng(4)
    x, extra = rng.uniform(0, 1, 400), rng.uniform(0.8, 1, 100)
    # a negative-weight copy of `extra` cancels it: the signed distribution is that of x
    a = np.r_[x, extra, extra]
    wa = np.r_[np.ones(400), np.ones(100), -np.ones(100)]
    r = M.ks_overtraining(a, x, wa, np.ones(400))
    assert r["statistic"] == pytest.approx(0.0, abs=1e-12) and r["n_eff_train"] == pytest.approx(400**2 / 600)


# --------------------------------------------------------------------------- weight scale


def rare_signal(n: int, seed: int, yield_ratio: float = 0.01):
    """Balanced event counts; signal's total weight ``yield_ratio`` of the background's."""
    X, y, _ = signed(n, seed, negative=0.0)
    w = np.ones(n)
    w[y == 1] = yield_ratio * (y == 0).sum() / (y == 1).sum()
    return X, y, w


def test_physical_weighting_with_a_rare_signal_trains_a_real_bdt():
    X, y, w = rare_signal(200, 0)
    Xt, yt, wt = rare_signal(3000, 1)
    fw = dataset.fit_weights(w, y, "physical", "classification")
    assert fw[y == 1].sum() == pytest.approx(0.01 * fw[y == 0].sum())  # class ratio kept
    bdt = registry.get("xgboost")(params={"n_estimators": 20}).fit(X, y, sample_weight=fw)
    score = bdt.predict_score(Xt)
    assert np.ptp(score) > 0.1 and M.roc_auc(yt, score, wt) > 0.85  # was a constant score: AUC 0.5
    assert bdt.info["weight_scale"] > 20


def test_curvature_scale_leaves_balanced_weights_alone():
    y = np.r_[np.ones(30), np.zeros(70)]
    balanced = dataset.fit_weights(np.ones(100), y, "balanced", "classification")
    assert curvature_scale(y, balanced, "classification") == pytest.approx(1.0)
    assert curvature_scale(np.arange(90) % 3, np.ones(90), "multiclass") == pytest.approx(1.0)
    assert curvature_scale(y, balanced, "regression") == 1.0


def test_balanced_weights_give_every_class_the_same_total_and_refuse_other_targets():
    """``balanced``: each class sums to n / K (multiclass indices too, a class absent
    from a split included); a target that is not one of the classes is an error, not
    a weight left undefined."""
    w = np.random.default_rng(0).exponential(size=90)
    y = np.arange(90) % 3
    fw = dataset.fit_weights(w, y, "balanced", "multiclass")
    assert [fw[y == c].sum() for c in range(3)] == pytest.approx([30.0, 30.0, 30.0])
    two = dataset.fit_weights(w[y != 1], y[y != 1], "balanced", "multiclass")  # classes 0 and 2 only
    assert two.sum() == pytest.approx(60.0) and np.isfinite(two).all()
    with pytest.raises(DataError, match=r"1 events have a class other than \[0, 1\]; cannot balance"):
        dataset.fit_weights(np.ones(4), np.array([0, 1, 2, 1]), "balanced", "classification")


def _splits(tmp_path, n=300, yield_ratio=None):
    paths = {}
    for i, s in enumerate(("train", "validation", "test")):
        df = make_events(n, seed=40 + i)
        if yield_ratio is not None:
            sig = df["label"] == 1
            df.loc[sig, "weight"] = yield_ratio * (~sig).sum() / sig.sum()
            df.loc[~sig, "weight"] = 1.0
        paths[s] = str(tmp_path / f"{s}.parquet")
        df.to_parquet(paths[s], index=False)
    return paths


def test_a_fit_that_learned_nothing_is_an_error_naming_the_model_before_export(tmp_path):
    p = _splits(tmp_path)
    spec = {"family": "xgboost", "params": {"n_estimators": 3, "min_child_weight": 1e9}}
    with pytest.raises(DataError) as exc:
        train.train(p["train"], p["validation"], "bdt", spec, str(tmp_path / "bdt"), str(tmp_path / "bdt.json"))
    msg = str(exc.value)
    assert msg.startswith("models.bdt: the fit learned nothing (constant score") and "likely cause:" in msg
    assert "min_child_weight" in msg
    assert not (tmp_path / "bdt").exists() and not (tmp_path / "bdt.json").exists()  # nothing exported


def test_the_likely_cause_names_physical_weighting(tmp_path):
    p = _splits(tmp_path, yield_ratio=0.01)
    # no split can keep 200 of the 300 events on each side
    spec = {"family": "decision_tree", "weighting": "physical", "params": {"max_depth": 1, "min_samples_leaf": 200}}
    with pytest.raises(DataError, match=r"^models\.tree: the fit learned nothing.*weighting: physical"):
        train.train(p["train"], p["validation"], "tree", spec, str(tmp_path / "t"), str(tmp_path / "t.json"))


def test_physical_weighting_through_the_train_step(tmp_path):
    p = _splits(tmp_path, n=200, yield_ratio=0.01)
    spec = {"family": "xgboost", "weighting": "physical", "params": {"n_estimators": 20}}
    rec = train.train(p["train"], p["validation"], "bdt", spec, str(tmp_path / "bdt"), str(tmp_path / "bdt.json"))
    assert rec["info"]["weight_scale"] > 20 and (tmp_path / "bdt" / "model.onnx").exists()


# --------------------------------------------------------------------------- records


def test_ingest_records_negative_weights_per_class_and_the_leaderboard_shows_them(tmp_path):
    df = make_events(400, seed=5).drop(columns=["event_id"])
    df.loc[::5, "weight"] *= -1
    path = tmp_path / "x.parquet"
    df.to_parquet(path, index=False)
    rec = ing.ingest([{"path": str(path)}], tmp_path / "o.parquet", label_column="label", weight_column="weight")
    neg = rec["negative_weights"]
    for cls, label in (("signal", 1), ("background", 0)):
        m = (df["label"] == label) & (df["weight"] < 0)
        assert neg[cls]["n"] == int(m.sum()) and neg[cls]["sum_weights"] == pytest.approx(df.loc[m, "weight"].sum())
    head = leaderboard.markdown([], rec)
    assert f"signal {neg['signal']['n']} events" in head and "Negative event weights" in head
    assert "Negative event weights" not in leaderboard.markdown(
        [], {"negative_weights": {"signal": {"n": 0, "sum_weights": 0.0}, "background": {"n": 0, "sum_weights": 0.0}}}
    )
    assert pd.read_parquet(tmp_path / "o.parquet")["weight"].lt(0).sum() == (df["weight"] < 0).sum()


def test_a_streamed_fit_judges_the_likely_cause_on_every_training_event(tmp_path):
    """A streamed fit checks what it learned on LEARNED_SAMPLE events of its check sample, but the
    likely cause weighs the classes over every training event (the source's class sums): a class
    at 1 % of another's weight is named, with the training split's size, whatever the sample holds."""
    p = _splits(tmp_path, n=5000, yield_ratio=0.01)  # more training events than LEARNED_SAMPLE
    n_train = len(pd.read_parquet(p["train"]))
    assert n_train > train.LEARNED_SAMPLE
    spec = {
        "family": "xgboost",
        "weighting": "physical",
        "params": {"n_estimators": 3, "min_child_weight": 1e9},
        "stream_above_events": 0,
        "stream_batch_events": 128,
    }
    with pytest.raises(DataError) as exc:
        train.train(p["train"], p["validation"], "bdt", spec, str(tmp_path / "bdt"), str(tmp_path / "bdt.json"))
    msg = str(exc.value)
    assert "weighting: physical gives a class 0.01 of the weight of another" in msg
    assert f"over {n_train} training events" in msg
