"""Hyper-parameter tuning with Optuna, on the validation split only.

For each model with tuning enabled, the ``tune`` rule runs a seeded Optuna
study whose objective is a metric computed on the **validation** split (or,
with ``cv_folds: k``, the mean over k folds of train+validation). The test
split is never an input of this step: the rule does not list it, the function
takes no test path, and the tuning record lists every input file with its
SHA-256, so anyone can check what tuning read.

- Search space: the family's ``search_space`` overlaid with the model's
  ``tune.search_space``; unknown parameters, empty or inverted ranges and
  unknown objectives are errors naming the culprit.
- The config's own params are enqueued as trial 0, so the record shows the
  objective before and after tuning on the same validation data.
- Iterative families (XGBoost, MLP) report their validation loss every
  iteration and unpromising trials are pruned (median rule). When the
  objective is maximised, the negated loss is reported so the pruner compares
  in the right direction.
- A trial that crashes is recorded as failed (with the error) and the study
  goes on; the best *finished* trial wins. If every trial fails, the step
  fails naming the family and the first error.
- Budget: ``n_trials`` and/or ``timeout`` seconds (with a timeout the number
  of trials, and so the result, can vary between runs).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from . import cli, registry
from .columns import EVENT_ID
from .errors import ConfigError, FamilyError, HepmlError
from .io import atomic_path, write_json
from .train import fit_weights, load_split, training_classes

log = logging.getLogger("hepml.tune")

MAXIMIZE = {"roc_auc", "accuracy", "precision", "sensitivity", "specificity", "roc_combined", "f1",
            "geometric_mean", "r2", "silhouette", "adjusted_rand", "f1_macro"}
MINIMIZE = {"error_rate", "zero_one_loss", "mse", "mae", "rmse", "absolute_loss", "hinge_loss",
            "cross_entropy", "resolution"}
TASK_OBJECTIVES = {
    "classification": {"roc_auc", "accuracy", "precision", "sensitivity", "specificity", "roc_combined",
                       "f1", "geometric_mean", "error_rate", "zero_one_loss", "mse", "absolute_loss",
                       "hinge_loss", "cross_entropy"},
    "multiclass": {"roc_auc", "accuracy", "error_rate", "f1_macro", "cross_entropy"},
    "anomaly": {"roc_auc"},
    "regression": {"mse", "mae", "rmse", "r2", "resolution"},
    "clustering": {"silhouette", "adjusted_rand"},
}
DEFAULT_OBJECTIVE = {"classification": "roc_auc", "multiclass": "roc_auc", "anomaly": "roc_auc",
                     "regression": "mse",
                     "clustering": "silhouette"}


def direction(objective: str) -> str:
    if objective in MAXIMIZE or objective.startswith("sig_eff_at_bkg_"):
        return "maximize"
    return "minimize"


def check_objective(objective: str, task: str, what: str) -> str:
    allowed = TASK_OBJECTIVES.get(task)
    if allowed is None:
        raise ConfigError(f"{what}: tuning is not available for task '{task}'")
    if objective in allowed:
        return objective
    if task == "classification" and objective.startswith("sig_eff_at_bkg_"):
        try:
            eff = float(objective.rsplit("_", 1)[1])
        except ValueError:
            eff = -1.0
        if 0 < eff < 1:
            return objective
    raise ConfigError(f"{what}: unknown tuning objective '{objective}' for task '{task}'; "
                      f"choose one of {sorted(allowed) + (['sig_eff_at_bkg_<eff>'] if task == 'classification' else [])}")


def objective_value(objective: str, task: str, y, score, w, X=None) -> float:
    """The objective metric for one set of validation predictions."""
    from . import metrics as M

    if task in ("classification", "anomaly"):
        if objective == "roc_auc":
            return float(M.roc_auc(y, score, sample_weight=w))
        if objective.startswith("sig_eff_at_bkg_"):
            eff = float(objective.rsplit("_", 1)[1])
            return float(np.atleast_1d(M.signal_efficiency_at(y, score, eff, sample_weight=w))[0])
        losses = {"zero_one_loss": M.zero_one_loss, "mse": M.mse, "absolute_loss": M.absolute_loss,
                  "hinge_loss": M.hinge_loss, "cross_entropy": M.cross_entropy}
        if objective in losses:
            return float(losses[objective](y, score, sample_weight=w))
        return float(M.threshold_metrics(y, score, 0.5, sample_weight=w)[objective])
    if task == "multiclass":  # roc_auc: the macro one-vs-rest AUC
        return float(M.multiclass_metrics(y, score, sample_weight=w)[objective])
    if task == "regression":
        return float(M.regression_metrics(y, score, sample_weight=w)[objective])
    if task == "clustering":
        return float(M.clustering_metrics(X, score, y_true=y)[objective])
    raise ConfigError(f"tuning is not available for task '{task}'")


def resolve_space(cls, overrides: dict | None, what: str) -> dict:
    """The family's default search space overlaid with the config's, validated."""
    space = {k: dict(v) for k, v in cls.search_space.items()}
    for name, spec in (overrides or {}).items():
        if name not in cls.default_params:
            raise FamilyError(f"{what}: unknown hyper-parameter '{name}' in tune.search_space for family "
                              f"'{cls.name}'; known: {sorted(cls.default_params)}")
        space[name] = dict(spec)
    if not space:
        raise ConfigError(f"{what}: family '{cls.name}' has no default search space; give tune.search_space")
    for name, spec in space.items():
        kind = spec.get("type")
        where = f"{what}: tune.search_space.{name}"
        if kind in ("int", "float"):
            if "low" not in spec or "high" not in spec:
                raise ConfigError(f"{where}: needs 'low' and 'high'")
            if not spec["low"] < spec["high"]:
                raise ConfigError(f"{where}: empty or inverted range low={spec['low']} >= high={spec['high']}")
            if spec.get("log") and spec["low"] <= 0:
                raise ConfigError(f"{where}: a log range needs low > 0 (got {spec['low']})")
        elif kind == "categorical":
            if not spec.get("choices"):
                raise ConfigError(f"{where}: 'choices' must be a non-empty list")
        else:
            raise ConfigError(f"{where}: type must be int, float or categorical (got {kind!r})")
    return space


def _in_space(value, spec: dict) -> bool:
    if spec["type"] == "categorical":
        return json.dumps(value) in [json.dumps(c) for c in spec["choices"]]
    try:
        return spec["low"] <= value <= spec["high"]
    except TypeError:
        return False


def suggest(trial, space: dict) -> dict:
    params = {}
    for name, spec in space.items():
        if spec["type"] == "int":
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        elif spec["type"] == "float":
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                               log=bool(spec.get("log")))
        else:  # lists (e.g. hidden_layers) are not hashable for Optuna: offer them as JSON text
            choices = [json.dumps(c) for c in spec["choices"]]
            params[name] = json.loads(trial.suggest_categorical(name, choices))
    return params


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _folds(event_id: np.ndarray, k: int) -> np.ndarray:
    from .split import uniform_from_id

    return np.minimum((uniform_from_id(event_id, salt=0xF01D) * k).astype(int), k - 1)


def tune(train_path: str, validation_path: str, model: str, spec: dict, out: str, trials_out: str,
         seed: int = 42, threads: int = 1, raw: dict | None = None, energy: dict | None = None) -> dict:
    """Run the study for ``model`` and write the best params (``out``) and the trials table.

    The whole study is metered (``energy`` settings as in :func:`.train.train`);
    the record's ``energy`` counts the training events of every trial run."""
    import optuna

    from .energy import step_meter

    raw = raw or {}
    what = f"model '{model}'"
    task = spec.get("task", "classification")
    cfg = dict(spec.get("tune") or {})
    cls = registry.get(spec["family"])
    objective_name = check_objective(cfg.get("objective") or DEFAULT_OBJECTIVE.get(task, ""), task, what)
    space = resolve_space(cls, cfg.get("search_space"), what)
    base_params = cls.resolve_params(spec.get("params") or {})
    n_trials, timeout = cfg.get("n_trials", 20), cfg.get("timeout")
    cv = int(cfg.get("cv_folds") or 0)
    weighting = spec.get("weighting", "balanced")
    cap = spec.get("max_train_events", cls.max_train_events)
    device = registry.requested_device(spec)

    classes = training_classes(train_path, spec, what, raw.get("train")) if task == "multiclass" else None
    X, y, w, df, cols, _ = load_split(train_path, spec, what, raw.get("train"), cap, classes)
    Xv, yv, wv, dfv, _, _ = load_split(validation_path, spec, what + " (validation)", raw.get("validation"),
                                       classes=classes)
    if cv:
        if cv < 2:
            raise ConfigError(f"{what}: tune.cv_folds must be >= 2 (got {cv})")
        Xa, wa = np.concatenate([X, Xv]), np.concatenate([w, wv])
        ya = None if y is None else np.concatenate([y, yv])
        fold = _folds(np.concatenate([df[EVENT_ID].to_numpy(), dfv[EVENT_ID].to_numpy()]), cv)
        splits = [(fold != i, fold == i) for i in range(cv)]
    direction_ = direction(objective_name)
    sign = 1.0 if direction_ == "maximize" else -1.0
    # optional second objective: training energy per event (minimised); the
    # study then returns the Pareto set of (objective, J/event)
    multi = bool(cfg.get("energy_objective"))
    errors: list[str] = []

    def fit_eval(params, Xt, yt, wt, Xe, ye, we, trial=None):
        fam = cls(task=task, params=params, seed=seed, n_threads=threads, device=device)
        if classes is not None:
            fam.n_classes = len(classes)  # a CV fold may lack a class; the outputs keep K columns
        if trial is not None and cls.iterative and not cv:
            def report(step, values):
                trial.report(-sign * values["validation_loss"], step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            fam.set_epoch_callback(report)
        fam.fit(Xt, yt, sample_weight=fit_weights(wt, yt, weighting, task), X_val=Xe, y_val=ye,
                w_val=fit_weights(we, ye, weighting, task))
        # the objective uses the event weights as they are (physics weights)
        return objective_value(objective_name, task, ye, fam.predict_score(Xe), we, Xe)

    def objective(trial):
        params = {**base_params, **suggest(trial, space)}
        t0 = time.perf_counter()
        trial_meter = step_meter(energy, device, cls.gpu_capable)
        try:
            with trial_meter:
                if cv:
                    vals = [fit_eval(params, Xa[tr], None if ya is None else ya[tr], wa[tr], Xa[te],
                                     None if ya is None else ya[te], wa[te]) for tr, te in splits]
                    value = float(np.mean(vals))
                    trial.set_user_attr("fold_values", vals)
                else:
                    value = fit_eval(params, X, y, w, Xv, yv, wv, None if multi else trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # recorded as a failed trial; the study goes on
            msg = f"{type(exc).__name__}: {exc}"
            errors.append(msg)
            trial.set_user_attr("error", msg[:2000])
            log.warning("%s: trial %d failed: %s", what, trial.number, msg)
            raise
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - t0)
        if not math.isfinite(value):
            raise HepmlError(f"objective {objective_name} is not finite ({value})")
        n_fit = sum(int(tr.sum()) for tr, _ in splits) if cv else len(X)
        trial_meter.set_events(n_fit)
        jpe = trial_meter.record["j_per_event"]
        trial.set_user_attr("train_j_per_event", jpe)
        trial.set_user_attr("energy_method", trial_meter.record["method"])
        log.info("%s: trial %d/%d %s=%.6g in %.1f s, params %s", what, trial.number + 1, n_trials, objective_name,
                 value, time.perf_counter() - t0, params)
        return (value, jpe) if multi else value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3) \
        if cfg.get("pruning", True) and cls.iterative and not cv and not multi else optuna.pruners.NopPruner()
    study = optuna.create_study(directions=[direction_, "minimize"] if multi else [direction_],
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner, study_name=model)
    # trial 0 = the config's params (those of them that lie inside the search space)
    study.enqueue_trial({k: (json.dumps(base_params[k]) if space[k]["type"] == "categorical" else base_params[k])
                         for k in space if _in_space(base_params[k], space[k])}, skip_if_exists=True)
    meter = step_meter(energy, device, cls.gpu_capable)
    t0 = time.perf_counter()
    with meter:
        study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(Exception,))
    wall = time.perf_counter() - t0
    fits_per_trial = cv if cv else 1
    meter.set_events(len(study.trials) * fits_per_trial * (len(Xa) * (cv - 1) // cv if cv else len(X)))
    states = optuna.trial.TrialState
    complete = [t for t in study.trials if t.state == states.COMPLETE]
    if not complete:
        raise FamilyError(f"{what}: every tuning trial of family '{cls.name}' failed; first error: "
                          f"{errors[0] if errors else 'none recorded'}")
    pareto = None
    if multi:  # the Pareto set of (objective, J/event); the final model takes its best objective
        front = study.best_trials
        best = (max if direction_ == "maximize" else min)(front, key=lambda t: t.values[0])
        pareto = [{"number": t.number, "value": t.values[0], "train_j_per_event": t.values[1],
                   "params": t.params} for t in sorted(front, key=lambda t: t.values[1])]
    else:
        best = study.best_trial
    best_params = {**base_params, **{k: (json.loads(v) if space[k]["type"] == "categorical" else v)
                                     for k, v in best.params.items()}}
    first = study.trials[0]
    rows = []
    for t in study.trials:
        row = {"number": t.number, "state": t.state.name, "value": t.values[0] if t.values else None,
               "seconds": t.user_attrs.get("seconds"), "train_j_per_event": t.user_attrs.get("train_j_per_event"),
               "pareto": bool(pareto) and any(p["number"] == t.number for p in pareto),
               "error": t.user_attrs.get("error", "")}
        row.update({f"param.{k}": v for k, v in t.params.items()})
        rows.append(row)
    import pandas as pd

    with atomic_path(trials_out) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    inputs = [p for p in (train_path, validation_path, raw.get("train"), raw.get("validation")) if p]
    record = {
        "model": model, "family": cls.name, "task": task, "objective": objective_name,
        "direction": direction_, "split": f"{cv}-fold CV on train+validation" if cv else "validation",
        "best_params": best_params, "best_value": best.values[0], "best_trial": best.number,
        "baseline_value": first.values[0] if first.state == states.COMPLETE else None,
        "energy_objective": multi, "pareto": pareto,
        "n_trials": len(study.trials), "n_complete": len(complete),
        "n_pruned": sum(t.state == states.PRUNED for t in study.trials),
        "n_failed": sum(t.state == states.FAIL for t in study.trials),
        "budget": {"n_trials": n_trials, "timeout": timeout}, "wall_seconds": wall,
        "search_space": space, "seed": seed,
        "inputs": {p: _sha256(p) for p in inputs},
        "energy": meter.record,
    }
    write_json(out, record)
    log.info("%s: %s %s -> %s after %d trials (%.1f s)", what, objective_name, record["baseline_value"],
             best.values[0], len(study.trials), wall)
    return record


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--train", required=True)
        p.add_argument("--validation", required=True)
        p.add_argument("--raw-train")
        p.add_argument("--raw-validation")
        p.add_argument("--model", required=True)
        p.add_argument("--spec", type=cli.json_arg, required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--trials", required=True, help="trials table (CSV)")
        p.add_argument("--seed", type=int, default=42)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--energy", type=cli.json_arg, default={}, help="energy settings (config 'energy') as JSON")

    return cli.run(build, lambda a: tune(a.train, a.validation, a.model, a.spec, a.out, a.trials, a.seed,
                                         a.threads, {"train": a.raw_train, "validation": a.raw_validation}, a.energy),
                   argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
