"""The configuration: schema validation, defaults and resolved model specs.

The Snakefile calls :func:`load` once at parse time. Every problem found here
is a :class:`~hepml_steps.errors.ConfigError` whose message starts with the
offending key (``evaluation.threshold: 2.0 is not below 1``), printed by
:func:`exit_on_error` as one ``hepml: error:`` line before any job runs.

What is refused beyond the schema:

- ``models: {}`` in a ``--configfile``/``--config`` override. Overrides are
  merged over ``config/config.yaml``, so an empty mapping would otherwise
  silently mean "every default model"; use ``select_models`` for a subset.
- ``select_models: []``: it selects nothing (``null`` means every model).
- a selected model that is disabled (``enabled: false``).
- a model with an unknown task (:mod:`hepml_steps.tasks`), whose family does
  not support its task, or whose task needs a ``target`` it lacks; GPUs for
  a family that cannot use them;
  split fractions that do not sum to 1.
- with ``data.source: files``: an input ``path`` (file, glob, list, directory
  with ``pattern``) that matches no file — otherwise each input gets its
  sorted ``files``, the ingest rule's inputs — and columns, aliases, cuts or
  label values that :func:`hepml_steps.inputs.check_config` refuses; inputs
  of which some are labelled and others not (every input has a ``label``,
  or ``label_column`` is set, or no input is labelled); and, with unlabelled
  inputs, a model that runs whose task needs labels (classification,
  anomaly detection, a ``target: label``), naming the model and the input.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError, HepmlError

SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"

# Per-model settings that fall back to the `training` section.
MODEL_DEFAULTS = (
    "threads",
    "weighting",
    "negative_weights",
    "device",
    "gpus",
    "leakage",
    "leakage_auc",
    "stream_above_events",
    "max_in_memory_events",
)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "config"


def schema_error(config: dict, schema: dict) -> str | None:
    """The most relevant schema violation as ``key: reason``, or None.

    Parameters
    ----------
    config : dict
        The merged configuration, before defaults are filled in.
    schema : dict
        The JSON schema (draft 2020-12) of ``config/schema.yaml``.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    err = best_match(Draft202012Validator(schema).iter_errors(config))
    if err is None:
        return None
    hint = err.schema.get("errorMessage") if isinstance(err.schema, dict) else None
    reason = hint or err.message
    if hint and err.validator == "pattern":  # name the offending value (a key under propertyNames)
        return f"{_key(err.absolute_path)}: {err.instance!r}: {reason}"
    return f"{_key(err.absolute_path)}: {' '.join(str(reason).split())}"


#: model names that would collide with the comparison outputs (plots/summary, tracking/summary.json)
RESERVED_MODEL_NAMES = ("summary",)


def non_finite(value, path=()) -> str | None:
    """The key of the first NaN or infinite number in ``value`` (JSON schema bounds
    cannot refuse NaN: every comparison with it is false), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return _key(path)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = non_finite(v, (*path, k))
        if found:
            return found
    return None


def check_overrides(overrides: dict) -> None:
    """Refuse overrides that the merge over the defaults would silently drop.

    Raises
    ------
    ConfigError
        ``models`` given as an empty mapping.
    """
    if "models" in overrides and not overrides["models"]:
        raise ConfigError(
            "models: the override is empty, which would keep every default model of "
            "config/config.yaml; list the models you want, or name a subset with select_models"
        )


def load(config: dict, overrides: dict | None = None, schema_path: Path = SCHEMA) -> dict:
    """Validate ``config`` in place, fill in the schema's defaults, resolve the models.

    Parameters
    ----------
    config : dict
        The merged configuration (Snakemake's ``config``); defaults are written into it.
    overrides : dict, optional
        What ``--configfile``/``--config`` added over ``config/config.yaml``.

    Returns
    -------
    dict
        Model name -> resolved spec (training defaults applied, tuning merged).

    Raises
    ------
    ConfigError
        The first problem found, message starting with the key.
    """
    import yaml
    from snakemake.utils import validate

    check_overrides(overrides or {})
    schema = yaml.safe_load(Path(schema_path).read_text())
    problem = schema_error(config, schema)
    if problem:
        raise ConfigError(problem)
    bad = non_finite(config)
    if bad:
        raise ConfigError(f"{bad}: not a finite number (NaN or infinity)")
    reserved = sorted(set(config.get("models") or {}) & set(RESERVED_MODEL_NAMES))
    if reserved:
        raise ConfigError(
            f"models.{reserved[0]}: the name '{reserved[0]}' is reserved for the comparison "
            "outputs (plots/summary, tracking/summary.json); rename the model"
        )
    validate(config, str(schema_path), set_default=True)
    from .split import check_fractions

    check_fractions(config["split"]["fractions"])
    if config["data"]["source"] == "files":
        if not config["data"]["files"]["inputs"]:
            raise ConfigError("data.files.inputs: empty, but data.source is 'files'; list your input files")
        from .inputs import check_config

        check_config(config["data"]["files"], config["features"])
    specs = resolve_models(config)
    if config["data"]["source"] == "files":
        check_labels(specs, config["data"]["files"])
    return specs


def check_labels(specs: dict[str, dict], files: dict) -> None:
    """Refuse unlabelled inputs when a model that runs needs labels.

    Parameters
    ----------
    specs : dict of str to dict
        The models that run (:func:`resolve_models`).
    files : dict
        ``data.files``.

    Raises
    ------
    ConfigError
        ``models.<name>: task '<task>' needs labelled events; data.files.inputs[0] (<path>) has no label``.
    """
    from . import tasks
    from .inputs import labelled

    if labelled(files["inputs"], files.get("label_column")):
        return
    for name, spec in specs.items():
        task = tasks.of(spec)
        if task.needs_labels(spec.get("target")):
            first = files["inputs"][0]
            needs = f"task '{task}'" + (f" with target '{spec['target']}'" if not task.uses_labels else "")
            raise ConfigError(
                f"models.{name}: {needs} needs labelled events; data.files.inputs[0] "
                f"({first['path']}) has no label (give every input 'label: 1' or 'label: 0', "
                "or set data.files.label_column; or run only models that need no labels, "
                "with select_models)"
            )


def _check_model(name: str, spec: dict, known) -> None:
    from . import registry, tasks

    if spec["family"] not in known:
        raise ConfigError(
            f"models.{name}.family: unknown model family '{spec['family']}'; known families: {', '.join(sorted(known))}"
        )
    task = spec.get("task", tasks.DEFAULT)
    if task not in tasks.TASKS:
        raise ConfigError(f"models.{name}.task: unknown task '{task}'; known tasks: {', '.join(tasks.TASKS)}")
    supported = registry.BUILTIN_TASKS.get(spec["family"])  # plugins are checked when their job starts
    if supported is not None and task not in supported:
        raise ConfigError(
            f"models.{name}.task: family '{spec['family']}' does not support task "
            f"'{task}' (it supports: {', '.join(supported)})"
        )
    kind = tasks.get(task)
    if kind.needs_target and not spec.get("target"):
        raise ConfigError(f"models.{name}.target: task '{task}' needs 'target' (the {kind.target_kind}'s name)")


def _selection(config: dict) -> list[str] | None:
    chosen = config.get("select_models")
    if chosen is None:
        return None
    if not chosen:
        raise ConfigError(
            "select_models: [] selects no model; list model names, "
            "or null (or leave the key out) for every enabled model"
        )
    models = config["models"]
    unknown = sorted(set(chosen) - set(models))
    if unknown:
        raise ConfigError(f"select_models: {unknown} not among the configured models ({', '.join(sorted(models))})")
    disabled = [m for m in chosen if not models[m].get("enabled", True)]
    if disabled:
        raise ConfigError(
            f"select_models: {disabled} selected but disabled (enabled: false); "
            "enable them or leave them out of select_models"
        )
    return list(chosen)


def _resolve(name: str, spec: dict, config: dict) -> dict:
    from . import registry, tasks

    full = {k: config["training"][k] for k in MODEL_DEFAULTS}
    full.update({k: v for k, v in spec.items() if k not in ("enabled", "tune")})
    full["tune"] = {**config["tuning"], **spec.get("tune", {})}
    task = full.setdefault("task", tasks.DEFAULT)
    if full["tune"]["enabled"] and not tasks.get(task).tunable:
        if spec.get("tune", {}).get("enabled"):
            tunable = [t.name for t in tasks.TASKS.values() if t.tunable]
            raise ConfigError(
                f"models.{name}.tune.enabled: task '{task}' has no validation objective "
                f"to tune; tunable tasks: {', '.join(tunable)}"
            )
        full["tune"]["enabled"] = False  # tuning.enabled covers the models that can be tuned
    if full["negative_weights"] == "keep":
        _check_keep(name, spec, registry.get(spec["family"]))  # imported only when keep is asked for
    if full["gpus"]:
        cls = registry.get(spec["family"])  # imported only when a GPU is asked for
        if not cls.gpu_capable:
            raise ConfigError(f"models.{name}.gpus: family '{cls.name}' cannot use a GPU; set gpus: 0")
        if full["device"] == "cpu":
            raise ConfigError(f"models.{name}.gpus: gpus: {full['gpus']} contradicts device: cpu")
    return full


def _check_keep(name: str, spec: dict, cls) -> None:
    """Refuse ``negative_weights: keep`` for a family that cannot train on negative weights."""
    if not cls.accepts_negative_weights:
        key = (
            f"models.{name}.negative_weights"
            if "negative_weights" in spec
            else f"training.negative_weights (models.{name})"
        )
        raise ConfigError(
            f"{key}: 'keep' but family '{cls.name}' cannot train on negative event weights "
            "(accepts_negative_weights is False); use 'ignore' (weight 0 in the fit, TMVA's "
            "IgnoreNegWeightsInTraining) or 'abs' (|w|)"
        )


def resolve_models(config: dict) -> dict[str, dict]:
    """Model name -> spec for every enabled (and selected) model.

    Every enabled model is checked, selected or not: a config mistake is one anywhere.

    Raises
    ------
    ConfigError
        Unknown family, unsupported task, missing target, bad selection, nothing to run.
    """
    from . import registry

    known = registry.available()
    chosen = _selection(config)
    specs = {}
    for name, spec in config["models"].items():
        if not spec.get("enabled", True):
            continue
        _check_model(name, spec, known)
        if chosen is None or name in chosen:
            specs[name] = _resolve(name, spec, config)
    if not specs:
        raise ConfigError("models: every model is disabled; enable at least one")
    return specs


def step_interpreter(conda: bool, workflow_dir: str) -> str:
    """The Python that runs the steps.

    Without ``--sdm conda`` it is the interpreter running Snakemake
    (``sys.executable``), whatever ``python`` is first on PATH. With conda it is
    the environment's ``python``, given ``workflow_dir`` on ``PYTHONPATH`` so that
    it finds ``hepml_steps`` (jobs inherit Snakemake's environment).
    """
    if not conda:
        return sys.executable
    import os

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (workflow_dir, os.environ.get("PYTHONPATH")) if p)
    return "python"


def exit_on_error(func: Callable, *args, **kwargs):
    """Call ``func``; on a :class:`HepmlError` print one ``hepml: error:`` line and exit 1."""
    try:
        return func(*args, **kwargs)
    except HepmlError as exc:
        print(f"hepml: error: {exc}", file=sys.stderr)
        sys.exit(1)
