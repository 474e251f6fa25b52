"""The figures: what each one shows, checked on the matplotlib objects."""
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from hepml_steps import plots


@pytest.fixture
def captured(monkeypatch):
    """Keep the figures instead of only writing them."""
    figs = {}
    real = plots._save

    def save(fig, path):
        figs[str(path).rsplit("/", 1)[-1]] = fig
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return figs


def _predictions(seed, n=600):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return pd.DataFrame({"event_id": np.arange(n), "split": "test", "label": y, "weight": 1.0,
                         "score": rng.normal(size=n) + y, "truth_llr": rng.normal(size=n) + 2 * y})


def test_roc_overlay_gives_every_model_its_own_line_style(tmp_path, captured):
    preds = {f"model{i:02d}": _predictions(i) for i in range(13)}
    plots.roc_curves(preds, tmp_path / "rej.png", tmp_path / "tpr.png")
    assert (tmp_path / "rej.png").stat().st_size > 0
    lines = [ln for ln in captured["tpr.png"].axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert len(lines) == 14  # 13 models + the Bayes-optimal curve
    styles = {(tuple(np.round(to_rgba(ln.get_color()), 3)),
               ln.get_linestyle()) for ln in lines}
    assert len(styles) == 14
    assert any(ln.get_label().startswith("Bayes optimal") and ln.get_linestyle() == "--" for ln in lines)


def test_validation_curve_of_a_categorical_parameter(tmp_path):
    csv = tmp_path / "trials.csv"
    pd.DataFrame({"number": [0, 1, 2], "state": ["COMPLETE"] * 3, "roc_auc": [0.8, 0.9, 0.85],
                  "param.kernel": ["rbf", "linear", "poly"]}).to_csv(csv, index=False)
    out = plots.validation_curve(pd.read_csv(csv), tmp_path / "vc.png", "svm", "roc_auc")
    assert out and (tmp_path / "vc.png").stat().st_size > 0


def test_multiclass_confusion_names_classes_by_target_value(tmp_path, captured):
    conf = {"classes": [0, 1, 2], "matrix": [[8.0, 1.0, 1.0], [0.0, 5.0, 5.0], [2.0, 0.0, 18.0]]}
    plots.multiclass_confusion(conf, tmp_path / "cm.png", "m", "n_extra_jets")
    ax = captured["cm.png"].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"true n_extra_jets={c}" for c in (0, 1, 2)]
    texts = [t.get_text() for t in ax.texts]
    assert texts[0].startswith("0.800") and texts[8].startswith("0.900")  # fractions per true class


def test_residuals_name_the_target_and_ignore_far_outliers(tmp_path, captured):
    rng = np.random.default_rng(0)
    t = rng.uniform(50, 200, 2000)
    p = t + rng.normal(0, 2, 2000)
    p[:3] = 1e6  # a few wild predictions must not squash the core
    pred = pd.DataFrame({"split": "test", "target": t, "score": p, "weight": 1.0})
    plots.residuals(pred, tmp_path / "res.png", "m", "m_jj")
    a1, a2 = captured["res.png"].axes[:2]
    assert a1.get_xlabel() == "true m_jj" and "m_jj" in a2.get_xlabel()
    lo, hi = a1.get_ylim()
    assert hi < 100 and lo > -100


def test_energy_view_leaves_out_models_without_a_signal_vs_background_auc(tmp_path, captured):
    def met(model, task, auc):
        e = {"j_per_event": 1e-3, "events_per_s": 1e4, "method": "estimate:cpu-time"}
        return {"model": model, "task": task, "metrics": {"roc_auc": auc},
                "extra": {"energy": {"train": e, "inference": e}}}

    plots.energy_plots([met("bdt", "classification", 0.9), met("procs", "multiclass", 0.7),
                        met("mass", "regression", None)], tmp_path)
    ax = captured["energy_auc_vs_j_per_event.png"].axes[0]
    assert {t.get_text() for t in ax.texts} == {"bdt"}
    names = {t.get_text() for t in captured["energy_vs_throughput.png"].axes[0].texts}
    assert names == {"bdt", "procs", "mass"}


def test_score_histograms_of_a_capped_model_use_its_fitted_events(tmp_path, monkeypatch):
    import json

    from hepml_steps.dataset import cap_index

    pred = _predictions(1, n=3000)
    pred["split"] = np.where(np.arange(3000) < 2000, "train", "test")
    pred.to_parquet(tmp_path / "p.parquet")
    rec = {"task": "classification", "family": "knn", "features": [], "history": {},
           "train_cap": {"cap": 300, "applied": True, "n_before": 2000, "n_after": 300}}
    (tmp_path / "r.json").write_text(json.dumps(rec))
    (tmp_path / "m.json").write_text(json.dumps({"metrics": {}}))
    seen = {}
    def spy(p, path, title, m):
        seen["pred"] = p
        return str(path)

    monkeypatch.setattr(plots, "score_distributions", spy)
    plots.plot_model("knn", str(tmp_path / "p.parquet"), str(tmp_path / "m.json"), str(tmp_path / "r.json"),
                     str(tmp_path / "out"))
    train = seen["pred"][seen["pred"]["split"] == "train"]
    fitted = pred.iloc[cap_index(pred["event_id"].to_numpy()[:2000], 300)]
    assert sorted(train["event_id"]) == sorted(fitted["event_id"])
    assert (seen["pred"]["split"] == "test").sum() == 1000


def test_significance_figures_mark_the_optimum_of_metrics_json(tmp_path, captured):
    """Per model: ε_S, ε_B and Z against the cut with the evaluate step's optimum;
    summary: Z against ε_S for every model, each optimum marked."""
    from hepml_steps.evaluate import evaluate

    preds, docs = {}, {}
    for i, name in enumerate(("bdt", "mlp")):
        pred = _predictions(i, n=4000)
        pred["score"] = 1 / (1 + np.exp(-pred["score"]))
        pred.to_parquet(tmp_path / f"{name}.parquet")
        docs[name] = evaluate(str(tmp_path / f"{name}.parquet"), str(tmp_path / f"{name}.json"), name,
                              "classification", test_fraction=0.5)
        preds[name] = pred
        path = plots.significance_scan(pred, docs[name], tmp_path / f"{name}_scan.png", name)
        assert path and (tmp_path / f"{name}_scan.png").stat().st_size > 0
        stars = [ln for ax in captured[f"{name}_scan.png"].axes for ln in ax.get_lines() if ln.get_marker() == "*"]
        assert len(stars) == 1
        m = docs[name]["metrics"]
        assert stars[0].get_xdata()[0] == pytest.approx(m["optimal_cut"])
        assert stars[0].get_ydata()[0] == pytest.approx(m["z_max"])
    assert plots.significance_vs_efficiency(preds, docs, tmp_path / "z.png")
    lines = captured["z.png"].axes[0].get_lines()
    assert sum(ln.get_marker() == "*" for ln in lines) == 2
    assert any(ln.get_label().startswith("bdt (Z_max") for ln in lines)


WIDE = """
import resource, sys, time
import numpy as np, pandas as pd
from hepml_steps import plots

rng = np.random.default_rng(0)
n, k = 4000, 800
X = rng.normal(size=(n, k))
X[:, 1] += X[:, 0]  # one correlated pair
df = pd.DataFrame(X, columns=[f"f{i}" for i in range(k)])
df["weight"], df["label"] = 1.0, rng.integers(0, 2, n)
t0 = time.perf_counter()
plots.correlation_matrix(df, [f"f{i}" for i in range(k)], sys.argv[1], "wide")
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_correlation_figure_of_800_features_is_bounded(tmp_path, captured):
    """800 features: under 2 GB and a few seconds; at most 40 drawn, the most correlated kept."""
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "-c", WIDE, str(tmp_path / "c.png")], capture_output=True, text=True,
                       cwd=str(Path(__file__).resolve().parents[1]), timeout=120)
    assert r.returncode == 0, r.stderr
    seconds, rss_kib = r.stdout.split()
    assert float(seconds) < 10 and int(rss_kib) < 2 * 1024 * 1024
    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.normal(size=(500, 100)), columns=[f"f{i}" for i in range(100)])
    df["f7"] = df["f3"] + 0.1 * df["f7"]
    df["weight"] = 1.0
    plots.correlation_matrix(df, [f"f{i}" for i in range(100)], tmp_path / "d.png", "t")
    ax = captured["d.png"].axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) == 40 and {"f3", "f7"} <= set(labels)
    assert "40 most correlated of 100" in ax.get_title()


def test_inverse_background_efficiency_on_a_log_axis(tmp_path, captured):
    preds = {"a": _predictions(0), "b": _predictions(1)}
    made = plots.roc_curves(preds, tmp_path / "r.png", tmp_path / "t.png", path_inverse=tmp_path / "inv.png")
    assert len(made) == 3 and (tmp_path / "inv.png").stat().st_size > 0
    ax = captured["inv.png"].axes[0]
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 3  # two models + Bayes
    assert all(np.all(ln.get_ydata() >= 1) for ln in ax.get_lines())
