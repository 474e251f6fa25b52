# One model per {model}: reads train + validation only (never test).
rule train:
    input:
        train=f"{RES}/features/train.parquet",
        validation=f"{RES}/features/validation.parquet",
        raw_train=f"{RES}/split/train.parquet",
        raw_validation=f"{RES}/split/validation.parquet",
        tuned=lambda wc: f"{RES}/tuning/{wc.model}.json" if tuned(wc.model) else [],
    output:
        model=directory(f"{RES}/models/{{model}}"),
        record=f"{RES}/records/{{model}}.train.json",
    params:
        spec=lambda wc: jq({k: v for k, v in MODELS[wc.model].items() if k != "tune"}),
        seed=config["seed"],
        tuned=lambda wc, input: f"--tuned {input.tuned}" if input.tuned else "",
        energy=jq(config["energy"]),
    threads: lambda wc: MODELS[wc.model]["threads"]
    resources:
        **gpu_resources(),
    log:
        f"{RES}/logs/train/{{model}}.log",
    shell:
        "{PY}.train --train {input.train} --validation {input.validation}"
        " --raw-train {input.raw_train} --raw-validation {input.raw_validation}"
        " --model {wildcards.model} --spec {params.spec:q} --out {output.model}"
        " --record {output.record} --seed {params.seed} --threads {threads} {params.tuned}"
        " --energy {params.energy:q} > {log} 2>&1"
