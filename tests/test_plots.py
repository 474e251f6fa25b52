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
    return pd.DataFrame(
        {
            "event_id": np.arange(n),
            "split": "test",
            "label": y,
            "weight": 1.0,
            "score": rng.normal(size=n) + y,
            "truth_llr": rng.normal(size=n) + 2 * y,
        }
    )


def test_roc_overlay_gives_every_model_its_own_line_style(tmp_path, captured):
    preds = {f"model{i:02d}": _predictions(i) for i in range(13)}
    plots.roc_curves(preds, tmp_path / "rej.png", tmp_path / "tpr.png")
    assert (tmp_path / "rej.png").stat().st_size > 0
    lines = [ln for ln in captured["tpr.png"].axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert len(lines) == 14  # 13 models + the Bayes-optimal curve
    styles = {(tuple(np.round(to_rgba(ln.get_color()), 3)), ln.get_linestyle()) for ln in lines}
    assert len(styles) == 14
    assert any(ln.get_label().startswith("Bayes optimal") and ln.get_linestyle() == "--" for ln in lines)


def test_validation_curve_of_a_categorical_parameter(tmp_path):
    csv = tmp_path / "trials.csv"
    pd.DataFrame(
        {
            "number": [0, 1, 2],
            "state": ["COMPLETE"] * 3,
            "roc_auc": [0.8, 0.9, 0.85],
            "param.kernel": ["rbf", "linear", "poly"],
        }
    ).to_csv(csv, index=False)
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
        return {
            "model": model,
            "task": task,
            "metrics": {"roc_auc": auc},
            "extra": {"energy": {"train": e, "inference": e}},
        }

    plots.energy_plots(
        [met("bdt", "classification", 0.9), met("procs", "multiclass", 0.7), met("mass", "regression", None)], tmp_path
    )
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
    rec = {
        "task": "classification",
        "family": "knn",
        "features": [],
        "history": {},
        "train_cap": {"cap": 300, "applied": True, "n_before": 2000, "n_after": 300},
    }
    (tmp_path / "r.json").write_text(json.dumps(rec))
    (tmp_path / "m.json").write_text(json.dumps({"metrics": {}}))
    seen = {}

    def spy(p, path, title, m):
        seen["pred"] = p
        return str(path)

    monkeypatch.setattr(plots, "score_distributions", spy)
    plots.plot_model(
        "knn", str(tmp_path / "p.parquet"), str(tmp_path / "m.json"), str(tmp_path / "r.json"), str(tmp_path / "out")
    )
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
        docs[name] = evaluate(
            str(tmp_path / f"{name}.parquet"), str(tmp_path / f"{name}.json"), name, "classification", test_fraction=0.5
        )
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

    r = subprocess.run(
        [sys.executable, "-c", WIDE, str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        cwd=str(Path(__file__).resolve().parents[1]),
        timeout=120,
    )
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


def test_weighted_hist_folds_flow_and_gives_sqrt_sum_w2_errors():
    x = np.array([-5.0, 0.1, 0.2, 0.7, 3.0, np.nan])
    w = np.array([2.0, 1.0, 3.0, 0.5, 4.0, 9.0])
    sumw, err, under, over = plots.weighted_hist(x, [0.0, 0.5, 1.0], w, flow=True)
    assert sumw.tolist() == [6.0, 4.5] and sumw.sum() == w[:5].sum()  # NaN left out, flow folded in
    assert under == 2.0 and over == 4.0
    assert err == pytest.approx([np.sqrt(4 + 1 + 9), np.sqrt(0.25 + 16)])
    sumw, _, _, _ = plots.weighted_hist(x, [0.0, 0.5, 1.0], w)
    assert sumw.tolist() == [4.0, 0.5]


def _train(n=3000, k=6, seed=0, labelled=True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    df = pd.DataFrame(rng.normal(size=(n, k)), columns=[f"f{i}" for i in range(k)])
    df["f2"] += 2 * y  # the separating variable
    df["f0"] *= 5  # the widest one
    df.loc[:9, "f0"] = 1e4  # overflow
    df["weight"] = rng.uniform(0.5, 1.5, n)
    if labelled:
        df["label"] = y
    return df


def test_input_distributions_signal_vs_background_with_flow_counted(tmp_path, captured):
    df = _train()
    cols = [f"f{i}" for i in range(6)]
    made = plots.input_distributions(df, cols, tmp_path, max_features=6, per_page=3)
    assert [p.rsplit("/", 1)[-1] for p in made] == ["input_variables_1.png", "input_variables_2.png"]
    ax = captured["input_variables_1.png"].axes[0]
    assert ax.get_xlabel() == "f2"  # ranked by separation
    chosen, how, _ = plots.rank_inputs(df, cols, 4)
    assert how == "separation" and len(chosen) == 4
    assert plots.rank_inputs(df.drop(columns="label"), cols, 1)[:2] == (["f0"], "variance")
    assert plots.rank_inputs(df, cols, 1, importance={"f5": 1.0})[0] == ["f5"]
    # the histogram of all the weight: flow folded in, nothing lost
    x = df["f0"].to_numpy()
    sumw, _, _, over = plots.weighted_hist(x, np.linspace(*plots._range(x), 41), df["weight"], flow=True)
    assert sumw.sum() == pytest.approx(df["weight"].sum()) and over > 0
    page = [
        a
        for a in captured["input_variables_1.png"].axes + captured["input_variables_2.png"].axes
        if a.get_xlabel() == "f0"
    ]
    assert page and any("overflow" in t.get_text() for t in page[0].texts)  # the overflow is marked


def test_input_distributions_of_800_features_stay_capped(tmp_path, captured):
    import time

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(2000, 800)), columns=[f"f{i}" for i in range(800)])
    df["weight"], df["label"] = 1.0, rng.integers(0, 2, 2000)
    t0 = time.perf_counter()
    made = plots.input_distributions(df, [f"f{i}" for i in range(800)], tmp_path, max_features=40)
    assert len(made) == 2 and time.perf_counter() - t0 < 60
    assert sum(a.get_visible() for f in captured.values() for a in f.axes) == 40


def test_score_distributions_have_error_bars_and_a_log_panel(tmp_path, captured):
    pred = _predictions(0, n=2000)
    pred["split"] = np.where(np.arange(2000) < 1000, "train", "test")
    plots.score_distributions(pred, tmp_path / "s.png", "m", {})
    lin, logp = captured["s.png"].axes
    assert logp.get_yscale() == "log" and lin.get_yscale() == "linear"
    assert len(lin.containers) >= 2  # the train points carry error bars
    # error bars: sqrt(sum w^2) of a constructed case, normalised with the histogram
    h, e = plots._normalised(*plots.weighted_hist([0.1, 0.2, 0.7], [0, 0.5, 1], [1.0, 2.0, 3.0])[:2])
    assert h == pytest.approx([0.5, 0.5]) and e == pytest.approx([np.sqrt(5) / 6, 3 / 6])


def test_units_name_regression_residuals_and_importance(tmp_path, captured, monkeypatch):
    monkeypatch.setattr(plots, "UNITS", {"m_jj": "GeV"})
    rng = np.random.default_rng(0)
    t = rng.uniform(50, 200, 500)
    pred = pd.DataFrame({"split": "test", "target": t, "score": t + rng.normal(0, 2, 500), "weight": 1.0})
    plots.residuals(pred, tmp_path / "res.png", "m", "m_jj")
    a1 = captured["res.png"].axes[0]
    assert a1.get_xlabel() == "true m_jj [GeV]"
    assert a1.get_ylabel() == "m_jj residual (prediction − truth) [GeV]"
    imp = {"metric": "mse", "permutation": {"a": {"mean": 3.0, "std": 0.1}, "b": {"mean": 1.0, "std": 0.1}}}
    plots.feature_importance(imp, tmp_path / "imp.png", "m", "m_jj")
    assert captured["imp.png"].axes[0].get_xlabel() == "importance: increase of the MSE of m_jj [GeV²]"
    monkeypatch.setattr(plots, "UNITS", {})
    plots.residuals(pred, tmp_path / "r2.png", "m", "m_jj")
    assert captured["r2.png"].axes[0].get_ylabel() == "m_jj residual (prediction − truth)"


def test_clusters_get_discrete_colours_and_a_legend(tmp_path, captured):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    labels = np.repeat([-1, 0, 1, 2, 3, 4], 50)
    plots.cluster_scatter(X, labels, tmp_path / "c.png", "dbscan")
    fig = captured["c.png"]
    assert len(fig.axes) == 1  # no colour bar
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert names == ["noise"] + [f"cluster {i}" for i in range(5)]
    colours = {tuple(np.round(c.get_facecolor()[0], 3)) for c in ax.collections}
    assert len(colours) == 6


def test_pca_figure_explained_variance_and_classes(tmp_path, captured):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(1000, 1))
    X = np.hstack([3 * z, 3 * z + 0.1 * rng.normal(size=(1000, 1)), rng.normal(size=(1000, 3))])
    evr, pcs = plots.pca_summary(X)
    assert evr.sum() == pytest.approx(1) and evr[0] > 0.8 and pcs.shape == (1000, 2)
    plots.pca_figure(X, rng.integers(0, 2, 1000), tmp_path / "pca.png", "inputs")
    a1, a2 = captured["pca.png"].axes[:2]
    cum = [ln for ln in a1.get_lines() if ln.get_label() == "cumulative"][0]
    assert cum.get_ydata()[-1] == pytest.approx(1)
    assert {t.get_text() for t in a2.get_legend().get_texts()} == {"signal", "background"}


def test_pdf_beside_png_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "FORMATS", ("png", "pdf"))
    plots.anomaly_scores(_predictions(0), tmp_path / "a.png", "ae")
    assert (tmp_path / "a.png").stat().st_size > 0
    assert (tmp_path / "a.pdf").read_bytes()[:4] == b"%PDF"
    monkeypatch.setattr(plots, "FORMATS", ("png",))
    plots.anomaly_scores(_predictions(0), tmp_path / "b.png", "ae")
    assert not (tmp_path / "b.pdf").exists()


def test_summary_input_figures_use_a_deterministic_subsample(tmp_path, captured):
    """Beyond max_events training events the input figures draw a subsample chosen by
    event id (the same whatever the order of the events), and their titles say so."""
    rng = np.random.default_rng(3)
    n = 3000
    train = pd.DataFrame(
        {
            "event_id": np.arange(n, dtype=np.int64) * 11,
            "label": rng.integers(0, 2, n).astype(np.int8),
            "weight": rng.uniform(0.5, 2.0, n),
            "truth_llr": rng.normal(size=n),
            "f0": rng.normal(size=n).astype(np.float32),
            "f1": rng.normal(size=n).astype(np.float32),
        }
    )
    path = tmp_path / "train.parquet"
    train.to_parquet(path, index=False, row_group_size=500)
    df, note = plots.train_sample(str(path), 1000)
    assert list(df.columns) == ["label", "weight", "f0", "f1"] and 800 < len(df) < 1200
    assert note == f", a subsample of {len(df)} of {n} events"
    shuffled = tmp_path / "shuffled.parquet"
    train.sample(frac=1.0, random_state=0).to_parquet(shuffled, index=False)
    again, _ = plots.train_sample(str(shuffled), 1000)
    key = ["f0", "f1"]
    assert again.sort_values(key).reset_index(drop=True).equals(df.sort_values(key).reset_index(drop=True))
    whole, note = plots.train_sample(str(path), n)
    assert note == "" and len(whole) == n
    pred = tmp_path / "p.parquet"
    pd.concat([_predictions(0).assign(split="train"), _predictions(1)]).to_parquet(pred, index=False)
    plots.plot_summary([str(pred)], ["m"], ["classification"], str(path), str(tmp_path / "out"), max_events=1000)
    title = captured["correlation_signal.png"].axes[0].get_title()
    assert f"a subsample of {len(df)} of {n} events" in title
    assert "a subsample" in captured["input_variables_1.png"]._suptitle.get_text()


def test_weighted_hist_filled_in_chunks_equals_one_pass():
    """Chunked filling (bounded temporaries) gives the one-pass histogram, flows and NaNs included."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=1000)
    x[::17] = np.nan
    w = rng.normal(1.0, 0.5, size=1000)  # signed weights too
    bins = np.linspace(-1.5, 1.5, 13)
    for flow in (False, True):
        one = plots.weighted_hist(x, bins, w, flow=flow, chunk=10**6)
        chunked = plots.weighted_hist(x, bins, w, flow=flow, chunk=37)
        for a, b in zip(one, chunked, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    sumw, _, under, over = plots.weighted_hist(x, bins, None, chunk=37)
    assert sumw.sum() + under + over == np.isfinite(x).sum()


def test_roc_figures_draw_a_thinned_curve_not_one_point_per_event(tmp_path, monkeypatch):
    """roc_curves asks metrics.roc_curve for at most about 3·ROC_DRAWN_POINTS points (thinned as
    they are computed), and draws that many, not one per event."""
    from hepml_steps import metrics

    rng = np.random.default_rng(4)
    n = 30_000
    y = rng.integers(0, 2, n)
    pred = pd.DataFrame(
        {"split": "test", "label": y, "weight": rng.exponential(size=n), "score": rng.normal(size=n) + y}
    )
    asked, real = [], metrics.roc_curve
    monkeypatch.setattr(metrics, "roc_curve", lambda *a, **k: asked.append(k.get("max_points")) or real(*a, **k))
    monkeypatch.setattr(plots, "ROC_DRAWN_POINTS", 200)
    drawn = []
    plt = plots._plt()
    real_plot = plt.Axes.plot
    monkeypatch.setattr(plt.Axes, "plot", lambda ax, x, *a, **k: drawn.append(len(x)) or real_plot(ax, x, *a, **k))
    plots.roc_curves({"m": pred}, tmp_path / "r.png", tmp_path / "t.png")
    assert asked == [200]
    assert max(drawn) <= 3 * 200 + 2 and max(drawn) > 200


def test_correlation_summed_in_chunks_equals_one_pass(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    df = pd.DataFrame(rng.normal(size=(1000, 3)) @ [[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]], columns=["a", "b", "c"])
    df["weight"] = rng.exponential(1.0, 1000)
    shown = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: shown.append(fig.axes[0].images[0].get_array().copy()))
    plots.correlation_matrix(df, ["a", "b", "c"], tmp_path / "one.png", "t", chunk=10**6)
    plots.correlation_matrix(df, ["a", "b", "c"], tmp_path / "chunked.png", "t", chunk=77)
    np.testing.assert_allclose(shown[0], shown[1], rtol=1e-10, atol=1e-10)
    w = df["weight"].to_numpy()
    expected = np.cov(df[["a", "b", "c"]].to_numpy().T, aweights=w, ddof=0)
    sd = np.sqrt(np.diag(expected))
    np.testing.assert_allclose(shown[1], 100 * expected / np.outer(sd, sd), rtol=1e-9)


def test_pca_projection_in_chunks_equals_one_pass_and_fills_non_finite():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4))
    X[3, 1], X[10, 2] = np.nan, np.inf
    evr, pcs = plots.pca_summary(X, max_events=300, chunk=10**6)
    evr2, pcs2 = plots.pca_summary(pd.DataFrame(X), max_events=300, chunk=64)  # a frame, read in chunks
    np.testing.assert_allclose(evr, evr2, rtol=1e-12)
    np.testing.assert_allclose(pcs, pcs2, rtol=1e-10, atol=1e-12)
    assert pcs.shape == (500, 2) and np.isfinite(pcs).all()
    head = X[:300].copy()
    head[~np.isfinite(head)] = np.nan
    filled = np.where(np.isfinite(X), X, np.nanmean(head, axis=0))
    _, _, vt = np.linalg.svd(np.where(np.isnan(head), np.nanmean(head, axis=0), head) - filled[:300].mean(0))
    np.testing.assert_allclose(np.abs(pcs), np.abs((filled - filled[:300].mean(0)) @ vt[:2].T), rtol=1e-9, atol=1e-9)


def test_correlation_of_masked_rows_equals_that_of_their_copy(tmp_path, monkeypatch):
    """``rows`` draws one class without copying the table: the same sums, chunk for chunk."""
    rng = np.random.default_rng(3)
    df = pd.DataFrame(rng.normal(size=(1000, 3)) @ [[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]], columns=["a", "b", "c"])
    df["weight"] = rng.exponential(1.0, 1000)
    rows = rng.random(1000) < 0.4
    shown = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: shown.append(fig.axes[0].images[0].get_array().copy()))
    plots.correlation_matrix(df[rows], ["a", "b", "c"], tmp_path / "copy.png", "t", chunk=77)
    plots.correlation_matrix(df, ["a", "b", "c"], tmp_path / "mask.png", "t", chunk=77, rows=rows)
    np.testing.assert_array_equal(shown[0], shown[1])
