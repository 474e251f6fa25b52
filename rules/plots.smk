# Figures per model and across models; all of them go into the HTML report:
#   snakemake --report results/report.html
rule plots:
    input:
        predictions=f"{RES}/predictions/{{model}}.parquet",
        metrics=f"{RES}/metrics/{{model}}.json",
        record=f"{RES}/records/{{model}}.train.json",
        importance=f"{RES}/importance/{{model}}.json",
        features_test=f"{RES}/features/test.parquet",
        trials=lambda wc: f"{RES}/tuning/{wc.model}.trials.csv" if tuned(wc.model) else [],
    output:
        report(
            directory(f"{RES}/plots/{{model}}"),
            patterns=["{name}.png"],
            caption="report/model_plots.rst",
            category="Models",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "{name}"},
        ),
    params:
        step=step("plots", "model"),
        trials=lambda wc, input: opt("--trials", input.trials),
        formats=config["plots"]["formats"],
        units=jq(config["plots"]["units"]),
    benchmark:
        f"{RES}/benchmarks/plots/{{model}}.tsv"
    log:
        f"{RES}/logs/plots/{{model}}.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --model {wildcards.model:q} --predictions {input.predictions:q}"
        " --metrics {input.metrics:q} --record {input.record:q} --importance {input.importance:q}"
        " --features-test {input.features_test:q} {params.trials:q} --formats {params.formats:q}"
        " --units {params.units:q} --out-dir {output:q}"
        + TO_LOG


rule summary_plots:
    input:
        predictions=expand(f"{RES}/predictions/{{model}}.parquet", model=MODELS),
        train=f"{RES}/features/train.parquet",
        metrics=expand(f"{RES}/metrics/{{model}}.json", model=MODELS),
    output:
        report(
            directory(f"{RES}/plots/summary"),
            patterns=["{name}.png"],
            caption="report/summary_plots.rst",
            category="Comparison",
            labels={"figure": "{name}"},
        ),
    params:
        step=step("plots", "summary"),
        models=list(MODELS),
        tasks=[MODELS[m]["task"] for m in MODELS],
        formats=config["plots"]["formats"],
        units=jq(config["plots"]["units"]),
        max_inputs=config["plots"]["max_input_features"],
    benchmark:
        f"{RES}/benchmarks/summary_plots.tsv"
    log:
        f"{RES}/logs/plots/summary.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --predictions {input.predictions:q} --models {params.models:q}"
        " --tasks {params.tasks:q} --train-features {input.train:q} --metrics {input.metrics:q}"
        " --formats {params.formats:q} --units {params.units:q} --max-input-features {params.max_inputs:q}"
        " --out-dir {output:q}"
        + TO_LOG


# The report's first page (rules/report/workflow.rst includes it): the
# leaderboard tables and the key comparison figures.
rule report_front:
    input:
        leaderboard=f"{RES}/leaderboard.csv",
        summary=f"{RES}/plots/summary",
    output:
        f"{RES}/report/front.rst",
    params:
        step=step("report"),
    benchmark:
        f"{RES}/benchmarks/report_front.tsv"
    log:
        f"{RES}/logs/report_front.log",
    conda:
        CONDA_ENV
    shell:
        "{params.step:q} --leaderboard {input.leaderboard:q} --summary-dir {input.summary:q}"
        " --out {output:q}"
        + TO_LOG
