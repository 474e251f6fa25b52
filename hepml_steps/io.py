"""Small file helpers shared by every step: atomic writes and table I/O.

Outputs are written to a temporary file in the destination directory and moved
into place with :func:`os.replace`, so a reader (or a re-run after a crash)
never sees a half-written file and an existing good file is only replaced by a
complete new one. A write that fails for a reason of the system (disk full,
no permission) leaves no temporary file and says which output it was:
``results/x.parquet: No space left on device``. Readers name the file they
could not read.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataError, StorageError, culprit

#: events per Parquet row group of the tables the steps write (split, features), up to
#: ``MAX_ROW_GROUPS`` of them (:func:`row_group_events`): a reader decodes about one row
#: group at a time, so this bounds its memory
ROW_GROUP_EVENTS = 65_536
#: most row groups of a file the steps write while a row group holds at most ``MAX_ROW_GROUP_EVENTS``
MAX_ROW_GROUPS = 256
#: largest row group the steps write: 16 x ``ROW_GROUP_EVENTS`` = 1,048,576 events, pyarrow's default cap
MAX_ROW_GROUP_EVENTS = 16 * ROW_GROUP_EVENTS


def dictionary_columns(schema) -> list[str]:
    """The columns of the pyarrow ``schema`` a step's ParquetWriter dictionary-encodes
    (``use_dictionary``): those that repeat values (labels, integers, categories), not the
    floating-point ones nor the unique ``event_id``. Dictionary encoding of unique floats made
    the split files 20 % larger and cost 1.7x split's CPU time, and a writer holds each such
    column's dictionary and data pages until its row group ends (up to 1 MiB of dictionary a
    column before it falls back to plain). Generate at 100M events peaked at 395 MiB with
    every column a dictionary and Arrow's own allocator, 330 MiB with neither."""
    import pyarrow as pa

    from .columns import EVENT_ID

    return [f.name for f in schema if f.name != EVENT_ID and not pa.types.is_floating(f.type)]


def row_group_events(n_events: int) -> int:
    """Events per row group of a Parquet file of ``n_events`` events that a step writes.

    :data:`ROW_GROUP_EVENTS` (65,536) up to ``MAX_ROW_GROUPS`` such groups (16.8M
    events); above, the smallest multiple of it that keeps the file within
    ``MAX_ROW_GROUPS`` row groups, at most :data:`MAX_ROW_GROUP_EVENTS` (1,048,576;
    from 268M events on the file holds more groups). Returns an int >= 65,536. A
    step that writes chunk by chunk also ends a row group with each chunk (generate:
    1M-event chunks, 300 row groups at 100M events; ingest: 200k, 500), as a step
    writing a batch per row group does with each batch (split, features, predict).

    Why: a reader holds the footer metadata of every row group for as long as the
    file is open, and a writer holds it until the file is closed, about 1 kB per column
    chunk (19 kB per row group of 19 columns read, 17 kB written; pyarrow 25). At 100M
    events in 65,536-event groups that was 37 MiB for the 2,000 row groups the split
    step read, four times its batch. Larger groups bound the metadata, and a reader
    then holds one larger row group (Parquet's guidance is larger still: 512 MB to 1 GB,
    https://parquet.apache.org/docs/file-format/configurations/).
    """
    k = -(-max(int(n_events), 1) // (MAX_ROW_GROUPS * ROW_GROUP_EVENTS))
    return min(k, MAX_ROW_GROUP_EVENTS // ROW_GROUP_EVENTS) * ROW_GROUP_EVENTS


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` on success.

    The temporary file keeps the destination's suffix (libraries such as
    xgboost and pyarrow choose the format from it). On any exception the
    temporary file is removed and ``path`` is left untouched.

    Raises
    ------
    StorageError
        For an OSError with an errno (disk full, no permission), naming ``path``
        (not the temporary file) and the system's reason.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp_path, path)
    except BaseException as exc:
        if tmp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno is not None:
            named = exc.filename if exc.filename not in (None, str(tmp_path), tmp_path) else path
            raise StorageError(f"{named}: {exc.strerror or exc}") from exc
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _existing(path: str | os.PathLike) -> Path:
    """``path`` as a Path; DataError ``missing input file`` when there is nothing there."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"missing input file: {path}")
    return path


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file.

    Raises
    ------
    DataError
        When the file is missing or is not valid JSON (naming the file).
    StorageError
        When the system refuses to read it.
    """
    path = _existing(path)
    with culprit(path, context="not valid JSON"):
        return json.loads(path.read_text())


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_parquet(path: str | os.PathLike, df) -> None:
    """Write a pandas DataFrame as zstd Parquet, atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, compression="zstd")


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None):
    """Read a Parquet table (only ``columns`` when given) as a pandas DataFrame.

    Raises
    ------
    DataError
        When the file is missing, corrupt or not Parquet, or lacks a column (naming the file).
    StorageError
        When the system refuses to read it.
    """
    import pandas as pd

    path = _existing(path)
    with culprit(path, context="cannot read as parquet"):
        return pd.read_parquet(path, columns=columns)


def parquet_file(path: str | os.PathLike):
    """Open a Parquet file for reading by row group or record batch (``pyarrow.parquet.ParquetFile``).

    Raises
    ------
    DataError
        When the file is missing, corrupt or not Parquet (naming the file).
    StorageError
        When the system refuses to read it.
    """
    import pyarrow.parquet as pq

    path = _existing(path)
    with culprit(path, context="cannot read as parquet"):
        return pq.ParquetFile(path, pre_buffer=False)  # pre-buffering holds a row group's column chunks at once


def read_batches(
    pf,
    batch_size: int,
    columns: list[str] | None = None,
    row_groups: list[int] | None = None,
    span: bool = True,
    coalesce_rows: int = ROW_GROUP_EVENTS,
):
    """The record batches of ``pf.iter_batches(batch_size, row_groups, columns)``, value for
    value, read with less memory.

    ``pf`` is a ``pyarrow.parquet.ParquetFile`` (:func:`parquet_file`). Batches hold
    ``batch_size`` rows (>= 1), the last one fewer, spanning row groups as pyarrow's do
    (batch for batch the same as pyarrow's, except for a column read as dictionary
    (``read_dictionary``): there pyarrow ends a batch at every row-group boundary, this
    reader does not; the rows are the same); ``columns`` None: every column of the file,
    ``[]``: nothing is yielded (pyarrow yields batches without columns). A file without
    rows yields nothing.
    ``span=False``: no batch spans two row groups (a row group is cut into batches of
    ``batch_size`` rows, its last one fewer), so a batch never costs a copy nor holds
    two row groups. The file is read one row group at a time, column by column, on the calling
    thread, so memory holds the batch, one row group, a copy of the rows of the
    next batch read so far, and one column chunk being decoded; in a step's own
    process the heap's free pages are returned before each row group
    (:func:`trim_between_batches`). With ``span`` (the default), consecutive
    row groups are read together while they hold fewer than ``coalesce_rows``
    rows (:data:`ROW_GROUP_EVENTS`; 0: one row group per read), which memory
    then holds as it holds one row group: a file written in small pieces
    (500-row groups) would otherwise cost a read per column and a trim per
    piece (ingest of 200k events x 30 columns took 3.9 s instead of 0.15 s with
    pyarrow's reader). pyarrow's
    reader held about twice the batch besides the batch it returned, and
    decoded on its thread pool: 48 MiB of Arrow memory at its peak for
    batches of 9 MiB (65,536 events, 19 columns); this reader, 19.

    Raises
    ------
    pyarrow.ArrowInvalid, OSError
        As ``ParquetFile.read_row_group`` (a missing column, a corrupt file).
    """
    import pyarrow as pa

    names = list(pf.schema_arrow.names if columns is None else columns)
    schema = pa.schema([pf.schema_arrow.field(c) for c in names], metadata=pf.schema_arrow.metadata)
    pending, n_pending = [], 0
    groups = range(pf.num_row_groups) if row_groups is None else row_groups
    for read in _coalesced(pf, groups, coalesce_rows) if span else ([rg] for rg in groups):
        trim_between_batches()
        one = len(read) == 1  # pyarrow's single-group read, else its read of several
        group = pa.Table.from_arrays(
            [
                (
                    pf.read_row_group(read[0], columns=[c], use_threads=False)
                    if one
                    else pf.read_row_groups(read, columns=[c], use_threads=False)
                ).column(0)
                for c in names
            ],
            schema=schema,
        )
        start, rows = 0, group.num_rows
        while start < rows:
            take = min(batch_size - n_pending, rows - start)
            pending.append(group.slice(start, take))
            n_pending, start = n_pending + take, start + take
            if start == rows:
                group = None  # all its rows are in pending: each column freed once copied (_copied)
            if n_pending == batch_size:
                batch = _one_batch(pending)
                pending, n_pending = [], 0
                yield batch
                del batch
        if pending and not span:
            yield _one_batch(pending)
            pending, n_pending = [], 0
        if pending:  # the next batch's first rows, copied: the group is not held for them
            pending = [_copied(pending)]
        group = None
    if n_pending:
        yield _one_batch(pending)


def _coalesced(pf, row_groups, rows: int = ROW_GROUP_EVENTS):
    """``row_groups`` in order as lists of consecutive ones to read together: a row group of
    ``rows`` rows or more alone, smaller ones gathered while they hold fewer than ``rows``."""
    md, read, n = pf.metadata, [], 0
    for rg in row_groups:
        size = md.row_group(rg).num_rows
        if read and (n + size > rows or read[-1] + 1 != rg):
            yield read
            read, n = [], 0
        read.append(rg)
        n += size
    if read:
        yield read


def read_matrices(pf, columns: list[str], batch_size: int, dtype="float32"):
    """The rows of ``columns`` of ``pf`` (a ``pyarrow.parquet.ParquetFile``) as matrices
    of shape (n_batch, len(columns)) and type ``dtype``, ``batch_size`` rows each (>= 1),
    the last one fewer; a null as NaN. A file without rows yields nothing.

    The values are those of :func:`read_batches`' batches turned into a matrix
    column by column (``to_numpy(zero_copy_only=False)``), but no record batch is
    built: each row group is read one column at a time, straight into the matrices
    of the batches it holds rows of, and each column is freed before the next is
    read. So memory holds the matrix being yielded and, when a row group straddles
    two batches, the next batch's rows read so far (none when every row group but
    the last holds a multiple or a divisor of ``batch_size`` events: 65,536-event row
    groups, :data:`ROW_GROUP_EVENTS`, and batches of 131,072), or, for a row group
    larger than a batch, the matrices of all the batches it holds (the row group's
    rows) — not the record batch, the row group and the copy that a matrix built
    from :func:`read_batches` costs besides (the predict step at 10M events,
    100,000-event batches: 33 MiB above a 20,000-event run with them, 16 with this
    reader). Each row group's rows are copied per column and batch: tiny batches
    (a few events) make that a Python loop per event.

    Raises
    ------
    pyarrow.ArrowInvalid, OSError
        As ``ParquetFile.read_row_group`` (a missing column, a corrupt file).
    TypeError, ValueError
        A column's values do not convert to ``dtype``.
    """
    import numpy as np

    md = pf.metadata
    total, width = md.num_rows, len(columns)
    filling: dict[int, np.ndarray] = {}  # batch index -> its matrix, rows being filled
    first = 0  # the file row of the row group's first row
    for rg in range(md.num_row_groups):
        n = md.row_group(rg).num_rows
        if not n:
            continue
        trim_between_batches()
        ks = range(first // batch_size, (first + n - 1) // batch_size + 1)  # the batches it feeds
        for k in ks:
            if k not in filling:
                filling[k] = np.empty((min(batch_size, total - k * batch_size), width), dtype=dtype)
        for j, c in enumerate(columns):
            col = pf.read_row_group(rg, columns=[c], use_threads=False).column(0)
            for k in ks:
                lo, hi = max(first, k * batch_size), min(first + n, (k + 1) * batch_size)
                filling[k][lo - k * batch_size : hi - k * batch_size, j] = col.slice(lo - first, hi - lo).to_numpy(
                    zero_copy_only=False
                )
            del col
        first += n
        for k in ks:
            if min((k + 1) * batch_size, total) <= first:  # complete
                X = filling.pop(k)
                yield X
                del X


def _copied(tables: list):
    """The rows of ``tables`` (same schema), in order, as one table of fresh single-chunk columns.

    Copied a column at a time, and ``tables`` (the caller's list, emptied) lets each column's
    parts go once it is copied: memory holds the copy and the columns not yet copied, not
    both tables whole (ingest at 1M events, 200,000-event chunks over 65,536-event row groups:
    Arrow held 65 MiB at the chunk's copy, 2.2 chunks, when the parts were kept to the end).
    Columns are taken by position (duplicate names allowed), in time linear in columns x parts.
    """
    import pyarrow as pa

    schema = tables[0].schema
    parts = [list(t.columns) for t in tables]
    tables.clear()
    columns = []
    for i, field in enumerate(schema):
        chunks = [chunk for p in parts for chunk in p[i].chunks]
        for p in parts:
            p[i] = None  # this column's parts let go once copied
        columns.append(pa.concat_arrays(chunks) if chunks else pa.array([], field.type))
        del chunks
    return pa.Table.from_arrays(columns, schema=schema)


def _one_batch(tables: list):
    """One record batch of the rows of ``tables`` (same schema; the caller's list, emptied
    when they are copied), in order; no copy when they are one table of single-chunk columns."""
    one = len(tables) == 1 and all(col.num_chunks == 1 for col in tables[0].columns)
    return (tables[0] if one else _copied(tables)).to_batches()[0]


def columns_of(path: str | os.PathLike) -> list[str]:
    """The columns of a Parquet table, in file order, as pandas sees them (a
    stored pandas index is not a column). Reads the footer only.

    Raises
    ------
    DataError, StorageError
        As :func:`parquet_file`.
    """
    schema = parquet_file(path).schema_arrow
    index = set()
    if schema.metadata and b"pandas" in schema.metadata:
        with culprit(path, context="unreadable pandas metadata"):
            meta = json.loads(schema.metadata[b"pandas"])
        index = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
    return [c for c in schema.names if c not in index]


def table_attrs(path: str | os.PathLike) -> dict:
    """The ``DataFrame.attrs`` stored with a Parquet table (as pandas or pyarrow write them), or {}.

    Raises
    ------
    DataError, StorageError
        As :func:`parquet_file`.
    """
    metadata = parquet_file(path).schema_arrow.metadata or {}
    with culprit(path, context="unreadable table attributes"):
        if b"PANDAS_ATTRS" in metadata:  # pandas' DataFrame.to_parquet
            return json.loads(metadata[b"PANDAS_ATTRS"])
        if b"pandas" in metadata:  # pyarrow's Table.from_pandas keeps them in its pandas metadata
            return json.loads(metadata[b"pandas"]).get("attributes") or {}
    return {}


#: glibc's ``mallopt`` parameter numbers of ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD`` (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: glibc's default ``M_TRIM_THRESHOLD`` (bytes), restored after a ScratchHeap (glibc's dynamic
#: threshold may have raised it before the mmap threshold was fixed: then this trims more, never less)
_DEFAULT_TRIM = 128 * 1024
#: the largest ``M_MMAP_THRESHOLD`` glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``)
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
#: the mmap threshold :func:`release_freed_memory` fixed in this process (None: not fixed)
_fixed_threshold: int | None = None
#: how many ScratchHeap blocks are active in this process (they keep freed heap pages on purpose)
_scratch_heaps = 0


@functools.cache
def _libc():
    """glibc, loaded once (``ctypes.util.find_library`` runs ``ldconfig``: ~1 ms a call); None elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; False where there is no glibc (nothing changed)."""
    libc = _libc()
    try:
        return bool(libc.mallopt(param, int(value))) if libc is not None else False
    except AttributeError:
        return False


def trim_between_batches() -> None:
    """Return the heap's free pages to the system before the next row group (or batch) is
    read, in a process whose mmap threshold :func:`release_freed_memory` fixed and that
    keeps no :class:`ScratchHeap` (whose kept pages are the point). glibc returns only the
    top of its heap by itself; the free pages between the small blocks that stay (Parquet
    pages, Python objects, parts under the threshold) accumulated: the split step, 4-row-group
    batches, peaked at 170 MiB without, 163 with at 10M events (1M: 158, 156)."""
    if _fixed_threshold is not None and not _scratch_heaps:
        _malloc_trim()


def release_heap(collect: bool = False) -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``;
    elsewhere nothing), for a step about to enter a phase that allocates anew
    after letting large arrays go (the train step before its fit and before its
    model files: the ONNX check). ``collect``: run the garbage collector first,
    for what reference cycles hold (0.14 s with torch and scikit-learn loaded;
    a streamed fit's sources sit in XGBoost's iterator callbacks). Changes no
    setting of the process."""
    if collect:
        import gc

        gc.collect()
    _malloc_trim()


def _malloc_trim() -> None:
    """glibc's ``malloc_trim(0)``: free heap pages go back to the system (nothing elsewhere)."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)


def release_freed_memory(threshold: int = 128 * 1024, *, arrow_cpp: bool = False) -> None:
    """Make memory freed between batches go back to the system, for a step
    that reads and writes tables batch by batch (call once, at its start, before pyarrow is imported).

    Two allocators otherwise keep what a batch freed, so the process's peak
    grows with the number of batches rather than staying at one batch:
    pyarrow's default pool (mimalloc or jemalloc) keeps freed pages for
    reuse, so Arrow is switched to the system allocator — pyarrow's pool
    (``pyarrow.set_memory_pool``) and, with ``arrow_cpp`` and when pyarrow is
    not imported yet, Arrow C++'s own default pool too
    (``ARROW_DEFAULT_MEMORY_POOL=system``, read when pyarrow is first
    imported): the Parquet reader takes its column chunks and decompression
    buffers from the C++ default, not from pyarrow's pool, and mimalloc kept
    17 MiB of them per record batch read (split at 1M events: peak 240 -> 173
    MiB). ``arrow_cpp`` is for the steps that read small batches and write
    little (split, predict, importance) and those that read prediction
    tables (evaluate, plots: evaluate at 1M events peaked 53 MiB above its
    20k run with mimalloc, 39 with the system allocator), and generate, since its
    writer no longer dictionary-encodes floats (:func:`dictionary_columns`; 10M events:
    325-326 MiB against 331, the same CPU time). Under the fixed mmap threshold below,
    the system allocator made ingest, which writes large chunks, slower (1.8x the CPU
    time at 2M events), so it keeps mimalloc there. And glibc raises its
    mmap threshold after a large buffer is freed, so the next batch's
    buffers come from the heap and are not returned, so the threshold is
    fixed at ``threshold`` bytes (glibc only; elsewhere nothing is changed).
    Process-wide: the batch steps' ``main()`` call it when run as their own
    process (no ``argv``), never when called in a caller's process (tests),
    and library functions never do: under the fixed threshold every larger
    allocation is a fresh mmap (slower for e.g. torch's temporaries: see
    :class:`ScratchHeap`).
    """
    global _fixed_threshold
    arrow_on_system_allocator(arrow_cpp=arrow_cpp)
    if _mallopt(_M_MMAP_THRESHOLD, threshold):
        _fixed_threshold = int(threshold)


def arrow_on_system_allocator(*, arrow_cpp: bool = True) -> None:
    """Take Arrow's memory from the system allocator (glibc's malloc): pyarrow's pool
    (``pyarrow.set_memory_pool``) and, with ``arrow_cpp`` and when pyarrow is not
    imported yet, Arrow C++'s default pool (``ARROW_DEFAULT_MEMORY_POOL=system``,
    which the Parquet reader's buffers come from). mimalloc keeps the pages Arrow
    freed for Arrow alone; on the system allocator they serve the allocations that
    follow (a fit's) and :func:`release_heap` returns them. Without
    :func:`release_freed_memory`'s fixed mmap threshold: for the train step, whose
    torch and XGBoost temporaries come from glibc's heap (at 1M events its peak above
    the 20k run went from 62 to 4 MiB for the MLP, from 196 to 134 MiB for XGBoost
    in memory, in the same time). Process-wide: a step's own process only.
    """
    if arrow_cpp and "pyarrow" not in sys.modules:  # afterwards Arrow C++ has chosen its default pool
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


class ScratchHeap:
    """Scratch memory of repeated calls (inference) reused from glibc's heap, in a
    process whose mmap threshold :func:`release_freed_memory` fixed.

    Under the fixed threshold every buffer above it is a fresh ``mmap``: a
    model's temporaries (a torch MLP's activations, 16 MiB per 65,536 events
    and 64 units; XGBoost's matrix) are mapped, faulted in page by page and
    unmapped again at every call, which made the MLP's inference take about
    twice the library's own time. Inside the block, :meth:`calls` lifts the
    mmap threshold to 32 MiB (glibc's largest) for the calls it wraps, so their
    buffers come from the heap, and freed heap memory is kept (trim threshold
    ``keep`` bytes) so the next call reuses pages already faulted in; between
    the calls the fixed threshold is back (the batches read and written stay
    mmapped, returned when freed). On leaving the block the trim threshold is
    glibc's default again and the heap's free pages are returned
    (``malloc_trim``). Where the threshold was not fixed (a caller's process,
    tests) or there is no glibc, nothing is changed.

    The cost is memory: the kept pages are fragmented by the small objects
    allocated between calls, so the heap holds more than one call's
    temporaries. Measured on the predict step at 10M events (the MLP,
    hidden layers 64-64, batches of 100,000 events): minor page faults 3.35M
    -> 0.59M, wall time 10.0 -> 7.2 s, peak RSS 426-443 -> 481-576 MiB.
    (Lifting the threshold only per call and trimming after each one kept
    the peak within 13-40 MiB, but only took the time to 8.9 s.) With the MLP's
    CPU forward passes now of 1,024 events (0.25 MiB activations, still above the
    fixed threshold) and one block per split's scoring pass: measured with 2,048-event
    passes, 12.5 s without the block, 6.9-7.6 s with it, and the same peak.
    """

    def __init__(self, keep: int = 256 * 1024 * 1024):
        self.keep, self.active = int(keep), False

    def __enter__(self) -> ScratchHeap:
        global _scratch_heaps
        self.active = _fixed_threshold is not None and _mallopt(_M_TRIM_THRESHOLD, self.keep)
        _scratch_heaps += self.active
        return self

    def __exit__(self, *exc) -> None:
        global _scratch_heaps
        if self.active:
            _scratch_heaps -= 1
            _mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
            _malloc_trim()
            self.active = False

    @contextlib.contextmanager
    def calls(self) -> Iterator[None]:
        """Buffers up to 32 MiB allocated inside come from (and go back to) the heap."""
        if not self.active:
            yield
            return
        _mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)
        try:
            yield
        finally:
            _mallopt(_M_MMAP_THRESHOLD, _fixed_threshold)
