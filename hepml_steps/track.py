"""Publish a model's results to MLflow: one run per model per pipeline run.

Steps never talk to MLflow themselves: they write files, and this step (a
local rule, so it runs on the submit host even on a cluster) publishes them.
Parallel jobs, and several pipelines sharing one store, are safe: publishing
is serialised per store (see :mod:`hepml_steps.tracking_store`, which also
builds a new sqlite store atomically, fails fast on an unreachable server and
turns store errors into one line). Every run is tagged with a fingerprint of
what it publishes (model files, metrics), so re-publishing unchanged results
reuses the existing run instead of creating a duplicate, and with its origin
(host and results folder), so a run left RUNNING by a killed job is marked
FAILED on the next publish of that model. Models and metrics stay on disk
whatever happens here: a later run publishes them without retraining. Each
model is published as soon as it is evaluated; once all are, ``track
summary`` attaches the leaderboard and the comparison plots to every run.

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
import socket
from pathlib import Path

from . import cli
from . import tracking_store as store
from .errors import ConfigError, DataError
from .io import read_json, write_json

log = logging.getLogger("hepml.track")

FINGERPRINT_TAG = "hepml.fingerprint"
ORIGIN_TAG = "hepml.origin"


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


def fingerprint(model: str, files: list[Path]) -> str:
    h = hashlib.sha256(model.encode())
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


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


def _log_trials(client, exp_id: str, parent: str, model: str, trials: str, tags: dict) -> None:
    """One nested run per tuning trial under the model's run."""
    import pandas as pd
    from mlflow.entities import Metric, Param

    table = pd.read_csv(trials)
    for row in table.to_dict("records"):
        child = client.create_run(exp_id, run_name=f"{model}-trial-{row['number']}", tags={
            **tags, "mlflow.parentRunId": parent, "hepml.trial": str(row["number"]),
            "hepml.trial_state": str(row["state"])})
        params = [Param(k.removeprefix("param."), str(v)) for k, v in row.items()
                  if k.startswith("param.") and v == v]
        ts = int(child.info.start_time)
        mets = [Metric(k, float(row[k]), ts, 0) for k in ("value", "seconds")
                if row.get(k) is not None and row[k] == row[k]]
        client.log_batch(child.info.run_id, metrics=mets, params=params)
        client.set_terminated(child.info.run_id, "FINISHED" if row["state"] == "COMPLETE" else "FAILED")


def _log_contents(client, exp_id: str, run, model: str, rec: dict, met: dict, files: dict,
                  artifacts, plots_dir: str | None, trials: str | None, tags: dict) -> None:
    """Params, metrics, curves, tags and artifacts of a new run (``files``: the
    metrics, record and predictions files and the model directory; ``tags``:
    model and origin, given to the trial runs too)."""
    from mlflow.entities import Metric, Param, RunTag

    run_id = run.info.run_id
    params = _flatten("", {"family": rec.get("family"), "task": rec.get("task"),
                           "params": rec.get("params"), "weighting": rec.get("weighting"),
                           "n_features": len(rec.get("features", [])), "seed": rec.get("seed"),
                           "n_train": rec.get("n_train"), "target": rec.get("target"),
                           "classes": rec.get("classes")}, {})
    values = {k: float(v) for k, v in (met.get("metrics") or {}).items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
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
        client.log_batch(run_id, metrics=metric_list[i:i + 900],
                         params=[Param(k, str(v)[:6000]) for k, v in params.items()] if i == 0 else [],
                         tags=[RunTag("hepml.device", str(rec.get("device", "")))] + energy_tags if i == 0 else [])
    client.log_artifact(run_id, files["metrics"])
    client.log_artifact(run_id, files["record"])
    client.log_artifact(run_id, files["predictions"])
    client.log_artifacts(run_id, files["model_dir"], artifact_path="model")
    for extra in artifacts:
        client.log_artifact(run_id, extra)
    if plots_dir:
        client.log_artifacts(run_id, plots_dir, artifact_path="plots")
    if trials:
        client.log_artifact(run_id, trials)
        _log_trials(client, exp_id, run_id, model, trials, tags)


def track(model: str, record: str, metrics: str, predictions: str, model_dir: str, out: str,
          results_dir: str = "results", uri: str | None = None, experiment: str = "hepml",
          artifacts: list[str] | tuple = (), plots_dir: str | None = None,
          trials: str | None = None) -> dict:
    """Log one trained and evaluated model as an MLflow run; write the run's ids to ``out``.

    ``artifacts``: extra files to attach (leaderboard, importance, ...);
    ``plots_dir``: figures, attached under ``plots/``; ``trials``: the tuning
    trials table, logged as nested child runs (one per trial). A run of this
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
    model_files = sorted(p for p in Path(model_dir).iterdir() if p.is_file())
    fp = fingerprint(model, model_files + [Path(metrics)] + ([Path(trials)] if trials else []))
    tags = {"hepml.model": model, ORIGIN_TAG: origin(results_dir)}

    artifact_root = None
    if uri.startswith("sqlite:"):
        artifact_root = (Path(results_dir).resolve() / "mlartifacts").as_uri()
    log.info("%s: publishing to %s", model, uri)
    with store.session(uri, source) as client:
        exp_id = _experiment_id(client, experiment, artifact_root)
        # the store lock is held: no live publisher of this model from this origin exists
        store.close_stale_runs(client, exp_id, tags, "left RUNNING by a track job that died; "
                               "closed by the next publish of this model")
        # only a FINISHED run counts: one whose publishing died half-way is not reused
        found = client.search_runs([exp_id], filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fp}' "
                                   "and attributes.status = 'FINISHED'", max_results=1)
        if found:
            run_id, reused = found[0].info.run_id, True
            log.info("%s: unchanged since MLflow run %s; not logging a duplicate", model, run_id)
        else:
            run = client.create_run(exp_id, run_name=model, tags={
                **tags, FINGERPRINT_TAG: fp, "hepml.family": rec.get("family", ""),
                "hepml.task": rec.get("task", ""), "mlflow.runName": model})
            run_id, reused = run.info.run_id, False
            try:
                _log_contents(client, exp_id, run, model, rec, met, {"metrics": metrics, "record": record,
                              "predictions": predictions, "model_dir": model_dir}, artifacts, plots_dir,
                              trials, tags)
            except BaseException:
                with contextlib.suppress(Exception):  # if this fails too, the next publish closes it
                    client.set_terminated(run_id, "FAILED")
                raise
            client.set_terminated(run_id, "FINISHED")
            log.info("%s: logged MLflow run %s in experiment '%s' at %s", model, run_id, experiment, uri)
    result = {"model": model, "run_id": run_id, "experiment_id": exp_id, "experiment": experiment,
              "tracking_uri": uri, "reused": reused, "fingerprint": fp}
    write_json(out, result)
    return result


def attach_summary(runs: list[str], out: str, results_dir: str = "results",
                   artifacts: list[str] | tuple = (), plots_dir: str | None = None) -> dict:
    """Attach the cross-model results (leaderboard, comparison plots) to every
    model's run, once all of them are published; write what was attached to ``out``.

    ``runs``: the per-model tracking records :func:`track` wrote (they name the
    run and the tracking URI). Keeping this apart from :func:`track` lets each
    model be published as soon as it is evaluated, while other models still train.
    ``results_dir`` is unused (the records name their stores); kept for the CLI.

    Raises
    ------
    DataError
        An artifact does not exist.
    HepmlError
        A store is unreachable or fails (one line naming the URI).
    """
    recs = [read_json(r) for r in runs]
    files = [Path(a) for a in artifacts]
    for f in files:
        if not f.is_file():
            raise DataError(f"summary artifact {f} does not exist")
    for uri in dict.fromkeys(r["tracking_uri"] for r in recs):
        with store.session(uri) as client:
            for rec in (r for r in recs if r["tracking_uri"] == uri):
                for f in files:
                    client.log_artifact(rec["run_id"], str(f))
                if plots_dir:
                    client.log_artifacts(rec["run_id"], plots_dir, artifact_path="plots/summary")
    log.info("attached %d file(s)%s to %d run(s)", len(files), " and the summary plots" if plots_dir else "",
             len(recs))
    result = {"runs": {r["model"]: r["run_id"] for r in recs}, "artifacts": [f.name for f in files],
              "plots_dir": plots_dir}
    write_json(out, result)
    return result


def main(argv=None) -> int:
    def build(p):
        sub = p.add_subparsers(dest="what", required=True)
        ps = sub.add_parser("summary", help="attach leaderboard and comparison plots to every run")
        ps.add_argument("--runs", nargs="+", required=True, help="tracking records of the models")
        ps.add_argument("--out", required=True)
        ps.add_argument("--results-dir", default="results")
        ps.add_argument("--artifact", action="append", default=[])
        ps.add_argument("--plots-dir")
        p = sub.add_parser("model", help="publish one model as an MLflow run")
        p.add_argument("--model", required=True)
        p.add_argument("--record", required=True)
        p.add_argument("--metrics", required=True)
        p.add_argument("--predictions", required=True)
        p.add_argument("--model-dir", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--results-dir", default="results")
        p.add_argument("--uri", default=None)
        p.add_argument("--experiment", default="hepml")
        p.add_argument("--artifact", action="append", default=[])
        p.add_argument("--plots-dir")
        p.add_argument("--trials")

    def call(a):
        if a.what == "summary":
            attach_summary(a.runs, a.out, a.results_dir, a.artifact, a.plots_dir)
        else:
            track(a.model, a.record, a.metrics, a.predictions, a.model_dir, a.out, a.results_dir,
                  a.uri or None, a.experiment, a.artifact, a.plots_dir, a.trials)

    return cli.run(build, call, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
