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
