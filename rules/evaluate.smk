# Figures of merit per model, on the test split (plus train/validation AUC and
# the train-vs-test KS overtraining check).
rule evaluate:
    input:
        predictions=f"{RES}/predictions/{{model}}.parquet",
        record=f"{RES}/records/{{model}}.train.json",
        inference=f"{RES}/records/{{model}}.predict.json",
        features=lambda wc: f"{RES}/features/test.parquet" if MODELS[wc.model]["task"] == "clustering" else [],
    output:
        f"{RES}/metrics/{{model}}.json",
    params:
        task=lambda wc: MODELS[wc.model]["task"],
        threshold=config["evaluation"]["threshold"],
        effs=",".join(str(e) for e in config["evaluation"]["bkg_efficiencies"]),
        ks=config["evaluation"]["ks_pvalue_min"],
        features=lambda wc, input: f"--features {input.features}" if input.features else "",
    log:
        f"{RES}/logs/evaluate/{{model}}.log",
    shell:
        "{PY}.evaluate --predictions {input.predictions} --out {output} --model {wildcards.model}"
        " --task {params.task} --threshold {params.threshold} --bkg-efficiencies {params.effs}"
        " --ks-pvalue-min {params.ks} --extra {input.record}"
        " --inference {input.inference} {params.features} > {log} 2>&1"
