# Score the files of `apply.inputs` with the models of `apply.models`: one job per
# file, writing a copy of its events with one score column per model (a TTree for
# ROOT inputs, Parquet otherwise); every event, in the input's order, no cut.
rule apply:
    input:
        models=lambda wc: expand(f"{RES}/models/{{model}}", model=apply_models()),
        data=lambda wc: APPLY[wc.applied]["path"],
    output:
        applied=f"{RES}/apply/{{applied}}",
        record=f"{RES}/records/apply/{{applied}}.json",
    params:
        step=step("apply"),
        models=lambda wc, input: [a for m in input.models for a in ("--model-dir", m)],
        tree=lambda wc: opt("--tree", APPLY[wc.applied]["tree"]),
        fmt=lambda wc: opt("--format", APPLY[wc.applied]["format"]),
        chunk=config["apply"]["chunk_size"],
    benchmark:
        f"{RES}/benchmarks/apply/{{applied}}.tsv"
    log:
        f"{RES}/logs/apply/{{applied}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} {params.models:q} --input {input.data:q} --out {output.applied:q}"
        " {params.tree:q} {params.fmt:q} --chunk-size {params.chunk:q} --record {output.record:q}"
        + TO_LOG
