"""Figures of merit of one model, judged once on the test split.

Reads the model's predictions (all three splits) and writes ``metrics.json``::

    {"model", "task", "family", "threshold", "n_events", "sum_weights",
     "metrics": {...}, "overtraining": {...}, "extra": {...}}

The figures are the task's (:meth:`hepml_steps.tasks.Task.figures`); per
task (all weighted with the event weights):

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

With unlabelled inputs (no ``label`` column; only tasks that need no labels
run) the figures against the labels (clustering's adjusted Rand index and
purity, the first component's separation) are left out.

Train-split figures and the overtraining test use only the training events the
model was fitted on: with a training cap (``train_cap`` in the record) that is
the same deterministic subsample the training step took.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from . import cli, tasks
from .columns import EVENT_ID, SCORE, SPLIT, WEIGHT
from .dataset import fitted_events
from .errors import DataError
from .io import read_json, read_parquet, write_json

log = logging.getLogger("hepml.evaluate")

#: Record fields copied to metrics.json "extra" (and so to the leaderboard).
EXTRA_KEYS = ("family", "classes", "target", "n_train", "n_validation", "fit_seconds", "fit_cpu_seconds", "device", "threads",
              "train_cap", "tuning", "weighting", "energy", "params", "leakage")


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


def _records(extra, inference) -> dict:
    """The training record, with the predict step's inference energy merged into ``energy``."""
    rec = dict(read_json(extra) if isinstance(extra, str) else (extra or {}))
    inf = read_json(inference) if isinstance(inference, str) else (inference or {})
    if inf.get("energy"):
        rec["energy"] = {**(rec.get("energy") or {}), **inf["energy"]}
    return rec


def _by_split(predictions: str, what: str) -> dict:
    """Prediction rows per split; ``train`` keeps the events the model was fitted on.

    Raises
    ------
    DataError
        A canonical column is missing, or there are no test events.
    """
    df = read_parquet(predictions)
    missing = [c for c in (EVENT_ID, SPLIT, WEIGHT, SCORE) if c not in df.columns]  # label: when labelled
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}")
    by_split = {s: g for s, g in df.groupby(SPLIT, observed=True)}
    if by_split.get("test") is None or by_split["test"].empty:
        raise DataError(f"{what}: no test events")
    return by_split


def evaluate(predictions: str, out: str, model: str, task: str, threshold: float = 0.5,
             bkg_efficiencies=(0.01, 0.1, 0.3), extra: str | dict | None = None,
             features: str | None = None, ks_pvalue_min: float = 0.01,
             inference: str | dict | None = None) -> dict:
    """Compute the task's figures of merit on the test split; write ``out``.

    Parameters
    ----------
    predictions : str
        The model's prediction table (all three splits).
    out : str
        Where to write metrics.json.
    model, task : str
        The model's name and task.
    threshold : float
        Score threshold of the confusion-matrix figures.
    bkg_efficiencies : sequence of float
        Background efficiencies at which the signal efficiency is reported.
    extra : str or dict, optional
        The training record (family, timing, tuning, energy).
    features : str, optional
        The prepared test features (clustering).
    ks_pvalue_min : float
        Flag overtraining when a train-vs-test KS p-value is below this.
    inference : str or dict, optional
        The predict step's record (inference energy and throughput).

    Returns
    -------
    dict
        The metrics.json document.

    Raises
    ------
    ConfigError
        An unknown task.
    DataError
        Missing columns or events the task's figures need.
    """
    kind = tasks.get(task)
    what = f"model '{model}' ({predictions})"
    rec = _records(extra, inference)
    by_split = _by_split(predictions, what)
    n_events = {s: int(len(g)) for s, g in by_split.items()}
    if by_split.get("train") is not None:
        # train figures and the overtraining test use the events the model was
        # fitted on: a capped model (kNN, SVM, ...) never saw most of the training split
        by_split["train"] = fitted_events(by_split["train"], {**rec, "task": kind.name})
    judged = tasks.Judged(by_split, rec, what, threshold, [float(e) for e in bkg_efficiencies], ks_pvalue_min,
                          features)
    fig = kind.figures(judged)
    m, overtraining = fig.metrics, fig.overtraining
    for k, v in (overtraining or {}).items():
        if k.startswith("ks_"):
            m[k] = v
    result = _clean({
        "model": model, "task": kind.name, "family": rec.get("family"), "threshold": threshold,
        "n_events": n_events, "sum_weights_test": float(judged.test[WEIGHT].sum()),
        "metrics": m, "overtraining": overtraining, **fig.document,
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
        p.add_argument("--predictions", required=True, help="the model's prediction table")
        p.add_argument("--out", required=True, help="metrics.json to write")
        p.add_argument("--model", required=True, help="the model's name")
        p.add_argument("--task", default=tasks.DEFAULT, help="the model's task")
        p.add_argument("--threshold", type=float, default=0.5, help="score threshold of the confusion matrix")
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
