# Shared helpers: paths, the step command and resources. MODELS (name -> resolved
# spec) comes from hepml_steps.config.load in the Snakefile.
#
# Shell safety: every value that reaches a `shell:` command is quoted with
# `{x:q}` (lists element by element), including {input}, {output}, {log} and
# the results folder; the step runs with the interpreter that runs Snakemake
# (or, with --sdm conda, the python of envs/hepml.yaml).
import json
import re
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from hepml_steps import tasks as hepml_tasks

RES = config["results"]
SPLITS = ["train", "validation", "test"]
CONDA_ENV = "../envs/hepml.yaml"
PYTHON = hepml_config.step_interpreter(
    DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method, workflow.basedir)


wildcard_constraints:
    model="|".join(re.escape(m) for m in sorted(MODELS)),
    split="|".join(SPLITS),


# End of every step's shell command: the step's output goes to its log, and the
# log's last line to the Snakemake console: the step's one-line summary
# (hepml_steps.cli.run: "hepml: <step>: done in ... s, peak RSS ...; <figures>"),
# or, when it fails, its one-line "hepml: error: ..." (on stderr, and the job
# exits with the step's status), without --show-failed-logs.
TO_LOG = " > {log:q} 2>&1 || {{ status=$?; tail -n 1 {log:q} >&2; exit $status; }}; tail -n 1 {log:q}"


def step(name, *args):
    """argv that runs the step ``hepml_steps.<name>``: quote with {params.step:q}."""
    return [PYTHON, "-m", f"hepml_steps.{name}", *args]


def results_of(wc, output):
    """The results folder, from an output `{RES}/<stage>/<file>`."""
    return str(Path(output[0]).parents[1])


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


def task_of(model):
    """The task object (hepml_steps.tasks) of a model."""
    return hepml_tasks.get(MODELS[model]["task"])


def model_targets():
    """The target column of every configured model (selected or not, so that a
    different selection does not re-prepare the features), sorted: the features
    step keeps them unstandardised."""
    return sorted({s["target"] for s in config["models"].values() if s.get("target")})


def _apply_jobs():
    """Output name (``<file stem>.root`` / ``.parquet``, :func:`hepml_steps.apply.output_names`
    when stems collide) -> {path, tree, format} of every file of ``apply.inputs`` (globs
    expanded now; one apply job per file)."""
    from hepml_steps.errors import ConfigError
    from hepml_steps.readers import expand_files

    unknown = [m for m in config["apply"]["models"] or [] if m not in MODELS]
    if unknown:
        raise ConfigError(f"apply.models: {unknown} are not selected models ({sorted(MODELS)})")
    from hepml_steps.apply import output_names

    found = []
    for i, spec in enumerate(config["apply"]["inputs"]):
        files, unmatched = expand_files(spec["path"], spec.get("pattern"))
        if unmatched:
            raise ConfigError(f"apply.inputs[{i}].path: no file matches {unmatched}")
        found += [(f, spec) for f in files]
    kinds = [(f, spec.get("format") or ("root" if f.endswith(".root") else None)) for f, spec in found]
    return {
        name: {"path": f, "tree": spec.get("tree"), "format": spec.get("format")}
        for name, (f, spec) in zip(output_names(kinds), found)
    }


APPLY = hepml_config.exit_on_error(_apply_jobs)


wildcard_constraints:
    applied="|".join(re.escape(k) for k in sorted(APPLY)) or "(?!)",


def apply_models():
    """The models whose scores `apply` adds (default: every selected model)."""
    return config["apply"]["models"] or sorted(MODELS)


def all_outputs():
    out = [f"{RES}/leaderboard.csv", f"{RES}/leaderboard.md", f"{RES}/plots/summary", f"{RES}/report/front.rst"]
    out += expand(f"{RES}/plots/{{model}}", model=MODELS)
    if config["tracking"]["enabled"]:
        out += expand(f"{RES}/tracking/{{model}}.json", model=MODELS) + [f"{RES}/tracking/summary.json"]
    out += [f"{RES}/apply/{k}" for k in APPLY]
    return out


def ingest_settings():
    if config["data"]["source"] == "toy":
        return {"inputs": [{"path": f"{RES}/data/toy.parquet", "name": "toy"}],
                "label_column": "label", "weight_column": "weight",
                "event_id_column": "event_id", "columns": None}
    return config["data"]["files"]


def ingest_files():
    """Every file of every input (globs were expanded when the config was read)."""
    return [f for i in ingest_settings()["inputs"] for f in i.get("files") or [i["path"]]]


def ingest_options():
    s = ingest_settings()
    return [a for k in ("label_column", "weight_column", "event_id_column")
            for a in opt(f"--{k.replace('_', '-')}", s.get(k))]


def ingest_extra():
    """JSON of the ingest step's --settings-json: columns, aliases, cut, label values, chunks, exclusions."""
    s = ingest_settings()
    keys = ("columns", "aliases", "cut", "signal_values", "background_values", "chunk_size")
    return jq({**{k: s.get(k) for k in keys}, "exclude": config["features"]["exclude"]})
