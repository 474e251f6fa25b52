"""Score every event of the three prepared splits with a trained model.

Writes one Parquet table per model with ``event_id, split, label, weight,
score`` (``label`` only for labelled inputs; plus ``truth_llr`` when known,
and ``target`` for a task with a target) — the input of evaluation. How scores are laid out is the task's
(:meth:`hepml_steps.tasks.Task.prediction_columns`): a regression model's
``target`` is the true value in its physical units; a multiclass model's
``score`` is the index of its most probable class, ``prob_<i>`` the
probability of class ``i`` and ``target`` the index of the true class (−1 for
a class the model never saw); the index → value map is the model's
``classes``. The score columns (``score``, ``prob_<i>``) are stored in the
family's ``score_dtype``: float32 for XGBoost and torch, the library's own
values (``predict_score`` widens them to float64; hepml's readers widen them
again, :func:`hepml_steps.columns.widen_scores`), so value for value. Every split's
feature columns are read and scored in batches of ``batch_size`` events, then each
split's rows written a row group at a time (:func:`predict`: two passes); the test
split's reading and inference are metered (time, CPU time, energy, events/s,
J/event; ``scope: "read+inference"``) and written to the step's record
(``--record``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time

import numpy as np

from . import cli, dataset, registry, tasks
from .columns import EVENT_ID, LABEL, SPLIT, SPLITS, TARGET, TRUTH_LLR, WEIGHT
from .errors import ConfigError, FamilyError
from .io import ScratchHeap, atomic_path, release_freed_memory, row_group_events, write_json

log = logging.getLogger("hepml.predict")


def _score(model, X, task, classes, heap: ScratchHeap) -> np.ndarray:
    """``model.predict_score`` of one batch's feature matrix (``task.empty_scores`` for no
    events); its temporaries reuse the heap (:class:`hepml_steps.io.ScratchHeap`)."""
    if not len(X):
        return task.empty_scores(classes)
    with heap.calls():
        return model.predict_score(X)


def _split_column(split: str, n: int):
    """The ``split`` column of a batch of ``n`` rows (large_string). Built per batch, not
    kept: a kept full-size column (0.85 MiB per 65,536 events) stayed in memory during
    the next split's inference, the step's peak."""
    import pyarrow as pa

    return pa.repeat(pa.scalar(split, pa.large_string()), n)


def _stored(columns: dict, dtype: str) -> dict:
    """The prediction columns of ``task.prediction_columns`` in the family's ``score_dtype``
    (float32 for XGBoost and torch, whose ``predict_score`` widened them), value for value.

    Raises
    ------
    FamilyError
        A value is not one of ``dtype`` (the family's ``score_dtype`` is wrong).
    """
    if dtype == "float64":
        return columns
    out = {}
    for c, v in columns.items():
        narrow = v.astype(dtype)
        if not np.array_equal(narrow, v, equal_nan=True):
            raise FamilyError(f"prediction column '{c}' holds values that are not {dtype} (the family's score_dtype)")
        out[c] = narrow
    return out


def _table(data, split: str, score, task, dtype: str = "float64"):
    """The prediction rows of one batch of a split (see the module docstring), as an Arrow
    table; the score columns in ``dtype`` (the family's ``score_dtype``)."""
    import pyarrow as pa

    cols = {EVENT_ID: data.event_ids, SPLIT: _split_column(split, len(data))}
    if data.labels is not None:  # unlabelled inputs: no label column
        cols[LABEL] = data.labels
    cols[WEIGHT] = data.weights
    cols.update(_stored(task.prediction_columns(score), dtype))
    if data.truth_llr is not None:
        cols[TRUTH_LLR] = data.truth_llr
    if task.needs_target:
        cols[TARGET] = data.y
    return pa.table(cols)


class _Writer:
    """Prediction tables appended to one Parquet file (zstd), the first table's schema for all."""

    def __init__(self, path):
        self.path, self.writer = path, None

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            # dictionary encoding for the split name and label only: tried on unique
            # floats it costs half the write time and makes the file larger
            self.writer = pq.ParquetWriter(
                self.path,
                table.schema,
                compression="zstd",
                use_dictionary=[c for c in (SPLIT, LABEL) if c in table.schema.names],
            )
        self.writer.write_table(table.cast(self.writer.schema))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def predict(
    model_dir: str,
    inputs: dict[str, str],
    out: str,
    batch_size: int = 131_072,
    threads: int = 1,
    record_out: str | None = None,
    energy: dict | None = None,
) -> dict:
    """Score the three splits; return (and write to ``record_out``) the step's record.

    Each split is scored in two passes, so memory holds a batch, not a split, and
    never the feature matrix and the rows written at once; every split's first pass
    comes before any second pass, so that the table's writer, which holds the footer
    metadata of every row group it wrote (about 19 kB each: 2.3 MiB by the test split
    at 10M events), is not open while a feature matrix is. The first reads the
    model's feature columns only, ``batch_size`` events at a time, straight into
    the matrix (:func:`hepml_steps.dataset.iter_feature_matrices`, what bare
    inference reads), scores them and appends the scores to an unnamed scratch
    file beside ``out`` (``tempfile.TemporaryFile``: removed on close, also after
    an error; 8 bytes per event and class for float64 scores, a plain ``write``,
    under 1 % of the pass's time); the model's temporaries reuse the heap during the pass
    (:class:`hepml_steps.io.ScratchHeap`), which is given back after it. The
    second reads the event columns row group by row group and the scores back,
    and appends the rows to ``out``, which is written atomically: after any
    error there is no (partial) prediction table. The test split's first pass
    is metered: the energy record (``energy.inference``, ``scope:
    "read+inference"``) covers reading the feature columns and inference, not
    writing the table. ``timing[split]["seconds"]`` is the inference alone (the
    ``predict_score`` calls), ``timing[split]["step_s"]`` the split's whole time
    (both passes). The three scratch files are on disk together (8 bytes per event
    and class for float64 scores: 80 MB at 10M events).

    Peak memory above a run on 20,000 events, at 10M events (batches of 131,072
    events: 10.6 MiB of the columns read), two threads: BDT 10-11 MiB, MLP 12 MiB.
    One pass reading record batches of every column and building the matrix from
    them (100,000-event batches, 8.1 MiB) took 44 and 50.

    Parameters
    ----------
    model_dir : str
        The trained model's directory.
    inputs : dict of str to str
        Split name -> prepared split (``train``, ``validation``, ``test``).
    out : str
        The prediction table (Parquet).
    batch_size : int
        Events per batch (read and ``predict_score`` call).
    threads : int
        CPU threads of inference.
    record_out : str, optional
        Where to write the step's record (timing and test-split inference energy).
    energy : dict, optional
        The config's energy settings.

    Raises
    ------
    ConfigError
        ``batch_size`` below 1.
    DataError
        A split is missing or unreadable, a feature column of the model is
        missing from it, or its target is unusable.
    StorageError
        ``out`` cannot be written.
    """
    from .energy import step_meter

    if batch_size < 1:
        raise ConfigError(f"evaluation.inference_batch_size must be >= 1 (got {batch_size})")
    model, meta = registry.load_model(model_dir)
    model.n_threads = threads
    cls, task = registry.get(meta["family"]), tasks.get(meta["task"])
    model.use_device(meta.get("device", "cpu"))
    timing, inference, scored = {}, None, {}
    with atomic_path(out) as tmp, contextlib.ExitStack() as spills:
        for s in SPLITS:  # every split scored before the table is opened (see the docstring)
            t0 = time.perf_counter()
            metered = s == "test"
            meter = step_meter(energy, model.info.get("device", "cpu"), cls.gpu_capable) if metered else None
            spill = spills.enter_context(tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(out))))
            with ScratchHeap() as heap, meter or contextlib.nullcontext():
                dtype, shape, n, seconds = _score_only(model, inputs[s], meta, batch_size, task, heap, spill)
            if metered:
                meter.set_events(n)
                inference = {**meter.record, "batch_size": batch_size, "split": "test", "scope": "read+inference"}
            scored[s] = (spill, dtype, shape)
            timing[s] = {"n_events": n, "seconds": seconds, "step_s": time.perf_counter() - t0}
        writer = _Writer(tmp)
        try:
            for s in SPLITS:
                t0 = time.perf_counter()
                spill, dtype, shape = scored.pop(s)
                _write_scores(spill, dtype, shape, inputs[s], meta, task, s, writer, model.score_dtype)
                spill.close()  # its disk space back now
                timing[s]["step_s"] += time.perf_counter() - t0
        finally:
            writer.close()
    record = {
        "model": meta["model"],
        "family": meta["family"],
        "batch_size": batch_size,
        "threads": threads,
        "device": model.info.get("device", "cpu"),
        "device_note": model.info.get("device_note"),
        "timing": timing,
        "energy": {"inference": inference},
    }
    if record_out:
        write_json(record_out, record)
    log.info(
        "%s: test inference %.0f events/s (%s)", meta["model"], inference["events_per_s"] or 0, inference["method"]
    )
    return record


def _score_only(model, path, meta, batch_size, task, heap, spill) -> tuple[np.dtype, tuple, int, float]:
    """Score a split batch by batch, appending the scores to the open binary file ``spill``
    (``ndarray.tofile``: the scores' bytes, 8 per event and class for float64, a plain
    write, no mapping), so memory
    holds a batch's scores, not the split's; return (dtype, shape of one event's scores,
    events, inference seconds)."""
    dtype, shape, n, seconds = None, (), 0, 0.0
    for X in dataset.iter_feature_matrices(path, meta, batch_size):  # the features only, as bare inference
        t0 = time.perf_counter()
        score = _score(model, X, task, meta.get("classes"), heap)
        seconds += time.perf_counter() - t0
        if dtype is None:
            dtype, shape = score.dtype, score.shape[1:]
        np.ascontiguousarray(score, dtype=dtype).tofile(spill)
        n += len(score)
        del X, score  # not held while the next batch is read
    if dtype is None:  # a split without rows
        empty = task.empty_scores(meta.get("classes"))
        dtype, shape = empty.dtype, empty.shape[1:]
    return dtype, shape, n, seconds


def _write_scores(spill, dtype, shape, path, meta, task, split, writer, score_dtype) -> None:
    """Write the rows of a split scored by :func:`_score_only`: its event columns read row
    group by row group (no batch spanning two: no copy; one output row group each), its
    scores read back from ``spill`` (rewound) alike."""
    spill.seek(0)
    width = int(np.prod(shape, dtype=np.int64))
    group = row_group_events(dataset.parquet_rows(path))  # as the features step wrote them
    for data in dataset.iter_scoring(path, {**meta, "features": []}, group, span=False):
        scores = np.fromfile(spill, dtype=dtype, count=len(data) * width).reshape(len(data), *shape)
        writer.write(_table(data, split, scores, task, score_dtype))
        del data, scores  # not held while the next batch is read


def main(argv=None) -> int:
    def build(p):
        p.add_argument("--model-dir", required=True, help="the trained model's directory")
        for s in SPLITS:
            p.add_argument(f"--{s}", required=True, help=f"prepared {s} split (features)")
        p.add_argument("--out", required=True, help="prediction table (Parquet)")
        p.add_argument("--batch-size", type=int, default=131_072, help="events per inference batch")
        p.add_argument("--threads", type=int, default=1, help="CPU threads of inference")
        p.add_argument("--record", help="step record JSON (timing and inference energy)")
        p.add_argument("--energy", type=cli.json_arg, default={}, help="energy settings (config 'energy') as JSON")

    def call(a):
        if argv is None:  # the step's own process (python -m), never a caller's: see io.release_freed_memory
            release_freed_memory(arrow_cpp=True)
        return predict(
            a.model_dir, {s: getattr(a, s) for s in SPLITS}, a.out, a.batch_size, a.threads, a.record, a.energy
        )

    return cli.run(
        build,
        call,
        argv,
        __doc__,
        summary=lambda r: f"test inference {r['energy']['inference']['events_per_s'] or 0:.3g} events/s",
    )


if __name__ == "__main__":
    raise SystemExit(main())
