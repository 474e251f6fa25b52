"""A training job killed from outside (as a scheduler does) fails the run; the
rerun redoes only that model, never the models that had finished."""
import os
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


def _train_pid(model: str):
    # the Python process itself (not the shell Snakemake wraps it in)
    out = subprocess.run(["pgrep", "-f", f"^\\S*python[0-9.]* -m hepml_steps.train .*--model {model} "],
                         capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


def test_killed_job_fails_and_rerun_resumes(tmp_path):
    cfg = tmp_path / "resume.yaml"
    cfg.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    proc = subprocess.Popen(snakemake_cmd(tmp_path, cfg, "--keep-going"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    logreg_model = tmp_path / "results" / "models" / "logreg"
    pid = None
    deadline = time.time() + 300
    while time.time() < deadline:
        pid = _train_pid("slow")
        if pid and (tmp_path / "results" / "metrics" / "logreg.json").exists():
            break
        time.sleep(0.5)
    assert pid, "the slow training job never started"
    time.sleep(1.0)
    try:
        os.kill(pid, signal.SIGKILL)  # what a scheduler does at the time limit
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["pkill", "-9", "-f", "hepml_steps.train .*--model slow "])
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
