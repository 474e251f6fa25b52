# Score the train, validation and test splits with each trained model; the
# test split's inference is metered (energy, events/s) into the step record.
rule predict:
    input:
        model=f"{RES}/models/{{model}}",
        **{s: f"{RES}/features/{s}.parquet" for s in SPLITS},
    output:
        predictions=f"{RES}/predictions/{{model}}.parquet",
        record=f"{RES}/records/{{model}}.predict.json",
    params:
        step=step("predict"),
        batch=config["evaluation"]["inference_batch_size"],
        energy=jq(config["energy"]),
    threads: lambda wc: MODELS[wc.model]["threads"]
    resources:
        **gpu_resources(),
    benchmark:
        f"{RES}/benchmarks/predict/{{model}}.tsv"
    log:
        f"{RES}/logs/predict/{{model}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --model-dir {input.model:q} --train {input.train:q} --validation {input.validation:q}"
        " --test {input.test:q} --out {output.predictions:q} --record {output.record:q}"
        " --batch-size {params.batch:q} --threads {threads} --energy {params.energy:q}"
        + TO_LOG
