"""Figures of merit of one model, judged once on the test split.

Reads the model's predictions (all three splits) and writes ``metrics.json``::

    {"model", "task", "family", "threshold", "n_events", "sum_weights",
     "metrics": {...}, "overtraining": {...}, "extra": {...}}

The figures are the task's (:meth:`hepml_steps.tasks.Task.figures`); per
task (all weighted with the event weights):

- classification: the confusion-matrix figures at ``threshold`` (accuracy,
  error rate, precision, sensitivity, specificity, "ROC", F1, geometric
  mean, weighted tp/fp/tn/fn), the losses, ROC AUC on test (and on train and
  validation, for comparison), signal efficiency at each background
  efficiency, the Bayes-optimal AUC from ``truth_llr`` when known, and the
  train-vs-test KS overtraining test per class; and the significance-optimal
  cut (below), with the confusion-matrix figures again at that cut
  (``precision_at_cut``, ``f1_at_cut``, ...);
- multiclass: accuracy and error rate of the most probable class, per-class
  and macro precision, sensitivity, F1 and one-vs-rest ROC AUC
  (``roc_auc`` = the macro mean), cross-entropy, the weighted confusion
  matrix (``confusion``, rows = true class), train/validation accuracy and
  AUC for comparison, and per class the KS test of that class's probability,
  train vs test, on its own events;
- anomaly: the anomaly score as a signal discriminant (AUC, efficiencies),
  plus the KS test on background (the class it was trained on) and the
  significance-optimal cut on the anomaly score;
- regression: MSE, MAE, RMSE, R², bias and resolutions on test (MSE and R²
  on train for overfitting);
- clustering: number of clusters, noise fraction, silhouette (needs the
  test features), adjusted Rand index and purity against signal/background;
- dimreduction: explained variance ratio and how well the first component
  alone separates signal from background.

With unlabelled inputs (no ``label`` column; only tasks that need no labels
run) the figures against the labels (clustering's adjusted Rand index and
purity, the first component's separation) are left out.

Significance and the optimal cut (classification, anomaly): the event
weights are taken as *expected yields* (events in the data set analysed): the
toy's weights are normalised to ``data.toy.yields``; for files, a user makes
them so with each input's ``weight`` (cross-section × luminosity / number of
generated events) times the per-event ``weight_column`` (e.g. ``genWeight``
normalised to 1 on average). The test split holds a fraction
``test_fraction`` of the events, so its weights are scaled by
1/test_fraction: S and B are the full sample's expected yields. The cut
maximising the figure ``significance`` (``asimov``, ``s_over_sqrt_b``,
``s_over_sqrt_s_plus_b``, with relative background uncertainty
``bkg_uncertainty``; :func:`hepml_steps.significance.optimal_cut`, which only
considers cuts keeping at least 1 expected and 10 simulated background events)
gives the metrics ``z_max`` (standard deviations), ``optimal_cut`` (select
``score >= optimal_cut``), ``s_at_cut`` and ``b_at_cut`` (events),
``sig_eff_at_cut`` and ``bkg_eff_at_cut``, ``n_bkg_mc_at_cut`` and
``b_mc_error_at_cut`` (simulated background events there and √Σw² of their
weights, events) and ``cut_at_guard`` (the guard, not the score, set the
cut: a warning is logged); metrics.json's ``significance``
entry records the figure, the uncertainty and the weight scale.

Train-split figures and the overtraining test use only the training events the
model was fitted on: with a training cap (``train_cap`` in the record) that is
the same deterministic subsample the training step took.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from functools import partial

import numpy as np

from . import cli, tasks
from .columns import EVENT_ID, LABEL, PROB, SCORE, SPLIT, TARGET, TRUTH_LLR, WEIGHT, widen_scores
from .dataset import fitted_events
from .errors import DataError, culprit
from .io import columns_of, read_json, write_json

log = logging.getLogger("hepml.evaluate")

#: Record fields copied to metrics.json "extra" (and so to the leaderboard).
EXTRA_KEYS = (
    "family",
    "classes",
    "target",
    "n_train",
    "n_validation",
    "fit_seconds",
    "fit_cpu_seconds",
    "device",
    "threads",
    "train_cap",
    "tuning",
    "weighting",
    "energy",
    "params",
    "leakage",
)


def _clean(obj):
    """nan/inf -> None, numpy -> Python, recursively (JSON has no nan)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _records(extra, inference) -> dict:
    """The training record, with the predict step's inference energy merged into ``energy``."""
    rec = dict(read_json(extra) if isinstance(extra, str) else (extra or {}))
    inf = read_json(inference) if isinstance(inference, str) else (inference or {})
    if inf.get("energy"):
        rec["energy"] = {**(rec.get("energy") or {}), **inf["energy"]}
    return rec


#: the prediction-table columns evaluation reads (plus ``prob_<i>``): every
#: column :mod:`hepml_steps.predict` writes, nothing another writer may add
PREDICTION_COLUMNS = (EVENT_ID, SPLIT, LABEL, WEIGHT, SCORE, TRUTH_LLR, TARGET)


def _wanted(predictions: str, what: str, exclude=()) -> list[str]:
    """The columns of :func:`read_predictions` present in ``predictions``, less ``exclude``.

    Raises
    ------
    DataError
        A canonical column is missing or the file is unreadable.
    """
    names = columns_of(predictions)
    missing = [c for c in (EVENT_ID, SPLIT, WEIGHT, SCORE) if c not in names]  # label: when labelled
    if missing:
        raise DataError(f"{what}: missing column(s) {missing}")
    return [c for c in names if (c in PREDICTION_COLUMNS or c.startswith(PROB)) and c not in exclude]


def read_predictions(predictions: str, what: str, exclude=()):
    """A prediction table as one DataFrame: :data:`PREDICTION_COLUMNS` and ``prob_<i>`` only.

    ``split`` is read dictionary-encoded (a pandas categorical: one byte per
    event, not a string); the other columns as stored, scores widened to
    float64 (:func:`~hepml_steps.columns.widen_scores`). The index is the
    row number in the file.
    Memory holds the columns read once (each column's Arrow buffers are freed
    as it is converted).

    Parameters
    ----------
    predictions : str
        The prediction table (Parquet).
    what : str
        How error messages name it.
    exclude : iterable of str
        Columns not to read (those a caller does not use).

    Returns
    -------
    DataFrame of shape (n_events, n_columns)

    Raises
    ------
    DataError
        A canonical column is missing or the file is unreadable.
    """
    import pyarrow.parquet as pq

    wanted = _wanted(predictions, what, exclude)
    with culprit(predictions, context="cannot read as parquet"):
        table = pq.read_table(predictions, columns=wanted, read_dictionary=[SPLIT], pre_buffer=False)
        return widen_scores(table.to_pandas(split_blocks=True, self_destruct=True))


def split_part(pred, name: str):
    """The rows of split ``name`` of :func:`read_predictions`'s table: a row
    slice (no copy) when they are contiguous, as the predict step writes
    them; else the rows taken. The index keeps the file's row numbers."""
    rows = np.flatnonzero((pred[SPLIT] == name).to_numpy())  # a categorical: compared on its codes
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return pred.iloc[rows[0] : rows[-1] + 1]
    return pred.take(rows)


def split_rows(pred) -> dict:
    """Every split's rows of :func:`read_predictions`'s table (:func:`split_part`), in ``groupby`` order."""
    present = pred[SPLIT].cat.remove_unused_categories().cat.categories
    return {name: split_part(pred, name) for name in sorted(present, key=str)}


class SplitFrames(Mapping):
    """Split name -> its prediction rows (a DataFrame), each read at its first use.

    A task reads the test rows first and the training rows last (its train
    AUC, the overtraining test): the training split, the largest, is not held
    while the test figures are computed. ``n_rows`` gives a split's size
    without reading it; ``then`` maps a split to a function applied to its
    frame once read (the fitted events of a capped model's training rows).
    """

    def __init__(self, loaders: dict, n_rows: dict, then: dict | None = None):
        self._loaders, self._frames, self.n_rows, self._then = loaders, {}, n_rows, then or {}

    def __getitem__(self, name):
        if name not in self._frames:
            frame = self._loaders[name]()  # KeyError for a split that is not there
            self._frames[name] = self._then.get(name, lambda f: f)(frame)
        return self._frames[name]

    def __contains__(self, name):  # without reading it
        return name in self._loaders

    def __iter__(self):
        return iter(self._loaders)

    def __len__(self):
        return len(self._loaders)


def _by_split(predictions: str, what: str, unused: dict | None = None, then: dict | None = None) -> SplitFrames:
    """Prediction rows per split, in ``groupby`` order: the rows, columns and
    index of :func:`split_rows` on :func:`read_predictions`'s table, but each
    split read on its own at its first use (:class:`SplitFrames`), from the
    row groups holding its rows (its own buffers: no split holds another's
    columns, and a column not needed for a split is not read).

    ``unused`` maps a split to the columns not to read for it (e.g. the truth
    LLR of the training rows); ``then`` as for :class:`SplitFrames`.

    Raises
    ------
    DataError
        As :func:`read_predictions` (the file's columns are checked here, each
        split read later), or there are no test events.
    """
    wanted = _wanted(predictions, what)
    loaders, n_rows = {}, {}
    for name, rows in sorted(_split_rows_of(predictions).items(), key=lambda kv: str(kv[0])):
        n_rows[name] = len(rows)
        columns = [c for c in wanted if c not in (unused or {}).get(name, ())]
        loaders[name] = partial(_read_rows, predictions, what, rows, columns)
    if not n_rows.get("test"):
        raise DataError(f"{what}: no test events")
    return SplitFrames(loaders, n_rows, then)


def _split_rows_of(predictions: str, batch_size: int = 1 << 16) -> dict:
    """Split name -> its rows in a prediction table: a ``range`` when they are
    contiguous (as the predict step writes them), else the ascending row numbers.
    Reads the ``split`` column a batch at a time (dictionary-encoded): nothing
    per event is held for a contiguous split."""
    import pyarrow.parquet as pq

    found = {}  # name -> [first, last, count, row-number parts (None while contiguous)]
    at = 0
    with culprit(predictions, context="cannot read as parquet"):
        pf = pq.ParquetFile(predictions, read_dictionary=[SPLIT], pre_buffer=False)
        for batch in pf.iter_batches(batch_size=batch_size, columns=[SPLIT]):
            col = batch.column(0)
            indices = col.indices.to_numpy(zero_copy_only=False)
            for j, name in enumerate(col.dictionary.to_pylist()):
                pos = np.flatnonzero(indices == j) + at
                if not len(pos):
                    continue
                first, last, count, parts = found.setdefault(name, [int(pos[0]), int(pos[0]) - 1, 0, None])
                if parts is None and pos[-1] - pos[0] + 1 == len(pos) and pos[0] == last + 1:
                    found[name][1:3] = [int(pos[-1]), count + len(pos)]
                    continue
                if parts is None:
                    parts = found[name][3] = [np.arange(first, last + 1)]
                parts.append(pos)
                found[name][1:3] = [int(pos[-1]), count + len(pos)]
            at += len(indices)
    return {
        name: range(first, last + 1) if parts is None else np.concatenate(parts)
        for name, (first, last, _, parts) in found.items()
    }


def _read_rows(predictions: str, what: str, rows, columns: list[str]):
    """The rows ``rows`` (a range, or ascending row numbers) of a prediction
    table, columns ``columns``, read from the row groups holding them; the index
    is the row numbers, scores widened as by :func:`read_predictions`."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    with culprit(predictions, context="cannot read as parquet"):
        pf = pq.ParquetFile(predictions, read_dictionary=[SPLIT], pre_buffer=False)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        starts = np.concatenate(([0], np.cumsum(sizes)))
        first, last = int(rows[0]), int(rows[-1])
        groups = range(int(np.searchsorted(starts, first, "right")) - 1, int(np.searchsorted(starts, last, "right")))
        table = pf.read_row_groups(groups, columns=columns, use_pandas_metadata=False)
        offset = int(starts[groups[0]])
        if isinstance(rows, range):  # a slice of the row groups read
            table, index = table.slice(first - offset, len(rows)), pd.RangeIndex(first, last + 1)
        else:
            table, index = table.take(pa.array(rows - offset)), pd.Index(rows)
        part = widen_scores(table.to_pandas(split_blocks=True, self_destruct=True))
    del table
    part.index = index
    return part


def evaluate(
    predictions: str,
    out: str,
    model: str,
    task: str,
    threshold: float = 0.5,
    bkg_efficiencies=(0.01, 0.1, 0.3),
    extra: str | dict | None = None,
    features: str | None = None,
    ks_pvalue_min: float = 0.01,
    inference: str | dict | None = None,
    significance: str = "asimov",
    bkg_uncertainty: float = 0.0,
    test_fraction: float = 1.0,
) -> dict:
    """Compute the task's figures of merit on the test split; write ``out``.

    Parameters
    ----------
    predictions : str
        The model's prediction table (all three splits).
    out : str
        Where to write metrics.json.
    model, task : str
        The model's name and task.
    threshold : float
        Score threshold of the confusion-matrix figures.
    bkg_efficiencies : sequence of float
        Background efficiencies at which the signal efficiency is reported.
    extra : str or dict, optional
        The training record (family, timing, tuning, energy).
    features : str, optional
        The prepared test features (clustering).
    ks_pvalue_min : float
        Flag overtraining when a train-vs-test KS p-value is below this.
    inference : str or dict, optional
        The predict step's record (inference energy and throughput).
    significance : {"asimov", "s_over_sqrt_b", "s_over_sqrt_s_plus_b"}
        The figure of merit the optimal cut maximises.
    bkg_uncertainty : float
        Relative background uncertainty σ_b/B of that figure.
    test_fraction : float
        Fraction of the events in the test split (test weights are scaled by
        its inverse to full-sample expected yields).

    Returns
    -------
    dict
        The metrics.json document.

    Raises
    ------
    ConfigError
        An unknown task.
    DataError
        Missing columns or events the task's figures need.
    """
    kind = tasks.get(task)
    what = f"model '{model}' ({predictions})"
    rec = _records(extra, inference)
    # the truth LLR is judged on test only; event ids pick the fitted events of a
    # capped model's training rows and match test rows to their features
    capped = bool((rec.get("train_cap") or {}).get("applied"))
    by_split = _by_split(
        predictions,
        what,
        {"train": (TRUTH_LLR,) if capped else (TRUTH_LLR, EVENT_ID), "validation": (TRUTH_LLR, EVENT_ID)},
        # train figures and the overtraining test use the events the model was
        # fitted on: a capped model (kNN, SVM, ...) never saw most of the training split
        {"train": partial(fitted_events, record={**rec, "task": kind.name})},
    )
    n_events = dict(by_split.n_rows)
    judged = tasks.Judged(
        by_split,
        rec,
        what,
        threshold,
        [float(e) for e in bkg_efficiencies],
        ks_pvalue_min,
        features,
        significance,
        bkg_uncertainty,
        test_fraction,
    )
    fig = kind.figures(judged)
    m, overtraining = fig.metrics, fig.overtraining
    for k, v in (overtraining or {}).items():
        if k.startswith("ks_"):
            m[k] = v
    result = _clean(
        {
            "model": model,
            "task": kind.name,
            "family": rec.get("family"),
            "threshold": threshold,
            "n_events": n_events,
            "sum_weights_test": float(judged.test[WEIGHT].sum()),
            "metrics": m,
            "overtraining": overtraining,
            **fig.document,
            "extra": {k: rec[k] for k in EXTRA_KEYS if k in rec},
        }
    )
    write_json(out, result)
    if overtraining and overtraining.get("flagged"):
        log.warning("%s: possible overtraining: KS p-value below %g (train vs test scores)", model, ks_pvalue_min)
    log.info("%s: %s", model, headline(result))
    return result


HEADLINE = ("roc_auc", "bayes_auc", "z_max", "accuracy", "r2", "resolution_68", "silhouette", "adjusted_rand")


def headline(result: dict) -> str:
    """The figures that summarise ``result`` (evaluate's metrics.json) in one line, e.g. ``roc_auc 0.9712, z_max 3.41``."""
    m = result["metrics"]
    return ", ".join(f"{k} {m[k]:.4g}" for k in HEADLINE if isinstance(m.get(k), int | float))


def main(argv=None) -> int:
    from .io import release_freed_memory

    if argv is None:  # the step's own process (python -m), never a caller's: see io.release_freed_memory
        release_freed_memory(arrow_cpp=True)

    def build(p):
        p.add_argument("--predictions", required=True, help="the model's prediction table")
        p.add_argument("--out", required=True, help="metrics.json to write")
        p.add_argument("--model", required=True, help="the model's name")
        p.add_argument("--task", default=tasks.DEFAULT, help="the model's task")
        p.add_argument("--threshold", type=float, default=0.5, help="score threshold of the confusion matrix")
        p.add_argument("--bkg-efficiencies", default="0.01,0.1,0.3", help="comma-separated")
        p.add_argument("--extra", help="the model's training record (JSON)")
        p.add_argument("--features", help="prepared test features (clustering silhouette)")
        p.add_argument("--inference", help="the predict step's record (JSON)")
        p.add_argument(
            "--ks-pvalue-min",
            type=float,
            default=0.01,
            help="flag overtraining when a train-vs-test KS p-value is below this",
        )
        p.add_argument(
            "--significance",
            default="asimov",
            choices=("asimov", "s_over_sqrt_b", "s_over_sqrt_s_plus_b"),
            help="the figure of merit the optimal cut maximises",
        )
        p.add_argument(
            "--bkg-uncertainty", type=float, default=0.0, help="relative background uncertainty of the significance"
        )
        p.add_argument(
            "--test-fraction",
            type=float,
            default=1.0,
            help="fraction of the events in the test split (weights scaled by its inverse)",
        )

    return cli.run(
        build,
        lambda a: evaluate(
            a.predictions,
            a.out,
            a.model,
            a.task,
            a.threshold,
            [float(x) for x in a.bkg_efficiencies.split(",") if x.strip()],
            a.extra,
            a.features,
            a.ks_pvalue_min,
            a.inference,
            a.significance,
            a.bkg_uncertainty,
            a.test_fraction,
        ),
        argv,
        __doc__,
        summary=headline,
    )


if __name__ == "__main__":
    raise SystemExit(main())
