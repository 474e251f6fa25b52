# Publish each model to MLflow as soon as it is evaluated (an MLflow model,
# artifacts by kind, dataset lineage, the resolved config and git commit, the
# real training times); once every model is, attach the leaderboard and
# comparison plots to each run. Local rules (they run on the submit host, which
# can reach the tracking server); writes are serialised by a lock inside the step.
localrules:
    track,
    track_summary,


rule track:
    input:
        record=f"{RES}/records/{{model}}.train.json",
        inference=f"{RES}/records/{{model}}.predict.json",
        metrics=f"{RES}/metrics/{{model}}.json",
        predictions=f"{RES}/predictions/{{model}}.parquet",
        model=f"{RES}/models/{{model}}",
        plots=f"{RES}/plots/{{model}}",
        importance=f"{RES}/importance/{{model}}.json",
        trials=lambda wc: f"{RES}/tuning/{wc.model}.trials.csv" if tuned(wc.model) else [],
        **{s: f"{RES}/features/{s}.parquet" for s in SPLITS},
    output:
        f"{RES}/tracking/{{model}}.json",
    params:
        step=step("track", "model"),
        uri=lambda wc: config["tracking"]["uri"] or "",
        experiment=config["tracking"]["experiment"],
        register=["--register"] if config["tracking"]["register"] else [],
        trials=lambda wc, input: opt("--trials", input.trials),
        datasets=lambda wc, input: [f"--dataset={s}={input[s]}" for s in SPLITS],
        config=jq(config),
        spec=lambda wc: jq(MODELS[wc.model]),
        workflow=workflow.basedir,
        results=results_of,
    benchmark:
        f"{RES}/benchmarks/track/{{model}}.tsv"
    log:
        f"{RES}/logs/track/{{model}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --model {wildcards.model:q} --record {input.record:q}"
        " --inference-record {input.inference:q} --metrics {input.metrics:q}"
        " --importance {input.importance:q} --predictions {input.predictions:q}"
        " --model-dir {input.model:q} --plots-dir {input.plots:q} {params.trials:q}"
        " {params.datasets:q} --config {params.config:q} --spec {params.spec:q}"
        " --workflow-dir {params.workflow:q} {params.register:q} --out {output:q}"
        " --results-dir {params.results:q} --uri={params.uri:q} --experiment={params.experiment:q}"
        + TO_LOG


rule track_summary:
    input:
        runs=expand(f"{RES}/tracking/{{model}}.json", model=MODELS),
        md=f"{RES}/leaderboard.md",
        csv=f"{RES}/leaderboard.csv",
        plots=f"{RES}/plots/summary",
    output:
        f"{RES}/tracking/summary.json",
    params:
        step=step("track", "summary"),
        results=results_of,
    benchmark:
        f"{RES}/benchmarks/track_summary.tsv"
    log:
        f"{RES}/logs/track/summary.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --runs {input.runs:q} --out {output:q} --results-dir {params.results:q}"
        " --leaderboard {input.md:q} --leaderboard {input.csv:q} --plots-dir {input.plots:q}"
        + TO_LOG
