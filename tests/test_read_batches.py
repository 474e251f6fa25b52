"""io.read_batches: pyarrow's record batches, value for value, read row group by row group;
io.read_matrices: their values as matrices, read column by column."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hepml_steps.io import parquet_file, read_batches, read_matrices


@pytest.fixture
def table_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 1000
    table = pa.table(
        {
            "event_id": np.arange(n, dtype=np.int64),
            "x": rng.normal(size=n),
            "y": rng.normal(size=n).astype(np.float32),
            "label": rng.integers(0, 2, n).astype(np.int8),
            "name": [f"e{i % 7}" for i in range(n)],
        }
    ).replace_schema_metadata({"k": "v"})
    path = tmp_path / "t.parquet"
    with pq.ParquetWriter(path, table.schema) as w:  # row groups of unequal sizes
        for lo, hi in [(0, 300), (300, 310), (310, 700), (700, 1000)]:
            w.write_table(table.slice(lo, hi - lo))
    return path


@pytest.mark.parametrize("batch_size", [1, 7, 100, 300, 301, 999, 1000, 5000])
@pytest.mark.parametrize("columns", [None, ["x", "event_id"], ["name"]])
def test_the_batches_of_iter_batches(table_file, batch_size, columns):
    pf = parquet_file(table_file)
    want = list(pf.iter_batches(batch_size=batch_size, columns=columns))
    got = list(read_batches(pf, batch_size, columns))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.equals(b)
        assert a.schema.equals(b.schema, check_metadata=True)


def test_row_groups_and_no_spanning(table_file):
    pf = parquet_file(table_file)
    want = list(pf.iter_batches(batch_size=64, row_groups=[2, 0]))
    assert pa.Table.from_batches(list(read_batches(pf, 64, row_groups=[2, 0]))).equals(pa.Table.from_batches(want))
    got = list(read_batches(pf, 256, span=False))
    assert [b.num_rows for b in got] == [256, 44, 10, 256, 134, 256, 44]
    assert pa.Table.from_batches(got).equals(pq.read_table(table_file))


def test_a_spanning_batch_holds_no_row_group(table_file):
    """A batch of two row groups' rows is a copy: it shares no buffer with the groups."""
    pf = parquet_file(table_file)
    batches = list(read_batches(pf, 305, ["x"], coalesce_rows=0))  # one row group per read
    assert [b.num_rows for b in batches] == [305, 305, 305, 85]
    assert all(b.column(0).buffers()[1].size == 8 * b.num_rows for b in batches[:3])


@pytest.mark.parametrize("batch_size", [1, 64, 1000, 5000])
def test_small_row_groups_are_read_together_with_the_same_batches(tmp_path, monkeypatch, batch_size):
    """Row groups smaller than coalesce_rows are read together (one read per column for up to
    that many rows, not one per row group), giving pyarrow's batches value for value; with
    span=False (no batch across row groups) they are still read one by one."""
    n = 3000
    rng = np.random.default_rng(5)
    table = pa.table({"x": rng.normal(size=n), "name": [f"p{i % 3}" for i in range(n)]})
    path = tmp_path / "small.parquet"
    pq.write_table(table, path, row_group_size=100)  # 30 row groups
    pf = parquet_file(path)
    calls = []
    for name in ("read_row_group", "read_row_groups"):
        real = getattr(pf, name)
        monkeypatch.setattr(pf, name, lambda g, *a, _r=real, _n=name, **k: calls.append((_n, g)) or _r(g, *a, **k))
    got = list(read_batches(pf, batch_size, coalesce_rows=1000))
    want = list(parquet_file(path).iter_batches(batch_size=batch_size))
    assert len(got) == len(want) and all(a.equals(b) for a, b in zip(got, want))
    assert [g for _, g in calls[::2]] == [list(range(i, i + 10)) for i in range(0, 30, 10)]  # 3 reads x 2 columns
    calls.clear()
    list(read_batches(pf, 100, span=False, coalesce_rows=1000))
    assert len(calls) == 60 and all(name == "read_row_group" for name, _ in calls)


def test_a_file_without_rows_yields_nothing(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"x": pa.array([], pa.float64())}), path)
    assert list(read_batches(parquet_file(path), 10)) == []


@pytest.fixture
def numeric_file(tmp_path):
    """Row groups of 300, 0, 10, 390 and 300 events; a float column with nulls, an int column with nulls."""
    rng = np.random.default_rng(1)
    n = 1000
    x = rng.normal(size=n)
    k = rng.integers(-5, 5, n)
    table = pa.table(
        {
            "x": pa.array(x, mask=np.arange(n) % 13 == 0),
            "y": rng.normal(size=n).astype(np.float32),
            "k": pa.array(k, mask=np.arange(n) % 17 == 0),
            "b": rng.integers(0, 2, n).astype(bool),
        }
    )
    path = tmp_path / "m.parquet"
    with pq.ParquetWriter(path, table.schema) as w:
        for lo, hi in [(0, 300), (300, 300), (300, 310), (310, 700), (700, 1000)]:
            w.write_table(table.slice(lo, hi - lo))
    return path


@pytest.mark.parametrize("batch_size", [1, 7, 100, 300, 301, 600, 999, 1000, 5000])
@pytest.mark.parametrize("columns", [["x", "y", "k", "b"], ["k", "x"], ["y"]])
def test_the_matrices_of_the_batches(numeric_file, batch_size, columns):
    """Batch for batch, read_batches' values (nulls as NaN) in a float32 matrix."""
    pf = parquet_file(numeric_file)
    want = list(read_batches(pf, batch_size, columns))
    got = list(read_matrices(pf, columns, batch_size))
    assert [len(X) for X in got] == [b.num_rows for b in want]
    for X, b in zip(got, want):
        assert X.dtype == np.float32 and X.shape == (b.num_rows, len(columns)) and X.flags.c_contiguous
        ref = np.column_stack([b.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in columns])
        assert np.array_equal(X, ref, equal_nan=True)
    if "x" in columns:  # the nulls are NaN
        assert np.isnan(np.concatenate(got)[:, columns.index("x")]).sum() == 77


def test_matrices_read_one_column_of_one_row_group_at_a_time(numeric_file, monkeypatch):
    """No record batch is built: each read is one column of one row group, and a batch is
    yielded as soon as its last row is read (a row group straddling two batches feeds both)."""
    pf = parquet_file(numeric_file)
    reads, read = [], pf.read_row_group

    def spy(i, columns=None, **kw):
        reads.append((i, tuple(columns)))
        return read(i, columns=columns, **kw)

    monkeypatch.setattr(pf, "read_row_group", spy)
    it = read_matrices(pf, ["x", "y"], 350)
    assert len(next(it)) == 350
    assert reads == [(0, ("x",)), (0, ("y",)), (2, ("x",)), (2, ("y",)), (3, ("x",)), (3, ("y",))]
    assert [len(X) for X in it] == [350, 300]
    assert reads[6:] == [(4, ("x",)), (4, ("y",))]  # each column of each row group read once


def test_matrices_of_a_file_without_rows(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"x": pa.array([], pa.float64())}), path)
    assert list(read_matrices(parquet_file(path), ["x"], 10)) == []


def test_release_freed_memory_puts_arrow_cpp_on_the_system_allocator(tmp_path):
    """In a fresh process, Arrow C++'s own default pool (the Parquet reader's column chunks) is
    the system allocator too: mimalloc and jemalloc never allocate."""
    import subprocess
    import sys

    code = f"""
import os, sys
from hepml_steps.io import release_freed_memory
assert "pyarrow" not in sys.modules
release_freed_memory(arrow_cpp=True)
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
assert os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "system"
pq.write_table(pa.table({{"x": np.arange(100000.0)}}), {str(tmp_path / "x.parquet")!r}, compression="zstd")
assert pq.read_table({str(tmp_path / "x.parquet")!r}).num_rows == 100000
for name in ("mimalloc_memory_pool", "jemalloc_memory_pool"):
    try:
        pool = getattr(pa, name)()
    except NotImplementedError:
        continue
    assert pool.max_memory() == 0, name
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_release_freed_memory_keeps_arrow_cpp_pool_unless_asked():
    """Without ``arrow_cpp`` the Arrow C++ default pool is left alone (the steps that write large
    chunks, generate and ingest, were slower on the system allocator)."""
    import subprocess
    import sys

    code = """
import os
from hepml_steps.io import release_freed_memory
release_freed_memory()
import pyarrow as pa
assert "ARROW_DEFAULT_MEMORY_POOL" not in os.environ
assert pa.default_memory_pool().backend_name == "system"  # pyarrow's own pool is still switched
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_free_heap_pages_are_returned_before_each_row_group_unless_a_scratch_heap_keeps_them(table_file, monkeypatch):
    """In a step's own process (mmap threshold fixed) the heap is trimmed once per row group
    read; inside a ScratchHeap (predict's inference temporaries) never; in a caller's process
    (threshold not fixed, e.g. tests) never."""
    from hepml_steps import io

    trims = []
    monkeypatch.setattr(io, "_malloc_trim", lambda: trims.append(1))
    monkeypatch.setattr(io, "_fixed_threshold", None)
    list(read_batches(parquet_file(table_file), 256))
    assert trims == []
    monkeypatch.setattr(io, "_fixed_threshold", 128 * 1024)
    list(read_batches(parquet_file(table_file), 256, coalesce_rows=0))
    assert len(trims) == 4  # the file's four row groups
    trims.clear()
    list(read_batches(parquet_file(table_file), 256, coalesce_rows=400))
    assert len(trims) == 3  # reads [0, 1], [2], [3]: 310 rows, then 390 and 300
    trims.clear()
    with io.ScratchHeap() as heap:
        assert heap.active
        list(read_batches(parquet_file(table_file), 256, coalesce_rows=0))
        assert trims == []
    assert trims == [1]  # the ScratchHeap's own trim on leaving
    list(read_batches(parquet_file(table_file), 256, coalesce_rows=0))
    assert len(trims) == 5


@pytest.mark.parametrize(
    "step, arrow_cpp",
    [("split", True), ("importance", True), ("evaluate", True), ("plots", True), ("train", True), ("ingest", False)],
)
def test_each_step_chooses_its_arrow_allocator_in_its_own_process(step, arrow_cpp):
    """The steps that read Parquet and write little (split, importance; predict once its arguments
    are parsed) and those that
    read prediction tables (evaluate, plots: at 1M events evaluate's peak above its 20k run fell
    from 53 to 39 MiB on it) put Arrow C++ on the system allocator when run as their own process;
    the train step too (without the fixed mmap threshold: its fit's temporaries come from the
    heap), where mimalloc kept the reading's pages through the fit; ingest, which writes large
    chunks, keeps mimalloc."""
    import os
    import subprocess
    import sys

    code = f"""
import os, sys
sys.argv = ["hepml_steps.{step}", *(["summary"] if "{step}" == "plots" else []), "--help"]
from hepml_steps import {step} as step
try:
    step.main()
except SystemExit:
    pass
print("POOL", os.environ.get("ARROW_DEFAULT_MEMORY_POOL"))
"""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True).stdout
    assert f"POOL {'system' if arrow_cpp else None}" in out


def test_a_batch_copied_from_parts_lets_each_columns_parts_go_once_copied(monkeypatch):
    """Joining parts (slices of row groups) into one batch copies a column at a time and drops
    that column's parts from the caller's list: Arrow never holds the parts and the copy whole
    (it did: 2.2 chunks at ingest's chunk copy)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from hepml_steps import io as hio

    n = 50_000
    pending = [pa.table({c: pc.add(pa.array(np.arange(n, dtype=np.float64)), k) for c in "abcd"}) for k in range(3)]
    base, held, concat = pa.total_allocated_bytes(), [], pa.concat_arrays

    def spy(arrays, *a, **kw):
        held.append(pa.total_allocated_bytes() - base)  # before each column's copy
        return concat(arrays, *a, **kw)

    monkeypatch.setattr(pa, "concat_arrays", spy)
    batch = hio._one_batch(pending)
    assert pending == [] and batch.num_rows == 3 * n and len(held) == 4
    assert max(held) < n * 8  # a column's copy in, its parts out: never a whole column more
    want = np.concatenate([np.arange(n, dtype=np.float64) + k for k in range(3)])
    assert all(np.array_equal(batch.column(c).to_numpy(), want) for c in "abcd")
    twins = [pa.Table.from_arrays([pa.array([1.0 * k]), pa.array([2.0 * k])], names=["a", "a"]) for k in (1, 2)]
    twins = hio._one_batch(twins)  # columns by position: twin names are no matter
    assert twins.column(0).to_pylist() == [1.0, 2.0] and twins.column(1).to_pylist() == [2.0, 4.0]
