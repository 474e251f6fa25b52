"""Feature importance for every family: permutation importance on the test
split (how much the test figure of merit drops when one feature's values are
shuffled), plus the family's native importance where it has one (XGBoost
gain, tree impurity decrease, |coefficients| of linear models).

The figure of merit is the task's (:attr:`hepml_steps.tasks.Task.importance_metric`):
test AUC for classification and anomaly detection, the macro one-vs-rest AUC
for multiclass, MSE for regression; tasks without one (clustering,
dimensionality reduction) get the native importance only.

Memory: the events scored are drawn first (``max_events`` of the test split's
rows, without replacement, by ``numpy.random.default_rng(seed)``), and the split is
then read record batch by record batch, only the columns scoring needs, keeping
the drawn rows: the step holds the sample, not the split.
"""

from __future__ import annotations

import logging

import numpy as np

from . import cli, dataset, registry, tasks
from .io import write_json

log = logging.getLogger("hepml.importance")


def native_importance(model, features: list[str]) -> dict[str, float]:
    """The family's own importance (``Family.native_importance``) keyed by feature name; {} when none."""
    raw = model.native_importance()  # feature column index -> importance, or None
    if raw is None:
        return {}
    return {name: float(raw.get(i, 0.0)) for i, name in enumerate(features)}


def _rows(n: int, max_events: int, seed: int) -> np.ndarray | None:
    """Positions (int64) of the ``max_events`` events drawn out of ``n``, in the order
    drawn; None: all (``n <= max_events``).

    ``numpy.random.default_rng(seed).choice(n, max_events, replace=False)``: for a
    sample under 1/50 of a split of more than 10,000 events NumPy draws it by
    Floyd's algorithm, holding the sample (and a hash set of it), not the split
    (a permutation of the split held 4–8 bytes per event: 80 MiB at 20M test
    events); otherwise by a partial shuffle of ``n`` positions (8 bytes per event,
    under 8 MiB while ``max_events`` <= 20,000, the default: then ``n`` < 1M).
    """
    if n <= max_events:
        return None
    return np.random.default_rng(seed).choice(n, size=max_events, replace=False).astype(np.int64, copy=False)


def _concat(parts: list):
    """One :class:`~hepml_steps.dataset.Dataset` of the events of ``parts``, in order."""
    from dataclasses import replace

    arrays = ("X", "y", "weights", "fit_weights", "event_ids", "labels", "truth_llr")
    return replace(
        parts[0],
        **{a: None if getattr(parts[0], a) is None else np.concatenate([getattr(p, a) for p in parts]) for a in arrays},
    )


def read_sample(path: str, meta: dict, max_events: int, seed: int):
    """``_sample(dataset.read_scoring(path, meta), max_events, seed)``, reading the split by
    record batches and keeping only the drawn events (the same events, in the same order)."""
    from .io import ROW_GROUP_EVENTS, parquet_file

    rows = _rows(parquet_file(path).metadata.num_rows, max_events, seed)
    if rows is None:
        return dataset.read_scoring(path, meta, meta["model"])
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    parts, start = [], 0
    for batch in dataset.iter_scoring(path, meta, ROW_GROUP_EVENTS, meta["model"]):
        end = start + len(batch.X)
        lo, hi = np.searchsorted(wanted, [start, end])
        if hi > lo:
            parts.append(batch.take(wanted[lo:hi] - start))
        start = end
        del batch  # not held while the next one is read
    return _concat(parts).take(np.argsort(order, kind="stable"))


def _sample(data, max_events: int, seed: int):
    """At most ``max_events`` events of ``data`` (:func:`_rows`' draw), in the order drawn."""
    rows = _rows(len(data), max_events, seed)
    return data if rows is None else data.take(rows)


def permutation(model, data, features: list[str], task, n_repeats: int, seed: int) -> dict:
    """Mean and spread of the figure-of-merit drop when each feature is shuffled.

    Parameters
    ----------
    model : Family
        A fitted model.
    data : Dataset
        The events to score (``X`` of shape (n_events, n_features)).
    features : list of str
        The names of the columns of ``data.X``.
    task : hepml_steps.tasks.Task
        The model's task: its ``importance_metric`` and ``importance_value``.
    n_repeats : int
        Shuffles per feature.
    seed : int
        Seed of the shuffles.

    Returns
    -------
    dict
        ``feature -> {"mean", "std"}`` of the drop, and ``baseline`` (the unshuffled value).
    """
    better = task.importance_metric[1]

    def score(X):
        return task.importance_value(data, model.predict_score(X))

    base = score(data.X)
    rng = np.random.default_rng(seed)
    out = {}
    for j, name in enumerate(features):
        drops = []
        for _ in range(n_repeats):
            Xp = data.X.copy()
            Xp[:, j] = Xp[rng.permutation(len(Xp)), j]
            drops.append(better * (base - score(Xp)))
        out[name] = {"mean": float(np.mean(drops)), "std": float(np.std(drops))}
    return {"permutation": out, "baseline": float(base)}


def importance(model_dir: str, test: str, out: str, n_repeats: int = 3, max_events: int = 20000, seed: int = 0) -> dict:
    """Native and permutation importance of a trained model on the test split; write ``out``.

    Parameters
    ----------
    model_dir : str
        The trained model's directory.
    test : str
        The prepared test split.
    out : str
        The importance record (JSON).
    n_repeats : int
        Shuffles per feature.
    max_events : int
        Events scored at most (2000 for slow-inference families such as kNN and SVM).
    seed : int
        Seed of the event sample and of the shuffles.

    Raises
    ------
    DataError
        A feature column of the model is missing, or its target is unusable.
    """
    model, meta = registry.load_model(model_dir)
    task, features = tasks.get(meta["task"]), meta["features"]
    result = {
        "model": meta["model"],
        "task": task.name,
        "metric": None,
        "permutation": {},
        "native": native_importance(model, features),
    }
    if task.importance_metric is None:
        write_json(out, result)
        return result
    if registry.get(meta["family"]).max_train_events:  # slow-inference families (kNN, SVM, ...)
        max_events = min(max_events, 2000)
    data = read_sample(test, meta, max_events, seed)
    result.update(
        permutation(model, data, features, task, n_repeats, seed),
        metric=task.importance_metric[0],
        n_events=len(data),
        n_repeats=n_repeats,
    )
    write_json(out, result)
    return result


def main(argv=None) -> int:
    from .io import release_freed_memory

    if argv is None:  # the step's own process (python -m), never a caller's: see io.release_freed_memory
        release_freed_memory(arrow_cpp=True)

    def build(p):
        p.add_argument("--model-dir", required=True, help="the trained model's directory")
        p.add_argument("--test", required=True, help="prepared test split (features)")
        p.add_argument("--out", required=True, help="importance record (JSON)")
        p.add_argument("--n-repeats", type=int, default=3, help="shuffles per feature")
        p.add_argument("--max-events", type=int, default=20000, help="events scored at most")
        p.add_argument("--seed", type=int, default=0, help="seed of the event sample and the shuffles")

    return cli.run(
        build, lambda a: importance(a.model_dir, a.test, a.out, a.n_repeats, a.max_events, a.seed), argv, __doc__
    )


if __name__ == "__main__":
    raise SystemExit(main())
