"""benchmarks/bare_predict.py, the bare reference of the predict step's time: in a fresh
process, with the libraries alone, it scores what hepml's model scores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hepml_steps import registry
from hepml_steps import train as tr
from tests.conftest import make_events

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test")
MLP = {"hidden_layers": [8, 8], "epochs": 1, "batch_size": 256}


@pytest.fixture
def results(tmp_path):
    (tmp_path / "features").mkdir()
    for i, s in enumerate(SPLITS):
        make_events(1200, seed=20 + i).to_parquet(tmp_path / "features" / f"{s}.parquet", index=False)
    return tmp_path


def bare(results, model, tmp_path):
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)  # for the fallback
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bare_predict.py"), str(results), model]
    cmd += ["--batch-size", "500", "--threads", "1", "--scores", str(tmp_path / f"{model}.npy")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), np.load(tmp_path / f"{model}.npy")


@pytest.mark.parametrize(
    "name, spec, how",
    [
        ("bdt", {"family": "xgboost", "params": {"n_estimators": 10, "max_depth": 3}}, "xgboost Booster"),
        ("mlp", {"family": "mlp", "params": MLP}, "torch.nn.Sequential"),
        ("tanh", {"family": "mlp", "params": {**MLP, "activation": "tanh"}}, "torch.nn.Sequential"),
        (
            "reg",
            {"family": "mlp", "task": "regression", "target": "f3", "features": ["f0", "f1", "f2"], "params": MLP},
            "torch.nn.Sequential",
        ),
    ],
)
def test_bare_scores_are_the_models_without_hepml(results, tmp_path, name, spec, how):
    mdir = results / "models" / name
    f = results / "features"
    tr.train(str(f / "train.parquet"), str(f / "validation.parquet"), name, spec, str(mdir), str(tmp_path / "r.json"))
    got, scores = bare(results, name, tmp_path)
    assert got["how"].startswith(how) and got["n_events"] == 3600 and not got["hepml_imported"]
    model, meta = registry.load_model(mdir)
    X = pd.read_parquet(f / "test.parquet")[meta["features"]].to_numpy(np.float32)
    np.testing.assert_allclose(scores, model.predict_score(X), rtol=1e-6, atol=1e-7)


def test_a_model_without_a_bare_loader_says_it_used_hepml(results, tmp_path):
    f = results / "features"
    mdir = results / "models" / "lr"
    spec = {"family": "logistic_regression"}
    tr.train(str(f / "train.parquet"), str(f / "validation.parquet"), "lr", spec, str(mdir), str(tmp_path / "r.json"))
    got, scores = bare(results, "lr", tmp_path)
    assert "hepml registry" in got["how"] and got["hepml_imported"] and len(scores) == 1200
