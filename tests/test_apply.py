"""The apply step: score unlabelled ROOT (TTree, RNTuple) and Parquet files with bundles."""

from __future__ import annotations

import numpy as np
import pytest

from hepml_steps import apply, bundle, ingest
from hepml_steps.errors import DataError
from tests.nanoaod_files import nanoaod_arrays, write
from tests.test_bundle import ALIASES, COLUMNS, trained  # noqa: F401 (the fixture)

N = 700


def _expected(trained, path, tmp_path):  # noqa: F811
    """Scores of the file's events through ingest (no cut, NaN kept) and the bundles."""
    table = tmp_path / "ingested.parquet"
    ingest.ingest([{"path": str(path)}], table, columns=COLUMNS, aliases=ALIASES, nonfinite="keep")
    import pandas as pd

    raw = pd.read_parquet(table)
    return {m: bundle.load(d).score(raw) for m, d in trained["models"].items()}


@pytest.mark.parametrize("kind", ["ttree", "rntuple", "rntuple without counters"])
def test_apply_root(trained, tmp_path, kind):  # noqa: F811
    """The input's branches and the scores, entry for entry, written as a TTree whose
    collections keep NanoAOD's counters (one nJet for Jet_pt, Jet_eta...), made from the
    collections' lengths for an RNTuple, which has none of its own."""
    import uproot

    arrays = nanoaod_arrays(N, seed=7, signal=True)
    if kind == "rntuple without counters":
        arrays = {k: v for k, v in arrays.items() if k not in ("nJet", "nMuon")}
    path = write(tmp_path / "data.root", arrays, kind.split()[0])
    out = tmp_path / "scored.root"
    rec = apply.apply([str(d) for d in trained["models"].values()], str(path), str(out), chunk_size=300)
    assert rec["n_events"] == N
    t = uproot.open(out)["Events"]
    assert t.num_entries == N
    keys = set(t.keys())
    assert {"MET_pt", "nJet", "Jet_pt", "bdt_score", "mlp_score"} <= keys
    assert not {k for k in keys if k.startswith(("nJet_", "nMuon_"))}  # one counter per collection
    for b in keys:
        if b.startswith(("Jet_", "Muon_")):
            assert t[b].count_leaf.member("fName") == "n" + b.split("_")[0], b
    got = t.arrays(["MET_pt", "Jet_pt", "bdt_score", "mlp_score"], library="ak")
    np.testing.assert_array_equal(got["MET_pt"].to_numpy(), arrays["MET_pt"])  # entry order kept
    assert got["Jet_pt"].tolist() == arrays["Jet_pt"].tolist()
    want = _expected(trained, path, tmp_path)
    for m in trained["models"]:
        np.testing.assert_allclose(got[f"{m}_score"].to_numpy(), want[m], atol=1e-6)


def test_apply_parquet(trained, tmp_path):  # noqa: F811
    import awkward as ak
    import pandas as pd

    arrays = nanoaod_arrays(N, seed=8, signal=False)
    path = tmp_path / "data.parquet"
    ak.to_parquet(ak.Array(arrays), path)
    out = tmp_path / "scored.parquet"
    apply.apply([str(trained["models"]["bdt"])], str(path), str(out))
    df = pd.read_parquet(out)
    assert len(df) == N and "bdt_score" in df and "Jet_pt" in df
    want = _expected({"models": {"bdt": trained["models"]["bdt"]}}, path, tmp_path)
    np.testing.assert_allclose(df["bdt_score"].to_numpy(), want["bdt"], atol=1e-6)


def test_apply_missing_branch(trained, tmp_path):  # noqa: F811
    arrays = nanoaod_arrays(50, seed=9, signal=True)
    del arrays["Jet_btagDeepB"]
    path = write(tmp_path / "nobtag.root", arrays, "ttree")
    with pytest.raises(DataError, match=r"model 'bdt'.*Jet_btagDeepB|max_Jet_btagDeepB.*model 'bdt'"):
        apply.apply([str(trained["models"]["bdt"])], str(path), str(tmp_path / "o.root"))
    assert not (tmp_path / "o.root").exists()


def test_cli_errors_are_one_line(trained, tmp_path, capsys):  # noqa: F811
    bad = tmp_path / "bad.root"
    bad.write_text("not root")
    rc = apply.main(
        ["--model-dir", str(trained["models"]["bdt"]), "--input", str(bad), "--out", str(tmp_path / "o.root")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("hepml: error:") and "bad.root" in err[-1]


def test_collections_share_a_counter_only_when_they_count_alike():
    """Jet_pt and Jet_eta (same lengths) get one nJet; Jet_x (other lengths) keeps its own; a
    branch named nMuon that counts something else is not used; a chunk where collections
    given one counter disagree, or the input's counter branch does, stops with a DataError."""
    import awkward as ak

    arrays = ak.Array(
        {
            "Jet_pt": [[1.0, 2.0], [3.0]],
            "Jet_eta": [[0.1, 0.2], [0.3]],
            "Jet_x": [[1.0], [2.0, 3.0]],
            "Muon_pt": [[5.0], []],
            "nMuon": np.array([2, 2], dtype=np.int32),
            "MET_pt": [1.0, 2.0],
        }
    )
    shared = apply._shared_counters(arrays, ["Jet_pt", "Jet_eta", "Jet_x", "Muon_pt", "MET_pt"], list(arrays.fields))
    assert shared == {"Jet_pt": "nJet", "Jet_eta": "nJet"}
    apply._check_counts(arrays, shared, "in.root")
    later = ak.Array({"Jet_pt": [[1.0], [3.0]], "Jet_eta": [[0.1, 0.2], [0.3]], "nJet": np.array([1, 1])})
    with pytest.raises(DataError, match=r"in.root: branches 'Jet_pt' and 'Jet_eta' share the counter 'nJet'"):
        apply._check_counts(later, shared, "in.root")
    with pytest.raises(DataError, match=r"in.root: branch 'nJet' does not count the objects of 'Jet_eta'"):
        apply._check_counts(later, {"Jet_eta": "nJet"}, "in.root")


def test_output_names_tell_colliding_stems_apart():
    """One output per input, never two alike: the stem, the parent folders that tell
    colliding stems apart, a number for the same file given twice."""
    names = apply.output_names(
        [
            ("d/2017/nano.root", "root"),
            ("d/2018/nano.root", "root"),
            ("e/2018/nano.root", "root"),
            ("d/2017/nano.root", "root"),  # again, from another apply.inputs entry
            ("d/2017/nano.parquet", None),
            ("x/single.root", "root"),
            ("2017_nano.root", "root"),  # its own name is a made-up one
        ]
    )
    assert names == [
        "d_2017_nano.root",
        "d_2018_nano.root",
        "e_2018_nano.root",
        "1_d_2017_nano.root",
        "nano.parquet",
        "single.root",
        "2017_nano.root",
    ]
    assert apply.output_names([("a/2017/nano.root", "root"), ("a/2018/nano.root", "root")]) == [
        "2017_nano.root",
        "2018_nano.root",
    ]
    assert apply.output_names([("a/nano.root", "root"), ("a/nano.root", "root"), ("a/nano.root", "root")]) == [
        "nano.root",
        "1_nano.root",
        "2_nano.root",
    ]
    assert apply.output_names([("a/nano.csv", None), ("a/nano.parquet", None)]) == ["nano.parquet", "1_nano.parquet"]
    # folders below the shared one only: the same names wherever the workflow runs
    assert apply.output_names([("nano.root", "root"), ("old/nano.root", "root")]) == ["nano.root", "old_nano.root"]
    assert apply.output_names([("/abs/nano.root", "root"), ("/abs/old/nano.root", "root")]) == [
        "nano.root",
        "old_nano.root",
    ]
    # what stays alike is numbered; the others keep their folders
    assert apply.output_names(
        [("d/2017/nano.csv", None), ("d/2017/nano.parquet", None), ("d/2018/nano.parquet", None)]
    ) == ["2017_nano.parquet", "1_2017_nano.parquet", "2018_nano.parquet"]
