# Read the toy sample or the user's ROOT/Parquet/CSV files (every file of every
# input: globs are expanded when the config is read) into one canonical table.
rule ingest:
    input:
        ingest_files(),
    output:
        events=f"{RES}/data/events.parquet",
        summary=f"{RES}/data/ingest.json",
    params:
        step=step("ingest"),
        inputs=lambda wc: jq(ingest_settings()["inputs"]),
        opts=lambda wc: ingest_options(),
        settings=lambda wc: ingest_extra(),
        nonfinite=config["data"]["nonfinite"],
    benchmark:
        f"{RES}/benchmarks/ingest.tsv"
    log:
        f"{RES}/logs/ingest.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --inputs-json {params.inputs:q} --out {output.events:q} --summary {output.summary:q}"
        " {params.opts:q} --settings-json {params.settings:q} --nonfinite {params.nonfinite:q}"
        + TO_LOG
