# Read the toy sample or the user's ROOT/Parquet/CSV files into one canonical table.
def _ingest_settings():
    if config["data"]["source"] == "toy":
        return {"inputs": [{"path": f"{RES}/data/toy.parquet", "name": "toy"}],
                "label_column": "label", "weight_column": "weight",
                "event_id_column": "event_id", "columns": None}
    return config["data"]["files"]


def _ingest_options():
    s = _ingest_settings()
    return [a for k in ("label_column", "weight_column", "event_id_column")
            for a in opt(f"--{k.replace('_', '-')}", s.get(k))]


rule ingest:
    input:
        [i["path"] for i in _ingest_settings()["inputs"]],
    output:
        events=f"{RES}/data/events.parquet",
        summary=f"{RES}/data/ingest.json",
    params:
        inputs=lambda wc: jq(_ingest_settings()["inputs"]),
        opts=lambda wc: _ingest_options(),
        columns=lambda wc: ",".join(_ingest_settings()["columns"] or []),
        nonfinite=config["data"]["nonfinite"],
    log:
        f"{RES}/logs/ingest.log",
    shell:
        "{PY}.ingest --inputs-json {params.inputs:q} --out {output.events:q} --summary {output.summary:q}"
        " {params.opts:q} --columns={params.columns:q} --nonfinite {params.nonfinite:q} > {log:q} 2>&1"
