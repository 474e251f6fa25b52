# One model per {model}: reads train + validation only (never test).
rule train:
    input:
        train=f"{RES}/features/train.parquet",
        validation=f"{RES}/features/validation.parquet",
        raw_train=f"{RES}/split/train.parquet",
        raw_validation=f"{RES}/split/validation.parquet",
    output:
        model=directory(f"{RES}/models/{{model}}"),
        record=f"{RES}/records/{{model}}.train.json",
    params:
        spec=lambda wc: jq(MODELS[wc.model]),
        seed=config["seed"],
    threads: lambda wc: MODELS[wc.model]["threads"]
    log:
        f"{RES}/logs/train/{{model}}.log",
    shell:
        "{PY}.train --train {input.train} --validation {input.validation}"
        " --raw-train {input.raw_train} --raw-validation {input.raw_validation}"
        " --model {wildcards.model} --spec {params.spec:q} --out {output.model}"
        " --record {output.record} --seed {params.seed} --threads {threads} > {log} 2>&1"
