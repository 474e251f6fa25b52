"""Training beyond memory: the batched training source, streamed fits, and the in-memory cap."""

import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from hepml_steps import dataset as ds
from hepml_steps import registry
from hepml_steps import train as tr
from hepml_steps.families.checks import check_family
from tests.conftest import make_events


def _write(df, path, row_group=700):
    """A Parquet file of several row groups, with the features step's metadata."""
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group)
    return str(path)


@pytest.fixture
def splits(tmp_path):
    train = make_events(5000, seed=1)
    train.loc[train.index % 4 == 0, "weight"] *= 3.0  # unequal weights: the weighting matters
    train.loc[train.index % 9 == 0, "weight"] *= -1.0  # and negative ones
    return _write(train, tmp_path / "train.parquet"), _write(make_events(1500, seed=2), tmp_path / "val.parquet")


def _all(source):
    X, y, w = zip(*source.chunks())
    return np.concatenate(X), np.concatenate(y) if y[0] is not None else None, np.concatenate(w)


@pytest.mark.parametrize("weighting", ["balanced", "physical", "none"])
@pytest.mark.parametrize("negative", ["ignore", "abs"])
def test_source_gives_read_fits_events_and_weights(splits, weighting, negative):
    spec = {"family": "xgboost", "weighting": weighting, "negative_weights": negative}
    data = ds.read_fit(splits[0], spec, "m")
    source = ds.stream_fit(splits[0], spec, "m", batch_events=300)
    X, y, w = _all(source)
    assert source.n_chunks > 8 and len(source) == len(data) == len(X)
    np.testing.assert_array_equal(X, data.X)
    np.testing.assert_array_equal(y, data.y)
    np.testing.assert_allclose(w, data.fit_weights, rtol=1e-12)
    assert source.sum_weights == pytest.approx(float(data.weights.sum()))
    assert source.columns == data.columns
    for c, total in source.class_weight_sums.items():
        assert total == pytest.approx(data.fit_weights[data.y == c].sum())


def test_source_keeps_the_task_rules_and_fills_missing(tmp_path):
    df = make_events(3000, seed=3)
    df.loc[df.index % 7 == 0, "f1"] = np.nan
    df.attrs["hepml"] = {"fill": {"f1": 0.25}, "identifier_like": {}}
    path = _write(df, tmp_path / "t.parquet", row_group=500)
    for spec in ({"family": "autoencoder", "task": "anomaly"}, {"family": "mlp", "weighting": "physical"}):
        data = ds.read_fit(path, spec, "m")
        X, y, w = _all(ds.stream_fit(path, spec, "m", batch_events=256))
        np.testing.assert_array_equal(X, data.X)  # background only for anomaly; NaN filled with 0.25
        assert not np.isnan(X).any()
        np.testing.assert_allclose(w, data.fit_weights, rtol=1e-12)
    X, _, _ = _all(ds.stream_fit(path, {"family": "xgboost"}, "m"))
    assert np.isnan(X).sum() == df["f1"].isna().sum()  # XGBoost takes NaN as missing


def test_shuffled_batches_are_deterministic_cover_every_event_and_respect_the_buffer():
    X = np.arange(10_000, dtype=np.float32).reshape(-1, 1)
    source = ds.ArraySource(X, np.zeros(10_000), chunk_events=700)
    seen_buffers = []

    class Recording:
        """A generator that records the size of every permutation (chunk order, buffers)."""

        def __init__(self, seed):
            self.rng, self.sizes = np.random.default_rng(seed), []
            seen_buffers.append(self.sizes)

        def permutation(self, n):
            self.sizes.append(n)
            return self.rng.permutation(n)

    def run(seed):
        return [b[0][:, 0].copy() for b in source.shuffled_batches(128, 2000, Recording(seed))]

    a, b = run(5), run(5)
    assert all(np.array_equal(x, z) for x, z in zip(a, b)) and len(a) == len(b)
    assert max(len(x) for x in a) <= 128
    flat = np.concatenate(a)
    assert np.array_equal(np.sort(flat), X[:, 0])  # every event once per pass
    assert not np.array_equal(flat, X[:, 0])  # shuffled
    assert max(seen_buffers[0][1:]) <= 2000  # no buffer beyond buffer_events (the first is the chunk order)
    assert not np.array_equal(np.concatenate(run(6)), flat)


def test_shuffled_batches_are_not_views_of_the_reused_buffer():
    """The buffer is refilled in place: a batch kept past the next fill (not copied) still holds
    its events, and the pass is the same as the one copied batch by batch."""
    X = np.arange(5_000, dtype=np.float32).reshape(-1, 1)
    w = np.arange(5_000, dtype=np.float64)
    source = ds.ArraySource(X, np.arange(5_000) % 2, w, chunk_events=300)
    kept = list(source.shuffled_batches(64, 1000, np.random.default_rng(3)))
    copied = [tuple(a.copy() for a in b) for b in source.shuffled_batches(64, 1000, np.random.default_rng(3))]
    assert np.array_equal(np.sort(np.concatenate([b[0][:, 0] for b in kept])), X[:, 0])
    for (xk, yk, wk), (xc, yc, wc) in zip(kept, copied, strict=True):
        assert np.array_equal(xk, xc) and np.array_equal(yk, yc) and np.array_equal(wk, wc)
        assert np.array_equal(xk[:, 0], wk) and np.array_equal(yk, wk.astype(int) % 2)  # rows stay together


def test_shuffled_batches_prepare_converts_each_chunk_once_and_keeps_the_pass():
    """``prepare`` runs once per chunk, before the buffer; the batches are its arrays, in the
    order the unprepared pass gives (a None column stays None)."""
    X = np.arange(3_000, dtype=np.float32).reshape(-1, 1)
    source = ds.ArraySource(X, np.arange(3_000) % 2, np.arange(3_000, dtype=np.float64), chunk_events=250)
    calls = []

    def prepare(X, y, w):
        calls.append(len(X))
        return X * 2, None, w.astype(np.float32)

    plain = list(source.shuffled_batches(100, 700, np.random.default_rng(4)))
    prepared = list(source.shuffled_batches(100, 700, np.random.default_rng(4), prepare=prepare))
    assert calls == [250] * 12
    for (x, _, w), (xp, yp, wp) in zip(plain, prepared, strict=True):
        assert yp is None and wp.dtype == np.float32
        assert np.array_equal(xp, 2 * x) and np.array_equal(wp, w)


def _auc(family, X, y):
    return roc_auc_score(y, family.predict_score(X))


@pytest.mark.parametrize(
    "name, params",
    [
        ("xgboost", {"n_estimators": 40, "max_depth": 3}),
        (
            "mlp",
            {
                "epochs": 4,
                "hidden_layers": [16],
                "early_stopping_patience": 0,
                "learning_rate": 0.01,
                "batch_size": 128,
            },
        ),
    ],
)
def test_streamed_fit_matches_the_in_memory_fit(splits, name, params, monkeypatch):
    spec = {"family": name, "params": params}
    data, val = ds.read_fit(splits[0], spec, "m"), ds.read_fit(splits[1], spec, "v")
    cls = registry.get(name)
    monkeypatch.setattr(cls, "shuffle_buffer_events", 1000, raising=False)
    mem = cls(params=params, seed=3).fit(data.X, data.y, data.fit_weights, val.X, val.y, val.fit_weights)
    source = ds.stream_fit(splits[0], spec, "m", batch_events=400)
    st = cls(params=params, seed=3).fit_stream(source, val.X, val.y, val.fit_weights)
    again = cls(params=params, seed=3).fit_stream(source, val.X, val.y, val.fit_weights)
    a, b = _auc(mem, val.X, val.y), _auc(st, val.X, val.y)
    assert b > 0.8 and abs(a - b) < 0.015, (a, b)  # statistically equivalent (XGBoost: the same here)
    np.testing.assert_array_equal(st.predict_score(val.X), again.predict_score(val.X))  # deterministic for a seed
    assert len(st.history["validation_loss"]) == len(mem.history["validation_loss"])
    assert st.info["streamed"]["events"] == len(data)


def test_xgboost_learning_curve_is_sampled_on_large_fits(monkeypatch):
    from hepml_steps.families import xgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    monkeypatch.setattr(xgb, "TRAIN_CURVE_MIN_EVENTS", 10**9)  # every event of this small fit
    full = xgb.XGBoostFamily(params={"n_estimators": 5}).fit(X, y)
    monkeypatch.setattr(xgb, "TRAIN_CURVE_EVENTS", 500)
    sampled = xgb.XGBoostFamily(params={"n_estimators": 5}).fit(X, y)
    np.testing.assert_array_equal(full.predict_score(X), sampled.predict_score(X))  # the model is the same
    assert len(sampled.history["train_loss"]) == 5
    assert np.allclose(sampled.history["train_loss"], full.history["train_loss"], rtol=0.1)


def test_xgboost_learning_curve_sample_is_a_fixed_fraction_between_bounds():
    """1/32 of the training events, at least 2,000 (all of a smaller fit), at most 10,000:
    the curve's evaluation stays a small fraction of the fit at any size."""
    from hepml_steps.families.xgb import _curve_index

    for n, events in ((1_500, 1_500), (10_000, 2_000), (100_000, 3_125), (1_000_000, 10_000), (10**7, 10_000)):
        assert len(_curve_index(n)) == events, n


def test_xgboost_small_fit_uses_a_plain_dmatrix_with_the_same_model(monkeypatch):
    """Below _PLAIN_DMATRIX_BYTES the fit takes the bare library's DMatrix (no sketch pass of its
    own); above, a QuantileDMatrix (no float copy of X): the same trees either way."""
    import xgboost

    from hepml_steps.families import xgb

    rng = np.random.default_rng(1)
    X = rng.normal(size=(4000, 4)).astype(np.float32)
    y = (X[:, 0] + rng.normal(size=4000) > 0).astype(int)
    made = []
    for cls in ("DMatrix", "QuantileDMatrix"):
        orig = getattr(xgboost, cls)
        monkeypatch.setattr(xgboost, cls, lambda *a, _o=orig, _c=cls, **k: made.append(_c) or _o(*a, **k))
    params = {"n_estimators": 10}
    small = xgb.XGBoostFamily(params=params).fit(X[:3000], y[:3000], X_val=X[3000:], y_val=y[3000:])
    assert made[0] == "DMatrix"
    made.clear()
    monkeypatch.setattr(xgb, "_PLAIN_DMATRIX_BYTES", 0)
    large = xgb.XGBoostFamily(params=params).fit(X[:3000], y[:3000], X_val=X[3000:], y_val=y[3000:])
    assert made[0] == "QuantileDMatrix"
    np.testing.assert_array_equal(small.predict_score(X), large.predict_score(X))
    assert small.history == large.history


def test_train_step_streams_above_the_threshold(splits, tmp_path):
    params = {"n_estimators": 30, "max_depth": 3}
    recs = {}
    for model, above in (("mem", 10**9), ("stream", 0)):
        spec = {"family": "xgboost", "params": params, "stream_above_events": above, "stream_batch_events": 512}
        recs[model] = tr.train(
            splits[0], splits[1], model, spec, str(tmp_path / model), str(tmp_path / f"{model}.json")
        )
    assert recs["mem"]["streamed"] is None and recs["stream"]["streamed"]["chunks"] >= 10
    assert recs["stream"]["n_train"] == recs["mem"]["n_train"] == 5000
    assert recs["stream"]["sum_weights_train"] == pytest.approx(recs["mem"]["sum_weights_train"])
    assert json.loads((tmp_path / "stream.json").read_text())["history"]["validation_loss"]
    val = ds.read_scoring(splits[1], json.loads((tmp_path / "mem" / registry.META_FILE).read_text()))
    aucs = [
        roc_auc_score(val.labels, registry.load_model(tmp_path / m)[0].predict_score(val.X)) for m in ("mem", "stream")
    ]
    assert abs(aucs[0] - aucs[1]) < 0.01


def test_a_family_that_does_not_stream_is_capped_in_memory_and_recorded(splits, tmp_path, caplog):
    spec = {"family": "logistic_regression", "stream_above_events": 0, "max_in_memory_events": 1200}
    with caplog.at_level(logging.WARNING):
        rec = tr.train(splits[0], splits[1], "lr", spec, str(tmp_path / "lr"), str(tmp_path / "lr.json"))
    assert rec["streamed"] is None and rec["n_train"] == 1200
    assert rec["train_cap"] == {"cap": 1200, "applied": True, "n_before": 5000, "n_after": 1200}
    assert "capped at 1200 of 5000" in caplog.text
    # the capped read keeps exactly the events of the in-memory cap
    full = pd.read_parquet(splits[0])
    kept, _ = ds.cap_events(full, 1200, "x")
    data = ds.read_fit(splits[0], {"family": "logistic_regression"}, "m", cap=1200)
    np.testing.assert_array_equal(np.sort(data.event_ids), np.sort(kept["event_id"].to_numpy()))
    # the model's own max_train_events wins over max_in_memory_events; a streamed fit has no cap
    cls = registry.get("logistic_regression")
    assert ds.fit_cap({"max_train_events": 3000, "max_in_memory_events": 1200}, cls, False) == 3000
    assert ds.fit_cap({}, registry.get("xgboost"), True) is None
    assert ds.fit_cap({}, registry.get("knn"), False) == registry.get("knn").max_train_events


def test_families_that_stream_pass_the_stream_check():
    for name, params in (("xgboost", {"n_estimators": 10}), ("autoencoder", {"epochs": 3})):
        check_family(registry.get(name), params=params, tasks=registry.get(name).tasks[:1])


def test_explicit_null_cap_lifts_the_familys_but_not_the_in_memory_bound():
    knn = registry.get("knn")
    assert knn.max_train_events is not None
    assert ds.fit_cap({"max_train_events": None}, knn, True) is None  # main: the family cap came back
    assert ds.fit_cap({"max_train_events": None, "max_in_memory_events": 900}, knn, False) == 900


def test_streamed_multiclass_fit_keeps_a_class_its_check_sample_misses(tmp_path, monkeypatch):
    df = make_events(4000, seed=5)
    df["process"] = np.where(df["label"] == 1, 1, 0)
    df.loc[[3999], "process"] = 2  # one event of a rare class, last: a small sample misses it
    path = _write(df, tmp_path / "mc.parquet", row_group=500)
    val = _write(make_events(600, seed=6).assign(process=lambda d: d["label"].astype(int)), tmp_path / "v.parquet")
    monkeypatch.setattr(tr, "STREAM_SAMPLE_EVENTS", 100)
    spec = {
        "family": "xgboost",
        "task": "multiclass",
        "target": "process",
        "params": {"n_estimators": 5},
        "stream_above_events": 0,
        "features": ["f0", "f1", "f2", "f3"],
    }
    rec = tr.train(path, val, "mc", spec, str(tmp_path / "mc"), str(tmp_path / "mc.json"))
    assert rec["streamed"] and rec["classes"] == [0, 1, 2]  # main: DataError "raise max_train_events"


def test_background_only_reads_take_positions_not_a_stored_index(tmp_path):
    df = make_events(3000, seed=7).iloc[500:]  # a stored pandas index starting at 500
    path = str(tmp_path / "shifted.parquet")
    df.to_parquet(path)  # index kept in the file's pandas metadata
    spec = {"family": "autoencoder", "task": "anomaly", "params": {"epochs": 1}}
    capped = ds.read_fit(path, spec, "ae", cap=800)
    assert len(capped) == 800 and (capped.labels == 0).all()
    X, _, _ = _all(ds.stream_fit(path, spec, "ae", batch_events=256))
    np.testing.assert_array_equal(X, ds.read_fit(path, spec, "ae").X)  # main: IndexError in both


@pytest.mark.parametrize("plain", [True, False])
def test_xgboost_validation_loss_uses_the_training_bins_for_any_max_bin(monkeypatch, plain):
    """The validation set is binned with the training max_bin: its recorded loss is the model's
    own log-loss on it (with another max_bin than 256 a QuantileDMatrix fit crashed, a DMatrix one
    recorded the loss of other bins)."""
    from sklearn.metrics import log_loss

    from hepml_steps.families import xgb

    if not plain:
        monkeypatch.setattr(xgb, "_PLAIN_DMATRIX_BYTES", 0)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4000, 4)).astype(np.float32)
    y = (X[:, 0] + rng.normal(size=4000) > 0).astype(int)
    f = xgb.XGBoostFamily(params={"n_estimators": 10, "max_bin": 16}).fit(
        X[:3000], y[:3000], X_val=X[3000:], y_val=y[3000:]
    )
    assert f.history["validation_loss"][-1] == pytest.approx(log_loss(y[3000:], f.predict_score(X[3000:])), abs=1e-6)


def test_xgboost_streamed_fit_caches_its_pages_on_disk_with_the_in_memory_trees(tmp_path, monkeypatch):
    """With external_memory true (by default, "auto", above EXTERNAL_MEMORY_ABOVE training events)
    on the CPU fit_stream bins into an ExtMemQuantileDMatrix whose cache lies in a temporary
    directory ($TMPDIR) during the fit and is gone after it; the model is the one an in-memory
    QuantileDMatrix over the same batches gives (external_memory false; "auto" at or below)."""
    import tempfile

    import xgboost

    from hepml_steps.families import xgb

    rng = np.random.default_rng(4)
    X = rng.normal(size=(6000, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=6000) > 0).astype(int)
    source = ds.ArraySource(X[:5000], y[:5000], np.ones(5000), chunk_events=900)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    orig, cached = xgboost.ExtMemQuantileDMatrix, []

    def spy(it, **kw):
        matrix = orig(it, **kw)
        cached.extend(p.name for p in tmp_path.rglob("*") if p.is_file())
        return matrix

    monkeypatch.setattr(xgboost, "ExtMemQuantileDMatrix", spy)
    monkeypatch.setattr(xgb, "PAGE_BYTES", 4 * 4 * 2000)  # 2,000 events of 4 features a page
    params = {"n_estimators": 15, "max_depth": 3}
    disk = xgb.XGBoostFamily(params={**params, "external_memory": True}, seed=1).fit_stream(source, X[5000:], y[5000:])
    assert cached and disk.info["streamed"]["matrix"].startswith("external memory")
    assert disk.info["streamed"]["chunks"] == 6 and disk.info["streamed"]["batches"] == 3  # 2 chunks a page
    assert list(tmp_path.iterdir()) == []  # the cache went with the fit

    def in_memory(it, **kw):
        it.cache_prefix = None  # an in-memory matrix over the same iterator
        return xgboost.QuantileDMatrix(it, **kw)

    monkeypatch.setattr(xgboost, "ExtMemQuantileDMatrix", in_memory)
    memory = xgb.XGBoostFamily(params=params, seed=1).fit_stream(source, X[5000:], y[5000:])
    assert disk.booster.save_raw("json") == memory.booster.save_raw("json")
    assert disk.history == memory.history
    cached.clear()  # with external_memory false the binned matrix stays in memory
    default = xgb.XGBoostFamily(params={**params, "external_memory": False}, seed=1).fit_stream(
        source, X[5000:], y[5000:]
    )
    assert not cached and default.info["streamed"]["matrix"] == "in memory"
    assert default.booster.save_raw("json") == memory.booster.save_raw("json")
    monkeypatch.setattr(xgboost, "ExtMemQuantileDMatrix", spy)
    for above, on_disk in ((5000, False), (4999, True)):  # "auto": on disk above it only
        cached.clear()
        monkeypatch.setattr(xgb, "EXTERNAL_MEMORY_ABOVE", above)
        auto = xgb.XGBoostFamily(params=params, seed=1).fit_stream(source, X[5000:], y[5000:])
        assert bool(cached) == on_disk and auto.info["streamed"]["matrix"].startswith("external") == on_disk
        assert auto.booster.save_raw("json") == memory.booster.save_raw("json")
    from hepml_steps.errors import FamilyError

    for bad in ("yes", 1):  # refused when the model is made: in memory, streamed or tuned alike
        with pytest.raises(
            FamilyError, match=rf"xgboost: params.external_memory must be true, false or 'auto', got {bad!r}"
        ):
            xgb.XGBoostFamily(params={**params, "external_memory": bad})


def test_xgboost_pages_gather_chunks_in_order_into_batches_of_page_bytes():
    """_pages hands XGBoost the chunks' events, in order and value for value, in batches of
    at most page_bytes of float32 features (an external-memory page per batch: with one per
    65,536-event chunk the fit took 1.5x the time); a chunk that large alone passes as it is;
    a chunk without targets stays without."""
    from hepml_steps.families import xgb

    rng = np.random.default_rng(0)
    sizes = [30, 50, 20, 100, 10, 45]
    chunks = [(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 2, n), rng.random(n)) for n in sizes]
    batches = list(xgb._pages(iter(chunks), page_bytes=4 * 4 * 100))  # 100 events of 4 features
    assert [len(b[0]) for b in batches] == [100, 100, 55]  # 30+50+20 | 100 alone | 10+45
    for got, want in zip(zip(*batches), zip(*chunks)):
        np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    assert all(b[0].flags.c_contiguous and b[0].dtype == np.float32 for b in batches)
    assert batches[1][0] is chunks[3][0]
    unlabelled = list(xgb._pages(iter([(X, None, w) for X, _, w in chunks]), page_bytes=4 * 4 * 100))
    assert [b[1] for b in unlabelled] == [None, None, None]


def test_xgboost_disk_cache_that_cannot_be_written_is_a_storage_error(tmp_path, monkeypatch):
    """A disk cache XGBoost cannot write (here $TMPDIR's directory is a file; a full disk alike)
    stops the fit with a StorageError naming the directory and the way out."""
    import contextlib

    from hepml_steps.errors import StorageError
    from hepml_steps.families import xgb

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setattr(xgb.tempfile, "TemporaryDirectory", lambda **kw: contextlib.nullcontext(str(blocked)))
    rng = np.random.default_rng(5)
    X = rng.normal(size=(2000, 3)).astype(np.float32)
    source = ds.ArraySource(X, (X[:, 0] > 0).astype(int), np.ones(2000), chunk_events=500)
    with pytest.raises(StorageError, match=r"external-memory cache in .*not-a-directory.*external_memory: false"):
        xgb.XGBoostFamily(params={"n_estimators": 3, "external_memory": True}).fit_stream(source)
    model = xgb.XGBoostFamily(params={"n_estimators": 3, "external_memory": False}).fit_stream(source)
    assert model.info["streamed"]["matrix"] == "in memory"


@pytest.mark.parametrize(
    "name, params",
    [
        ("xgboost", {"n_estimators": 20, "max_depth": 3, "early_stopping_rounds": 3}),
        ("mlp", {"epochs": 4, "hidden_layers": [8], "early_stopping_patience": 2, "batch_size": 256}),
        ("autoencoder", {"epochs": 3, "hidden_layers": [4, 2], "batch_size": 256}),
    ],
)
def test_streamed_fit_reads_the_validation_split_in_chunks_with_the_same_result(
    splits, tmp_path, monkeypatch, name, params
):
    """A streamed fit of a streams_validation family gets the validation split as a FitSource
    (never as arrays) and learns what it learns with the split in memory: the same validation
    losses (to summation order), the same model, the same record."""
    spec = {"family": name, "params": params, "stream_above_events": 0, "stream_batch_events": 512}
    if name == "autoencoder":
        spec["task"] = "anomaly"
    cls = registry.get(name)
    seen = []
    fit_stream = cls.fit_stream

    def spy(self, source, X_val=None, **kw):
        seen.append(type(X_val).__name__)
        return fit_stream(self, source, X_val, **kw)

    monkeypatch.setattr(cls, "fit_stream", spy)
    chunked = tr.train(splits[0], splits[1], "c", spec, str(tmp_path / "c"), str(tmp_path / "c.json"))
    monkeypatch.setattr(cls, "streams_validation", False)
    held = tr.train(splits[0], splits[1], "h", spec, str(tmp_path / "h"), str(tmp_path / "h.json"))
    assert seen == ["ParquetSource", "ndarray"]
    labels = pd.read_parquet(splits[1])["label"]
    expected = int((labels == 0).sum()) if name == "autoencoder" else len(labels)  # anomaly: background only
    assert chunked["n_validation"] == held["n_validation"] == expected
    hist = {m: json.loads((tmp_path / f"{m}.json").read_text())["history"] for m in ("c", "h")}
    assert hist["c"].keys() == hist["h"].keys() and hist["c"]["validation_loss"]
    for key in hist["c"]:
        np.testing.assert_allclose(hist["c"][key], hist["h"][key], rtol=1e-6, err_msg=key)
    val = ds.read_scoring(splits[1], json.loads((tmp_path / "c" / registry.META_FILE).read_text()))
    scores = [registry.load_model(tmp_path / m)[0].predict_score(val.X) for m in ("c", "h")]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6, atol=1e-7)


def test_learned_nothing_is_caught_over_a_streamed_validation_split(splits, tmp_path):
    """check_learned scores the validation split chunk by chunk: a model constant on every
    event is refused, one that varies across chunks (not within one) passes."""
    from hepml_steps.errors import DataError

    spec = {"family": "xgboost"}
    val = ds.stream_fit(splits[1], spec, "v", batch_events=100)
    train = ds.read_fit(splits[0], spec, "m")

    class Const:
        task = "classification"

        def predict_score(self, X):
            return np.full(len(X), 0.5)

    class PerChunk:  # the same score within a call, another in the next
        task, calls = "classification", 0

        def predict_score(self, X):
            PerChunk.calls += 1
            return np.full(len(X), float(PerChunk.calls))

    with pytest.raises(DataError, match="learned nothing"):
        tr.check_learned(Const(), train, val, "m", spec)
    tr.check_learned(PerChunk(), train, val, "m", spec)
    assert PerChunk.calls == 2  # stopped at the second chunk


def test_streamed_validation_warns_of_events_of_a_class_absent_from_training(tmp_path, caplog):
    """As the in-memory read does: validation events of a class the training split lacks are
    left out with a warning naming how many."""
    train = make_events(3000, seed=7).assign(process=lambda d: d["label"].astype(int))
    val = make_events(600, seed=8).assign(process=lambda d: d["label"].astype(int))
    val.loc[val.index[:25], "process"] = 2  # a class training never saw
    spec = {"family": "xgboost", "task": "multiclass", "target": "process", "params": {"n_estimators": 3}}
    spec.update(stream_above_events=0, features=["f0", "f1", "f2", "f3"])
    paths = _write(train, tmp_path / "t.parquet"), _write(val, tmp_path / "v.parquet")
    with caplog.at_level(logging.WARNING, logger="hepml.dataset"):
        rec = tr.train(*paths, "mc", spec, str(tmp_path / "mc"), str(tmp_path / "mc.json"))
    assert rec["n_validation"] == 575 and rec["classes"] == [0, 1]
    assert "25 events of a class absent from training are left out" in caplog.text


def test_sigterm_during_a_streamed_fit_removes_the_disk_cache_and_partial_outputs(splits, tmp_path):
    """A train step sent SIGTERM (scancel, a time limit) while XGBoost's disk cache exists stops
    with status 143 and one ``hepml: error:`` line, and leaves neither the cache in $TMPDIR nor
    a model directory, record or temporary file behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    scratch, out = tmp_path / "scratch", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    spec = {
        "family": "xgboost",
        "task": "classification",
        "params": {"n_estimators": 100000, "max_depth": 6, "external_memory": True},
        "stream_above_events": 0,
        "stream_batch_events": 512,
    }
    cmd = [sys.executable, "-m", "hepml_steps.train", "--train", splits[0], "--validation", splits[1]]
    cmd += ["--model", "bdt", "--spec", json.dumps(spec), "--out", str(out / "bdt"), "--record", str(out / "bdt.json")]
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.is_file() for p in scratch.rglob("*")):  # the cache is being written
            assert proc.poll() is None and time.monotonic() < deadline, "the fit ended before its cache appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()  # only the process this test started
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1].startswith("hepml: error: train: terminated by SIGTERM")
    assert list(scratch.iterdir()) == []
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("where", ["training", "validation"])
@pytest.mark.parametrize("call", [1, 3])
def test_sigterm_while_xgboost_bins_from_the_iterator_stops_the_fit_cleanly(tmp_path, monkeypatch, where, call):
    """A SIGTERM that comes while XGBoost builds a matrix from the iterator is handled in the
    C callback's own Python wrapper, where an exception would be lost (a crash, or the signal
    ignored): it is held, ends the iteration and is raised when XGBoost returns; the fit stops
    with Terminated and leaves nothing in $TMPDIR (nor a warning of a cache file gone)."""
    import gc
    import os
    import signal
    import tempfile
    import warnings

    import xgboost

    from hepml_steps import stopping
    from hepml_steps.families import xgb

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(xgb, "PAGE_BYTES", 4 * 3 * 400)  # pages of 400 events: several batches
    rng = np.random.default_rng(6)
    X = rng.normal(size=(6000, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    train, val = (
        ds.ArraySource(X[:4000], y[:4000], np.ones(4000), 500),
        ds.ArraySource(X[4000:], y[4000:], np.ones(2000), 500),
    )
    original, calls = xgboost.core.DataIter._next_wrapper, []

    def next_wrapper(self, this):
        calls.append(self)
        if (where == "training") == (calls[0] is self) and sum(c is self for c in calls) == call:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, in the wrapper
        return original(self, this)

    monkeypatch.setattr(xgboost.core.DataIter, "_next_wrapper", next_wrapper)
    with warnings.catch_warnings(record=True) as caught, stopping.stoppable(True):
        warnings.simplefilter("always")
        with pytest.raises(stopping.Terminated):
            xgb.XGBoostFamily(params={"n_estimators": 5, "external_memory": True}).fit_stream(train, val)
        gc.collect()
    assert list(tmp_path.iterdir()) == []
    assert not [w for w in caught if "external memory" in str(w.message)]
    assert not stopping.pending()


def test_sigterm_during_boosting_ends_it_after_the_iteration_and_raises():
    """A SIGTERM while XGBoost boosts (a C call that may call back into Python to log) is held
    until the iteration ends, stops the boosting there and is raised once xgb.train returns."""
    import os
    import signal

    import xgboost

    from hepml_steps import stopping
    from hepml_steps.families import xgb

    rng = np.random.default_rng(8)
    X = rng.normal(size=(3000, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    original, updates = xgboost.Booster.update, []

    def update(self, *a, **kw):
        updates.append(1)
        if len(updates) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # handled here, inside xgb.train
        return original(self, *a, **kw)

    family = xgb.XGBoostFamily(params={"n_estimators": 500})
    with stopping.stoppable(True), pytest.MonkeyPatch.context() as mp:
        mp.setattr(xgboost.Booster, "update", update)
        with pytest.raises(stopping.Terminated):
            family.fit(X[:2000], y[:2000], X_val=X[2000:], y_val=y[2000:])
    assert len(updates) == 3 and not stopping.pending()


@pytest.mark.filterwarnings("ignore::UserWarning")  # XGBoost's, about the unused parameter
def test_sigterm_in_xgboosts_log_callback_is_not_lost():
    """XGBoost's C++ logs reach Python through a ctypes callback (here its warning about an
    unused parameter, at the first iteration): a SIGTERM handled there is held, not lost in
    ctypes (the fit then ran to its end), and raised when xgb.train returns."""
    import os
    import signal
    import warnings

    from hepml_steps import stopping
    from hepml_steps.families import xgb

    rng = np.random.default_rng(9)
    X = rng.normal(size=(2000, 3)).astype(np.float32)
    family = xgb.XGBoostFamily(params={"n_estimators": 300})
    params, warn, sent = family._booster_params, warnings.warn, []

    def in_the_log_callback(message, *a, **kw):
        if "not_a_parameter" in str(message) and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)  # handled here, inside the ctypes callback
        return warn(message, *a, **kw)

    with stopping.stoppable(True), pytest.MonkeyPatch.context() as mp:
        mp.setattr(family, "_booster_params", lambda: {**params(), "not_a_parameter": 1})
        mp.setattr(warnings, "warn", in_the_log_callback)
        with pytest.raises(stopping.Terminated):
            family.fit(X, (X[:, 0] > 0).astype(int))
    assert sent and family.booster.num_boosted_rounds() == 1  # ended after the iteration it came in


@pytest.mark.parametrize("above", [10**9, 0])
def test_train_step_lets_the_events_go_before_writing_the_model(splits, tmp_path, monkeypatch, above):
    """None of the events the train step read (the training Dataset or FitSource and its check
    sample, the validation split) is alive while the model files are written (the ONNX check
    allocates anew there): the step's peak is the fit's, not the fit's arrays plus the export.
    A streamed fit keeps check_learned's events of its check sample only, and records the
    sample it checked leakage on."""
    import weakref

    read = []  # weak references to what the step read

    def keep(fn):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            for o in out if isinstance(out, tuple) else (out,):
                if o is not None:
                    read.append(weakref.ref(o))
            return out

        return wrapped

    monkeypatch.setattr(tr, "_read_train", keep(tr._read_train))
    monkeypatch.setattr(tr, "_read_validation", keep(tr._read_validation))
    alive = []
    real_save = tr._save

    def save(*a, **k):  # no gc.collect(): freed by their reference counts, not a later collection
        alive.extend(type(r()).__name__ for r in read if r() is not None)
        return real_save(*a, **k)

    monkeypatch.setattr(tr, "_save", save)
    checked = []
    real_check = tr.check_learned
    monkeypatch.setattr(
        tr, "check_learned", lambda fam, train, *a: checked.append(len(train)) or real_check(fam, train, *a)
    )
    spec = {
        "family": "xgboost",
        "params": {"n_estimators": 10},
        "stream_above_events": above,
        "stream_batch_events": 512,
    }
    rec = tr.train(splits[0], splits[1], "m", spec, str(tmp_path / "m"), str(tmp_path / "m.json"))
    assert len(read) >= 2 and alive == [] and (tmp_path / "m" / registry.META_FILE).exists()
    if above:
        assert rec["streamed"] is None and checked == [5000]
    else:
        assert rec["streamed"]["sample_events"] == 5000 and checked == [tr.LEARNED_SAMPLE]
    assert rec["n_validation"] > 0 and rec["sum_weights_train"] > 0
