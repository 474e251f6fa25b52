"""Resuming after a crash.

A training job killed from outside (as a scheduler does) fails the run; the
rerun redoes only that model, never the models that had finished.

Snakemake itself killed with SIGKILL (a closed terminal, a login node ending the
session) leaves its lock in ``.snakemake/locks`` (file names only, no process
id) and marks the jobs it was running incomplete: the documented resume is
``snakemake --unlock`` and then the same command, whose ``--rerun-incomplete``
(set by the profiles and ``make demo``) redoes those jobs.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.workflow

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "config" / "tiny.yaml"
CONFIG = """
select_models: [logreg, slow]
tracking: {enabled: false}
models:
  slow: {family: mlp, params: {hidden_layers: [8], epochs: 100000, early_stopping_patience: 0, batch_size: 64}}
"""


def snakemake_cmd(workdir, cfg, *extra):
    return [
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(TINY),
        str(cfg),
        "--cores",
        "2",
        *extra,
    ]


def _group(pgid: int) -> dict[int, str]:
    """Live (not zombie) processes of process group ``pgid``: pid -> command line."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            pass  # exited meanwhile
    return found


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while _group(pgid) and time.time() < deadline:
        time.sleep(0.2)


def _train_pid(pgid: int, model: str):
    """The training process of ``model`` itself (not the shell Snakemake wraps it in),
    looked for only among the processes of the test's own process group."""
    pattern = re.compile(f"^\\S*python[0-9.]* -m hepml_steps.train .*--model {model} ")
    pids = [pid for pid, cmd in _group(pgid).items() if pattern.match(cmd)]
    return pids[0] if pids else None


def test_killed_job_fails_and_rerun_resumes(tmp_path):
    cfg = tmp_path / "resume.yaml"
    cfg.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    # its own session: the test kills only what it started
    proc = subprocess.Popen(
        snakemake_cmd(tmp_path, cfg, "--keep-going"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    logreg_model = tmp_path / "results" / "models" / "logreg"
    pid = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            pid = _train_pid(proc.pid, "slow")
            if pid and (tmp_path / "results" / "metrics" / "logreg.json").exists():
                break
            time.sleep(0.5)
        assert pid, "the slow training job never started"
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)  # what a scheduler does at the time limit
        out, _ = proc.communicate(timeout=600)
    finally:
        if _group(proc.pid):  # Snakemake, if stuck, and any job it left
            _killpg(proc.pid)
    assert proc.returncode != 0, out[-3000:]
    assert "train" in out and "slow" in out and "Error" in out
    assert not (tmp_path / "results" / "models" / "slow").exists()  # nothing half-written in place
    finished = logreg_model.stat().st_mtime_ns

    # the rerun plans only the killed model's jobs (and the summaries), not logreg's
    dry = subprocess.run(
        snakemake_cmd(tmp_path, cfg, "-n", "--rerun-incomplete"), capture_output=True, text=True, env=env, timeout=300
    )
    plan = dry.stdout + dry.stderr
    assert dry.returncode == 0, plan[-3000:]
    jobs = [
        line.split()[0]
        for line in plan.split("Job stats:")[1].splitlines()[3:]
        if line.strip() and not line.startswith("total")
    ]
    assert "train" in jobs and "generate" not in jobs and "split" not in jobs
    planned_models = {
        line.split("model=")[1].split(",")[0].strip() for line in plan.splitlines() if "wildcards: model=" in line
    }
    assert planned_models == {"slow"}, plan[-3000:]
    assert logreg_model.stat().st_mtime_ns == finished


# --- Snakemake itself killed mid-training -------------------------------------------

KILLED_CONFIG = """
select_models: [logreg, slow]
tracking: {enabled: true}
models:
  slow: {family: mlp, params: {hidden_layers: [8], epochs: 200, early_stopping_patience: 0, batch_size: 64}}
"""


def profile_cmd(workdir, cfg, *extra):
    """The documented command (``snakemake --profile profiles/local``, run from the
    project root) on the tiny config, with the results in ``workdir``."""
    return [
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--profile",
        "profiles/local",
        "--directory",
        str(workdir),
        "--configfile",
        str(TINY),
        str(cfg),
        *extra,
    ]


def run_bounded(cmd, env, timeout=300):
    """Run ``cmd`` in its own session; past ``timeout`` s, SIGKILL the whole session
    (a stuck Snakemake ignores SIGTERM, and its jobs would outlive it)."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[-3:])} ran past {timeout} s:\n{out[-4000:]}")
    finally:
        if _group(proc.pid):  # nothing it started may outlive it
            _killpg(proc.pid)
    return proc.returncode, out


def _mlflow_runs(db: Path, model: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("hepml")
    assert exp is not None
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`hepml.model` = '{model}'")


def test_snakemake_killed_mid_training_resumes(tmp_path):
    """``kill -9`` of Snakemake while slow trains and logreg's later jobs run: the
    orphaned slow training is let finish (its outputs look complete but are marked
    incomplete), logreg's orphaned jobs are killed, then the README's resume runs."""
    cfg = tmp_path / "killed.yaml"
    cfg.write_text(KILLED_CONFIG)
    res = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")

    # its own session: the test kills only Snakemake and the jobs it started
    first_log = tmp_path / "first_run.log"
    with open(first_log, "w") as log:
        proc = subprocess.Popen(
            profile_cmd(tmp_path, cfg), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    pgid = proc.pid
    try:
        # wait until logreg is trained (a job after it started, so Snakemake has
        # recorded it complete) while slow still trains
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, f"snakemake exited early:\n{first_log.read_text()[-3000:]}"
            assert time.time() < deadline, "logreg never finished training while slow trained"
            assert not (res / "records" / "slow.train.json").exists(), "slow trained too fast for the test"
            slow = [pid for pid, c in _group(pgid).items() if "hepml_steps.train" in c and "--model slow " in c]
            if slow and any((res / "logs" / step / "logreg.log").exists() for step in ("predict", "importance")):
                break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # Snakemake only, as `kill -9 <pid>` does
        proc.wait(timeout=30)
        deadline = time.time() + 240  # the orphaned training finishes and writes its outputs
        while any(pid in _group(pgid) for pid in slow) and time.time() < deadline:
            time.sleep(0.2)
        if _group(pgid):
            _killpg(pgid)  # logreg's orphaned jobs, if still running: killed mid-way
            _wait_group_gone(pgid, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if _group(pgid):
            _killpg(pgid)
    assert not _group(pgid), "jobs of the killed Snakemake still run"
    assert list((tmp_path / ".snakemake" / "locks").glob("*.lock"))  # the stale lock
    logreg_trained = {
        f: (res / f).stat().st_mtime_ns for f in ("records/logreg.train.json", "models/logreg/hepml_model.json")
    }
    assert (res / "records" / "slow.train.json").exists() and (res / "models" / "slow").is_dir()
    slow_orphan = (res / "records" / "slow.train.json").stat().st_mtime_ns

    # the same command alone stops at the stale lock: the README says to --unlock first
    rc, out = run_bounded(profile_cmd(tmp_path, cfg), env)
    assert rc != 0 and "Directory cannot be locked" in out, out[-3000:]
    rc, out = run_bounded(profile_cmd(tmp_path, cfg, "--unlock"), env)
    assert rc == 0 and "Unlocked" in out, out[-3000:]

    rc, out = run_bounded(profile_cmd(tmp_path, cfg), env)
    assert rc == 0, out[-4000:]
    board = pd.read_csv(res / "leaderboard.csv")
    assert set(board["model"]) == {"logreg", "slow"}
    for model in ("logreg", "slow"):
        assert json.loads((res / "metrics" / f"{model}.json").read_text())["metrics"]["roc_auc"] > 0.5
        assert json.loads((res / "tracking" / f"{model}.json").read_text())["model"] == model
        runs = [(r.info.run_id, r.info.status) for r in _mlflow_runs(res / "mlflow.db", model)]
        assert [status for _, status in runs] == ["FINISHED"], (model, runs)  # one, none left RUNNING
    assert (res / "tracking" / "summary.json").exists()
    # logreg had finished training: kept; slow is trained again, although its orphan finished
    assert {f: (res / f).stat().st_mtime_ns for f in logreg_trained} == logreg_trained
    assert (res / "records" / "slow.train.json").stat().st_mtime_ns != slow_orphan
    assert not list((tmp_path / ".snakemake" / "locks").glob("*.lock"))
