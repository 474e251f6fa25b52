"""The report's first page: the leaderboard tables and key figures, rendered as
Snakemake renders the workflow description (Jinja, then docutils)."""

from pathlib import Path

import pandas as pd

from hepml_steps import plots
from hepml_steps.report import front_page

ROOT = Path(__file__).resolve().parents[1]


def _render_workflow_rst(workdir: Path, results: str) -> str:
    """rules/report/workflow.rst as snakemake.report renders it, in ``workdir``."""
    import os

    import pytest
    from snakemake.report import publish_parts  # docutils', as snakemake's report calls it

    Environment = pytest.importorskip("jinja2").Environment  # what snakemake --report renders with

    class Snakemake:
        config = {"results": results}

    text = (ROOT / "rules" / "report" / "workflow.rst").read_text()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return publish_parts(
            Environment().from_string(text).render(snakemake=Snakemake, categories={}, files={}),
            writer="html",
            settings_overrides={"report_level": 2, "halt_level": 2},
        )["html_body"]
    finally:
        os.chdir(cwd)


def test_first_page_opens_on_the_leaderboard_and_key_figures(tmp_path):
    res = tmp_path / "results"
    (res / "plots" / "summary").mkdir(parents=True)
    pd.DataFrame(
        [
            {
                "model": "bdt",
                "family": "xgboost",
                "task": "classification",
                "roc_auc": 0.9,
                "z_max": 6.1,
                "optimal_cut": 0.7,
                "s_at_cut": 600.0,
                "b_at_cut": 9000.0,
            },
            {
                "model": "logreg",
                "family": "logistic_regression",
                "task": "classification",
                "roc_auc": 0.7,
                "z_max": 3.7,
                "optimal_cut": 0.4,
                "s_at_cut": 700.0,
                "b_at_cut": 40000.0,
            },
            {"model": "pca", "family": "pca", "task": "dimreduction", "explained_variance_ratio_total": 0.8},
        ]
    ).to_csv(res / "leaderboard.csv", index=False)
    plt = plots._plt()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    plots._save(fig, res / "plots" / "summary" / "roc_inverse_bkg_eff_log.png")
    plots._save(fig, res / "plots" / "summary" / "roc_rejection_vs_efficiency.png")  # not a first-page figure
    front_page(str(res / "leaderboard.csv"), str(res / "plots" / "summary"), str(res / "report" / "front.rst"))
    html = _render_workflow_rst(tmp_path, "results")
    first = html.index("<table")
    assert first < html.index("How these were obtained")  # the results come first
    assert html.count("<table") == 2  # one per task present
    table = html[first : html.index("</table>")]
    assert "Z_max" in table and "bdt" in table and "6.1" in table
    assert table.index("bdt") < table.index("logreg")  # ranked by AUC
    assert "train AUC" not in table and "xgboost" not in table  # the first-page columns only (narrow column)
    assert html.count('src="data:image/png;base64,') == 1  # the figures not drawn are left out
    assert html.count("data:image/png;base64,") == 1  # embedded once (the alt text is the name)
