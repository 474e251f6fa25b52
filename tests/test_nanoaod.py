"""Real HEP files in: NanoAOD-like jagged collections, TTree/RNTuple parity, cuts,
many files per sample, label values, chunked reading (hepml_steps.ingest, jagged, readers)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake.utils import update_config

from hepml_steps import config as hconfig
from hepml_steps import ingest as ing
from hepml_steps.errors import ConfigError, DataError

from .conftest import ROOT
from .nanoaod_files import BOOKKEEPING, COLLECTIONS, nanoaod_arrays, sample, write

KINDS = ["ttree", "rntuple"]
ENTRY = (1 << ing.ENTRY_BITS) - 1
FLAT_FEATURES = {"genWeight", "nJet", "nMuon", "MET_pt", "PV_npvs", "PV_chi2", "HLT_IsoMu24", "Flag_goodVertices"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Per format: signal in two files (sig_0, sig_1: 400 events each), background in one (500)."""
    out = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind)
        out[kind] = (sample(folder, kind, True, 400, n_files=2, seed=1), sample(folder, kind, False, 500, seed=1))
    return out


def _inputs(files, kind, **sig):
    sig_files, bkg_files = files[kind]
    return [
        {"path": str(sig_files[0].parent / "sig_*.root"), "label": 1, **sig},
        {"path": str(bkg_files[0]), "label": 0},
    ]


def _run(tmp_path, inputs, name="o", **kw):
    out = tmp_path / f"{name}.parquet"
    summary = ing.ingest(inputs, out, summary_out=tmp_path / f"{name}.json", **kw)
    return summary, pd.read_parquet(out)


JAGGED = dict(
    columns=[
        "Jet_pt[0]",
        "Jet_pt[1]",
        "len(Jet_pt)",
        "max(Jet_btagDeepB)",
        "MET_pt",
        "lead_mu",
        "ht30",
        "any(Muon_tightId)",
        "sum(Jet_isTight)",
        "HLT_IsoMu24",
        "min(Jet_jetId)",
    ],
    aliases={"lead_mu": "Muon_pt[0]", "ht30": "sum(Jet_pt[Jet_pt > 30])"},
    cut="len(Jet_pt) >= 2 and Jet_pt[0] > 30",
    weight_column="genWeight",
)


# --------------------------------------------------------------------------- defaults and parity


@pytest.mark.parametrize("kind", KINDS)
def test_default_config_on_a_nanoaod_file(kind, files, tmp_path):
    """Every flat branch is a feature; bookkeeping, the all-NaN truth branch and
    the unused collections are left out and listed, with why; no event is lost."""
    s, df = _run(tmp_path, _inputs(files, kind))
    assert s["n_events"] == len(df) == 1300 and s["n_dropped_nonfinite"] == 0
    assert set(s["features"]) == FLAT_FEATURES
    assert set(BOOKKEEPING) <= set(s["excluded"]) and "bookkeeping" in s["excluded"]["run"]
    assert s["excluded"]["HTXS_Higgs_pt"].startswith("NaN/inf in every event of sig_*.root")
    assert sorted(s["unused_collections"]) == sorted(COLLECTIONS)
    assert {
        c: str(df[c].dtype) for c in ("HLT_IsoMu24", "Flag_goodVertices", "PV_npvs", "PV_chi2", "MET_pt", "nMuon")
    } == {
        "HLT_IsoMu24": "int8",
        "Flag_goodVertices": "int8",
        "PV_npvs": "int32",
        "PV_chi2": "float64",
        "MET_pt": "float32",
        "nMuon": "int32",
    }
    assert s["cutflow"] == [
        {"input": "sig_*.root", "read": 800, "after_cut": 800, "after_nonfinite": 800},
        {"input": "bkg_0.root", "read": 500, "after_cut": 500, "after_nonfinite": 500},
    ]


@pytest.mark.parametrize("settings", [{}, JAGGED], ids=["default", "jagged"])
def test_ttree_and_rntuple_give_identical_tables(settings, files, tmp_path):
    (ts, t), (rs, r) = (_run(tmp_path, _inputs(files, kind), name=kind, **settings) for kind in KINDS)
    # uproot writes an RNTuple's fields in alphabetical order: the default columns follow the file
    pd.testing.assert_frame_equal(t, r[t.columns] if not settings else r)
    assert ts["cutflow"] == rs["cutflow"] and sorted(ts["excluded"]) == sorted(rs["excluded"])
    if settings:  # collections no expression reads are listed, once
        assert sorted(ts["unused_collections"]) == ["Jet_eta", "Muon_charge"]
        assert list(t.columns[3:]) == [
            "Jet_pt_0",
            "Jet_pt_1",
            "len_Jet_pt",
            "max_Jet_btagDeepB",
            "MET_pt",
            "lead_mu",
            "ht30",
            "any_Muon_tightId",
            "sum_Jet_isTight",
            "HLT_IsoMu24",
            "min_Jet_jetId",
        ]


@pytest.mark.parametrize("kind", KINDS)
def test_tree_in_a_tdirectory_is_found_and_named(kind, tmp_path):
    path = write(tmp_path / "d.root", nanoaod_arrays(50, 3, True), kind, tree="nano/Events")
    both = [{"path": str(path), "label": 1, "name": "s"}, {"path": str(path), "label": 0, "name": "b"}]
    s, df = _run(tmp_path, both, columns=["Jet_pt[0]"], cut="len(Jet_pt) > 0")
    assert s["files"][0]["tree"] == "nano/Events" and len(df) == 2 * s["cutflow"][0]["after_cut"]
    s, _ = _run(tmp_path, [{**spec, "tree": "nano/Events"} for spec in both], columns=["MET_pt"])
    assert s["n_events"] == 100


# --------------------------------------------------------------------------- expressions


def test_jagged_expressions_match_a_per_event_reference(files, tmp_path):
    """Every form, computed in chunks of 37 events, equals a Python loop over the events."""
    import awkward as ak

    path = files["ttree"][0][0]
    arrays = nanoaod_arrays(400, seed=1000 * 1 + 10 * 0 + 1, signal=True, first_event=0)
    columns = [
        "Jet_pt[0]",
        "Jet_pt[2]",
        "len(Jet_pt)",
        "max(Jet_btagDeepB)",
        "min(Jet_eta)",
        "sum(Jet_pt)",
        "mean(Jet_eta)",
        "any(Jet_isTight)",
        "all(Jet_isTight)",
        "sum(Jet_isTight)",
        "nJet",
        "ht30",
        "dijet",
        "n_central",
        "lead_central",
        "max(Jet_jetId)",
    ]
    aliases = {
        "ht30": "sum(Jet_pt[Jet_pt > 30])",
        "dijet": "Jet_pt[0] + Jet_pt[1]",
        "n_central": "sum(abs(Jet_eta) < 2.4)",
        "lead_central": "central_pt[0]",
        "central_pt": "Jet_pt[abs(Jet_eta) < 2.4]",
    }
    both = [{"path": str(path), "label": 1, "name": "s"}, {"path": str(path), "label": 0, "name": "b"}]
    s, df = _run(tmp_path, both, columns=columns, aliases=aliases, cut="len(Jet_pt) >= 1", chunk_size=37)
    pt, eta, btag, tight, jet_id = (
        ak.to_list(arrays[b]) for b in ("Jet_pt", "Jet_eta", "Jet_btagDeepB", "Jet_isTight", "Jet_jetId")
    )
    nan = float("nan")
    ref = []
    for i in range(400):
        central = [p for p, e in zip(pt[i], eta[i]) if abs(e) < 2.4]
        ref.append(
            {
                "Jet_pt_0": pt[i][0] if pt[i] else nan,
                "Jet_pt_2": pt[i][2] if len(pt[i]) > 2 else nan,
                "len_Jet_pt": len(pt[i]),
                "max_Jet_btagDeepB": max(btag[i], default=nan),
                "min_Jet_eta": min(eta[i], default=nan),
                "sum_Jet_pt": sum(pt[i]),
                "mean_Jet_eta": np.mean(eta[i]) if eta[i] else nan,
                "any_Jet_isTight": any(tight[i]),
                "all_Jet_isTight": all(tight[i]),
                "sum_Jet_isTight": sum(tight[i]),
                "nJet": len(pt[i]),
                "ht30": sum(p for p in pt[i] if p > 30),
                "dijet": pt[i][0] + pt[i][1] if len(pt[i]) > 1 else nan,
                "n_central": len(central),
                "lead_central": central[0] if central else nan,
                "max_Jet_jetId": max(jet_id[i], default=nan),
            }
        )
    ref = pd.DataFrame(ref)
    passed = ref["len_Jet_pt"] >= 1
    complete = passed & ref.notna().all(axis=1)
    assert s["cutflow"][0] == {
        "input": "s",
        "read": 400,
        "after_cut": int(passed.sum()),
        "after_nonfinite": int(complete.sum()),
    }
    assert s["files"][0]["nonfinite_by_column"]["Jet_pt_2"] == int((passed & (ref["len_Jet_pt"] < 3)).sum())
    got = df[df["label"] == 1]
    got = got.set_index(got["event_id"] & ENTRY).sort_index()
    expected = ref[complete]
    assert list(got.index) == list(expected.index)
    for c in ref.columns:
        np.testing.assert_allclose(
            got[c].to_numpy(dtype=float), expected[c].to_numpy(dtype=float), rtol=1e-5, err_msg=c
        )
    assert got["Jet_pt_0"].dtype == np.float32 and got["any_Jet_isTight"].dtype == np.int8


def test_cut_flow_of_a_global_and_a_per_input_cut(files, tmp_path):
    inputs = _inputs(files, "ttree")
    inputs[1]["cut"] = "MET_pt < 80 or not HLT_IsoMu24"
    s, df = _run(tmp_path, inputs, columns=["MET_pt", "Jet_pt[0]"], cut="len(Jet_pt) >= 2 and Jet_pt[0] > 30")
    flows = []
    for spec, arrays in (
        (inputs[0], [nanoaod_arrays(400, 1000 + 10 * i + 1, True, i * 400) for i in range(2)]),
        (inputs[1], [nanoaod_arrays(500, 1000, False)]),
    ):
        n_cut = 0
        for a in arrays:
            pt = a["Jet_pt"]
            import awkward as ak

            keep = (ak.to_numpy(ak.num(pt)) >= 2) & ak.to_numpy(ak.fill_none(ak.firsts(pt), 0) > 30)
            if spec.get("cut"):
                keep &= (a["MET_pt"] < 80) | ~a["HLT_IsoMu24"]
            n_cut += int(keep.sum())
        flows.append(n_cut)
    assert [f["after_cut"] for f in s["cutflow"]] == flows
    assert [f["after_nonfinite"] for f in s["cutflow"]] == flows  # two jets: no NaN left
    assert [f["read"] for f in s["cutflow"]] == [800, 500]
    assert (df["Jet_pt_0"] > 30).all() and len(df) == sum(flows)
    assert [c["cut"] for c in s["files"][1]["cut"]] == [
        "len(Jet_pt) >= 2 and Jet_pt[0] > 30",
        "MET_pt < 80 or not HLT_IsoMu24",
    ]
    on_disk = json.loads((tmp_path / "o.json").read_text())
    assert on_disk["cutflow"] == s["cutflow"] and set(on_disk["cutflow"][0]) == {
        "input",
        "read",
        "after_cut",
        "after_nonfinite",
    }


# --------------------------------------------------------------------------- many files


def test_a_glob_a_list_and_a_directory_give_the_same_files_and_ids(files, tmp_path):
    sig_files, bkg_files = files["ttree"]
    folder = sig_files[0].parent
    bkg = {"path": str(bkg_files[0]), "label": 0}
    s1, by_glob = _run(tmp_path, [{"path": str(folder / "sig_*.root"), "label": 1, "name": "sig"}, bkg], "g")
    s2, by_list = _run(tmp_path, [{"path": [str(f) for f in reversed(sig_files)], "label": 1, "name": "sig"}, bkg], "l")
    s3, by_dir = _run(tmp_path, [{"path": str(folder), "pattern": "sig_*.root", "label": 1, "name": "sig"}, bkg], "d")
    pd.testing.assert_frame_equal(by_glob, by_list)
    pd.testing.assert_frame_equal(by_glob, by_dir)
    assert [f["path"] for f in s1["files"][0]["sources"]] == [str(f) for f in sig_files]  # sorted
    assert [f["first_entry"] for f in s1["files"][0]["sources"]] == [0, 400]
    ids = by_glob["event_id"].to_numpy()
    # entries of the files numbered one after the other (a TChain); a one-file input keeps its entry numbers
    np.testing.assert_array_equal(ids[:800], ing.hashed_ids("sig", 800))
    np.testing.assert_array_equal(ids[800:], ing.hashed_ids("bkg_0.root", 500))
    assert by_glob["event_id"].is_unique


def _load(override: dict):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(config, copy.deepcopy(override))
    hconfig.load(config, override)
    return config


def _files_config(**files):
    return {"data": {"source": "files", "files": files}}


def test_config_expands_globs_sorted_and_names_a_pattern_that_matches_nothing(files, tmp_path, monkeypatch):
    sig_files, bkg_files = files["ttree"]
    monkeypatch.chdir(sig_files[0].parent)  # Snakemake's working directory: relative globs start there
    config = _load(
        _files_config(
            inputs=[
                {"path": "sig_*.root", "label": 1},
                {"path": ["bkg_0.root"], "label": 0},
                {"path": ".", "pattern": "bkg_*.root", "label": 0, "name": "b2"},
            ]
        )
    )
    assert [i["files"] for i in config["data"]["files"]["inputs"]] == [
        ["sig_0.root", "sig_1.root"],
        ["bkg_0.root"],
        ["bkg_0.root"],
    ]
    with pytest.raises(ConfigError) as exc:
        _load(_files_config(inputs=[{"path": "sig_*.root", "label": 1}, {"path": "nope_*.root", "label": 0}]))
    assert str(exc.value) == "data.files.inputs[1].path: no file matches 'nope_*.root'"
    with pytest.raises(ConfigError, match=r"inputs\[0\]\.path: '\.' is a directory; give a 'pattern'"):
        _load(_files_config(inputs=[{"path": ".", "label": 1}]))
    with pytest.raises(ConfigError, match=r"inputs\[0\]\.path: no file matches 'missing\.root'"):
        _load(_files_config(inputs=[{"path": "missing.root", "label": 1}]))


@pytest.mark.parametrize(
    "files_cfg, message",
    [
        ({"cut": "len(Jet_pt) >= 2 and"}, "data.files.cut: cannot parse"),
        ({"cut": "Jet_pt[-1] > 30"}, "data.files.cut: 'Jet_pt[-1] > 30': 'Jet_pt[-1]': negative index"),
        ({"aliases": {"x": "__import__('os')"}}, "data.files.aliases.x: \"__import__('os')\": unknown function"),
        ({"aliases": {"x": "Jet_pt ** Jet_eta"}}, "the exponent must be a number"),
        (
            {"columns": ["Jet_pt[0] + Jet_pt[1]"]},
            "data.files.columns: 'Jet_pt[0] + Jet_pt[1]' has no automatic column name",
        ),
        ({"columns": ["Jet_pt.sum()"]}, "data.files.columns: 'Jet_pt.sum()': only len, max"),
        (
            {"label_column": "y", "signal_values": ["s"], "background_values": ["s", "b"]},
            "data.files.signal_values and background_values both hold ['s']",
        ),
        (
            {"signal_values": ["s"]},
            "data.files.signal_values: values of the label column, but data.files.label_column is not set",
        ),
        ({"inputs": [{"path": "x.root", "cut": "a <> b"}]}, "data.files.inputs[0].cut: cannot parse"),
    ],
)
def test_config_refuses_bad_expressions_and_label_values(files_cfg, message, files, monkeypatch):
    monkeypatch.chdir(files["ttree"][0][0].parent)
    files_cfg = {"inputs": [{"path": "sig_0.root", "label": 1}], **files_cfg}
    if files_cfg["inputs"][0]["path"] == "x.root":
        files_cfg["inputs"][0]["path"] = "sig_0.root"
    with pytest.raises(ConfigError) as exc:
        _load(_files_config(**files_cfg))
    assert message in str(exc.value) and "\n" not in str(exc.value)


# --------------------------------------------------------------------------- labels


def test_label_values_strings_plus_minus_one_and_booleans(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    x = rng.normal(size=n)
    higgs = tmp_path / "higgsml.csv"  # HiggsML: Label is s / b
    pd.DataFrame({"DER_mass": x, "Label": np.where(x > 0, "s", "b")}).to_csv(higgs, index=False)
    s, df = _run(tmp_path, [{"path": str(higgs)}], label_column="Label", signal_values=["s"])
    assert (df["label"].to_numpy() == (x > 0)).all() and s["signal_values"] == ["s"]
    assert list(df.columns) == ["event_id", "label", "weight", "DER_mass"]

    pm = tmp_path / "pm.parquet"  # +-1
    pd.DataFrame({"f": x, "y": np.where(x > 0, 1, -1)}).to_parquet(pm)
    _, df = _run(tmp_path, [{"path": str(pm)}], label_column="y", signal_values=[1])
    assert (df["label"].to_numpy() == (x > 0)).all()

    magic = tmp_path / "magic.csv"  # a telescope's g (gamma) / h (hadron): explicit background
    pd.DataFrame({"fLength": x, "class": np.where(x > 0, "g", "h")}).to_csv(magic, index=False)
    _, df = _run(tmp_path, [{"path": str(magic)}], label_column="class", background_values=["h"])
    assert (df["label"].to_numpy() == (x > 0)).all()

    import uproot

    with uproot.recreate(tmp_path / "b.root") as f:  # booleans
        f["t"] = {"f": x, "is_sig": x > 0}
    _, df = _run(tmp_path, [{"path": str(tmp_path / "b.root")}], label_column="is_sig")
    assert (df["label"].to_numpy() == (x > 0)).all() and "is_sig" not in df.columns


def test_label_value_outside_the_lists_or_the_default_lists_the_values_found(tmp_path):
    df = pd.DataFrame({"f": np.arange(6.0), "Label": ["s", "b", "s", "x", "b", "x"]})
    df.to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(
        DataError,
        match=r"h\.csv: label column 'Label' has \['x'\] in 2 events, in neither "
        r"signal_values \['s'\] nor background_values \['b'\] "
        r"\(values found: \['b', 's', 'x'\]\)",
    ):
        _run(
            tmp_path,
            [{"path": str(tmp_path / "h.csv")}],
            label_column="Label",
            signal_values=["s"],
            background_values=["b"],
        )
    with pytest.raises(
        DataError,
        match=r"must hold 0 \(background\) or 1 \(signal\); found \['b', 's', 'x'\] "
        r"in 6 events.*signal_values",
    ):
        _run(tmp_path, [{"path": str(tmp_path / "h.csv")}], label_column="Label")


# --------------------------------------------------------------------------- bad input: one line each

BAD = [
    (
        {"columns": ["max(MET_pt)"]},
        "data.files.columns 'max(MET_pt)': max() takes a collection (e.g. "
        "max(Jet_pt)); 'MET_pt' is one value per event (float32)",
    ),
    ({"columns": ["Jet_foo[0]"]}, "data.files.columns 'Jet_foo[0]': no branch or alias 'Jet_foo'"),
    ({"columns": ["MET_pt[0]"]}, "'MET_pt' is one value per event (float32), not a collection"),
    ({"columns": ["MET_pt"], "cut": "Jet_pt[0]"}, "data.files.cut 'Jet_pt[0]': is a number, not a condition"),
    ({"columns": ["MET_pt"], "cut": "Jet_pt > 30"}, "data.files.cut 'Jet_pt > 30': is one condition per object"),
    (
        {"columns": ["MET_pt"], "cut": "MET_pt > 1e9"},
        "data.files.inputs[0] (sig_0.root): data.files.cut 'MET_pt > 1e9' keeps no events of the 400 read",
    ),
    (
        {"columns": ["Jet_pt"]},
        "column 'Jet_pt' is not a flat numeric branch/column: it is a collection (var * float32)",
    ),
    (
        {"columns": ["jm"], "aliases": {"jm": "sum(Jet_pt * Muon_pt)"}},
        "data.files.aliases.jm 'sum(Jet_pt * Muon_pt)': cannot broadcast",
    ),
    ({"columns": ["a"], "aliases": {"a": "b + 1", "b": "a * 2"}}, "data.files.aliases.a: uses itself (a -> b -> a)"),
    (
        {"columns": ["Jet_pt[0]", "Jet_pt_0"], "aliases": {"Jet_pt_0": "Jet_pt[1]"}},
        "'Jet_pt_0' and 'Jet_pt[0]' both give the column 'Jet_pt_0'",
    ),
    ({"columns": ["MET_pt"], "cut": "any(Jet_pt)"}, "any() takes a per-object condition"),
]


@pytest.mark.parametrize("settings, message", BAD)
def test_bad_expressions_are_one_line_errors_naming_file_and_expression(settings, message, files, tmp_path, capsys):
    path = files["ttree"][0][0]
    out = tmp_path / "o.parquet"
    rc = ing.main(
        [
            "--inputs-json",
            json.dumps([{"path": str(path), "label": 1}]),
            "--out",
            str(out),
            "--settings-json",
            json.dumps(settings),
        ]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and lines[-1].startswith("hepml: error: ") and "Traceback" not in lines[-1]
    assert message in lines[-1], lines[-1]
    assert str(path) in lines[-1] or "data.files.inputs[0]" in lines[-1]
    assert not out.exists()


@pytest.mark.parametrize(
    "settings",
    [{"columns": ["nJet", "MET_pt"]}, {"columns": ["MET_pt"], "cut": "nJet >= 2"}, {"aliases": {"nj": "nJet"}}],
)
def test_a_counter_the_file_lacks_points_to_len_of_its_collection(settings, tmp_path, capsys):
    """A file written without NanoAOD counters (an RNTuple from uproot, Parquet lists): asking for
    nJet, as a column, in a cut or in an alias, names len(Jet_pt) in the one-line error."""
    import awkward as ak

    arrays = {k: v for k, v in nanoaod_arrays(50, seed=7, signal=True).items() if k not in ("nJet", "nMuon")}
    path = tmp_path / "nocounter.parquet"
    ak.to_parquet(ak.zip(arrays, depth_limit=1), path)
    settings = {**settings, "columns": settings.get("columns", ["nj", "MET_pt"])}
    rc = ing.main(
        ["--inputs-json", json.dumps([{"path": str(path), "label": 1}]), "--out", str(tmp_path / "o.parquet")]
        + ["--settings-json", json.dumps(settings)]
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1 and line.startswith("hepml: error: ") and str(path) in line, line
    assert "no counter branch nJet here: len(Jet_" in line and "counts the objects" in line, line
    assert not (tmp_path / "o.parquet").exists()


# --------------------------------------------------------------------------- chunks, types, exclusions


@pytest.mark.parametrize("kind", KINDS)
def test_chunks_of_7_events_give_the_table_of_one_chunk(kind, files, tmp_path):
    inputs = _inputs(files, kind)
    _, whole = _run(tmp_path, inputs, "whole", **JAGGED)
    _, small = _run(tmp_path, inputs, "small", chunk_size=7, **JAGGED)
    pd.testing.assert_frame_equal(whole, small)


def test_parquet_list_columns_are_collections_read_by_row_group(files, tmp_path):
    """A Parquet file with the same content (list columns) gives the TTree's table."""
    import awkward as ak

    path = files["ttree"][1][0]
    arrays = nanoaod_arrays(500, seed=1000, signal=False)
    ak.to_parquet(ak.zip(arrays, depth_limit=1), tmp_path / "bkg_0.parquet", row_group_size=64)
    settings = {k: v for k, v in JAGGED.items() if k != "cut"}
    _, from_root = _run(
        tmp_path, [{"path": str(path), "label": 0}, {"path": str(path), "label": 1, "name": "s"}], "r", **settings
    )
    _, from_pq = _run(
        tmp_path,
        [
            {"path": str(tmp_path / "bkg_0.parquet"), "label": 0, "name": "bkg_0.root"},
            {"path": str(path), "label": 1, "name": "s"},
        ],
        "p",
        chunk_size=50,
        **settings,
    )
    pd.testing.assert_frame_equal(from_root, from_pq)


def test_nullable_parquet_lists_keep_their_type_and_a_missing_element_is_nan(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {  # pyarrow's lists: nullable lists of nullable items
                "x": pa.array([[1.0, 2.0], [], [3.0], [4.0], [5.0], [6.0]], type=pa.list_(pa.float32())),
                "k": pa.array([[1, None], [2], [], None, [3, 4], [7]]),
                "f": [1.0, 2.0, 3.0, None, 5.0, 6.0],
                "y": [1, 0, 1, 0, 0, 1],
            }
        ),
        tmp_path / "n.parquet",
    )
    s, df = _run(
        tmp_path, [{"path": str(tmp_path / "n.parquet")}], label_column="y", columns=["x[0]", "max(k)", "len(k)", "f"]
    )
    assert df["x_0"].dtype == np.float32 and df["x_0"].tolist() == [1.0, 5.0, 6.0]
    # a missing element is NaN, which max/min pass over (awkward's reducers): max([1, None]) is 1
    assert df["max_k"].tolist() == [1.0, 4.0, 7.0] and df["len_k"].tolist() == [2, 2, 1]
    # a missing list is empty: its max is NaN (counted), not an error
    assert s["files"][0]["nonfinite_by_column"] == {"x_0": 1, "max_k": 2, "f": 1}


def test_csv_column_whose_type_changes_between_chunks_gets_one_type(tmp_path):
    rows = ["n,x,label"] + [f"{i % 5},{i},{i % 2}" for i in range(30)] + ["2.5,31,1", "3,32,0"]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    _, df = _run(tmp_path, [{"path": str(tmp_path / "d.csv")}], label_column="label", chunk_size=10)
    assert df["n"].dtype == np.float64 and df["n"].iloc[30] == 2.5 and df["x"].dtype == np.int64
    assert len(df) == 32


def test_bookkeeping_and_features_exclude_are_not_features_unless_listed(files, tmp_path):
    inputs = _inputs(files, "rntuple")
    s, df = _run(tmp_path, inputs, exclude=["PV_chi2", "genWeight"])
    assert not {"run", "event", "luminosityBlock", "PV_chi2", "genWeight"} & set(df.columns)
    assert s["excluded"]["PV_chi2"] == "features.exclude"
    s, df = _run(tmp_path, inputs, columns=["run", "event", "MET_pt"], exclude=["MET_pt"])
    assert list(df.columns) == ["event_id", "label", "weight", "run", "event", "MET_pt"]
    assert df["event"].dtype == np.uint64


@pytest.mark.parametrize("kind", KINDS)
def test_only_a_jagged_discriminant_is_an_error_by_default_and_learnt_when_asked_for(kind, tmp_path):
    """The issue's synthetic case: it trained on nothing (AUC 0.499, exit 0)."""
    import awkward as ak

    rng = np.random.default_rng(5)
    paths = []
    for label in (1, 0):
        n_obj = rng.poisson(3, 500)
        pt = ak.unflatten(rng.exponential(40.0 if label else 20.0, n_obj.sum()), n_obj)
        paths.append(write(tmp_path / f"{label}.root", {"Obj_pt": pt}, kind))
    inputs = [{"path": str(p), "label": label} for p, label in zip(paths, (1, 0))]
    if kind == "ttree":  # uproot's TTree writer adds the counter nObj: the one flat branch
        assert _run(tmp_path, inputs)[0]["features"] == ["nObj"]
    else:
        with pytest.raises(
            DataError,
            match=r"1\.root \(tree Events\): no branch holds one number per event.*"
            r"collections \(Obj_pt\).*Obj_pt\[0\], len\(Obj_pt\)",
        ):
            _run(tmp_path, inputs)
    s, df = _run(tmp_path, inputs, columns=["max(Obj_pt)", "len(Obj_pt)"], cut="len(Obj_pt) > 0")
    assert s["features"] == ["max_Obj_pt", "len_Obj_pt"]
    assert df.groupby("label")["max_Obj_pt"].mean()[1] > 1.5 * df.groupby("label")["max_Obj_pt"].mean()[0]


def test_signed_weights_are_kept(files, tmp_path):
    s, df = _run(tmp_path, _inputs(files, "ttree"), columns=["MET_pt"], weight_column="genWeight")
    negative = (df["weight"] < 0).mean()
    assert 0.10 < negative < 0.20 and "genWeight" not in df.columns
