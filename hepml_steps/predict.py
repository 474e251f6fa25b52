"""Score every event of the three prepared splits with a trained model.

Writes one Parquet table per model with ``event_id, split, label, weight,
score`` (plus ``truth_llr`` and ``target`` when known) — the input of
evaluation. A multiclass model's ``score`` is the index of its most probable
class, ``prob_<i>`` the probability of class ``i`` and ``target`` the index of
the true class (−1 for a class the model never saw); the index → value map is
the model's ``classes``. Inference runs in batches of ``batch_size`` events; the test
split's inference is metered (time, CPU time, energy, events/s, J/event) and
written to the step's record (``--record``).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from . import cli, registry
from .columns import EVENT_ID, LABEL, PROB, SCORE, SPLIT, SPLITS, TRUTH_LLR, WEIGHT
from .errors import ConfigError, DataError
from .io import read_parquet, write_json, write_parquet

log = logging.getLogger("hepml.predict")


def predict(model_dir: str, inputs: dict[str, str], out: str, raw: dict | None = None,
            batch_size: int = 100_000, threads: int = 1, record_out: str | None = None,
            energy: dict | None = None) -> dict:
    """Score the three splits; return (and write to ``record_out``) the step's record."""
    import pandas as pd

    from .energy import step_meter
    from .train import targets

    if batch_size < 1:
        raise ConfigError(f"evaluation.inference_batch_size must be >= 1 (got {batch_size})")
    model, meta = registry.load_model(model_dir)
    model.n_threads = threads
    cls = registry.get(meta["family"])
    model.use_device(meta.get("device", "cpu"))
    parts, timing, inference = [], {}, None
    for s in SPLITS:
        df = read_parquet(inputs[s])
        missing = [c for c in meta["features"] if c not in df.columns]
        if missing:
            raise DataError(f"model '{meta['model']}': feature column(s) {missing} missing from {inputs[s]}")
        X = df[meta["features"]].to_numpy(dtype=np.float32)
        meter = step_meter(energy, model.info.get("device", "cpu"), cls.gpu_capable)
        t0 = time.perf_counter()
        multiclass = meta["task"] == "multiclass"
        with meter:
            score = np.concatenate([model.predict_score(X[i:i + batch_size])
                                    for i in range(0, len(X), batch_size)]) if len(X) else (
                np.empty((0, len(meta.get("classes") or ()))) if multiclass else np.empty(0))
        timing[s] = {"n_events": int(len(X)), "seconds": time.perf_counter() - t0}
        if s == "test":
            meter.set_events(len(X))
            inference = {**meter.record, "batch_size": batch_size, "split": "test"}
        probs = {}
        if multiclass:
            probs = {f"{PROB}{i}": score[:, i] for i in range(score.shape[1])}
            score = score.argmax(axis=1).astype(np.float64) if len(score) else np.empty(0)
        part = pd.DataFrame({EVENT_ID: df[EVENT_ID].to_numpy(), SPLIT: s, LABEL: df[LABEL].to_numpy(),
                             WEIGHT: df[WEIGHT].to_numpy(), SCORE: score, **probs})
        if TRUTH_LLR in df.columns:
            part[TRUTH_LLR] = df[TRUTH_LLR].to_numpy()
        if meta["task"] in ("regression", "multiclass"):
            part["target"] = targets(df, meta["task"], meta["target"], (raw or {}).get(s), meta["model"],
                                     meta.get("classes"))
        parts.append(part)
    write_parquet(out, pd.concat(parts, ignore_index=True))
    record = {"model": meta["model"], "family": meta["family"], "batch_size": batch_size, "threads": threads,
              "device": model.info.get("device", "cpu"), "device_note": model.info.get("device_note"),
              "timing": timing, "energy": {"inference": inference}}
    if record_out:
        write_json(record_out, record)
    log.info("%s: test inference %.0f events/s (%s)", meta["model"], inference["events_per_s"] or 0,
             inference["method"])
    return record


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--model-dir", required=True)
        for s in SPLITS:
            p.add_argument(f"--{s}", required=True)
            p.add_argument(f"--raw-{s}")
        p.add_argument("--out", required=True)
        p.add_argument("--batch-size", type=int, default=100_000)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--record", help="step record JSON (timing and inference energy)")
        p.add_argument("--energy", type=cli.json_arg, default={}, help="energy settings (config 'energy') as JSON")

    return cli.run(build, lambda a: predict(
        a.model_dir, {s: getattr(a, s) for s in SPLITS}, a.out,
        {s: getattr(a, f"raw_{s}") for s in SPLITS}, a.batch_size, a.threads, a.record, a.energy),
        argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
