"""Feature importance for every family: permutation importance on the test
split (how much the test figure of merit drops when one feature's values are
shuffled), plus the family's native importance where it has one (XGBoost
gain, tree impurity decrease, |coefficients| of linear models).
"""
from __future__ import annotations

import logging

import numpy as np

from . import cli, registry
from .columns import LABEL, WEIGHT
from .io import read_parquet, write_json

log = logging.getLogger("hepml.importance")


def native_importance(model, features: list[str]) -> dict[str, float]:
    """The family's own importance (``Family.native_importance``) keyed by feature name; {} when none."""
    raw = model.native_importance()  # feature column index -> importance, or None
    if raw is None:
        return {}
    return {name: float(raw.get(i, 0.0)) for i, name in enumerate(features)}


def importance(model_dir: str, test: str, out: str, raw_test: str | None = None, n_repeats: int = 3,
               max_events: int = 20000, seed: int = 0) -> dict:
    from .train import targets

    model, meta = registry.load_model(model_dir)
    task, features = meta["task"], meta["features"]
    result = {"model": meta["model"], "task": task, "metric": None, "permutation": {},
              "native": native_importance(model, features)}
    if task not in ("classification", "multiclass", "anomaly", "regression"):
        write_json(out, result)
        return result
    from . import metrics as M

    df = read_parquet(test)
    if registry.get(meta["family"]).max_train_events:  # slow-inference families (kNN, SVM, ...)
        max_events = min(max_events, 2000)
    if len(df) > max_events:
        df = df.sample(n=max_events, random_state=seed)
    X = df[features].to_numpy(dtype=np.float32)
    w = df[WEIGHT].to_numpy()
    if task == "regression":
        y = targets(df, "regression", meta["target"], raw_test, meta["model"])
        metric, better = "mse", -1.0

        def score(Xp):
            return M.mse(y, model.predict_score(Xp), sample_weight=w)
    elif task == "multiclass":
        y = targets(df, "multiclass", meta["target"], raw_test, meta["model"], meta.get("classes"))
        metric, better = "roc_auc", 1.0  # macro one-vs-rest

        def score(Xp):
            return M.multiclass_metrics(y, model.predict_score(Xp), sample_weight=w)["roc_auc"]
    else:
        y = df[LABEL].to_numpy()
        metric, better = "roc_auc", 1.0

        def score(Xp):
            return M.roc_auc(y, model.predict_score(Xp), sample_weight=w)
    base = score(X)
    rng = np.random.default_rng(seed)
    for j, name in enumerate(features):
        drops = []
        for _ in range(n_repeats):
            Xp = X.copy()
            Xp[:, j] = Xp[rng.permutation(len(Xp)), j]
            drops.append(better * (base - score(Xp)))
        result["permutation"][name] = {"mean": float(np.mean(drops)), "std": float(np.std(drops))}
    result.update(metric=metric, baseline=float(base), n_events=int(len(X)), n_repeats=n_repeats)
    write_json(out, result)
    return result


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--model-dir", required=True)
        p.add_argument("--test", required=True)
        p.add_argument("--raw-test")
        p.add_argument("--out", required=True)
        p.add_argument("--n-repeats", type=int, default=3)
        p.add_argument("--max-events", type=int, default=20000)
        p.add_argument("--seed", type=int, default=0)

    return cli.run(build, lambda a: importance(a.model_dir, a.test, a.out, a.raw_test, a.n_repeats,
                                               a.max_events, a.seed), argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
