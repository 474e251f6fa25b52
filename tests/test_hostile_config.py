"""No config value is ever parsed by a shell.

Every free-text field of the config holds shell syntax ($(...), backticks, ';',
'||', '&', quotes, spaces, newlines). Each run either works with the literal
value or stops with one ``hepml: error:`` line naming the key; no payload ever
runs (it would create a ``pwned*`` file). The workflow runs with a PATH whose
``python`` is another interpreter: the steps must use Snakemake's own.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")

# shell syntax of every kind; no '/' (a path separator) so the payload is also a valid file name
PAYLOAD = "x $(touch pwned1) `touch pwned2`; touch pwned3 || touch pwned4 & 'q\" \\ y"
# ROOT reserves ';' (key cycle) and '/' (directory) in object names
TREE = "Events $(touch pwned5) `touch pwned6` || touch pwned7 'q\""

pytestmark = pytest.mark.workflow


def _fake_python(tmp_path: Path) -> Path:
    """A bin folder whose `python`/`python3` is not the test's interpreter."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name in ("python", "python3"):
        script = fake / name
        script.write_text("#!/bin/sh\necho 'wrong python on PATH' >&2\ntouch \"$PWD/pwned_python\"\nexit 97\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return fake


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    venv_bin = str(Path(sys.executable).parent)
    rest = [p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin]
    env["PATH"] = os.pathsep.join([str(_fake_python(tmp_path)), *rest])
    return env


def _snakemake(workdir: Path, config: dict, env: dict, *args, timeout=900):
    cfg = workdir / "hostile.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [
        SNAKEMAKE,
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(cfg),
        "--cores",
        "2",
        "--show-failed-logs",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def _pwned(workdir: Path) -> list[str]:
    return sorted(str(p) for p in workdir.rglob("pwned*"))


def _write_inputs(data: Path, n: int = 1200):
    """A signal ROOT TTree and a background Parquet file, with payload column names."""
    import uproot

    rng = np.random.default_rng(3)
    data.mkdir(parents=True)
    cols = {}
    for label, shift in ((1, 1.0), (0, 0.0)):
        cols[label] = {
            f"lab {PAYLOAD}": np.full(n, label, dtype=np.int32),
            f"w {PAYLOAD}": rng.uniform(0.5, 1.5, n),
            f"id {PAYLOAD}": np.arange(n, dtype=np.int64) + label * 10 * n,
            "f0": rng.normal(shift, 1.0, n),
            f"f1 {PAYLOAD}": rng.normal(0.5 * shift, 1.0, n),
        }
    sig = data / f"sig {PAYLOAD}.root"
    with uproot.recreate(sig) as f:
        tree = f.mktree(TREE, {k: v.dtype for k, v in cols[1].items()})
        tree.extend(cols[1])
    bkg = data / f"bkg {PAYLOAD}.parquet"
    pd.DataFrame(cols[0]).to_parquet(bkg, index=False)
    return sig, bkg


def test_every_free_text_field_is_literal(tmp_path):
    wd = tmp_path / "wd"
    sig, bkg = _write_inputs(wd / "data")
    results = f"out {PAYLOAD}"
    config = {
        "results": results,
        "data": {
            "source": "files",
            "files": {
                "inputs": [{"path": str(sig), "tree": TREE}, {"path": str(bkg)}],
                "label_column": f"lab {PAYLOAD}",
                "weight_column": f"w {PAYLOAD}",
                "event_id_column": f"id {PAYLOAD}",
                "columns": ["f0", f"f1 {PAYLOAD}"],
            },
        },
        "training": {"threads": 1},
        "select_models": ["bdt", "logreg"],
        "models": {
            "bdt": {"family": "xgboost", "params": {"n_estimators": 10, "max_depth": 2}},
            "logreg": {"family": "logistic_regression", "tune": {"enabled": True, "n_trials": 2, "timeout": 60}},
        },
        "tracking": {"experiment": PAYLOAD},
    }
    res = _snakemake(wd, config, _env(tmp_path))
    assert _pwned(wd) == []
    assert res.returncode == 0, res.stderr[-5000:]
    out = wd / results
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["model"]) == {"bdt", "logreg"}
    ingest = json.loads((out / "data" / "ingest.json").read_text())
    assert ingest["n_events"] == 2400
    assert (out / "tuning" / "logreg.json").exists()
    for model in ("bdt", "logreg"):
        run = json.loads((out / "tracking" / f"{model}.json").read_text())
        assert run["experiment"] == PAYLOAD
    assert (out / "tracking" / "summary.json").exists()


def test_toy_generation_with_a_hostile_results_folder(tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    results = f"toy {PAYLOAD}"
    config = {"results": results, "data": {"toy": {"n_events": 500, "chunk_size": 200}}}
    res = _snakemake(wd, config, _env(tmp_path), "--until", "ingest")
    assert _pwned(wd) == []
    assert res.returncode == 0, res.stderr[-5000:]
    assert pd.read_parquet(wd / results / "data" / "events.parquet").shape[0] == 500


@pytest.mark.parametrize(
    "config, key",
    [
        ({"results": "a\nb $(touch pwned8)"}, "results"),
        ({"results": "a{model}b"}, "results"),
        ({"select_models": [f"m {PAYLOAD}"], "models": {f"m {PAYLOAD}": {"family": "xgboost"}}}, "models"),
        ({"models": {"m\ntouch pwned9": {"family": "xgboost"}}}, "models"),
        ({"features": {"derived": {f"d {PAYLOAD}": "f0 + 1"}}}, "features.derived"),
        ({"features": {"derived": {"d\n$(touch pwned10)": "f0 + 1"}}}, "features.derived"),
    ],
)
def test_refused_values_name_their_key(tmp_path, config, key):
    wd = tmp_path / "wd"
    wd.mkdir()
    res = _snakemake(wd, config, _env(tmp_path), "-n")
    assert _pwned(wd) == []
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hepml: error: {key}:"), res.stderr[-2000:]
