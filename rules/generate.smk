# Embedded toy data: resonance X -> 2 jets, signal vs background, with truth LLR.
rule generate:
    output:
        events=f"{RES}/data/toy.parquet",
        summary=f"{RES}/data/toy.json",
    params:
        step=step("generate"),
        toy=config["data"]["toy"],
        seed=config["seed"],
        yields=lambda wc: jq(config["data"]["toy"]["yields"]),
        physics=lambda wc: jq(config["data"]["toy"]["physics"]),
    benchmark:
        f"{RES}/benchmarks/generate.tsv"
    log:
        f"{RES}/logs/generate.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --out {output.events:q} --summary {output.summary:q}"
        " --n-events {params.toy[n_events]:q} --signal-fraction {params.toy[signal_fraction]:q}"
        " --seed {params.seed:q} --chunk-size {params.toy[chunk_size]:q}"
        " --yields-json {params.yields:q} --physics-json {params.physics:q}"
        + TO_LOG
