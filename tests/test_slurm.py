"""Live SLURM: the tiny workflow submitted through snakemake-executor-plugin-slurm
to a real single-node slurmctld/slurmd on 127.0.0.1 (see tests/slurm_cluster.py).

Opt-in (marker ``slurm_live``): it runs as root, only with ``HEPML_LIVE_SLURM=1``
(what ``.ci/run`` sets); otherwise tests/conftest.py skips it and says how to run it.
The cluster lives in a private mount namespace: the machine's /etc/slurm and
/etc/munge are checked byte for byte to be unchanged afterwards, and only jobs of
the cluster's own partition are ever cancelled, by id.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import Refused, local_slurm, snapshot

pytestmark = pytest.mark.slurm_live

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "config" / "tiny.yaml"

CONFIG = """
data: {toy: {n_events: 3000}}
training: {threads: 1}
gpu: {model: a100}
select_models: [logreg, mlp]
models:
  mlp: {family: mlp, gpus: 1, params: {hidden_layers: [8], epochs: 2}}
"""


SYSTEM_DIRS = ("/etc/slurm", "/etc/munge")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    before = snapshot(SYSTEM_DIRS)
    try:
        with local_slurm(keep_logs=tmp_path_factory.mktemp("slurm")) as c:
            yield c
    except Refused as exc:
        pytest.fail(str(exc))
    # the cluster's config lived in its namespace: the machine's files are untouched
    assert snapshot(SYSTEM_DIRS) == before


def _env(cluster):
    env = cluster.env({k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _slurm_args(partition):
    return [
        "--executor",
        "slurm",
        "--jobs",
        "4",
        "--default-resources",
        f"slurm_partition={partition}",
        "--slurm-no-account",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
    ]


def run_slurm(cluster, workdir, *extra, partition=None, timeout=900):
    cfg = Path(workdir) / "slurm.yaml"
    cfg.write_text(CONFIG)
    cmd = [
        "timeout",
        "-k",
        "20",
        str(timeout),
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(TINY),
        str(cfg),
        *_slurm_args(partition or cluster.partition),
        "--verbose",
        *extra,
    ]
    return subprocess.run(
        cluster.command(cmd, cwd=workdir), stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_env(cluster)
    )


def test_workflow_runs_through_slurm_with_gpu_request(cluster, tmp_path):
    res = run_slurm(cluster, tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-8000:]
    results = tmp_path / "results"
    for model in ("logreg", "mlp"):
        m = json.loads((results / "metrics" / f"{model}.json").read_text())
        assert m["metrics"]["roc_auc"] > 0.6
    # every step was submitted with sbatch, and SLURM's job-completion log has
    # one COMPLETED job per submission
    calls = {}
    for line in out.splitlines():
        if "sbatch call:" in line:
            rule = re.search(r"--comment '?rule_(\w+)", line)
            assert rule, line
            calls[rule.group(1)] = line
    assert {
        "generate",
        "split",
        "features",
        "train_wildcards_mlp",
        "train_wildcards_logreg",
        "predict_wildcards_mlp",
        "evaluate_wildcards_logreg",
        "leaderboard",
    } <= set(calls), list(calls)
    completed = cluster.jobcomp.read_text()
    assert completed.count("JobState=COMPLETED") == len(calls), completed
    assert "JobState=FAILED" not in completed
    # the GPU model's rules asked SLURM for a GPU; the CPU model's did not
    assert "--gpus=a100:1" in calls["train_wildcards_mlp"], calls["train_wildcards_mlp"]
    assert "--gpus" not in calls["train_wildcards_logreg"], calls["train_wildcards_logreg"]
    # the job saw the (fake) GPU and fell back to CPU, and said so
    rec = json.loads((results / "records" / "mlp.train.json").read_text())
    assert rec["device"] == "cpu"


def test_missing_partition_error_is_surfaced(cluster, tmp_path):
    res = run_slurm(cluster, tmp_path, "--until", "generate", partition="no_such_partition", timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "invalid partition" in out.lower() and "no_such_partition" in out, out[-4000:]


SLOW = """
select_models: [logreg, slow]
tracking: {enabled: false}
models:
  slow: {family: mlp, params: {hidden_layers: [8], epochs: 100000, early_stopping_patience: 0, batch_size: 64}}
"""


def _slurm_job(cluster, comment: str):
    out = cluster.client(["squeue", "-h", "-p", cluster.partition, "-o", "%i %T %k"])
    for line in out.splitlines():
        jobid, state, *rest = line.split()
        if rest and rest[0].startswith(comment) and state == "RUNNING":
            return jobid
    return None


def test_job_cancelled_by_slurm_fails_and_rerun_resumes(cluster, tmp_path):
    """scancel (what a scheduler does at the time limit) fails the run; the rerun
    plans only the cancelled model, never the one that had finished."""
    extra_cfg = tmp_path / "slow.yaml"
    extra_cfg.write_text(SLOW)
    env = _env(cluster)
    (tmp_path / "slurm.yaml").write_text(CONFIG)
    base = [
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(TINY),
        str(tmp_path / "slurm.yaml"),
        str(extra_cfg),
    ]
    slurm = [*_slurm_args(cluster.partition), "--keep-going"]
    proc = subprocess.Popen(
        cluster.command(["timeout", "-k", "20", "900", *base, *slurm], cwd=tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    jobid = None
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            jobid = _slurm_job(cluster, "rule_train_wildcards_slow")
            if jobid and (tmp_path / "results" / "metrics" / "logreg.json").exists():
                break
            time.sleep(1)
        assert jobid, "the slow training job never ran on SLURM"
        subprocess.run(cluster.command(["scancel", jobid]), check=True, env=cluster.env())
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.cancel_own_jobs()
    assert proc.returncode != 0, out[-3000:]
    assert jobid in out and "Error in rule train" in out, out[-3000:]
    assert not (tmp_path / "results" / "models" / "slow").exists()
    logreg_model = tmp_path / "results" / "models" / "logreg"
    finished = logreg_model.stat().st_mtime_ns
    dry = subprocess.run(
        [*base, "-n", "--rerun-incomplete", "--cores", "2"], capture_output=True, text=True, env=env, timeout=300
    )
    plan = dry.stdout + dry.stderr
    assert dry.returncode == 0, plan[-3000:]
    planned = {
        line.split("model=")[1].split(",")[0].strip() for line in plan.splitlines() if "wildcards: model=" in line
    }
    assert planned == {"slow"}, plan[-3000:]
    assert logreg_model.stat().st_mtime_ns == finished
