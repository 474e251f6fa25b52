# Deterministic train/validation/test split by a hash of event_id.
rule split:
    input:
        f"{RES}/data/events.parquet",
    output:
        **{s: f"{RES}/split/{s}.parquet" for s in SPLITS},
        summary=f"{RES}/split/split.json",
    params:
        fractions=lambda wc: jq(config["split"]["fractions"]),
        salt=config["split"]["salt"],
    log:
        f"{RES}/logs/split.log",
    shell:
        "{PY}.split --events {input} --train {output.train} --validation {output.validation}"
        " --test {output.test} --fractions {params.fractions:q} --salt {params.salt}"
        " --summary {output.summary} > {log} 2>&1"
