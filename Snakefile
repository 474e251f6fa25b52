# hepml: train, tune and evaluate every configured model family on HEP data.
#   snakemake --cores 2                       # everything, on the embedded toy data
#   snakemake --cores 2 --configfile my.yaml  # your data / models (merged over config/config.yaml)
import os

from snakemake.utils import min_version

from hepml_steps import config as hepml_config

min_version("9.0")


# Defaults live beside this Snakefile; --configfile / --config merge over them.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# Schema, defaults and parse-time checks; a problem is one `hepml: error:` line.
MODELS = hepml_config.exit_on_error(
    hepml_config.load, config, workflow.config_settings.overwrite_config,
    os.path.join(workflow.basedir, "config", "schema.yaml"))


report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/generate.smk"
include: "rules/ingest.smk"
include: "rules/split.smk"
include: "rules/features.smk"
include: "rules/tune.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/evaluate.smk"
include: "rules/importance.smk"
include: "rules/plots.smk"
include: "rules/leaderboard.smk"
include: "rules/track.smk"
include: "rules/apply.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
