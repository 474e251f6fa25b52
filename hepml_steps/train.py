"""Train one model: a family from the registry on the prepared training split.

Reads only the *train* and *validation* feature tables (never test). Event
weights enter the fit according to ``weighting``:

- ``balanced`` (default): for classification and multiclass, each class's
  weights are scaled so every class carries the same total, keeping relative
  weights within a class (TMVA's NormMode=EqualNumEvents, but weighted);
  for other tasks as ``physical``;
- ``physical``: the event weights as they are, rescaled to mean 1;
- ``none``: every event counts once.

Families that scale badly declare (or the config sets) ``max_train_events``;
above it a deterministic subsample (smallest hash of ``event_id``) is used, a
warning is logged and the cap is recorded. Anomaly detection trains on
background events only. A multiclass model's classes are the distinct values
of its ``target`` column in the training split (recorded as ``classes``).
The model directory (model files + ``hepml_model.json``) is replaced
atomically.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from . import cli, registry
from .columns import EVENT_ID, LABEL, RESERVED, WEIGHT
from .errors import ConfigError, DataError
from .io import read_parquet, write_json
from .split import uniform_from_id

log = logging.getLogger("hepml.train")

WEIGHTINGS = ("balanced", "physical", "none")
CAP_SALT = 0x5EED


def fit_weights(w: np.ndarray, y: np.ndarray | None, weighting: str, task: str) -> np.ndarray:
    """Event weights as used in the fit (see module docstring)."""
    w = np.asarray(w, dtype=np.float64)
    if weighting == "none":
        return np.ones_like(w)
    if weighting == "balanced" and task in ("classification", "multiclass"):
        out = np.empty_like(w)
        labels = (0, 1) if task == "classification" else np.unique(y)
        for cls in labels:
            m = y == cls
            total = w[m].sum()
            if total <= 0:
                raise DataError(f"class {cls} has non-positive total weight {total:g}; cannot balance")
            out[m] = w[m] * (len(w) / len(labels)) / total
        return out
    if weighting in ("balanced", "physical"):
        total = w.sum()
        if total <= 0:
            raise DataError(f"events have non-positive total weight {total:g}")
        return w * len(w) / total
    raise ConfigError(f"training weighting '{weighting}' unknown; use one of {WEIGHTINGS}")


def select_features(df, wanted, target=None) -> list[str]:
    available = [c for c in df.columns if c not in RESERVED]
    if wanted:
        missing = [c for c in wanted if c not in available]
        if missing:
            raise ConfigError(f"model features {missing} are not prepared feature columns (available: {available})")
        cols = list(wanted)
    else:
        cols = available
    if target is not None and target in cols:
        cols.remove(target)  # never learn a target from itself
    return cols


def cap_index(event_ids, cap: int) -> np.ndarray:
    """Positions of the events kept by a training cap: the ``cap`` smallest
    hashes of ``event_id`` (independent of order and of the other events' presence)."""
    u = uniform_from_id(np.asarray(event_ids), CAP_SALT)
    if cap >= len(u):
        return np.arange(len(u))
    return np.sort(np.argpartition(u, cap - 1)[:cap])


def cap_events(df, cap: int | None, what: str):
    """Deterministic subsample of at most ``cap`` events; returns (df, record)."""
    n = len(df)
    if not cap or n <= cap:
        return df, {"cap": cap, "applied": False, "n_before": n, "n_after": n}
    keep = cap_index(df[EVENT_ID].to_numpy(), cap)
    log.warning("%s: training sample capped at %d of %d events (max_train_events); "
                "raise the cap in config to use more", what, cap, n)
    return df.iloc[keep].reset_index(drop=True), {"cap": cap, "applied": True, "n_before": n, "n_after": cap}


MAX_CLASSES = 50


def targets(df, task: str, target: str | None, raw_path: str | None, what: str, classes=None):
    """The labels / regression targets / class indices for ``df`` (None for unsupervised tasks).

    ``multiclass``: the target column's values mapped to indices into
    ``classes`` (learned from the training split when not given); a value not
    among ``classes`` becomes −1.
    """
    if task == "classification":
        y = df[LABEL].to_numpy()
        if len(np.unique(y)) < 2:
            raise DataError(f"{what}: the training labels have one class only")
        return y
    if task not in ("regression", "multiclass"):
        return None
    col = _target_column(df, task, target, raw_path, what)
    if task == "multiclass":
        if classes is None:
            classes = learn_classes(col, target, what)
        return encode_classes(col.to_numpy(), classes)
    y = col.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise DataError(f"{what}: regression target '{target}' has {int((~np.isfinite(y)).sum())} non-finite values")
    return y


def _target_column(df, task: str, target: str | None, raw_path: str | None, what: str):
    kind = "regression target" if task == "regression" else "class column"
    if not target:
        raise ConfigError(f"{what}: a {task} model needs 'target' (the {kind}'s name)")
    # the raw (unstandardised) split holds the target in physical units; the
    # prepared table only when the target is a derived column
    if raw_path is not None and _has_column(raw_path, target):
        raw = read_parquet(raw_path, columns=[EVENT_ID, target])
        col = raw.set_index(EVENT_ID)[target].reindex(df[EVENT_ID].to_numpy())
    elif target in df.columns:
        col = df[target]
    else:
        where = f"{raw_path} or the prepared features" if raw_path else "the prepared features"
        raise DataError(f"{what}: {kind} '{target}' not found in {where}")
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    if not is_numeric_dtype(col.dtype) or is_bool_dtype(col.dtype):
        raise DataError(f"{what}: {kind} '{target}' is not numeric (dtype {col.dtype})")
    return col


def learn_classes(col, target: str, what: str) -> list:
    """The sorted distinct values of a multiclass target (2 to MAX_CLASSES of them)."""
    v = np.asarray(col, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise DataError(f"{what}: class column '{target}' has {int((~np.isfinite(v)).sum())} non-finite values")
    classes = np.unique(v)
    if len(classes) < 2:
        raise DataError(f"{what}: class column '{target}' has one class only in the training split")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{what}: class column '{target}' has {len(classes)} distinct values (at most "
                        f"{MAX_CLASSES}); a multiclass target holds class labels — use task 'regression' "
                        "for a continuous target")
    return [int(c) if float(c).is_integer() else float(c) for c in classes]


def encode_classes(values, classes) -> np.ndarray:
    """Indices of ``values`` into ``classes``; −1 where a value is not a class."""
    ref = np.asarray(classes, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    idx = np.clip(np.searchsorted(ref, v), 0, len(ref) - 1)
    return np.where(ref[idx] == v, idx, -1).astype(np.int64)


def training_classes(train_path: str, spec: dict, what: str, raw_path: str | None = None) -> list:
    """The classes of a multiclass model: the distinct target values of the training split."""
    target = spec.get("target")
    df = read_parquet(train_path, columns=[EVENT_ID] + ([target] if target and _has_column(train_path, target) else []))
    return learn_classes(_target_column(df, "multiclass", spec.get("target"), raw_path, what),
                         spec.get("target"), what)


def _has_column(path, column) -> bool:
    import pyarrow.parquet as pq

    return column in pq.read_schema(path).names


def load_split(path: str, spec: dict, what: str, raw_path: str | None = None, cap=None, classes=None):
    """Read a feature table and return (X, y, w_raw, df, columns, cap_record).

    ``classes`` (multiclass): the training classes; events of another class are
    left out (with a warning), since the model cannot predict them."""
    task = spec.get("task", "classification")
    df = read_parquet(path)
    if task == "anomaly":
        df = df[df[LABEL] == 0].reset_index(drop=True)
        if df.empty:
            raise DataError(f"{what}: anomaly detection trains on background, but {path} has no background events")
    df, cap_rec = cap_events(df, cap, what)
    if df.empty:
        raise DataError(f"{what}: {path} has no events")
    cols = select_features(df, spec.get("features"), spec.get("target"))
    y = targets(df, task, spec.get("target"), raw_path, what, classes)
    if task == "multiclass":
        if (y < 0).any():
            log.warning("%s: %d events of a class absent from training are left out", what, int((y < 0).sum()))
            df, y = df[y >= 0].reset_index(drop=True), y[y >= 0]
        if classes is not None and len(df) and len(np.unique(y)) < len(classes) and cap:
            absent = [c for i, c in enumerate(classes) if i not in set(y.tolist())]
            raise DataError(f"{what}: class(es) {absent} of '{spec.get('target')}' have no events left after "
                            f"the training cap of {cap} events; raise max_train_events")
    X = df[cols].to_numpy(dtype=np.float32)
    return X, y, df[WEIGHT].to_numpy(dtype=np.float64), df, cols, cap_rec


def _replace_dir(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train(train_path: str, validation_path: str, model: str, spec: dict, out_dir: str,
          record_out: str, seed: int = 42, threads: int = 1, raw: dict | None = None,
          tuned: str | None = None, energy: dict | None = None) -> dict:
    """Fit ``spec`` (family, task, params, ...) and write the model and its record.

    ``tuned``: a tuning record (from the tune step); its best params replace the config's.
    ``energy``: the config's energy settings; the fit is metered (see :mod:`.energy`)
    and the record gets ``energy.train`` (and ``energy.tuning`` from the tuning record).
    """
    from .energy import step_meter

    raw = raw or {}
    what = f"model '{model}'"
    if "family" not in spec:
        raise ConfigError(f"models.{model}: 'family' is required")
    tuning = None
    if tuned:
        from .io import read_json

        tuning = read_json(tuned)
        spec = {**spec, "params": tuning["best_params"]}
    task = spec.get("task", "classification")
    cls = registry.get(spec["family"])
    device = registry.requested_device(spec)
    family = cls(task=task, params=spec.get("params") or {}, seed=seed, n_threads=threads, device=device)
    cap = spec.get("max_train_events", cls.max_train_events)
    classes = None
    if task == "multiclass":
        classes = training_classes(train_path, spec, what, raw.get("train"))
    X, y, w, df, cols, cap_rec = load_split(train_path, spec, what, raw.get("train"), cap, classes)
    Xv, yv, wv, dfv, _, _ = load_split(validation_path, spec, what + " (validation)", raw.get("validation"),
                                       classes=classes)
    weighting = spec.get("weighting", "balanced")
    sw = fit_weights(w, y, weighting, task)
    swv = fit_weights(wv, yv, weighting, task)
    if task in ("clustering", "dimreduction") and len(X) < 2:
        raise DataError(f"{what}: {len(X)} training events are too few for {task}")
    if classes is not None:
        family.n_classes = len(classes)
    meter = step_meter(energy, device, cls.gpu_capable)
    t0, c0 = time.perf_counter(), time.process_time()
    with meter:
        family.fit(X, y, sample_weight=sw, X_val=Xv, y_val=yv, w_val=swv)
    fit_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    meter.set_events(len(X))
    train_energy = {**meter.record, "device": family.info.get("device", meter.device)}
    meta = {"model": model, "family": cls.name, "task": task, "params": family.params, "seed": seed,
            "features": cols, "target": spec.get("target"), "file_format": cls.file_format,
            "device": device}  # the request: inference resolves it again where it runs
    if classes is not None:
        meta["classes"] = classes  # class index i of the scores is the target value classes[i]
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        meta["files"] = family.save(tmp)
        if hasattr(family, "export_onnx"):  # a portable copy for C++/ONNX Runtime inference
            family.export_onnx(tmp / "model.onnx", n_features=len(cols))
            meta["onnx"] = "model.onnx"
        write_json(tmp / registry.META_FILE, meta)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record = {
        **meta, "weighting": weighting, "n_train": int(len(X)), "n_validation": int(len(Xv)),
        "sum_weights_train": float(w.sum()), "train_cap": cap_rec, "fit_seconds": fit_s,
        "fit_cpu_seconds": cpu_s, "threads": threads, "device": family.info.get("device", "cpu"),
        "info": family.info, "history": family.history,
        "energy": {"train": train_energy, **({"tuning": tuning["energy"]} if tuning and tuning.get("energy") else {})},
        "tuning": None if tuning is None else {
            k: tuning.get(k) for k in ("objective", "direction", "split", "baseline_value", "best_value",
                                       "n_trials", "n_complete", "n_pruned", "n_failed", "wall_seconds",
                                       "budget")},
    }
    write_json(record_out, record)
    log.info("%s (%s, %s): trained on %d events in %.2f s", model, cls.name, task, len(X), fit_s)
    return record


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--train", required=True, help="prepared training split (features)")
        p.add_argument("--validation", required=True, help="prepared validation split (features)")
        p.add_argument("--raw-train", help="unprepared training split (for regression targets)")
        p.add_argument("--raw-validation")
        p.add_argument("--model", required=True)
        p.add_argument("--spec", type=cli.json_arg, required=True, help="the model's config entry as JSON")
        p.add_argument("--out", required=True, help="model directory")
        p.add_argument("--record", required=True, help="training record JSON")
        p.add_argument("--seed", type=int, default=42)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--tuned", help="tuning record whose best params to use")
        p.add_argument("--energy", type=cli.json_arg, default={}, help="energy settings (config 'energy') as JSON")

    return cli.run(build, lambda a: train(a.train, a.validation, a.model, a.spec, a.out, a.record, a.seed,
                                          a.threads, {"train": a.raw_train, "validation": a.raw_validation},
                                          a.tuned, a.energy), argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
