"""House rules checked by tools: Snakemake's linter, and dependencies that
match the imports (the lock lists what the code imports, no more, no less)."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# import name -> distribution name, where they differ
DIST = {
    "sklearn": "scikit-learn",
    "yaml": "PyYAML",
    "pynvml": "nvidia-ml-py",
    "xgboost": "xgboost-cpu",
    "snakemake_interface_executor_plugins": "snakemake-interface-executor-plugins",
}
# direct dependencies that no module imports, and why they are direct
NOT_IMPORTED = {
    "snakemake-executor-plugin-slurm": "loaded by Snakemake for profiles/slurm",
    "snakemake-executor-plugin-htcondor": "loaded by Snakemake for profiles/htcondor",
    "mlflow-skinny": "pinned with mlflow (3.18's skinny does not match)",
    "onnxscript": "torch.onnx's dynamo exporter, used when installed",
    "pytest-xdist": "pytest -n for developers",
    "ruff": "the linter and formatter (tests/test_lint.py, .ci/run)",
}


def _direct() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + meta["optional-dependencies"]["test"]
    return {r.split("==")[0].split(">")[0].strip().lower() for r in reqs}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def _third_party_imports() -> set[str]:
    names = set()
    files = [*ROOT.glob("hepml_steps/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    local = {"hepml_steps", "tests", "hepml_plugin_demo", "slurm_cluster", "conftest"}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def test_ruff_lint_and_format_are_clean():
    for args in (["check", "."], ["format", "--check", "."]):
        res = subprocess.run([str(BIN / "ruff"), *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert res.returncode == 0, f"ruff {' '.join(args)}:\n{res.stdout[-3000:]}{res.stderr[-2000:]}"


def test_snakemake_lint_is_clean():
    res = subprocess.run(
        [str(BIN / "snakemake"), "--lint", "-s", str(ROOT / "Snakefile")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Congratulations" in res.stdout + res.stderr


def test_every_import_is_a_direct_dependency_and_every_direct_dependency_is_used():
    direct = _direct()
    imported = {DIST.get(n, n).lower().replace("_", "-") for n in _third_party_imports()}
    imported.discard("snakemake-interface-executor-plugins")  # snakemake's own API, only in common.smk
    assert imported - direct == set(), "imported but not a direct dependency"
    unused = direct - imported - set(NOT_IMPORTED)
    assert unused == set(), "direct dependency that nothing imports"


def test_lock_pins_every_direct_dependency_and_nothing_unneeded():
    pins = _lock()
    missing = {d for d in _direct() if d.replace("_", "-") not in pins}
    assert missing == set()
    assert "codecarbon" not in pins  # evaluated and not used (see hepml_steps/energy.py)


def test_conda_env_pins_the_lock():
    env = yaml.safe_load((ROOT / "envs" / "hepml.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = {p.split("==")[0].lower().replace("_", "-"): p.split("==")[1] for p in pip}
    lock = {k: v for k, v in _lock().items() if k != "setuptools"}
    assert pins == lock
