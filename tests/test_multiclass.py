"""Multiclass classification: every family that supports it, the figures of
merit against scikit-learn, and the train -> predict -> evaluate chain."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from hepml_steps import evaluate as ev
from hepml_steps import metrics as M
from hepml_steps import predict as pr
from hepml_steps import registry
from hepml_steps import train as tr
from hepml_steps.errors import ConfigError, DataError, FamilyError

SPLITS = ("train", "validation", "test")
CLASS_VALUES = (10, 20, 30)  # not 0..K-1 on purpose: the model maps them to indices
MULTICLASS_FAMILIES = [
    "logistic_regression",
    "decision_tree",
    "random_forest",
    "adaboost",
    "hist_gbm",
    "xgboost",
    "svm",
    "knn",
    "naive_bayes",
    "mlp",
]
SMALL = {
    "random_forest": {"n_estimators": 30},
    "adaboost": {"n_estimators": 30},
    "hist_gbm": {"max_iter": 30},
    "xgboost": {"n_estimators": 30, "max_depth": 3},
    "mlp": {"hidden_layers": [16], "epochs": 15, "learning_rate": 0.01},
}


def make_three_classes(n: int, seed: int) -> pd.DataFrame:
    """Three processes, each a Gaussian blob in (f0, f1); f2 is noise."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 3, n)
    centres = np.array([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])
    xy = rng.normal(size=(n, 2)) + centres[k]
    return pd.DataFrame(
        {
            "event_id": np.arange(n, dtype=np.int64) * 11 + seed * 100_000,
            "label": (k == 1).astype(np.int8),
            "weight": rng.uniform(0.5, 2.0, n),
            "f0": xy[:, 0],
            "f1": xy[:, 1],
            "f2": rng.normal(size=n),
            "process": np.asarray(CLASS_VALUES)[k],
        }
    )


@pytest.fixture
def prepared(tmp_path):
    paths = {}
    for i, s in enumerate(SPLITS):
        paths[s] = str(tmp_path / f"{s}.parquet")
        make_three_classes(1200, seed=20 + i).to_parquet(paths[s], index=False)
    return paths


def spec_for(family, **extra):
    return {"family": family, "task": "multiclass", "target": "process", "params": SMALL.get(family, {}), **extra}


def test_every_multiclass_family_is_listed():
    supports = sorted(n for n in registry.available() if "multiclass" in registry.get(n).tasks)
    assert supports == sorted(MULTICLASS_FAMILIES)


@pytest.mark.parametrize("family", MULTICLASS_FAMILIES)
def test_family_learns_three_classes(family, prepared, tmp_path):
    rec = tr.train(
        prepared["train"],
        prepared["validation"],
        "mc",
        spec_for(family),
        str(tmp_path / "mc"),
        str(tmp_path / "mc.json"),
    )
    assert rec["classes"] == list(CLASS_VALUES) and "process" not in rec["features"]
    out = tmp_path / "pred.parquet"
    pr.predict(str(tmp_path / "mc"), prepared, str(out))
    p = pd.read_parquet(out)
    test = p[p.split == "test"]
    probs = test[["prob_0", "prob_1", "prob_2"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5) and (probs >= -1e-9).all()
    assert np.array_equal(test["score"].to_numpy(), probs.argmax(axis=1))
    truth = pd.read_parquet(prepared["test"])["process"].map({v: i for i, v in enumerate(CLASS_VALUES)})
    assert np.array_equal(test["target"].to_numpy(), truth.to_numpy())
    # the blobs overlap a little: a working model gets most events right, chance is 1/3
    acc = skm.accuracy_score(test["target"], test["score"].astype(int), sample_weight=test["weight"])
    assert acc > 0.75, f"{family}: accuracy {acc:.3f}"
    # a fresh load of the saved files gives the same probabilities
    model, _ = registry.load_model(tmp_path / "mc")
    X = pd.read_parquet(prepared["test"])[rec["features"]].to_numpy(np.float32)
    assert np.allclose(model.predict_score(X), probs, atol=1e-6)


@pytest.mark.parametrize("family", ["xgboost", "mlp"])
def test_multiclass_onnx_export_reproduces_probabilities(family, prepared, tmp_path):
    import onnxruntime as ort

    rec = tr.train(
        prepared["train"],
        prepared["validation"],
        "mc",
        spec_for(family),
        str(tmp_path / "mc"),
        str(tmp_path / "mc.json"),
    )
    model, meta = registry.load_model(tmp_path / "mc")
    X = pd.read_parquet(prepared["test"])[rec["features"]].to_numpy(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "mc" / meta["onnx"]))
    out = sess.run(["score"], {"features": X})[0]
    assert out.shape == (len(X), 3)
    assert np.allclose(out, model.predict_score(X), atol=1e-5)


def test_multiclass_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    n, k = 3000, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    w = rng.uniform(0.2, 3.0, n)
    m = M.multiclass_metrics(y, P, w)
    pred = P.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=w))
    assert m["error_rate"] == pytest.approx(1 - m["accuracy"])
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", sample_weight=w))
    assert m["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro", sample_weight=w))
    assert m["sensitivity_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro", sample_weight=w))
    assert m["cross_entropy"] == pytest.approx(skm.log_loss(y, P, sample_weight=w))
    assert m["roc_auc"] == pytest.approx(
        np.mean([skm.roc_auc_score(y == c, P[:, c], sample_weight=w) for c in range(k)])
    )
    assert np.allclose(m["confusion"], skm.confusion_matrix(y, pred, sample_weight=w))
    # events of a class the model never saw (-1) are left out of every figure and counted apart
    m2 = M.multiclass_metrics(np.r_[y, -1, -1], np.vstack([P, np.eye(k)[:2]]), np.r_[w, 1.0, 3.0])
    for key in ("accuracy", "f1_macro", "cross_entropy", "roc_auc", "precision_macro"):
        assert m2[key] == pytest.approx(m[key]), key
    assert m2["unseen_class_fraction"] == pytest.approx(4.0 / (w.sum() + 4.0))
    assert np.sum(m2["confusion"]) == pytest.approx(w.sum())


@pytest.mark.parametrize("case", ["constant guess", "class never predicted", "class absent from truth"])
def test_multiclass_macro_figures_in_degenerate_cases_match_scikit_learn(case):
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    guess = {
        "constant guess": [0] * 8,
        "class never predicted": [0, 0, 1, 1, 1, 1, 0, 0],
        "class absent from truth": [0, 2, 1, 1, 1, 2, 0, 2],
    }[case]
    if case == "class absent from truth":
        y = np.array([0, 0, 1, 1, 1, 1, 0, 1])
    P = np.full((8, 3), 0.1)
    P[np.arange(8), guess] = 0.8
    m = M.multiclass_metrics(y, P)
    labels = sorted(set(y) | set(guess))
    kw = {"labels": labels, "average": "macro", "zero_division": 0}
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, guess, **kw))
    assert m["precision_macro"] == pytest.approx(skm.precision_score(y, guess, **kw))
    assert m["sensitivity_macro"] == pytest.approx(skm.recall_score(y, guess, **kw))


def test_evaluate_writes_multiclass_figures(prepared, tmp_path):
    rec = tr.train(
        prepared["train"],
        prepared["validation"],
        "mc",
        spec_for("logistic_regression"),
        str(tmp_path / "mc"),
        str(tmp_path / "mc.json"),
    )
    pr.predict(str(tmp_path / "mc"), prepared, str(tmp_path / "pred.parquet"))
    res = ev.evaluate(
        str(tmp_path / "pred.parquet"),
        str(tmp_path / "metrics.json"),
        "mc",
        "multiclass",
        extra=str(tmp_path / "mc.json"),
    )
    m = res["metrics"]
    assert m["n_classes"] == 3 and 0.9 < m["roc_auc"] <= 1 and m["accuracy_train"] > 0.75
    assert {f"ks_pvalue_class{c}" for c in range(3)} <= set(m)
    assert res["overtraining"]["flagged"] is False  # a linear model on 1200 events does not overtrain
    assert res["confusion"]["classes"] == list(CLASS_VALUES)
    cm = np.array(res["confusion"]["matrix"])
    test = pd.read_parquet(prepared["test"])
    assert cm.sum() == pytest.approx(test["weight"].sum()) and cm.shape == (3, 3)
    assert json.loads((tmp_path / "metrics.json").read_text())["extra"]["classes"] == list(CLASS_VALUES)
    assert rec["classes"] == list(CLASS_VALUES)


def test_class_absent_from_training_is_left_out_of_validation(prepared, tmp_path, caplog):
    val = pd.read_parquet(prepared["validation"])
    val.loc[val.index[:7], "process"] = 99  # a process the training split does not have
    val.to_parquet(prepared["validation"], index=False)
    rec = tr.train(
        prepared["train"],
        prepared["validation"],
        "mc",
        spec_for("naive_bayes"),
        str(tmp_path / "mc"),
        str(tmp_path / "mc.json"),
    )
    assert rec["n_validation"] == len(val) - 7
    assert "7 events of a class absent from training" in caplog.text


def test_multiclass_bad_input_names_the_culprit(prepared, tmp_path):
    def run(spec):
        return tr.train(
            prepared["train"], prepared["validation"], "mc", spec, str(tmp_path / "mc"), str(tmp_path / "mc.json")
        )

    with pytest.raises(ConfigError, match="multiclass model needs 'target'"):
        run({"family": "xgboost", "task": "multiclass"})
    with pytest.raises(DataError, match="class column 'nope' not found"):
        run(spec_for("xgboost", target="nope"))
    with pytest.raises(DataError, match="'f0' has .* distinct values .* use task 'regression'"):
        run(spec_for("xgboost", target="f0"))
    with pytest.raises(FamilyError, match="family 'autoencoder' does not support task 'multiclass'"):
        run(spec_for("autoencoder"))
    df = pd.read_parquet(prepared["train"])
    df["process"] = 10
    df.to_parquet(prepared["train"], index=False)
    with pytest.raises(DataError, match="'process' has one class only"):
        run(spec_for("xgboost"))


@pytest.mark.parametrize("objective", ["roc_auc", "cross_entropy"])
def test_multiclass_tuning_uses_a_multiclass_objective(objective, prepared, tmp_path):
    from hepml_steps import tune as tn

    spec = spec_for(
        "xgboost",
        tune={
            "n_trials": 3,
            "objective": objective,
            "search_space": {"max_depth": {"type": "int", "low": 1, "high": 4}},
        },
    )
    res = tn.tune(
        prepared["train"],
        prepared["validation"],
        "mc",
        spec,
        str(tmp_path / "mc.tune.json"),
        str(tmp_path / "mc.trials.csv"),
    )
    assert res["objective"] == objective and res["n_complete"] >= 1
    assert res["direction"] == ("maximize" if objective == "roc_auc" else "minimize")
    assert (0.9 < res["best_value"] <= 1.0) if objective == "roc_auc" else (0 < res["best_value"] < 0.6)
    with pytest.raises(ConfigError, match="unknown tuning objective 'sensitivity' for task 'multiclass'"):
        tn.check_objective("sensitivity", "multiclass", "model 'mc'")


@pytest.mark.parametrize("family", ["xgboost", "logistic_regression", "mlp", "knn"])
def test_cross_validated_tuning_survives_a_fold_without_the_rarest_class(family, prepared, tmp_path):
    """One training event of the last class: most CV folds train without it, yet
    every fit must still give K probability columns."""
    from hepml_steps import tune as tn

    df = pd.read_parquet(prepared["train"])
    rare = df["process"] == 30
    df = pd.concat([df[~rare], df[rare].iloc[:1]]).reset_index(drop=True)
    df.to_parquet(prepared["train"], index=False)
    val = pd.read_parquet(prepared["validation"])
    val[val["process"] != 30].to_parquet(prepared["validation"], index=False)
    space = {
        "xgboost": {"max_depth": {"type": "int", "low": 1, "high": 3}},
        "logistic_regression": {"C": {"type": "float", "low": 0.1, "high": 10.0, "log": True}},
        "mlp": {"learning_rate": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
        "knn": {"n_neighbors": {"type": "int", "low": 5, "high": 20}},
    }[family]
    spec = spec_for(family, tune={"n_trials": 2, "cv_folds": 3, "search_space": space})
    res = tn.tune(
        prepared["train"], prepared["validation"], "mc", spec, str(tmp_path / "t.json"), str(tmp_path / "t.csv")
    )
    assert res["n_failed"] == 0 and res["n_complete"] == 2


def test_two_class_multiclass_bdt_onnx_keeps_the_class_order(prepared, tmp_path):
    """onnxmltools treats a 2-class softprob booster as binary and swaps its columns."""
    import onnxruntime as ort

    for s in SPLITS:
        df = pd.read_parquet(prepared[s])
        df[df["process"] != 30].to_parquet(prepared[s], index=False)
    rec = tr.train(
        prepared["train"],
        prepared["validation"],
        "mc",
        spec_for("xgboost"),
        str(tmp_path / "mc"),
        str(tmp_path / "mc.json"),
    )
    assert rec["classes"] == [10, 20]
    model, meta = registry.load_model(tmp_path / "mc")
    X = pd.read_parquet(prepared["test"])[rec["features"]].to_numpy(np.float32)
    out = ort.InferenceSession(str(tmp_path / "mc" / meta["onnx"])).run(["score"], {"features": X})[0]
    assert out.shape == (len(X), 2) and np.allclose(out, model.predict_score(X), atol=1e-5)
