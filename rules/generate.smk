# Embedded toy data: resonance X -> 2 jets, signal vs background, with truth LLR.
rule generate:
    output:
        events=f"{RES}/data/toy.parquet",
        summary=f"{RES}/data/toy.json",
    params:
        toy=config["data"]["toy"],
        seed=config["seed"],
        yields=lambda wc: jq(config["data"]["toy"]["yields"]),
        physics=lambda wc: jq(config["data"]["toy"]["physics"]),
    log:
        f"{RES}/logs/generate.log",
    shell:
        "{PY}.generate --out {output.events} --summary {output.summary}"
        " --n-events {params.toy[n_events]} --signal-fraction {params.toy[signal_fraction]}"
        " --seed {params.seed} --chunk-size {params.toy[chunk_size]}"
        " --yields-json {params.yields:q} --physics-json {params.physics:q} > {log} 2>&1"
