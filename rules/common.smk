# Shared helpers: paths, the step command and resources. MODELS (name -> resolved
# spec) comes from hepml_steps.config.load in the Snakefile.
#
# Shell safety: every value that reaches a `shell:` command is quoted with
# `{x:q}` (lists element by element), including {input}, {output}, {log} and
# the results folder; the step runs with the interpreter that runs Snakemake.
import json
import re
import shlex
import sys

RES = config["results"]
SPLITS = ["train", "validation", "test"]
PY = shlex.quote(sys.executable) + " -m hepml_steps"


wildcard_constraints:
    model="|".join(re.escape(m) for m in sorted(MODELS)),
    split="|".join(SPLITS),


def jq(obj):
    """JSON for a shell argument (quote it with {params.x:q} in the rule)."""
    return json.dumps(obj, sort_keys=True)


def opt(flag, value):
    """['--flag=value'] when value is set, else []: quote with {params.x:q}
    (one argument, so a value starting with '-' is not taken for an option)."""
    return [f"{flag}={value}"] if value not in (None, "", []) else []


def _gpu_if_used(value, empty):
    return lambda wc: value if MODELS[wc.model]["gpus"] else empty


def gpu_resources():
    """Resources of GPU-capable steps: `gpu` for every executor (local scheduling
    with --resources gpu=K, SLURM maps it to --gpus), plus the optional model,
    CPUs per GPU and HTCondor's request_gpus."""
    g = config["gpu"]
    res = {"gpu": lambda wc: MODELS[wc.model]["gpus"],
           "request_gpus": lambda wc: MODELS[wc.model]["gpus"]}
    if g["model"]:
        res["gpu_model"] = _gpu_if_used(g["model"], "")
    if g["cpus_per_gpu"]:
        res["cpus_per_gpu"] = _gpu_if_used(g["cpus_per_gpu"], 0)
    return res


def tuned(model):
    return MODELS[model]["tune"]["enabled"]


def all_outputs():
    out = [f"{RES}/leaderboard.csv", f"{RES}/leaderboard.md", f"{RES}/plots/summary"]
    out += expand(f"{RES}/plots/{{model}}", model=MODELS)
    if config["tracking"]["enabled"]:
        out += expand(f"{RES}/tracking/{{model}}.json", model=MODELS) + [f"{RES}/tracking/summary.json"]
    return out
