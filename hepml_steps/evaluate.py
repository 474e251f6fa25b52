"""Figures of merit of one model, judged once on the test split.

Reads the model's predictions (all three splits) and writes ``metrics.json``::

    {"model", "task", "family", "threshold", "n_events", "sum_weights",
     "metrics": {...}, "overtraining": {...}, "extra": {...}}

Per task (all weighted with the event weights):

- classification: the confusion-matrix figures at ``threshold`` (accuracy,
  error rate, precision, sensitivity, specificity, "ROC", F1, geometric
  mean, weighted tp/fp/tn/fn), the losses, ROC AUC on test (and on train and
  validation, for comparison), signal efficiency at each background
  efficiency, the Bayes-optimal AUC from ``truth_llr`` when known, and the
  train-vs-test KS overtraining test per class;
- multiclass: accuracy and error rate of the most probable class, per-class
  and macro precision, sensitivity, F1 and one-vs-rest ROC AUC
  (``roc_auc`` = the macro mean), cross-entropy, the weighted confusion
  matrix (``confusion``, rows = true class), train/validation accuracy and
  AUC for comparison, and per class the KS test of that class's probability,
  train vs test, on its own events;
- anomaly: the anomaly score as a signal discriminant (AUC, efficiencies),
  plus the KS test on background (the class it was trained on);
- regression: MSE, MAE, RMSE, R², bias and resolutions on test (MSE and R²
  on train for overfitting);
- clustering: number of clusters, noise fraction, silhouette (needs the
  test features), adjusted Rand index and purity against signal/background;
- dimreduction: explained variance ratio and how well the first component
  alone separates signal from background.

Train-split figures and the overtraining test use only the training events the
model was fitted on: with a training cap (``train_cap`` in the record) that is
the same deterministic subsample the training step took.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from . import cli
from . import metrics as M
from .columns import EVENT_ID, LABEL, PROB, SCORE, SPLIT, TRUTH_LLR, WEIGHT
from .errors import DataError
from .io import read_json, read_parquet, write_json

log = logging.getLogger("hepml.evaluate")

#: Record fields copied to metrics.json "extra" (and so to the leaderboard).
EXTRA_KEYS = ("family", "classes", "target", "n_train", "n_validation", "fit_seconds", "fit_cpu_seconds", "device", "threads",
              "train_cap", "tuning", "weighting", "energy", "params")


def _clean(obj):
    """nan/inf -> None, numpy -> Python, recursively (JSON has no nan)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _eff_key(eff: float) -> str:
    return f"sig_eff_at_bkg_{eff:g}"


def _two_classes(part, what):
    y = part[LABEL].to_numpy()
    w = part[WEIGHT].to_numpy(dtype=np.float64)
    for cls, name in ((1, "signal"), (0, "background")):
        if not np.any(y == cls) or w[y == cls].sum() <= 0:
            raise DataError(f"{what}: the test split has no {name} events (with positive weight); "
                            "cannot compute ROC figures")
    return y, w


def _discriminant(m: dict, part, effs, prefix="") -> None:
    y, w = part[LABEL].to_numpy(), part[WEIGHT].to_numpy(dtype=np.float64)
    s = part[SCORE].to_numpy(dtype=np.float64)
    m[prefix + "roc_auc"] = M.roc_auc(y, s, w)
    for e, v in zip(effs, np.atleast_1d(M.signal_efficiency_at(y, s, effs, w))):
        m[prefix + _eff_key(e)] = float(v)


def _bayes(m: dict, test) -> None:
    if TRUTH_LLR in test.columns and test[TRUTH_LLR].notna().all():
        y, w = test[LABEL].to_numpy(), test[WEIGHT].to_numpy(dtype=np.float64)
        m["bayes_auc"] = M.roc_auc(y, test[TRUTH_LLR].to_numpy(), w)
        if "roc_auc" in m:
            m["auc_gap_to_bayes"] = m["bayes_auc"] - m["roc_auc"]


def _ks(by_split, tests, ks_pvalue_min: float) -> dict:
    """Train-vs-test KS test per class: ``tests`` is (name, class column, class
    value, score column) for each class; flagged when a p-value is below the threshold."""
    out = {"ks_pvalue_threshold": ks_pvalue_min}
    tr, te = by_split.get("train"), by_split["test"]
    if tr is None or tr.empty:
        return {**out, "flagged": None, "reason": "no training events in the predictions"}
    ps = []
    for name, column, value, score in tests:
        a, b = tr[tr[column] == value], te[te[column] == value]
        r = M.ks_overtraining(a[score].to_numpy(), b[score].to_numpy(), a[WEIGHT].to_numpy(), b[WEIGHT].to_numpy())
        out[f"ks_statistic_{name}"], out[f"ks_pvalue_{name}"] = r["statistic"], r["pvalue"]
        if not math.isnan(r["pvalue"]):
            ps.append(r["pvalue"])
    out["flagged"] = bool(ps) and min(ps) < ks_pvalue_min
    return out


def fitted_events(train, rec: dict, task: str):
    """The training-split predictions of the events the model was fitted on."""
    cap = rec.get("train_cap") or {}
    if not cap.get("applied"):
        return train
    from .train import cap_index

    pool = train[train[LABEL] == 0] if task == "anomaly" else train
    return pool.iloc[cap_index(pool[EVENT_ID].to_numpy(), int(cap["cap"]))]


def _prob_columns(df, what: str) -> list[str]:
    cols = sorted((c for c in df.columns if c.startswith(PROB)), key=lambda c: int(c[len(PROB):]))
    if not cols or "target" not in df.columns:
        raise DataError(f"{what}: multiclass predictions need 'target' and '{PROB}<i>' columns")
    return cols


def _multiclass(part, cols: list[str]) -> dict:
    return M.multiclass_metrics(part["target"].to_numpy(), part[cols].to_numpy(dtype=np.float64),
                                part[WEIGHT].to_numpy(dtype=np.float64))


def evaluate(predictions: str, out: str, model: str, task: str, threshold: float = 0.5,
             bkg_efficiencies=(0.01, 0.1, 0.3), extra: str | dict | None = None,
             features: str | None = None, ks_pvalue_min: float = 0.01,
             inference: str | dict | None = None) -> dict:
    """Compute the task's figures of merit on the test split; write ``out``.

    ``extra``: the training record (family, timing, tuning, energy);
    ``inference``: the predict step's record (inference energy and throughput).
    """
    what = f"model '{model}' ({predictions})"
    df = read_parquet(predictions)
    missing = [c for c in (EVENT_ID, SPLIT, LABEL, WEIGHT, SCORE) if c not in df.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}")
    rec = dict(read_json(extra) if isinstance(extra, str) else (extra or {}))
    inf = read_json(inference) if isinstance(inference, str) else (inference or {})
    if inf.get("energy"):
        rec["energy"] = {**(rec.get("energy") or {}), **inf["energy"]}
    by_split = {s: g for s, g in df.groupby(SPLIT, observed=True)}
    n_events = {s: int(len(g)) for s, g in by_split.items()}
    if by_split.get("train") is not None:
        # train figures and the overtraining test use the events the model was
        # fitted on: a capped model (kNN, SVM, ...) never saw most of the training split
        by_split["train"] = fitted_events(by_split["train"], rec, task)
    test = by_split.get("test")
    if test is None or test.empty:
        raise DataError(f"{what}: no test events")
    effs = [float(e) for e in bkg_efficiencies]
    m: dict = {}
    overtraining = confusion = None
    if task == "classification":
        y, w = _two_classes(test, what)
        s = test[SCORE].to_numpy(dtype=np.float64)
        m.update(M.threshold_metrics(y, s, threshold, w))
        _discriminant(m, test, effs)
        for name in ("zero_one_loss", "mse", "absolute_loss", "hinge_loss", "cross_entropy"):
            m[name] = getattr(M, name)(y, s, w)
        for sp in ("train", "validation"):
            part = by_split.get(sp)
            if part is not None and part[LABEL].nunique() == 2:
                m[f"roc_auc_{sp}"] = M.roc_auc(part[LABEL], part[SCORE], part[WEIGHT])
        _bayes(m, test)
        overtraining = _ks(by_split, (("signal", LABEL, 1, SCORE), ("background", LABEL, 0, SCORE)), ks_pvalue_min)
    elif task == "multiclass":
        cols = _prob_columns(df, what)
        m.update(_multiclass(test, cols))
        confusion = {"classes": list(rec.get("classes") or range(len(cols))), "matrix": m.pop("confusion")}
        for sp in ("train", "validation"):
            part = by_split.get(sp)
            if part is not None and not part.empty:
                mc = _multiclass(part, cols)
                m[f"accuracy_{sp}"], m[f"roc_auc_{sp}"] = mc["accuracy"], mc["roc_auc"]
        overtraining = _ks(by_split, [(f"class{c}", "target", c, col) for c, col in enumerate(cols)], ks_pvalue_min)
    elif task == "anomaly":
        _two_classes(test, what)
        _discriminant(m, test, effs)
        _bayes(m, test)
        overtraining = _ks(by_split, (("background", LABEL, 0, SCORE),), ks_pvalue_min)
    elif task == "regression":
        if "target" not in df.columns:
            raise DataError(f"{what}: regression predictions have no 'target' column")
        m.update(M.regression_metrics(test["target"], test[SCORE], test[WEIGHT]))
        tr = by_split.get("train")
        if tr is not None and not tr.empty:
            rt = M.regression_metrics(tr["target"], tr[SCORE], tr[WEIGHT])
            m["mse_train"], m["r2_train"] = rt["mse"], rt["r2"]
    elif task == "clustering":
        X = None
        if features:
            feats = (rec or {}).get("features")
            ft = read_parquet(features)
            cols = feats or [c for c in ft.columns if c not in (EVENT_ID, LABEL, WEIGHT, TRUTH_LLR)]
            X = ft.set_index(EVENT_ID).loc[test[EVENT_ID].to_numpy(), cols].to_numpy(dtype=np.float64)
        labels = test[SCORE].to_numpy()
        if len(labels) < 2:
            raise DataError(f"{what}: {len(labels)} test events are too few to evaluate clustering")
        m.update(M.clustering_metrics(X, labels, y_true=test[LABEL].to_numpy()))
    elif task == "dimreduction":
        evr = ((rec or {}).get("info") or {}).get("explained_variance_ratio")
        if evr:
            for i, v in enumerate(evr, 1):
                m[f"explained_variance_ratio_pc{i}"] = float(v)
            m["explained_variance_ratio_total"] = float(sum(evr))
        if test[LABEL].nunique() == 2:
            auc = M.roc_auc(test[LABEL], test[SCORE], test[WEIGHT])
            m["pc1_separation_auc"] = max(auc, 1.0 - auc)
    else:
        raise DataError(f"{what}: unknown task '{task}'")
    if overtraining is not None:
        for k, v in overtraining.items():
            if k.startswith("ks_"):
                m[k] = v
    result = _clean({
        "model": model, "task": task, "family": rec.get("family"), "threshold": threshold,
        "n_events": n_events,
        "sum_weights_test": float(test[WEIGHT].sum()),
        "metrics": m, "overtraining": overtraining,
        **({"confusion": confusion} if task == "multiclass" else {}),
        "extra": {k: rec[k] for k in EXTRA_KEYS if k in rec},
    })
    write_json(out, result)
    if overtraining and overtraining.get("flagged"):
        log.warning("%s: possible overtraining: KS p-value below %g (train vs test scores)", model, ks_pvalue_min)
    log.info("%s: %s", model, {k: v for k, v in result["metrics"].items() if k in ("roc_auc", "bayes_auc", "r2",
                                                                                   "silhouette", "resolution_68")})
    return result


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--predictions", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--model", required=True)
        p.add_argument("--task", default="classification")
        p.add_argument("--threshold", type=float, default=0.5)
        p.add_argument("--bkg-efficiencies", default="0.01,0.1,0.3", help="comma-separated")
        p.add_argument("--extra", help="the model's training record (JSON)")
        p.add_argument("--features", help="prepared test features (clustering silhouette)")
        p.add_argument("--inference", help="the predict step's record (JSON)")
        p.add_argument("--ks-pvalue-min", type=float, default=0.01,
                       help="flag overtraining when a train-vs-test KS p-value is below this")

    return cli.run(build, lambda a: evaluate(
        a.predictions, a.out, a.model, a.task, a.threshold,
        [float(x) for x in a.bkg_efficiencies.split(",") if x.strip()], a.extra, a.features,
        a.ks_pvalue_min, a.inference), argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
