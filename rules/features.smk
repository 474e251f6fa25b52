# Feature selection, derived columns, standardisation and PCA, fitted on train only;
# every model's target is kept unstandardised beside the features (target:<name>).
rule features:
    input:
        **{s: f"{RES}/split/{s}.parquet" for s in SPLITS},
    output:
        **{s: f"{RES}/features/{s}.parquet" for s in SPLITS},
        transform=f"{RES}/features/transform.json",
    params:
        step=step("features"),
        cfg=lambda wc: jq(config["features"]),
        targets=jq(model_targets()),
    benchmark:
        f"{RES}/benchmarks/features.tsv"
    log:
        f"{RES}/logs/features.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --train {input.train:q} --validation {input.validation:q} --test {input.test:q}"
        " --out-train {output.train:q} --out-validation {output.validation:q} --out-test {output.test:q}"
        " --transform {output.transform:q} --params {params.cfg:q} --targets {params.targets:q}"
        + TO_LOG
