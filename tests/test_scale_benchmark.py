"""benchmarks/scale.py at a tiny size: every step in its table, with numbers, and
the per-job benchmark files Snakemake writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.workflow

ROOT = Path(__file__).resolve().parents[1]
JOBS = [
    "generate",
    "ingest",
    "split",
    "features",
    *[f"{rule}/{m}" for rule in ("train", "predict", "evaluate", "importance", "plots") for m in ("bdt", "mlp")],
    "summary_plots",
    "leaderboard",
    "report_front",
]
SMALL = """
training: {stream_above_events: 0}  # both models stream: --bare-fit compares with the libraries streaming
models:
  bdt: {params: {n_estimators: 20, max_depth: 3}}
  mlp: {params: {hidden_layers: [8], epochs: 2, batch_size: 256}}
"""


def test_scale_benchmark_tiny(tmp_path):
    (tmp_path / "small.yaml").write_text(SMALL)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--events", "20000", "--baseline-events", "0"]
    cmd += ["--no-tracking", "--configfile", str(tmp_path / "small.yaml"), "--out", str(tmp_path / "out")]
    cmd += ["--json", str(tmp_path / "scale.json"), "--bare-fit", "--repeats", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    rows = {line.split()[0]: line.split() for line in res.stdout.splitlines() if line.split()}
    for job in JOBS:
        assert job in rows, (job, res.stdout)
        wall, _, peak = rows[job][1:4]
        assert float(wall) > 0 and float(peak) > 0, rows[job]
    for job in JOBS[:-2]:  # every step that reads events has a needed size, a ratio and a verdict
        assert float(rows[job][5]) > 0 and float(rows[job][6]) > 0 and rows[job][-1] in ("pass", "FAIL"), rows[job]
    assert "predict/bdt: step" in res.stdout and "predict/mlp: step" in res.stdout
    assert "train/bdt: streamed fit" in res.stdout and "train/mlp: streamed fit" in res.stdout

    bench = tmp_path / "out" / "events_20000" / "results" / "benchmarks"
    for job in JOBS:
        assert (bench / f"{job}.tsv").is_file(), job
    report = json.loads((tmp_path / "scale.json").read_text())
    steps = report["runs"][0]["steps"]
    assert set(JOBS) <= set(steps)
    assert all(steps[j]["wall_s"] > 0 and steps[j]["peak_rss_mib"] > 0 for j in JOBS)
    for model in ("bdt", "mlp"):  # rerun alone and timed against the bare library, once each (--repeats 1)
        predict, fit = report["runs"][0]["predict_vs_bare"][model], report["runs"][0]["fit_vs_bare"][model]
        assert len(predict["runs"]["step_s"]) == len(predict["runs"]["bare_s"]) == 1 and predict["ratio"] > 0
        assert (
            fit["fit_s"] > 0 and fit["bare_stream_s"] > 0 and fit["ratio_stream"] == fit["fit_s"] / fit["bare_stream_s"]
        )


def test_peak_of_a_step_adds_its_largest_helper_not_every_helper():
    """A step that starts a short helper process per batch (ldconfig) is not charged their sum."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scale", ROOT / "benchmarks" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    poller = scale.PeakPoller(pid=0)
    step, other = (10, 1), (20, 1)
    poller.job = {step: "predict/bdt", other: "evaluate/bdt"}
    poller.hwm = {step: 300, other: 500}
    for i in range(100):  # helpers of the step, one after another, and a grandchild
        poller.parent[(100 + i, 1)] = step
        poller.hwm[(100 + i, 1)] = 6 + (i == 50) * 20
    poller.parent[(999, 1)], poller.hwm[(999, 1)] = (150, 1), 40
    assert poller.steps() == {"predict/bdt": 340, "evaluate/bdt": 500}
