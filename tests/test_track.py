"""MLflow publishing: parallel-safe on sqlite, no duplicates, and an http server."""
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

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
            try:  # up once it answers, not when its port opens (the app loads after that)
                with urllib.request.urlopen(f"{uri}/health", timeout=5):
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


# --- one store shared by several pipelines, and a store that cannot be broken ---

def _publish_after_barrier(job, barrier, q):
    barrier.wait()  # start together: the race is on first use of a fresh store
    try:
        q.put(("ok", tk.track(**job)["run_id"]))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent)
        q.put(("error", f"{type(exc).__name__}: {exc}"))


def test_three_pipelines_share_one_fresh_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    jobs = [dict(make_inputs(tmp_path / f"results{i}", "bdt", 0.8 + i / 100), uri=uri) for i in range(3)]
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_publish_after_barrier, args=(j, barrier, q)) for j in jobs]
    for p in procs:
        p.start()
    got = [q.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(status == "ok" for status, _ in got), got
    found = runs(uri)
    assert sorted(r.info.run_id for r in found) == sorted(rid for _, rid in got)
    assert {r.info.status for r in found} == {"FINISHED"}
    assert {r.data.tags[tk.ORIGIN_TAG].split(":", 1)[1] for r in found} == {
        str((tmp_path / f"results{i}").resolve()) for i in range(3)}


def test_half_built_store_is_refused_with_what_to_do(tmp_path, monkeypatch):
    import sqlite3

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "m")
    db = tmp_path / "mlflow.db"  # what an interrupted first use leaves: some tables, no version
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, name TEXT)")
    con.commit()
    with pytest.raises(HepmlError) as err:
        tk.track(**job)
    msg = str(err.value)
    assert "\n" not in msg and f"sqlite:///{db}" in msg
    assert "incomplete schema" in msg and f"delete {db} and rerun" in msg
    con.execute("INSERT INTO runs VALUES ('abc', 'old')")  # holding runs: never say delete
    con.commit()
    con.close()
    with pytest.raises(HepmlError, match=r"holds 1 run\(s\): back it up, then run `mlflow db upgrade "):
        tk.track(**job)
    assert not (tmp_path / "tracking" / "m.json").exists()
    db.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(HepmlError, match="cannot be read as an SQLite database"):
        tk.track(**job)
    db.write_bytes(b"")  # an empty file (``touch mlflow.db``) is a new store
    assert not tk.track(**job)["reused"] and [r.info.status for r in runs(f"sqlite:///{db}")] == ["FINISHED"]


def test_disk_full_during_first_use_leaves_no_store(tmp_path, monkeypatch):
    import mlflow.store.db.utils as db_utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "m")
    real = db_utils._upgrade_db

    def full(engine):  # the initial tables exist by now; the migrations never run
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(db_utils, "_upgrade_db", full)
    with pytest.raises(HepmlError, match="No space left on device") as err:
        tk.track(**job)
    assert "\n" not in str(err.value) and "nothing was left at" in str(err.value)
    assert not (tmp_path / "mlflow.db").exists()
    assert not [p.name for p in tmp_path.iterdir() if "mlflow.db" in p.name and "lock" not in p.name]
    monkeypatch.setattr(db_utils, "_upgrade_db", real)
    (tmp_path / ".mlflow.db.hepml-new-0dead0").write_bytes(b"left by a creation killed with -9")
    assert not tk.track(**job)["reused"]  # once there is space, it publishes (no retraining)
    assert [r.info.status for r in runs(tk.resolve_uri(None, str(tmp_path)))] == ["FINISHED"]
    assert not list(tmp_path.glob(".mlflow.db.hepml-new-*"))


def _killed_mid_publish(job):
    from mlflow.tracking import MlflowClient

    MlflowClient.log_artifacts = lambda *a, **k: os._exit(9)  # like kill -9: nothing cleans up
    tk.track(**job)


def test_run_left_running_by_a_killed_job_is_closed_on_next_publish(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "m")
    p = mp.get_context("spawn").Process(target=_killed_mid_publish, args=(job,))
    p.start()
    p.join(timeout=120)
    assert p.exitcode == 9
    uri = tk.resolve_uri(None, str(tmp_path))
    (dead,) = runs(uri)
    assert dead.info.status == "RUNNING"
    c = MlflowClient(tracking_uri=uri)  # another pipeline's publish of "m", live right now
    live = c.create_run(dead.info.experiment_id, tags={"hepml.model": "m", tk.ORIGIN_TAG: "otherhost:/x"})
    res = tk.track(**job)
    by_id = {r.info.run_id: r for r in runs(uri)}
    assert by_id[dead.info.run_id].info.status == "FAILED"
    assert "died" in by_id[dead.info.run_id].data.tags["hepml.failure"]
    assert by_id[live.info.run_id].info.status == "RUNNING"
    assert [i for i, r in by_id.items() if r.info.status == "FINISHED"] == [res["run_id"]]


def test_unreachable_server_fails_in_seconds_with_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "m")
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    args = [sys.executable, "-m", "hepml_steps.track", "model", "--uri", uri,
            *[f"--{k.replace('_', '-')}={v}" for k, v in job.items()]]
    t0 = time.time()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    took = time.time() - t0
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert took < 15, took
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hepml: error: tracking.uri {uri}: server not reachable (")
    assert "Traceback" not in proc.stderr and not (tmp_path / "tracking" / "m.json").exists()
