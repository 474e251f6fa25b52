"""A training job killed from outside (as a scheduler does) fails the run; the
rerun redoes only that model, never the models that had finished."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "config" / "tiny.yaml"
CONFIG = """
select_models: [logreg, slow]
tracking: {enabled: false}
models:
  slow: {family: mlp, params: {hidden_layers: [8], epochs: 100000, early_stopping_patience: 0, batch_size: 64}}
"""


def snakemake_cmd(workdir, cfg, *extra):
    return [str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory",
            str(workdir), "--configfile", str(TINY), str(cfg), "--cores", "2", *extra]


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
    proc = subprocess.Popen(snakemake_cmd(tmp_path, cfg, "--keep-going"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
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
    dry = subprocess.run(snakemake_cmd(tmp_path, cfg, "-n", "--rerun-incomplete"), capture_output=True,
                         text=True, env=env, timeout=300)
    plan = dry.stdout + dry.stderr
    assert dry.returncode == 0, plan[-3000:]
    jobs = [line.split()[0] for line in plan.split("Job stats:")[1].splitlines()[3:] if line.strip()
            and not line.startswith("total")]
    assert "train" in jobs and "generate" not in jobs and "split" not in jobs
    planned_models = {line.split("model=")[1].split(",")[0].strip() for line in plan.splitlines()
                      if "wildcards: model=" in line}
    assert planned_models == {"slow"}, plan[-3000:]
    assert logreg_model.stat().st_mtime_ns == finished

