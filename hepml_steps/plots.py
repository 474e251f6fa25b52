"""Figures a physicist expects, one PNG file each (matplotlib, Agg backend).

Per model (``plots`` rule, one directory per model): score distributions of
signal and background on train vs test (the TMVA overtraining plot, with the
KS p-values), the weighted confusion matrix, the learning curve of iterative
families, the validation curve of a one-dimensional tuning, residuals vs
target (regression), anomaly-score distributions, the significance scan
(efficiencies and significance against the cut, optimum marked), the clustering scatter on
the first two principal components, and feature importance.
Across models (``summary_plots`` rule): ROC curves overlaid (background
rejection vs signal efficiency and TPR vs FPR, with the Bayes-optimal curve
when the truth LLR is known) and the input correlation matrices for signal
and for background (one of all events when the inputs are unlabelled); the
significance against signal efficiency of every classifier and anomaly
detector (expected yields, optimum marked); test
AUC against training and inference J/event with the Pareto front, and energy
per event against throughput.

Also: TMVAGui's input-variable distributions, signal vs background, in grids
of 20 (summary, ``input_variables_<page>.png``, at most ``plots.max_input_features``),
the inputs' principal components (summary ``pca_inputs.png``; per
dimensionality-reduction model ``pca.png``). Axis labels carry units from
``plots.units`` (:data:`UNITS`); ``plots.formats`` (:data:`FORMATS`) adds e.g.
a PDF beside every PNG.

mplhep's ROOT style is used when mplhep is installed (optional).
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import numpy as np

from . import tasks as hepml_tasks
from .columns import EVENT_ID, LABEL, SCORE, SPLIT, TRUTH_LLR, WEIGHT
from .evaluate import split_part

log = logging.getLogger("hepml.plots")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:  # optional HEP style
        import mplhep

        plt.style.use(mplhep.style.ROOT)
    except Exception:
        pass
    return plt


#: Formats every figure is written in (``plots.formats``): the PNG the report
#: embeds, plus e.g. a PDF beside it (same name) for papers.
FORMATS: tuple[str, ...] = ("png",)

#: Units of named quantities (``plots.units``), e.g. ``{"m_jj": "GeV"}``.
UNITS: dict[str, str] = {}


def _save(fig, path) -> str:
    from .io import atomic_path

    path = Path(path)
    for fmt in dict.fromkeys(("png", *FORMATS)):
        target = path if fmt == "png" else path.with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format=fmt)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)


def _hist_weights(w):
    s = w.sum()
    return w / s if s > 0 else w


def quantity(name: str | None, default: str = "target") -> str:
    """``name [unit]`` when :data:`UNITS` knows the unit, else the name."""
    name = name or default
    unit = UNITS.get(name)
    return f"{name} [{unit}]" if unit else name


def weighted_hist(x, bins, w=None, flow: bool = False, chunk: int = 1 << 20):
    """A weighted histogram and its statistical errors.

    Returns ``(sumw, err, under, over)``: Σw per bin, √(Σw²) per bin, and the
    weights below the first and above the last edge. With ``flow`` those are
    folded into the first and last bins (so ``sumw.sum()`` is the total weight
    of the finite values); NaN values are left out either way. Filled
    ``chunk`` events at a time, so the temporaries stay those of one chunk
    (a training split may hold 10^7–10^8 events).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    w = None if w is None else np.asarray(w, dtype=np.float64).reshape(-1)
    bins = np.asarray(bins, dtype=np.float64)
    lo, hi = bins[0], bins[-1]
    sumw, sumw2 = np.zeros(len(bins) - 1), np.zeros(len(bins) - 1)
    under = over = 0.0
    for start in range(0, len(x), chunk):
        xc = x[start : start + chunk]
        wc = np.ones_like(xc) if w is None else w[start : start + chunk]
        ok = np.isfinite(xc)
        xc, wc = xc[ok], wc[ok]
        under += float(wc[xc < lo].sum())
        over += float(wc[xc > hi].sum())
        if flow:
            xc = np.clip(xc, lo, hi)
        sumw += np.histogram(xc, bins=bins, weights=wc)[0]
        sumw2 += np.histogram(xc, bins=bins, weights=wc * wc)[0]
    return sumw, np.sqrt(sumw2), under, over


def _range(x, w=None):
    """The central 99 % of the finite values (a unit-wide range when they are all equal)."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        x = x[finite]
    del finite
    lo, hi = np.percentile(x, [0.5, 99.5]) if len(x) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)


def _normalised(sumw, err):
    total = sumw.sum()
    return (sumw / total, err / total) if total > 0 else (sumw, err)


def score_distributions(pred, path, title: str, ks: dict | None = None) -> str:
    """Signal and background score, train (points with √(Σw²) error bars) vs
    test (filled with its error band), normalised; the left panel linear, the
    right one the same on a log y axis (the tails). Scores outside the central
    99 % are folded into the first/last bins."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    lo, hi = _range(pred[SCORE]) if len(pred) else (0.0, 1.0)
    bins = np.linspace(lo, hi, 41)
    centres = 0.5 * (bins[1:] + bins[:-1])
    label = pred[LABEL].to_numpy()
    score, weight = pred[SCORE].to_numpy(dtype=np.float64), pred[WEIGHT].to_numpy(dtype=np.float64)
    hists = {}  # the two columns drawn, per split and class (not copies of the table's rows)
    for sp in ("test", "train"):
        in_split = (pred[SPLIT] == sp).to_numpy()  # on a categorical: its codes, no strings
        for cls in (1, 0):
            rows = in_split & (label == cls)
            hists[sp, cls] = _normalised(*weighted_hist(score[rows], bins, weight[rows], flow=True)[:2])
    for ax in axes:
        for cls, colour, name in ((1, "tab:blue", "signal"), (0, "tab:red", "background")):
            h, e = hists["test", cls]
            ax.stairs(h, bins, fill=True, alpha=0.35, color=colour, label=f"{name} (test)")
            ax.stairs(h + e, bins, baseline=h - e, fill=True, alpha=0.25, color=colour, hatch="///", lw=0)
            h, e = hists["train", cls]
            ax.errorbar(centres, h, yerr=e, fmt="o", ms=3.5, color=colour, label=f"{name} (train)")
        ax.set_xlabel("classifier score")
        ax.set_ylabel("fraction of events / bin")
    axes[1].set_yscale("log")
    text = title
    if ks:
        text += (
            f"\nKS p-value train vs test: signal {ks.get('ks_pvalue_signal', float('nan')):.3g}, "
            f"background {ks.get('ks_pvalue_background', float('nan')):.3g}"
        )
    fig.suptitle(text, fontsize=10)
    axes[0].legend(fontsize=9)
    return _save(fig, path)


def separation(sig, bkg) -> float:
    """TMVA's separation <S²> = ½ Σ (s_i − b_i)² / (s_i + b_i) of two
    normalised histograms (0: identical shapes, 1: disjoint)."""
    s, b = np.asarray(sig, dtype=np.float64), np.asarray(bkg, dtype=np.float64)
    s = s / s.sum() if s.sum() > 0 else s
    b = b / b.sum() if b.sum() > 0 else b
    tot = s + b
    ok = tot > 0
    return float(0.5 * np.sum((s[ok] - b[ok]) ** 2 / tot[ok]))


def rank_inputs(df, columns, max_features: int = 40, importance: dict | None = None, n_bins: int = 40):
    """The (at most) ``max_features`` input variables worth drawing, best first,
    and how they were chosen: by the summed importance when given
    (``{feature: value}``), else by the signal/background separation when the
    events are labelled, else by the variance."""
    columns = list(columns)
    if importance:
        score = {c: float(importance.get(c, 0.0)) for c in columns}
        how = "importance"
    elif LABEL in df.columns and df[LABEL].nunique() == 2:
        how, score = "separation", {}
        sig, w = (df[LABEL] == 1).to_numpy(), df[WEIGHT].to_numpy(dtype=np.float64)
        for c in columns:
            x = df[c].to_numpy(dtype=np.float64)
            bins = np.linspace(*_range(x), n_bins + 1)
            score[c] = separation(
                weighted_hist(x[sig], bins, w[sig], flow=True)[0], weighted_hist(x[~sig], bins, w[~sig], flow=True)[0]
            )
    else:
        how = "variance"
        score = {c: float(np.nanvar(df[c].to_numpy(dtype=np.float64))) for c in columns}
    best = sorted(columns, key=lambda c: (-np.nan_to_num(score[c], nan=-np.inf), columns.index(c)))
    return best[:max_features], how, score


def input_distributions(
    df,
    columns,
    out_dir,
    max_features: int = 40,
    per_page: int = 20,
    importance: dict | None = None,
    n_bins: int = 40,
    sample: str = "",
) -> list[str]:
    """TMVAGui's first figure: each input variable's weighted distribution,
    signal vs background (of all events when unlabelled), normalised, with
    under- and overflow (outside the central 99 %) folded into the first and
    last bins, their fractions written in the panel. At most ``max_features``
    variables (see :func:`rank_inputs`), ``per_page`` per figure
    ``input_variables_<page>.png``; ``sample`` is added to the title after
    "train" (a subsample's note, :func:`train_sample`). Returns the paths written."""
    plt = _plt()
    out = Path(out_dir)
    chosen, how, score = rank_inputs(df, columns, max_features, importance, n_bins)
    labelled = LABEL in df.columns and df[LABEL].nunique() == 2
    w = df[WEIGHT].to_numpy(dtype=np.float64)
    groups = (
        ([(df[LABEL] == 1).to_numpy(), "signal", "tab:blue"], [(df[LABEL] == 0).to_numpy(), "background", "tab:red"])
        if labelled
        else ([np.ones(len(df), bool), "all events", "tab:gray"],)
    )
    made = []
    pages = [chosen[i : i + per_page] for i in range(0, len(chosen), per_page)]
    for page, names in enumerate(pages, 1):
        ncol = min(5, len(names))
        nrow = -(-len(names) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 2.8 * nrow), squeeze=False)
        for ax, c in zip(axes.flat, names):
            x = df[c].to_numpy(dtype=np.float64)
            bins = np.linspace(*_range(x), n_bins + 1)
            notes = []
            for mask, name, colour in groups:
                sumw, err, under, over = weighted_hist(x[mask], bins, w[mask], flow=True)
                total = sumw.sum()
                h, e = _normalised(sumw, err)
                ax.stairs(
                    h,
                    bins,
                    color=colour,
                    fill=name == "background",
                    alpha=0.35 if name == "background" else 1,
                    label=name,
                )
                if total > 0 and (under or over):
                    notes.append(f"{name[:3]}: underflow {under / total:.1%}, overflow {over / total:.1%}")
            ax.set_ylim(0, ax.get_ylim()[1] * 1.35)  # headroom for the notes and legend
            if any(notes):
                ax.text(0.02, 0.97, "\n".join(notes), transform=ax.transAxes, va="top", fontsize=6)
            ax.axvline(bins[0], color="grey", ls=":", lw=0.8)
            ax.axvline(bins[-1], color="grey", ls=":", lw=0.8)
            ax.set_xlabel(quantity(c), fontsize=8)
            ax.tick_params(labelsize=7)
            if how != "variance" or labelled:
                ax.set_title(f"{how} {score[c]:.3g}", fontsize=7)
        for ax in list(axes.flat)[len(names) :]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize=7, loc="upper right")
        more = f", the {len(chosen)} of {len(columns)} with the largest {how}" if len(columns) > len(chosen) else ""
        fig.suptitle(
            f"input variables (train{sample}, normalised, under/overflow folded into the end bins){more}; page {page}"
            f"/{len(pages)}",
            fontsize=10,
        )
        fig.tight_layout(rect=(0, 0, 1, 0.97 if nrow > 1 else 0.92))
        made.append(_save(fig, out / f"input_variables_{page}.png"))
    return made


def _rows(X, start: int, stop: int, index=None) -> np.ndarray:
    """Rows ``start:stop`` of an array or a DataFrame (of ``index``, the row numbers
    taken, when given), as float64 (a chunk's copy at most)."""
    at = slice(start, stop) if index is None else index[start:stop]
    return np.asarray(X.iloc[at] if hasattr(X, "iloc") else X[at], dtype=np.float64)


def pca_summary(X, max_events: int = 20000, chunk: int = 1 << 15):
    """Explained-variance ratios of the principal components of ``X`` (its
    first ``max_events`` rows, centred) and every row projected on the first two.

    ``X`` (array or DataFrame, shape (n_events, n_features)) is read ``chunk``
    rows at a time; a non-finite value is replaced by its column's mean over
    the first ``max_events`` rows."""
    head = _rows(X, 0, max_events)
    head = np.where(np.isfinite(head), head, np.nan)
    fill = np.nanmean(head, axis=0)
    head = np.where(np.isnan(head), fill, head)
    mu = head.mean(axis=0)
    _, sv, vt = np.linalg.svd(head - mu, full_matrices=False)
    var = sv**2
    evr = var / var.sum() if var.sum() > 0 else var
    pcs = np.empty((len(X), min(2, len(vt))))
    for start in range(0, len(X), chunk):
        part = _rows(X, start, start + chunk)
        pcs[start : start + chunk] = (np.where(np.isfinite(part), part, fill) - mu) @ vt[:2].T
    if pcs.shape[1] < 2:
        pcs = np.column_stack([pcs, np.zeros(len(pcs))])
    return evr, pcs


def pca_figure(X, labels, path, title: str, max_components: int = 30, weights=None) -> str:
    """Explained variance per principal component and cumulated (left), and the
    events on the first two components, per class when ``labels`` are given (right)."""
    plt = _plt()
    evr, pcs = pca_summary(X)
    k = min(len(evr), max_components)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    a1.bar(np.arange(1, k + 1), evr[:k], color="tab:blue", alpha=0.8, label="per component")
    a1.step(np.arange(1, k + 1), np.cumsum(evr)[:k], where="mid", color="black", label="cumulative")
    a1.set_xlabel("principal component")
    a1.set_ylabel("explained variance ratio")
    a1.set_ylim(0, 1.05)
    a1.legend(fontsize=9)
    if len(evr) > k:
        a1.set_title(f"first {k} of {len(evr)} components", fontsize=9)
    w = np.ones(len(pcs)) if weights is None else np.asarray(weights, dtype=np.float64)
    r = [_range(pcs[:, 0]), _range(pcs[:, 1])]
    if labels is not None:
        labels = np.asarray(labels)
        for cls, name, cmap, colour in ((0, "background", "Reds", "tab:red"), (1, "signal", "Blues", "tab:blue")):
            m = labels == cls
            if m.sum() < 2:
                continue
            h, xe, ye = np.histogram2d(pcs[m, 0], pcs[m, 1], bins=40, range=r, weights=w[m])
            a2.contour(0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1]), h.T, levels=5, cmap=cmap)
            a2.plot([], [], color=colour, label=name)
        a2.legend(fontsize=9)
    else:
        a2.hist2d(pcs[:, 0], pcs[:, 1], bins=60, range=r, weights=w, cmap="viridis")
    a2.set_xlabel(f"PC 1 ({evr[0]:.1%})")
    a2.set_ylabel(f"PC 2 ({evr[1]:.1%})" if len(evr) > 1 else "PC 2")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def confusion_matrix(m: dict, path, title: str) -> str:
    """Weighted confusion matrix at the evaluation threshold (fractions per true class)."""
    cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]], dtype=float)
    return _confusion(cm, ["background", "signal"], path, title)


def _confusion(cm, names, path, title: str) -> str:
    """A weighted confusion matrix (rows = true class) as fractions per true class."""
    plt = _plt()
    cm = np.asarray(cm, dtype=float)
    k = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(5.0, 1.1 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.88))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    small = 9 if k <= 4 else 7
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{frac[i, j]:.3f}\n(Σw={cm[i, j]:.4g})",
                ha="center",
                va="center",
                color="white" if frac[i, j] > 0.6 else "black",
                fontsize=small,
            )
    ax.set_xticks(
        range(k), [f"predicted {n}" for n in names], rotation=30 if k > 2 else 0, ha="right" if k > 2 else "center"
    )
    ax.set_yticks(range(k), [f"true {n}" for n in names])
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def multiclass_confusion(confusion: dict, path, title: str, target: str | None = None) -> str:
    """The weighted confusion matrix of a multiclass model; classes named by their target value."""
    name = target or "class"
    return _confusion(confusion["matrix"], [f"{name}={c}" for c in confusion["classes"]], path, title)


def learning_curve(history: dict, path, title: str) -> str | None:
    keys = [k for k in history if k.endswith("loss") and history[k]]
    if not keys:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k in sorted(keys):
        ax.plot(np.arange(1, len(history[k]) + 1), history[k], label=k.replace("_", " "))
    ax.set_xlabel("iteration / epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=9)
    return _save(fig, path)


def validation_curve(trials, path, title: str, objective: str) -> str | None:
    """Objective vs the tuned hyper-parameter, when tuning had one dimension."""
    params = [c for c in trials.columns if c.startswith("param.")]
    done = trials[trials["state"] == "COMPLETE"]
    column = objective if objective in trials.columns else "value"  # older tables: "value"
    if len(params) != 1 or done.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    from pandas.api.types import is_numeric_dtype

    x = done[params[0]]
    if is_numeric_dtype(x.dtype):
        order = np.argsort(x.to_numpy())
        ax.plot(x.to_numpy()[order], done[column].to_numpy()[order], "o-")
    else:
        ax.plot(x.astype(str).to_numpy(), done[column].to_numpy(), "o")
    ax.set_xlabel(params[0].removeprefix("param."))
    ax.set_ylabel(f"{objective} (validation)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def residuals(pred, path, title: str, target: str | None = None) -> str:
    """Residual vs true target (2-D) and the relative residual (1-D); the axes
    span the central 99 % of the residuals so a few outliers do not hide the core."""
    plt = _plt()
    test = split_part(pred, "test")
    t, p = test["target"].to_numpy(), test[SCORE].to_numpy()
    w = test[WEIGHT].to_numpy()
    name = f"true {quantity(target)}"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    r = p - t
    lo, hi = np.nanpercentile(r, [0.5, 99.5]) if len(r) else (-1.0, 1.0)
    tlo, thi = np.nanpercentile(t, [0.5, 99.5]) if len(t) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    if thi <= tlo:
        tlo, thi = tlo - 1, thi + 1
    a1.hist2d(t, r, bins=60, cmap="viridis", weights=w, range=[[tlo, thi], [lo, hi]])
    a1.axhline(0, color="white", lw=1)
    a1.set_xlabel(name)
    a1.set_ylabel(
        quantity(target).replace(target or "target", f"{target or 'target'} residual (prediction − truth)", 1)
    )
    ok = t != 0
    rel = r[ok] / t[ok]
    rlo, rhi = np.nanpercentile(rel, [0.5, 99.5]) if len(rel) else (-1.0, 1.0)
    if rhi <= rlo:
        rlo, rhi = rlo - 1, rhi + 1
    a2.hist(rel, bins=np.linspace(rlo, rhi, 81), weights=w[ok], histtype="step")
    a2.set_xlabel(f"{target or 'target'}: (prediction − truth) / truth")
    a2.set_ylabel("weighted events / bin")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def anomaly_scores(pred, path, title: str) -> str:
    plt = _plt()
    test = split_part(pred, "test")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    hi = np.nanpercentile(test[SCORE], 99.5) if len(test) else 1
    bins = np.linspace(0, hi if hi > 0 else 1, 50)
    for cls, name in ((0, "background (trained on)"), (1, "signal (anomalies)")):
        s = test[test[LABEL] == cls]
        ax.hist(s[SCORE], bins=bins, weights=_hist_weights(s[WEIGHT].to_numpy()), histtype="step", lw=1.5, label=name)
    ax.set_xlabel("anomaly score (reconstruction error)")
    ax.set_ylabel("fraction of events / bin")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=9)
    return _save(fig, path)


def cluster_colours(labels) -> dict:
    """A distinct colour per cluster index (tab10, tab20 beyond ten clusters,
    repeating past twenty); noise (−1) grey."""
    import matplotlib

    ids = [c for c in sorted(np.unique(np.asarray(labels)).tolist()) if c != -1]
    cmap = matplotlib.colormaps["tab10" if len(ids) <= 10 else "tab20"]
    colours = {-1: (0.6, 0.6, 0.6, 1.0)} if np.any(np.asarray(labels) == -1) else {}  # noise drawn first
    colours.update({c: cmap.colors[i % len(cmap.colors)] for i, c in enumerate(ids)})
    return colours


def cluster_scatter(X, labels, path, title: str, max_points: int = 5000) -> str:
    """Events on their first two principal components, coloured by cluster."""
    plt = _plt()
    X = np.asarray(X, dtype=np.float64)
    if len(X) > max_points:
        X, labels = X[:max_points], np.asarray(labels)[:max_points]
    Xc = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    pc = Xc @ vt[:2].T
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    y = pc[:, 1] if pc.shape[1] > 1 else np.zeros(len(pc))
    for cluster, colour in cluster_colours(labels).items():
        m = np.asarray(labels) == cluster
        ax.scatter(pc[m, 0], y[m], s=4, color=colour, label="noise" if cluster == -1 else f"cluster {cluster}")
    ax.legend(fontsize=8, markerscale=3, ncol=1 + len(np.unique(labels)) // 12, loc="best")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def feature_importance(importance: dict, path, title: str, target: str | None = None) -> str | None:
    perm = importance.get("permutation") or {}
    if not perm:
        return None
    plt = _plt()
    names = sorted(perm, key=lambda k: perm[k]["mean"])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.5))
    ax.barh(
        names,
        [perm[n]["mean"] for n in names],
        xerr=[perm[n]["std"] for n in names],
        color="tab:blue",
        alpha=0.8,
        label="permutation (test AUC drop)"
        if importance.get("metric") == "roc_auc"
        else f"permutation ({importance.get('metric')} change)",
    )
    native = importance.get("native") or {}
    if native:
        total = sum(native.values()) or 1.0
        scale = max(perm[n]["mean"] for n in names) or 1.0
        ax.plot([native.get(n, 0) / total * scale for n in names], names, "k|", ms=12, label="native (scaled)")
    metric = importance.get("metric")
    if target and metric in ("mse", "mean_squared_error"):
        unit = UNITS.get(target)
        ax.set_xlabel(f"importance: increase of the MSE of {target}" + (f" [{unit}²]" if unit else ""))
    else:
        ax.set_xlabel("importance" if not metric else f"importance ({metric})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


#: the ROC figures draw at most about 3x this many points of each curve (metrics.roc_curve's
#: max_points): each point left out lies within 1/2000 in both efficiencies of one drawn
ROC_DRAWN_POINTS = 2000


def roc_curves(preds: dict, path_rejection, path_tpr_fpr, title: str = "test split", path_inverse=None) -> list[str]:
    """All classification/anomaly models overlaid, plus the Bayes-optimal curve
    when known; with ``path_inverse`` also the rejection 1/ε_B against ε_S on a
    log axis (TMVA's view of the tight working points)."""
    from .metrics import roc_auc, roc_curve

    plt = _plt()
    f1, a1 = plt.subplots(figsize=(7, 6))
    f2, a2 = plt.subplots(figsize=(7, 6))
    f3, a3 = plt.subplots(figsize=(7, 6))
    bayes_done = False
    colours = plt.get_cmap("tab10").colors
    for i, (name, pred) in enumerate(sorted(preds.items())):
        test = split_part(pred, "test")
        y, w = test[LABEL].to_numpy(), test[WEIGHT].to_numpy()
        # ten colours, then the same colours dash-dotted, then dotted: every curve distinct
        style = {"color": colours[i % 10], "ls": ("-", "-.", ":")[(i // 10) % 3]}
        curves = [(name, test[SCORE].to_numpy(), style)]
        if TRUTH_LLR in test.columns and not bayes_done:
            curves.append(("Bayes optimal (truth LLR)", test[TRUTH_LLR].to_numpy(), {"color": "black", "ls": "--"}))
            bayes_done = True
        for label, score, kw in curves:
            # thinned as it is computed: the whole curve is three float64 arrays of every
            # event (480 MiB for 2·10^7 test events), summary_plots' peak at 10^8 events
            fpr, tpr = roc_curve(y, score, sample_weight=w, max_points=ROC_DRAWN_POINTS)[:2]
            auc = roc_auc(y, score, sample_weight=w)
            a1.plot(tpr, 1 - fpr, label=f"{label} (AUC {auc:.4f})", **kw)
            a2.plot(fpr, tpr, label=f"{label} (AUC {auc:.4f})", **kw)
            ok = fpr > 0
            a3.plot(tpr[ok], 1 / fpr[ok], label=label, **kw)
    a1.set_xlabel(r"signal efficiency $\varepsilon_S$")
    a1.set_ylabel(r"background rejection $1-\varepsilon_B$")
    a2.plot([0, 1], [0, 1], ":", color="grey")
    a2.set_xlabel("background efficiency (false positive rate)")
    a2.set_ylabel("signal efficiency (true positive rate)")
    a3.set_yscale("log")
    a3.set_xlabel(r"signal efficiency $\varepsilon_S$")
    a3.set_ylabel(r"background rejection $1/\varepsilon_B$")
    for ax in (a1, a2, a3):
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower right" if ax is a2 else "lower left" if ax is a1 else "upper right")
    made = [_save(f1, path_rejection), _save(f2, path_tpr_fpr)]
    if path_inverse:
        made.append(_save(f3, path_inverse))
    else:
        plt.close(f3)
    return made


_Z_LABELS = {
    "asimov": "Asimov significance $Z_A$",
    "s_over_sqrt_b": r"$S/\sqrt{B}$",
    "s_over_sqrt_s_plus_b": r"$S/\sqrt{S+B}$",
}


def _scan(test, settings: dict, n_cuts: int = 500) -> dict:
    """The significance scan of a model's test predictions on at most ``n_cuts``
    cuts (score quantiles), weights scaled to expected yields as the evaluate
    step did; the figure is NaN where :func:`~hepml_steps.significance.optimal_cut`
    would not look (under 1 expected or 10 simulated background events)."""
    from .significance import significance_scan

    score = test[SCORE].to_numpy(dtype=np.float64)
    cuts = np.unique(np.quantile(score, np.linspace(0, 1, n_cuts + 1)))[::-1]
    w = test[WEIGHT].to_numpy(dtype=np.float64) * float(settings.get("weight_scale", 1.0))
    fig = settings.get("figure", "asimov")
    unc = float(settings.get("rel_bkg_uncertainty", 0.0))
    scan = significance_scan(test[LABEL].to_numpy(), score, w, cuts=cuts, rel_bkg_uncertainty=unc, figures=(fig,))
    scan["z"] = np.where((scan["b"] >= 1.0) & (scan["n_b"] >= 10), scan[fig], np.nan)
    return scan


def significance_scan(pred, metrics: dict, path, title: str) -> str | None:
    """Signal and background efficiencies and the significance against the score
    cut (test split, expected yields), the optimal cut marked (TMVA's cut
    efficiencies figure)."""
    settings, m = metrics.get("significance"), metrics.get("metrics", {})
    test = split_part(pred, "test")
    if not settings or LABEL not in test.columns or test.empty:
        return None
    scan = _scan(test, settings)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(scan["cut"], scan["eps_s"], color="tab:blue", label=r"signal efficiency $\varepsilon_S$")
    ax.plot(scan["cut"], scan["eps_b"], color="tab:red", label=r"background efficiency $\varepsilon_B$")
    ax.set_xlabel("cut on the score (select score ≥ cut)")
    ax.set_ylabel("efficiency")
    ax.set_ylim(0, 1.05)
    az = ax.twinx()
    figure = settings.get("figure", "asimov")
    az.plot(scan["cut"], scan["z"], color="black", label=_Z_LABELS.get(figure, figure))
    az.set_ylabel(_Z_LABELS.get(figure, figure) + " [σ]")
    if m.get("optimal_cut") is not None and m.get("z_max") is not None:
        az.plot(
            [m["optimal_cut"]],
            [m["z_max"]],
            "*",
            color="gold",
            ms=16,
            mec="black",
            zorder=5,
            label=f"optimum: cut {m['optimal_cut']:.3g}, Z = {m['z_max']:.3g}, "
            f"S = {m['s_at_cut']:.3g}, B = {m['b_at_cut']:.3g}",
        )
        ax.axvline(m["optimal_cut"], color="grey", ls=":")
    lines = ax.get_legend_handles_labels()
    more = az.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center left")
    unc = settings.get("rel_bkg_uncertainty", 0.0)
    ax.set_title(
        f"{title}, test (yields ×{settings.get('weight_scale', 1.0):.3g})" + (f", σ_B/B = {unc:g}" if unc else ""),
        fontsize=10,
    )
    return _save(fig, path)


def significance_vs_efficiency(preds: dict, metrics: dict, path) -> str | None:
    """The significance against the signal efficiency of every model's cut
    (test split, expected yields), each model's optimum marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    colours = plt.get_cmap("tab10").colors
    figures = set()
    drawn = 0
    for i, (name, pred) in enumerate(sorted(preds.items())):
        met = metrics.get(name) or {}
        settings, m = met.get("significance"), met.get("metrics", {})
        test = split_part(pred, "test")
        if not settings or LABEL not in test.columns or test.empty:
            continue
        figures.add(settings.get("figure", "asimov"))
        scan = _scan(test, settings)
        style = {"color": colours[i % 10], "ls": ("-", "-.", ":")[(i // 10) % 3]}
        z = m.get("z_max")
        ax.plot(scan["eps_s"], scan["z"], label=f"{name} (Z_max {z:.3g})" if z is not None else name, **style)
        if z is not None and m.get("sig_eff_at_cut") is not None:
            ax.plot([m["sig_eff_at_cut"]], [z], "*", ms=12, mec="black", color=style["color"])
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    figure = figures.pop() if len(figures) == 1 else "significance"
    ax.set_xlabel(r"signal efficiency $\varepsilon_S$")
    ax.set_ylabel(_Z_LABELS.get(figure, figure) + " [σ]")
    ax.set_xlim(0, 1)
    ax.set_title("significance vs signal efficiency (test, expected yields; stars: optima)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def correlation_matrix(df, columns, path, title: str, max_features: int = 40, chunk: int = 1 << 15, rows=None) -> str:
    """Weighted linear correlation coefficients (in %) of the input features.

    With more than ``max_features`` features only the ``max_features`` most
    correlated ones (largest Σ_j |ρ_ij| over the others) are drawn, so the
    figure's size and drawing time stay bounded (800 features: one 800×800
    matrix computed, 40×40 drawn); the title says so. The covariance is
    summed ``chunk`` events at a time, of the events where the boolean mask
    ``rows`` (shape (n_events,)) is true when given (the same sums as on
    ``df[rows]``, without that copy of the table).
    """
    plt = _plt()
    X = df[list(columns)]  # read chunk by chunk: the float64 copies of one chunk at a time
    index = None if rows is None else np.flatnonzero(rows)
    w = np.clip(df[WEIGHT].to_numpy(dtype=np.float64), 0, None)
    if index is not None:
        w = w[index]
    chunks = range(0, len(w), chunk)
    mu = sum((w[i : i + chunk, None] * _rows(X, i, i + chunk, index)).sum(axis=0) for i in chunks) / w.sum()
    cov = np.zeros((len(mu), len(mu)))
    for i in chunks:
        Xc = _rows(X, i, i + chunk, index) - mu
        cov += (Xc * w[i : i + chunk, None]).T @ Xc
    cov /= w.sum()
    sd = np.sqrt(np.diag(cov))
    sd[sd == 0] = 1
    corr = cov / np.outer(sd, sd)
    columns = list(columns)
    if len(columns) > max_features:
        strength = np.abs(corr).sum(axis=1) - np.abs(np.diag(corr))
        keep = np.sort(np.argsort(-strength, kind="stable")[:max_features])
        title = f"{title}; the {max_features} most correlated of {len(columns)} features"
        corr, columns = corr[np.ix_(keep, keep)], [columns[i] for i in keep]
    n = len(columns)
    fig, ax = plt.subplots(figsize=(0.45 * n + 3, 0.45 * n + 2.5))
    im = ax.imshow(corr * 100, cmap="RdBu_r", vmin=-100, vmax=100)
    for i in range(n):
        for j in range(n):
            if n <= 20:
                ax.text(j, i, f"{corr[i, j] * 100:.0f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(n), columns, rotation=90, fontsize=8)
    ax.set_yticks(range(n), columns, fontsize=8)
    fig.colorbar(im, ax=ax, label="correlation [%]")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when minimising x and maximising y."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _label_points(ax, pts) -> None:
    """Name each (x, y, name) point; neighbours in x alternate above/below so
    close points stay readable."""
    for k, (x, y, n) in enumerate(sorted(pts, key=lambda p: (p[0], p[1]))):
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4 if k % 2 == 0 else -11), fontsize=8)


def _no_minor_labels(axis) -> None:
    from matplotlib.ticker import NullFormatter

    axis.set_minor_formatter(NullFormatter())


def _auc_vs_energy(scored: list[tuple], path) -> str:
    """Test AUC against training and inference J/event, with each Pareto front."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, step, idx in ((axes[0], "training", 2), (axes[1], "inference", 3)):
        pts = [(r[idx].get("j_per_event"), r[1], r[0]) for r in scored if r[idx].get("j_per_event")]
        if not pts:
            continue
        xs, ys, names = zip(*pts)
        ax.scatter(xs, ys, s=40, color="tab:blue", zorder=3)
        _label_points(ax, pts)
        front = pareto_front(list(zip(xs, ys)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="tab:red", label="Pareto front", zorder=2)
        ax.set_xscale("log")
        _no_minor_labels(ax.xaxis)
        ax.set_xlabel(f"{step} energy per event [J/event]")
        ax.set_ylabel("test ROC AUC")
        ax.legend(loc="best", fontsize=9)
        ax.grid(alpha=0.3)
    methods = sorted({str(r[i].get("method")) for r in scored for i in (2, 3) if r[i].get("method")})
    fig.suptitle(f"Separation power vs energy cost ({', '.join(methods)})", fontsize=11)
    return _save(fig, path)


def _energy_vs_throughput(pts: list[tuple], path) -> str:
    """J/event against events/s, training and inference, for every model measured."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 5.2))
    for step, idx, marker in (("training", 1, "o"), ("inference", 2, "s")):
        xy = [
            (p[idx]["events_per_s"], p[idx]["j_per_event"], p[0])
            for p in pts
            if p[idx].get("events_per_s") and p[idx].get("j_per_event")
        ]
        if not xy:
            continue
        ax.scatter([a for a, _, _ in xy], [b for _, b, _ in xy], marker=marker, s=40, label=step)
        _label_points(ax, xy)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _no_minor_labels(ax.xaxis)
    _no_minor_labels(ax.yaxis)
    ax.set_xlabel("throughput [events/s]")
    ax.set_ylabel("energy per event [J/event]")
    ax.set_title("Energy vs throughput across models")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def energy_plots(metrics: list[dict], out_dir: Path) -> list[str]:
    """Test AUC against J/event of training and of inference, with the Pareto
    front across models; and energy per event against throughput.

    The AUC views take the models whose score separates signal from background
    (binary classifiers, anomaly detectors). Returns the paths written."""
    rows = []
    for m in metrics:
        e = (m.get("extra") or {}).get("energy") or {}
        task = hepml_tasks.TASKS.get(m.get("task"))
        auc = (m.get("metrics") or {}).get("roc_auc") if task is not None and task.separates_signal else None
        rows.append((m["model"], auc, e.get("train") or {}, e.get("inference") or {}))
    made = []
    scored = [r for r in rows if r[1] is not None]
    if scored:
        made.append(_auc_vs_energy(scored, out_dir / "energy_auc_vs_j_per_event.png"))
    pts = [(r[0], r[2], r[3]) for r in rows if r[2].get("events_per_s") or r[3].get("events_per_s")]
    if pts:
        made.append(_energy_vs_throughput(pts, out_dir / "energy_vs_throughput.png"))
    return made


# -- steps ---------------------------------------------------------------------
#: most training events the summary's input figures (distributions, correlations, PCA) read
MAX_SUMMARY_EVENTS = 1_000_000
#: salt of the event-id hash choosing that subsample (independent of the split's and the training cap's)
SAMPLE_SALT = 0x9A11


def _test_rows(predictions: str, truth: bool = True):
    """The test rows of a prediction table, only the columns the ROC and significance
    figures draw (``truth_llr`` only with ``truth``), read from the row groups holding
    them (:func:`hepml_steps.evaluate.SplitFrames`).

    Raises
    ------
    DataError
        The file is missing or unreadable, or has no test rows.
    """
    from .evaluate import PREDICTION_COLUMNS, _by_split

    drawn = (SPLIT, LABEL, WEIGHT, SCORE) + ((TRUTH_LLR,) if truth else ())
    return _by_split(predictions, f"{predictions}", {"test": [c for c in PREDICTION_COLUMNS if c not in drawn]})["test"]


def train_sample(path: str, max_events: int = MAX_SUMMARY_EVENTS, batch_size: int = 262_144):
    """The prepared training split's events the input figures draw, and a note for their titles.

    Reads the label, weight and feature columns batch by batch. With at most
    ``max_events`` events, all of them (note ``""``); else the events whose
    hash of ``event_id`` (:func:`hepml_steps.split.uniform_from_id`, salt
    :data:`SAMPLE_SALT`) is below ``max_events / n``: about ``max_events``
    events, the same ones on every run and independent of the events' order
    (note ``", a subsample of <k> of <n> events"``, also logged).

    Returns
    -------
    (DataFrame, str)
        The events (``label`` when labelled, ``weight``, the features), and the note.

    Raises
    ------
    DataError
        The file is missing or unreadable.
    """
    import pyarrow as pa

    from .columns import is_feature
    from .errors import culprit
    from .io import columns_of, parquet_file
    from .split import uniform_from_id

    pf = parquet_file(path)
    names = columns_of(path)
    wanted = [c for c in names if c in (LABEL, WEIGHT) or is_feature(c)]
    n = pf.metadata.num_rows
    if n <= max_events:
        with culprit(path, context="cannot read as parquet"):
            return pf.read(columns=wanted).to_pandas(split_blocks=True, self_destruct=True), ""
    fraction, parts = max_events / n, []
    with culprit(path, context="cannot read as parquet"):
        for batch in pf.iter_batches(batch_size=batch_size, columns=[EVENT_ID, *wanted]):
            keep = uniform_from_id(batch.column(EVENT_ID).to_numpy(zero_copy_only=False), SAMPLE_SALT) < fraction
            parts.append(batch.filter(pa.array(keep)).drop_columns([EVENT_ID]))
    table = pa.Table.from_batches(parts, schema=parts[0].schema) if parts else pf.schema_arrow.empty_table()
    del parts  # the table's only reference: converted column by column, each freed once converted
    note = f", a subsample of {table.num_rows} of {n} events"
    log.info("summary input figures: %s (plots max_events %d)", note[2:], max_events)
    return table.to_pandas(split_blocks=True, self_destruct=True), note


def plot_model(
    model: str,
    predictions: str,
    metrics: str,
    record: str,
    out_dir: str,
    trials: str | None = None,
    importance: str | None = None,
    features_test: str | None = None,
) -> list[str]:
    """All per-model figures that apply to the model's task, into ``out_dir``.

    The task draws its own figures (:meth:`hepml_steps.tasks.Task.model_plots`);
    every model gets its learning curve, validation curve and feature
    importance where those exist. Returns the paths written.
    """
    import pandas as pd

    from .dataset import fitted_events
    from .evaluate import read_predictions
    from .io import read_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    met, rec = read_json(metrics), read_json(record)
    task = hepml_tasks.get(rec["task"])
    capped = bool((rec.get("train_cap") or {}).get("applied"))
    # the columns drawn (split categorical): no figure draws the truth LLR; event ids
    # pick a capped model's fitted events and match test rows to their features
    unused = [TRUTH_LLR] + ([] if capped or task.needs_test_features else [EVENT_ID])
    pred = read_predictions(predictions, f"model '{model}' ({predictions})", exclude=unused)
    if capped:
        # the train histograms show the events the model was fitted on, as its KS test does
        train = pred[pred[SPLIT] == "train"]
        pred = pd.concat([fitted_events(train, rec), pred[pred[SPLIT] != "train"]], ignore_index=True)
    title = f"{model} ({rec['family']})"
    made = task.model_plots(hepml_tasks.Drawn(pred, met, rec, out, title, features_test))
    made.append(learning_curve(rec.get("history") or {}, out / "learning_curve.png", title))
    if trials:
        objective = (rec.get("tuning") or {}).get("objective", "objective")
        made.append(validation_curve(pd.read_csv(trials), out / "validation_curve.png", title, objective))
    if importance:
        made.append(
            feature_importance(
                read_json(importance),
                out / "feature_importance.png",
                title,
                rec.get("target") if rec.get("task") == "regression" else None,
            )
        )
    return [p for p in made if p]


def plot_summary(
    predictions: list[str],
    models: list[str],
    tasks: list[str],
    train_features: str,
    out_dir: str,
    metrics: list[str] | None = None,
    max_input_features: int = 40,
    max_events: int = MAX_SUMMARY_EVENTS,
) -> list[str]:
    """ROC curves of all models whose score separates signal from background
    (classifiers, anomaly detectors), input correlations per class (of all
    events when the inputs are unlabelled), and (given the metrics files) the
    energy views across models.

    The ROC and significance curves read the test rows of each prediction
    table (the columns they draw only); the input figures read at most
    ``max_events`` training events (:func:`train_sample`; the titles say when
    they are a subsample). Returns the paths written."""
    from .columns import is_feature

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    preds = {}
    for m, p in sorted((m, p) for m, p, t in zip(models, predictions, tasks) if hepml_tasks.get(t).separates_signal):
        # the Bayes-optimal curve is drawn once, from the first model (by name) that has the truth LLR
        preds[m] = _test_rows(p, truth=not any(TRUTH_LLR in d.columns for d in preds.values()))
    if preds:
        made += roc_curves(
            preds,
            out / "roc_rejection_vs_efficiency.png",
            out / "roc_tpr_vs_fpr.png",
            path_inverse=out / "roc_inverse_bkg_eff_log.png",
        )
        if metrics:
            from .io import read_json

            docs = {d.get("model"): d for d in (read_json(p) for p in metrics)}
            made.append(significance_vs_efficiency(preds, docs, out / "significance_vs_efficiency.png"))
    # the test rows are drawn: not held while the training sample is (collected now:
    # a frame a figure function has indexed sits in a reference cycle until the next
    # collection, which could come after the sample is read)
    del preds
    gc.collect()
    df, sample = train_sample(train_features, max_events)
    cols = [c for c in df.columns if is_feature(c)]
    if not hepml_tasks.labelled(df):  # unlabelled inputs: one matrix of all events
        classes = [(None, "all", "all events")]
    else:
        classes = [(cls, name, name) for cls, name in ((1, "signal"), (0, "background"))]
    for cls, name, text in classes:
        rows = None if cls is None else (df[LABEL] == cls).to_numpy()  # one class's rows, not a copy of them
        if (len(df) if rows is None else int(rows.sum())) > 1:
            made.append(
                correlation_matrix(
                    df, cols, out / f"correlation_{name}.png", f"input correlations, {text} (train{sample})", rows=rows
                )
            )
        del rows
    if cols and len(df):
        made += input_distributions(df, cols, out, max_features=max_input_features, sample=sample)
    if len(cols) > 1 and len(df) > 1:
        made.append(
            pca_figure(
                df[cols],
                df[LABEL].to_numpy() if hepml_tasks.labelled(df) else None,
                out / "pca_inputs.png",
                f"principal components of the inputs (train{sample})",
                weights=np.clip(df[WEIGHT].to_numpy(dtype=np.float64), 0, None),
            )
        )
    if metrics:
        from .io import read_json

        made += energy_plots([read_json(p) for p in metrics], out)
    return [p for p in made if p]


def main(argv=None) -> int:
    from .io import release_freed_memory

    if argv is None:  # the step's own process (python -m), never a caller's: see io.release_freed_memory
        release_freed_memory(arrow_cpp=True)
    from . import cli

    def build(p):
        sub = p.add_subparsers(dest="what", required=True)
        pm = sub.add_parser("model")
        for a in ("--model", "--predictions", "--metrics", "--record", "--out-dir"):
            pm.add_argument(a, required=True)
        for a in ("--trials", "--importance", "--features-test"):
            pm.add_argument(a)
        ps = sub.add_parser("summary")
        ps.add_argument("--predictions", nargs="+", required=True)
        ps.add_argument("--models", nargs="+", required=True)
        ps.add_argument("--tasks", nargs="+", required=True)
        ps.add_argument("--train-features", required=True)
        ps.add_argument("--out-dir", required=True)
        ps.add_argument("--metrics", nargs="*", help="metrics.json files (energy views)")
        ps.add_argument("--max-input-features", type=int, default=40)
        ps.add_argument(
            "--max-events",
            type=int,
            default=MAX_SUMMARY_EVENTS,
            help="most training events the input figures read (a deterministic subsample by event id beyond)",
        )
        for q in (pm, ps):
            q.add_argument("--formats", nargs="+", default=["png"], help="png, plus e.g. pdf")
            q.add_argument("--units", default="{}", help="JSON {quantity: unit}")

    def call(a):
        import json

        global FORMATS, UNITS
        FORMATS, UNITS = tuple(a.formats), dict(json.loads(a.units) or {})
        if a.what == "model":
            plot_model(a.model, a.predictions, a.metrics, a.record, a.out_dir, a.trials, a.importance, a.features_test)
        else:
            plot_summary(
                a.predictions,
                a.models,
                a.tasks,
                a.train_features,
                a.out_dir,
                a.metrics,
                a.max_input_features,
                a.max_events,
            )

    return cli.run(build, call, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
