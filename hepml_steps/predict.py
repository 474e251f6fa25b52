"""Score every event of the three prepared splits with a trained model.

Writes one Parquet table per model with ``event_id, split, label, weight,
score`` (``label`` only for labelled inputs; plus ``truth_llr`` when known,
and ``target`` for a task with a target) — the input of evaluation. How scores are laid out is the task's
(:meth:`hepml_steps.tasks.Task.prediction_columns`): a regression model's
``target`` is the true value in its physical units; a multiclass model's
``score`` is the index of its most probable class, ``prob_<i>`` the
probability of class ``i`` and ``target`` the index of the true class (−1 for
a class the model never saw); the index → value map is the model's
``classes``. Inference runs in batches of ``batch_size`` events; the test
split's inference is metered (time, CPU time, energy, events/s, J/event) and
written to the step's record (``--record``).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from . import cli, dataset, registry, tasks
from .columns import EVENT_ID, LABEL, SPLIT, SPLITS, TARGET, TRUTH_LLR, WEIGHT
from .errors import ConfigError
from .io import write_json, write_parquet

log = logging.getLogger("hepml.predict")


def _scores(model, X, batch_size: int, task, classes) -> np.ndarray:
    """``model.predict_score`` of ``X`` (n_events × n_features), in batches of ``batch_size`` events."""
    if not len(X):
        return task.empty_scores(classes)
    return np.concatenate([model.predict_score(X[i : i + batch_size]) for i in range(0, len(X), batch_size)])


def _table(data, split: str, score, task):
    """The prediction rows of one split (see the module docstring)."""
    import pandas as pd

    labels = {} if data.labels is None else {LABEL: data.labels}  # unlabelled inputs: no label column
    part = pd.DataFrame(
        {EVENT_ID: data.event_ids, SPLIT: split, **labels, WEIGHT: data.weights, **task.prediction_columns(score)}
    )
    if data.truth_llr is not None:
        part[TRUTH_LLR] = data.truth_llr
    if task.needs_target:
        part[TARGET] = data.y
    return part


def predict(
    model_dir: str,
    inputs: dict[str, str],
    out: str,
    batch_size: int = 100_000,
    threads: int = 1,
    record_out: str | None = None,
    energy: dict | None = None,
) -> dict:
    """Score the three splits; return (and write to ``record_out``) the step's record.

    Parameters
    ----------
    model_dir : str
        The trained model's directory.
    inputs : dict of str to str
        Split name -> prepared split (``train``, ``validation``, ``test``).
    out : str
        The prediction table (Parquet).
    batch_size : int
        Events per ``predict_score`` call.
    threads : int
        CPU threads of inference.
    record_out : str, optional
        Where to write the step's record (timing and test-split inference energy).
    energy : dict, optional
        The config's energy settings.

    Raises
    ------
    ConfigError
        ``batch_size`` below 1.
    DataError
        A feature column of the model is missing from a split, or its target is unusable.
    """
    import pandas as pd

    from .energy import step_meter

    if batch_size < 1:
        raise ConfigError(f"evaluation.inference_batch_size must be >= 1 (got {batch_size})")
    model, meta = registry.load_model(model_dir)
    model.n_threads = threads
    cls, task = registry.get(meta["family"]), tasks.get(meta["task"])
    model.use_device(meta.get("device", "cpu"))
    parts, timing, inference = [], {}, None
    for s in SPLITS:
        data = dataset.read_scoring(inputs[s], meta)
        meter = step_meter(energy, model.info.get("device", "cpu"), cls.gpu_capable)
        t0 = time.perf_counter()
        with meter:
            score = _scores(model, data.X, batch_size, task, meta.get("classes"))
        timing[s] = {"n_events": len(data), "seconds": time.perf_counter() - t0}
        if s == "test":
            meter.set_events(len(data))
            inference = {**meter.record, "batch_size": batch_size, "split": "test"}
        parts.append(_table(data, s, score, task))
    write_parquet(out, pd.concat(parts, ignore_index=True))
    record = {
        "model": meta["model"],
        "family": meta["family"],
        "batch_size": batch_size,
        "threads": threads,
        "device": model.info.get("device", "cpu"),
        "device_note": model.info.get("device_note"),
        "timing": timing,
        "energy": {"inference": inference},
    }
    if record_out:
        write_json(record_out, record)
    log.info(
        "%s: test inference %.0f events/s (%s)", meta["model"], inference["events_per_s"] or 0, inference["method"]
    )
    return record


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--model-dir", required=True, help="the trained model's directory")
        for s in SPLITS:
            p.add_argument(f"--{s}", required=True, help=f"prepared {s} split (features)")
        p.add_argument("--out", required=True, help="prediction table (Parquet)")
        p.add_argument("--batch-size", type=int, default=100_000, help="events per inference batch")
        p.add_argument("--threads", type=int, default=1, help="CPU threads of inference")
        p.add_argument("--record", help="step record JSON (timing and inference energy)")
        p.add_argument("--energy", type=cli.json_arg, default={}, help="energy settings (config 'energy') as JSON")

    return cli.run(
        build,
        lambda a: predict(
            a.model_dir, {s: getattr(a, s) for s in SPLITS}, a.out, a.batch_size, a.threads, a.record, a.energy
        ),
        argv,
        __doc__,
        summary=lambda r: f"test inference {r['energy']['inference']['events_per_s'] or 0:.3g} events/s",
    )


if __name__ == "__main__":
    raise SystemExit(main())
