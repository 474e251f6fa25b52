"""Deterministic train / validation / test split by a hash of ``event_id``.

Recipe (recorded in the split summary): ``u = splitmix64(event_id XOR
splitmix64(salt)) / 2**64``; an event goes to *train* if ``u < f_train``, to
*validation* if ``u < f_train + f_validation``, else to *test*. ``u`` depends
on nothing but the event's id and the salt, so an event's split never depends
on file order or on which other events are present.

Streams the input by batches of whole row groups, gathered until they hold
:func:`batch_events` events or more (:func:`row_group_batches`): four row groups'
worth, ``4 * io.row_group_events(n)`` (262,144 up to 16.8M events; ingest writes
row groups of at most 65,536 events there, 65,536 x 3 + 3,392 per 200,000-event
chunk, so a batch holds at most 268,928 of them), column by column: the batch's ``event_id`` is read and
hashed, then each column of each of its row groups is read, cut into its
three splits' parts and freed before the next is read. Each split's part of
a batch is then written, in row groups of at most ``io.row_group_events(n)`` events
(up to 16.8M events the features step reads them one at a time). So memory holds one batch of
parts (the batch's rows, once) plus one column of one row group, never a
record batch of the input beside the parts cut from it nor parts waiting
for a full row group; the heap's free pages go back before each batch
(:func:`hepml_steps.io.trim_between_batches`). Larger batches mean fewer output row
groups: a Parquet writer holds about 17 kB of footer metadata per row group of
19 columns until it closes (three row groups per 65,536 input events: 7.6 MiB
at 10M events; 168 row groups, 2.8 MiB, with these batches; at 100M events, before
batches and row groups grew with the file, the 2,000 row groups read held 37 MiB,
a batch's worth). Peak above a
20,000-event run, 10M events of 19 columns (37.5 MiB in the largest batch):
49 MiB; with batches of one row group 19 MiB (9.1 a batch), and 52 MiB when
one record batch was read and parts were gathered into 65,536-event row groups.

Sanity (:func:`check_classes`): every split must hold at least
``min_events_per_class`` signal and background events with a positive total
(signed) weight, or the step stops with one error naming the split, the
class and the counts, before any model trains (a rare signal can leave the
test split without signal, which otherwise surfaces only at evaluation).
Only classes present in the input are checked, and events without a label
(no ``label`` column, or label −1) are left out of the check.
"""

from __future__ import annotations

import contextlib
import logging
import math

import numpy as np

from . import cli
from .columns import EVENT_ID, LABEL, SPLITS, WEIGHT
from .errors import ConfigError, DataError, culprit
from .io import (
    ROW_GROUP_EVENTS,
    atomic_path,
    dictionary_columns,
    parquet_file,
    row_group_events,
    trim_between_batches,
    write_json,
)

log = logging.getLogger("hepml.split")

#: events split at a time up to 16.8M events (whole row groups gathered until they hold at least this many)
BATCH_EVENTS = 4 * ROW_GROUP_EVENTS


def batch_events(n_events: int) -> int:
    """Events split at a time from a table of ``n_events`` events: four of its output
    row groups, ``4 * io.row_group_events(n_events)`` (:data:`BATCH_EVENTS` up to
    16.8M events, 1,572,864 at 100M)."""
    return 4 * row_group_events(n_events)


RECIPE = (
    "u = splitmix64(uint64(event_id) XOR splitmix64(uint64(salt))) / 2**64; "
    "train if u < f_train, validation if u < f_train + f_validation, else test"
)

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over uint64 (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _M1
        z = (z ^ (z >> np.uint64(30))) * _M2
        z = (z ^ (z >> np.uint64(27))) * _M3
        return z ^ (z >> np.uint64(31))


def uniform_from_id(event_id: np.ndarray, salt: int = 0) -> np.ndarray:
    """Map event ids to reproducible uniforms in [0, 1)."""
    key = splitmix64(np.array([salt], dtype=np.uint64))[0]
    h = splitmix64(np.asarray(event_id).astype(np.int64).view(np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def check_fractions(fractions: dict) -> dict[str, float]:
    missing = [s for s in SPLITS if s not in fractions]
    if missing or set(fractions) - set(SPLITS):
        raise ConfigError(f"split.fractions must have exactly the keys {list(SPLITS)}; got {sorted(fractions)}")
    for s in SPLITS:
        if not (0 < float(fractions[s]) < 1):
            raise ConfigError(f"split.fractions.{s} = {fractions[s]} must lie strictly between 0 and 1")
    total = sum(float(fractions[s]) for s in SPLITS)
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise ConfigError(f"split.fractions must sum to 1; train + validation + test = {total:g}")
    return {s: float(fractions[s]) for s in SPLITS}


def assign(event_id: np.ndarray, fractions: dict, salt: int = 0) -> np.ndarray:
    """Index into SPLITS (0 train, 1 validation, 2 test) for each event."""
    f = check_fractions(fractions)
    u = uniform_from_id(event_id, salt)
    edges = np.array([f["train"], f["train"] + f["validation"]])
    return np.searchsorted(edges, u, side="right").astype(np.int8)


CLASSES = {1: "signal", 0: "background"}


def check_classes(counts: dict, weights: dict, minimum: int = 1) -> None:
    """Refuse a split that lacks events (or positive weight) of a class present in the input.

    Parameters
    ----------
    counts, weights : dict of str to dict of int to number
        Per split, per class label (1 signal, 0 background): the number of
        events and their total (signed) weight.
    minimum : int, default 1
        Fewest events of each class a split must hold (``split.min_events_per_class``).

    Raises
    ------
    DataError
        Naming the first split and class short of events or of weight, with
        the counts of every split.
    """
    present = [c for c in CLASSES if sum(counts[s].get(c, 0) for s in SPLITS) > 0]
    for c in present:
        n = {s: counts[s].get(c, 0) for s in SPLITS}
        w = {s: weights[s].get(c, 0.0) for s in SPLITS}
        for s in SPLITS:
            if n[s] < minimum or w[s] <= 0:
                short = (
                    f"{n[s]} {CLASSES[c]} events (fewer than split.min_events_per_class = {minimum})"
                    if n[s] < minimum
                    else f"{CLASSES[c]} events of total weight {w[s]:g} (not positive)"
                )
                per_split = ", ".join(f"{k} {n[k]} (weight {w[k]:.4g})" for k in SPLITS)
                raise DataError(
                    f"split: the {s} split has {short}; {CLASSES[c]} events per split: {per_split}. "
                    f"Every split needs {CLASSES[c]} events to train and evaluate: use more "
                    f"{CLASSES[c]} events, larger split.fractions.{s}, or another split.salt"
                )


def split(
    events: str,
    outs: dict[str, str],
    fractions: dict,
    salt: int = 0,
    summary_out: str | None = None,
    batch_size: int | None = None,
    min_events_per_class: int = 1,
) -> dict:
    """Split the canonical event table ``events`` into the files ``outs[split]``.

    ``batch_size``: events read at a time (whole row groups, gathered until they
    hold at least this many; a larger row group alone; None: :func:`batch_events` of
    the input's size); each output gets its part of a batch in row groups of at most
    ``io.row_group_events(n)`` events, ``n`` the input's events. The outputs keep the
    input's schema and rows, in file order.

    Raises
    ------
    DataError
        A split would be empty, or lacks a class (:func:`check_classes`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    fractions = check_fractions(fractions)
    if set(outs) != set(SPLITS):
        raise ConfigError(f"split outputs must be given for {list(SPLITS)}")
    pf = parquet_file(events)  # not pre-buffered: pyarrow would hold every row group's column chunks read
    schema = pf.schema_arrow
    if EVENT_ID not in schema.names:
        raise DataError(f"{events}: no '{EVENT_ID}' column")
    group = row_group_events(pf.metadata.num_rows)
    batch_size = batch_events(pf.metadata.num_rows) if batch_size is None else batch_size
    counts = {s: 0 for s in SPLITS}
    per_class = {s: {} for s in SPLITS}
    weight_class = {s: {} for s in SPLITS}
    has_label = LABEL in schema.names
    with contextlib.ExitStack() as stack:
        tmps = {s: stack.enter_context(atomic_path(outs[s])) for s in SPLITS}
        dictionary = dictionary_columns(schema)  # labels, categories: not floats nor event ids
        writers = {
            s: stack.enter_context(pq.ParquetWriter(tmps[s], schema, compression="zstd", use_dictionary=dictionary))
            for s in SPLITS
        }
        for groups in row_group_batches(pf, batch_size):
            trim_between_batches()
            with culprit(events, context="cannot read as parquet"):
                parts = _cut(pf, groups, fractions, salt, events)
            for s in SPLITS:
                part = pa.table(parts.pop(s), schema=schema)
                if part.num_rows:
                    counts[s] += part.num_rows
                    if has_label:
                        _count_classes(part, per_class[s], weight_class[s], WEIGHT in schema.names)
                    writers[s].write_table(part, row_group_size=group)  # what features reads at a time
                del part  # not held while the next split's part is written
        empty = [s for s in SPLITS if counts[s] == 0]
        if empty:
            raise DataError(
                f"split {empty} of {events} would be empty ({sum(counts.values())} events in all, "
                f"fractions {fractions}); use more events or larger fractions"
            )
        if has_label:
            check_classes(per_class, weight_class, min_events_per_class)
    summary = {
        "input": str(events),
        "fractions": fractions,
        "salt": int(salt),
        "recipe": RECIPE,
        "n_events": counts,
        "n_signal": {s: per_class[s].get(1, 0) for s in SPLITS} if has_label else None,
        "n_background": {s: per_class[s].get(0, 0) for s in SPLITS} if has_label else None,
        "min_events_per_class": int(min_events_per_class),
    }
    for s in SPLITS:
        log.info("%s: %d events", s, counts[s])
    if summary_out:
        write_json(summary_out, summary)
    return summary


def row_group_batches(pf, batch_size: int):
    """The row groups of the Parquet file ``pf`` (lists of indices), gathered in file order
    until they hold at least ``batch_size`` events (the last batch fewer): the batches
    :func:`split` reads; row groups without rows are left out."""
    md, groups, n = pf.metadata, [], 0
    for rg in range(md.num_row_groups):
        rows = md.row_group(rg).num_rows
        if rows:
            groups.append(rg)
            n += rows
        if n >= batch_size:
            yield groups
            groups, n = [], 0
    if groups:
        yield groups


def _cut(pf, groups: list[int], fractions: dict, salt: int, path: str) -> dict:
    """The rows of the row groups ``groups`` of ``pf`` by split: split -> column name ->
    the split's rows of the column (chunked, a chunk per row group), read a column of a
    row group at a time (:func:`assign` on the batch's ``event_id`` first).

    Raises
    ------
    DataError
        An ``event_id`` is missing (null).
    """
    import pyarrow as pa

    def column(rg, name):
        return pf.read_row_group(rg, columns=[name], use_threads=False).column(0)

    ids = [column(rg, EVENT_ID) for rg in groups]
    if any(c.null_count for c in ids):
        raise DataError(f"{path}: '{EVENT_ID}' has missing values; every event needs an id to be split")
    ids = np.concatenate([c.to_numpy() for c in ids])
    idx = assign(ids, fractions, salt)
    del ids
    bounds = np.cumsum([0] + [pf.metadata.row_group(rg).num_rows for rg in groups])
    masks = [[pa.array(idx[lo:hi] == i) for lo, hi in zip(bounds[:-1], bounds[1:])] for i in range(len(SPLITS))]
    del idx
    parts = {s: {} for s in SPLITS}
    for name in pf.schema_arrow.names:
        chunks = {s: [] for s in SPLITS}
        for j, rg in enumerate(groups):
            col = column(rg, name)
            for i, s in enumerate(SPLITS):
                chunks[s].extend(col.filter(masks[i][j]).chunks)  # Arrow's filter: the part's rows
            del col  # freed before the next column is read
        for s in SPLITS:
            parts[s][name] = pa.chunked_array(chunks[s], type=pf.schema_arrow.field(name).type)
    return parts


def _count_classes(part, n: dict, w: dict, has_weight: bool) -> None:
    """Add the events and weights per class label (0, 1) of a table to ``n`` and ``w``."""
    y = np.asarray(part.column(LABEL))
    wt = np.asarray(part.column(WEIGHT), dtype=np.float64) if has_weight else np.ones(len(y))
    for c in CLASSES:
        m = y == c
        n[c] = n.get(c, 0) + int(m.sum())
        w[c] = w.get(c, 0.0) + float(wt[m].sum())


def main(argv=None) -> int:
    from .io import release_freed_memory

    if argv is None:  # the step's own process (python -m), never a caller's: see io.release_freed_memory
        release_freed_memory(arrow_cpp=True)

    def build(p):
        p.add_argument("--events", required=True)
        for s in SPLITS:
            p.add_argument(f"--{s}", required=True)
        p.add_argument("--fractions", type=cli.json_arg, required=True)
        p.add_argument("--salt", type=int, default=0)
        p.add_argument("--summary")
        p.add_argument(
            "--min-events-per-class",
            type=int,
            default=1,
            help="fewest signal and background events every split must hold",
        )

    return cli.run(
        build,
        lambda a: split(
            a.events,
            {s: getattr(a, s) for s in SPLITS},
            a.fractions,
            a.salt,
            a.summary,
            min_events_per_class=a.min_events_per_class,
        ),
        argv,
        __doc__,
        summary=lambda r: ", ".join(f"{s} {n}" for s, n in r["n_events"].items()) + " events",
    )


if __name__ == "__main__":
    raise SystemExit(main())
