# All models side by side (CSV for machines, Markdown for people, headed by
# the inputs' cut-flow from the ingest record).
rule leaderboard:
    input:
        metrics=expand(f"{RES}/metrics/{{model}}.json", model=MODELS),
        ingest=f"{RES}/data/ingest.json",
    output:
        csv=report(f"{RES}/leaderboard.csv", caption="report/leaderboard.rst", category="Leaderboard"),
        md=f"{RES}/leaderboard.md",
    params:
        step=step("leaderboard"),
    benchmark:
        f"{RES}/benchmarks/leaderboard.tsv"
    log:
        f"{RES}/logs/leaderboard.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --metrics {input.metrics:q} --ingest {input.ingest:q} --csv {output.csv:q}"
        " --md {output.md:q}"
        + TO_LOG
