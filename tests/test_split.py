import json

import numpy as np
import pandas as pd
import pytest

from hepml_steps import split as sp
from hepml_steps.errors import ConfigError, DataError

FR = {"train": 0.6, "validation": 0.2, "test": 0.2}


def outs(d):
    return {s: str(d / f"{s}.parquet") for s in ("train", "validation", "test")}


def test_split_partitions_events_with_requested_fractions(events, tmp_path):
    summary = sp.split(str(events), outs(tmp_path), FR, summary_out=str(tmp_path / "s.json"))
    parts = {s: pd.read_parquet(p) for s, p in outs(tmp_path).items()}
    ids = np.concatenate([p.event_id.to_numpy() for p in parts.values()])
    src = pd.read_parquet(events)
    assert sorted(ids) == sorted(src.event_id)  # every event exactly once
    for s, f in FR.items():
        assert abs(len(parts[s]) / len(src) - f) < 0.04
        assert summary["n_events"][s] == len(parts[s])
    rec = json.loads((tmp_path / "s.json").read_text())
    assert rec["recipe"] == sp.RECIPE and rec["fractions"] == FR


def test_assignment_depends_only_on_event_id(events, tmp_path):
    src = pd.read_parquet(events)
    full = sp.assign(src.event_id.to_numpy(), FR)
    shuffled = src.sample(frac=1.0, random_state=1)
    subset = shuffled.iloc[: len(src) // 3]
    part = sp.assign(subset.event_id.to_numpy(), FR)
    lookup = dict(zip(src.event_id, full))
    assert all(lookup[i] == a for i, a in zip(subset.event_id, part))


def test_salt_changes_assignment_and_is_reproducible():
    ids = np.arange(10000)
    a, b = sp.assign(ids, FR, salt=0), sp.assign(ids, FR, salt=0)
    c = sp.assign(ids, FR, salt=1)
    assert (a == b).all() and (a != c).mean() > 0.3


def test_uniform_is_uniform():
    from scipy import stats

    u = sp.uniform_from_id(np.arange(200000))
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert u.min() >= 0 and u.max() < 1


@pytest.mark.parametrize(
    "fr, key",
    [
        ({"train": 0.6, "validation": 0.3, "test": 0.2}, "sum to 1"),
        ({"train": 0.6, "validation": 0.4}, "exactly the keys"),
        ({"train": 1.0, "validation": 0.0, "test": 0.0}, "split.fractions.train"),
    ],
)
def test_bad_fractions_are_named(fr, key, events, tmp_path):
    with pytest.raises(ConfigError, match=key):
        sp.split(str(events), outs(tmp_path), fr)


def test_empty_split_is_an_error_and_writes_nothing(tmp_path):
    pd.DataFrame({"event_id": [1, 2], "label": [0, 1], "weight": [1.0, 1.0]}).to_parquet(tmp_path / "e.parquet")
    o = outs(tmp_path / "out")
    with pytest.raises(DataError, match="would be empty"):
        sp.split(str(tmp_path / "e.parquet"), o, FR)
    assert not any((tmp_path / "out").glob("*.parquet"))


def test_missing_input_named(tmp_path):
    with pytest.raises(DataError, match="nope.parquet"):
        sp.split(str(tmp_path / "nope.parquet"), outs(tmp_path), FR)


def test_cli(events, tmp_path, capsys):
    o = outs(tmp_path)
    rc = sp.main(
        [
            "--events",
            str(events),
            "--train",
            o["train"],
            "--validation",
            o["validation"],
            "--test",
            o["test"],
            "--fractions",
            json.dumps(FR),
        ]
    )
    assert rc == 0 and all(pd.read_parquet(p).shape[0] > 0 for p in o.values())
    rc = sp.main(
        [
            "--events",
            str(events),
            "--train",
            o["train"],
            "--validation",
            o["validation"],
            "--test",
            o["test"],
            "--fractions",
            json.dumps({**FR, "test": 0.5}),
        ]
    )
    assert rc == 1 and "sum to 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- class sanity


def _rare_signal(tmp_path, n_signal=12, label=True):
    """2000 background events and ``n_signal`` signal events none of which hashes into test."""
    ids = np.arange(20000, dtype=np.int64)
    not_test = ids[sp.assign(ids, FR) != 2]
    df = pd.DataFrame(
        {
            "event_id": np.r_[np.arange(100000, 102000), not_test[:n_signal]],
            "label": np.r_[np.zeros(2000), np.ones(n_signal)].astype(np.int8),
            "weight": np.ones(2000 + n_signal),
            "f0": np.zeros(2000 + n_signal),
        }
    )
    if label is None:
        df = df.drop(columns=["label"])
    elif label == -1:
        df["label"] = np.int8(-1)
    path = tmp_path / "rare.parquet"
    df.to_parquet(path, index=False)
    return path


def test_a_split_without_signal_is_one_error_naming_the_class_and_counts(tmp_path):
    with pytest.raises(DataError) as exc:
        sp.split(str(_rare_signal(tmp_path)), outs(tmp_path), FR)
    msg = str(exc.value)
    assert msg.startswith("split: the test split has 0 signal events") and "signal events per split:" in msg
    assert "test 0" in msg and "train " in msg and "validation " in msg
    assert not any((tmp_path / f"{s}.parquet").exists() for s in FR)  # nothing written


def test_min_events_per_class_is_configurable(events, tmp_path):
    sp.split(str(events), outs(tmp_path), FR, min_events_per_class=100)
    with pytest.raises(DataError, match=r"fewer than split.min_events_per_class = 10000"):
        sp.split(str(events), outs(tmp_path), FR, min_events_per_class=10_000)


def test_a_class_without_positive_weight_in_a_split_is_refused(events, tmp_path):
    df = pd.read_parquet(events)
    test_sig = (sp.assign(df.event_id.to_numpy(), FR) == 2) & (df.label == 1)
    df.loc[test_sig, "weight"] = -1.0
    df.to_parquet(events, index=False)
    with pytest.raises(DataError, match=r"the test split has signal events of total weight -\d+ \(not positive\)"):
        sp.split(str(events), outs(tmp_path), FR)


@pytest.mark.parametrize("label", [None, -1])
def test_unlabelled_tables_skip_the_class_check(label, tmp_path):
    summary = sp.split(str(_rare_signal(tmp_path, label=label)), outs(tmp_path), FR)
    assert sum(summary["n_events"].values()) == 2012


def test_split_streams_a_column_of_a_row_group_at_a_time(events, tmp_path, monkeypatch):
    """The input (opened through io.parquet_file) is read one column of one row group at a
    time, row groups gathered until a batch holds batch_size events; each output gets its
    part of a batch in row groups of at most io.row_group_events(n) events, and its rows
    (and their order) do not depend on the batch size."""
    import inspect

    import pyarrow.parquet as pq

    from hepml_steps.io import ROW_GROUP_EVENTS

    assert inspect.signature(sp.split).parameters["batch_size"].default is None  # batch_events of the input
    assert sp.batch_events(2000) == sp.batch_events(16 * 2**20) == sp.BATCH_EVENTS == 4 * ROW_GROUP_EVENTS
    assert sp.batch_events(10**8) == 4 * 393_216
    table = pq.read_table(events)
    pq.write_table(table, events, row_group_size=300)  # 2,000 events: 300 x 6 + 200
    seen, reads, opened = [], [], sp.parquet_file

    def spy(path):
        pf = opened(path)
        read = pf.read_row_group

        def read_spy(i, columns=None, **kw):
            reads.append((i, tuple(columns)))
            return read(i, columns=columns, **kw)

        pf.read_row_group = read_spy
        seen.append(pf)
        return pf

    monkeypatch.setattr(sp, "parquet_file", spy)
    monkeypatch.setattr(sp, "row_group_events", lambda n: 250)
    small, whole = tmp_path / "small", tmp_path / "whole"
    small.mkdir(), whole.mkdir()
    sp.split(str(events), outs(small), FR, batch_size=700)  # batches of row groups 0-2, 3-5, 6
    assert len(seen) == 1  # read through io.parquet_file (not pre-buffered)
    names = table.schema.names
    first = [(rg, ("event_id",)) for rg in (0, 1, 2)] + [(rg, (c,)) for c in names for rg in (0, 1, 2)]
    assert reads[: len(first)] == first and len(reads) == 3 * len(first) - 2 * (len(names) + 1)
    monkeypatch.setattr(sp, "parquet_file", opened)
    sp.split(str(events), outs(whole), FR, batch_size=10**6)
    for s in FR:
        a, b = pq.read_table(outs(small)[s]), pq.read_table(outs(whole)[s])
        assert a.equals(b) and a.schema.equals(table.schema, check_metadata=True)
        for out, batches in ((small, 3), (whole, 1)):
            md = pq.ParquetFile(outs(out)[s]).metadata
            sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
            assert max(sizes) <= 250 and len(sizes) >= max(batches, -(-sum(sizes) // 250)), sizes
        assert len(sizes) == -(-sum(sizes) // 250)  # one batch: no short row group but the last


def test_row_group_events_bounds_the_number_of_row_groups():
    """65,536-event row groups up to 256 of them, then multiples of 65,536 that keep a file
    within 256 row groups, at most 1,048,576 events (pyarrow's default cap) each."""
    from hepml_steps.io import MAX_ROW_GROUP_EVENTS, ROW_GROUP_EVENTS, row_group_events

    assert [row_group_events(n) for n in (0, 1, 10**6, 10**7, 256 * 65_536)] == [ROW_GROUP_EVENTS] * 5
    assert row_group_events(256 * 65_536 + 1) == 2 * ROW_GROUP_EVENTS
    assert row_group_events(10**8) == 6 * ROW_GROUP_EVENTS  # 255 row groups
    assert row_group_events(10**9) == MAX_ROW_GROUP_EVENTS == 2**20  # 954 row groups: the cap
    for n in (10**7, 2 * 10**7, 6 * 10**7, 10**8, 2 * 10**8):
        assert -(-n // row_group_events(n)) <= 256


def test_row_groups_grow_with_the_file_so_their_number_stays_bounded(events, tmp_path, monkeypatch):
    """Above MAX_ROW_GROUPS x ROW_GROUP_EVENTS events, split reads batches of four and writes
    row groups of io.row_group_events(n) events: the outputs hold at most MAX_ROW_GROUPS row
    groups (a reader holds every row group's footer metadata), with the same rows."""
    import pyarrow.parquet as pq

    from hepml_steps import io as hio

    table = pq.read_table(events)
    pq.write_table(table, events, row_group_size=100)  # 2,000 events in 20 row groups
    monkeypatch.setattr(hio, "ROW_GROUP_EVENTS", 100)
    small, grown = tmp_path / "small", tmp_path / "grown"
    small.mkdir(), grown.mkdir()
    sp.split(str(events), outs(small), FR)  # 2,000 events <= 256 x 100: groups of 100, batches of 400
    monkeypatch.setattr(hio, "MAX_ROW_GROUPS", 4)
    assert hio.row_group_events(2000) == 500 and sp.batch_events(2000) == 2000
    sp.split(str(events), outs(grown), FR)  # 2,000 > 4 x 100: groups of 500, one batch
    for s in FR:
        a, b = pq.read_table(outs(small)[s]), pq.read_table(outs(grown)[s])
        assert a.equals(b)
        sizes = {}
        for out in (small, grown):
            md = pq.ParquetFile(outs(out)[s]).metadata
            sizes[out] = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        assert max(sizes[small]) <= 100 and max(sizes[grown]) <= 500 and len(sizes[grown]) <= 4, sizes
        assert len(sizes[grown]) < len(sizes[small])


def test_split_keeps_string_dictionary_and_null_values(tmp_path):
    """Columns of any type (strings with nulls, dictionary-encoded categories) are cut
    row for row, with the input's schema and its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 1000
    rng = np.random.default_rng(3)
    table = pa.table(
        {
            "event_id": np.arange(n, dtype=np.int64) * 7 + 1,
            "label": rng.integers(0, 2, n).astype(np.int8),
            "weight": rng.random(n),
            "name": pa.array([None if i % 9 == 0 else f"e{i}" for i in range(n)]),
            "cat": pa.array([f"c{i % 3}" for i in range(n)]).dictionary_encode(),
        }
    ).replace_schema_metadata({"origin": "test"})
    events = tmp_path / "events.parquet"
    pq.write_table(table, events, row_group_size=128)
    sp.split(str(events), outs(tmp_path), FR, batch_size=300)
    idx = sp.assign(table.column("event_id").to_numpy(), FR)
    for i, s in enumerate(("train", "validation", "test")):
        got = pq.read_table(outs(tmp_path)[s])
        assert got.schema.equals(pq.read_table(events).schema, check_metadata=True)
        assert got.equals(pq.read_table(events).filter(pa.array(idx == i)))


def test_an_event_without_id_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    events = tmp_path / "events.parquet"
    pq.write_table(pa.table({"event_id": pa.array([1, None, 3], pa.int64()), "x": [1.0, 2.0, 3.0]}), events)
    with pytest.raises(DataError, match=r"events.parquet: 'event_id' has missing values"):
        sp.split(str(events), outs(tmp_path), FR)
    assert not any((tmp_path / f"{s}.parquet").exists() for s in FR)


def test_a_corrupt_input_names_the_file(events, tmp_path):
    data = bytearray(events.read_bytes())
    data[4 : len(data) // 2] = b"\xff" * (len(data) // 2 - 4)  # the column chunks; the footer intact
    events.write_bytes(bytes(data))
    with pytest.raises(DataError, match=str(events)):
        sp.split(str(events), outs(tmp_path), FR)
