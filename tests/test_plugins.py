"""A third-party family, installed as a package, runs through the real workflow."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """pip-install tests/plugin_pkg into a private directory (PYTHONPATH, not the venv)."""
    site = tmp_path_factory.mktemp("site")
    src = tmp_path_factory.mktemp("src") / "plugin_pkg"  # built from a copy: no build/ or egg-info in the repo
    shutil.copytree(ROOT / "tests" / "plugin_pkg", src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    return site


def env_with(site):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def test_registry_sees_plugin_and_names_broken_one(plugin_site):
    code = (
        "from hepml_steps import registry\n"
        "from hepml_steps.errors import FamilyError\n"
        "from hepml_steps.families import check_family\n"
        "assert 'nearest_centroid' in registry.available()\n"
        "print(registry.get('nearest_centroid').__module__)\n"
        "check_family(registry.get('nearest_centroid'))\n"
        "try:\n    registry.get('broken_family')\n"
        "except FamilyError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env_with(plugin_site), capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[0] == "hepml_plugin_demo"  # found through its entry point, and it passes the kit
    assert "plugin family 'broken_family'" in out and "does_not_exist" in out and "ModuleNotFoundError" in out


@pytest.mark.workflow
def test_plugin_runs_through_workflow_and_broken_plugin_spares_others(plugin_site, tmp_path):
    cfg = tmp_path / "plugin.yaml"
    cfg.write_text(
        "data: {toy: {n_events: 3000}}\n"
        "training: {threads: 1}\n"
        "tracking: {enabled: false}\n"
        "select_models: [centroid, broken, logreg]\n"
        "models:\n"
        "  centroid: {family: nearest_centroid, params: {temperature: 2.0}}\n"
        "  broken: {family: broken_family}\n"
        "  logreg: {family: logistic_regression}\n"
    )
    cmd = [
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(cfg),
        "--cores",
        "2",
        "--keep-going",
    ]
    res = subprocess.run(cmd, env=env_with(plugin_site), capture_output=True, text=True, timeout=600)
    assert res.returncode != 0  # the broken plugin's model fails ...
    log = (tmp_path / "results" / "logs" / "train" / "broken.log").read_text()
    assert "plugin family 'broken_family'" in log and "does_not_exist" in log
    for model in ("centroid", "logreg"):  # ... and the other families still run
        m = json.loads((tmp_path / "results" / "metrics" / f"{model}.json").read_text())
        assert m["metrics"]["roc_auc"] > 0.6, model
    meta = json.loads((tmp_path / "results" / "models" / "centroid" / "hepml_model.json").read_text())
    assert meta["family"] == "nearest_centroid" and meta["files"] == ["centroids.json"]
