import functools
import json
import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from hepml_steps import dataset as ds
from hepml_steps import predict as pr
from hepml_steps import registry
from hepml_steps import train as tr
from hepml_steps.columns import widen_scores
from hepml_steps.errors import ConfigError, DataError, FamilyError
from tests.conftest import make_events

SPLITS = ("train", "validation", "test")


@pytest.fixture
def prepared(tmp_path):
    paths = {}
    for i, s in enumerate(SPLITS):
        paths[s] = str(tmp_path / f"{s}.parquet")
        make_events(1500, seed=10 + i).to_parquet(paths[s], index=False)
    return paths


def fit(prepared, tmp_path, spec, model="m"):
    rec = tr.train(
        prepared["train"], prepared["validation"], model, spec, str(tmp_path / model), str(tmp_path / f"{model}.json")
    )
    return rec


@pytest.mark.parametrize(
    "family, params",
    [
        ("xgboost", {"n_estimators": 30, "max_depth": 3}),
        ("logistic_regression", {}),
    ],
)
def test_train_then_predict_roundtrip(family, params, prepared, tmp_path):
    rec = fit(prepared, tmp_path, {"family": family, "params": params})
    assert rec["family"] == family and rec["n_train"] == 1500 and rec["features"] == ["f0", "f1", "f2", "f3"]
    meta = json.loads((tmp_path / "m" / registry.META_FILE).read_text())
    assert meta["files"] and all((tmp_path / "m" / f).exists() for f in meta["files"])
    out = tmp_path / "pred.parquet"
    pr.predict(str(tmp_path / "m"), prepared, str(out))
    p = pd.read_parquet(out)
    assert list(p["split"].unique()) == list(SPLITS) and len(p) == 4500
    t = p[p.split == "test"]
    assert roc_auc_score(t.label, t.score, sample_weight=t.weight) > 0.8  # f0 separates the classes
    # the saved model gives the same scores as a fresh load
    model, _ = registry.load_model(tmp_path / "m")
    X = pd.read_parquet(prepared["test"])[meta["features"]].to_numpy(np.float32)
    assert np.allclose(model.predict_score(X), t.score)


def test_xgboost_records_learning_curve(prepared, tmp_path):
    rec = fit(prepared, tmp_path, {"family": "xgboost", "params": {"n_estimators": 12}})
    assert len(rec["history"]["validation_loss"]) == 12 and len(rec["history"]["train_loss"]) == 12
    assert rec["history"]["train_loss"][-1] < rec["history"]["train_loss"][0]


def test_balanced_weighting_equalises_classes():
    y = np.array([1, 1, 0, 0, 0, 0])
    w = np.array([1.0, 3.0, 1.0, 1.0, 1.0, 5.0])
    b = ds.fit_weights(w, y, "balanced", "classification")
    assert np.isclose(b[y == 1].sum(), b[y == 0].sum()) and np.isclose(b.sum(), len(w))
    assert np.isclose(b[1] / b[0], 3.0)  # relative weights within a class are kept
    assert np.allclose(ds.fit_weights(w, y, "none", "classification"), 1)
    assert np.isclose(ds.fit_weights(w, y, "physical", "classification").mean(), 1)


def test_weights_change_the_fit(prepared, tmp_path):
    df = pd.read_parquet(prepared["train"])
    df.loc[df.label == 1, "weight"] *= 50  # physical weighting now favours signal
    df.to_parquet(prepared["train"])
    r1 = fit(prepared, tmp_path, {"family": "logistic_regression", "weighting": "physical"}, "a")
    fit(prepared, tmp_path, {"family": "logistic_regression", "weighting": "none"}, "b")
    m1, _ = registry.load_model(tmp_path / "a")
    m2, _ = registry.load_model(tmp_path / "b")
    X = df[r1["features"]].to_numpy(np.float32)
    assert m1.predict_score(X).mean() > m2.predict_score(X).mean() + 0.1


def test_training_cap_is_deterministic_and_recorded(prepared, tmp_path, caplog):
    spec = {"family": "logistic_regression", "max_train_events": 400}
    r1 = fit(prepared, tmp_path, spec, "a")
    fit(prepared, tmp_path, spec, "b")
    assert r1["n_train"] == 400 and r1["train_cap"]["applied"] and r1["train_cap"]["n_before"] == 1500
    assert "capped at 400" in caplog.text
    (m1, _), (m2, _) = registry.load_model(tmp_path / "a"), registry.load_model(tmp_path / "b")
    assert np.array_equal(m1.estimator.coef_, m2.estimator.coef_)  # same subsample, same fit


def test_unknown_family_lists_known_ones(prepared, tmp_path):
    with pytest.raises(FamilyError, match="unknown model family 'nope'.*xgboost"):
        fit(prepared, tmp_path, {"family": "nope"})


def test_unknown_param_names_family(prepared, tmp_path):
    with pytest.raises(FamilyError, match="max_dept.*'xgboost'"):
        fit(prepared, tmp_path, {"family": "xgboost", "params": {"max_dept": 3}})


def test_unsupported_task_named(prepared, tmp_path):
    with pytest.raises(FamilyError, match="'logistic_regression' does not support task 'regression'"):
        fit(prepared, tmp_path, {"family": "logistic_regression", "task": "regression"})


def test_one_class_training_labels(prepared, tmp_path):
    df = pd.read_parquet(prepared["train"])
    df[df.label == 1].to_parquet(prepared["train"])
    with pytest.raises(DataError, match="one class only"):
        fit(prepared, tmp_path, {"family": "logistic_regression"})


def test_regression_target_missing_or_not_numeric_is_named(prepared, tmp_path):
    with pytest.raises(DataError, match="regression target 'nope' not found"):
        fit(prepared, tmp_path, {"family": "xgboost", "task": "regression", "target": "nope"})
    with pytest.raises(ConfigError, match="regression model needs 'target'"):
        fit(prepared, tmp_path, {"family": "xgboost", "task": "regression"})
    df = pd.read_parquet(prepared["train"])
    df["kind"] = np.where(df.label == 1, "a", "b")
    df.to_parquet(prepared["train"])
    with pytest.raises(DataError, match="regression target 'kind' is not numeric"):
        fit(prepared, tmp_path, {"family": "xgboost", "task": "regression", "target": "kind", "features": ["f0"]})
    df["f3"] = np.nan
    df.to_parquet(prepared["train"])
    with pytest.raises(DataError, match="regression target 'f3' has 1500 non-finite values"):
        fit(prepared, tmp_path, {"family": "xgboost", "task": "regression", "target": "f3"})


def test_anomaly_task_without_background_is_named(prepared, tmp_path):
    df = pd.read_parquet(prepared["train"])
    df[df.label == 1].to_parquet(prepared["train"])
    with pytest.raises(
        DataError,
        match=r"anomaly detection trains on background, but .*train.parquet has no "
        "background events",
    ):
        fit(prepared, tmp_path, {"family": "autoencoder", "task": "anomaly"})


def test_unknown_feature_named(prepared, tmp_path):
    with pytest.raises(ConfigError, match="zz"):
        fit(prepared, tmp_path, {"family": "logistic_regression", "features": ["f0", "zz"]})


def test_failed_training_keeps_previous_model(prepared, tmp_path):
    fit(prepared, tmp_path, {"family": "logistic_regression"})
    before = (tmp_path / "m" / "model.skops").read_bytes()
    with pytest.raises(FamilyError):
        fit(prepared, tmp_path, {"family": "logistic_regression", "params": {"bogus": 1}})
    assert (tmp_path / "m" / "model.skops").read_bytes() == before


def test_swapped_skops_file_with_foreign_type_is_refused(prepared, tmp_path):
    import skops.io as sio

    fit(prepared, tmp_path, {"family": "logistic_regression"})
    sio.dump({"x": pd.Timestamp("2020-01-01")}, str(tmp_path / "m" / "model.skops"))
    with pytest.raises(FamilyError, match="refusing to load"):
        registry.load_model(tmp_path / "m")
    # a file that would call builtins.eval through functools.partial on load
    sio.dump({"x": functools.partial(eval, "__import__('os').getpid()")}, str(tmp_path / "m" / "model.skops"))
    with pytest.raises(FamilyError, match=r"refusing to load .*builtins\.eval.*functools\.partial"):
        registry.load_model(tmp_path / "m")


@pytest.mark.parametrize("family", ["decision_tree", "random_forest", "adaboost", "hist_gbm", "svm", "naive_bayes"])
def test_tree_families_load_with_only_their_trusted_types(family, prepared, tmp_path):
    params = {"n_estimators": 3} if family in ("random_forest", "adaboost") else {}
    rec = fit(prepared, tmp_path, {"family": family, "params": params})
    model, _ = registry.load_model(tmp_path / "m")
    X = pd.read_parquet(prepared["test"])[rec["features"]].to_numpy(np.float32)
    assert 0.6 < roc_auc_score(pd.read_parquet(prepared["test"])["label"], model.predict_score(X))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_bdt_onnx_export_reproduces_scores(task, prepared, tmp_path):
    import onnxruntime as ort

    spec = {"family": "xgboost", "task": task, "params": {"n_estimators": 25}}
    if task == "regression":
        spec["target"] = "f1"
    rec = fit(prepared, tmp_path, spec)
    model, meta = registry.load_model(tmp_path / "m")
    assert meta["onnx"] == "model.onnx"
    X = pd.read_parquet(prepared["test"])[rec["features"]].to_numpy(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"))
    onnx_scores = sess.run(["score"], {"features": X})[0]
    assert np.allclose(onnx_scores, model.predict_score(X), atol=1e-5)


@pytest.mark.parametrize(
    "family, params, logger",
    [
        ("mlp", {"hidden_layers": [8], "epochs": 2}, "hepml.torch"),
        ("xgboost", {"n_estimators": 5}, "hepml.xgboost"),
    ],
)
def test_gpu_asked_for_but_not_usable_falls_back_with_a_warning(
    family, params, logger, prepared, tmp_path, monkeypatch, caplog
):
    """gpus: 1 with device: auto is a request for CUDA: training and inference run
    on the CPU here, say so in the log, and record the device they used."""
    import torch

    from hepml_steps.families import xgb as xgb_family

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(xgb_family, "_cuda_usable", lambda xgb: (False, "no CUDA driver (test)"))
    assert registry.requested_device({"gpus": 1}) == "cuda"
    assert registry.requested_device({"gpus": 1, "device": "cuda:1"}) == "cuda:1"
    assert registry.requested_device({"gpus": 0}) == "auto"
    with caplog.at_level(logging.WARNING):
        rec = fit(prepared, tmp_path, {"family": family, "params": params, "gpus": 1, "device": "auto"})
    assert rec["device"] == "cpu" and rec["energy"]["train"]["device"] == "cpu"
    trained = [r.getMessage() for r in caplog.records if r.name == logger]
    assert trained and all(("requested" in m) for m in trained), trained
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        record = pr.predict(str(tmp_path / "m"), prepared, str(tmp_path / "p.parquet"))
    assert record["device"] == "cpu" and record["energy"]["inference"]["device"] == "cpu"
    assert any(r.name == logger and "requested" in r.getMessage() for r in caplog.records)


def test_xgboost_uses_cuda_for_inference_when_usable(prepared, tmp_path, monkeypatch):
    from hepml_steps.families import xgb as xgb_family

    fit(prepared, tmp_path, {"family": "xgboost", "params": {"n_estimators": 5}})
    model, meta = registry.load_model(tmp_path / "m")
    assert meta["device"] == "auto"
    set_to = []
    monkeypatch.setattr(xgb_family, "_cuda_usable", lambda xgb: (True, "CUDA device visible (test)"))
    monkeypatch.setattr(model.booster, "set_param", lambda p: set_to.append(p))
    model.use_device("cuda")
    assert set_to == [{"device": "cuda"}] and model.info["device"] == "cuda"


def multi_row_groups(paths, extra=False):
    """Rewrite the splits with several row groups (400 events), a Bayes score and, with
    ``extra``, a wide column scoring never needs."""
    for p in paths.values():
        df = pd.read_parquet(p)
        df["truth_llr"] = np.linspace(-1.0, 1.0, len(df))
        if extra:
            df["blob"] = ["x" * 500] * len(df)
        df.to_parquet(p, index=False, row_group_size=400)


def test_streamed_predictions_are_those_of_the_whole_split(prepared, tmp_path):
    """Batches smaller than a row group and across row groups give, row for row,
    the table the whole-split path (read_scoring, one predict_score, pandas) gave."""
    fit(prepared, tmp_path, {"family": "xgboost", "params": {"n_estimators": 10, "max_depth": 3}})
    multi_row_groups(prepared)
    out = tmp_path / "pred.parquet"
    rec = pr.predict(str(tmp_path / "m"), prepared, str(out), batch_size=150)
    model, meta = registry.load_model(tmp_path / "m")
    expected = []
    for s in SPLITS:
        d = ds.read_scoring(prepared[s], meta)
        columns = {"event_id": d.event_ids, "split": s, "label": d.labels, "weight": d.weights}
        expected.append(pd.DataFrame({**columns, "score": model.predict_score(d.X), "truth_llr": d.truth_llr}))
    got = pd.read_parquet(out)
    assert got["score"].dtype == np.float32  # as XGBoost returns it; widened, predict_score's value for value
    pd.testing.assert_frame_equal(widen_scores(got), pd.concat(expected, ignore_index=True), check_exact=True)
    assert {s: t["n_events"] for s, t in rec["timing"].items()} == dict.fromkeys(SPLITS, 1500)
    inference = rec["energy"]["inference"]
    assert inference["scope"] == "read+inference" and inference["events"] == 1500 and inference["batch_size"] == 150


def test_scoring_reads_only_the_columns_it_needs(prepared, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    fit(prepared, tmp_path, {"family": "xgboost", "params": {"n_estimators": 5, "max_depth": 2}})
    multi_row_groups(prepared, extra=True)
    from hepml_steps import dataset as ds

    asked, read_batches, read_matrices = [], ds.read_batches, ds.read_matrices

    def spy(pf, batch_size, columns=None, *a, **kw):
        assert isinstance(pf, pq.ParquetFile)
        asked.append(("batches", columns))
        return read_batches(pf, batch_size, columns, *a, **kw)

    def spy_matrices(pf, columns, batch_size, *a, **kw):
        assert isinstance(pf, pq.ParquetFile)
        asked.append(("matrices", columns))
        return read_matrices(pf, columns, batch_size, *a, **kw)

    monkeypatch.setattr(ds, "read_batches", spy)
    monkeypatch.setattr(ds, "read_matrices", spy_matrices)
    pr.predict(str(tmp_path / "m"), prepared, str(tmp_path / "pred.parquet"), batch_size=500)
    # per split: the scoring pass reads the features alone, straight into the matrix (as bare
    # inference), the rows written after it the event columns alone: each column read once; every
    # split is scored before any row is written (the table's writer is not open during scoring)
    scoring, writing = ("matrices", ["f0", "f1", "f2", "f3"]), ("batches", ["event_id", "label", "weight", "truth_llr"])
    assert asked == [scoring] * 3 + [writing] * 3


def test_iter_scoring_batches_are_read_scoring(tmp_path):
    """Concatenated, the batches are read_scoring's Dataset, NaN filled for a family that needs it."""
    from hepml_steps import features as ft

    paths = {}
    for i, s in enumerate(SPLITS):
        df = make_events(900, seed=i)
        df.loc[df.index % 7 == 0, "f2"] = np.nan
        paths[s] = str(tmp_path / f"raw_{s}.parquet")
        df.to_parquet(paths[s], index=False)
    outs = {s: str(tmp_path / f"{s}.parquet") for s in SPLITS}
    ft.features(paths, outs, str(tmp_path / "t.json"))
    cols = ["f0", "f1", "f2", "f3"]
    for family in ("logistic_regression", "xgboost"):
        meta = {"model": "m", "task": "classification", "features": cols, "family": family}
        whole = ds.read_scoring(outs["test"], meta)
        parts = list(ds.iter_scoring(outs["test"], meta, 128))
        assert [len(p) for p in parts] == [128] * 7 + [4]
        for field in ("X", "y", "weights", "event_ids", "labels"):
            got = np.concatenate([getattr(p, field) for p in parts])
            assert (
                np.array_equal(got, getattr(whole, field), equal_nan=True) and got.dtype == getattr(whole, field).dtype
            )
        assert parts[0].prepared == whole.prepared and parts[0].truth_llr is None and whole.truth_llr is None
        assert np.isnan(whole.X).any() == (family == "xgboost")  # xgboost handles NaN: not filled
        matrices = list(ds.iter_feature_matrices(outs["test"], meta, 128))  # the X alone, the same values
        assert [len(X) for X in matrices] == [128] * 7 + [4] and all(X.dtype == np.float32 for X in matrices)
        assert np.array_equal(np.concatenate(matrices), whole.X, equal_nan=True)


def test_failed_prediction_leaves_no_table(prepared, tmp_path, monkeypatch):
    """An error half-way through the stream (here in inference) leaves no prediction file."""
    fit(prepared, tmp_path, {"family": "xgboost", "params": {"n_estimators": 5, "max_depth": 2}})
    load, calls = registry.load_model, []

    def failing(*a, **kw):
        model, meta = load(*a, **kw)
        score = model.predict_score

        def predict_score(X):
            calls.append(len(X))
            if len(calls) == 12:
                raise DataError("inference failed")
            return score(X)

        model.predict_score = predict_score
        return model, meta

    monkeypatch.setattr(registry, "load_model", failing)
    with pytest.raises(DataError, match="inference failed"):
        pr.predict(str(tmp_path / "m"), prepared, str(tmp_path / "pred.parquet"), batch_size=200)
    assert len(calls) == 12 and not list(tmp_path.glob("*pred*"))  # nor a temporary file


@pytest.mark.parametrize("empty", ["validation", "test"])  # test: the metered pass spills no score
def test_split_without_events_gives_its_empty_part(prepared, tmp_path, empty):
    fit(prepared, tmp_path, {"family": "xgboost", "params": {"n_estimators": 5, "max_depth": 2}})
    pd.read_parquet(prepared[empty]).iloc[:0].to_parquet(prepared[empty], index=False)
    rec = pr.predict(str(tmp_path / "m"), prepared, str(tmp_path / "pred.parquet"), batch_size=1000)
    p = pd.read_parquet(tmp_path / "pred.parquet")
    assert rec["timing"][empty]["n_events"] == 0
    assert p["split"].value_counts().to_dict() == {s: 1500 for s in SPLITS if s != empty}
    assert p["score"].dtype == np.float32


def test_split_scores_are_spilled_not_held(prepared, tmp_path, monkeypatch):
    """The scoring pass of each split appends each batch's scores to the scratch file and
    returns no score array; the rows written from the file are the scores of their own events."""
    fit(prepared, tmp_path, {"family": "xgboost", "params": {"n_estimators": 5, "max_depth": 2}})
    multi_row_groups(prepared)
    orig, seen = pr._score_only, []

    def score_only(model, path, meta, batch_size, task, heap, spill):
        out = orig(model, path, meta, batch_size, task, heap, spill)
        seen.append((spill.tell(), out[:3]))
        assert not any(isinstance(v, np.ndarray) for v in out)
        return out

    monkeypatch.setattr(pr, "_score_only", score_only)
    pr.predict(str(tmp_path / "m"), prepared, str(tmp_path / "pred.parquet"), batch_size=400)
    assert seen == [(1500 * 8, (np.dtype(np.float64), (), 1500))] * 3
    model, meta = registry.load_model(tmp_path / "m")
    for s in SPLITS:
        got = pd.read_parquet(tmp_path / "pred.parquet").query(f"split == '{s}'")
        d = ds.read_scoring(prepared[s], meta)
        np.testing.assert_array_equal(got["event_id"].to_numpy(), d.event_ids)
        np.testing.assert_array_equal(got["score"].to_numpy(np.float64), model.predict_score(d.X))


def test_inference_temporaries_reuse_the_heap_only_while_scoring(prepared, tmp_path, monkeypatch):
    """In a step process (mmap threshold fixed by release_freed_memory) predict_score runs with
    glibc's threshold lifted, so a model's temporaries reuse heap pages instead of fresh mmaps;
    reading and writing the batches run under the fixed one; the heap is trimmed at the end."""
    from hepml_steps import io
    from hepml_steps.families.xgb import XGBoostFamily

    fit(prepared, tmp_path, {"family": "xgboost", "params": {"n_estimators": 5, "max_depth": 2}})
    state, seen, trims = {io._M_MMAP_THRESHOLD: 128 * 1024, io._M_TRIM_THRESHOLD: 128 * 1024}, [], []

    def mallopt(param, value):
        state[param] = value
        return True

    score, write = XGBoostFamily.predict_score, pr._Writer.write
    monkeypatch.setattr(io, "_mallopt", mallopt)
    monkeypatch.setattr(io, "_malloc_trim", lambda: trims.append(dict(state)))
    monkeypatch.setattr(XGBoostFamily, "predict_score", lambda s, X: seen.append(("score", dict(state))) or score(s, X))
    monkeypatch.setattr(pr._Writer, "write", lambda s, t: seen.append(("write", dict(state))) or write(s, t))

    monkeypatch.setattr(io, "_fixed_threshold", None)  # a caller's process: nothing changed
    pr.predict(str(tmp_path / "m"), prepared, str(tmp_path / "a.parquet"), batch_size=500)
    assert all(s == {io._M_MMAP_THRESHOLD: 128 * 1024, io._M_TRIM_THRESHOLD: 128 * 1024} for _, s in seen)
    assert not trims

    seen.clear()
    monkeypatch.setattr(io, "_fixed_threshold", 128 * 1024)
    pr.predict(str(tmp_path / "m"), prepared, str(tmp_path / "b.parquet"), batch_size=500)
    scores = [s for k, s in seen if k == "score"]
    writes = [s for k, s in seen if k == "write"]
    assert len(scores) == 9 and len(writes) == 3  # batches of 500; the rows written a row group at a time
    assert all(s[io._M_MMAP_THRESHOLD] == io._MAX_MMAP_THRESHOLD and s[io._M_TRIM_THRESHOLD] > 2**27 for s in scores)
    assert [k for k, _ in seen] == ["score"] * 9 + ["write"] * 3  # every split scored, then the rows written
    assert all(s == {io._M_MMAP_THRESHOLD: 128 * 1024, io._M_TRIM_THRESHOLD: 128 * 1024} for s in writes)
    # trimmed after each split's scoring pass, and before each row group the rows are written from
    assert len(trims) == 6 and all(
        t == {io._M_MMAP_THRESHOLD: 128 * 1024, io._M_TRIM_THRESHOLD: 128 * 1024} for t in trims
    )
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet"))


@pytest.mark.parametrize("labels", [[1, 0, 1, 0], [1, None, 0, 1]])
def test_batch_targets_are_the_pandas_targets(labels):
    """Task.batch_targets (Arrow, what scoring a batch calls) gives what targets gives on the
    batch as pandas, for every task; classification and the unsupervised tasks convert nothing."""
    import pyarrow as pa

    from hepml_steps import tasks

    batch = pa.RecordBatch.from_pydict(
        {
            "label": pa.array(labels, pa.int8()),
            "weight": [1.0, 2.0, 3.0, 4.0],
            "target:m": [1.5, 2.5, 3.5, 4.5],
            "cls": ["a", "b", "a", "c"],
        }
    )
    cases = {"classification": None, "regression": "m", "multiclass": "cls", "anomaly": None, "clustering": None}
    for name, target in cases.items():
        task = tasks.get(name)
        classes = ["a", "b"] if name == "multiclass" else None
        try:
            want = task.targets(batch.to_pandas(), target, "m", classes)
        except DataError:
            continue  # e.g. a regression target with a missing value: batch_targets raises the same
        got = task.batch_targets(batch, target, "m", classes)
        if want is None:
            assert got is None, name
        else:
            assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), name


def test_scoring_a_classification_batch_converts_nothing_to_pandas(prepared, tmp_path, monkeypatch):
    from hepml_steps import tasks

    fit(prepared, tmp_path, {"family": "xgboost", "params": {"n_estimators": 5, "max_depth": 2}})
    _, meta = registry.load_model(tmp_path / "m")
    whole = ds.read_scoring(prepared["test"], meta)
    monkeypatch.setattr(tasks.Classification, "targets", lambda *a, **k: pytest.fail("converted to pandas"))
    ys = [d.y for d in ds.iter_scoring(prepared["test"], meta, 400)]
    assert np.array_equal(np.concatenate(ys), whole.y) and np.concatenate(ys).dtype == whole.y.dtype


def test_split_column_names_each_row_group_written(prepared, tmp_path):
    """Every row written names its split (large_string), also in a short last row group."""
    import pyarrow.parquet as pq

    fit(prepared, tmp_path, {"family": "xgboost", "params": {"n_estimators": 5, "max_depth": 2}})
    multi_row_groups(prepared)  # 400+400+400+300 events per split
    pr.predict(str(tmp_path / "m"), prepared, str(tmp_path / "p.parquet"), batch_size=1000)
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.schema.field("split").type == "large_string"
    assert table.column("split").to_pylist() == [s for s in SPLITS for _ in range(1500)]
    assert pq.ParquetFile(tmp_path / "p.parquet").metadata.num_row_groups == 12


def test_prediction_row_groups_are_the_splits_cut_at_row_group_events(prepared, tmp_path, monkeypatch):
    """The prediction table is written a row group of a split at a time, cut to at most
    io.row_group_events(split events): row groups that grow with the splits."""
    import pyarrow.parquet as pq

    from hepml_steps import io as hio

    fit(prepared, tmp_path, {"family": "xgboost", "params": {"n_estimators": 5, "max_depth": 2}})
    multi_row_groups(prepared)  # 400+400+400+300 events per split
    monkeypatch.setattr(hio, "ROW_GROUP_EVENTS", 200)
    counts = []
    for max_groups in (256, 2):  # row_group_events(1500): 200, then 800
        monkeypatch.setattr(hio, "MAX_ROW_GROUPS", max_groups)
        pr.predict(str(tmp_path / "m"), prepared, str(tmp_path / f"p{max_groups}.parquet"), batch_size=1000)
        md = pq.ParquetFile(tmp_path / f"p{max_groups}.parquet").metadata
        counts.append([md.row_group(g).num_rows for g in range(md.num_row_groups)])
    assert counts == [[200, 200, 200, 200, 200, 200, 200, 100] * 3, [400, 400, 400, 300] * 3]


def test_scores_are_stored_in_the_familys_dtype_only_when_exact():
    """float64 families keep float64; a float32 family's scores are narrowed only when every
    value is a float32 one (else the family's score_dtype is wrong: refused, not rounded)."""
    exact = {"score": np.array([0.25, 1 / 3], dtype=np.float32).astype(np.float64)}
    assert pr._stored(exact, "float64") is exact
    narrow = pr._stored(exact, "float32")["score"]
    assert narrow.dtype == np.float32 and np.array_equal(narrow.astype(np.float64), exact["score"])
    with pytest.raises(FamilyError, match="not float32"):
        pr._stored({"score": np.array([1 / 3])}, "float32")


def test_scratch_heap_restores_the_thresholds_when_scoring_raises(monkeypatch):
    from hepml_steps import io

    state = {io._M_MMAP_THRESHOLD: 128 * 1024, io._M_TRIM_THRESHOLD: 128 * 1024}
    monkeypatch.setattr(io, "_mallopt", lambda p, v: state.__setitem__(p, v) or True)
    monkeypatch.setattr(io, "_malloc_trim", lambda: None)
    monkeypatch.setattr(io, "_fixed_threshold", 128 * 1024)
    with pytest.raises(RuntimeError), io.ScratchHeap() as heap, heap.calls():
        assert state[io._M_MMAP_THRESHOLD] == io._MAX_MMAP_THRESHOLD
        raise RuntimeError("a model failed")
    assert state == {io._M_MMAP_THRESHOLD: 128 * 1024, io._M_TRIM_THRESHOLD: 128 * 1024}


def test_libc_is_looked_up_once(monkeypatch):
    """mallopt runs twice per inference batch: ctypes.util.find_library (an ldconfig process) only once."""
    import ctypes.util

    from hepml_steps import io

    io._libc.cache_clear()
    calls = []
    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda n: calls.append(n) or real(n))
    for _ in range(5):
        io._mallopt(io._M_TRIM_THRESHOLD, io._DEFAULT_TRIM)
    assert len(calls) <= 1
