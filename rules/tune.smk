# Optuna study per model with tuning enabled. Inputs are train + validation only:
# the test split is not an input of this rule, so tuning cannot read it.
rule tune:
    input:
        train=f"{RES}/features/train.parquet",
        validation=f"{RES}/features/validation.parquet",
    output:
        record=f"{RES}/tuning/{{model}}.json",
        trials=f"{RES}/tuning/{{model}}.trials.csv",
    params:
        step=step("tune"),
        spec=lambda wc: jq(MODELS[wc.model]),
        seed=config["seed"],
        energy=jq(config["energy"]),
        # the Optuna study, stored as it runs: not an output, so Snakemake keeps it
        # when the job fails, and a rerun resumes the trials already finished
        storage=lambda wc: f"{RES}/tuning/{wc.model}.journal",
    threads: lambda wc: MODELS[wc.model]["threads"]
    resources:
        **gpu_resources(),
    benchmark:
        f"{RES}/benchmarks/tune/{{model}}.tsv"
    log:
        f"{RES}/logs/tune/{{model}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --train {input.train:q} --validation {input.validation:q}"
        " --model {wildcards.model:q} --spec {params.spec:q} --out {output.record:q}"
        " --trials {output.trials:q} --seed {params.seed:q} --threads {threads}"
        " --energy {params.energy:q} --storage {params.storage:q}"
        + TO_LOG
