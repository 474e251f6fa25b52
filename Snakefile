# hepml: train, tune and evaluate every configured model family on HEP data.
#   snakemake --cores 2                       # everything, on the embedded toy data
#   snakemake --cores 2 --configfile my.yaml  # your data / models (merged over config/config.yaml)
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml", set_default=True)


include: "rules/common.smk"
include: "rules/generate.smk"
include: "rules/ingest.smk"
include: "rules/split.smk"
include: "rules/features.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/evaluate.smk"
include: "rules/leaderboard.smk"
include: "rules/track.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
