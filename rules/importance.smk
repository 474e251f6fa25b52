# Permutation importance on the test split (+ native importance where the family has one).
rule importance:
    input:
        model=f"{RES}/models/{{model}}",
        test=f"{RES}/features/test.parquet",
    output:
        f"{RES}/importance/{{model}}.json",
    params:
        step=step("importance"),
        seed=config["seed"],
    benchmark:
        f"{RES}/benchmarks/importance/{{model}}.tsv"
    log:
        f"{RES}/logs/importance/{{model}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --model-dir {input.model:q} --test {input.test:q}"
        " --out {output:q} --seed {params.seed:q}"
        + TO_LOG
