"""The evaluate and leaderboard steps: metrics.json contents, overtraining flag, errors."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hepml_steps import metrics as M
from hepml_steps.errors import DataError
from hepml_steps.evaluate import evaluate
from hepml_steps.families.sk import DecisionTreeFamily
from hepml_steps.generate import FEATURES, generate_chunk
from hepml_steps.leaderboard import leaderboard


def predictions_table(n=3000, seed=0, shift=1.0):
    rng = np.random.default_rng(seed)
    parts = []
    for i, s in enumerate(("train", "validation", "test")):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=n) + shift * y
        parts.append(
            pd.DataFrame(
                {
                    "event_id": np.arange(n) + i * n,
                    "split": s,
                    "label": y,
                    "weight": rng.uniform(0.5, 2, n),
                    "score": 1 / (1 + np.exp(-x)),
                    "truth_llr": shift * x - shift**2 / 2,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_classification_metrics_json(tmp_path):
    pred = predictions_table()
    pred.to_parquet(tmp_path / "p.parquet")
    rec = {
        "family": "xgboost",
        "n_train": 3000,
        "fit_seconds": 1.5,
        "tuning": {"n_trials": 5, "wall_seconds": 2.0, "objective": "roc_auc"},
    }
    (tmp_path / "r.json").write_text(json.dumps(rec))
    out = evaluate(
        str(tmp_path / "p.parquet"),
        str(tmp_path / "m.json"),
        "bdt",
        "classification",
        0.5,
        [0.01, 0.1, 0.3],
        str(tmp_path / "r.json"),
    )
    on_disk = json.loads((tmp_path / "m.json").read_text())
    assert on_disk == out
    m = out["metrics"]
    test = pred[pred.split == "test"]
    assert m["roc_auc"] == pytest.approx(M.roc_auc(test.label, test.score, test.weight))
    # the score is a monotone function of the LLR here, so the model *is* Bayes-optimal
    assert m["bayes_auc"] == pytest.approx(m["roc_auc"])
    for k in (
        "accuracy",
        "error_rate",
        "precision",
        "sensitivity",
        "specificity",
        "roc_combined",
        "f1",
        "geometric_mean",
        "tp",
        "fp",
        "tn",
        "fn",
        "sig_eff_at_bkg_0.01",
        "sig_eff_at_bkg_0.1",
        "sig_eff_at_bkg_0.3",
        "roc_auc_train",
        "roc_auc_validation",
        "ks_pvalue_signal",
        "ks_pvalue_background",
        "cross_entropy",
        "hinge_loss",
        "mse",
        "zero_one_loss",
    ):
        assert m[k] is not None, k
    assert out["overtraining"]["flagged"] is False  # all splits drawn from one distribution
    assert out["family"] == "xgboost" and out["extra"]["tuning"]["n_trials"] == 5
    assert out["n_events"] == {"test": 3000, "train": 3000, "validation": 3000}


def test_missing_column_and_one_class_are_clear_errors(tmp_path):
    pred = predictions_table().drop(columns="weight")
    pred.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"missing column.*weight"):
        evaluate(str(tmp_path / "p.parquet"), str(tmp_path / "m.json"), "x", "classification")
    pred = predictions_table()
    pred.loc[pred.split == "test", "label"] = 0
    pred.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match="no signal events"):
        evaluate(str(tmp_path / "p.parquet"), str(tmp_path / "m.json"), "x", "classification")
    assert not (tmp_path / "m.json").exists()


def test_cli_error_is_one_line(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hepml_steps.evaluate",
            "--predictions",
            str(tmp_path / "none.parquet"),
            "--out",
            str(tmp_path / "m.json"),
            "--model",
            "x",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("hepml: error: missing input file")
    assert "none.parquet" in r.stderr


def _tree_predictions(params, n_train=400, seed=11):
    """Train a decision tree on toy events and score train and test like the pipeline does."""
    df = generate_chunk(n_train + 20000, (n_train + 20000) // 2, seed=seed, chunk_index=0, event_id_start=0)
    df["weight"] = 1.0
    X, y = df[list(FEATURES)].to_numpy(np.float32), df["label"].to_numpy()
    fam = DecisionTreeFamily(task="classification", params=params, seed=0).fit(X[:n_train], y[:n_train])
    split = np.where(np.arange(len(df)) < n_train, "train", "test")
    return pd.DataFrame(
        {"event_id": df.event_id, "split": split, "label": y, "weight": 1.0, "score": fam.predict_score(X)}
    )


def test_ks_flags_an_overfit_tree_and_not_a_regularised_one(tmp_path):
    deep = _tree_predictions({"max_depth": None, "min_samples_leaf": 1})
    shallow = _tree_predictions({"max_depth": 2, "min_samples_leaf": 50})
    results = {}
    for name, pred in (("deep", deep), ("shallow", shallow)):
        pred.to_parquet(tmp_path / f"{name}.parquet")
        results[name] = evaluate(
            str(tmp_path / f"{name}.parquet"),
            str(tmp_path / f"{name}.json"),
            name,
            "classification",
            ks_pvalue_min=0.01,
        )
    assert results["deep"]["overtraining"]["flagged"] is True
    assert (
        min(results["deep"]["metrics"]["ks_pvalue_signal"], results["deep"]["metrics"]["ks_pvalue_background"]) < 1e-6
    )
    assert results["shallow"]["overtraining"]["flagged"] is False
    assert results["deep"]["metrics"]["roc_auc_train"] == pytest.approx(1.0)


def test_regression_anomaly_clustering_dimreduction(tmp_path):
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 2, n)
    target = rng.uniform(50, 150, n)
    base = pd.DataFrame(
        {"event_id": np.arange(n), "split": np.where(np.arange(n) < 1000, "train", "test"), "label": y, "weight": 1.0}
    )
    reg = base.assign(score=target * (1 + rng.normal(0, 0.05, n)), target=target)
    reg.to_parquet(tmp_path / "reg.parquet")
    m = evaluate(str(tmp_path / "reg.parquet"), str(tmp_path / "reg.json"), "r", "regression")["metrics"]
    assert m["relative_resolution_68"] == pytest.approx(0.05, rel=0.15) and m["r2"] > 0.9 and "r2_train" in m

    ano = base.assign(score=rng.normal(size=n) + 2 * y)
    ano.to_parquet(tmp_path / "ano.parquet")
    out = evaluate(str(tmp_path / "ano.parquet"), str(tmp_path / "ano.json"), "a", "anomaly")
    assert out["metrics"]["roc_auc"] > 0.85 and "ks_pvalue_background" in out["metrics"]

    X = rng.normal(size=(n, 2)) + 4 * y[:, None]
    feats = pd.DataFrame({"event_id": np.arange(n), "label": y, "weight": 1.0, "a": X[:, 0], "b": X[:, 1]})
    feats[base.split == "test"].to_parquet(tmp_path / "ft.parquet")
    clu = base.assign(score=y.astype(float))
    clu.to_parquet(tmp_path / "clu.parquet")
    m = evaluate(
        str(tmp_path / "clu.parquet"),
        str(tmp_path / "clu.json"),
        "k",
        "clustering",
        extra={"features": ["a", "b"]},
        features=str(tmp_path / "ft.parquet"),
    )["metrics"]
    assert m["n_clusters"] == 2 and m["silhouette"] > 0.5 and m["adjusted_rand"] == pytest.approx(1.0)

    pca = base.assign(score=X[:, 0])
    pca.to_parquet(tmp_path / "pca.parquet")
    m = evaluate(
        str(tmp_path / "pca.parquet"),
        str(tmp_path / "pca.json"),
        "p",
        "dimreduction",
        extra={"info": {"explained_variance_ratio": [0.6, 0.3]}},
    )["metrics"]
    assert m["explained_variance_ratio_total"] == pytest.approx(0.9) and m["pc1_separation_auc"] > 0.9


def test_leaderboard_ranks_and_shows_bayes(tmp_path):
    files = []
    for name, shift in (("weak", 0.3), ("strong", 1.5)):
        predictions_table(shift=shift).to_parquet(tmp_path / f"{name}.parquet")
        evaluate(
            str(tmp_path / f"{name}.parquet"),
            str(tmp_path / f"{name}.json"),
            name,
            "classification",
            extra={
                "family": "f",
                "fit_seconds": 1.0,
                "tuning": {"n_trials": 7, "wall_seconds": 3.0},
                "energy": {
                    "train": {"energy_j": 5.0, "j_per_event": 0.001, "events_per_s": 1e4, "method": "cpu-time-estimate"}
                },
            },
        )
        files.append(str(tmp_path / f"{name}.json"))
    rows = leaderboard(files, str(tmp_path / "lb.csv"), str(tmp_path / "lb.md"))
    assert [r["model"] for r in rows] == ["strong", "weak"]
    csv = pd.read_csv(tmp_path / "lb.csv")
    assert list(csv.model) == ["strong", "weak"]
    for col in ("roc_auc", "bayes_auc", "ks_pvalue_signal", "tuning_trials", "train_j_per_event", "overtrained"):
        assert col in csv.columns
    md = (tmp_path / "lb.md").read_text()
    assert "Bayes-optimal AUC" in md and "| 1 | strong |" in md and "cpu-time-estimate" in md
    with pytest.raises(DataError, match="not a metrics file"):
        (tmp_path / "bad.json").write_text("{}")
        leaderboard([str(tmp_path / "bad.json")], str(tmp_path / "lb2.csv"), str(tmp_path / "lb2.md"))
    assert not (tmp_path / "lb2.csv").exists()


def test_ks_of_a_capped_model_uses_the_events_it_was_fitted_on(tmp_path):
    """kNN/SVM-style cap: the model saw 400 of 10,000 training events. Its KS test
    must compare those 400 with test, not the whole (mostly unseen) training split."""
    from hepml_steps.dataset import cap_index

    n_train, n_test, cap = 10_000, 10_000, 400
    df = generate_chunk(n_train + n_test, (n_train + n_test) // 2, seed=5, chunk_index=0, event_id_start=0)
    X, y = df[list(FEATURES)].to_numpy(np.float32), df["label"].to_numpy()
    fitted = cap_index(df["event_id"].to_numpy()[:n_train], cap)
    fam = DecisionTreeFamily(task="classification", params={"max_depth": None, "min_samples_leaf": 1}, seed=0).fit(
        X[fitted], y[fitted]
    )
    split = np.where(np.arange(len(df)) < n_train, "train", "test")
    pred = pd.DataFrame(
        {"event_id": df.event_id, "split": split, "label": y, "weight": 1.0, "score": fam.predict_score(X)}
    )
    pred.to_parquet(tmp_path / "p.parquet")
    capped = {"train_cap": {"cap": cap, "applied": True, "n_before": n_train, "n_after": cap}}
    res = evaluate(
        str(tmp_path / "p.parquet"), str(tmp_path / "m.json"), "m", "classification", extra=capped, ks_pvalue_min=0.01
    )
    assert res["overtraining"]["flagged"] is True
    assert res["metrics"]["roc_auc_train"] == pytest.approx(1.0)  # the unpruned tree fits its 400 events
    assert res["n_events"]["train"] == n_train  # the table's counts are unchanged
    # without the cap record the unseen 96 % of the training split dilute the test
    diluted = evaluate(str(tmp_path / "p.parquet"), str(tmp_path / "d.json"), "m", "classification", ks_pvalue_min=0.01)
    assert diluted["metrics"]["roc_auc_train"] < 0.9
    assert min(diluted["metrics"]["ks_pvalue_signal"], diluted["metrics"]["ks_pvalue_background"]) > min(
        res["metrics"]["ks_pvalue_signal"], res["metrics"]["ks_pvalue_background"]
    )


@pytest.mark.parametrize("figure,unc", [("asimov", 0.0), ("s_over_sqrt_b", 0.1), ("s_over_sqrt_s_plus_b", 0.0)])
def test_optimal_cut_in_metrics_json_equals_significance_on_test(tmp_path, figure, unc):
    """z_max, the cut, S, B and ε_S in metrics.json are significance.optimal_cut on the
    test predictions with weights scaled by 1/test_fraction; the confusion figures are
    repeated at that cut."""
    from hepml_steps.significance import optimal_cut

    pred = predictions_table(n=4000, seed=3, shift=1.5)
    pred.to_parquet(tmp_path / "p.parquet")
    out = evaluate(
        str(tmp_path / "p.parquet"),
        str(tmp_path / "m.json"),
        "bdt",
        "classification",
        significance=figure,
        bkg_uncertainty=unc,
        test_fraction=0.25,
    )
    test = pred[pred.split == "test"]
    best = optimal_cut(test.label, test.score, test.weight * 4.0, figure=figure, rel_bkg_uncertainty=unc)
    m = out["metrics"]
    for name, key in (
        ("z_max", "z_max"),
        ("optimal_cut", "cut"),
        ("s_at_cut", "s"),
        ("b_at_cut", "b"),
        ("sig_eff_at_cut", "eps_s"),
        ("bkg_eff_at_cut", "eps_b"),
    ):
        assert m[name] == pytest.approx(best[key]), name
    assert m["z_max"] > 0
    at = M.threshold_metrics(test.label, test.score, best["cut"], test.weight)
    for k in ("precision", "f1", "accuracy", "sensitivity", "tp"):
        assert m[f"{k}_at_cut"] == pytest.approx(at[k]), k
    assert out["significance"] == {
        "figure": figure,
        "rel_bkg_uncertainty": unc,
        "test_fraction": 0.25,
        "weight_scale": 4.0,
    }
    # the yields are the full sample's: S at a cut selecting everything is the total signal weight / 0.25
    assert m["s_at_cut"] <= test.weight[test.label == 1].sum() * 4.0 + 1e-9


def test_a_cut_set_by_the_minimum_simulated_background_is_flagged_and_warned(tmp_path, caplog):
    """When S/√B would keep rising past the guard (well separated classes: B → 0 at the tightest
    cuts), metrics.json says the cut sits at it (cut_at_guard), with the simulated background
    events there (10) and √Σw² of their weights, and the step logs a warning saying so."""
    import logging

    pred = predictions_table(n=4000, seed=5, shift=3.0)
    pred.to_parquet(tmp_path / "p.parquet")
    with caplog.at_level(logging.WARNING, logger="hepml.evaluate"):
        m = evaluate(
            str(tmp_path / "p.parquet"), str(tmp_path / "m.json"), "bdt", "classification", significance="s_over_sqrt_b"
        )["metrics"]
    assert m["cut_at_guard"] is True and m["n_bkg_mc_at_cut"] == 10
    test = pred[pred.split == "test"]
    kept = test[(test.label == 0) & (test.score >= m["optimal_cut"])]
    assert len(kept) == 10
    assert m["b_mc_error_at_cut"] == pytest.approx(np.sqrt(np.sum(kept.weight**2)))  # test_fraction 1: as stored
    assert any("tightest the scan allows" in r.getMessage() for r in caplog.records)
    m = evaluate(str(tmp_path / "p.parquet"), str(tmp_path / "m.json"), "bdt", "classification")["metrics"]
    assert m["cut_at_guard"] is False or m["n_bkg_mc_at_cut"] >= 10  # Asimov: flagged only if it binds


def test_optimal_cut_of_anomaly_scores(tmp_path):
    pred = predictions_table(n=2000, seed=4)
    pred.to_parquet(tmp_path / "p.parquet")
    out = evaluate(str(tmp_path / "p.parquet"), str(tmp_path / "m.json"), "iso", "anomaly")
    assert out["metrics"]["z_max"] > 0 and out["metrics"]["optimal_cut"] is not None


@pytest.mark.parametrize("interleaved", [True, False])
def test_split_rows_are_those_of_a_groupby(tmp_path, interleaved):
    """The rows per split are those of a groupby of the whole table (index included:
    the file's row numbers), whether a split's rows are contiguous (a row slice of the
    table, no copy) or interleaved; a column evaluation does not use is not read, and
    ``split`` is read as a categorical."""
    from hepml_steps.evaluate import _by_split, read_predictions, split_rows

    df = predictions_table(500)
    if interleaved:
        df = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    else:
        df = df.sort_values("split", kind="stable").reset_index(drop=True)
    df["notes"] = "x" * 100
    path = tmp_path / "p.parquet"
    df.to_parquet(path, index=False, row_group_size=200)
    table = read_predictions(str(path), "m")
    assert isinstance(table["split"].dtype, pd.CategoricalDtype) and "notes" not in table
    for part in split_rows(table).values():  # contiguous rows: a view of the table's; else a copy
        assert np.shares_memory(part["score"].to_numpy(), table["score"].to_numpy()) == (not interleaved)
    got = _by_split(str(path), "m")
    expected = {s: g.drop(columns="notes") for s, g in df.groupby("split", observed=True)}
    assert list(got) == list(expected) == ["test", "train", "validation"]
    for s in expected:
        assert (got[s]["split"] == s).all()
        pd.testing.assert_frame_equal(got[s].drop(columns="split"), expected[s].drop(columns="split"), check_exact=True)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("batch_size", [7, 64, 1 << 16])
def test_split_rows_of_reads_the_split_column_batch_by_batch(tmp_path, interleaved, batch_size):
    """Each split's rows, a range when contiguous (also across batch boundaries), else the row numbers."""
    from hepml_steps.evaluate import _split_rows_of

    df = predictions_table(300)
    df = df.sample(frac=1.0, random_state=2) if interleaved else df.sort_values("split", kind="stable")
    df = df.reset_index(drop=True)
    path = tmp_path / "p.parquet"
    df.to_parquet(path, index=False, row_group_size=50)
    got = _split_rows_of(str(path), batch_size=batch_size)
    assert sorted(got) == sorted(df["split"].unique())
    for name, rows in got.items():
        expected = np.flatnonzero(df["split"].to_numpy() == name)
        assert isinstance(rows, range) == (not interleaved)
        np.testing.assert_array_equal(np.asarray(rows), expected)
