"""Peak memory of single steps, rerun one at a time in a finished workflow folder.

    python benchmarks/step_peaks.py DIR [--base BASE_DIR] [--configfile F ...]
                                    [--steps generate ingest split ...]

``DIR`` (and ``BASE_DIR``, the same workflow at a small size, e.g. 20k events)
is a folder a workflow ran in: ``config.yaml`` and ``results/``, as
``benchmarks/scale.py --out`` leaves them (``events_<n>/``); ``--configfile``
adds the files merged over it in that run. The steps' commands are taken from
Snakemake (``-n -p -F``: the workflow's exact command lines) and run one after
the other in ``DIR``, in the workflow's order, each under ``/usr/bin/time``
(peak RSS of the step's process: its ``ru_maxrss``), with this checkout's
code; their outputs replace the folder's (a step's outputs are the same
whatever the code, so the later steps' inputs are what the workflow made).
``train`` is not rerun unless named (slow); the model in ``DIR`` is used. Per-model
steps run for ``--model`` (default: the first model of ``select_models``). Steps
run with one thread (Snakemake's dry run with ``--cores 1`` writes the commands).

It prints per step the peak, the base (the same step in ``BASE_DIR``), the
needed size of :func:`scale.needed` and the ratio (peak - base) / needed
(issue #16: target <= 1.5). Comparing two sizes (1M and 2M events) tells a
streaming step (the peak above the base does not grow with the events) from one
that holds its input.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["generate", "ingest", "split", "features", "train", "predict", "evaluate", "importance", "plots"]
STEPS += ["summary_plots"]


def _scale():
    spec = importlib.util.spec_from_file_location("scale", ROOT / "benchmarks" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def commands(folder: Path, configfiles: list[str], env: dict, model: str | None = None) -> dict[str, str]:
    """Step name (``plots``, ``summary_plots``, ``predict``...) -> its shell command; a
    per-model rule's for ``model`` (default: the first of Snakemake's dry run, whose
    order is not the config's)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(folder)]
    cmd += ["--configfile", str(folder / "config.yaml"), *configfiles, "-n", "-p", "-F", "--cores", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder).stdout
    found = {}
    for line in out.splitlines():
        if not line.startswith("Shell command: "):
            continue
        c = line[len("Shell command: ") :].split(" > results/logs")[0]
        named = re.search(r"--model(?: |-dir results/models/)(\S+)", c)  # not --models (summary plots)
        if model and named and named[1] != model:
            continue
        m = re.search(r"-m hepml_steps\.(\w+)(?: (model|summary))?", c)
        if m:
            name = {"model": "plots", "summary": "summary_plots"}.get(m[2], m[1]) if m[1] == "plots" else m[1]
            found.setdefault(name, c)
    return found


def peaks(folder: Path, steps: list[str], configfiles: list[str], model: str | None = None) -> dict[str, float]:
    """Peak RSS (bytes) of each step rerun in ``folder`` (a per-model step: of ``model``)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    cmds, out = commands(folder, configfiles, env, model), {}
    for step in steps:
        t0 = time.perf_counter()
        r = subprocess.run(["/usr/bin/time", "-f", "%M", "bash", "-c", cmds[step]], capture_output=True, text=True,
                           env=env, cwd=folder)  # fmt: skip
        if r.returncode:
            raise SystemExit(f"{step} failed in {folder}:\n{r.stderr[-3000:]}")
        out[step] = int(r.stderr.strip().splitlines()[-1]) * 1024.0
        print(f"# {folder.name} {step}: {out[step] / 2**20:.0f} MiB, {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="a workflow folder (config.yaml, results/)")
    p.add_argument("--base", help="the same workflow at a small size (the baseline peaks)")
    p.add_argument("--configfile", action="append", default=[], help="config merged over DIR/config.yaml")
    p.add_argument("--steps", nargs="+", default=[s for s in STEPS if s != "train"], choices=STEPS)
    p.add_argument("--model", help="the model of the per-model steps (default: the first of select_models)")
    a = p.parse_args(argv)
    scale = _scale()
    folder, files = Path(a.dir).resolve(), [str(Path(f).resolve()) for f in a.configfile]
    cfg = scale.merged_config(yaml.safe_load((folder / "config.yaml").read_text()), files)
    model = a.model or cfg["select_models"][0]
    peak = peaks(folder, a.steps, files, model)
    base = peaks(Path(a.base).resolve(), a.steps, files, model) if a.base else {s: 0.0 for s in a.steps}
    mib = 2.0**20
    print(f"{'step':15} {'peak MiB':>9} {'base MiB':>9} {'above':>7} {'needed':>8} {'ratio':>6}")
    for step in a.steps:
        job = step if step in ("generate", "ingest", "split", "features", "summary_plots") else f"{step}/{model}"
        need, _ = scale.needed(job, folder / "results", cfg)
        above = peak[step] - base[step]
        ratio = f"{above / need:6.2f}" if need else "     -"
        print(f"{step:15} {peak[step] / mib:9.0f} {base[step] / mib:9.0f} {above / mib:7.0f} {need / mib:8.1f} {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
