import inspect
import json

import numpy as np
import pandas as pd
import pytest

from hepml_steps import registry
from hepml_steps import train as tr
from hepml_steps import tune as tn
from hepml_steps.errors import ConfigError, FamilyError
from tests.conftest import make_events


@pytest.fixture
def prepared(tmp_path):
    paths = {}
    for i, s in enumerate(("train", "validation", "test")):
        df = make_events(1500, seed=20 + i)
        df["f1"] = df["f1"] + np.where(df["f2"] * df["f3"] > 0, 1.0, -1.0) * df["label"]  # needs depth
        paths[s] = str(tmp_path / f"{s}.parquet")
        df.to_parquet(paths[s], index=False)
    return paths


def run(prepared, tmp_path, spec, name="m"):
    return tn.tune(
        prepared["train"],
        prepared["validation"],
        name,
        spec,
        str(tmp_path / f"{name}.json"),
        str(tmp_path / f"{name}.csv"),
        seed=1,
    )


def test_tuning_beats_a_poor_default_and_final_training_uses_it(prepared, tmp_path):
    from sklearn.metrics import roc_auc_score

    spec = {
        "family": "decision_tree",
        "params": {"max_depth": 1, "min_samples_leaf": 1},
        "tune": {"n_trials": 12, "search_space": {"max_depth": {"type": "int", "low": 1, "high": 8}}},
    }
    rec = run(prepared, tmp_path, spec)
    assert rec["n_trials"] == 12 and rec["baseline_value"] is not None
    assert rec["best_value"] > rec["baseline_value"] + 0.03
    assert rec["best_params"]["max_depth"] > 1
    trials = pd.read_csv(tmp_path / "m.csv")
    assert len(trials) == 12 and trials.loc[0, "param.max_depth"] == 1  # trial 0 = the config's params

    def test_auc(tuned):
        r = tr.train(
            prepared["train"],
            prepared["validation"],
            "x",
            spec,
            str(tmp_path / "x"),
            str(tmp_path / "x.json"),
            tuned=tuned,
        )
        model, _ = registry.load_model(tmp_path / "x")
        t = pd.read_parquet(prepared["test"])
        return roc_auc_score(t.label, model.predict_score(t[r["features"]].to_numpy(np.float32))), r

    poor, _ = test_auc(None)
    good, rec2 = test_auc(str(tmp_path / "m.json"))
    assert good > poor + 0.03 and rec2["tuning"]["best_value"] == rec["best_value"]


def test_test_split_is_never_read(prepared, tmp_path):
    assert "test" not in inspect.signature(tn.tune).parameters
    test_path = prepared.pop("test")
    import os

    os.remove(test_path)  # tuning works without the test split existing at all
    rec = run(prepared, tmp_path, {"family": "logistic_regression", "tune": {"n_trials": 3}})
    assert sorted(rec["inputs"]) == sorted([prepared["train"], prepared["validation"]])
    assert all(len(h) == 64 for h in rec["inputs"].values())


def test_seeded_study_is_reproducible(prepared, tmp_path):
    spec = {"family": "decision_tree", "tune": {"n_trials": 6}}
    run(prepared, tmp_path, spec, "a")
    run(prepared, tmp_path, spec, "b")
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    timing = ["seconds", "train_j_per_event"]  # measured, so they differ run to run
    pd.testing.assert_frame_equal(a.drop(columns=timing), b.drop(columns=timing))


def test_crashing_trials_are_recorded_and_study_goes_on(prepared, tmp_path):
    spec = {
        "family": "knn",
        "params": {"n_neighbors": 15},
        "tune": {
            "n_trials": 8,
            "search_space": {
                "weights": {"type": "categorical", "choices": ["uniform", "bogus"]},
                "n_neighbors": {"type": "int", "low": 5, "high": 30},
            },
        },
    }
    rec = run(prepared, tmp_path, spec)
    trials = pd.read_csv(tmp_path / "m.csv")
    failed = trials[trials.state == "FAIL"]
    assert rec["n_failed"] == len(failed) > 0 and rec["n_complete"] > 0
    assert failed["error"].str.contains("bogus").all()
    assert rec["best_params"]["weights"] == "uniform"


def test_all_trials_failing_names_the_family(prepared, tmp_path):
    spec = {
        "family": "knn",
        "params": {"weights": "bogus"},
        "tune": {"n_trials": 3, "search_space": {"weights": {"type": "categorical", "choices": ["bogus"]}}},
    }
    with pytest.raises(FamilyError, match="every tuning trial of family 'knn' failed.*bogus"):
        run(prepared, tmp_path, spec)


@pytest.mark.parametrize(
    "tune_cfg, err, msg",
    [
        ({"search_space": {"max_dept": {"type": "int", "low": 1, "high": 3}}}, FamilyError, "max_dept.*decision_tree"),
        ({"search_space": {"max_depth": {"type": "int", "low": 5, "high": 2}}}, ConfigError, "inverted"),
        ({"search_space": {"max_depth": {"type": "int", "low": 3, "high": 3}}}, ConfigError, "empty or inverted"),
        ({"objective": "auc_roc"}, ConfigError, "unknown tuning objective 'auc_roc'"),
    ],
)
def test_bad_tuning_config_is_named(tune_cfg, err, msg, prepared, tmp_path):
    with pytest.raises(err, match=msg):
        run(prepared, tmp_path, {"family": "decision_tree", "tune": tune_cfg})


def test_iterative_family_trials_are_pruned(prepared, tmp_path):
    spec = {
        "family": "xgboost",
        "params": {"n_estimators": 40},
        "tune": {
            "n_trials": 16,
            "objective": "cross_entropy",
            "search_space": {
                "learning_rate": {"type": "categorical", "choices": [0.3, 0.0001]},
                "max_depth": {"type": "int", "low": 2, "high": 6},
            },
        },
    }
    rec = run(prepared, tmp_path, spec)
    assert rec["n_pruned"] > 0 and rec["best_params"]["learning_rate"] == 0.3


def test_cross_validation_objective(prepared, tmp_path):
    rec = run(
        prepared,
        tmp_path,
        {"family": "logistic_regression", "tune": {"n_trials": 3, "cv_folds": 3, "objective": "sig_eff_at_bkg_0.1"}},
    )
    assert rec["split"].startswith("3-fold") and 0 < rec["best_value"] <= 1
    trials = pd.read_csv(tmp_path / "m.csv")
    assert (trials.state == "COMPLETE").all()


def test_energy_as_second_objective_returns_the_pareto_set(prepared, tmp_path):
    spec = {
        "family": "random_forest",
        "params": {"n_estimators": 5, "max_depth": 6},
        "tune": {
            "n_trials": 6,
            "energy_objective": True,
            "search_space": {"n_estimators": {"type": "categorical", "choices": [2, 150]}},
        },
    }
    rec = run(prepared, tmp_path, spec)
    assert rec["energy_objective"] is True and rec["pareto"]
    front = [(p["value"], p["train_j_per_event"]) for p in rec["pareto"]]
    for v, j in front:  # nobody on the front is dominated by another trial
        assert j > 0
        assert not any(v2 >= v and j2 <= j and (v2, j2) != (v, j) for v2, j2 in front)
    # the final choice is the front's best AUC
    assert rec["best_value"] == max(v for v, _ in front)
    trials = pd.read_csv(tmp_path / "m.csv")
    assert trials["train_j_per_event"].gt(0).all() and trials["pareto"].any()
    # 150 trees cost more energy per event than 2
    by_n = trials.groupby("param.n_estimators")["train_j_per_event"].mean()
    if len(by_n) == 2:
        assert by_n[150] > by_n[2]


KILL_AFTER = """
import os, sys
import optuna
from hepml_steps import tune as tn

k = int(sys.argv[1])
real = optuna.study.Study.optimize

def optimize(self, func, *args, callbacks=None, **kw):
    def die(study, trial):  # the job is killed right after its k-th trial
        if len(study.trials) >= k:
            os._exit(9)
    return real(self, func, *args, callbacks=[*(callbacks or []), die], **kw)

optuna.study.Study.optimize = optimize
tn.main(sys.argv[2:])
"""


def test_killed_tune_job_resumes_at_the_next_trial(prepared, tmp_path):
    """A tune job killed after k trials and rerun continues the stored study at
    trial k: the finished trials count toward n_trials and are not rerun."""
    import subprocess
    import sys
    from pathlib import Path

    spec = {"family": "decision_tree", "tune": {"n_trials": 5, "objective": "roc_auc"}}
    args = [
        "--train",
        prepared["train"],
        "--validation",
        prepared["validation"],
        "--model",
        "m",
        "--spec",
        json.dumps(spec),
        "--out",
        str(tmp_path / "m.json"),
        "--trials",
        str(tmp_path / "m.csv"),
        "--seed",
        "1",
    ]
    root = str(Path(__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, "-c", KILL_AFTER, "3", *args], capture_output=True, text=True, cwd=root)
    assert r.returncode == 9, r.stderr
    assert (tmp_path / "m.journal").exists() and not (tmp_path / "m.json").exists()
    rec = tn.tune(
        prepared["train"], prepared["validation"], "m", spec, str(tmp_path / "m.json"), str(tmp_path / "m.csv"), seed=1
    )
    trials = pd.read_csv(tmp_path / "m.csv")
    assert list(trials["number"]) == [0, 1, 2, 3, 4] and rec["n_trials"] == 5
    assert rec["n_trials_resumed"] == 3 and rec["storage"] == str(tmp_path / "m.journal")
    assert "roc_auc" in trials.columns and "value" not in trials.columns
    assert (trials["state"] == "COMPLETE").all()
    # rerunning a finished study runs no further trial and gives the same answer
    again = tn.tune(
        prepared["train"], prepared["validation"], "m", spec, str(tmp_path / "m.json"), str(tmp_path / "m2.csv"), seed=1
    )
    assert again["n_trials"] == 5 and again["best_value"] == rec["best_value"]
    # a bigger budget continues the study from trial 5
    more = tn.tune(
        prepared["train"],
        prepared["validation"],
        "m",
        {**spec, "tune": {**spec["tune"], "n_trials": 7}},
        str(tmp_path / "m.json"),
        str(tmp_path / "m3.csv"),
        seed=1,
    )
    assert more["n_trials"] == 7 and more["n_trials_resumed"] == 5


def test_interrupted_trial_is_failed_and_not_counted(prepared, tmp_path):
    import optuna

    spec = {"family": "decision_tree", "tune": {"n_trials": 3}}
    st = tn._study("m", spec, 1, 1, None)
    inputs = {p: tn._sha256(p) for p in (prepared["train"], prepared["validation"])}
    storage = tn._storage(str(tmp_path / "m.journal"))
    study = optuna.create_study(
        storage=storage, study_name=tn._study_name(st, "m", False, inputs), direction="maximize"
    )
    study.ask()  # a trial left RUNNING by a killed job
    rec = tn.tune(
        prepared["train"], prepared["validation"], "m", spec, str(tmp_path / "m.json"), str(tmp_path / "m.csv"), seed=1
    )
    trials = pd.read_csv(tmp_path / "m.csv")
    assert trials.loc[0, "state"] == "FAIL" and "interrupted" in trials.loc[0, "error"]
    assert (trials["state"] == "COMPLETE").sum() == 3 and rec["n_failed"] == 1


def test_pruned_trials_say_pruned_in_the_trials_table(tmp_path):
    import optuna

    study = optuna.create_study(direction="maximize")

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        if trial.number % 2:
            raise optuna.TrialPruned()
        return x

    study.optimize(objective, n_trials=4)
    tn._write_trials(study, None, str(tmp_path / "t.csv"), "sig_eff_at_bkg_0.1")
    t = pd.read_csv(tmp_path / "t.csv")
    assert list(t["state"]) == ["COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]
    assert "sig_eff_at_bkg_0.1" in t.columns and t["sig_eff_at_bkg_0.1"].isna().tolist() == [False, True] * 2


def test_anomaly_model_is_tuned_on_signal_and_background_of_validation(prepared, tmp_path):
    spec = {
        "family": "autoencoder",
        "task": "anomaly",
        "params": {"hidden_layers": [3], "epochs": 3},
        "tune": {"n_trials": 2, "pruning": False},
    }
    rec = run(prepared, tmp_path, spec, name="ae")
    assert rec["objective"] == "roc_auc" and rec["n_complete"] == 2 and rec["n_failed"] == 0
    assert 0.0 <= rec["best_value"] <= 1.0  # an AUC: validation signal and background were both judged
    with pytest.raises(ConfigError, match="cv_folds is not available for task 'anomaly'"):
        run(prepared, tmp_path, {**spec, "tune": {"n_trials": 2, "cv_folds": 2}}, name="ae_cv")


@pytest.mark.parametrize("cv", [None, 2])
def test_clustering_tuned_on_adjusted_rand_compares_with_the_labels(prepared, tmp_path, cv):
    spec = {
        "family": "kmeans",
        "task": "clustering",
        "params": {"n_clusters": 2},
        "tune": {"n_trials": 2, "objective": "adjusted_rand", "cv_folds": cv},
    }
    rec = run(prepared, tmp_path, spec, name="km")  # main: KeyError 'adjusted_rand' (no labels reached it)
    assert rec["objective"] == "adjusted_rand" and rec["n_complete"] == 2 and rec["n_failed"] == 0
    # the classes are separated along f0 in make_events: two clusters agree with them better than chance
    assert 0.05 < rec["best_value"] <= 1.0
