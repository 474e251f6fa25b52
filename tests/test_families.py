"""The family contract, checked for every built-in family and task it declares."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, r2_score, roc_auc_score

from hepml_steps import registry
from hepml_steps.errors import DataError, FamilyError

FAST = {  # small settings so the whole matrix runs in seconds
    "xgboost": {"n_estimators": 20},
    "random_forest": {"n_estimators": 20},
    "adaboost": {"n_estimators": 20},
    "hist_gbm": {"max_iter": 20},
    "mlp": {"epochs": 5, "batch_size": 64, "learning_rate": 0.01},
    "autoencoder": {"epochs": 5},
}


def data(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=n) > 0.5).astype(np.int64)
    return X, y


def cases():
    for name in registry.BUILTIN:
        for task in registry.get(name).tasks:
            yield name, task


def test_builtin_task_table_matches_each_family():
    """The parse-time table (no imports) says what each class declares."""
    assert set(registry.BUILTIN_TASKS) == set(registry.BUILTIN)
    for name in registry.BUILTIN:
        assert set(registry.BUILTIN_TASKS[name]) == set(registry.get(name).tasks), name


@pytest.mark.parametrize("name, task", list(cases()))
def test_fit_save_load_roundtrip(name, task, tmp_path):
    cls = registry.get(name)
    X, y = data()
    if task == "regression":
        y = 2 * X[:, 0] + X[:, 1] + 0.1 * np.random.default_rng(1).normal(size=len(X))
    elif task in ("clustering", "dimreduction"):
        y = None
    elif task == "anomaly":
        X, y = X[y == 0], None
    elif task == "multiclass":  # three classes: bins of the same discriminant
        y = np.digitize(X[:, 0] + 0.5 * X[:, 1] ** 2, [0.0, 1.0])
    m = cls(task=task, params=FAST.get(name, {}), seed=3).fit(
        X[:800], y if y is None else y[:800], X_val=X[800:], y_val=None if y is None else y[800:]
    )
    s = m.predict_score(X)
    shape = (len(X), 3) if task == "multiclass" else (len(X),)
    assert s.shape == shape and np.all(np.isfinite(s))
    files = m.save(tmp_path)
    assert files and all((tmp_path / f).exists() for f in files)
    meta = {"task": task, "params": m.params, "seed": 3}
    assert np.allclose(cls.load(tmp_path, meta).predict_score(X), s, rtol=1e-6, atol=1e-7)
    if task == "classification":
        assert roc_auc_score(y[800:], s[800:]) > 0.75, name
    if task == "regression":
        assert r2_score(y[800:], s[800:]) > 0.5, name
    if task == "multiclass":
        assert np.allclose(s.sum(axis=1), 1.0, atol=1e-5), name
        assert np.mean(s[800:].argmax(axis=1) == y[800:]) > 0.6, name  # chance: about 1/3


@pytest.mark.parametrize("name", [n for n, t in cases() if t == "classification"])
def test_classifiers_honour_event_weights(name):
    """Up-weighting signal must raise the mean signal score."""
    cls = registry.get(name)
    X, y = data(1500, seed=5)
    plain = cls(params=FAST.get(name, {}), seed=0).fit(X, y, sample_weight=np.ones(len(y)))
    w = np.where(y == 1, 20.0, 1.0)
    heavy = cls(params=FAST.get(name, {}), seed=0).fit(X, y, sample_weight=w / w.mean())
    assert heavy.predict_score(X).mean() > plain.predict_score(X).mean() + 0.02, name


def test_kmeans_and_dbscan_find_blobs():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-3, 0.3, (300, 2)), rng.normal(3, 0.3, (300, 2))]).astype(np.float32)
    truth = np.repeat([0, 1], 300)
    km = registry.get("kmeans")(task="clustering", params={"n_clusters": 2}).fit(X, None)
    assert adjusted_rand_score(truth, km.predict_score(X)) > 0.99
    db = registry.get("dbscan")(task="clustering", params={"eps": 0.5, "min_samples": 5}).fit(X, None)
    assert db.info["n_clusters"] == 2 and adjusted_rand_score(truth, db.predict_score(X)) > 0.99
    far = np.array([[50.0, 50.0]], dtype=np.float32)
    assert db.predict_score(far)[0] == -1  # far from every core sample: noise


def test_clustering_with_fewer_events_than_clusters():
    X = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(DataError, match="kmeans.*fewer than n_clusters"):
        registry.get("kmeans")(task="clustering", params={"n_clusters": 5}).fit(X, None)


def test_weighted_pca():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3)) * [5.0, 1.0, 0.2]
    pca = registry.get("pca")(task="dimreduction", params={"n_components": 2}).fit(X)
    assert abs(abs(pca.components[0][0]) - 1) < 0.01 and pca.explained_variance_ratio[0] > 0.9
    w = np.where(np.arange(2000) < 1000, 1.0, 1e-6)
    X2 = X.copy()
    X2[:1000, 0] = 0.0  # the heavy half has no spread along axis 0
    wp = registry.get("pca")(task="dimreduction", params={"n_components": 1}).fit(X2, sample_weight=w)
    assert abs(wp.components[0][1]) > 0.99  # weights decide the leading direction


def test_knn_weighted_vote():
    X = np.array([[0.0], [0.1], [0.2]], dtype=np.float32)
    y = np.array([1, 0, 0])
    knn = registry.get("knn")(params={"n_neighbors": 3}).fit(X, y, sample_weight=np.array([8.0, 1.0, 1.0]))
    assert knn.predict_score(np.array([[0.1]], dtype=np.float32))[0] == pytest.approx(0.8)


def test_svm_cap_and_kernel_choice():
    cls = registry.get("svm")
    assert cls.max_train_events == 10_000
    X, y = data(600)
    lin = cls(params={"kernel": "linear", "C": 0.5}).fit(X, y)
    assert lin.estimator.kernel == "linear" and lin.estimator.C == 0.5
    s = lin.predict_score(X)
    assert ((s > 0.5) == (lin.estimator.predict(X) == 1)).mean() > 0.99  # 0.5 = SVM's own boundary


def test_every_builtin_family_declares_the_contract():
    for name in registry.BUILTIN:
        cls = registry.get(name)
        assert cls.name == name and cls.tasks and cls.file_format
        assert set(cls.search_space) <= set(cls.default_params), name
        with pytest.raises(FamilyError, match=f"'{name}'"):
            cls(task=cls.tasks[0], params={"no_such_param": 1})


def test_xgboost_job_never_imports_torch():
    code = (
        "import sys, numpy as np\n"
        "from hepml_steps import registry, train, predict, split, features, track\n"
        "m = registry.get('xgboost')(params={'n_estimators': 2}).fit(np.random.rand(50, 3), np.arange(50) % 2)\n"
        "m = registry.get('logistic_regression')().fit(np.random.rand(50, 3), np.arange(50) % 2)\n"
        "print('torch' in sys.modules, 'mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("xgboost", "dict"),
        ("random_forest", "dict"),
        ("logistic_regression", "dict"),
        ("svm", None),
        ("knn", None),
        ("mlp", None),
    ],
)
def test_native_importance_is_a_declared_hook(name, expected):
    """The importance step asks every family through ``native_importance`` (default None)."""
    from hepml_steps.importance import native_importance

    X, y = data(400)
    m = registry.get(name)(params=FAST.get(name, {})).fit(X, y)
    raw = m.native_importance()
    assert (raw is None) if expected is None else (isinstance(raw, dict) and set(raw) <= {0, 1, 2, 3})
    named = native_importance(m, ["a", "b", "c", "d"])
    assert named == ({} if raw is None else {n: raw.get(i, 0.0) for i, n in enumerate("abcd")})
    if raw:  # feature 0 carries most of the signal
        assert max(named, key=named.get) == "a"


def test_only_onnx_families_export_and_the_others_say_so(tmp_path):
    for name in registry.BUILTIN:
        cls = registry.get(name)
        assert cls.exports_onnx == (name in ("xgboost", "mlp", "autoencoder")), name
    m = registry.get("naive_bayes")().fit(*data(100))
    with pytest.raises(FamilyError, match="family 'naive_bayes' cannot export ONNX"):
        m.to_onnx(tmp_path / "model.onnx", 4)


def test_tuning_sets_the_epoch_callback_through_the_declared_hook():
    """tune.py uses set_epoch_callback, never the attribute; iterative families report through it."""
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "hepml_steps" / "tune.py").read_text()
    assert "set_epoch_callback(" in source and ".epoch_callback =" not in source
    seen = []
    m = registry.get("xgboost")(params={"n_estimators": 3})
    m.set_epoch_callback(lambda epoch, metrics: seen.append(epoch))
    X, y = data(300)
    m.fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:])
    assert seen == [0, 1, 2]


def _xgb_progress(caplog):
    """(iteration, total, {metric: text}) of every xgboost progress line logged."""
    import re

    line = re.compile(r"^xgboost: iteration (\d+)/(\d+)((?: \w+ \S+)*) \(\d+\.\d s\)$")
    out = []
    for r in caplog.records:
        m = line.match(r.getMessage())
        if r.name == "hepml.xgboost" and m:
            pairs = m.group(3).split()
            out.append((int(m.group(1)), int(m.group(2)), dict(zip(pairs[::2], pairs[1::2]))))
    return out


@pytest.mark.parametrize(
    "n_rounds, logged", [(50, [*range(3, 49, 3), 50]), (7, list(range(1, 8))), (40, list(range(2, 41, 2)))]
)
def test_xgboost_logs_progress_every_few_iterations(caplog, n_rounds, logged):
    """At most 20 lines a fit (every ceil(n/20) iterations) plus the last, from the evaluation
    XGBoost does anyway: the numbers are those of the learning curve."""
    import logging

    X, y = data(300)
    with caplog.at_level(logging.INFO, logger="hepml.xgboost"):
        m = registry.get("xgboost")(params={"n_estimators": n_rounds}).fit(
            X[:200], y[:200], X_val=X[200:], y_val=y[200:]
        )
    lines = _xgb_progress(caplog)
    assert [(i, n) for i, n, _ in lines] == [(i, n_rounds) for i in logged]
    for i, _, metrics in lines:
        assert metrics == {
            "train_loss": f"{m.history['train_loss'][i - 1]:.4g}",
            "val_loss": f"{m.history['validation_loss'][i - 1]:.4g}",
        }


def test_xgboost_progress_without_validation_and_after_early_stopping(caplog):
    import logging

    X, y = data(600)
    with caplog.at_level(logging.INFO, logger="hepml.xgboost"):
        registry.get("xgboost")(task="regression", params={"n_estimators": 5}).fit(X, X[:, 0])
    assert [(i, set(mt)) for i, _, mt in _xgb_progress(caplog)] == [(i, {"train_loss"}) for i in range(1, 6)]
    caplog.clear()
    # validation labels flipped: the validation loss rises from the first trees on
    with caplog.at_level(logging.INFO, logger="hepml.xgboost"):
        m = registry.get("xgboost")(params={"n_estimators": 200, "early_stopping_rounds": 3}).fit(
            X[:400], y[:400], X_val=X[400:], y_val=1 - y[400:]
        )
    n = m.info["n_trees"]
    assert n < 200
    lines = _xgb_progress(caplog)
    assert [i for i, _, _ in lines] == [*range(10, n + 1, 10), *([n] if n % 10 else [])]
    assert lines[-1][2]["val_loss"] == f"{m.history['validation_loss'][-1]:.4g}"
    assert (
        f"xgboost: stopped early after iteration {n}/200; best iteration {m.info['best_iteration'] + 1}"
        == caplog.records[-1].getMessage()
    )


@pytest.mark.parametrize("task", ["classification", "multiclass"])
def test_xgboost_scores_on_cpu_without_a_dmatrix(task, monkeypatch):
    """predict_score on the CPU scores the batch in place (no DMatrix copy of it) and gives the
    DMatrix predict's scores bit for bit, NaN (missing) included."""
    import xgboost as xgb

    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (task == "multiclass") * (X[:, 1] > 0.5)
    X[rng.random(X.shape) < 0.1] = np.nan
    model = registry.get("xgboost")(task=task, params={"n_estimators": 15}).fit(X, y)
    expected = model.booster.predict(xgb.DMatrix(X))

    def no_dmatrix(*a, **k):
        raise AssertionError("predict_score built a DMatrix")

    monkeypatch.setattr(xgb, "DMatrix", no_dmatrix)
    got = model.predict_score(X)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected.reshape(got.shape).astype(np.float64))
