# Read the toy sample or the user's ROOT/Parquet/CSV files into one canonical table.
def _ingest_settings():
    if config["data"]["source"] == "toy":
        return {"inputs": [{"path": f"{RES}/data/toy.parquet", "name": "toy"}],
                "label_column": "label", "weight_column": "weight",
                "event_id_column": "event_id", "columns": None}
    return config["data"]["files"]


rule ingest:
    input:
        [i["path"] for i in _ingest_settings()["inputs"]],
    output:
        events=f"{RES}/data/events.parquet",
        summary=f"{RES}/data/ingest.json",
    params:
        inputs=lambda wc: jq(_ingest_settings()["inputs"]),
        opts=lambda wc: " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in _ingest_settings().items()
            if k in ("label_column", "weight_column", "event_id_column") and v),
        columns=lambda wc: ",".join(_ingest_settings()["columns"] or []),
        nonfinite=config["data"]["nonfinite"],
    log:
        f"{RES}/logs/ingest.log",
    shell:
        "{PY}.ingest --inputs-json {params.inputs:q} --out {output.events} --summary {output.summary}"
        " {params.opts} --columns={params.columns:q} --nonfinite {params.nonfinite} > {log} 2>&1"
