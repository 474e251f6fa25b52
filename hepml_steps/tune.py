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
- Resumable: the study is stored as it runs, in an Optuna journal file
  (:class:`optuna.storages.JournalStorage` over a
  :class:`~optuna.storages.journal.JournalFileBackend`,
  ``results/tuning/<model>.journal`` beside the record). A tune job that is
  killed (out of time on a cluster, a crash) and rerun continues the same
  study: the trials already finished (complete, pruned or failed) count
  toward ``n_trials``, and only the rest are run; a trial that was running
  when the job died is marked failed ("interrupted") and not counted. The
  study's name holds a hash of everything that defines it (objective, search
  space, the config's params, seed, CV folds, pruning, the SHA-256 of both
  inputs), so a changed config or changed data starts a new study in the
  same journal instead of mixing trials. ``timeout`` bounds each run of the
  job, not the study's total time. A resumed study draws its later trials
  from the sampler re-seeded on the finished trials, so it need not repeat
  the trials an uninterrupted run would have drawn. Delete the journal to
  start afresh.
- The trials table names the objective's column after it (e.g. ``roc_auc``),
  and a pruned trial's ``state`` is ``PRUNED`` (a crashed one ``FAIL``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cli, dataset, registry, tasks
from .errors import ConfigError, FamilyError, HepmlError
from .io import atomic_path, write_json

log = logging.getLogger("hepml.tune")


def check_objective(objective: str, task: str, what: str) -> str:
    """``objective`` if task ``task`` accepts it (:meth:`hepml_steps.tasks.Task.check_objective`).

    Raises
    ------
    ConfigError
        The task cannot be tuned or does not know ``objective``.
    """
    return tasks.get(task).check_objective(objective, what)


def resolve_space(cls, overrides: dict | None, what: str) -> dict:
    """The family's default search space overlaid with the config's, validated."""
    space = {k: dict(v) for k, v in cls.search_space.items()}
    for name, spec in (overrides or {}).items():
        if name not in cls.default_params:
            raise FamilyError(
                f"{what}: unknown hyper-parameter '{name}' in tune.search_space for family "
                f"'{cls.name}'; known: {sorted(cls.default_params)}"
            )
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
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
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


@dataclass
class _Study:
    """What every trial of one model's study needs."""

    cls: type
    task: tasks.Task
    objective: str
    space: dict
    base_params: dict
    cfg: dict
    what: str
    seed: int
    threads: int
    device: str
    weighting: str
    negative_weights: str
    classes: list | None
    energy: dict | None
    cv: int = 0
    errors: list = field(default_factory=list)

    @property
    def direction(self) -> str:
        return self.task.direction(self.objective)

    @property
    def multi(self) -> bool:  # second objective: training energy per event (minimised)
        return bool(self.cfg.get("energy_objective"))


def _cv_splits(st: _Study, train, val):
    """Train+validation pooled (features, targets, weights, the objective's truth),
    and the (fit, evaluate) masks of each of ``st.cv`` folds.

    Raises
    ------
    ConfigError
        ``cv_folds`` below 2, or a task fitted on background only (its folds hold
        no signal to judge the objective on).
    """
    if st.cv < 2:
        raise ConfigError(f"{st.what}: tune.cv_folds must be >= 2 (got {st.cv})")
    if st.task.background_only:
        raise ConfigError(
            f"{st.what}: tune.cv_folds is not available for task '{st.task}' (it trains on background "
            "only, so its folds hold no signal to judge on); tune on the validation split (cv_folds: null)"
        )
    Xa, wa = np.concatenate([train.X, val.X]), np.concatenate([train.weights, val.weights])
    ya = None if train.y is None else np.concatenate([train.y, val.y])
    truth = [st.task.objective_truth(d, st.objective) for d in (train, val)]
    ta = None if truth[0] is None else np.concatenate(truth)
    fold = _folds(np.concatenate([train.event_ids, val.event_ids]), st.cv)
    return Xa, ya, wa, ta, [(fold != i, fold == i) for i in range(st.cv)]


def _pick(a, mask):
    return None if a is None else a[mask]


def _fit_eval(st: _Study, params, Xt, yt, wt, Xe, ye, we, trial=None, judge=None) -> float:
    """Fit on (Xt, yt, wt) with (Xe, ye, we) as its validation; return the objective
    on ``judge`` = (X, truth, w) (default: (Xe, ye, we))."""
    import optuna

    fam = st.cls(task=st.task.name, params=params, seed=st.seed, n_threads=st.threads, device=st.device)
    if st.classes is not None:
        fam.n_classes = len(st.classes)  # a CV fold may lack a class; the outputs keep K columns
    sign = 1.0 if st.direction == "maximize" else -1.0
    if trial is not None and st.cls.iterative and not st.cv:

        def report(step, values):
            trial.report(-sign * values["validation_loss"], step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        fam.set_epoch_callback(report)
    fam.fit(
        Xt,
        yt,
        sample_weight=dataset.fit_weights(wt, yt, st.weighting, st.task.name, st.negative_weights),
        X_val=Xe,
        y_val=ye,
        w_val=dataset.fit_weights(we, ye, st.weighting, st.task.name, st.negative_weights),
    )
    # the objective uses the event weights as they are (physics weights)
    Xj, yj, wj = judge if judge is not None else (Xe, ye, we)
    return st.task.objective_value(st.objective, yj, fam.predict_score(Xj), wj, Xj)


def _trial_value(st: _Study, trial, params, train, val, pooled, judged):
    """The objective of one trial's params: on ``judged`` (the validation events
    the objective is computed on: every one, also for a background-only fit), or
    the mean over the CV folds."""
    if not st.cv:
        return _fit_eval(
            st,
            params,
            train.X,
            train.y,
            train.weights,
            val.X,
            val.y,
            val.weights,
            None if st.multi else trial,
            judge=(judged.X, st.task.objective_truth(judged, st.objective), judged.weights),
        )
    Xa, ya, wa, ta, splits = pooled
    vals = [
        _fit_eval(
            st,
            params,
            Xa[tr],
            _pick(ya, tr),
            wa[tr],
            Xa[te],
            _pick(ya, te),
            wa[te],
            judge=(Xa[te], _pick(ta, te), wa[te]),
        )
        for tr, te in splits
    ]
    trial.set_user_attr("fold_values", vals)
    return float(np.mean(vals))


def _objective(st: _Study, train, val, pooled, n_fit: int, judged):
    """The Optuna objective: a trial's value (and J/event with ``energy_objective``)."""
    import optuna

    from .energy import step_meter

    def objective(trial):
        params = {**st.base_params, **suggest(trial, st.space)}
        t0 = time.perf_counter()
        trial_meter = step_meter(st.energy, st.device, st.cls.gpu_capable)
        try:
            with trial_meter:
                value = _trial_value(st, trial, params, train, val, pooled, judged)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # recorded as a failed trial; the study goes on
            msg = f"{type(exc).__name__}: {exc}"
            st.errors.append(msg)
            trial.set_user_attr("error", msg[:2000])
            log.warning("%s: trial %d failed: %s", st.what, trial.number, msg)
            raise
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - t0)
        if not math.isfinite(value):
            raise HepmlError(f"objective {st.objective} is not finite ({value})")
        trial_meter.set_events(n_fit)
        jpe = trial_meter.record["j_per_event"]
        trial.set_user_attr("train_j_per_event", jpe)
        trial.set_user_attr("energy_method", trial_meter.record["method"])
        log.info(
            "%s: trial %d/%d %s=%.6g in %.1f s, params %s",
            st.what,
            trial.number + 1,
            st.cfg.get("n_trials", 20),
            st.objective,
            value,
            time.perf_counter() - t0,
            params,
        )
        return (value, jpe) if st.multi else value

    return objective


#: The user attribute of a trial that was running when its tune job died.
INTERRUPTED = "interrupted"


def storage_path(out: str, model: str) -> str:
    """The study's journal file: ``<model>.journal`` beside the tuning record ``out``."""
    return str(Path(out).with_name(f"{model}.journal"))


def _storage(path: str):
    """An Optuna journal storage in the file ``path`` (created with its folder)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _study_name(st: _Study, model: str, prune: bool, inputs: dict) -> str:
    """``<model>-<hash>``: the hash of everything that defines the study, so a
    changed config or changed inputs never resume an old study."""
    key = json.dumps(
        {
            "family": st.cls.name,
            "task": st.task.name,
            "objective": st.objective,
            "multi": st.multi,
            "space": st.space,
            "base": st.base_params,
            "seed": st.seed,
            "cv": st.cv,
            "prune": prune,
            "weighting": st.weighting,
            "inputs": inputs,
        },
        sort_keys=True,
        default=str,
    )
    return f"{model}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _finished(study) -> list:
    """The trials that count toward ``n_trials``: complete, pruned, or failed
    other than by the job's death."""
    import optuna

    states = optuna.trial.TrialState
    return [
        t
        for t in study.trials
        if t.state in (states.COMPLETE, states.PRUNED) or (t.state == states.FAIL and not t.user_attrs.get(INTERRUPTED))
    ]


def _close_interrupted(study, storage, what: str) -> None:
    """Mark the trials left RUNNING (or WAITING) by a killed job as failed."""
    import optuna

    states = optuna.trial.TrialState
    for t in study.trials:
        if t.state == states.RUNNING:
            storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
            storage.set_trial_user_attr(t._trial_id, "error", "interrupted: the tune job stopped during this trial")
            storage.set_trial_state_values(t._trial_id, states.FAIL)
            log.warning("%s: trial %d was interrupted by the previous run; marked failed", what, t.number)


def _run(st: _Study, model: str, objective, storage_file: str | None = None, inputs: dict | None = None):
    """Create (or resume), seed and run the study under an energy meter.

    Returns (study, wall seconds, meter, number of trials run now).
    """
    import optuna

    from .energy import step_meter

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prune = st.cfg.get("pruning", True) and st.cls.iterative and not st.cv and not st.multi
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3) if prune else optuna.pruners.NopPruner()
    storage = _storage(storage_file) if storage_file else None
    study = optuna.create_study(
        directions=[st.direction, "minimize"] if st.multi else [st.direction],
        sampler=optuna.samplers.TPESampler(seed=st.seed),
        pruner=pruner,
        study_name=_study_name(st, model, prune, inputs or {}) if storage else model,
        storage=storage,
        load_if_exists=True,
    )
    if storage is not None:
        _close_interrupted(study, storage, st.what)
    done = len(_finished(study))
    if done:
        log.info("%s: resuming the stored study (%s) after %d finished trials", st.what, storage_file, done)
    # trial 0 = the config's params (those of them that lie inside the search space)
    base, space = st.base_params, st.space
    study.enqueue_trial(
        {
            k: (json.dumps(base[k]) if space[k]["type"] == "categorical" else base[k])
            for k in space
            if _in_space(base[k], space[k])
        },
        skip_if_exists=True,
    )
    meter = step_meter(st.energy, st.device, st.cls.gpu_capable)
    n_trials = st.cfg.get("n_trials", 20)
    remaining = None if n_trials is None else max(0, int(n_trials) - done)
    # trials already run (the enqueued trial 0 waits and is run now, so it is not one of them)
    before = sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials)
    t0 = time.perf_counter()
    with meter:
        if remaining != 0:
            study.optimize(objective, n_trials=remaining, timeout=st.cfg.get("timeout"), catch=(Exception,))
    return study, time.perf_counter() - t0, meter, len(study.trials) - before


def _best(st: _Study, study):
    """The best finished trial and, with ``energy_objective``, the Pareto set of (objective, J/event).

    Raises
    ------
    FamilyError
        Every trial failed (naming the first error).
    """
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise FamilyError(
            f"{st.what}: every tuning trial of family '{st.cls.name}' failed; first error: "
            f"{st.errors[0] if st.errors else 'none recorded'}"
        )
    if not st.multi:
        return study.best_trial, None
    front = study.best_trials  # the final model takes the front's best objective
    best = (max if st.direction == "maximize" else min)(front, key=lambda t: t.values[0])
    pareto = [
        {"number": t.number, "value": t.values[0], "train_j_per_event": t.values[1], "params": t.params}
        for t in sorted(front, key=lambda t: t.values[1])
    ]
    return best, pareto


def _write_trials(study, pareto, path: str, objective: str = "value") -> None:
    """One row per trial: state (``COMPLETE``, ``PRUNED``, ``FAIL``), the
    objective (a column named after it), seconds, J/event, Pareto membership,
    error, params."""
    import pandas as pd

    rows = []
    for t in study.trials:
        row = {
            "number": t.number,
            "state": t.state.name,
            objective: t.values[0] if t.values else None,
            "seconds": t.user_attrs.get("seconds"),
            "train_j_per_event": t.user_attrs.get("train_j_per_event"),
            "pareto": bool(pareto) and any(p["number"] == t.number for p in pareto),
            "error": t.user_attrs.get("error", ""),
        }
        row.update({f"param.{k}": v for k, v in t.params.items()})
        rows.append(row)
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def _record(st: _Study, model: str, study, best, pareto, wall: float, meter, inputs: dict) -> dict:
    """The tuning record (see the module docstring)."""
    import optuna

    states = optuna.trial.TrialState
    space, first = st.space, study.trials[0]
    best_params = {
        **st.base_params,
        **{k: (json.loads(v) if space[k]["type"] == "categorical" else v) for k, v in best.params.items()},
    }
    return {
        "model": model,
        "family": st.cls.name,
        "task": st.task.name,
        "objective": st.objective,
        "direction": st.direction,
        "split": f"{st.cv}-fold CV on train+validation" if st.cv else "validation",
        "best_params": best_params,
        "best_value": best.values[0],
        "best_trial": best.number,
        "baseline_value": first.values[0] if first.state == states.COMPLETE else None,
        "energy_objective": st.multi,
        "pareto": pareto,
        "n_trials": len(study.trials),
        "n_complete": sum(t.state == states.COMPLETE for t in study.trials),
        "n_pruned": sum(t.state == states.PRUNED for t in study.trials),
        "n_failed": sum(t.state == states.FAIL for t in study.trials),
        "budget": {"n_trials": st.cfg.get("n_trials", 20), "timeout": st.cfg.get("timeout")},
        "wall_seconds": wall,
        "search_space": space,
        "seed": st.seed,
        "inputs": dict(inputs),
        "energy": meter.record,
    }


def _study(model: str, spec: dict, seed: int, threads: int, energy: dict | None) -> _Study:
    """Check the model's tuning settings and gather what the trials need.

    Raises
    ------
    ConfigError
        Unknown objective or search-space mistakes (naming the culprit).
    FamilyError
        A hyper-parameter the family does not have.
    """
    what = f"model '{model}'"
    task = tasks.of(spec)
    cfg = dict(spec.get("tune") or {})
    cls = registry.get(spec["family"])
    return _Study(
        cls=cls,
        task=task,
        objective=check_objective(cfg.get("objective") or task.default_objective or "", task.name, what),
        space=resolve_space(cls, cfg.get("search_space"), what),
        base_params=cls.resolve_params(spec.get("params") or {}),
        cfg=cfg,
        what=what,
        seed=seed,
        threads=threads,
        device=registry.requested_device(spec),
        weighting=spec.get("weighting", "balanced"),
        negative_weights=spec.get("negative_weights", "ignore"),
        classes=None,
        energy=energy,
        cv=int(cfg.get("cv_folds") or 0),
    )


def tune(
    train_path: str,
    validation_path: str,
    model: str,
    spec: dict,
    out: str,
    trials_out: str,
    seed: int = 42,
    threads: int = 1,
    energy: dict | None = None,
    storage: str | None = None,
) -> dict:
    """Run the study for ``model`` and write the best params (``out``) and the trials table.

    Parameters
    ----------
    train_path, validation_path : str
        The prepared training and validation splits (the test split is no input).
    model : str
        The model's name.
    spec : dict
        The model's resolved config entry, with its ``tune`` settings.
    out : str
        The tuning record (JSON).
    trials_out : str
        The trials table (CSV).
    seed, threads : int
        Seed of the sampler and of every fit; CPU threads of a fit.
    energy : dict, optional
        Energy settings as in :func:`.train.train`: the whole study is metered,
        and the record's ``energy`` counts the training events of every trial run.
    storage : str, optional
        The study's journal file (default :func:`storage_path`: beside ``out``);
        an existing study there with the same definition is resumed. ``""``:
        keep the study in memory only.

    Returns
    -------
    dict
        The tuning record.

    Raises
    ------
    ConfigError
        A bad objective, search space or ``cv_folds``.
    FamilyError
        Every trial failed.
    """
    st = _study(model, spec, seed, threads, energy)
    cap = dataset.fit_cap(spec, st.cls, streaming=False)  # trials fit in memory
    train = dataset.read_fit(train_path, spec, st.what, cap=cap)
    val = dataset.read_fit(validation_path, spec, st.what + " (validation)", classes=train.classes)
    st.classes = train.classes
    pooled = _cv_splits(st, train, val) if st.cv else None
    n_fit = sum(int(tr.sum()) for tr, _ in pooled[-1]) if st.cv else len(train)
    judged = val
    if st.task.background_only:  # fitted on background; the objective needs the signal too
        meta = {"model": model, "task": st.task.name, "family": spec["family"], "features": train.columns}
        judged = dataset.read_scoring(validation_path, {**meta, "target": spec.get("target")}, st.what)
    inputs = {p: _sha256(p) for p in (train_path, validation_path)}
    storage = storage_path(out, model) if storage is None else (storage or None)
    study, wall, meter, n_run = _run(st, model, _objective(st, train, val, pooled, n_fit, judged), storage, inputs)
    fit_events = len(pooled[0]) * (st.cv - 1) // st.cv if st.cv else len(train)
    meter.set_events(max(n_run, 1) * (st.cv or 1) * fit_events)  # the trials this run fitted
    best, pareto = _best(st, study)
    _write_trials(study, pareto, trials_out, st.objective)
    record = _record(st, model, study, best, pareto, wall, meter, inputs)
    record["storage"], record["n_trials_resumed"] = storage, len(study.trials) - n_run
    write_json(out, record)
    log.info(
        "%s: %s %s -> %s after %d trials (%.1f s)",
        st.what,
        st.objective,
        record["baseline_value"],
        best.values[0],
        len(study.trials),
        wall,
    )
    return record


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--train", required=True, help="prepared training split (features)")
        p.add_argument("--validation", required=True, help="prepared validation split (features)")
        p.add_argument("--model", required=True, help="the model's name")
        p.add_argument("--spec", type=cli.json_arg, required=True, help="the model's config entry as JSON")
        p.add_argument("--out", required=True, help="tuning record (JSON)")
        p.add_argument("--trials", required=True, help="trials table (CSV)")
        p.add_argument("--seed", type=int, default=42, help="seed of the sampler and of every fit")
        p.add_argument("--threads", type=int, default=1, help="CPU threads of a fit")
        p.add_argument("--energy", type=cli.json_arg, default={}, help="energy settings (config 'energy') as JSON")
        p.add_argument(
            "--storage",
            help="the study's journal file (default: <model>.journal beside --out); "
            "a killed job rerun resumes the study stored there",
        )

    return cli.run(
        build,
        lambda a: tune(a.train, a.validation, a.model, a.spec, a.out, a.trials, a.seed, a.threads, a.energy, a.storage),
        argv,
        __doc__,
        summary=lambda r: (
            f"best {r['objective']} {r['best_value']:.4g} (trial {r['best_trial']}); {r['n_complete']} complete,"
            f" {r['n_pruned']} pruned, {r['n_failed']} failed, {r.get('n_trials_resumed', 0)} resumed"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
