"""Unlabelled inputs: accepted when no model that runs needs labels; the table
has no ``label`` column, and figures against the labels are left out.

The rule: every input is labelled (a ``label`` each, or ``label_column``) or
none is; a model whose task needs labels (classification, anomaly detection,
``target: label``) with unlabelled inputs is an error when the config is read.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake.utils import update_config

from hepml_steps import config as hconfig
from hepml_steps import dataset, ingest, inputs, plots, tasks
from hepml_steps.errors import ConfigError, DataError
from hepml_steps.evaluate import evaluate

from .nanoaod_files import sample

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _table(path: Path, n: int = 400, seed: int = 0) -> Path:
    """A Parquet file of unlabelled events: two features and a target ``y = 3 a + b``."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    pd.DataFrame({"a": a, "b": b, "y": 3 * a + b}).to_parquet(path, index=False)
    return path


def _load(override: dict):
    config = copy.deepcopy(DEFAULTS)
    update_config(config, copy.deepcopy(override))
    return hconfig.load(config, override)


def _error(override: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        _load(override)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def _files(*specs, **settings) -> dict:
    return {"data": {"source": "files", "files": {"inputs": list(specs), **settings}}}


# -- the rule --------------------------------------------------------------------
def test_every_input_labelled_or_none(tmp_path):
    a, b = str(_table(tmp_path / "a.parquet")), str(_table(tmp_path / "b.parquet", seed=1))
    assert inputs.labelled([{"path": a, "label": 1}, {"path": b, "label": 0}], None)
    assert inputs.labelled([{"path": a, "label": 1}, {"path": b}], "is_signal")  # the column labels b
    assert not inputs.labelled([{"path": a}, {"path": b}], None)
    with pytest.raises(
        ConfigError,
        match=r"^data\.files\.inputs: 'label' is given for data\.files\.inputs\[0\] "
        r"\(.*a\.parquet\) but not for data\.files\.inputs\[1\] \(.*b\.parquet\); "
        r"label every input \(or set data\.files\.label_column\), or none",
    ):
        inputs.labelled([{"path": a, "label": 1}, {"path": b}], None)


def test_a_model_that_needs_labels_is_refused_when_the_config_is_read(tmp_path):
    path = str(_table(tmp_path / "mc.parquet"))
    unlabelled = _files({"path": path})
    msg = _error({**unlabelled, "select_models": ["bdt"]})
    assert msg.startswith(
        f"models.bdt: task 'classification' needs labelled events; data.files.inputs[0] ({path}) has no label"
    )
    assert "models.autoencoder: task 'anomaly' needs labelled events" in _error(
        {**unlabelled, "select_models": ["autoencoder"]}
    )
    # every model that runs is checked: the default selection holds classifiers
    assert _error(unlabelled).startswith("models.")
    # a model of the labels themselves needs them too
    assert _error(
        {
            **unlabelled,
            "select_models": ["lab"],
            "models": {"lab": {"family": "xgboost", "task": "multiclass", "target": "label"}},
        }
    ).startswith("models.lab: task 'multiclass' with target 'label' needs labelled events")
    models = _load(
        {
            **unlabelled,
            "select_models": ["reg", "kmeans", "pca"],
            "models": {"reg": {"family": "linear_regression", "task": "regression", "target": "y"}},
        }
    )
    assert sorted(models) == ["kmeans", "pca", "reg"]


def test_mixed_inputs_are_refused_when_the_config_is_read(tmp_path):
    a, b = str(_table(tmp_path / "a.parquet")), str(_table(tmp_path / "b.parquet", seed=1))
    assert _error(_files({"path": a, "label": 1}, {"path": b})).startswith(
        "data.files.inputs: 'label' is given for data.files.inputs[0]"
    )
    _load(_files({"path": a, "label": 1}, {"path": b}, label_column="a", signal_values=[1]))  # the column labels b


def test_task_objects_say_what_needs_labels():
    needs = {name: t.needs_labels() for name, t in tasks.TASKS.items()}
    assert needs == {
        "classification": True,
        "multiclass": False,
        "anomaly": True,
        "regression": False,
        "clustering": False,
        "dimreduction": False,
    }
    assert tasks.get("multiclass").needs_labels("label") and not tasks.get("multiclass").needs_labels("process")


# -- the table and the data boundary ---------------------------------------------
def test_ingest_writes_no_label_column_and_records_unlabelled(tmp_path):
    a, b = _table(tmp_path / "a.parquet"), _table(tmp_path / "b.parquet", seed=1)
    rec = ingest.ingest(
        [{"path": str(a)}, {"path": str(b)}],
        tmp_path / "events.parquet",
        summary_out=tmp_path / "ingest.json",
        cut="a > -1",
    )
    table = pd.read_parquet(tmp_path / "events.parquet")
    assert list(table.columns[:2]) == ["event_id", "weight"] and "label" not in table.columns
    assert rec["labelled"] is False and rec["n_events"] == len(table)
    assert rec["n_signal"] is None and rec["n_background"] is None and rec["sum_weights"] == len(table)
    assert [f["label"] for f in rec["files"]] == [None, None]
    assert [c["after_nonfinite"] for c in rec["cutflow"]] == [f["n_kept"] for f in rec["files"]]
    assert json.loads((tmp_path / "ingest.json").read_text())["labelled"] is False


def test_dataset_reads_unlabelled_splits_and_anomaly_refuses_them(tmp_path):
    df = pd.read_parquet(_table(tmp_path / "a.parquet")).assign(event_id=np.arange(400), weight=1.0)
    df.to_parquet(tmp_path / "train.parquet", index=False)
    spec = {"task": "regression", "target": "y", "weighting": "balanced"}
    data = dataset.read_fit(str(tmp_path / "train.parquet"), spec, "model 'reg'")
    assert data.labels is None and data.columns == ["a", "b"] and np.allclose(data.y, df["y"])
    assert data.take(np.arange(3)).labels is None
    meta = {"model": "reg", "task": "regression", "features": ["a", "b"], "target": "y"}
    assert dataset.read_scoring(str(tmp_path / "train.parquet"), meta).labels is None
    with pytest.raises(
        DataError, match="model 'ae': task 'anomaly' trains on background events, but the events are unlabelled"
    ):
        dataset.read_fit(str(tmp_path / "train.parquet"), {"task": "anomaly"}, "model 'ae'")


def test_figures_against_labels_are_left_out(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    cluster = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 2)) + 4 * cluster[:, None]
    base = pd.DataFrame(
        {"event_id": np.arange(n), "split": np.where(np.arange(n) < 300, "train", "test"), "weight": 1.0}
    )
    base.assign(score=cluster.astype(float)).to_parquet(tmp_path / "clu.parquet")
    feats = pd.DataFrame({"event_id": np.arange(n), "weight": 1.0, "a": X[:, 0], "b": X[:, 1]})
    feats[base.split == "test"].to_parquet(tmp_path / "ft.parquet")
    m = evaluate(
        str(tmp_path / "clu.parquet"),
        str(tmp_path / "clu.json"),
        "k",
        "clustering",
        extra={"features": ["a", "b"]},
        features=str(tmp_path / "ft.parquet"),
    )["metrics"]
    assert m["n_clusters"] == 2 and m["silhouette"] > 0.5
    assert "adjusted_rand" not in m and "purity" not in m
    base.assign(score=X[:, 0]).to_parquet(tmp_path / "pca.parquet")
    m = evaluate(
        str(tmp_path / "pca.parquet"),
        str(tmp_path / "pca.json"),
        "p",
        "dimreduction",
        extra={"info": {"explained_variance_ratio": [0.7]}},
    )["metrics"]
    assert m["explained_variance_ratio_total"] == pytest.approx(0.7) and "pc1_separation_auc" not in m
    feats.to_parquet(tmp_path / "train.parquet")
    made = plots.plot_summary(
        [str(tmp_path / "pca.parquet")],
        ["p"],
        ["dimreduction"],
        str(tmp_path / "train.parquet"),
        str(tmp_path / "summary"),
    )
    names = [Path(p).name for p in made]
    assert "correlation_all.png" in names  # one matrix of all events, none per class
    assert not any("signal" in n or "background" in n or "roc" in n for n in names), names


# -- the real workflow -----------------------------------------------------------
WORKFLOW = {
    "results": "results",
    "data": {
        "source": "files",
        "files": {
            "inputs": [{"path": "data/sig_0.root"}],
            "columns": ["Jet_pt[0]", "len(Jet_pt)", "max(Jet_btagDeepB)", "MET_pt", "ht30"],
            "aliases": {"ht30": "sum(Jet_pt[Jet_pt > 30])"},
            "cut": "len(Jet_pt) >= 1",
        },
    },
    "training": {"threads": 1},
    "select_models": ["ht_reg", "kmeans", "pca"],
    "models": {"ht_reg": {"family": "linear_regression", "task": "regression", "target": "ht30"}},
    "tracking": {"enabled": False},
}


@pytest.mark.workflow
def test_one_unlabelled_file_runs_end_to_end(tmp_path):
    wd = tmp_path / "wd"
    sample(wd / "data", "ttree", True, 3000, seed=3)
    (wd / "unlabelled.yaml").write_text(yaml.safe_dump(WORKFLOW))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    cmd = [
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(wd),
        "--configfile",
        str(wd / "unlabelled.yaml"),
        "--cores",
        "2",
        "--show-failed-logs",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    out = wd / "results"
    assert "label" not in pd.read_parquet(out / "data" / "events.parquet").columns
    assert "label" not in pd.read_parquet(out / "predictions" / "ht_reg.parquet").columns
    reg = json.loads((out / "metrics" / "ht_reg.json").read_text())["metrics"]
    assert reg["r2"] > 0.5 and reg["resolution_68"] > 0  # ht30 from the leading jet pT and the jet count
    clu = json.loads((out / "metrics" / "kmeans.json").read_text())["metrics"]
    assert clu["n_clusters"] == 2 and "purity" not in clu
    assert "pc1_separation_auc" not in json.loads((out / "metrics" / "pca.json").read_text())["metrics"]
    assert (out / "plots" / "ht_reg" / "residuals.png").exists()
    assert sorted(p.name for p in (out / "plots" / "summary").glob("correlation_*.png")) == ["correlation_all.png"]
    assert not list((out / "plots").rglob("roc_*.png")) and not list((out / "plots").rglob("score_distributions.png"))
    md = (out / "leaderboard.md").read_text()
    assert "| sig_0.root | 3000 |" in md and "The events are unlabelled" in md
    assert "## Regression" in md and "## Clustering" in md and "## Dimensionality reduction" in md
    assert "purity" not in md and "PC1 S/B AUC" not in md
