"""Publish a model's results to MLflow: one run per model per pipeline run.

Steps never talk to MLflow themselves: they write files, and this step (a
local rule, so it runs on the submit host even on a cluster) publishes them.
Parallel jobs, and several pipelines sharing one store, are safe: publishing
is serialised per store (see :mod:`hepml_steps.tracking_store`, which also
builds a new sqlite store atomically, fails fast on an unreachable server and
turns store errors into one line). Every run is tagged with a fingerprint of
what it publishes (model files, metrics, trials, and the publishing layout
:data:`LAYOUT`), so re-publishing unchanged results reuses the existing run
instead of creating a duplicate, and with its origin (host and results
folder), so a run left RUNNING by a killed job is marked FAILED on the next
publish of that model. Models and metrics stay on disk whatever happens here:
a later run publishes them without retraining. Each model is published as
soon as it is evaluated; once all are, ``track summary`` attaches the
leaderboard and the comparison plots to every run.

What a run holds:

* **The model** as an MLflow model named ``model`` (pyfunc flavor, signature,
  input example, pinned requirements; see :mod:`hepml_steps.mlflow_model`):
  ``mlflow.pyfunc.load_model("runs:/<run_id>/model")``. With
  ``tracking.register`` it is also registered as ``hepml-<experiment>-<model>``
  (:func:`hepml_steps.mlflow_model.registered_name`).
* **Artifacts, one folder per kind**, so no two files collide: ``metrics/``,
  ``importance/``, ``records/`` (train and predict records), ``predictions/``,
  ``plots/``, ``tuning/``, ``config/`` (``resolved.yaml``: the merged config
  with defaults; ``model.yaml``: this model's resolved entry) and, from the
  summary, ``leaderboard/`` and ``plots/summary/``. Hidden and Snakemake
  bookkeeping files (``.snakemake_timestamp``, temp files) are never uploaded.
* **Dataset lineage**: one input per split file the model used (the prepared
  ``features/<split>.parquet``), context ``training``/``validation``/``test``,
  its schema, and the file's SHA-256 (the digest holds its first 32 hex
  digits, MLflow's limit being 36 characters; the input tag ``hepml.sha256``
  the whole).
* **The real times**: the run starts when training started and ends when the
  model's evaluation ended (:func:`run_times`), so durations are the model's,
  not the publishing's.
* **Provenance tags**: ``hepml.git_commit`` (the workflow's checkout, ``-dirty``
  with uncommitted changes, ``unknown`` outside git), ``hepml.version``,
  ``mlflow.source.git.commit``, host and results folder.

Tracking URI: ``tracking.uri`` from config if set, else ``MLFLOW_TRACKING_URI``,
else ``sqlite:///<results>/mlflow.db`` (MLflow 3 refuses the ``./mlruns`` file
store). An ``http://`` URI sends everything to that server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

from . import __version__, cli, stopping
from . import tracking_store as store
from .errors import ConfigError, DataError
from .io import read_json, write_json
from .registry import META_FILE

log = logging.getLogger("hepml.track")

FINGERPRINT_TAG = "hepml.fingerprint"
ORIGIN_TAG = "hepml.origin"
#: version of what a run holds and where; part of the fingerprint, so runs
#: published in an older layout are not reused
LAYOUT = "2"
#: MLflow's dataset context of each split
CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}
#: files that are never uploaded: Snakemake's and editors' bookkeeping, temp files
_JUNK_SUFFIXES = (".tmp", ".swp", "~")


def resolve_uri(uri: str | None, results_dir: str) -> str:
    return uri_and_source(uri, results_dir)[0]


def uri_and_source(uri: str | None, results_dir: str) -> tuple[str, str]:
    """The tracking URI and where it came from (for error messages)."""
    if uri:
        return str(uri), "tracking.uri"
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env, "MLFLOW_TRACKING_URI"
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}", "tracking store"


def origin(results_dir: str) -> str:
    """``host:/abs/results``: which pipeline a run comes from."""
    return f"{socket.gethostname()}:{Path(results_dir).resolve()}"


def visible_files(directory: str | os.PathLike) -> list[Path]:
    """Files under ``directory`` worth publishing, sorted: none hidden or under a
    hidden folder (``.snakemake_timestamp``, ``.snakemake*``, atomic writes' temp
    files), no ``*.tmp``, ``*.swp``, ``*~``, no ``__pycache__``."""
    root = Path(directory)
    found = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if (
            path.is_file()
            and not any(p.startswith(".") or p == "__pycache__" for p in parts)
            and not path.name.endswith(_JUNK_SUFFIXES)
        ):
            found.append(path)
    return sorted(found)


def fingerprint(model: str, files: dict[str, Path]) -> str:
    """SHA-256 over the layout version, the model name and each ``name -> file``'s bytes."""
    h = hashlib.sha256(f"{LAYOUT}\0{model}".encode())
    for name in sorted(files):
        h.update(f"\0{name}\0".encode())
        h.update(Path(files[name]).read_bytes())
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in ``chunk``-byte blocks (memory stays flat for large files)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_commit(directory: str | os.PathLike | None) -> str:
    """``<HEAD sha>`` of the git checkout holding ``directory``, ``<sha>-dirty`` when
    tracked files have uncommitted changes (or their state cannot be read), ``unknown``
    when there is no directory, no git or no checkout."""
    if not directory:
        return "unknown"
    git = ["git", "-C", str(directory)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--verify", "HEAD"], capture_output=True, text=True, timeout=30, check=False
        )
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = status.returncode != 0 or bool(status.stdout.strip())
    return head.stdout.strip() + ("-dirty" if dirty else "")


def _epoch_s(value) -> float:
    """Seconds since the epoch from a number or an ISO 8601 string (naive = local time)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def run_times(rec: dict, record: str, model_files: list[Path], ends: list[str]) -> tuple[int, int]:
    """(start, end) of a model's run, in ms since the epoch.

    Start: the train record's ``started_at`` (epoch seconds or ISO 8601) when it
    has one; else the end of the fit minus ``fit_seconds``, the end of the fit
    being when the train step wrote the first model file (the earliest mtime in
    the model directory; the record's own mtime when it is empty). End: the
    latest mtime of ``ends`` (the predict record and the metrics: when the
    model's evaluation finished), never before the start.
    """
    if rec.get("started_at") is not None:
        start = _epoch_s(rec["started_at"])
    else:
        fit_end = min((f.stat().st_mtime for f in model_files), default=Path(record).stat().st_mtime)
        start = fit_end - float(rec.get("fit_seconds") or 0.0)
    end = max([Path(e).stat().st_mtime for e in ends if e], default=start)
    return int(start * 1000), int(max(end, start) * 1000)


def _flatten(prefix: str, obj, out: dict) -> dict:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj if isinstance(obj, (int, float, str, bool)) or obj is None else json.dumps(obj)
    return out


def _experiment_id(client, name: str, artifact_root: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root)
    except Exception:  # created meanwhile by another process (e.g. against a server)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


#: Optuna trial state -> MLflow run status (MLflow has no "pruned": a pruned
#: trial was stopped on purpose, so KILLED, with the tag hepml.trial_state=PRUNED)
TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def _log_trials(client, exp_id: str, parent: str, model: str, trials: str, tags: dict) -> None:
    """One nested run per tuning trial under the model's run.

    The trials table has durations but no clock times: the trials are laid out
    one after the other, the last ending when the table was written.
    """
    import pandas as pd
    from mlflow.entities import Metric, Param

    table = pd.read_csv(trials).sort_values("number")
    seconds = [float(s) if s == s else 0.0 for s in table.get("seconds", pd.Series(0.0, index=table.index))]
    t = Path(trials).stat().st_mtime - sum(seconds)
    for row, took in zip(table.to_dict("records"), seconds):
        child = client.create_run(
            exp_id,
            run_name=f"{model}-trial-{row['number']}",
            start_time=int(t * 1000),
            tags={
                **tags,
                "mlflow.parentRunId": parent,
                "hepml.trial": str(row["number"]),
                "hepml.trial_state": str(row["state"]),
            },
        )
        params = [Param(k.removeprefix("param."), str(v)) for k, v in row.items() if k.startswith("param.") and v == v]
        ts = int(child.info.start_time)
        # the objective under its own name (the table's column, e.g. roc_auc), seconds, J/event, ...
        mets = [
            Metric(k, float(v), ts, 0)
            for k, v in row.items()
            if k not in ("number", "state")
            and not k.startswith("param.")
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and v == v
        ]
        client.log_batch(child.info.run_id, metrics=mets, params=params)
        t += took
        client.set_terminated(child.info.run_id, TRIAL_STATUS.get(str(row["state"]), "FAILED"), end_time=int(t * 1000))


def _params(rec: dict) -> dict:
    return _flatten(
        "",
        {
            "family": rec.get("family"),
            "task": rec.get("task"),
            "params": rec.get("params"),
            "weighting": rec.get("weighting"),
            "n_features": len(rec.get("features", [])),
            "seed": rec.get("seed"),
            "n_train": rec.get("n_train"),
            "target": rec.get("target"),
            "classes": rec.get("classes"),
        },
        {},
    )


def _log_values(client, run, rec: dict, met: dict) -> None:
    """Params, metrics (with the learning curves as steps) and the device and energy tags."""
    from mlflow.entities import Metric, Param, RunTag

    params = _params(rec)
    values = {
        k: float(v)
        for k, v in (met.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
    }
    values["fit_seconds"] = float(rec.get("fit_seconds", 0.0))
    energy = (met.get("extra") or {}).get("energy") or {}
    energy_tags = []
    for step, e in energy.items():
        for k in ("energy_j", "j_per_event", "events_per_s", "wall_s", "cpu_s", "peak_rss_mib", "co2_g"):
            if isinstance((e or {}).get(k), (int, float)):
                values[f"energy.{step}.{k}"] = float(e[k])
        if (e or {}).get("method"):
            energy_tags.append(RunTag(f"hepml.energy.{step}.method", str(e["method"])))
    ts = int(run.info.start_time)
    metric_list = [Metric(k, v, ts, 0) for k, v in values.items()]
    for key, series in (rec.get("history") or {}).items():
        metric_list += [Metric(f"curve.{key}", float(v), ts, i) for i, v in enumerate(series)]
    for i in range(0, len(metric_list), 900):  # MLflow's batch limit is 1000 metrics
        client.log_batch(
            run.info.run_id,
            metrics=metric_list[i : i + 900],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()] if i == 0 else [],
            tags=[RunTag("hepml.device", str(rec.get("device", "")))] + energy_tags if i == 0 else [],
        )


def _log_files(client, run_id: str, files: dict[str, list[str]], dirs: dict[str, str]) -> None:
    """``files``: artifact folder -> files; ``dirs``: artifact folder -> directory
    whose :func:`visible_files` go there (keeping their sub-folders)."""
    for where, paths in files.items():
        for path in paths:
            if path:
                client.log_artifact(run_id, str(path), artifact_path=where)
    for where, directory in dirs.items():
        for path in visible_files(directory):
            sub = path.parent.relative_to(directory).as_posix()
            client.log_artifact(run_id, str(path), artifact_path=where if sub == "." else f"{where}/{sub}")


def _log_config(client, run_id: str, config: dict | None, spec: dict | None) -> None:
    import yaml

    for name, obj in (("resolved.yaml", config), ("model.yaml", spec)):
        if obj is not None:
            client.log_text(run_id, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True), f"config/{name}")


def _log_datasets(client, run_id: str, datasets: dict[str, str]) -> None:
    """One dataset input per split file: name, source path, schema, SHA-256."""
    import warnings

    import pyarrow.parquet as pq
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.models import infer_signature
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for split, path in datasets.items():
        p = Path(path).resolve()
        digest = sha256_file(p)
        # MLflow's hints (integer columns and missing values; "can be interpreted in
        # multiple ways": both ways are a local file) are not for this use
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            schema = infer_signature(pq.read_schema(p).empty_table().to_pandas()).inputs
            source = resolve_dataset_source(str(p))
        ds = MetaDataset(source, name=f"{p.parent.name}/{p.name}", digest=digest[:32], schema=schema)
        inputs.append(
            DatasetInput(
                ds._to_mlflow_entity(),
                tags=[InputTag(MLFLOW_DATASET_CONTEXT, CONTEXTS.get(split, split)), InputTag("hepml.sha256", digest)],
            )
        )
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


@contextlib.contextmanager
def _staged(model_dir: str, model_files: list[Path], name: str):
    """A temp folder ``<name>/`` holding only ``model_files`` (hard links where possible)."""
    with tempfile.TemporaryDirectory(prefix="hepml-model-") as tmp:
        staged = Path(tmp) / name
        for f in model_files:
            dst = staged / f.relative_to(model_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, dst)
            except OSError:
                shutil.copy2(f, dst)
        yield staged


def _published(client, experiment: str, artifact_root: str | None, tags: dict, fp: str):
    """``(experiment id, id of the FINISHED run with fingerprint fp or None)``, after
    closing this model's runs from this origin left RUNNING. Call under the store lock."""
    exp_id = _experiment_id(client, experiment, artifact_root)
    # the store lock is held: no live publisher of this model from this origin exists
    store.close_stale_runs(
        client, exp_id, tags, "left RUNNING by a track job that died; closed by the next publish of this model"
    )
    # only a FINISHED run counts: one whose publishing died half-way is not reused
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fp}' and attributes.status = 'FINISHED'", max_results=1
    )
    return exp_id, (found[0].info.run_id if found else None)


def _logged_model_id(client, run_id: str, name: str = "model") -> str | None:
    outputs = client.get_run(run_id).outputs
    for out in outputs.model_outputs if outputs else []:
        if client.get_logged_model(out.model_id).name == name:
            return out.model_id
    return None


def track(
    model: str,
    record: str,
    metrics: str,
    predictions: str,
    model_dir: str,
    out: str,
    results_dir: str = "results",
    uri: str | None = None,
    experiment: str = "hepml",
    inference: str | None = None,
    importance: str | None = None,
    plots_dir: str | None = None,
    trials: str | None = None,
    datasets: dict[str, str] | None = None,
    config: dict | None = None,
    spec: dict | None = None,
    workflow_dir: str | None = None,
    register: bool = False,
) -> dict:
    """Log one trained and evaluated model as an MLflow run; write the run's ids to ``out``.

    ``record``/``inference``: the train and predict records; ``importance``: the
    importance file; ``plots_dir``: the model's figures; ``trials``: the tuning
    trials table, also logged as nested child runs (one per trial);
    ``datasets``: split name -> prepared split file the model used (lineage,
    and the first rows of ``test`` are the model's input example);
    ``config``/``spec``: the resolved config and this model's entry;
    ``workflow_dir``: the checkout whose commit is recorded; ``register``:
    register the model (also when an unchanged run is reused). A run of this
    model from this results folder left RUNNING by a killed job is marked FAILED.

    Raises
    ------
    ConfigError
        Empty experiment name.
    HepmlError
        The store is unreachable, half-built or fails (one line naming the URI);
        ``out`` is not written, the model and its metrics stay for a rerun.
    """
    if not experiment:
        raise ConfigError("tracking.experiment must be a non-empty name")
    uri, source = uri_and_source(uri, results_dir)
    rec, met = read_json(record), read_json(metrics)
    datasets = dict(datasets or {})
    model_files = visible_files(model_dir)
    fp = fingerprint(
        model,
        {
            **{f"model/{f.relative_to(model_dir).as_posix()}": f for f in model_files},
            "metrics": Path(metrics),
            **({"trials": Path(trials)} if trials else {}),
        },
    )
    tags = {"hepml.model": model, ORIGIN_TAG: origin(results_dir)}
    artifact_root = None
    if uri.startswith("sqlite:"):
        # beside the database: pipelines sharing the store must not keep their
        # artifacts in the results folder of whichever created the experiment
        db = store.sqlite_path(uri)
        artifact_root = ((db.resolve().parent if db else Path(results_dir).resolve()) / "mlartifacts").as_uri()
    log.info("%s: publishing to %s", model, uri)
    with store.session(uri, source) as client:
        exp_id, run_id = _published(client, experiment, artifact_root, tags, fp)
    from . import mlflow_model

    if run_id is None:  # outside the store lock, which parallel publishers wait for
        mlflow_model.warm_up(model_dir)
    with store.session(uri, source) as client:
        exp_id, run_id = _published(client, experiment, artifact_root, tags, fp)  # again, under this lock
        reused = run_id is not None
        if reused:
            log.info("%s: unchanged since MLflow run %s; not logging a duplicate", model, run_id)
        else:
            files = {
                "record": record,
                "metrics": metrics,
                "predictions": predictions,
                "model_dir": model_dir,
                "model_files": model_files,
                "inference": inference,
                "importance": importance,
                "plots_dir": plots_dir,
                "trials": trials,
                "datasets": datasets,
                "config": config,
                "spec": spec,
                "workflow_dir": workflow_dir,
            }
            run_id = _new_run(client, exp_id, uri, model, rec, met, tags, fp, files)
            log.info("%s: logged MLflow run %s in experiment '%s' at %s", model, run_id, experiment, uri)
        version = registered = None
        if register:
            model_id = _logged_model_id(client, run_id)
            if model_id is None:
                raise DataError(f"MLflow run {run_id} holds no model named 'model' to register")
            registered = mlflow_model.registered_name(experiment, model)
            version = mlflow_model.register(client, uri, registered, run_id, model_id)
            log.info("%s: registered as '%s' version %s", model, registered, version)
    result = {
        "model": model,
        "run_id": run_id,
        "experiment_id": exp_id,
        "experiment": experiment,
        "tracking_uri": uri,
        "reused": reused,
        "fingerprint": fp,
        "model_uri": f"runs:/{run_id}/model",
        "registered_model": registered,
        "registered_version": version,
    }
    write_json(out, result)
    return result


def _new_run(client, exp_id: str, uri: str, model: str, rec: dict, met: dict, tags: dict, fp: str, files: dict) -> str:
    """Create and fill the run of a model (see :func:`track` for ``files``'s keys); closed
    FINISHED with the model's end time, or FAILED if anything fails."""
    from . import mlflow_model

    start, end = run_times(rec, files["record"], files["model_files"], [files["metrics"], files["inference"]])
    commit = git_commit(files["workflow_dir"])
    provenance = {"hepml.git_commit": commit, "hepml.version": __version__}
    if commit != "unknown":
        provenance["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    if files["workflow_dir"]:
        provenance.update(
            {
                "mlflow.source.type": "LOCAL",
                "mlflow.source.name": str(Path(files["workflow_dir"]).resolve() / "Snakefile"),
            }
        )
    run = client.create_run(
        exp_id,
        run_name=model,
        start_time=start,
        tags={
            **tags,
            **provenance,
            FINGERPRINT_TAG: fp,
            "hepml.family": rec.get("family", ""),
            "hepml.task": rec.get("task", ""),
            "mlflow.runName": model,
        },
    )
    run_id = run.info.run_id
    try:
        _log_values(client, run, rec, met)
        _log_files(
            client,
            run_id,
            {
                "metrics": [files["metrics"]],
                "records": [files["record"], files["inference"]],
                "predictions": [files["predictions"]],
                "importance": [files["importance"]],
                "tuning": [files["trials"]],
            },
            {"plots": files["plots_dir"]} if files["plots_dir"] else {},
        )
        _log_config(client, run_id, files["config"], files["spec"])
        _log_datasets(client, run_id, files["datasets"])
        meta = read_json(Path(files["model_dir"]) / META_FILE)
        example = _input_example(files["model_dir"], files["datasets"].get("test"), meta)
        with _staged(files["model_dir"], files["model_files"], model) as staged:
            mlflow_model.log(
                str(staged),
                run_id,
                exp_id,
                uri,
                meta,
                example,
                params={k: str(v)[:6000] for k, v in _params(rec).items()},
                tags={**tags, "hepml.family": rec.get("family", "")},
            )
        if files["trials"]:
            _log_trials(client, exp_id, run_id, model, files["trials"], tags)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, stopping.Terminated) else "FAILED"  # SIGTERM, SIGINT: killed
        with contextlib.suppress(Exception):  # if this fails too, the next publish closes it
            client.set_terminated(run_id, status)
        raise
    client.set_terminated(run_id, "FINISHED", end_time=end)
    return run_id


def _input_example(model_dir: str, features_test: str | None, meta: dict):
    """A few test events as the model takes them: raw columns from the test split
    (``<results>/split/test.parquet``, beside ``<results>/features/test.parquet``)
    for a bundle, prepared features otherwise; None when that file is absent."""
    from . import mlflow_model

    if not features_test:
        return None
    cols = mlflow_model.input_columns(model_dir, meta)
    path = Path(features_test)
    if mlflow_model.has_bundle(model_dir):
        path = path.parents[1] / "split" / path.name
    return mlflow_model.input_example(str(path), cols) if path.is_file() else None


def attach_summary(
    runs: list[str],
    out: str,
    results_dir: str = "results",
    leaderboard: list[str] | tuple = (),
    plots_dir: str | None = None,
) -> dict:
    """Attach the cross-model results to every model's run, once all of them are
    published: ``leaderboard`` files under ``leaderboard/``, the comparison plots
    under ``plots/summary/``; write what was attached to ``out``.

    ``runs``: the per-model tracking records :func:`track` wrote (they name the
    run and the tracking URI). Keeping this apart from :func:`track` lets each
    model be published as soon as it is evaluated, while other models still train.
    ``results_dir`` is unused (the records name their stores); kept for the CLI.

    Raises
    ------
    DataError
        A leaderboard file does not exist.
    HepmlError
        A store is unreachable or fails (one line naming the URI).
    """
    recs = [read_json(r) for r in runs]
    files = [Path(a) for a in leaderboard]
    for f in files:
        if not f.is_file():
            raise DataError(f"summary artifact {f} does not exist")
    for uri in dict.fromkeys(r["tracking_uri"] for r in recs):
        with store.session(uri) as client:
            for rec in (r for r in recs if r["tracking_uri"] == uri):
                _log_files(
                    client, rec["run_id"], {"leaderboard": files}, {"plots/summary": plots_dir} if plots_dir else {}
                )
    log.info("attached %d file(s)%s to %d run(s)", len(files), " and the summary plots" if plots_dir else "", len(recs))
    result = {
        "runs": {r["model"]: r["run_id"] for r in recs},
        "artifacts": [f"leaderboard/{f.name}" for f in files],
        "plots_dir": plots_dir,
    }
    write_json(out, result)
    return result


def _split_file(text: str) -> tuple[str, str]:
    import argparse

    split, sep, path = text.partition("=")
    if not sep or not split or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SPLIT=PATH")
    return split, path


def main(argv=None) -> int:
    def build(p):
        sub = p.add_subparsers(dest="what", required=True)
        ps = sub.add_parser("summary", help="attach leaderboard and comparison plots to every run")
        ps.add_argument("--runs", nargs="+", required=True, help="tracking records of the models")
        ps.add_argument("--out", required=True, help="summary record JSON")
        ps.add_argument("--results-dir", default="results")
        ps.add_argument("--leaderboard", action="append", default=[], help="leaderboard file (repeatable)")
        ps.add_argument("--plots-dir", help="comparison plots")
        p = sub.add_parser("model", help="publish one model as an MLflow run")
        p.add_argument("--model", required=True, help="model name")
        p.add_argument("--record", required=True, help="train record JSON")
        p.add_argument("--inference-record", help="predict record JSON")
        p.add_argument("--metrics", required=True, help="metrics JSON")
        p.add_argument("--importance", help="importance JSON")
        p.add_argument("--predictions", required=True, help="predictions Parquet")
        p.add_argument("--model-dir", required=True, help="model directory of the train step")
        p.add_argument("--plots-dir", help="the model's plots")
        p.add_argument("--trials", help="tuning trials CSV (logged as nested runs too)")
        p.add_argument(
            "--dataset",
            action="append",
            default=[],
            type=_split_file,
            metavar="SPLIT=PATH",
            help="a prepared split file the model used (lineage; repeatable)",
        )
        p.add_argument("--config", type=cli.json_arg, help="the resolved config as JSON")
        p.add_argument("--spec", type=cli.json_arg, help="this model's resolved config entry as JSON")
        p.add_argument("--workflow-dir", help="the workflow's folder (its git commit is recorded)")
        p.add_argument("--register", action="store_true", help="register the model in the Model Registry")
        p.add_argument("--out", required=True, help="tracking record JSON")
        p.add_argument("--results-dir", default="results")
        p.add_argument(
            "--uri",
            default=None,
            help="tracking URI ('' or absent: $MLFLOW_TRACKING_URI, else sqlite:///<results>/mlflow.db)",
        )
        p.add_argument("--experiment", default="hepml")

    def call(a):
        if a.what == "summary":
            attach_summary(a.runs, a.out, a.results_dir, a.leaderboard, a.plots_dir)
        else:
            track(
                a.model,
                a.record,
                a.metrics,
                a.predictions,
                a.model_dir,
                a.out,
                a.results_dir,
                a.uri or None,
                a.experiment,
                a.inference_record,
                a.importance,
                a.plots_dir,
                a.trials,
                dict(a.dataset),
                a.config,
                a.spec,
                a.workflow_dir,
                a.register,
            )

    return cli.run(build, call, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
