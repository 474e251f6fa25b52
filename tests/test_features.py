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
