"""MLflow publishing: parallel-safe on sqlite, no duplicates, and an http server."""
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from hepml_steps import track as tk
from hepml_steps.errors import HepmlError


def make_inputs(d, model, auc=0.9):
    (d / "models" / model).mkdir(parents=True)
    (d / "models" / model / "model.ubj").write_bytes(b"fake-model-" + model.encode())
    (d / "models" / model / "hepml_model.json").write_text(json.dumps({"family": "xgboost"}))
    rec = d / f"{model}.train.json"
    rec.write_text(json.dumps({"family": "xgboost", "task": "classification", "params": {"max_depth": 3},
                               "features": ["a", "b"], "fit_seconds": 1.5,
                               "history": {"validation_loss": [0.6, 0.5, 0.45]}}))
    met = d / f"{model}.metrics.json"
    met.write_text(json.dumps({"model": model, "metrics": {"roc_auc": auc, "f1": 0.8, "bayes_auc": None}}))
    pred = d / f"{model}.pred.parquet"
    pd.DataFrame({"event_id": [1, 2], "score": [0.1, 0.9]}).to_parquet(pred)
    return dict(model=model, record=str(rec), metrics=str(met), predictions=str(pred),
                model_dir=str(d / "models" / model), out=str(d / "tracking" / f"{model}.json"),
                results_dir=str(d))


def _track(kwargs):
    return tk.track(**kwargs)["run_id"]


def runs(uri, experiment="hepml"):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id]) if exp else []


def test_parallel_writers_on_sqlite_lose_nothing_and_rerun_adds_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    jobs = [make_inputs(tmp_path, f"m{i}", 0.8 + i / 100) for i in range(4)]
    ctx = mp.get_context("spawn")  # fresh processes, like parallel Snakemake jobs
    with ctx.Pool(4) as pool:
        ids = pool.map(_track, jobs)
    uri = tk.resolve_uri(None, str(tmp_path))
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    found = runs(uri)
    assert sorted(r.info.run_id for r in found) == sorted(ids) and len(set(ids)) == 4
    r = next(r for r in found if r.info.run_name == "m2")
    assert r.data.metrics["roc_auc"] == pytest.approx(0.82) and r.data.params["params.max_depth"] == "3"
    assert r.data.tags["hepml.family"] == "xgboost"
    # re-publishing unchanged results reuses the run
    again = tk.track(**jobs[2])
    assert again["reused"] and again["run_id"] == r.info.run_id and len(runs(uri)) == 4
    # learning curve logged with steps, artifacts stored
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    hist = c.get_metric_history(r.info.run_id, "curve.validation_loss")
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == [0.6, 0.5, 0.45]
    names = {a.path for a in c.list_artifacts(r.info.run_id)}
    assert {"m2.metrics.json", "m2.train.json", "m2.pred.parquet", "model"} <= names


def test_summary_attaches_leaderboard_and_plots_to_every_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    jobs = [make_inputs(tmp_path, f"m{i}") for i in range(2)]
    ids = [tk.track(**j)["run_id"] for j in jobs]
    board = tmp_path / "leaderboard.md"
    board.write_text("| model | roc_auc |\n")
    plots = tmp_path / "summary"
    plots.mkdir()
    (plots / "roc.png").write_bytes(b"png")
    with pytest.raises(tk.DataError, match="nope.csv"):
        tk.attach_summary([j["out"] for j in jobs], str(tmp_path / "s.json"), str(tmp_path),
                          [str(board), str(tmp_path / "nope.csv")])
    assert not (tmp_path / "s.json").exists()
    res = tk.main(["summary", "--runs", *[j["out"] for j in jobs], "--out", str(tmp_path / "s.json"),
                   "--results-dir", str(tmp_path), "--artifact", str(board), "--plots-dir", str(plots)])
    assert res == 0
    assert json.loads((tmp_path / "s.json").read_text())["runs"] == {"m0": ids[0], "m1": ids[1]}
    c = MlflowClient(tracking_uri=tk.resolve_uri(None, str(tmp_path)))
    for run_id in ids:
        assert "leaderboard.md" in {a.path for a in c.list_artifacts(run_id)}
        assert [a.path for a in c.list_artifacts(run_id, "plots/summary")] == ["plots/summary/roc.png"]


def test_run_that_died_half_way_is_marked_failed_and_not_reused(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "m")
    real = MlflowClient.log_artifacts

    def dies(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(MlflowClient, "log_artifacts", dies)
    with pytest.raises(HepmlError, match="disk full"):
        tk.track(**job)
    monkeypatch.setattr(MlflowClient, "log_artifacts", real)
    uri = tk.resolve_uri(None, str(tmp_path))
    (broken,) = runs(uri)
    assert broken.info.status == "FAILED"
    again = tk.track(**job)
    assert not again["reused"] and again["run_id"] != broken.info.run_id
    done = MlflowClient(tracking_uri=uri).get_run(again["run_id"])
    assert done.info.status == "FINISHED" and "model" in {a.path for a in MlflowClient(tracking_uri=uri)
                                                           .list_artifacts(again["run_id"])}
    assert tk.track(**job)["run_id"] == again["run_id"]  # and the finished one is reused


def test_changed_results_make_a_new_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "m")
    first = tk.track(**job)
    (tmp_path / "models" / "m" / "model.ubj").write_bytes(b"retrained")
    second = tk.track(**job)
    assert not second["reused"] and second["run_id"] != first["run_id"]


def test_env_uri_used_when_config_silent(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/other.db")
    assert tk.resolve_uri(None, "results") == f"sqlite:///{tmp_path}/other.db"
    assert tk.resolve_uri("http://127.0.0.1:1", "results") == "http://127.0.0.1:1"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on 127.0.0.1, stopped by its PID afterwards."""
    port = _free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=open(tmp_path / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        else:
            pytest.fail("MLflow server did not start: " + (tmp_path / "server.log").read_text()[-2000:])
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_http_tracking_server(tmp_path, mlflow_server, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "bdt")
    res = tk.track(**job, uri=mlflow_server, experiment="server-exp")
    assert res["tracking_uri"] == mlflow_server
    found = runs(mlflow_server, "server-exp")
    assert [r.info.run_id for r in found] == [res["run_id"]]
    assert tk.track(**job, uri=mlflow_server, experiment="server-exp")["reused"]
