"""All models side by side: a CSV with every figure of merit, and a Markdown
table per task for people (ranked as TMVA does, by ROC integral for
classifiers; by MSE for regression; by silhouette for clustering).

Beside the metrics, each row carries the cost of the model: training time,
the tuning budget used (trials, wall time) and, when measured, the energy
of training and inference (J, J/event, events/s, with the method).
"""
from __future__ import annotations

import math

from . import cli
from .errors import DataError
from .io import atomic_path, read_json

#: Markdown columns per task: (column, header, format).
_MD = {
    "classification": [
        ("roc_auc", "test AUC", ".4f"), ("bayes_auc", "Bayes-optimal AUC", ".4f"),
        ("roc_auc_train", "train AUC", ".4f"), ("sig_eff_at_bkg_0.1", "ε_S @ ε_B=0.1", ".3f"),
        ("sig_eff_at_bkg_0.01", "ε_S @ ε_B=0.01", ".3f"), ("accuracy", "accuracy", ".3f"),
        ("roc_combined", "\"ROC\"", ".3f"), ("f1", "F1", ".3f"),
        ("ks_pvalue_signal", "KS p (S)", ".3g"), ("ks_pvalue_background", "KS p (B)", ".3g"),
        ("overtrained", "overtrained?", ""),
    ],
    "multiclass": [
        ("n_classes", "classes", ""), ("roc_auc", "test AUC (macro, one-vs-rest)", ".4f"),
        ("accuracy", "accuracy", ".4f"), ("accuracy_train", "train accuracy", ".4f"),
        ("f1_macro", "F1 (macro)", ".3f"), ("cross_entropy", "cross-entropy", ".4g"),
        ("overtrained", "overtrained?", ""),
    ],
    "anomaly": [
        ("roc_auc", "test AUC", ".4f"), ("bayes_auc", "Bayes-optimal AUC", ".4f"),
        ("sig_eff_at_bkg_0.1", "ε_S @ ε_B=0.1", ".3f"), ("ks_pvalue_background", "KS p (B)", ".3g"),
    ],
    "regression": [
        ("mse", "MSE", ".4g"), ("mae", "MAE", ".4g"), ("r2", "R²", ".4f"), ("bias", "bias", ".3g"),
        ("resolution_68", "resolution (68 %)", ".4g"), ("relative_resolution_68", "rel. resolution", ".4f"),
        ("r2_train", "train R²", ".4f"),
    ],
    "clustering": [
        ("n_clusters", "clusters", ""), ("silhouette", "silhouette", ".3f"),
        ("adjusted_rand", "adjusted Rand", ".3f"), ("purity", "purity", ".3f"),
        ("noise_fraction", "noise", ".3f"),
    ],
    "dimreduction": [
        ("explained_variance_ratio_total", "explained variance", ".3f"),
        ("pc1_separation_auc", "PC1 S/B AUC", ".3f"),
    ],
}
_COST = [("fit_seconds", "train s", ".1f"), ("tuning_trials", "tuning trials", ""),
         ("tuning_seconds", "tuning s", ".1f"), ("train_j_per_event", "train J/event", ".3g"),
         ("inference_j_per_event", "inference J/event", ".3g"),
         ("inference_events_per_s", "inference events/s", ".3g")]
_RANK = {"classification": ("roc_auc", True), "multiclass": ("roc_auc", True), "anomaly": ("roc_auc", True), "regression": ("mse", False),
         "clustering": ("silhouette", True), "dimreduction": ("explained_variance_ratio_total", True)}
_TASK_TITLES = {"classification": "Classification (signal vs background)",
                "multiclass": "Multiclass classification", "anomaly": "Anomaly detection",
                "regression": "Regression", "clustering": "Clustering",
                "dimreduction": "Dimensionality reduction"}


def row(met: dict) -> dict:
    """One flat leaderboard row from a metrics.json document."""
    extra = met.get("extra") or {}
    r = {"model": met["model"], "family": met.get("family") or extra.get("family"), "task": met["task"]}
    r.update(met.get("metrics") or {})
    ot = met.get("overtraining") or {}
    if ot.get("flagged") is not None:
        r["overtrained"] = "yes" if ot["flagged"] else "no"
    r["n_train"] = extra.get("n_train")
    r["fit_seconds"] = extra.get("fit_seconds")
    tuning = extra.get("tuning") or {}
    if tuning:
        r["tuning_trials"] = tuning.get("n_trials")
        r["tuning_seconds"] = tuning.get("wall_seconds")
        r["tuning_objective"] = tuning.get("objective")
        r["tuning_baseline"] = tuning.get("baseline_value")
        r["tuning_best"] = tuning.get("best_value")
    for step, e in ((extra.get("energy") or {}).items()):
        for k in ("energy_j", "j_per_event", "events_per_s", "wall_s", "cpu_s", "peak_rss_mib", "co2_g",
                  "method", "device"):
            if e.get(k) is not None:
                r[f"{step}_{k}"] = e[k]
    return r


def _fmt(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if fmt and isinstance(v, (int, float)):
        return format(v, fmt)
    return str(v)


def _ranked(rows: list[dict], task: str) -> list[dict]:
    key, desc = _RANK[task]
    def sort_key(r):
        v = r.get(key)
        return (v is None, -(v or 0) if desc else (v or 0))
    return sorted(rows, key=sort_key)


def markdown(rows: list[dict]) -> str:
    lines = ["# Leaderboard", ""]
    bayes = [r["bayes_auc"] for r in rows if r.get("bayes_auc") is not None]
    if bayes:
        lines += [f"Bayes-optimal AUC on the test split (exact likelihood ratio of the toy): **{bayes[0]:.4f}**. "
                  "No classifier can beat it on average; the gap is what a model leaves on the table.", ""]
    for task in _MD:
        rs = [r for r in rows if r["task"] == task]
        if not rs:
            continue
        cols = [c for c in _MD[task] + _COST if any(r.get(c[0]) is not None for r in rs)]
        lines += [f"## {_TASK_TITLES[task]}", "",
                  "| rank | model | family | " + " | ".join(h for _, h, _ in cols) + " |",
                  "|---:|---|---|" + "---:|" * len(cols)]
        for i, r in enumerate(_ranked(rs, task), 1):
            lines.append(f"| {i} | {r['model']} | {r['family']} | "
                         + " | ".join(_fmt(r.get(c), f) for c, _, f in cols) + " |")
        lines.append("")
    methods = sorted({str(v) for r in rows for k, v in r.items() if k.endswith("_method")})
    if methods:
        lines += [f"Energy method(s): {', '.join(methods)} (see each model's energy record).", ""]
    return "\n".join(lines)


def leaderboard(metrics_files: list[str], out_csv: str, out_md: str) -> list[dict]:
    import pandas as pd

    if not metrics_files:
        raise DataError("leaderboard: no metrics files given")
    rows = []
    for path in metrics_files:
        met = read_json(path)
        if "model" not in met or "task" not in met:
            raise DataError(f"leaderboard: {path} is not a metrics file (no 'model'/'task')")
        rows.append(row(met))
    ordered = []
    for task in _MD:
        ordered += _ranked([r for r in rows if r["task"] == task], task)
    ordered += [r for r in rows if r["task"] not in _MD]
    df = pd.DataFrame(ordered)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(out_md) as tmp:
        tmp.write_text(markdown(ordered))
    return ordered


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--metrics", nargs="+", required=True)
        p.add_argument("--csv", required=True)
        p.add_argument("--md", required=True)

    return cli.run(build, lambda a: leaderboard(a.metrics, a.csv, a.md), argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
