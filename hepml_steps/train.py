"""Train one model: a family from the registry on the prepared training split.

Reads only the *train* and *validation* feature tables (never test), through
:mod:`hepml_steps.dataset`, which also applies the task's rules (anomaly
detection trains on background events only; a multiclass model's classes
are the distinct values of its ``target`` column in the training split,
recorded as ``classes``) and the training cap. Event weights enter the fit
according to ``weighting`` (:func:`hepml_steps.dataset.fit_weights`):

- ``balanced`` (default): for classification and multiclass, each class's
  weights are scaled so every class carries the same total, keeping relative
  weights within a class (TMVA's NormMode=EqualNumEvents, but weighted);
  for other tasks as ``physical``;
- ``physical``: the event weights as they are, rescaled to mean 1;
- ``none``: every event counts once.

Negative event weights enter the fit according to ``negative_weights``
(``ignore``: weight 0, the default; ``abs``; ``keep`` for families that
accept them). A supervised fit whose scores are constant on the validation
and training events learned nothing: that is an error naming the model and
the likely cause (:func:`check_learned`), raised before any file (ONNX
export included) is written.

Families that scale badly declare (or the config sets) ``max_train_events``;
above it a deterministic subsample (smallest hash of ``event_id``) is used, a
warning is logged and the cap is recorded. A fit in memory is also capped at
``max_in_memory_events`` (20 million by default), so a split larger than
memory is subsampled, recorded, rather than crashing the job. A family that
declares ``streams_training`` (XGBoost, MLP, autoencoder) trains from batches
of the Parquet file instead (``fit_stream``) when the split holds more than
``stream_above_events`` events (500,000 by default): memory then holds
the family's own compact copy (XGBoost's quantised matrix) or a shuffle
buffer, plus the validation split, itself read batch by batch by a family
that declares ``streams_validation`` (all three: XGBoost's binned validation
matrix, or the networks' outputs, targets and weights); the leakage check
uses a deterministic sample of 200,000 training events (the learned-nothing
check scores 2,000 of them and judges the class weights of every event), and
the record says ``streamed``. Before the fit the leakage check
(:mod:`hepml_steps.leakage`, ``training.leakage``) flags features that
alone separate the classes or look like identifiers. The model directory (model files
+ ``hepml_model.json``) is replaced atomically.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import bundle, cli, dataset, leakage, registry, tasks
from .errors import ConfigError, DataError, describe
from .io import read_json, release_heap, write_json

log = logging.getLogger("hepml.train")

#: Tuning-record fields copied into the training record.
TUNING_KEYS = (
    "objective",
    "direction",
    "split",
    "baseline_value",
    "best_value",
    "n_trials",
    "n_complete",
    "n_pruned",
    "n_failed",
    "wall_seconds",
    "budget",
)


def _replace_dir(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _save(family, meta: dict, out_dir: str, pre: dict | None = None) -> None:
    """Write the model files, its ONNX copy, the bundle's ``preprocessing.json``
    (:mod:`hepml_steps.bundle`, when ``pre`` is given) and ``hepml_model.json``
    into ``out_dir``, atomically."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        meta["files"] = family.save(tmp)
        if pre is not None:
            meta["hepml_version"], meta["preprocessing_sha256"] = pre["hepml_version"], bundle.fingerprint(pre)
            write_json(tmp / bundle.FILE, pre)
        if family.exports_onnx:  # a portable copy for C++/ONNX Runtime inference
            family.to_onnx(tmp / "model.onnx", n_features=len(meta["features"]))
            meta["onnx"] = "model.onnx"
            if pre is not None:
                _onnx_raw(tmp / "model.onnx", family, meta, pre)
        write_json(tmp / registry.META_FILE, meta)
        tmp.chmod(0o755)  # mkdtemp made it 0700; the model is shared like every other output
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _onnx_raw(path: Path, family, meta: dict, pre: dict) -> None:
    """Put the preprocessing into the ONNX model (input ``raw``), or record why not."""
    from .families import onnx_export

    props = {
        "hepml_version": pre["hepml_version"],
        "hepml_model": meta["model"],
        "hepml_task": meta["task"],
        "hepml_features": json.dumps(meta["features"]),
        "hepml_classes": json.dumps(meta.get("classes")),
        "hepml_preprocessing_sha256": meta["preprocessing_sha256"],
    }
    try:
        meta["onnx_input_names"] = onnx_export.with_preprocessing(
            path, bundle.Bundle(path.parent, family, meta, pre), props
        )
        meta["onnx_input"] = onnx_export.RAW_INPUT
    except Exception as exc:  # noqa: BLE001 - the model is fine; only its raw-input ONNX copy is refused
        log.warning("%s: model.onnx takes the prepared features, not the raw ones: %s", meta["model"], exc)
        meta["onnx_input"], meta["onnx_raw_refused"] = "features", describe(exc)


#: A streamed fit checks leakage and "learned nothing" on this many training events
#: at most (the deterministic subsample of a training cap).
STREAM_SAMPLE_EVENTS = 200_000


def _read_train(path: str, spec: dict, cls, what: str):
    """The training split as ``(data, source)``.

    In memory (``source`` None) under the model's training cap
    (:func:`hepml_steps.dataset.fit_cap`); or, when the family streams and the
    split is large (:func:`hepml_steps.dataset.streams`), a
    :class:`~hepml_steps.dataset.ParquetSource` for the fit plus ``data``, a
    deterministic sample of at most :data:`STREAM_SAMPLE_EVENTS` events for
    the leakage and learned-nothing checks.
    """
    if dataset.streams(spec, cls, path):
        source = dataset.stream_fit(path, spec, what, spec.get("stream_batch_events", dataset.BATCH_EVENTS))
        sample = dataset.read_fit(path, spec, what, cap=STREAM_SAMPLE_EVENTS, classes=source.classes, warn_cap=False)
        log.info("%s: training on %d events streamed in %d batch(es)", what, len(source), source.n_chunks)
        return sample, source
    return dataset.read_fit(path, spec, what, cap=dataset.fit_cap(spec, cls, streaming=False)), None


@dataclass(frozen=True)
class _Validation:
    """The validation split as the fit and :func:`check_learned` use it: features
    ``X`` (n_events, n_features) float32, targets ``y`` and ``fit_weights``.

    The other arrays :func:`hepml_steps.dataset.read_fit` gives (event ids,
    stored weights, labels, Bayes scores: 8 bytes per event each) are let go
    before the fit, which holds this split throughout: 61 MiB at 2 million
    validation events.
    """

    X: Any
    y: Any
    fit_weights: Any

    def __len__(self) -> int:
        return len(self.X)

    @classmethod
    def read(cls, path: str, spec: dict, what: str, classes: list | None) -> _Validation:
        val = dataset.read_fit(path, spec, what, classes=classes)
        return cls(val.X, val.y, val.fit_weights)


def _read_validation(path: str, spec: dict, fam_cls, what: str, classes: list | None, streamed: bool):
    """The validation split for the fit: a :class:`_Validation` in memory or, for a
    streamed fit of a family that takes it so (``streams_validation``), a
    :class:`~hepml_steps.dataset.ParquetSource` read chunk by chunk."""
    if streamed and fam_cls.streams_validation:
        batch = spec.get("stream_batch_events", dataset.BATCH_EVENTS)
        return dataset.stream_fit(path, spec, what, batch, classes=classes)
    return _Validation.read(path, spec, what, classes)


def _fit(family, train, val, meter) -> dict:
    """Fit ``family`` under ``meter`` on a Dataset, or from a FitSource (``fit_stream``);
    return timing and energy."""
    streamed_val = isinstance(val, dataset.FitSource)  # a streams_validation family's (_read_validation)
    validation = {"X_val": val} if streamed_val else {"X_val": val.X, "y_val": val.y, "w_val": val.fit_weights}
    t0, c0 = time.perf_counter(), time.process_time()
    with meter:
        if isinstance(train, dataset.FitSource):
            family.fit_stream(train, **validation)
        else:
            family.fit(train.X, train.y, sample_weight=train.fit_weights, **validation)
    fit_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    meter.set_events(len(train))
    return {
        "fit_seconds": fit_s,
        "fit_cpu_seconds": cpu_s,
        "energy": {**meter.record, "device": family.info.get("device", meter.device)},
    }


#: At most this many training events are scored by :func:`check_learned`.
LEARNED_SAMPLE = 2000


def check_learned(family, train, val, model: str, spec: dict, source=None) -> None:
    """Refuse a supervised fit whose score is the same for every event.

    The validation events (``val.X``, or the chunks of ``val`` when it is a
    :class:`~hepml_steps.dataset.FitSource`) are scored first; only when their
    scores are all equal are (at most :data:`LEARNED_SAMPLE`) training events (a
    :class:`~hepml_steps.dataset.Dataset`) scored too. The message's likely cause
    is judged on the class fit weights of ``train``, or of every training event
    when ``source`` (a streamed fit's :class:`~hepml_steps.dataset.FitSource`) is given.

    Raises
    ------
    DataError
        ``models.<model>: the fit learned nothing (constant score); likely cause: ...``
    """
    import numpy as np

    if train.y is None:
        return  # unsupervised tasks: a constant output is not a failed fit
    val_X = (X for X, _, _ in val.chunks()) if isinstance(val, dataset.FitSource) else [val.X]
    sample = train.take(np.arange(min(len(train), LEARNED_SAMPLE)))
    for batches in (val_X, [sample.X]):
        lo = hi = None  # per score column, over the batches of the events scored so far
        for X in batches:
            if len(X) == 0:
                continue
            score = np.asarray(family.predict_score(X), dtype=np.float64)
            score = score.reshape(len(score), -1)
            lo = score.min(axis=0) if lo is None else np.minimum(lo, score.min(axis=0))
            hi = score.max(axis=0) if hi is None else np.maximum(hi, score.max(axis=0))
            if not np.all(hi - lo <= 1e-12):
                return
    raise DataError(
        f"models.{model}: the fit learned nothing (constant score on the validation and "
        f"training events); likely cause: {_likely_cause(family, train, spec, source)}"
    )


def _likely_cause(family, train, spec: dict, source=None) -> str:
    """Why a fit learned nothing, judged on the class fit weights of every training
    event: ``source``'s (a streamed fit: :attr:`FitSource.class_weight_sums`), else
    ``train``'s."""
    import numpy as np

    from . import tasks

    if source is not None:
        n, sums = len(source), source.class_weight_sums
        totals = None if sums is None else list(sums.values())
    else:
        n, w, y = len(train), train.fit_weights, train.y
        classes = tasks.get(family.task).balance_classes(y) if w is not None else None
        totals = None if classes is None else [float(w[y == c].sum()) for c in np.unique(y)]
    if totals is not None:  # a task with classes (classification, multiclass)
        if len(totals) > 1 and min(totals) < 0.05 * max(totals):
            return (
                f"weighting: {spec.get('weighting', 'balanced')} gives a class {min(totals) / max(totals):.2g} "
                f"of the weight of another over {n} training events, too little for the family's "
                "minimum-weight parameters (min_child_weight, min_samples_leaf, ...); use weighting: "
                "balanced, more events, or smaller such parameters"
            )
    return (
        f"{n} training events too few for the family's parameters (min_child_weight, "
        "min_samples_leaf, regularisation), or features that carry no information on the target; "
        "check the features and loosen those parameters"
    )


def train(
    train_path: str,
    validation_path: str,
    model: str,
    spec: dict,
    out_dir: str,
    record_out: str,
    seed: int = 42,
    threads: int = 1,
    tuned: str | None = None,
    energy: dict | None = None,
    transform: str | None = None,
    ingest: dict | None = None,
) -> dict:
    """Fit ``spec`` (family, task, params, ...) and write the model and its record.

    Parameters
    ----------
    train_path, validation_path : str
        The prepared training and validation splits.
    model : str
        The model's name.
    spec : dict
        The model's config entry (``family``, ``task``, ``params``, ``target``, ...).
    out_dir : str
        The model directory (replaced atomically).
    record_out : str
        The training record (JSON).
    seed, threads : int
        The family's random seed and CPU threads.
    tuned : str, optional
        A tuning record (from the tune step); its best params replace the config's.
    energy : dict, optional
        The config's energy settings; the fit is metered (see :mod:`.energy`) and
        the record gets ``energy.train`` (and ``energy.tuning`` from the tuning record).
    transform : str, optional
        The features step's ``transform.json``: with it the model directory is a
        bundle (``preprocessing.json``, :mod:`hepml_steps.bundle`) and its ONNX
        copy takes raw variables.
    ingest : dict, optional
        The ingest settings (``data.files``: ``columns``, ``aliases``, ``cut``) kept in the bundle.

    Returns
    -------
    dict
        The training record.

    Raises
    ------
    ConfigError
        No ``family``, or a bad setting (see :mod:`hepml_steps.dataset`).
    DataError
        Too few or unusable training events.
    """
    from .energy import step_meter

    what = f"model '{model}'"
    if "family" not in spec:
        raise ConfigError(f"models.{model}: 'family' is required")
    tuning = read_json(tuned) if tuned else None
    if tuning:
        spec = {**spec, "params": tuning["best_params"]}
    task = tasks.of(spec)
    cls = registry.get(spec["family"])
    device = registry.requested_device(spec)
    family = cls(task=task.name, params=spec.get("params") or {}, seed=seed, n_threads=threads, device=device)
    data, source = _read_train(train_path, spec, cls, what)
    n_train = len(source) if source is not None else len(data)
    val = _read_validation(validation_path, spec, cls, what + " (validation)", data.classes, source is not None)
    if n_train < task.min_fit_events:
        raise DataError(f"{what}: {n_train} training events are too few for {task}")
    if data.classes is not None:
        family.n_classes = len(data.classes)
    leaks = leakage.check(
        data, what, spec.get("leakage", "warn"), spec.get("leakage_auc", leakage.AUC_LIMIT), task.separates_signal
    )
    n_sample = len(data)
    sum_weights = source.sum_weights if source is not None else float(data.weights.sum())
    if source is not None:  # the streamed fit's check sample: check_learned scores its first events only
        import numpy as np

        data = data.take(np.arange(min(len(data), LEARNED_SAMPLE)))
    data = data.fit_view()  # the fit holds the matrix and targets, not the split's other columns
    release_heap()  # ... nor the pages they and the leakage check's temporaries left free
    fitted = _fit(family, source or data, val, step_meter(energy, device, cls.gpu_capable))
    check_learned(family, data, val, model, spec, source)
    meta = {
        "model": model,
        "family": cls.name,
        "task": task.name,
        "params": family.params,
        "seed": seed,
        "features": data.columns,
        "target": spec.get("target"),
        "file_format": cls.file_format,
        "device": device,
    }  # the request: inference resolves it again where it runs
    if data.classes is not None:
        meta["classes"] = data.classes  # class index i of the scores is the target value classes[i]
    events = {
        "n_validation": len(val),
        "sum_weights_train": sum_weights,
        "train_cap": data.cap
        if source is None
        else {"cap": None, "applied": False, "n_before": n_train, "n_after": n_train},
        "streamed": None
        if source is None
        else {
            "events": n_train,
            "chunks": source.n_chunks,
            "sample_events": n_sample,
            "batch_events": source.batch_events,
        },
    }
    streamed = source is not None
    del data, val, source
    # the events go before the model files are written (the ONNX check's peak); a streamed
    # fit's sources are in reference cycles (XGBoost's iterator callbacks): collected
    release_heap(collect=streamed)
    _save(family, meta, out_dir, bundle.make(read_json(transform), ingest, meta["features"]) if transform else None)
    record = {
        **meta,
        "weighting": spec.get("weighting", "balanced"),
        "n_train": n_train,
        **events,
        "fit_seconds": fitted["fit_seconds"],
        "fit_cpu_seconds": fitted["fit_cpu_seconds"],
        "threads": threads,
        "device": family.info.get("device", "cpu"),
        "info": family.info,
        "history": family.history,
        "leakage": leaks,
        "energy": {
            "train": fitted["energy"],
            **({"tuning": tuning["energy"]} if tuning and tuning.get("energy") else {}),
        },
        "tuning": None if tuning is None else {k: tuning.get(k) for k in TUNING_KEYS},
    }
    write_json(record_out, record)
    log.info("%s (%s, %s): trained on %d events in %.2f s", model, cls.name, task, n_train, fitted["fit_seconds"])
    return record


def summary(record: dict) -> str:
    """One line of a train record: events, fit time and energy (J, how measured)."""
    e = record["energy"]["train"] or {}
    joules = f", {e['energy_j']:.3g} J ({e.get('method')})" if e.get("energy_j") is not None else ""
    return f"{record['family']} on {record['n_train']} events, fit {record['fit_seconds']:.1f} s{joules}"


def main(argv=None) -> int:
    if argv is None:  # the step's own process (python -m), never a caller's
        from .io import arrow_on_system_allocator

        arrow_on_system_allocator()

    def build(p):
        p.add_argument("--train", required=True, help="prepared training split (features)")
        p.add_argument("--validation", required=True, help="prepared validation split (features)")
        p.add_argument("--model", required=True, help="the model's name")
        p.add_argument("--spec", type=cli.json_arg, required=True, help="the model's config entry as JSON")
        p.add_argument("--out", required=True, help="model directory")
        p.add_argument("--record", required=True, help="training record JSON")
        p.add_argument("--seed", type=int, default=42, help="random seed of the family")
        p.add_argument("--threads", type=int, default=1, help="CPU threads of the fit")
        p.add_argument("--tuned", help="tuning record whose best params to use")
        p.add_argument("--energy", type=cli.json_arg, default={}, help="energy settings (config 'energy') as JSON")
        p.add_argument("--transform", help="the features step's transform.json (makes the model dir a bundle)")
        p.add_argument(
            "--ingest",
            type=cli.json_arg,
            default={},
            help="ingest settings as JSON ({columns, aliases, cut}), kept in the bundle",
        )

    return cli.run(
        build,
        lambda a: train(
            a.train,
            a.validation,
            a.model,
            a.spec,
            a.out,
            a.record,
            a.seed,
            a.threads,
            a.tuned,
            a.energy,
            a.transform,
            a.ingest,
        ),
        argv,
        __doc__,
        summary=summary,
    )


if __name__ == "__main__":
    raise SystemExit(main())
