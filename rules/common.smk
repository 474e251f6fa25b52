# Shared helpers: resolved model specs, paths, and parse-time checks.
import json
import os
import sys

from hepml_steps import registry
from hepml_steps.errors import HepmlError

RES = config["results"]
SPLITS = ["train", "validation", "test"]
PY = "python -m hepml_steps"

# Per-model settings that fall back to the `training` section.
_MODEL_DEFAULTS = ("threads", "weighting", "device")


def _model_specs():
    specs = {}
    known = registry.available()
    for name, spec in config["models"].items():
        if not spec.get("enabled", True):
            continue
        if spec["family"] not in known:
            raise HepmlError(
                f"models.{name}: unknown model family '{spec['family']}'; "
                f"known families: {', '.join(sorted(known))}")
        full = {k: config["training"][k] for k in _MODEL_DEFAULTS}
        full.update({k: v for k, v in spec.items() if k != "enabled"})
        specs[name] = full
    if not specs:
        raise HepmlError("models: every model is disabled; enable at least one")
    return specs


MODELS = _model_specs()


wildcard_constraints:
    model="|".join(sorted(MODELS)),
    split="|".join(SPLITS),


def jq(obj):
    """JSON for a shell argument (quote it with {params.x:q} in the rule)."""
    return json.dumps(obj, sort_keys=True)


def all_outputs():
    out = [f"{RES}/leaderboard.csv", f"{RES}/leaderboard.md"]
    if config["tracking"]["enabled"]:
        out += expand(f"{RES}/tracking/{{model}}.json", model=MODELS)
    return out
