"""The first page of the HTML report: the results, before anything else.

Reads the leaderboard CSV and the summary figures and writes one reStructuredText
fragment that ``rules/report/workflow.rst`` (the report's first page,
Snakemake's ``report:`` directive) includes: one ranked table per task (the
task's leaderboard columns, :mod:`hepml_steps.tasks`; columns no model fills
are left out) and the key comparison figures — ROC curves, significance
against signal efficiency, test AUC against energy per event with the Pareto
front — embedded as ``data:`` URIs so the page stays self-contained.
A figure that was not drawn (e.g. no classifier) is left out.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

from . import cli, tasks
from .io import atomic_path

#: The summary figures on the first page: (file name, caption).
KEY_FIGURES = (
    ("roc_inverse_bkg_eff_log.png", "ROC curves: background rejection 1/ε_B (log) against signal efficiency (test)"),
    ("significance_vs_efficiency.png", "Expected significance against signal efficiency, optimal cuts starred"),
    ("energy_auc_vs_j_per_event.png", "Test AUC against J/event of training and inference, with the Pareto front"),
)


def _cell(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if fmt and isinstance(v, (int, float)):
        return format(v, fmt)
    return str(v).replace("|", "/")


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    for r in [header, *rows]:
        lines.append(f"   * - {r[0] or ' '}")
        lines += [f"     - {c or ' '}" for c in r[1:]]
    return lines + [""]


def leaderboard_tables(rows: list[dict]) -> list[str]:
    """The ranked tables per task, as reStructuredText list-tables of the task's
    first-page columns (:meth:`hepml_steps.tasks.Task.front_columns`)."""
    from .leaderboard import _ranked

    lines = []
    for task in tasks.TASKS.values():
        rs = [r for r in rows if r.get("task") == task.name]
        if not rs:
            continue
        cols = [c for c in task.front_columns() if any(_cell(r.get(c[0]), "") != "–" for r in rs)]
        body = [
            [str(i), str(r["model"])] + [_cell(r.get(c), f) for c, _, f in cols]
            for i, r in enumerate(_ranked(rs, task), 1)
        ]
        lines += _table(task.title, ["rank", "model"] + [h.replace("|", "/") for _, h, _ in cols], body)
    return lines


def figures(summary_dir: str | None) -> list[str]:
    """The key comparison figures that exist in ``summary_dir``, embedded."""
    lines = []
    for name, caption in KEY_FIGURES:
        path = Path(summary_dir or "") / name
        if summary_dir and path.is_file():
            # docutils refuses lines over 10,000 characters; a URI's lines are joined without spaces
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            uri = "data:image/png;base64," + data
            lines += [f".. figure:: {uri[:76]}"] + [f"   {uri[i : i + 76]}" for i in range(76, len(uri), 76)]
            lines += ["   :width: 100%", f"   :alt: {name}", "", f"   {caption}", ""]  # alt: not the URI again
    return lines


def front_page(leaderboard_csv: str, summary_dir: str | None, out: str) -> str:
    """Write the report's first-page fragment ``out`` (reStructuredText); return its text."""
    import pandas as pd

    df = pd.read_csv(leaderboard_csv)
    rows = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]
    bayes = [r["bayes_auc"] for r in rows if r.get("bayes_auc") is not None]
    lines = [
        "Results",
        "-------",
        "",
        "Every model on the test split, weighted; every column and each model's figures are under "
        "*Leaderboard* and *Models* (left), the full table in ``leaderboard.csv``. "
        "Z_max: the expected significance at the optimal cut; S and B: the full sample's expected "
        "yields there."
        + (f" The Bayes-optimal AUC (exact likelihood ratio of the toy) is **{bayes[0]:.4f}**." if bayes else ""),
        "",
    ]
    lines += leaderboard_tables(rows) + figures(summary_dir)
    text = "\n".join(lines) + "\n"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return text


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--leaderboard", required=True, help="the leaderboard CSV")
        p.add_argument("--summary-dir", help="the summary plots folder")
        p.add_argument("--out", required=True, help="the reStructuredText fragment to write")

    return cli.run(build, lambda a: front_page(a.leaderboard, a.summary_dir, a.out), argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
