"""The leaderboard's Markdown header: the inputs' cut-flow from the ingest record (never in the CSV)."""

import json

import pandas as pd

from hepml_steps import leaderboard as lb


def _metrics(tmp_path, name, task, metrics):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"model": name, "task": task, "family": "f", "metrics": metrics}))
    return str(path)


INGEST = {
    "labelled": True,
    "cutflow": [
        {"input": "sig_*.root", "read": 3000, "after_cut": 2400, "after_nonfinite": 2310},
        {"input": "bkg_*.root", "read": 1000, "after_cut": 500, "after_nonfinite": 500},
    ],
}


def test_cutflow_heads_the_markdown_and_stays_out_of_the_csv(tmp_path):
    files = [
        _metrics(tmp_path, "bdt", "classification", {"roc_auc": 0.8}),
        _metrics(tmp_path, "reg", "regression", {"mse": 1.5}),
    ]
    (tmp_path / "ingest.json").write_text(json.dumps(INGEST))
    lb.leaderboard(files, str(tmp_path / "lb.csv"), str(tmp_path / "lb.md"), str(tmp_path / "ingest.json"))
    md = (tmp_path / "lb.md").read_text().splitlines()
    head = md[: md.index("## Classification (signal vs background)")]
    assert "| input | read | after cut | after NaN/inf drop |" in head
    assert "| sig_*.root | 3000 | 2400 (80.0 %) | 2310 (77.0 %) |" in head
    assert "| bkg_*.root | 1000 | 500 (50.0 %) | 500 (50.0 %) |" in head
    assert "| **all** | 4000 | 2900 (72.5 %) | 2810 (70.2 %) |" in head
    assert not any("unlabelled" in line for line in md)
    csv = pd.read_csv(tmp_path / "lb.csv")
    assert sorted(csv["model"]) == ["bdt", "reg"] and len(csv) == 2
    assert not {"input", "read", "after_cut", "after_nonfinite", "cutflow"} & set(csv.columns)


def test_one_input_has_no_total_row_and_unlabelled_events_are_said(tmp_path):
    rec = {"labelled": False, "cutflow": [{"input": "mc.root", "read": 10, "after_cut": 10, "after_nonfinite": 9}]}
    md = lb.markdown([lb.row({"model": "reg", "task": "regression", "metrics": {"mse": 1.0}})], rec)
    assert "| mc.root | 10 | 10 (100.0 %) | 9 (90.0 %) |" in md and "**all**" not in md
    assert "The events are unlabelled" in md


def test_without_the_ingest_record_there_is_no_cutflow(tmp_path):
    files = [_metrics(tmp_path, "bdt", "classification", {"roc_auc": 0.8})]
    lb.leaderboard(files, str(tmp_path / "lb.csv"), str(tmp_path / "lb.md"))
    md = (tmp_path / "lb.md").read_text()
    assert md.startswith("# Leaderboard\n\n## Classification") and "cut-flow" not in md


def test_cli_takes_the_ingest_record(tmp_path):
    files = [_metrics(tmp_path, "bdt", "classification", {"roc_auc": 0.8})]
    (tmp_path / "ingest.json").write_text(json.dumps(INGEST))
    assert (
        lb.main(
            [
                "--metrics",
                *files,
                "--ingest",
                str(tmp_path / "ingest.json"),
                "--csv",
                str(tmp_path / "lb.csv"),
                "--md",
                str(tmp_path / "lb.md"),
            ]
        )
        == 0
    )
    assert "| sig_*.root | 3000 |" in (tmp_path / "lb.md").read_text()
