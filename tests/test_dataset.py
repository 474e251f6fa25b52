"""The data boundary's fit reader: only the needed columns are read, with the old values."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hepml_steps import dataset as ds
from hepml_steps import tasks
from hepml_steps.errors import ConfigError, DataError
from tests.conftest import make_events

FILL = {"f1": 0.25, "f2": -1.0, "m": 0.5}
#: the columns of the table below that no model here needs
UNUSED = {"comment", "f3"}


def _table(n: int = 3000) -> pd.DataFrame:
    """Events with NaN features, signed weights, a Bayes score, a regression target
    (and its copy), a class column with a class unknown to training, and unused
    columns, one of them text (no float conversion)."""
    df = make_events(n, seed=11)
    rng = np.random.default_rng(5)
    df.loc[df.index % 7 == 0, "f1"] = np.nan
    df.loc[df.index % 11 == 0, "f2"] = np.nan
    df.loc[df.index % 13 == 0, "weight"] *= -1.0
    df["truth_llr"] = rng.normal(size=n)
    df["m"] = rng.normal(size=n)
    df.loc[df.index % 17 == 0, "m"] = np.nan
    df["target:m"] = 100.0 + 10.0 * rng.normal(size=n)
    df["process"] = rng.integers(0, 3, n)
    df.loc[df.index % 29 == 0, "process"] = 3  # not a training class when classes are given
    df["comment"] = np.where(df.index % 2 == 0, "even", "odd")
    df.attrs["hepml"] = {"fill": FILL, "identifier_like": {}}
    return df


def _write(df: pd.DataFrame, path, writer: str) -> str:
    if writer == "pyarrow":  # several row groups; attrs in pyarrow's pandas metadata
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=700)
    else:  # pandas, with a stored index not starting at 0; attrs as PANDAS_ATTRS
        df.iloc[150:].to_parquet(path, row_group_size=900)
    return str(path)


def _old_read_fit(path, spec, what, cap=None, classes=None, warn_cap=True) -> ds.Dataset:
    """:func:`read_fit` as it was before it read only the needed columns: the whole
    table through pandas (the cap applied to the frame)."""
    task, target = tasks.of(spec), spec.get("target")
    df = pd.read_parquet(path)
    if classes is None:
        classes = task.learn_classes(df, target, what)
    df = ds._task_events(df, task, what).reset_index(drop=True)
    if task.background_only and df.empty:
        raise DataError(f"{what}: anomaly detection trains on background, but {path} has no background events")
    df, cap_rec = ds.cap_events(df, cap, what)
    if df.empty:
        raise DataError(f"{what}: {path} has no events")
    cols = ds.select_features(df, spec.get("features"), target)
    y = task.targets(df, target, what, classes)
    task.check_fit_targets(y, what)
    if classes is not None:
        df, y = ds._known_classes(df, y, classes, cap_rec, target, what, refuse_lost=warn_cap)
    w = df["weight"].to_numpy(dtype=np.float64)
    weighting, negative = spec.get("weighting", "balanced"), spec.get("negative_weights", "ignore")
    return ds.Dataset(
        X=ds._features(df, cols, spec.get("family"), what),
        y=y,
        weights=w,
        fit_weights=ds.fit_weights(w, y, weighting, task.name, negative),
        event_ids=df["event_id"].to_numpy(),
        labels=ds._optional(df, "label"),
        columns=cols,
        classes=classes,
        cap=cap_rec,
        truth_llr=ds._optional(df, "truth_llr"),
        prepared=ds._prepared(df),
    )


def _assert_same(new: ds.Dataset, old: ds.Dataset) -> None:
    for field in ("X", "y", "weights", "fit_weights", "event_ids", "labels", "truth_llr"):
        a, b = getattr(new, field), getattr(old, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, field
            np.testing.assert_array_equal(a, b, err_msg=field)
    assert (new.columns, new.classes, new.cap, new.prepared) == (old.columns, old.classes, old.cap, old.prepared)


SPECS = {
    "classification, NaN kept": ({"family": "xgboost", "features": ["f0", "f1", "f2"]}, None),
    "classification, NaN filled": (
        {"family": "logistic_regression", "features": ["f2", "f0", "f1"], "weighting": "physical"},
        None,
    ),
    "regression": (
        {"family": "logistic_regression", "task": "regression", "target": "m", "features": ["f0", "m", "f1"]},
        None,
    ),
    "multiclass, classes learned": (
        {"family": "xgboost", "task": "multiclass", "target": "process", "features": ["f0", "f1"]},
        None,
    ),
    "multiclass, unknown class left out": (
        {"family": "xgboost", "task": "multiclass", "target": "process", "features": ["f0", "f1"]},
        [0, 1, 2],
    ),
    "anomaly": ({"family": "autoencoder", "task": "anomaly", "features": ["f0", "f1", "f2"]}, None),
}


@pytest.mark.parametrize("writer", ["pyarrow", "pandas"])
@pytest.mark.parametrize("cap", [None, 1000])
@pytest.mark.parametrize("case", list(SPECS))
def test_read_fit_reads_only_the_needed_columns_with_the_old_values(tmp_path, monkeypatch, case, cap, writer):
    spec, classes = SPECS[case]
    path = _write(_table(), tmp_path / "split.parquet", writer)
    old = _old_read_fit(path, spec, "m", cap=cap, classes=classes)
    read: list = []
    for name in ("read", "read_row_group", "read_row_groups", "iter_batches"):
        original = getattr(pq.ParquetFile, name)

        def recording(self, *args, _original=original, **kwargs):
            read.append(kwargs.get("columns"))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(pq.ParquetFile, name, recording)
    pandas_read = pd.read_parquet
    monkeypatch.setattr(
        pd, "read_parquet", lambda p, columns=None, **k: read.append(columns) or pandas_read(p, columns=columns, **k)
    )
    new = ds.read_fit(path, spec, "m", cap=cap, classes=classes)
    _assert_same(new, old)
    assert read and all(columns is not None for columns in read)  # never the whole table
    assert not UNUSED & {c for columns in read for c in columns}
    assert np.isnan(new.X).any() == (spec["family"] == "xgboost")  # filled unless the family takes NaN
    assert new.cap["applied"] == bool(cap)


def test_read_fit_keeps_its_error_messages(tmp_path):
    df = _table(400)
    path = _write(df, tmp_path / "split.parquet", "pyarrow")
    signal = _write(df[df["label"] == 1], tmp_path / "signal.parquet", "pyarrow")
    unlabelled = _write(df.drop(columns="label"), tmp_path / "unlabelled.parquet", "pyarrow")
    cases = [
        (path, {"family": "xgboost", "features": ["f0", "nope"]}, ConfigError),
        (path, {"family": "xgboost", "task": "regression", "features": ["f0"]}, ConfigError),
        (path, {"family": "xgboost", "task": "regression", "target": "absent", "features": ["f0"]}, DataError),
        (path, {"family": "xgboost", "task": "regression", "target": "comment", "features": ["f0"]}, DataError),
        (signal, {"family": "autoencoder", "task": "anomaly", "features": ["f0"]}, DataError),
        (unlabelled, {"family": "autoencoder", "task": "anomaly", "features": ["f0"]}, DataError),
    ]
    for file, spec, error in cases:
        for cap in (None, 100):
            with pytest.raises(error) as old:
                _old_read_fit(file, spec, "m", cap=cap)
            with pytest.raises(error) as new:
                ds.read_fit(file, spec, "m", cap=cap)
            assert str(new.value) == str(old.value)
