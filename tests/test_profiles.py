"""The shipped execution profiles parse, and GPU rules carry the GPU resources the
executors translate (SLURM: gpu/gpu_model -> --gpus; HTCondor: request_gpus)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "config" / "tiny.yaml"
GPU_CFG = """
gpu: {model: a100, cpus_per_gpu: 4}
select_models: [logreg, mlp]
models:
  mlp: {family: mlp, gpus: 1}
"""


def dry_run(profile, workdir, *extra):
    cfg = Path(workdir) / "gpu.yaml"
    cfg.write_text(GPU_CFG)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    cmd = [
        str(Path(sys.executable).parent / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--profile",
        str(Path("profiles") / profile),
        "--directory",
        str(workdir),
        "--configfile",
        str(TINY),
        str(cfg),
        "-n",
        "--printshellcmds",
        *extra,
    ]
    # run from the project root, as the README says (profile paths are relative to it)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def jobs(output: str) -> list[str]:
    return [b for b in re.split(r"\n(?=(?:localrule|rule) )", output) if b.startswith(("rule ", "localrule "))]


@pytest.mark.parametrize("profile", ["local", "slurm", "htcondor"])
def test_profile_is_valid_yaml_and_dry_runs(profile, tmp_path):
    conf = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())
    assert isinstance(conf, dict) and conf
    res = dry_run(profile, tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    blocks = jobs(out)
    gpu_train = [b for b in blocks if b.startswith("rule train") and "model=mlp" in b]
    cpu_train = [b for b in blocks if b.startswith("rule train") and "model=logreg" in b]
    assert gpu_train and cpu_train, out[-3000:]
    assert re.search(r"\bgpu=1\b", gpu_train[0]) and "gpu_model=a100" in gpu_train[0]
    assert re.search(r"\brequest_gpus=1\b", gpu_train[0]) and "cpus_per_gpu=4" in gpu_train[0]
    assert re.search(r"\bgpu=0\b", cpu_train[0]) and "gpu_model=a100" not in cpu_train[0]
    if profile == "slurm":
        assert conf["executor"] == "slurm"
        parts = yaml.safe_load((ROOT / conf["slurm-partition-config"]).read_text())["partitions"]
        assert any(p.get("max_gpu", 0) > 0 for p in parts.values())
        assert "mem_mb=16000" in gpu_train[0]  # per-rule memory from set-resources
    if profile == "htcondor":
        assert conf["executor"] == "htcondor"
        assert "htcondor_request_mem_mb=16000" in gpu_train[0]


def test_local_profile_limits_gpu_jobs(tmp_path):
    conf = yaml.safe_load((ROOT / "profiles" / "local" / "config.yaml").read_text())
    assert "gpu" in conf["resources"]


@pytest.mark.parametrize("profile", ["local", "slurm", "htcondor"])
def test_profiles_resume_incomplete_jobs(profile):
    # the README's resume is "the same command": it must redo jobs a crash left incomplete
    conf = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())
    assert conf.get("rerun-incomplete") is True
    assert conf.get("keep-going") is True


def test_make_demo_resumes_incomplete_jobs():
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "no demo target in the Makefile"
    cmd = [line for line in recipe.group(1).splitlines() if "snakemake" in line]
    assert len(cmd) == 1 and "--rerun-incomplete" in cmd[0].split() and "--keep-going" in cmd[0].split()
