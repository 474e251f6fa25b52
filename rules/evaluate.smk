# Figures of merit per model, on the test split (plus train/validation AUC).
rule evaluate:
    input:
        predictions=f"{RES}/predictions/{{model}}.parquet",
        record=f"{RES}/records/{{model}}.train.json",
    output:
        f"{RES}/metrics/{{model}}.json",
    params:
        task=lambda wc: MODELS[wc.model]["task"],
        threshold=config["evaluation"]["threshold"],
        effs=",".join(str(e) for e in config["evaluation"]["bkg_efficiencies"]),
    log:
        f"{RES}/logs/evaluate/{{model}}.log",
    shell:
        "{PY}.evaluate --predictions {input.predictions} --out {output} --model {wildcards.model}"
        " --task {params.task} --threshold {params.threshold} --bkg-efficiencies {params.effs}"
        " --extra {input.record} > {log} 2>&1"
