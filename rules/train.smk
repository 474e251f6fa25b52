# One model per {model}: reads train + validation only (never test).
rule train:
    input:
        train=f"{RES}/features/train.parquet",
        validation=f"{RES}/features/validation.parquet",
        tuned=lambda wc: f"{RES}/tuning/{wc.model}.json" if tuned(wc.model) else [],
        transform=f"{RES}/features/transform.json",
    output:
        model=directory(f"{RES}/models/{{model}}"),
        record=f"{RES}/records/{{model}}.train.json",
    params:
        step=step("train"),
        spec=lambda wc: jq({k: v for k, v in MODELS[wc.model].items() if k != "tune"}),
        seed=config["seed"],
        tuned=lambda wc, input: opt("--tuned", input.tuned),
        energy=jq(config["energy"]),
        ingest=jq({k: ingest_settings().get(k) for k in ("columns", "aliases", "cut")}),
    threads: lambda wc: MODELS[wc.model]["threads"]
    resources:
        **gpu_resources(),
    benchmark:
        f"{RES}/benchmarks/train/{{model}}.tsv"
    log:
        f"{RES}/logs/train/{{model}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --train {input.train:q} --validation {input.validation:q}"
        " --model {wildcards.model:q} --spec {params.spec:q} --out {output.model:q}"
        " --record {output.record:q} --seed {params.seed:q} --threads {threads} {params.tuned:q}"
        " --energy {params.energy:q} --transform {input.transform:q} --ingest {params.ingest:q}"
        + TO_LOG
