# All models side by side (CSV for machines, Markdown for people).
rule leaderboard:
    input:
        metrics=expand(f"{RES}/metrics/{{model}}.json", model=MODELS),
        ingest=[f"{RES}/data/ingest.json"] if config["data"]["source"] == "files" else [],
    output:
        csv=report(f"{RES}/leaderboard.csv", caption="report/leaderboard.rst", category="Leaderboard"),
        md=f"{RES}/leaderboard.md",
    params:
        step=step("leaderboard"),
        ingest=lambda wc, input: ["--ingest", *input.ingest] if input.ingest else [],
    log:
        f"{RES}/logs/leaderboard.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --metrics {input.metrics:q} --csv {output.csv:q} --md {output.md:q}"
        " {params.ingest:q} > {log:q} 2>&1"
