# Read the toy sample or the user's ROOT/Parquet/CSV files into one canonical table.
rule ingest:
    input:
        [i["path"] for i in ingest_settings()["inputs"]],
    output:
        events=f"{RES}/data/events.parquet",
        summary=f"{RES}/data/ingest.json",
    params:
        step=step("ingest"),
        inputs=lambda wc: jq(ingest_settings()["inputs"]),
        opts=lambda wc: ingest_options(),
        columns=lambda wc: ",".join(ingest_settings()["columns"] or []),
        nonfinite=config["data"]["nonfinite"],
    log:
        f"{RES}/logs/ingest.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --inputs-json {params.inputs:q} --out {output.events:q} --summary {output.summary:q}"
        " {params.opts:q} --columns={params.columns:q} --nonfinite {params.nonfinite:q} > {log:q} 2>&1"
