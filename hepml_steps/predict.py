"""Score every event of the three prepared splits with a trained model.

Writes one Parquet table per model with ``event_id, split, label, weight,
score`` (plus ``truth_llr`` and ``target`` when known) — the input of
evaluation. Inference runs in batches of ``batch_size`` events.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from . import cli, registry
from .columns import EVENT_ID, LABEL, SCORE, SPLIT, SPLITS, TRUTH_LLR, WEIGHT
from .io import read_parquet, write_parquet

log = logging.getLogger("hepml.predict")


def predict(model_dir: str, inputs: dict[str, str], out: str, raw: dict | None = None,
            batch_size: int = 100_000, threads: int = 1) -> dict:
    import pandas as pd

    from .train import targets

    model, meta = registry.load_model(model_dir)
    model.n_threads = threads
    parts, timing = [], {}
    for s in SPLITS:
        df = read_parquet(inputs[s])
        X = df[meta["features"]].to_numpy(dtype=np.float32)
        t0 = time.perf_counter()
        score = np.concatenate([model.predict_score(X[i:i + batch_size])
                                for i in range(0, len(X), batch_size)]) if len(X) else np.empty(0)
        timing[s] = {"n_events": int(len(X)), "seconds": time.perf_counter() - t0}
        part = pd.DataFrame({EVENT_ID: df[EVENT_ID].to_numpy(), SPLIT: s, LABEL: df[LABEL].to_numpy(),
                             WEIGHT: df[WEIGHT].to_numpy(), SCORE: score})
        if TRUTH_LLR in df.columns:
            part[TRUTH_LLR] = df[TRUTH_LLR].to_numpy()
        if meta["task"] == "regression":
            part["target"] = targets(df, "regression", meta["target"], (raw or {}).get(s), meta["model"])
        parts.append(part)
    write_parquet(out, pd.concat(parts, ignore_index=True))
    return timing


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--model-dir", required=True)
        for s in SPLITS:
            p.add_argument(f"--{s}", required=True)
            p.add_argument(f"--raw-{s}")
        p.add_argument("--out", required=True)
        p.add_argument("--batch-size", type=int, default=100_000)
        p.add_argument("--threads", type=int, default=1)

    return cli.run(build, lambda a: predict(
        a.model_dir, {s: getattr(a, s) for s in SPLITS}, a.out,
        {s: getattr(a, f"raw_{s}") for s in SPLITS}, a.batch_size, a.threads), argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
