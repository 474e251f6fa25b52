"""All models side by side: a CSV with every figure of merit, and a Markdown
table per task for people (ranked as TMVA does, by ROC integral for
classifiers; by MSE for regression; by silhouette for clustering). Each
task's section (title, columns, ranking metric) is the task's own
(:mod:`hepml_steps.tasks`); sections follow the order of
:data:`hepml_steps.tasks.TASKS`.

Beside the metrics, each row carries the cost of the model: training time,
the tuning budget used (trials, wall time) and, when measured, the energy
of training and inference (J, J/event, events/s, with the method).

Given the ingest record (``ingest.json``), the Markdown header shows the
events the models were judged on: the cut-flow per input (events read, after
the cut, after dropping NaN/inf) and whether the events are labelled. The
CSV holds models only: one row each, nothing of the inputs.

The features the training step's leakage check flagged are the ``leakage``
column and a line under the tables.
"""

from __future__ import annotations

import math

from . import cli, tasks
from .errors import DataError
from .io import atomic_path, read_json

#: Cost columns of every section: (column, header, format).
_COST = [
    ("fit_seconds", "train s", ".1f"),
    ("tuning_trials", "tuning trials", ""),
    ("tuning_seconds", "tuning s", ".1f"),
    ("train_j_per_event", "train J/event", ".3g"),
    ("inference_j_per_event", "inference J/event", ".3g"),
    ("inference_events_per_s", "inference events/s", ".3g"),
]


def row(met: dict) -> dict:
    """One flat leaderboard row from a metrics.json document."""
    extra = met.get("extra") or {}
    r = {"model": met["model"], "family": met.get("family") or extra.get("family"), "task": met["task"]}
    r.update(met.get("metrics") or {})
    ot = met.get("overtraining") or {}
    if ot.get("flagged") is not None:
        r["overtrained"] = "yes" if ot["flagged"] else "no"
    r["n_train"] = extra.get("n_train")
    flagged = (extra.get("leakage") or {}).get("flagged") or []
    r["leakage"] = "; ".join(f"{f['column']} ({f['reason']})" for f in flagged) or None
    r["fit_seconds"] = extra.get("fit_seconds")
    tuning = extra.get("tuning") or {}
    if tuning:
        r["tuning_trials"] = tuning.get("n_trials")
        r["tuning_seconds"] = tuning.get("wall_seconds")
        r["tuning_objective"] = tuning.get("objective")
        r["tuning_baseline"] = tuning.get("baseline_value")
        r["tuning_best"] = tuning.get("best_value")
    for step, e in (extra.get("energy") or {}).items():
        for k in (
            "energy_j",
            "j_per_event",
            "events_per_s",
            "wall_s",
            "cpu_s",
            "peak_rss_mib",
            "co2_g",
            "method",
            "device",
        ):
            if e.get(k) is not None:
                r[f"{step}_{k}"] = e[k]
    return r


def _fmt(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if fmt and isinstance(v, (int, float)):
        return format(v, fmt)
    return str(v)


def _ranked(rows: list[dict], task: tasks.Task) -> list[dict]:
    key, desc = task.rank_by

    def sort_key(r):
        v = r.get(key)
        return (v is None, -(v or 0) if desc else (v or 0))

    return sorted(rows, key=sort_key)


def negative_weights_line(ingest: dict | None) -> list[str]:
    """The header line on negative event weights of the ingest record (none when there are none)."""
    neg = (ingest or {}).get("negative_weights") or {}
    if not any(v.get("n") for v in neg.values()):
        return []
    parts = [f"{c} {v['n']} events (Σw = {v['sum_weights']:.4g})" for c, v in neg.items()]
    return [
        f"Negative event weights: {', '.join(parts)}. Metrics use the signed weights; fits follow "
        "`negative_weights` (default `ignore`: weight 0).",
        "",
    ]


def _pct(n: int, of: int) -> str:
    return f"{n} ({100.0 * n / of:.1f} %)" if of else str(n)


def cutflow_table(record: dict) -> list[str]:
    """The header's cut-flow: one row per input of the ingest ``record``
    (``cutflow: [{input, read, after_cut, after_nonfinite}]``), counts with
    their fraction of the events read, and a total row for several inputs."""
    flow = record.get("cutflow") or []
    if not flow:
        return []
    lines = [
        "Events per input (cut-flow of `data/ingest.json`; the last column goes on to the split):",
        "",
        "| input | read | after cut | after NaN/inf drop |",
        "|---|---:|---:|---:|",
    ]
    for f in flow:
        lines.append(
            f"| {f['input']} | {f['read']} | {_pct(f['after_cut'], f['read'])} | "
            f"{_pct(f['after_nonfinite'], f['read'])} |"
        )
    if len(flow) > 1:
        tot = {k: sum(f[k] for f in flow) for k in ("read", "after_cut", "after_nonfinite")}
        lines.append(
            f"| **all** | {tot['read']} | {_pct(tot['after_cut'], tot['read'])} | "
            f"{_pct(tot['after_nonfinite'], tot['read'])} |"
        )
    lines.append("")
    if record.get("labelled") is False:
        lines += ["The events are unlabelled: figures against signal/background labels are left out.", ""]
    return lines


def markdown(rows: list[dict], ingest: dict | None = None) -> str:
    """The leaderboard for people: the cut-flow of the inputs (given the ingest
    record) and its negative event weights, one ranked table per task, with the Bayes-optimal AUC when known
    and the energy methods used; columns no row fills are left out."""
    lines = ["# Leaderboard", ""] + cutflow_table(ingest or {}) + negative_weights_line(ingest)
    bayes = [r["bayes_auc"] for r in rows if r.get("bayes_auc") is not None]
    if bayes:
        lines += [
            f"Bayes-optimal AUC on the test split (exact likelihood ratio of the toy): **{bayes[0]:.4f}**. "
            "No classifier can beat it on average; the gap is what a model leaves on the table.",
            "",
        ]
    for task in tasks.TASKS.values():
        rs = [r for r in rows if r["task"] == task.name]
        if not rs:
            continue
        cols = [c for c in list(task.leaderboard_columns) + _COST if any(r.get(c[0]) is not None for r in rs)]
        lines += [
            f"## {task.title}",
            "",
            "| rank | model | family | " + " | ".join(h for _, h, _ in cols) + " |",
            "|---:|---|---|" + "---:|" * len(cols),
        ]
        for i, r in enumerate(_ranked(rs, task), 1):
            lines.append(
                f"| {i} | {r['model']} | {r['family']} | " + " | ".join(_fmt(r.get(c), f) for c, _, f in cols) + " |"
            )
        lines.append("")
    leaks = [f"{r['model']}: {r['leakage']}" for r in rows if r.get("leakage")]
    if leaks:
        lines += [
            "**Possible leakage** (a feature alone separates the classes or looks like an identifier; "
            "see training.leakage): " + "; ".join(leaks),
            "",
        ]
    methods = sorted({str(v) for r in rows for k, v in r.items() if k.endswith("_method")})
    if methods:
        lines += [f"Energy method(s): {', '.join(methods)} (see each model's energy record).", ""]
    return "\n".join(lines)


def leaderboard(metrics_files: list[str], out_csv: str, out_md: str, ingest: str | None = None) -> list[dict]:
    """Write the CSV (every column) and Markdown leaderboards of the metrics files.

    Parameters
    ----------
    metrics_files : list of str
        metrics.json documents of the evaluate step.
    out_csv, out_md : str
        The CSV and Markdown leaderboards to write.
    ingest : str, optional
        The ingest record (``ingest.json``): its cut-flow and negative event weights head the Markdown.

    Returns
    -------
    list of dict
        The rows, grouped by task (in :data:`hepml_steps.tasks.TASKS` order, unknown
        tasks last) and ranked within each task.

    Raises
    ------
    DataError
        No files, or a file that is not a metrics document.
    """
    import pandas as pd

    if not metrics_files:
        raise DataError("leaderboard: no metrics files given")
    rows = []
    for path in metrics_files:
        met = read_json(path)
        if "model" not in met or "task" not in met:
            raise DataError(f"leaderboard: {path} is not a metrics file (no 'model'/'task')")
        rows.append(row(met))
    ordered = []
    for task in tasks.TASKS.values():
        ordered += _ranked([r for r in rows if r["task"] == task.name], task)
    ordered += [r for r in rows if r["task"] not in tasks.TASKS]
    df = pd.DataFrame(ordered)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(out_md) as tmp:
        tmp.write_text(markdown(ordered, read_json(ingest) if ingest else None))
    return ordered


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--metrics", nargs="+", required=True)
        p.add_argument("--csv", required=True)
        p.add_argument("--md", required=True)
        p.add_argument("--ingest", help="the ingest record (ingest.json): cut-flow and negative weights for the header")

    return cli.run(build, lambda a: leaderboard(a.metrics, a.csv, a.md, a.ingest), argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
