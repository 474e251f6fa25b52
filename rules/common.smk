# Shared helpers: resolved model specs, paths, and parse-time checks.
import json
import os
import sys

from hepml_steps import registry
from hepml_steps.errors import HepmlError
from hepml_steps.split import check_fractions
from hepml_steps.tune import DEFAULT_OBJECTIVE

RES = config["results"]
SPLITS = ["train", "validation", "test"]
PY = "python -m hepml_steps"

# Per-model settings that fall back to the `training` section.
_MODEL_DEFAULTS = ("threads", "weighting", "device", "gpus")


def _model_specs():
    specs = {}
    known = registry.available()
    chosen = config.get("select_models")
    if chosen:
        unknown = sorted(set(chosen) - set(config["models"]))
        if unknown:
            raise HepmlError(f"select_models: {unknown} not among the configured models "
                             f"({', '.join(sorted(config['models']))})")
    for name, spec in config["models"].items():
        if not spec.get("enabled", True):
            continue
        if spec["family"] not in known:  # checked for every enabled model, selected or not
            raise HepmlError(
                f"models.{name}: unknown model family '{spec['family']}'; "
                f"known families: {', '.join(sorted(known))}")
        # checked for every enabled model, selected or not: a config mistake is one anywhere
        task = spec.get("task", "classification")
        supported = registry.BUILTIN_TASKS.get(spec["family"])  # plugins are checked when their job starts
        if supported is not None and task not in supported:
            raise HepmlError(f"models.{name}: family '{spec['family']}' does not support task '{task}' "
                             f"(it supports: {', '.join(supported)})")
        if task in ("regression", "multiclass") and not spec.get("target"):
            what = "regression target" if task == "regression" else "class column"
            raise HepmlError(f"models.{name}: task '{task}' needs 'target' (the {what}'s name)")
        if chosen and name not in chosen:
            continue
        full = {k: config["training"][k] for k in _MODEL_DEFAULTS}
        full.update({k: v for k, v in spec.items() if k not in ("enabled", "tune")})
        full["tune"] = {**config["tuning"], **spec.get("tune", {})}
        task = full.setdefault("task", "classification")
        if full["tune"]["enabled"] and task not in DEFAULT_OBJECTIVE:
            if spec.get("tune", {}).get("enabled"):
                raise HepmlError(f"models.{name}: task '{task}' has no validation objective to tune; "
                                 f"tunable tasks: {', '.join(DEFAULT_OBJECTIVE)}")
            full["tune"]["enabled"] = False  # tuning.enabled covers the models that can be tuned
        if full["gpus"]:
            cls = registry.get(spec["family"])  # imported only when a GPU is asked for
            if not cls.gpu_capable:
                raise HepmlError(f"models.{name}: family '{cls.name}' cannot use a GPU; set gpus: 0")
            if full["device"] == "cpu":
                raise HepmlError(f"models.{name}: gpus: {full['gpus']} contradicts device: cpu")
        specs[name] = full
    if not specs:
        raise HepmlError("models: every model is disabled; enable at least one")
    return specs


MODELS = _model_specs()
check_fractions(config["split"]["fractions"])  # a bad split fails now, not after generating the data


wildcard_constraints:
    model="|".join(sorted(MODELS)),
    split="|".join(SPLITS),


def jq(obj):
    """JSON for a shell argument (quote it with {params.x:q} in the rule)."""
    return json.dumps(obj, sort_keys=True)


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
