"""The real workflow on NanoAOD-like files: globs of several files per sample,
``Jet_pt[0]``-style columns, aliases, a cut; a TTree and an RNTuple with the
same content give the same table and the same leaderboard.

The weight is ``abs(genWeight)`` through an alias: ``genWeight`` is negative in
~15 % of the events and the xgboost family still refuses negative weights
("Weights must be positive values"); signed weights are kept by ingest
(tests/test_nanoaod.py) for when the families accept them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .nanoaod_files import sample

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow

CONFIG = {
    "results": "results",
    "data": {
        "source": "files",
        "files": {
            "inputs": [{"path": "data/sig_*.root", "label": 1}, {"path": "data/bkg_*.root", "label": 0}],
            "columns": ["Jet_pt[0]", "Jet_pt[1]", "len(Jet_pt)", "max(Jet_btagDeepB)", "MET_pt", "ht30", "n_tight_mu"],
            "aliases": {
                "ht30": "sum(Jet_pt[Jet_pt > 30])",
                "abs_w": "abs(genWeight)",
                "n_tight_mu": "sum(Muon_tightId)",
            },
            "cut": "len(Jet_pt) >= 2 and Jet_pt[0] > 30",
            "weight_column": "abs_w",
            "chunk_size": 700,
        },
    },
    "training": {"threads": 1},
    "select_models": ["bdt", "logreg"],
    "models": {"bdt": {"family": "xgboost", "params": {"n_estimators": 20, "max_depth": 3}}},
    "evaluation": {"inference_batch_size": 500},
    "tracking": {"enabled": False},
}
#: leaderboard columns that measure the run (time, energy), not the model
_MEASURED = ("second", "_s", "time", "energy", "j_per", "per_s", "watt", "co2", "rss", "throughput")


def _snakemake(workdir: Path, *args, config: dict = CONFIG, failed_logs: bool = True):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    (workdir / "nano.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "nano.yaml"),
        "--cores",
        "2",
        *(["--show-failed-logs"] if failed_logs else []),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for kind in ("ttree", "rntuple"):
        wd = tmp_path_factory.mktemp(f"wf_{kind}")
        sample(wd / "data", kind, True, 1000, n_files=3, seed=7)
        sample(wd / "data", kind, False, 1500, n_files=2, seed=7)
        # the RNTuple run tracks in MLflow too: its models are logged with their raw NanoAOD
        # columns (integer counts among them) as the signature
        res = _snakemake(wd, config={**CONFIG, "tracking": {"enabled": kind == "rntuple"}})
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
        out[kind] = wd / "results"
    return out


def test_nanoaod_files_run_through_the_workflow(runs):
    res = runs["ttree"]
    rec = json.loads((res / "data" / "ingest.json").read_text())
    assert rec["features"] == [
        "Jet_pt_0",
        "Jet_pt_1",
        "len_Jet_pt",
        "max_Jet_btagDeepB",
        "MET_pt",
        "ht30",
        "n_tight_mu",
    ]
    assert [len(f["sources"]) for f in rec["files"]] == [3, 2]
    flow = rec["cutflow"]
    assert [f["input"] for f in flow] == ["sig_*.root", "bkg_*.root"] and [f["read"] for f in flow] == [3000, 3000]
    assert all(0 < f["after_nonfinite"] == f["after_cut"] < f["read"] for f in flow)  # the cut asks for 2 jets
    board = pd.read_csv(res / "leaderboard.csv").set_index("model")
    assert set(board.index) == {"bdt", "logreg"} and (board["roc_auc"] > 0.6).all()


def test_the_tracked_model_scores_the_raw_nanoaod_columns_as_the_predict_step(runs, monkeypatch):
    """The RNTuple run's MLflow model (pyfunc) takes the raw split, integer counts and all,
    and gives the scores the predict step wrote for the test split."""
    import mlflow

    res = runs["rntuple"]
    rec = json.loads((res / "tracking" / "bdt.json").read_text())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", rec["tracking_uri"])
    model = mlflow.pyfunc.load_model(rec["model_uri"])
    raw = pd.read_parquet(res / "split" / "test.parquet")
    assert raw["len_Jet_pt"].dtype.kind == "i"
    pred = pd.read_parquet(res / "predictions" / "bdt.parquet")
    test = pred[pred["split"] == "test"].set_index("event_id").loc[raw["event_id"]]
    got = model.predict(raw)["score"].to_numpy()
    assert abs(got - test["score"].to_numpy()).max() < 1e-6


def test_ttree_and_rntuple_give_the_same_table_and_leaderboard(runs):
    t, r = (pd.read_parquet(runs[k] / "data" / "events.parquet") for k in ("ttree", "rntuple"))
    pd.testing.assert_frame_equal(t, r)
    boards = [pd.read_csv(runs[k] / "leaderboard.csv").set_index("model").sort_index() for k in ("ttree", "rntuple")]
    quality = [c for c in boards[0].columns if not any(m in c.lower() for m in _MEASURED)]
    assert {"roc_auc", "accuracy"} <= set(quality)
    pd.testing.assert_frame_equal(boards[0][quality], boards[1][quality])


def test_a_glob_matching_nothing_stops_before_any_job(tmp_path):
    wd = tmp_path / "wd"
    sample(wd / "data", "ttree", True, 50, seed=1)
    res = _snakemake(wd, "-n")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "hepml: error: data.files.inputs[1].path: no file matches 'data/bkg_*.root'"
    )


def test_a_failing_step_puts_its_error_line_on_the_console_without_show_failed_logs(tmp_path):
    """The plain ``snakemake --cores 2``: a step that fails (here ingest, on a branch the files
    lack) prints its one-line ``hepml: error:`` on the console, not only in its log."""
    wd = tmp_path / "wd"
    sample(wd / "data", "ttree", True, 50, seed=1)
    sample(wd / "data", "ttree", False, 50, seed=2)
    files = {**CONFIG["data"]["files"], "columns": ["MET_ptt", "Jet_pt[0]"]}
    res = _snakemake(wd, config={**CONFIG, "data": {**CONFIG["data"], "files": files}}, failed_logs=False)
    assert res.returncode == 1
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("hepml: error:")]
    assert len(lines) == 1 and "MET_ptt" in lines[0], res.stderr[-3000:]


def test_process_names_train_a_multiclass_model(tmp_path):
    """TMVA's AddTree(tree, "ttbar"): inputs with a class name as ``process`` give a
    multiclass model whose classes are the names (sorted), predict and apply write a
    probability per class, and the confusion matrix names the classes."""
    wd = tmp_path / "wd"
    sample(wd / "data", "ttree", True, 600, seed=3)
    sample(wd / "data", "ttree", False, 600, seed=4)
    sample(wd / "data" / "qcd", "ttree", False, 600, seed=5)
    files = CONFIG["data"]["files"]
    config = {
        **CONFIG,
        "data": {
            "source": "files",
            "files": {
                **files,
                "inputs": [
                    {"path": "data/sig_0.root", "label": 1, "process": "ttH"},
                    {"path": "data/bkg_0.root", "label": 0, "process": "tt"},
                    {"path": "data/qcd/bkg_0.root", "label": 0, "process": "QCD", "name": "qcd"},
                ],
            },
        },
        "select_models": ["procs"],
        "models": {
            "procs": {
                "family": "xgboost",
                "task": "multiclass",
                "target": "process",
                "params": {"n_estimators": 10, "max_depth": 2},
            }
        },
        "apply": {"inputs": [{"path": "data/sig_0.root", "tree": "Events"}]},
    }
    res = _snakemake(wd, config=config)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    out = wd / "results"
    events = pd.read_parquet(out / "data" / "events.parquet")
    assert events.groupby("process").size().to_dict().keys() == {"QCD", "tt", "ttH"}
    rec = json.loads((out / "records" / "procs.train.json").read_text())
    assert rec["classes"] == ["QCD", "tt", "ttH"] and "process" not in rec["features"]
    pred = pd.read_parquet(out / "predictions" / "procs.parquet")
    assert {"prob_0", "prob_1", "prob_2"} <= set(pred.columns)
    metrics = json.loads((out / "metrics" / "procs.json").read_text())
    assert metrics["confusion"]["classes"] == ["QCD", "tt", "ttH"], metrics.get("confusion")
    assert metrics["metrics"]["roc_auc"] > 0.6  # ttH apart from the two backgrounds
    assert (out / "plots" / "procs" / "confusion_matrix.png").exists()
    import uproot

    with uproot.open(out / "apply" / "sig_0.root") as f:
        scored = f["Events"].arrays(["procs_prob_0", "procs_prob_1", "procs_prob_2"], library="np")
    total = scored["procs_prob_0"] + scored["procs_prob_1"] + scored["procs_prob_2"]
    assert len(total) == 600 and abs(total - 1).max() < 1e-5
