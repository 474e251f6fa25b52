# Figures of merit per model, on the test split (plus train/validation AUC and
# the train-vs-test KS overtraining check).
rule evaluate:
    input:
        predictions=f"{RES}/predictions/{{model}}.parquet",
        record=f"{RES}/records/{{model}}.train.json",
        inference=f"{RES}/records/{{model}}.predict.json",
        features=lambda wc: f"{RES}/features/test.parquet" if task_of(wc.model).needs_test_features else [],
    output:
        f"{RES}/metrics/{{model}}.json",
    params:
        step=step("evaluate"),
        task=lambda wc: MODELS[wc.model]["task"],
        threshold=config["evaluation"]["threshold"],
        effs=",".join(str(e) for e in config["evaluation"]["bkg_efficiencies"]),
        ks=config["evaluation"]["ks_pvalue_min"],
        significance=config["evaluation"]["significance"],
        bkg_uncertainty=config["evaluation"]["bkg_uncertainty"],
        test_fraction=config["split"]["fractions"]["test"],
        features=lambda wc, input: opt("--features", input.features),
    benchmark:
        f"{RES}/benchmarks/evaluate/{{model}}.tsv"
    log:
        f"{RES}/logs/evaluate/{{model}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --predictions {input.predictions:q} --out {output:q} --model {wildcards.model:q}"
        " --task {params.task:q} --threshold {params.threshold:q} --bkg-efficiencies {params.effs:q}"
        " --ks-pvalue-min {params.ks:q} --extra {input.record:q}"
        " --significance {params.significance:q} --bkg-uncertainty {params.bkg_uncertainty:q}"
        " --test-fraction {params.test_fraction:q}"
        " --inference {input.inference:q} {params.features:q}"
        + TO_LOG
