# Deterministic train/validation/test split by a hash of event_id.
rule split:
    input:
        f"{RES}/data/events.parquet",
    output:
        **{s: f"{RES}/split/{s}.parquet" for s in SPLITS},
        summary=f"{RES}/split/split.json",
    params:
        step=step("split"),
        fractions=lambda wc: jq(config["split"]["fractions"]),
        salt=config["split"]["salt"],
        min_events=config["split"]["min_events_per_class"],
    benchmark:
        f"{RES}/benchmarks/split.tsv"
    log:
        f"{RES}/logs/split.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --events {input:q} --train {output.train:q} --validation {output.validation:q}"
        " --test {output.test:q} --fractions {params.fractions:q} --salt {params.salt:q}"
        " --summary {output.summary:q} --min-events-per-class {params.min_events:q}"
        + TO_LOG
