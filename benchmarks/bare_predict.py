"""The bare inference a physicist would write: the reference of the predict step's time.

    python benchmarks/bare_predict.py RESULTS MODEL [--batch-size N] [--threads N] [--scores FILE]

Run as its own fresh process (``benchmarks/scale.py`` times the process from
start to exit, as Snakemake times the step's), it does only what scoring the
three prepared splits needs, with the libraries alone:

1. imports pyarrow, numpy and the model's library (xgboost or torch);
2. loads the model from ``RESULTS/models/MODEL``:

   * XGBoost: ``xgb.Booster().load_model("model.ubj")``, ``nthread`` = threads;
   * the PyTorch MLP (family ``mlp``, activation ``relu``, ``tanh``,
     ``logistic``, ``softplus`` or ``linear``): a ``torch.nn.Sequential`` of
     ``nn.Linear`` layers built from ``model_config.json`` (``layer_sizes``,
     ``activation``) and the saved ``state_dict`` (``model.pt``,
     ``torch.load(weights_only=True)``), eval mode; the output turned into the
     score as hepml does (sigmoid for classification, softmax for
     multiclass, ``out * target_std + target_mean`` for regression);
   * any other model (another torch family, the ``step`` activation, a
     scikit-learn family...) has no bare loader here: it is loaded with
     hepml's registry (``hepml_steps.registry.load_model``) and scored with
     its ``predict_score`` — the only case in which hepml is imported, and
     the ``how`` this script prints says so;

3. per split (train, validation, test), ``--batch-size`` events at a time:
   reads the model's feature columns (``hepml_model.json`` ``features``) with
   ``pyarrow.parquet.ParquetFile.iter_batches`` into a float32 matrix (as
   many events as a batch; faster than ``read_table`` of the whole split),
   and scores them (XGBoost ``Booster.inplace_predict``; torch under
   ``inference_mode``, ``torch.set_num_threads(threads)``), keeping nothing.

What it does not do, and the predict step does: read the event columns
(``event_id``, ``label``, ``weight``, ``truth_llr``), fill missing feature
values with the train medians (for a family that does not take NaN), meter
the test split's energy, and write the prediction table (Parquet). It prints
one JSON line: ``how`` (what was timed), ``n_events`` and
``hepml_imported`` (whether hepml was imported: only for the fallback). ``--scores FILE``
(for tests, not timed by the benchmark) also saves the test split's scores
(``.npy``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

SPLITS = ("train", "validation", "test")


def xgboost_scorer(mdir: Path, threads: int):
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(str(mdir / "model.ubj"))
    booster.set_param({"nthread": threads})
    return booster.inplace_predict, "xgboost Booster.load_model + inplace_predict"


def torch_scorer(mdir: Path, threads: int):
    """A plain torch.nn.Sequential rebuilt from model_config.json and model.pt; None when
    the model is not one this script knows how to rebuild without hepml."""
    cfg = json.loads((mdir / "model_config.json").read_text())
    acts = {"relu": "ReLU", "tanh": "Tanh", "logistic": "Sigmoid", "softplus": "Softplus", "linear": "Identity"}
    if cfg.get("activation") not in acts:
        return None
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    sizes, act = cfg["layer_sizes"], getattr(nn, acts[cfg["activation"]])
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([act()] if i < len(sizes) - 2 else [])
    net = nn.Sequential(*layers)
    state = torch.load(mdir / "model.pt", weights_only=True, map_location="cpu")
    # hepml's state_dict keys are layers.<i>.weight/bias; in the Sequential, layer i sits at 2 i
    net.load_state_dict({f"{2 * int(k.split('.')[1])}.{k.split('.')[2]}": v for k, v in state.items()})
    net.eval()
    task, scaling = cfg["task"], cfg.get("scaling") or {}
    mean, std = float(scaling.get("target_mean", 0.0)), float(scaling.get("target_std", 1.0))

    def score(X):
        with torch.inference_mode():
            out = net(torch.from_numpy(X))
            if task == "multiclass":
                return torch.softmax(out, dim=1).numpy()
            if task == "classification":
                return torch.sigmoid(out[:, 0]).numpy()
            return (out[:, 0] * std + mean).numpy()

    return score, "torch.nn.Sequential from model.pt, eval, inference_mode"


def hepml_scorer(mdir: Path, threads: int, family: str):
    from hepml_steps import registry

    model, _ = registry.load_model(str(mdir))
    model.n_threads = threads
    return model.predict_score, f"{family}: hepml registry.load_model + predict_score (no bare loader)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="the workflow's results folder")
    p.add_argument("model", help="the model's name (results/models/<model>)")
    p.add_argument("--batch-size", type=int, default=131_072)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scores", help="also save the test split's scores here (.npy)")
    a = p.parse_args(argv)
    mdir = a.results / "models" / a.model
    meta = json.loads((mdir / "hepml_model.json").read_text())
    cols, made = meta["features"], None
    if meta["family"] == "xgboost":
        made = xgboost_scorer(mdir, a.threads)
    elif meta["family"] == "mlp":
        made = torch_scorer(mdir, a.threads)
    score, how = made or hepml_scorer(mdir, a.threads, meta["family"])
    n, kept = 0, []
    for s in SPLITS:
        batches = pq.ParquetFile(a.results / "features" / f"{s}.parquet").iter_batches(a.batch_size, columns=cols)
        for batch in batches:
            X = np.empty((batch.num_rows, len(cols)), dtype=np.float32)
            for j in range(len(cols)):
                X[:, j] = batch.column(j).to_numpy(zero_copy_only=False)
            out = score(X)
            if a.scores and s == "test":
                kept.append(out)
            n += len(X)
    if a.scores:
        np.save(a.scores, np.concatenate(kept))
    print(json.dumps({"how": how, "n_events": n, "hepml_imported": "hepml_steps" in sys.modules}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
