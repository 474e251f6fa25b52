# Feature selection, derived columns, standardisation and PCA, fitted on train only.
rule features:
    input:
        **{s: f"{RES}/split/{s}.parquet" for s in SPLITS},
    output:
        **{s: f"{RES}/features/{s}.parquet" for s in SPLITS},
        transform=f"{RES}/features/transform.json",
    params:
        cfg=lambda wc: jq(config["features"]),
    log:
        f"{RES}/logs/features.log",
    shell:
        "{PY}.features --train {input.train} --validation {input.validation} --test {input.test}"
        " --out-train {output.train} --out-validation {output.validation} --out-test {output.test}"
        " --transform {output.transform} --params {params.cfg:q} > {log} 2>&1"
