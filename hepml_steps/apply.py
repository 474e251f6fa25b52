"""Apply trained models to any file: a copy of its events with one score column per model.

Each model is a bundle (:mod:`hepml_steps.bundle`): the raw columns it needs
are computed from the file's branches with the training's ingest expressions
(``Jet_pt[0]``, aliases), then its preprocessing and model give the scores.
Score columns: ``<model>_score`` (P(signal), the regressed value, ...), or
``<model>_prob_<i>`` per class ``i`` of a multiclass model (class ``i`` is the
model's ``classes[i]``).

**Output.** Every event of the input, in the input's order (entry ``i`` of
the output is entry ``i`` of the input), including those a training cut
(``data.files.cut``) would have removed: their scores are computed the same
way, the cut is not applied (select on the output). Missing values (NaN) are
handled as in training (:mod:`hepml_steps.bundle`).

- ROOT input (TTree or RNTuple) -> a ROOT file with a **TTree** of the same
  name holding every branch uproot can write back (flat numbers and
  conditions, jagged ``var * number`` collections with their counter
  branch) plus the score branches (float32). Branches uproot cannot write
  (strings, records, nested collections) are left out with a warning and
  listed in the record (``not_copied``); nothing is a friend tree.
- Parquet or CSV input -> Parquet: the input's columns plus the score columns.

Files are read chunk by chunk (``chunk_size`` events): memory is one chunk.
CLI::

    python -m hepml_steps.apply --model-dir results/models/bdt [--model-dir ...] \\
        --input data.root [--tree Events] --out data_scored.root
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import bundle as bundles
from . import cli
from .errors import DataError
from .io import atomic_path, write_json
from .readers import file_format

log = logging.getLogger("hepml.apply")

#: events read at a time
CHUNK_SIZE = 100_000


def output_names(inputs: list[tuple[str, str]]) -> list[str]:
    """The output file name of each input ``(path, format)`` (format ``root`` or other):
    ``<stem>.root`` for ROOT, else ``<stem>.parquet``.

    Inputs whose names would be the same get the folders that tell them apart
    (below the folder they share), as few as needed, joined before it:
    ``data/2017/nano.root`` and ``data/2018/nano.root`` give ``2017_nano.root``
    and ``2018_nano.root``; ``nano.root`` and ``old/nano.root`` give
    ``nano.root`` and ``old_nano.root``. What is still alike (the same file
    given twice; ``nano.csv`` beside ``nano.parquet``) is numbered: ``nano.root``,
    ``1_nano.root``. The names are unique and depend only on ``inputs`` (their
    order included), not on the working directory.
    """
    import collections
    import os

    base = [Path(p).stem + (".root" if fmt == "root" else ".parquet") for p, fmt in inputs]
    names = list(base)
    for name, n in collections.Counter(base).items():
        if n == 1:
            continue
        idx = [i for i, b in enumerate(base) if b == name]
        paths = [os.path.abspath(inputs[i][0]) for i in idx]
        distinct = list(dict.fromkeys(paths))
        shared = os.path.commonpath([os.path.dirname(p) for p in distinct])
        parents = {p: Path(os.path.relpath(os.path.dirname(p), shared)).parts for p in distinct}
        parents = {p: () if parts == (".",) else parts for p, parts in parents.items()}
        deepest = max(map(len, parents.values()))
        for depth in range(1, deepest + 1):
            told = {p: "_".join((*parents[p][-depth:], name)) for p in distinct}
            if len(set(told.values())) == len(distinct):
                break
        for i, p in zip(idx, paths):
            names[i] = told[p] if deepest else name
    seen: set = set()
    for i, name in enumerate(names):  # still alike, or a made-up name that is another's own: numbered
        k, unique = 0, name
        while unique in seen:
            k += 1
            unique = f"{k}_{name}"
        names[i] = unique
        seen.add(unique)
    return names


def apply(
    model_dirs: list[str],
    path: str,
    out: str,
    fmt: str | None = None,
    tree: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    record_out: str | None = None,
) -> dict:
    """Score every event of ``path`` with every model; write the copy with scores to ``out``.

    Parameters
    ----------
    model_dirs : list of str
        Model directories (bundles) written by the train step.
    path : str
        The input file (ROOT, Parquet or CSV; ``fmt`` overrides the suffix).
    out : str
        The output: ROOT for a ROOT input, else Parquet.
    tree : str, optional
        The TTree/RNTuple of a ROOT input (default: the only one).
    chunk_size : int
        Events read at a time.
    record_out : str, optional
        Where to write the record (JSON): events, seconds, events/s, columns.

    Returns
    -------
    dict
        The record.

    Raises
    ------
    DataError
        The input is missing or unreadable, lacks a branch a model needs
        (naming it and the model), or a bundle is refused (see :func:`hepml_steps.bundle.load`).
    """
    models = [bundles.load(d) for d in model_dirs]
    names = [c for b in models for c in b.score_columns()]
    if len(set(names)) != len(names):
        raise DataError(f"two models give the same score column(s): {names}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing apply input file: {path}")
    fmt = file_format(path, fmt)
    t0 = time.perf_counter()
    scores = (_scores(models, src, frame) for src, _n, frame in bundles.from_file(models, path, fmt, tree, chunk_size))
    with atomic_path(Path(out)) as tmp:
        if fmt == "root":
            n, extra = _write_root(path, tree, tmp, scores, chunk_size)
        else:
            n, extra = _write_parquet(path, fmt, tmp, scores, chunk_size)
    seconds = time.perf_counter() - t0
    record = {
        "input": str(path),
        "output": str(out),
        "format": fmt,
        "n_events": n,
        "seconds": seconds,
        "events_per_s": n / seconds if seconds > 0 else None,
        "models": [b.name for b in models],
        "score_columns": names,
        **extra,
    }
    if record_out:
        write_json(record_out, record)
    log.info(
        "%s: scored %d events with %s in %.2f s (%.0f events/s) -> %s",
        path,
        n,
        [b.name for b in models],
        seconds,
        record["events_per_s"] or 0,
        out,
    )
    return record


def _scores(models, src, frame) -> dict[str, np.ndarray]:
    out = {}
    for b in models:
        try:
            out.update(b.score_table(frame))
        except DataError as exc:
            raise DataError(f"{src.desc}: {exc}") from exc
    return out


def _writable(name: str, values) -> bool:
    """Whether uproot can write ``values`` back as a TTree branch (flat or jagged numbers)."""
    import awkward as ak

    t = ak.type(values).content
    if isinstance(t, ak.types.ListType) or isinstance(t, ak.types.RegularType):
        t = t.content
        if isinstance(t, (ak.types.ListType, ak.types.RegularType)):
            return False
    return isinstance(t, ak.types.NumpyType) and t.primitive not in (
        "complex64",
        "complex128",
        "datetime64",
        "timedelta64",
    )


def _shared_counters(arrays, names: list[str], keep: list[str]) -> dict[str, str]:
    """Counter branch names for the collections ``names`` of ``arrays`` (the first chunk) that
    have no count leaf (an RNTuple): NanoAOD's ``n`` + the collection's prefix (``Jet_pt``,
    ``Jet_eta`` -> one ``nJet``) for the branches of a prefix whose objects count alike per
    event, and agree with a kept branch of that name if there is one; the others get none here
    (uproot's ``n`` + branch name). A kept branch of a counter's name is then written as that
    counter."""
    import awkward as ak

    groups: dict[str, list[str]] = {}
    for b in names:
        if "_" in b.strip("_") and isinstance(ak.type(arrays[b]).content, ak.types.ListType):
            groups.setdefault("n" + b.split("_", 1)[0], []).append(b)
    shared = {}
    for counter, group in groups.items():
        counts = ak.to_numpy(ak.num(arrays[group[0]]))
        alike = [b for b in group if np.array_equal(ak.to_numpy(ak.num(arrays[b])), counts)]
        if counter in keep and not np.array_equal(ak.to_numpy(arrays[counter]), counts):
            continue  # a branch of that name that counts something else
        shared.update(dict.fromkeys(alike, counter))
    return shared


def _check_counts(arrays, counters: dict[str, str], desc: str) -> None:
    """Raise a DataError when collections given one counter (:func:`_shared_counters`) count
    their objects differently in this chunk of ``arrays``, or differently from an input branch
    of the counter's name."""
    import awkward as ak

    first: dict[str, tuple[str, np.ndarray]] = {}
    for b, counter in counters.items():
        counts = ak.to_numpy(ak.num(arrays[b]))
        if counter not in first:
            first[counter] = (b, counts)
            if counter in arrays.fields and not np.array_equal(ak.to_numpy(arrays[counter]), counts):
                raise DataError(f"{desc}: branch '{counter}' does not count the objects of '{b}' in every event")
        elif not np.array_equal(first[counter][1], counts):
            raise DataError(
                f"{desc}: branches '{first[counter][0]}' and '{b}' share the counter '{counter}' but not their"
                " number of objects in every event: they cannot be written back as one collection"
            )


def _write_root(path: Path, tree: str | None, tmp: Path, scores, chunk_size: int):
    """Copy the input tree's writable branches and add the score branches, chunk by chunk."""
    import awkward as ak
    import uproot

    from .errors import culprit
    from .readers import open_source

    n, not_copied = 0, {}
    with open_source(path, "root", tree) as src, uproot.recreate(tmp) as f:
        t = src._t
        name = src.tree
        out = None
        with culprit(src.desc, context="cannot read"):
            it = t.iterate(step_size=chunk_size, library="ak")
            for arrays, sc in zip(it, scores):
                if out is None:
                    keep = []
                    for b in arrays.fields:
                        if _writable(b, arrays[b]) and b not in sc:
                            keep.append(b)
                        else:
                            not_copied[b] = str(ak.type(arrays[b]).content)
                    if not_copied:
                        log.warning(
                            "%s: branch(es) not copied (uproot cannot write them back): %s", src.desc, not_copied
                        )
                    counters = {}
                    for b in keep:
                        leaf = getattr(t[b], "count_leaf", None) if hasattr(t, "branches") else None
                        leaf = leaf.member("fName") if leaf is not None else None
                        if leaf in keep:
                            counters[b] = leaf
                    shared = _shared_counters(arrays, [b for b in keep if b not in counters], keep)
                    counters.update(shared)
                    # a kept branch made a shared counter is written as the counter (uproot cannot take both)
                    types = {b: arrays[b].type.content for b in keep if b not in shared.values()}
                    types.update({c: np.float32 for c in sc})
                    f.mktree(
                        name.rsplit("/", 1)[-1],
                        types,
                        counter_name=lambda b, counters=counters: counters.get(b, "n" + b),
                    )
                    out = f[name.rsplit("/", 1)[-1]]
                _check_counts(arrays, counters, src.desc)
                out.extend({**{b: arrays[b] for b in types if b not in sc}, **sc})
                n += len(arrays)
    if n != src.num_entries:
        raise DataError(f"{src.desc}: wrote {n} events of {src.num_entries}")
    return n, {"tree": name, "not_copied": not_copied}


def _write_parquet(path: Path, fmt: str, tmp: Path, scores, chunk_size: int):
    """The input's columns plus the score columns, as Parquet, batch by batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .errors import culprit

    if fmt == "parquet":
        batches = pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=chunk_size)
    else:
        import pandas as pd

        batches = (
            pa.RecordBatch.from_pandas(df, preserve_index=False) for df in pd.read_csv(path, chunksize=chunk_size)
        )
    n, writer = 0, None
    try:
        with culprit(path, context=f"cannot read as {fmt}"):
            for batch, sc in zip(batches, scores):
                table = pa.Table.from_batches([batch])
                for c, v in sc.items():
                    table = table.append_column(c, pa.array(v))
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table)
                n += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise DataError(f"{path}: no events")
    return n, {}


def main(argv=None) -> int:
    def build(p):
        p.add_argument(
            "--model-dir",
            action="append",
            required=True,
            help="a trained model's directory (results/models/<model>); repeat for several",
        )
        p.add_argument("--input", required=True, help="the file to score (ROOT, Parquet or CSV)")
        p.add_argument("--out", required=True, help="the output: ROOT (TTree) for ROOT input, else Parquet")
        p.add_argument("--tree", help="TTree/RNTuple of a ROOT input (default: the only one)")
        p.add_argument("--format", choices=("root", "parquet", "csv"), help="input format (default: by suffix)")
        p.add_argument("--chunk-size", type=int, default=CHUNK_SIZE, help="events read at a time")
        p.add_argument("--record", help="where to write the record (JSON)")

    return cli.run(
        build, lambda a: apply(a.model_dir, a.input, a.out, a.format, a.tree, a.chunk_size, a.record), argv, __doc__
    )


if __name__ == "__main__":
    raise SystemExit(main())
