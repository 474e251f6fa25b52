import json

import numpy as np
import pandas as pd
import pytest

from hepml_steps import features as ft
from hepml_steps.errors import ConfigError, DataError
from tests.conftest import make_events


@pytest.fixture
def splits(tmp_path):
    paths = {}
    for i, s in enumerate(("train", "validation", "test")):
        df = make_events(500, seed=i)
        if s == "test":
            df["f1"] += 100.0  # test is shifted: must not leak into the fitted transform
        paths[s] = str(tmp_path / f"{s}.parquet")
        df.to_parquet(paths[s], index=False)
    return paths


def run(splits, tmp_path, **kw):
    outs = {s: str(tmp_path / f"out_{s}.parquet") for s in splits}
    t = ft.features(splits, outs, str(tmp_path / "transform.json"), **kw)
    return t, {s: pd.read_parquet(p) for s, p in outs.items()}


def test_standardisation_fitted_on_train_only(splits, tmp_path):
    t, out = run(splits, tmp_path)
    assert np.allclose(out["train"][t["outputs"]].mean(), 0, atol=1e-5)
    assert np.allclose(out["train"][t["outputs"]].std(ddof=0), 1, atol=1e-4)
    assert out["test"]["f1"].mean() > 50  # test shift survives: test was not used to fit
    assert json.loads((tmp_path / "transform.json").read_text())["columns"] == ["f0", "f1", "f2", "f3"]
    for s in out:  # reserved columns pass through untouched
        src = pd.read_parquet(splits[s])
        assert (out[s]["event_id"] == src["event_id"]).all()
        assert np.allclose(out[s]["weight"], src["weight"])


def test_derived_columns_and_selection(splits, tmp_path):
    t, out = run(splits, tmp_path, columns=["f0", "s"], derived={"s": "sqrt(f0**2 + f1**2)"}, standardize=False)
    src = pd.read_parquet(splits["validation"])
    assert np.allclose(out["validation"]["s"], np.sqrt(src.f0**2 + src.f1**2), rtol=1e-5)
    assert t["outputs"] == ["f0", "s"] and "f2" not in out["validation"]


def test_pca_keeps_requested_components(splits, tmp_path):
    t, out = run(splits, tmp_path, pca=2)
    assert t["outputs"] == ["pc0", "pc1"]
    assert 0 < sum(t["pca_explained_variance_ratio"]) <= 1
    c = np.corrcoef(out["train"]["pc0"], out["train"]["pc1"])[0, 1]
    assert abs(c) < 1e-3  # principal components are uncorrelated on train


@pytest.mark.parametrize(
    "expr, msg",
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("f0.real", "not allowed"),
        ("nope + 1", "unknown column 'nope'"),
        ("system(f0)", "unknown function 'system'"),
        ("f0 +", "cannot parse"),
    ],
)
def test_unsafe_or_bad_expressions_rejected(expr, msg, splits, tmp_path):
    with pytest.raises(ConfigError, match=f"features.derived.x.*({msg})"):
        run(splits, tmp_path, derived={"x": expr})


def test_nonfinite_derived_is_an_error(splits, tmp_path):
    with pytest.raises(DataError, match="features.derived.bad"):
        run(splits, tmp_path, derived={"bad": "log(f0 - 1000)"})


def test_missing_column_named(splits, tmp_path):
    with pytest.raises(DataError, match=r"\['zz'\]"):
        run(splits, tmp_path, columns=["f0", "zz"])


@pytest.mark.parametrize("expr", ["truth_llr + 1", "label * 2", "weight", "event_id"])
def test_derived_columns_cannot_read_reserved_columns(expr):
    """A derived column over the label, weight, id or the Bayes score would leak it into the features."""
    import pandas as pd

    from hepml_steps.errors import ConfigError
    from hepml_steps.features import _add_derived

    df = pd.DataFrame(
        {"event_id": [1, 2], "label": [0, 1], "weight": [1.0, 1.0], "truth_llr": [0.1, 0.2], "x": [1.0, 2.0]}
    )
    with pytest.raises(ConfigError, match="features.derived.d: unknown column"):
        _add_derived(df, {"d": expr})


def rich_table(n, seed):
    """Events with every kind of column the features step treats differently."""
    rng = np.random.default_rng(seed)
    df = make_events(n, seed=seed)
    df["truth_llr"] = rng.normal(size=n)
    df["f1"] = df["f1"].astype(np.float32)
    df.loc[rng.random(n) < 0.1, "f2"] = np.nan  # missing values
    df.loc[rng.random(n) < 0.02, "f3"] = np.inf  # ±inf: missing too
    df["m_jj"] = rng.exponential(100.0, n)
    df["cat"] = rng.choice(["a", "b", "c", None], n)
    df["n_jet"] = rng.integers(0, 5, n)
    df["const"] = 14.63  # left out: constant
    df["empty"] = np.nan  # left out: missing everywhere
    df["flag"] = rng.random(n) < 0.5  # boolean: not a default feature
    return df


def test_prepared_splits_are_written_in_row_groups_that_grow_with_the_split(tmp_path, monkeypatch):
    """By default each split is prepared a row group at a time, io.row_group_events of its
    events, one output row group per batch: at most MAX_ROW_GROUPS of them."""
    import pyarrow.parquet as pq

    from hepml_steps import io as hio

    monkeypatch.setattr(hio, "ROW_GROUP_EVENTS", 100)
    monkeypatch.setattr(hio, "MAX_ROW_GROUPS", 2)
    paths, outs = {}, {}
    for i, (s, n) in enumerate((("train", 1200), ("validation", 150), ("test", 450))):
        paths[s], outs[s] = str(tmp_path / f"{s}.parquet"), str(tmp_path / f"out_{s}.parquet")
        rich_table(n, i).to_parquet(paths[s], index=False, row_group_size=50)
    ft.features(paths, outs, str(tmp_path / "t.json"))
    for s, sizes in (("train", [600, 600]), ("validation", [100, 50]), ("test", [300, 150])):
        md = pq.ParquetFile(outs[s]).metadata
        assert [md.row_group(g).num_rows for g in range(md.num_row_groups)] == sizes, s


@pytest.mark.parametrize(
    "kw",
    [
        {"derived": {"s": "f0 + f1", "lg": "log(m_jj + 1)"}, "targets": ["m_jj", "s"], "missing_indicators": True},
        {"derived": {"s": "f0 + f1"}, "pca": 3, "targets": ["m_jj"]},
        {"columns": ["f0", "f2", "cat", "s"], "derived": {"s": "f0 * 2"}, "standardize": False, "fill_value": 0.5},
    ],
)
def test_batches_give_the_whole_table_value_for_value(kw, tmp_path):
    """Prepared batch by batch (batches smaller than a row group and across them),
    a split is the table ``apply`` makes of the whole split, its attrs included."""
    paths = {}
    for i, s in enumerate(("train", "validation", "test")):
        paths[s] = str(tmp_path / f"{s}.parquet")
        df = rich_table(1200 + 7 * i, i)
        if s == "test":
            df.loc[0, "cat"] = "unseen"
        df.to_parquet(paths[s], index=False, row_group_size=300)
    outs = {s: str(tmp_path / f"out_{s}.parquet") for s in paths}
    t = ft.features(paths, outs, str(tmp_path / "t.json"), batch_size=128, **kw)
    options = {k: v for k, v in kw.items() if k not in ("columns", "derived", "targets")}
    # the fit read in one batch is the fit read in batches of 128 events
    whole = ft.fit(
        paths["train"], kw.get("columns"), kw.get("derived"), targets=kw.get("targets"), batch_size=10**9, **options
    )
    assert json.dumps(whole) == json.dumps(
        {k: v for k, v in t.items() if k not in ("unseen",)} | {"missing": whole["missing"]}
    )
    if "columns" not in kw:
        assert {"const", "empty"} <= t["left_out"].keys() and "flag" not in t["columns"]
    for s in paths:
        counts = {}
        whole = ft.apply(pd.read_parquet(paths[s]), t, s, counts)
        got = pd.read_parquet(outs[s])
        pd.testing.assert_frame_equal(got, whole, check_exact=True)
        assert got.attrs == whole.attrs and got.attrs["hepml"]["identifier_like"] == t["identifier_like"]
        assert t["missing"][s] == counts["missing"] and t["unseen"][s] == counts["unseen"]
    assert t["unseen"]["test"] == ({"cat": 1} if "cat" in t["columns"] else {})


def test_reads_only_the_columns_it_needs(splits, tmp_path, monkeypatch):
    """An extra wide column is never read, neither by the fit nor when the splits are prepared."""
    import pyarrow.parquet as pq

    for p in splits.values():
        df = pd.read_parquet(p)
        df["blob"] = ["x" * 1000] * len(df)
        df.to_parquet(p, index=False)
    asked = []
    read_table, read_batches = pq.read_table, ft.read_batches
    monkeypatch.setattr(
        pq,
        "read_table",
        lambda path, columns=None, **kw: asked.append(columns) or read_table(path, columns=columns, **kw),
    )
    monkeypatch.setattr(  # the row-group reader (io.read_batches) every read goes through
        ft,
        "read_batches",
        lambda pf, size, columns=None, *a, **kw: asked.append(columns) or read_batches(pf, size, columns, *a, **kw),
    )
    outs = {s: str(tmp_path / f"out_{s}.parquet") for s in splits}
    ft.features(splits, outs, str(tmp_path / "transform.json"), columns=["f0", "f1"])
    assert asked[0] == ["f0", "f1"]  # the fit: the features only
    assert asked[1:] == [["event_id", "label", "weight", "f0", "f1"]] * 3  # each split: passed through + features
    assert list(pd.read_parquet(outs["test"]).columns) == ["event_id", "label", "weight", "f0", "f1"]


def test_failed_split_leaves_no_output(splits, tmp_path):
    """A split that fails half-way (a column of the transform absent) leaves no prepared file."""
    df = pd.read_parquet(splits["test"]).drop(columns=["f3"])
    df.to_parquet(splits["test"], index=False)
    outs = {s: str(tmp_path / f"out_{s}.parquet") for s in splits}
    with pytest.raises(DataError, match=r"\['f3'\]"):
        ft.features(splits, outs, str(tmp_path / "t.json"), batch_size=100)
    assert not (tmp_path / "out_test.parquet").exists() and not (tmp_path / "t.json").exists()
    assert not list(tmp_path.glob(".out_test*"))  # no temporary file either


def test_restrict_makes_a_models_features_from_its_own_columns_only(tmp_path):
    """features.restrict: the transform of a model's features reads only the columns
    they come from (a derived column's inputs, through a chain of derived columns) and
    makes them value for value as the whole transform does."""
    path = str(tmp_path / "train.parquet")
    df = rich_table(800, 3)
    df.to_parquet(path, index=False)
    derived = {"dj": "m_jj * 2", "dk": "dj + f0"}
    t = ft.fit(path, None, derived, missing_indicators=True)
    assert "f2_missing" in t["outputs"] and "cat_cat0" in t["outputs"] and "m_jj" in t["columns"]
    whole = ft.apply(df, t, "t")
    for wanted, needs in [
        (["f2_missing", "cat_cat1", "dk"], {"f2", "cat", "dk", "dj", "m_jj", "f0"}),
        (["f0", "f1"], {"f0", "f1"}),
        (["dj"], {"dj", "m_jj"}),
    ]:
        r = ft.restrict(t, wanted)
        assert set(r["columns"]) | set(r["derived"]) <= needs and set(wanted) <= set(r["outputs"])
        assert "cat" not in r["columns"] or "cat" in needs
        narrow = ft.apply(df[[c for c in df.columns if c in needs or c in ("event_id", "label", "weight")]], r, "t")
        pd.testing.assert_frame_equal(narrow[wanted], whole[wanted], check_exact=True)
    with_pca = ft.fit(path, None, None, pca=2)
    assert ft.restrict(with_pca, ["pc0"]) is with_pca
