"""The task objects (hepml_steps.tasks) and the dataset boundary (hepml_steps.dataset)."""

import json

import numpy as np
import pandas as pd
import pytest

from hepml_steps import dataset, features, tasks, train
from hepml_steps.errors import ConfigError
from tests.conftest import make_events


def test_every_task_declares_a_complete_contract():
    assert tasks.names() == ["classification", "multiclass", "anomaly", "regression", "clustering", "dimreduction"]
    for task in tasks.TASKS.values():
        assert task.title and task.leaderboard_columns, task
        assert task.rank_by[0] in {c for c, _, _ in task.leaderboard_columns}, task
        if task.tunable:
            assert task.default_objective in task.objectives, task
            assert task.check_objective(task.default_objective, "m") == task.default_objective
        for objective, way in task.objectives.items():
            assert way in ("maximize", "minimize") and task.direction(objective) == way
        if task.importance_metric:
            assert task.importance_metric[1] in (1.0, -1.0)
    assert tasks.get("classification").direction("sig_eff_at_bkg_0.05") == "maximize"


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown task 'ranking'; known tasks: classification, multiclass"):
        tasks.get("ranking")


def test_non_tunable_task_refuses_an_objective():
    with pytest.raises(ConfigError, match="tuning is not available for task 'dimreduction'"):
        tasks.get("dimreduction").check_objective("roc_auc", "model 'p'")


@pytest.fixture
def prepared(tmp_path):
    """Raw splits where the target ``m`` is also a feature, prepared by the features step."""
    raw, out = {}, {}
    for i, s in enumerate(("train", "validation", "test")):
        df = make_events(600, seed=30 + i)
        df["m"] = 100.0 + 20.0 * df["f1"] + df["f2"]  # GeV; a feature of other models too
        raw[s], out[s] = str(tmp_path / f"raw_{s}.parquet"), str(tmp_path / f"{s}.parquet")
        df.to_parquet(raw[s], index=False)
    features.features(raw, out, str(tmp_path / "transform.json"), targets=["m", "process", "absent"])
    return raw, out, tmp_path


def test_features_keep_each_target_unstandardised_beside_the_scaled_feature(prepared):
    raw, out, tmp_path = prepared
    t = json.loads((tmp_path / "transform.json").read_text())
    assert t["targets"] == ["m"] and "m" in t["columns"]  # reserved/absent targets are not copied
    for s in raw:
        src, got = pd.read_parquet(raw[s]), pd.read_parquet(out[s])
        assert np.array_equal(got["target:m"].to_numpy(), src["m"].to_numpy())  # physical units, row for row
    train_table = pd.read_parquet(out["train"])
    assert abs(train_table["m"].mean()) < 1e-4 and train_table["target:m"].mean() > 50  # scaled vs GeV
    assert "target:m" not in dataset.select_features(train_table, None)


def test_a_regression_target_is_read_in_physical_units(prepared):
    raw, out, tmp_path = prepared
    spec = {"family": "linear_regression", "task": "regression", "target": "m", "features": ["f1", "f2"]}
    data = dataset.read_fit(out["train"], spec, "model 'mass'")
    assert data.X.dtype == np.float32 and data.X.shape == (600, 2) and data.columns == ["f1", "f2"]
    assert np.allclose(data.y, pd.read_parquet(raw["train"])["m"]) and data.fit_weights.shape == (600,)
    rec = train.train(
        out["train"], out["validation"], "mass", spec, str(tmp_path / "mass"), str(tmp_path / "mass.json")
    )
    assert "m" not in rec["features"] and "target:m" not in rec["features"]
    from hepml_steps import predict

    predict.predict(str(tmp_path / "mass"), out, str(tmp_path / "pred.parquet"))
    p = pd.read_parquet(tmp_path / "pred.parquet")
    test = p[p.split == "test"]
    assert np.allclose(test["target"], pd.read_parquet(raw["test"])["m"])
    assert np.sqrt(np.mean((test["score"] - test["target"]) ** 2)) < 5.0  # GeV, not standard deviations


def test_multiclass_classes_may_be_names():
    """A multiclass target of class names (strings): the sorted names are the classes,
    a name not among them is −1, a missing or empty name is refused when learning, and
    names are never matched against numbers (a model trained on the other kind)."""
    from hepml_steps.errors import DataError

    task = tasks.get("multiclass")
    df = pd.DataFrame({"process": ["ttH", "tt", "QCD", "tt"], "f0": [0.1, 0.2, 0.3, 0.4]})
    classes = task.learn_classes(df, "process", "m")
    assert classes == ["QCD", "tt", "ttH"] and all(type(c) is str for c in classes)
    assert task.targets(df, "process", "m", classes).tolist() == [2, 1, 0, 1]
    other = pd.DataFrame({"process": ["tt", "WJets", None, "ttH"]})
    assert task.targets(other, "process", "m", classes).tolist() == [1, -1, -1, 2]
    with pytest.raises(DataError, match=r"class column 'process' has 1 missing or empty class names"):
        task.learn_classes(other, "process", "m")
    with pytest.raises(DataError, match=r"class names \['QCD', 'tt', 'ttH'\] cannot be matched to numeric"):
        task.targets(pd.DataFrame({"process": [0, 1]}), "process", "m", classes)
    with pytest.raises(DataError, match=r"numeric classes \[0, 1\] cannot be matched to class names"):
        task.targets(df, "process", "m", [0, 1])
    assert tasks.learn_classes(pd.Series([2.0, 0.0, 1.0, 2.0]), "process", "m") == [0, 1, 2]
    with pytest.raises(DataError, match=r"'f0' is not numeric"):  # regression targets stay numbers
        tasks.get("regression").targets(pd.DataFrame({"f0": ["a", "b"]}), "f0", "m")


@pytest.mark.parametrize("streamed", [False, True])
def test_a_class_name_target_never_feeds_its_own_model(tmp_path, streamed):
    """A string column ``sample`` is one-hot encoded by the features step (a feature of
    other models); the multiclass model whose target it is learns the names as classes
    and never sees ``sample_cat<i>`` (they would give it the answer)."""
    raw, out = {}, {}
    names = np.array(["WJets", "ttbar", "Higgs"])
    for i, s in enumerate(("train", "validation", "test")):
        df = make_events(600, seed=40 + i)
        df["sample"] = names[np.random.default_rng(i).integers(0, 3, len(df))]
        raw[s], out[s] = str(tmp_path / f"raw_{s}.parquet"), str(tmp_path / f"{s}.parquet")
        df.to_parquet(raw[s], index=False)
    features.features(raw, out, str(tmp_path / "transform.json"), targets=["sample"])
    table = pd.read_parquet(out["train"])
    assert {"sample_cat0", "sample_cat1", "sample_cat2"} <= set(dataset.select_features(table, None))
    spec = {"family": "xgboost", "task": "multiclass", "target": "sample", "params": {"n_estimators": 5}}
    if streamed:
        spec["stream_above_events"] = 0
    rec = train.train(
        out["train"],
        out["validation"],
        "procs",
        spec,
        str(tmp_path / "m"),
        str(tmp_path / "m.json"),
        transform=str(tmp_path / "transform.json"),
    )
    assert rec["classes"] == ["Higgs", "WJets", "ttbar"]
    assert not any(f.startswith("sample") for f in rec["features"]), rec["features"]
    assert (rec["streamed"] is not None) == streamed
    # the model scores data without the class column (real data has none)
    from hepml_steps import bundle

    b = bundle.load(tmp_path / "m")
    assert "sample" not in b.raw_columns and "sample" not in b.pre["transform"]["columns"]
    raw = pd.read_parquet(raw["test"])
    scores = b.score(raw.drop(columns=["sample"]))
    assert scores.shape == (len(raw), 3) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_a_regression_model_scores_data_without_its_target(prepared):
    """The bundle of a model of ``m`` (also a feature of other models) needs the columns
    of its own features only: ``m`` is what it predicts, absent from the data it scores."""
    from hepml_steps import bundle

    raw, out, tmp_path = prepared
    spec = {"family": "linear_regression", "task": "regression", "target": "m", "features": ["f1", "f2"]}
    train.train(
        out["train"],
        out["validation"],
        "mass",
        spec,
        str(tmp_path / "mass"),
        str(tmp_path / "mass.json"),
        transform=str(tmp_path / "transform.json"),
    )
    b = bundle.load(tmp_path / "mass")
    assert b.raw_columns == ["f1", "f2"]
    test = pd.read_parquet(raw["test"])
    assert np.allclose(b.score(test[["f1", "f2"]]), b.score(test), atol=0)


def test_a_misspelt_target_is_named_with_the_closest_column():
    from hepml_steps.errors import DataError

    df = pd.DataFrame({"process": ["tt", "ttH"], "f0": [0.1, 0.2]})
    with pytest.raises(
        DataError, match=r"class column 'Process' not found in the prepared split \(did you mean 'process'\?\)"
    ):
        tasks.get("multiclass").learn_classes(df, "Process", "model 'm'")
