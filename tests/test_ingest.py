"""Tests of reading user files / the toy sample into the canonical table (hepml_steps.ingest)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hepml_steps import generate as g
from hepml_steps import ingest as ing
from hepml_steps.errors import ConfigError, DataError

from .conftest import ROOT, make_events


def _features(n: int, seed: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "pt": rng.exponential(30.0, n) + shift,
        "eta": rng.normal(0.0, 1.5, n),
        "njet": rng.integers(0, 6, n).astype(np.int32),
        "w": rng.uniform(0.5, 1.5, n),
    }


def _root_tree(path, arrays, name="events"):
    """A real TTree (mktree) with the given flat branches."""
    import uproot

    with uproot.recreate(path) as f:
        f.mktree(name, {k: v.dtype for k, v in arrays.items()})
        f[name].extend(arrays)
    return path


def _split_frame(tmp_path, n=600, seed=1):
    """make_events without event ids, as two halves (Parquet and CSV)."""
    df = make_events(n, seed=seed).drop(columns=["event_id"])
    a, b = df.iloc[: n // 2], df.iloc[n // 2 :]
    pa, pb = tmp_path / "a.parquet", tmp_path / "b.csv"
    a.to_parquet(pa, index=False)
    b.to_csv(pb, index=False)
    return df, pa, pb


# --------------------------------------------------------------------------- ROOT


def test_root_trees_labelled_per_file_with_file_weight(tmp_path):
    sig = _root_tree(tmp_path / "sig.root", _features(300, 1, shift=20.0))
    bkg = _root_tree(tmp_path / "bkg.root", _features(500, 2))
    out, summ = tmp_path / "events.parquet", tmp_path / "ingest.json"
    s = ing.ingest(
        [
            {"path": str(sig), "tree": "events", "label": 1},
            {"path": str(bkg), "tree": "events", "label": 0, "weight": 2.5},
        ],
        out,
        weight_column="w",
        summary_out=summ,
    )
    df = pd.read_parquet(out)
    assert len(df) == 800 and s["n_signal"] == 300 and s["n_background"] == 500
    assert df["label"].dtype == np.int8 and df["weight"].dtype == np.float64 and df["event_id"].dtype == np.int64
    assert "w" not in df.columns  # the weight source is not a feature
    assert set(df.columns) == {"event_id", "label", "weight", "pt", "eta", "njet"}
    fs, fb = _features(300, 1, shift=20.0), _features(500, 2)
    np.testing.assert_array_equal(df["pt"].to_numpy(), np.concatenate([fs["pt"], fb["pt"]]))
    np.testing.assert_allclose(df["weight"].to_numpy(), np.concatenate([fs["w"], 2.5 * fb["w"]]))
    assert s["sum_weights_background"] == pytest.approx(2.5 * fb["w"].sum())
    assert s["sum_weights_signal"] == pytest.approx(fs["w"].sum())
    assert df["event_id"].is_unique
    on_disk = json.loads(summ.read_text())
    assert [f["label"] for f in on_disk["files"]] == ["file label 1", "file label 0"]
    assert [f["n_read"] for f in on_disk["files"]] == [300, 500]
    assert on_disk["files"][1]["file_weight"] == 2.5


def test_written_row_groups_grow_with_the_input(tmp_path, monkeypatch):
    """The canonical table is written a row group per chunk, of at most io.row_group_events of
    the events read: chunks larger than a row group are cut, until the file would hold more
    than MAX_ROW_GROUPS of them."""
    import pyarrow.parquet as pq

    from hepml_steps import io as hio

    g.generate(tmp_path / "toy.parquet", 2000, seed=3, chunk_size=2000)
    kw = {"label_column": "label", "weight_column": "weight", "event_id_column": "event_id", "chunk_size": 500}
    monkeypatch.setattr(hio, "ROW_GROUP_EVENTS", 100)
    sizes = {}
    for max_groups in (256, 2):  # 2,000 events: row groups of 100, then of 1,000 (chunks of 500)
        monkeypatch.setattr(hio, "MAX_ROW_GROUPS", max_groups)
        ing.ingest([{"path": str(tmp_path / "toy.parquet")}], tmp_path / f"{max_groups}.parquet", **kw)
        md = pq.ParquetFile(tmp_path / f"{max_groups}.parquet").metadata
        sizes[max_groups] = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    assert sizes == {256: [100] * 20, 2: [500] * 4}
    assert pq.read_table(tmp_path / "256.parquet").equals(pq.read_table(tmp_path / "2.parquet"))


def test_generated_root_file_matches_parquet(tmp_path):
    """The generator's ROOT output (read with uproot) gives the same table as its Parquet output."""
    g.generate(tmp_path / "toy.root", 700, seed=3, chunk_size=300, fmt="root")
    g.generate(tmp_path / "toy.parquet", 700, seed=3, chunk_size=300)
    kw = {"label_column": "label", "weight_column": "weight", "event_id_column": "event_id"}
    ing.ingest([{"path": str(tmp_path / "toy.root")}], tmp_path / "r.parquet", **kw)  # tree auto-detected
    ing.ingest([{"path": str(tmp_path / "toy.parquet")}], tmp_path / "p.parquet", **kw)
    r, p = pd.read_parquet(tmp_path / "r.parquet"), pd.read_parquet(tmp_path / "p.parquet")
    assert "truth_llr" in r.columns and len(r) == 700
    pd.testing.assert_frame_equal(r, p, check_like=True)  # uproot may store the fields in another order


def test_branch_selection_reads_only_those(tmp_path):
    sig = _root_tree(tmp_path / "sig.root", _features(50, 1))
    bkg = _root_tree(tmp_path / "bkg.root", _features(60, 2))
    s = ing.ingest(
        [{"path": str(sig), "label": 1}, {"path": str(bkg), "label": 0}],
        tmp_path / "o.parquet",
        columns=["eta", "njet"],
    )
    df = pd.read_parquet(tmp_path / "o.parquet")
    assert list(df.columns) == ["event_id", "label", "weight", "eta", "njet"]
    assert s["features"] == ["eta", "njet"]
    assert (df["weight"] == 1.0).all()


def test_missing_branch_names_file_and_branch(tmp_path):
    sig = _root_tree(tmp_path / "sig.root", _features(50, 1))
    with pytest.raises(DataError, match=r"sig\.root.*'?mjj'?") as exc:
        ing.ingest([{"path": str(sig), "label": 1}], tmp_path / "o.parquet", columns=["pt", "mjj"])
    assert "mjj" in str(exc.value) and "sig.root" in str(exc.value) and "pt'" not in str(exc.value)
    assert not (tmp_path / "o.parquet").exists()


def test_tree_autodetect_and_multi_tree_error(tmp_path):
    import uproot

    arrays = _features(40, 1)
    one = _root_tree(tmp_path / "one.root", arrays, name="nominal")
    both = [{"path": str(one), "label": 1, "name": "s"}, {"path": str(one), "label": 0, "name": "b"}]
    s = ing.ingest(both, tmp_path / "o.parquet")
    assert s["files"][0]["tree"] == "nominal" and s["n_events"] == 80

    two = tmp_path / "two.root"
    with uproot.recreate(two) as f:
        for name in ("nominal", "syst_up"):
            f.mktree(name, {k: v.dtype for k, v in arrays.items()})
            f[name].extend(arrays)
    with pytest.raises(DataError, match=r"two\.root.*2 trees.*nominal.*syst_up"):
        ing.ingest([{"path": str(two), "label": 1}], tmp_path / "o2.parquet")
    with pytest.raises(DataError, match=r"two\.root.*no tree 'other'"):
        ing.ingest([{"path": str(two), "tree": "other", "label": 1}], tmp_path / "o2.parquet")
    s = ing.ingest(
        [{"path": str(two), "tree": "syst_up", "label": 0}, {"path": str(one), "label": 1}], tmp_path / "o2.parquet"
    )
    assert s["n_background"] == 40 and s["files"][0]["tree"] == "syst_up"


def test_jagged_branch_skipped_by_default_but_error_when_selected(tmp_path, caplog):
    import awkward as ak
    import uproot

    path = tmp_path / "j.root"
    with uproot.recreate(path) as f:
        f.mktree("t", {"x": np.float64, "jets": "var * float64"})
        f["t"].extend({"x": np.arange(3.0), "jets": ak.Array([[1.0, 2.0], [], [3.0]])})
    with caplog.at_level("WARNING", logger="hepml.ingest"):
        s = ing.ingest(
            [{"path": str(path), "label": 1, "name": "s"}, {"path": str(path), "label": 0, "name": "b"}],
            tmp_path / "o.parquet",
        )
    assert s["unused_collections"] == ["jets"] and "jets" in caplog.text  # listed once, not per input
    assert "jets" not in pd.read_parquet(tmp_path / "o.parquet").columns
    with pytest.raises(DataError, match=r"j\.root.*'jets'.*not a flat numeric.*collection.*jets\[0\]"):
        ing.ingest([{"path": str(path), "label": 1}], tmp_path / "o.parquet", columns=["x", "jets"])


# --------------------------------------------------------------------------- Parquet / CSV


def test_parquet_and_csv_with_label_column(tmp_path):
    df, pa, pb = _split_frame(tmp_path)
    s = ing.ingest(
        [{"path": str(pa)}, {"path": str(pb)}], tmp_path / "o.parquet", label_column="label", weight_column="weight"
    )
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert len(out) == len(df) and s["n_signal"] == int(df["label"].sum())
    np.testing.assert_array_equal(out["label"].to_numpy(), df["label"].to_numpy())
    np.testing.assert_allclose(out["weight"].to_numpy(), df["weight"].to_numpy())
    np.testing.assert_allclose(out["f0"].to_numpy(), df["f0"].to_numpy())
    assert [f["label"] for f in s["files"]] == ["column label", "column label"]
    assert out["event_id"].is_unique and (out["event_id"] >= 0).all()


def test_string_columns_kept_by_default_and_when_selected(tmp_path):
    df = make_events(100).drop(columns=["event_id"])
    df["run_tag"] = np.where(df["f0"] > 0, "A", "B")
    df["flag"] = df["f0"] > 0
    path = tmp_path / "x.parquet"
    df.to_parquet(path, index=False)
    ing.ingest([{"path": str(path)}], tmp_path / "o.parquet", label_column="label")
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert list(out["run_tag"]) == list(df["run_tag"])  # a category for the features step, never dropped
    assert out["flag"].dtype == np.int8 and out["flag"].sum() == (df["f0"] > 0).sum()
    ing.ingest([{"path": str(path)}], tmp_path / "o.parquet", label_column="label", columns=["f0", "run_tag"])
    assert list(pd.read_parquet(tmp_path / "o.parquet").columns)[3:] == ["f0", "run_tag"]


def test_bad_label_values_name_file_column_and_values(tmp_path):
    df = make_events(50)
    df.loc[3, "label"] = 2
    df.loc[7, "label"] = -1
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"bad\.csv.*label column 'label'.*\[-1, 2\] in 2 events"):
        ing.ingest([{"path": str(path)}], tmp_path / "o.parquet", label_column="label")


def test_label_missing_or_mixed_is_an_error(tmp_path):
    df, pa, pb = _split_frame(tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"'label' is given for data\.files\.inputs\[0\] \(.*a\.parquet\) but "
        r"not for data\.files\.inputs\[1\] \(.*b\.csv\); label every input",
    ):
        ing.ingest([{"path": str(pa), "label": 1}, {"path": str(pb)}], tmp_path / "o.parquet")
    # a per-file label wins over the label column
    s = ing.ingest([{"path": str(pa), "label": 1}, {"path": str(pb)}], tmp_path / "o.parquet", label_column="label")
    assert s["n_signal"] == 300 + int(df["label"].iloc[300:].sum())
    assert [f["label"] for f in s["files"]] == ["file label 1", "column label"]
    with pytest.raises(ConfigError, match="label must be 1"):
        ing.ingest([{"path": str(pa), "label": 3}], tmp_path / "o.parquet")


def test_duplicate_event_id_names_column_and_value(tmp_path):
    a, b = make_events(100, seed=1), make_events(100, seed=2)  # the same ids 3, 10, 17, ...
    a.to_parquet(tmp_path / "a.parquet", index=False)
    b.iloc[50:].to_parquet(tmp_path / "b.parquet", index=False)
    with pytest.raises(DataError, match=r"event_id 353 \(column 'event_id'\) occurs 2 times.*a\.parquet.*b\.parquet"):
        ing.ingest(
            [{"path": str(tmp_path / "a.parquet")}, {"path": str(tmp_path / "b.parquet")}],
            tmp_path / "o.parquet",
            label_column="label",
            event_id_column="event_id",
        )
    assert not (tmp_path / "o.parquet").exists()


def test_event_id_column_must_be_integer_valued(tmp_path):
    df = make_events(20)
    df["eid"] = df["event_id"].astype(float)
    df.to_parquet(tmp_path / "a.parquet", index=False)
    ing.ingest(
        [{"path": str(tmp_path / "a.parquet")}], tmp_path / "o.parquet", label_column="label", event_id_column="eid"
    )
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / "o.parquet")["event_id"], df["event_id"])
    df.loc[4, "eid"] = 2.5
    df.to_parquet(tmp_path / "a.parquet", index=False)
    with pytest.raises(DataError, match=r"a\.parquet.*'eid' must hold integers; found 2\.5"):
        ing.ingest(
            [{"path": str(tmp_path / "a.parquet")}], tmp_path / "o.parquet", label_column="label", event_id_column="eid"
        )


def test_event_ids_stable_when_inputs_reordered(tmp_path):
    _, pa, pb = _split_frame(tmp_path)
    ing.ingest([{"path": str(pa)}, {"path": str(pb)}], tmp_path / "ab.parquet", label_column="label")
    ing.ingest([{"path": str(pb)}, {"path": str(pa)}], tmp_path / "ba.parquet", label_column="label")
    ab = pd.read_parquet(tmp_path / "ab.parquet").sort_values("event_id", ignore_index=True)
    ba = pd.read_parquet(tmp_path / "ba.parquet").sort_values("event_id", ignore_index=True)
    pd.testing.assert_frame_equal(ab, ba)
    # the id of an entry depends on the file name and entry number only
    first = pd.read_parquet(tmp_path / "ab.parquet")["event_id"].iloc[0]
    assert first == ing.hashed_ids("a.parquet", 1)[0]


def test_same_file_name_twice_needs_distinct_names(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "b").mkdir()
    df = make_events(30).drop(columns=["event_id"])
    df.to_parquet(tmp_path / "s" / "data.parquet", index=False)
    df.to_parquet(tmp_path / "b" / "data.parquet", index=False)
    specs = [
        {"path": str(tmp_path / "s" / "data.parquet"), "label": 1},
        {"path": str(tmp_path / "b" / "data.parquet"), "label": 0},
    ]
    with pytest.raises(ConfigError, match="two inputs are named 'data.parquet'"):
        ing.ingest(specs, tmp_path / "o.parquet")
    specs[0]["name"], specs[1]["name"] = "sig", "bkg"
    s = ing.ingest(specs, tmp_path / "o.parquet")
    assert s["n_events"] == 60 and pd.read_parquet(tmp_path / "o.parquet")["event_id"].is_unique


# --------------------------------------------------------------------------- checks


def test_nonfinite_drop_counts_and_fail_message(tmp_path):
    df = make_events(200).drop(columns=["event_id"])
    df.loc[[5, 9], "f1"] = np.nan
    df.loc[9, "f2"] = np.inf
    df.loc[20, "f3"] = -np.inf
    path = tmp_path / "nf.parquet"
    df.to_parquet(path, index=False)
    s = ing.ingest([{"path": str(path)}], tmp_path / "o.parquet", label_column="label", summary_out=tmp_path / "s.json")
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert len(out) == 197 and np.isfinite(out[["f0", "f1", "f2", "f3"]].to_numpy()).all()
    rec = json.loads((tmp_path / "s.json").read_text())["files"][0]
    assert rec["n_read"] == 200 and rec["n_dropped_nonfinite"] == 3 and rec["n_kept"] == 197
    assert rec["nonfinite_by_column"] == {"f1": 2, "f2": 1, "f3": 1}
    # ids come from entry numbers before dropping: entry 5 is missing
    assert ing.hashed_ids("nf.parquet", 6)[5] not in set(out["event_id"])
    with pytest.raises(DataError, match=r"nf\.parquet.*3 of 200 events have NaN/inf.*'f1': 2"):
        ing.ingest([{"path": str(path)}], tmp_path / "o2.parquet", label_column="label", nonfinite="fail")
    assert not (tmp_path / "o2.parquet").exists()
    with pytest.raises(ConfigError, match="nonfinite"):
        ing.ingest([{"path": str(path)}], tmp_path / "o2.parquet", label_column="label", nonfinite="zero")
    assert s["n_dropped_nonfinite"] == 3
    k = ing.ingest([{"path": str(path)}], tmp_path / "o3.parquet", label_column="label", nonfinite="keep")
    kept = pd.read_parquet(tmp_path / "o3.parquet")  # keep: every event, ±inf as NaN (missing)
    assert len(kept) == 200 and k["n_dropped_nonfinite"] == 0 and not np.isinf(kept[["f1", "f2", "f3"]]).any().any()
    assert kept["f1"].isna().sum() == 2 and np.isnan(kept.loc[9, "f2"]) and np.isnan(kept.loc[20, "f3"])
    assert k["files"][0]["nonfinite_by_column"] == {"f1": 2, "f2": 1, "f3": 1}


def test_all_events_dropped_is_an_error(tmp_path):
    df = make_events(10).drop(columns=["event_id"])
    df.loc[::2, "f0"] = np.nan
    df.loc[1::2, "f1"] = np.nan
    df.to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(DataError, match=r"no events.*x\.csv.*'f0': 5"):
        ing.ingest(
            [{"path": str(tmp_path / "x.csv")}], tmp_path / "o.parquet", label_column="label", columns=["f0", "f1"]
        )


def test_column_nan_in_every_event_is_left_out_by_default_not_the_events(tmp_path):
    """A truth branch NaN in every event (NanoAOD's HTXS_* in a non-Higgs
    sample) would drop every event: chosen by default, it is left out instead."""
    df = make_events(40).drop(columns=["event_id"])
    df["truth"] = np.nan
    df.loc[:4, "f1"] = np.nan  # an ordinary NaN still drops its events
    df.to_parquet(tmp_path / "x.parquet", index=False)
    s = ing.ingest([{"path": str(tmp_path / "x.parquet")}], tmp_path / "o.parquet", label_column="label")
    assert s["n_events"] == 35 and "truth" not in s["columns"] and "f1" in s["features"]
    assert "NaN/inf in every event of x.parquet" in s["excluded"]["truth"]
    assert s["files"][0]["nonfinite_by_column"] == {"f1": 5}


def test_weight_column_must_be_finite(tmp_path):
    df = make_events(10)
    df.loc[2, "weight"] = np.nan
    df.to_parquet(tmp_path / "x.parquet", index=False)
    with pytest.raises(DataError, match=r"x\.parquet.*weight column 'weight'.*1 NaN/inf"):
        ing.ingest(
            [{"path": str(tmp_path / "x.parquet")}],
            tmp_path / "o.parquet",
            label_column="label",
            weight_column="weight",
        )


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "x.h5").write_text("")
    with pytest.raises(DataError, match=r"x\.h5.*unknown file type '\.h5'"):
        ing.ingest([{"path": str(tmp_path / "x.h5"), "label": 1}], tmp_path / "o.parquet")
    with pytest.raises(DataError, match=r"missing input file: .*nope\.root"):
        ing.ingest([{"path": str(tmp_path / "nope.root"), "label": 1}], tmp_path / "o.parquet")
    with pytest.raises(ConfigError, match="lable"):
        ing.ingest([{"path": str(tmp_path / "x.h5"), "lable": 1}], tmp_path / "o.parquet")


def test_files_with_different_columns_name_both(tmp_path):
    a = make_events(20).drop(columns=["event_id"])
    a.to_parquet(tmp_path / "a.parquet", index=False)
    a.drop(columns=["f3"]).to_parquet(tmp_path / "b.parquet", index=False)
    with pytest.raises(DataError, match=r"a\.parquet and .*b\.parquet differ in columns.*\['f3'\]"):
        ing.ingest(
            [{"path": str(tmp_path / "a.parquet")}, {"path": str(tmp_path / "b.parquet")}],
            tmp_path / "o.parquet",
            label_column="label",
        )
    # selecting common columns fixes it
    s = ing.ingest(
        [{"path": str(tmp_path / "a.parquet")}, {"path": str(tmp_path / "b.parquet")}],
        tmp_path / "o.parquet",
        label_column="label",
        columns=["f0", "f1"],
    )
    assert s["n_events"] == 40


def test_target_column_copied(tmp_path):
    df = make_events(30).drop(columns=["event_id"])
    df.to_parquet(tmp_path / "a.parquet", index=False)
    ing.ingest(
        [{"path": str(tmp_path / "a.parquet")}], tmp_path / "o.parquet", label_column="label", target_column="f2"
    )
    out = pd.read_parquet(tmp_path / "o.parquet")
    np.testing.assert_array_equal(out["target"], df["f2"])
    np.testing.assert_array_equal(out["f2"], df["f2"])


# --------------------------------------------------------------------------- toy / CLI


def test_toy_passthrough_keeps_truth_llr_and_values(tmp_path):
    toy = tmp_path / "toy.parquet"
    g.generate(toy, 1000, seed=7)
    s = ing.ingest(
        [{"path": str(toy), "name": "toy"}],
        tmp_path / "events.parquet",
        label_column="label",
        weight_column="weight",
        event_id_column="event_id",
        columns=None,
    )
    src, out = pd.read_parquet(toy), pd.read_parquet(tmp_path / "events.parquet")
    assert "truth_llr" in out.columns and set(out.columns) == set(src.columns)
    pd.testing.assert_frame_equal(out[list(src.columns)], src)
    assert "truth_llr" not in s["features"] and s["n_events"] == 1000


def test_cli_success_and_error(tmp_path, capsys):
    _, pa, pb = _split_frame(tmp_path)
    inputs = json.dumps([{"path": str(pa)}, {"path": str(pb)}])
    out, summ = tmp_path / "o.parquet", tmp_path / "s.json"
    rc = ing.main(
        [
            "--inputs-json",
            inputs,
            "--out",
            str(out),
            "--summary",
            str(summ),
            "--label-column",
            "label",
            "--weight-column",
            "weight",
            "--columns=",
            "--nonfinite",
            "drop",
        ]
    )
    assert rc == 0 and json.loads(summ.read_text())["n_events"] == 600
    assert {"f0", "f1", "f2", "f3"} <= set(pd.read_parquet(out).columns)
    rc = ing.main(
        [
            "--inputs-json",
            inputs,
            "--out",
            str(tmp_path / "o2.parquet"),
            "--label-column",
            "label",
            "--columns",
            "f0, f9",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("hepml: error: ") and "f9" in err[-1] and "a.parquet" in err[-1]
    assert not any(line.startswith("Traceback") for line in err)
    assert not (tmp_path / "o2.parquet").exists()
    rc = ing.main(
        [
            "--inputs-json",
            inputs,
            "--out",
            str(tmp_path / "o2.parquet"),
            "--label-column",
            "label",
            "--nonfinite",
            "zero",
        ]
    )
    assert rc == 1 and "nonfinite" in capsys.readouterr().err


def test_module_entry_point_error_is_one_line(tmp_path):
    out = tmp_path / "o.parquet"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hepml_steps.ingest",
            "--inputs-json",
            json.dumps([{"path": str(tmp_path / "x.txt"), "label": 1}]),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()  # log lines may precede it
    assert (
        lines[-1] == f"hepml: error: {tmp_path / 'x.txt'}: unknown file type '.txt'; "
        "use one of ['.csv', '.parquet', '.pq', '.root'] (or set the input's 'format')"
    )
    assert sum("error" in line for line in lines) == 1 and "Traceback" not in proc.stderr
    assert not out.exists()


def test_label_column_with_one_class_is_named(tmp_path):
    df = make_events(200, seed=4)
    df["label"] = 1
    path = tmp_path / "all_signal.parquet"
    df.drop(columns=["event_id", "weight"]).to_parquet(path)
    with pytest.raises(DataError, match=r"label column 'label'.*all_signal.parquet.*no background"):
        ing.ingest([{"path": str(path)}], str(tmp_path / "out.parquet"), label_column="label")
    assert not (tmp_path / "out.parquet").exists()


def test_process_per_input_feeds_a_multiclass_model(tmp_path):
    """TMVA-style multiclass: one ROOT file per process; the process index is a
    column, never a feature, and a multiclass model learns it."""
    from hepml_steps import train as tr

    files = [_root_tree(tmp_path / f"p{k}.root", _features(400, 10 + k, shift=40.0 * k)) for k in range(3)]
    out = tmp_path / "events.parquet"
    s = ing.ingest(
        [{"path": str(f), "label": int(k == 2), "process": k} for k, f in enumerate(files)], out, weight_column="w"
    )
    df = pd.read_parquet(out)
    assert df.groupby("process").size().to_dict() == {0: 400, 1: 400, 2: 400}
    assert "process" not in s["features"] and [f["process"] for f in s["files"]] == [0, 1, 2]
    rec = tr.train(
        str(out),
        str(out),
        "procs",
        {"family": "xgboost", "task": "multiclass", "target": "process", "params": {"n_estimators": 20}},
        str(tmp_path / "model"),
        str(tmp_path / "rec.json"),
    )
    assert rec["classes"] == [0, 1, 2] and "process" not in rec["features"]
    # a binary classifier of the same table never sees the process column either
    rec2 = tr.train(
        str(out),
        str(out),
        "bdt",
        {"family": "xgboost", "params": {"n_estimators": 5}},
        str(tmp_path / "bdt"),
        str(tmp_path / "bdt.json"),
    )
    assert "process" not in rec2["features"]


def test_process_names_are_a_string_column_and_the_classes(tmp_path):
    """``process: ttbar``: the class name of every event of the input, a string column
    that a multiclass model learns its classes from (sorted names)."""
    from hepml_steps import train as tr

    files = [_root_tree(tmp_path / f"p{k}.root", _features(300, 20 + k, shift=40.0 * k)) for k in range(3)]
    names = ["ttH", "tt", "QCD"]
    out = tmp_path / "events.parquet"
    s = ing.ingest(
        [{"path": str(f), "label": int(k == 0), "process": names[k]} for k, f in enumerate(files)],
        out,
        weight_column="w",
    )
    df = pd.read_parquet(out)
    assert df.groupby("process").size().to_dict() == {"QCD": 300, "tt": 300, "ttH": 300}
    assert [f["process"] for f in s["files"]] == names and "process" not in s["features"]
    rec = tr.train(
        str(out),
        str(out),
        "procs",
        {"family": "xgboost", "task": "multiclass", "target": "process", "params": {"n_estimators": 10}},
        str(tmp_path / "model"),
        str(tmp_path / "rec.json"),
    )
    assert rec["classes"] == ["QCD", "tt", "ttH"]


def test_process_must_be_a_class_index_or_name_and_given_for_every_input(tmp_path):
    a, b = (_root_tree(tmp_path / f"{n}.root", _features(50, i)) for i, n in enumerate("ab"))
    for bad in (-1, True, "", 1.5):
        with pytest.raises(ConfigError, match=r"inputs\[0\] .*process must be a class index .* or a class name"):
            ing.ingest(
                [{"path": str(a), "label": 1, "process": bad}, {"path": str(b), "label": 0, "process": 1}],
                tmp_path / "o.parquet",
            )
    with pytest.raises(ConfigError, match=r"'process' is a class name for .*a\.root but a number for .*b\.root"):
        ing.ingest(
            [{"path": str(a), "label": 1, "process": "ttbar"}, {"path": str(b), "label": 0, "process": 0}],
            tmp_path / "o.parquet",
        )
    with pytest.raises(ConfigError, match=r"'process' is given for .*a\.root but not for .*b\.root"):
        ing.ingest([{"path": str(a), "label": 1, "process": 1}, {"path": str(b), "label": 0}], tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


def test_parquet_input_chunks_read_one_column_at_a_time(tmp_path, monkeypatch):
    """A Parquet input is read for ingest through io.read_batches: each read is one column of its
    row groups (small ones read together; pyarrow's iter_batches held about twice a chunk besides
    it), and the chunks, which span row groups, are the file's rows in order, jagged and string
    columns included."""
    import awkward as ak
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hepml_steps import readers

    n = 1000
    rng = np.random.default_rng(3)
    jets = [list(rng.normal(size=k)) for k in rng.integers(0, 4, n)]
    table = pa.table(
        {
            "x": rng.normal(size=n),
            "n": np.arange(n, dtype=np.int32),
            "Jet_pt": pa.array(jets, pa.list_(pa.float64())),
            "process": pa.array([f"p{i % 3}" for i in range(n)]),
        }
    )
    path = tmp_path / "in.parquet"
    pq.write_table(table, path, row_group_size=300)
    with readers.open_source(path, "parquet") as src:
        reads = []
        for name in ("read_row_group", "read_row_groups"):
            real = getattr(src._file, name)

            def spy(groups, columns=None, _real=real, **kw):
                reads.append((tuple(groups) if isinstance(groups, list) else (groups,), tuple(columns)))
                return _real(groups, columns=columns, **kw)

            monkeypatch.setattr(src._file, name, spy)
        chunks = list(src.chunks(["x", "n", "Jet_pt", "process"], 400))
    assert reads and all(len(cols) == 1 for _, cols in reads)
    assert sorted(c for _, (c,) in reads) == ["Jet_pt", "n", "process", "x"]  # each column read once
    assert all(groups == (0, 1, 2, 3) for groups, _ in reads)  # four 300-row groups read together
    assert [(start, rows) for start, rows, _ in chunks] == [(0, 400), (400, 400), (800, 200)]
    x = np.concatenate([np.asarray(a["x"]) for _, _, a in chunks])
    assert np.array_equal(x, table.column("x").to_numpy())
    jagged = ak.concatenate([a["Jet_pt"] for _, _, a in chunks])
    assert ak.to_list(jagged) == jets
    assert [str(v) for _, _, a in chunks for v in a["process"].to_pylist()] == table.column("process").to_pylist()
