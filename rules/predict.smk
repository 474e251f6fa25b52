# Score the train, validation and test splits with each trained model.
rule predict:
    input:
        model=f"{RES}/models/{{model}}",
        **{s: f"{RES}/features/{s}.parquet" for s in SPLITS},
        **{f"raw_{s}": f"{RES}/split/{s}.parquet" for s in SPLITS},
    output:
        f"{RES}/predictions/{{model}}.parquet",
    params:
        batch=config["evaluation"]["inference_batch_size"],
    threads: lambda wc: MODELS[wc.model]["threads"]
    resources:
        **gpu_resources(),
    log:
        f"{RES}/logs/predict/{{model}}.log",
    shell:
        "{PY}.predict --model-dir {input.model} --train {input.train} --validation {input.validation}"
        " --test {input.test} --raw-train {input.raw_train} --raw-validation {input.raw_validation}"
        " --raw-test {input.raw_test} --out {output} --batch-size {params.batch}"
        " --threads {threads} > {log} 2>&1"
