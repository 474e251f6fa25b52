"""Runs the real Snakemake workflow end to end on a tiny configuration."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.workflow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "config" / "tiny.yaml"
# the module's main run: the tiny config with logreg tuned (3 trials)
TUNED = ("--configfile", str(TINY), str(ROOT / "tests" / "config" / "tune_logreg.yaml"))


def snakemake(workdir, *args, check=True, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    cmd = [
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(TINY),
        "--cores",
        "2",
        "--show-failed-logs",
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"snakemake failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}")
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wf")
    res = snakemake(wd, *TUNED)
    return wd, res


def test_outputs_and_metrics(run):
    wd, _ = run
    res = wd / "results"
    board = pd.read_csv(res / "leaderboard.csv")
    assert set(board["model"]) == {"bdt", "logreg", "mlp"}
    for model in ("bdt", "logreg", "mlp"):
        m = json.loads((res / "metrics" / f"{model}.json").read_text())["metrics"]
        assert 0.5 < m["roc_auc"] <= m["bayes_auc"] + 0.03, model
        for key in (
            "accuracy",
            "error_rate",
            "precision",
            "sensitivity",
            "specificity",
            "roc_combined",
            "f1",
            "geometric_mean",
            "sig_eff_at_bkg_0.1",
        ):
            assert key in m, (model, key)
        pred = pd.read_parquet(res / "predictions" / f"{model}.parquet")
        assert set(pred["split"]) == {"train", "validation", "test"}
    split = json.loads((res / "split" / "split.json").read_text())
    assert sum(split["n_events"].values()) == 4000
    assert "Bayes" in (res / "leaderboard.md").read_text()


def test_console_shows_one_summary_line_per_finished_step(run):
    _, result = run
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("hepml: ")]
    for model in ("bdt", "logreg", "mlp"):
        for step in ("train", "predict", "evaluate", "plots", "track"):
            assert sum(ln.startswith(f"hepml: {step} {model}: done in ") for ln in lines) == 1, (step, model)
        assert re.search(rf"^hepml: evaluate {model}: .*; roc_auc 0\.\d+, .*z_max \d", "\n".join(lines), re.M)
    assert any(re.match(r"hepml: split: done .*; train \d+, validation \d+, test \d+ events", ln) for ln in lines)


def test_plots_energy_and_overtraining_outputs(run):
    wd, _ = run
    res = wd / "results"
    for model in ("bdt", "logreg", "mlp"):
        pngs = {p.name for p in (res / "plots" / model).glob("*.png")}
        assert {"score_distributions.png", "confusion_matrix.png", "feature_importance.png"} <= pngs, (model, pngs)
        met = json.loads((res / "metrics" / f"{model}.json").read_text())
        assert met["overtraining"]["flagged"] in (True, False)
        for step in ("train", "inference"):
            e = met["extra"]["energy"][step]
            assert e["energy_j"] > 0 and e["j_per_event"] > 0 and e["method"], (model, step)
        inf = met["extra"]["energy"]["inference"]
        assert inf["events"] == met["n_events"]["test"] and inf["batch_size"] == 700
    for model in ("bdt", "mlp"):  # iterative families have learning curves
        assert (res / "plots" / model / "learning_curve.png").exists()
    summary = {p.name for p in (res / "plots" / "summary").glob("*.png")}
    assert {
        "roc_rejection_vs_efficiency.png",
        "roc_tpr_vs_fpr.png",
        "correlation_signal.png",
        "correlation_background.png",
        "energy_auc_vs_j_per_event.png",
        "energy_vs_throughput.png",
    } <= summary
    board = pd.read_csv(res / "leaderboard.csv")
    for col in (
        "ks_pvalue_signal",
        "ks_pvalue_background",
        "overtrained",
        "train_j_per_event",
        "inference_events_per_s",
        "fit_seconds",
    ):
        assert col in board.columns, col


def test_html_report_contains_every_plot(run):
    wd, _ = run
    report = wd / "results" / "report.html"
    snakemake(wd, *TUNED, "--report", str(report))
    html = report.read_text(errors="replace")
    assert len(html) > 50_000
    for name in (
        "score_distributions",
        "roc_rejection_vs_efficiency",
        "energy_auc_vs_j_per_event",
        "leaderboard",
        "learning_curve",
        "feature_importance",
        "correlation_signal",
    ):
        assert name in html, name
    for model in ("bdt", "logreg", "mlp"):
        assert model in html


def test_one_mlflow_run_per_model_and_no_duplicates_on_rerun(run):
    from mlflow.tracking import MlflowClient

    wd, _ = run
    uri = f"sqlite:///{(wd / 'results' / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)

    def runs():
        exp = client.get_experiment_by_name("hepml")
        return client.search_runs([exp.experiment_id])

    everything = runs()
    first = [r for r in everything if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_name for r in first) == ["bdt", "logreg", "mlp"]
    assert all("roc_auc" in r.data.metrics for r in first)
    # the tuned model's trials are nested runs under its run
    logreg = next(r for r in first if r.info.run_name == "logreg")
    trials = [r for r in everything if r.data.tags.get("mlflow.parentRunId") == logreg.info.run_id]
    assert sorted(r.info.run_name for r in trials) == [f"logreg-trial-{i}" for i in range(3)]
    assert all("C" in r.data.params and "roc_auc" in r.data.metrics for r in trials)  # the objective's name
    for r in first:  # per-model plots, and the cross-model leaderboard and comparison plots
        assert {"leaderboard/leaderboard.md", "leaderboard/leaderboard.csv"} <= {
            a.path for a in client.list_artifacts(r.info.run_id, "leaderboard")
        }
        assert {"metrics", "importance", "records", "predictions", "plots", "config"} <= {
            a.path for a in client.list_artifacts(r.info.run_id)
        }
        summary = {a.path for a in client.list_artifacts(r.info.run_id, "plots/summary")}
        assert "plots/summary/roc_tpr_vs_fpr.png" in summary
        assert r.outputs.model_outputs and len(r.inputs.dataset_inputs) == 3  # an MLflow model; its splits
        # the run spans the model's training (and evaluation), not the publishing
        fit = json.loads((wd / "results" / "records" / f"{r.info.run_name}.train.json").read_text())["fit_seconds"]
        assert (r.info.end_time - r.info.start_time) / 1000 >= fit
    # the MLflow model takes raw columns and scores exactly like the bundle and predict
    import mlflow

    from hepml_steps import bundle

    test = pd.read_parquet(wd / "results" / "split" / "test.parquet")
    pred = pd.read_parquet(wd / "results" / "predictions" / "bdt.parquet")
    bdt = next(r for r in first if r.info.run_name == "bdt")
    mlflow.set_tracking_uri(uri)
    try:
        got = mlflow.pyfunc.load_model(f"runs:/{bdt.info.run_id}/model").predict(test)["score"].to_numpy()
    finally:
        mlflow.set_tracking_uri(None)
    own = bundle.load(wd / "results" / "models" / "bdt").score(test)
    assert np.max(np.abs(got - own)) < 1e-6
    ref = pred[pred["split"] == "test"].set_index("event_id").loc[test["event_id"], "score"].to_numpy()
    assert np.max(np.abs(got - ref)) < 1e-5
    again = snakemake(wd, *TUNED)
    assert "Nothing to be done" in again.stdout + again.stderr
    # forcing the tracking rule to re-publish unchanged results must not duplicate runs
    snakemake(wd, *TUNED, "--forcerun", "track")
    assert sorted(r.info.run_id for r in runs()) == sorted(r.info.run_id for r in everything)


def test_tuned_model_uses_validation_only_and_reports_its_budget(run):
    wd, _ = run
    res = wd / "results"
    rec = json.loads((res / "tuning" / "logreg.json").read_text())
    assert rec["n_trials"] == 3 and rec["best_value"] >= rec["baseline_value"]
    # the test split is not an input of the tune rule: the record hashes what it read
    assert not any("test" in Path(p).name for p in rec["inputs"]), rec["inputs"]
    train_rec = json.loads((res / "records" / "logreg.train.json").read_text())
    assert train_rec["params"]["C"] == pytest.approx(rec["best_params"]["C"])
    board = pd.read_csv(res / "leaderboard.csv").set_index("model")
    assert board.loc["logreg", "tuning_trials"] == 3 and board.loc["logreg", "tuning_seconds"] > 0
    assert (res / "plots" / "logreg" / "validation_curve.png").exists()
    assert not (res / "tuning" / "bdt.json").exists()


def test_global_tuning_skips_tasks_without_objective_and_explicit_request_is_an_error(tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("tuning: {enabled: true}\nselect_models: [logreg, pca]\n")
    plan = snakemake(tmp_path, "--configfile", str(TINY), str(cfg), "-n")
    tuned = set(re.findall(r"rule tune:\n(?:[ \t]+.*\n)*?[ \t]+wildcards: model=(\w+)", plan.stdout + plan.stderr))
    assert tuned == {"logreg"}
    cfg.write_text("select_models: [logreg, pca]\nmodels:\n  pca: {tune: {enabled: true}}\n")
    res = snakemake(tmp_path, "--configfile", str(TINY), str(cfg), "-n", check=False)
    assert (
        res.returncode != 0
        and "models.pca.tune.enabled: task 'dimreduction' has no validation objective" in res.stdout + res.stderr
    )


def test_apply_inputs_with_one_stem_get_one_job_each(tmp_path):
    """Files of apply.inputs that share a name (one per period folder, or one file given
    twice) each get their own apply job and output, named by the folders that differ."""
    for period in ("2017", "2018", "2019"):
        (tmp_path / "data" / period).mkdir(parents=True)
        (tmp_path / "data" / period / "nano.root").write_bytes(b"")
    cfg = tmp_path / "a.yaml"
    cfg.write_text(
        "apply:\n  inputs:\n    - {path: data/*/nano.root, tree: Events}\n"
        "    - {path: data/2018/nano.root, tree: Events}\n"
    )
    plan = snakemake(tmp_path, "--configfile", str(TINY), str(cfg), "-n")
    planned = set(re.findall(r"results/apply/(\S+?\.root)\b", plan.stdout + plan.stderr))
    assert planned == {"2017_nano.root", "2018_nano.root", "2019_nano.root", "1_2018_nano.root"}, planned


def test_bad_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("split:\n  fractionz: {train: 0.5}\n")
    res = snakemake(tmp_path, "--configfile", str(TINY), str(bad), check=False)
    assert res.returncode != 0 and "fractionz" in res.stdout + res.stderr


def test_unknown_family_lists_known_ones(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  mystery:\n    family: quantum_forest\n")
    res = snakemake(tmp_path, "--configfile", str(TINY), str(bad), check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "quantum_forest" in out and "xgboost" in out


@pytest.mark.parametrize(
    "config, message",
    [
        (
            "models:\n  svmreg: {family: logistic_regression, task: regression, target: m_jj}\n",
            "models.svmreg.task: family 'logistic_regression' does not support task 'regression' (it supports: "
            "classification, multiclass)",
        ),
        (
            "models:\n  mass: {family: xgboost, task: regression}\n",
            "models.mass.target: task 'regression' needs 'target'",
        ),
        (
            "split: {fractions: {train: 0.6, validation: 0.3, test: 0.3}}\n",
            "split.fractions must sum to 1; train + validation + test = 1.2",
        ),
    ],
)
def test_config_mistakes_fail_when_parsed_before_any_job(config, message, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(config)
    res = snakemake(tmp_path, "--configfile", str(TINY), str(bad), check=False)
    assert res.returncode != 0 and message in res.stdout + res.stderr
    assert not (tmp_path / "results").exists()  # nothing ran, nothing half-written


def test_every_other_task_runs_through_the_workflow(tmp_path):
    """Multiclass, regression, anomaly, clustering and dimensionality reduction
    through real Snakemake: metrics, plots, leaderboard sections, MLflow runs.
    The streaming families (XGBoost, MLP, autoencoder) train from batches here
    (``stream_above_events: 0``); the main run trains them in memory."""
    cfg = tmp_path / "tasks.yaml"
    cfg.write_text(
        "training: {stream_above_events: 0}\n"
        "select_models: [jet_multiplicity, mjj_regression, autoencoder, kmeans, pca]\n"
        "models:\n"
        "  jet_multiplicity: {enabled: true, params: {n_estimators: 15, max_depth: 3}}\n"
        "  mjj_regression: {params: {hidden_layers: [16], epochs: 3}}\n"
        "  autoencoder: {params: {hidden_layers: [8, 2], epochs: 2}}\n"
    )
    wd = tmp_path / "wd"
    snakemake(wd, "--configfile", str(TINY), str(cfg))
    res = wd / "results"
    mc = json.loads((res / "metrics" / "jet_multiplicity.json").read_text())
    classes = mc["extra"]["classes"]
    assert classes[:3] == [0, 1, 2] and mc["metrics"]["n_classes"] == len(classes)
    # the toy's jet count is nearly unpredictable: only the plumbing is checked here
    # (the families' multiclass skill is tested on separable data in test_multiclass.py)
    assert 0 < mc["metrics"]["roc_auc"] < 1 and 0 < mc["metrics"]["accuracy"] < 1
    assert mc["confusion"]["classes"] == classes and len(mc["confusion"]["matrix"]) == len(classes)
    pred = pd.read_parquet(res / "predictions" / "jet_multiplicity.parquet")
    assert {f"prob_{i}" for i in range(len(classes))} <= set(pred.columns)
    raw = pd.read_parquet(res / "split" / "test.parquet").set_index("event_id")["n_extra_jets"]
    t = pred[pred.split == "test"].set_index("event_id")
    known = t["target"] >= 0
    assert (raw.loc[t.index[known]].to_numpy() == [classes[i] for i in t["target"][known]]).all()
    for model in ("jet_multiplicity", "mjj_regression", "autoencoder"):
        assert json.loads((res / "records" / f"{model}.train.json").read_text())["streamed"]["events"] > 0, model
    assert json.loads((res / "records" / "kmeans.train.json").read_text())["streamed"] is None
    reg = json.loads((res / "metrics" / "mjj_regression.json").read_text())["metrics"]
    assert reg["r2"] > 0 and reg["resolution_68"] > 0
    assert 0 < json.loads((res / "metrics" / "autoencoder.json").read_text())["metrics"]["roc_auc"] < 1
    assert json.loads((res / "metrics" / "kmeans.json").read_text())["metrics"]["n_clusters"] == 2
    assert json.loads((res / "metrics" / "pca.json").read_text())["metrics"]["explained_variance_ratio_total"] > 0
    for model, png in (
        ("jet_multiplicity", "confusion_matrix.png"),
        ("mjj_regression", "residuals.png"),
        ("autoencoder", "anomaly_scores.png"),
        ("kmeans", "clusters_pc12.png"),
    ):
        assert (res / "plots" / model / png).exists(), (model, png)
    md = (res / "leaderboard.md").read_text()
    for title in (
        "Multiclass classification",
        "Regression",
        "Anomaly detection",
        "Clustering",
        "Dimensionality reduction",
    ):
        assert f"## {title}" in md, title
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(res / 'mlflow.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name("hepml").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"jet_multiplicity", "mjj_regression", "autoencoder", "kmeans", "pca"}
    assert by_name["jet_multiplicity"].data.params["target"] == "n_extra_jets"
    assert "roc_auc" in by_name["jet_multiplicity"].data.metrics
