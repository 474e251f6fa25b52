"""MLflow publishing: parallel-safe on sqlite, no duplicates, an http server, and
runs as the ecosystem expects them (an MLflow model, artifacts by kind, lineage,
provenance, the real training times, the Model Registry)."""

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hepml_steps import registry
from hepml_steps import track as tk
from hepml_steps.errors import HepmlError
from hepml_steps.io import write_json

FEATURES = ["f0", "f1", "f2"]
SPLITS = ("train", "validation", "test")


def make_events(n, seed):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {"event_id": np.arange(n, dtype=np.int64), "label": (rng.random(n) < 0.5).astype(np.int8), "weight": np.ones(n)}
    )
    for i, f in enumerate(FEATURES):
        df[f] = (rng.normal(size=n) + (1.0 if i == 0 else 0.0) * df["label"]).astype(np.float32)
    return df


def make_model(directory, model, task="classification", seed=0):
    """A real (tiny) logistic regression saved the way the train step saves it."""
    df = make_events(300, seed)
    X = df[FEATURES].to_numpy(np.float32)
    y = df["label"].to_numpy() if task == "classification" else np.digitize(X[:, 0], [-0.3, 0.6])
    fam = registry.get("logistic_regression")(task=task, seed=seed)
    if task == "multiclass":
        fam.n_classes = 3
    fam.fit(X, y, sample_weight=np.ones(len(y)))
    directory.mkdir(parents=True)
    meta = {
        "model": model,
        "family": fam.name,
        "task": task,
        "params": fam.params,
        "seed": seed,
        "features": FEATURES,
        "target": None,
        "file_format": fam.file_format,
        "device": "cpu",
        "files": fam.save(directory),
        **({"classes": [0, 1, 2]} if task == "multiclass" else {}),
    }
    write_json(directory / registry.META_FILE, meta)
    (directory / ".snakemake_timestamp").write_bytes(b"")  # what Snakemake leaves in directory outputs
    return meta


def make_inputs(d, model, auc=0.9, task="classification", fit_seconds=1.5):
    """A results folder as the pipeline leaves it for one model (with its bookkeeping files)."""
    meta = make_model(d / "models" / model, model, task)
    for sub in ("records", "metrics", "importance", "predictions", "features", "plots"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    rec = d / "records" / f"{model}.train.json"
    rec.write_text(
        json.dumps(
            {
                **meta,
                "params": {"max_depth": 3},
                "fit_seconds": fit_seconds,
                "history": {"validation_loss": [0.6, 0.5, 0.45]},
            }
        )
    )
    inf = d / "records" / f"{model}.predict.json"
    inf.write_text(json.dumps({"model": model, "timing": {"test": {"seconds": 0.01}}}))
    met = d / "metrics" / f"{model}.json"
    met.write_text(json.dumps({"model": model, "metrics": {"roc_auc": auc, "f1": 0.8, "bayes_auc": None}}))
    imp = d / "importance" / f"{model}.json"
    imp.write_text(json.dumps({"model": model, "importance": {"f0": 0.9, "f1": 0.1}}))
    pred = d / "predictions" / f"{model}.parquet"
    pd.DataFrame({"event_id": [1, 2], "score": [0.1, 0.9]}).to_parquet(pred)
    plots = d / "plots" / model
    plots.mkdir()
    (plots / "roc.png").write_bytes(b"png")
    (plots / ".snakemake_timestamp").write_bytes(b"")
    (plots / ".roc.x1y2.tmp.png").write_bytes(b"half-written")
    for i, s in enumerate(SPLITS):
        if not (d / "features" / f"{s}.parquet").exists():
            make_events(200, 10 + i).to_parquet(d / "features" / f"{s}.parquet", index=False)
    return dict(
        model=model,
        record=str(rec),
        metrics=str(met),
        predictions=str(pred),
        model_dir=str(d / "models" / model),
        out=str(d / "tracking" / f"{model}.json"),
        results_dir=str(d),
        inference=str(inf),
        importance=str(imp),
        plots_dir=str(plots),
        datasets={s: str(d / "features" / f"{s}.parquet") for s in SPLITS},
    )


def cli_args(job):
    """``track model`` options for the keyword arguments of :func:`tk.track`."""
    names = {"inference": "inference-record"}
    args = []
    for k, v in job.items():
        if k == "datasets":
            args += [f"--dataset={split}={path}" for split, path in v.items()]
        elif k in ("config", "spec"):
            args.append(f"--{k}={json.dumps(v)}")
        elif k == "register":
            args += ["--register"] if v else []
        else:
            args.append(f"--{names.get(k, k.replace('_', '-'))}={v}")
    return args


def all_artifacts(client, run_id, path=None):
    found = []
    for a in client.list_artifacts(run_id, path):
        found += all_artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return found


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
    assert r.data.tags["hepml.family"] == "logistic_regression"
    # re-publishing unchanged results reuses the run
    again = tk.track(**jobs[2])
    assert again["reused"] and again["run_id"] == r.info.run_id and len(runs(uri)) == 4
    # learning curve logged with steps, artifacts stored
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    hist = c.get_metric_history(r.info.run_id, "curve.validation_loss")
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == [0.6, 0.5, 0.45]
    assert {
        "metrics/m2.json",
        "importance/m2.json",
        "records/m2.train.json",
        "records/m2.predict.json",
        "predictions/m2.parquet",
        "plots/roc.png",
    } <= set(all_artifacts(c, r.info.run_id))
    assert r.outputs.model_outputs, "the model is logged as an MLflow model"


def _client(tmp_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tk.resolve_uri(None, str(tmp_path)))


def test_artifacts_by_kind_never_collide_and_bookkeeping_files_stay_home(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "bdt")
    (tmp_path / "models" / "bdt" / ".snakemake_timestamp_x").write_bytes(b"")
    (tmp_path / "models" / "bdt" / "notes.tmp").write_bytes(b"")
    run_id = tk.track(**job)["run_id"]
    c = _client(tmp_path)
    names = all_artifacts(c, run_id)
    # metrics and importance are both <model>.json on disk: each keeps its own folder
    for kind, path in (("metrics", job["metrics"]), ("importance", job["importance"])):
        got = c.download_artifacts(run_id, f"{kind}/bdt.json", str(tmp_path / f"dl-{kind}"))
        assert Path(got).read_bytes() == Path(path).read_bytes(), kind
    assert sorted(names) == [
        "importance/bdt.json",
        "metrics/bdt.json",
        "plots/roc.png",
        "predictions/bdt.parquet",
        "records/bdt.predict.json",
        "records/bdt.train.json",
    ]
    import mlflow.artifacts

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tk.resolve_uri(None, str(tmp_path)))  # runs:/ resolves with it
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "dl-model"))
    model_files = [p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()]
    assert "MLmodel" in model_files and "artifacts/bdt/model.skops" in model_files
    for name in names + model_files:
        assert not any(part.startswith(".") for part in name.split("/")), name
        assert not name.endswith(".tmp"), name


def test_run_spans_the_training_not_the_publishing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "m", fit_seconds=120.0)
    fit_end = time.time() - 3600  # trained an hour ago: the fit ended when its first file was written
    for f in (tmp_path / "models" / "m").iterdir():
        os.utime(f, (fit_end + 0.3, fit_end + 0.3))
    os.utime(next((tmp_path / "models" / "m").glob("*.skops")), (fit_end, fit_end))
    os.utime(job["record"], (fit_end + 0.5, fit_end + 0.5))
    os.utime(job["inference"], (fit_end + 2.0, fit_end + 2.0))
    os.utime(job["metrics"], (fit_end + 2.5, fit_end + 2.5))
    run = _client(tmp_path).get_run(tk.track(**job)["run_id"])
    assert run.info.start_time == pytest.approx((fit_end - 120.0) * 1000, abs=2)
    assert run.info.end_time == pytest.approx((fit_end + 2.5) * 1000, abs=2)
    assert (run.info.end_time - run.info.start_time) / 1000 == pytest.approx(122.5, abs=0.01)
    # a record that says when training started is believed
    rec = json.loads(Path(job["record"]).read_text())
    rec["started_at"] = "2026-01-02T03:04:05+00:00"
    start, _ = tk.run_times(rec, job["record"], [], [job["metrics"]])
    assert start == 1767323045000


def _git(cwd, *args):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_run_records_resolved_config_git_commit_and_version(tmp_path, monkeypatch):
    import hepml_steps

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    wf = tmp_path / "workflow"
    wf.mkdir()
    (wf / "Snakefile").write_text("rule all:\n")
    _git(wf, "init", "-q")
    _git(wf, "add", "Snakefile")
    _git(wf, "commit", "-q", "-m", "x")
    sha = _git(wf, "rev-parse", "HEAD")
    assert tk.git_commit(wf) == sha
    (wf / "untracked.txt").write_text("not part of the workflow")
    assert tk.git_commit(wf) == sha
    (wf / "Snakefile").write_text("rule all:\n    input: []\n")
    assert tk.git_commit(wf) == f"{sha}-dirty"
    assert tk.git_commit(tmp_path / "results") == "unknown" == tk.git_commit(None)

    config = {
        "results": "results",
        "tracking": {"experiment": "hepml", "register": False},
        "models": {"m": {"family": "logistic_regression", "params": {"C": 0.5}}},
    }
    job = {
        **make_inputs(tmp_path / "results", "m"),
        "config": config,
        "spec": config["models"]["m"],
        "workflow_dir": str(wf),
    }
    assert tk.main(["model", *cli_args(job)]) == 0
    run_id = json.loads(Path(job["out"]).read_text())["run_id"]
    c = _client(tmp_path / "results")
    tags = c.get_run(run_id).data.tags
    assert tags["hepml.git_commit"] == f"{sha}-dirty" and tags["mlflow.source.git.commit"] == sha
    assert tags["hepml.version"] == hepml_steps.__version__
    resolved = c.download_artifacts(run_id, "config/resolved.yaml", str(tmp_path))
    assert yaml.safe_load(Path(resolved).read_text()) == config
    spec = c.download_artifacts(run_id, "config/model.yaml", str(tmp_path))
    assert yaml.safe_load(Path(spec).read_text()) == config["models"]["m"]


def test_run_names_the_split_files_it_used(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "m")
    run = _client(tmp_path).get_run(tk.track(**job)["run_id"])
    got = {}
    for d in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in d.tags}
        got[tags["mlflow.data.context"]] = (
            d.dataset.name,
            d.dataset.digest,
            tags["hepml.sha256"],
            json.loads(d.dataset.source)["uri"],
            d.dataset.schema,
        )
    assert set(got) == {"training", "validation", "test"}
    for context, split in (("training", "train"), ("validation", "validation"), ("test", "test")):
        path = tmp_path / "features" / f"{split}.parquet"
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        name, digest, full, source, schema = got[context]
        assert (name, digest, full, source) == (f"features/{split}.parquet", sha[:32], sha, str(path.resolve()))
        assert "f0" in schema and "event_id" in schema


@pytest.mark.parametrize("task", ["classification", "multiclass"])
def test_logged_model_loads_with_pyfunc_and_scores_like_the_model(tmp_path, monkeypatch, task):
    import mlflow

    job = make_inputs(tmp_path, "m", task=task)
    uri = tk.resolve_uri(None, str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for runs:/ URIs
    run_id = tk.track(**job)["run_id"]
    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    sig = loaded.metadata.get_input_schema()
    assert sig.input_names() == FEATURES and {t.name for t in sig.input_types()} == {"double"}
    outputs = loaded.metadata.get_output_schema().input_names()
    assert outputs == (["prob_0", "prob_1", "prob_2"] if task == "multiclass" else ["score"])
    frame = pd.read_parquet(job["datasets"]["test"])
    model, _ = registry.load_model(job["model_dir"])
    own = np.asarray(model.predict_score(frame[FEATURES].to_numpy(np.float32))).reshape(len(frame), -1)
    for df in (frame, frame.astype({f: np.float64 for f in FEATURES})):  # float32 and float64 inputs
        got = loaded.predict(df)
        assert list(got.columns) == outputs
        assert np.max(np.abs(got.to_numpy() - own)) < 1e-6
    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    assert info.saved_input_example_info is not None
    from mlflow.models import Model

    example = Model.load(f"runs:/{run_id}/model").load_input_example()
    assert list(example.columns) == FEATURES and 0 < len(example) <= 5
    reqs = mlflow.pyfunc.get_model_dependencies(f"runs:/{run_id}/model")
    pins = Path(reqs).read_text()
    assert "scikit-learn==" in pins and "skops==" in pins and "torch" not in pins


# runs in a fresh interpreter that cannot import the hepml checkout or installed package
_LOAD_WITHOUT_HEPML = """
import importlib.util, json, os, sys
from pathlib import Path
sys.path = [p for p in sys.path if p and not (Path(p) / "hepml_steps").exists()]
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in str(getattr(f, "__module__", ""))]
assert importlib.util.find_spec("hepml_steps") is None, "hepml is still importable"
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
scores = model.predict(pd.read_parquet(sys.argv[2]))
print(json.dumps({"score": scores["score"].tolist(), "hepml": sys.modules["hepml_steps"].__file__}))
"""


def test_logged_model_carries_its_code_and_loads_without_hepml(tmp_path, monkeypatch):
    job = make_inputs(tmp_path, "m")
    uri = tk.resolve_uri(None, str(tmp_path))
    run_id = tk.track(**job)["run_id"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_HEPML, f"runs:/{run_id}/model", job["datasets"]["test"]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**env, "MLFLOW_TRACKING_URI": uri},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/code/hepml_steps/" in got["hepml"]  # the copy inside the MLflow model
    model, _ = registry.load_model(job["model_dir"])
    frame = pd.read_parquet(job["datasets"]["test"])
    assert np.max(np.abs(np.asarray(got["score"]) - model.predict_score(frame[FEATURES].to_numpy(np.float32)))) < 1e-6


def test_register_puts_each_model_in_the_registry_once(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    jobs = [make_inputs(tmp_path, m) for m in ("bdt", "mlp")]
    first = tk.track(**jobs[0], experiment="my exp/1", register=True)
    assert first["registered_model"] == "hepml-my_exp_1-bdt" and first["registered_version"] == "1"
    c = _client(tmp_path)
    (v,) = c.search_model_versions("name = 'hepml-my_exp_1-bdt'")
    assert v.run_id == first["run_id"]
    again = tk.track(**jobs[0], experiment="my exp/1", register=True)  # unchanged: no new version
    assert again["reused"] and again["registered_version"] == "1"
    assert len(c.search_model_versions("name = 'hepml-my_exp_1-bdt'")) == 1
    plain = tk.track(**jobs[1], experiment="my exp/1")
    assert plain["registered_model"] is None and not c.search_registered_models("name = 'hepml-my_exp_1-mlp'")
    later = tk.track(**jobs[1], experiment="my exp/1", register=True)  # turned on later: registers the run
    assert later["reused"] and later["run_id"] == plain["run_id"] and later["registered_version"] == "1"
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tk.resolve_uri(None, str(tmp_path)))
    scores = mlflow.pyfunc.load_model("models:/hepml-my_exp_1-mlp/1").predict(
        pd.read_parquet(jobs[1]["datasets"]["test"])
    )
    assert list(scores.columns) == ["score"]


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
        tk.attach_summary(
            [j["out"] for j in jobs], str(tmp_path / "s.json"), str(tmp_path), [str(board), str(tmp_path / "nope.csv")]
        )
    assert not (tmp_path / "s.json").exists()
    res = tk.main(
        [
            "summary",
            "--runs",
            *[j["out"] for j in jobs],
            "--out",
            str(tmp_path / "s.json"),
            "--results-dir",
            str(tmp_path),
            "--leaderboard",
            str(board),
            "--plots-dir",
            str(plots),
        ]
    )
    assert res == 0
    assert json.loads((tmp_path / "s.json").read_text())["runs"] == {"m0": ids[0], "m1": ids[1]}
    c = MlflowClient(tracking_uri=tk.resolve_uri(None, str(tmp_path)))
    for run_id in ids:
        assert "leaderboard/leaderboard.md" in all_artifacts(c, run_id)
        assert [a.path for a in c.list_artifacts(run_id, "plots/summary")] == ["plots/summary/roc.png"]


def test_run_that_died_half_way_is_marked_failed_and_not_reused(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "m")
    real = MlflowClient.log_artifact

    def dies(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(MlflowClient, "log_artifact", dies)
    with pytest.raises(HepmlError, match="disk full"):
        tk.track(**job)
    monkeypatch.setattr(MlflowClient, "log_artifact", real)
    uri = tk.resolve_uri(None, str(tmp_path))
    (broken,) = runs(uri)
    assert broken.info.status == "FAILED"
    again = tk.track(**job)
    assert not again["reused"] and again["run_id"] != broken.info.run_id
    done = MlflowClient(tracking_uri=uri).get_run(again["run_id"])
    assert done.info.status == "FINISHED" and done.outputs.model_outputs
    assert tk.track(**job)["run_id"] == again["run_id"]  # and the finished one is reused


def test_run_stopped_by_sigterm_is_marked_killed_and_not_reused(tmp_path, monkeypatch):
    """A track job stopped by SIGTERM (stopping.Terminated) half way leaves its MLflow run
    KILLED, not FAILED, and the next job starts a fresh run."""
    from mlflow.tracking import MlflowClient

    from hepml_steps import stopping

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "m")
    real = MlflowClient.log_artifact

    def stopped(self, *a, **k):
        raise stopping.Terminated(15)

    monkeypatch.setattr(MlflowClient, "log_artifact", stopped)
    with pytest.raises(stopping.Terminated):
        tk.track(**job)
    monkeypatch.setattr(MlflowClient, "log_artifact", real)
    (killed,) = runs(tk.resolve_uri(None, str(tmp_path)))
    assert killed.info.status == "KILLED"
    assert tk.track(**job)["run_id"] != killed.info.run_id


def test_changed_results_make_a_new_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_inputs(tmp_path, "m")
    first = tk.track(**job)
    shutil.rmtree(tmp_path / "models" / "m")
    make_model(tmp_path / "models" / "m", "m", seed=1)  # retrained
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
        [
            mlflow_bin,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=open(tmp_path / "server.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
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
        str((tmp_path / f"results{i}").resolve()) for i in range(3)
    }


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

    MlflowClient.log_artifact = lambda *a, **k: os._exit(9)  # like kill -9: nothing cleans up
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
    args = [sys.executable, "-m", "hepml_steps.track", "model", "--uri", uri, *cli_args(job)]
    t0 = time.time()
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )
    took = time.time() - t0
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert took < 15, took
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hepml: error: tracking.uri {uri}: server not reachable (")
    assert "Traceback" not in proc.stderr and not (tmp_path / "tracking" / "m.json").exists()
