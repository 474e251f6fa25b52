"""The data boundary: a prepared split file becomes a small typed object.

Steps that fit or score a model (train, tune, predict, importance) read a
prepared split only through this module and get a :class:`Dataset`: the
features ``X`` (float32), the task's targets ``y``, event weights and the
weights of the fit, event ids and labels, and the record of a training cap.
No step parses a split itself or imports another step's internals.

Reading for a fit (:func:`read_fit`):

- the task's own rules first (:mod:`hepml_steps.tasks`): anomaly detection
  keeps background events only; a multiclass model's classes are the
  distinct target values of its (whole) training split;
- a training cap (``max_train_events``, or the family's) keeps the ``cap``
  events with the smallest hash of ``event_id``: deterministic, independent
  of the order of the events and of which other events are present; a
  warning is logged and the cap recorded;
- the features are the model's ``features`` (default: every feature column of
  the table), never its target; only they and the few columns of
  :func:`fit_columns` are read, and the float32 matrix is filled from Arrow one
  record batch at a time (no table of every column, no pandas copy of the features);
- events of a class absent from the training classes are left out (warning);
- the weights of the fit follow ``negative_weights`` and ``weighting``
  (:func:`fit_weights`); ``weights`` keep the signed event weights, which
  every figure of merit uses.

Reading for a fit beyond memory (:func:`stream_fit`): a
:class:`ParquetSource` (a :class:`FitSource`) hands a streaming family's
``fit_stream`` the same events, targets and fit weights as :func:`read_fit`
in chunks of Parquet record batches, reading only the needed columns; the
global sums the weighting needs come from a first pass over the weight,
label and target columns. :func:`streams` says when the train step streams
(``streams_training`` families above ``stream_above_events``) and
:func:`fit_cap` which cap a fit in memory gets (``max_train_events``, else the
family's, bounded by ``max_in_memory_events``). Under a cap :func:`read_fit`
reads the key columns of every event and then only the kept rows.

Reading for scoring (:func:`read_scoring`, or :func:`iter_scoring` batch by
batch) keeps every event, reads only the columns scoring needs
(:func:`scoring_columns`) and uses the trained model's features, classes and
target. Targets are read in physical units: the features step keeps an
unstandardised copy of every model's target (``target:<name>``), so nothing
joins a target back from the raw split.

Missing values: the features step keeps NaN in the prepared split and puts
its fill values (train medians, in prepared units) in the split's Parquet
metadata (:mod:`hepml_steps.features`). Both readers fill NaN with them for a
family that does not declare ``handles_missing``
(:class:`hepml_steps.families.base.Family`); XGBoost and hist_gbm get the NaN.
The rest of that metadata (identifier-like columns) is ``Dataset.prepared``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from . import tasks
from .columns import EVENT_ID, LABEL, PROCESS, TARGET, TRUTH_LLR, WEIGHT, is_feature, target_copy
from .errors import ConfigError, DataError, culprit
from .io import columns_of, parquet_file, read_batches, read_matrices, read_parquet, table_attrs

log = logging.getLogger("hepml.dataset")

WEIGHTINGS = ("balanced", "physical", "none")
#: How the fit treats negative event weights: ``ignore`` (weight 0, TMVA's
#: IgnoreNegWeightsInTraining, the default), ``keep`` (families declaring
#: ``accepts_negative_weights`` only), ``abs`` (|w|).
NEGATIVE_WEIGHTS = ("ignore", "keep", "abs")
CAP_SALT = 0x5EED


@dataclass(frozen=True)
class Dataset:
    """One prepared split as a model sees it.

    Attributes
    ----------
    X : ndarray of shape (n_events, n_features), float32
        The features, in the order of ``columns``.
    y : ndarray of shape (n_events,) or None
        The task's targets (:meth:`hepml_steps.tasks.Task.targets`): 0/1
        labels, the regression target in its physical units (float64), the
        class index (int64; −1 for a class not among ``classes``), or None.
    weights : ndarray of shape (n_events,), float64, or None
        The event weights as stored; None in a :meth:`fit_view`.
    fit_weights : ndarray of shape (n_events,), float64, or None
        The weights of the fit (``weighting``); None when read for scoring.
    event_ids : ndarray of shape (n_events,), int64, or None
        None in a :meth:`fit_view`.
    labels : ndarray of shape (n_events,) or None
        1 signal, 0 background; None when the inputs are unlabelled (the
        table has no ``label`` column: :class:`hepml_steps.ingest.Labels`)
        and in a :meth:`fit_view`.
    columns : list of str
        The feature names.
    classes : list or None
        A multiclass model's classes: class index i is the target value ``classes[i]``.
    cap : dict
        The training cap: ``cap``, ``applied``, ``n_before``, ``n_after``.
    truth_llr : ndarray of shape (n_events,) or None
        The exact log-likelihood ratio (toy data only).
    prepared : dict or None
        What the features step says about the split's columns (``fill``,
        ``identifier_like``); None for a table it did not write.
    """

    X: np.ndarray
    y: np.ndarray | None
    weights: np.ndarray | None
    fit_weights: np.ndarray | None
    event_ids: np.ndarray | None
    labels: np.ndarray | None
    columns: list
    classes: list | None = None
    cap: dict | None = None
    truth_llr: np.ndarray | None = None
    prepared: dict | None = None

    def __len__(self) -> int:
        return len(self.X)

    def take(self, index) -> Dataset:
        """The events at positions ``index`` (an integer array), in that order."""

        def pick(a):
            return None if a is None else a[index]

        return replace(
            self,
            X=self.X[index],
            y=pick(self.y),
            weights=pick(self.weights),
            fit_weights=pick(self.fit_weights),
            event_ids=pick(self.event_ids),
            labels=pick(self.labels),
            truth_llr=pick(self.truth_llr),
        )

    def fit_view(self) -> Dataset:
        """The same events with only what a fit reads (``X``, ``y``,
        ``fit_weights``, ``columns``, ``classes``, ``cap``): the stored weights,
        event ids, labels and truth LLR (32 bytes per event) are let go, so a
        fit in memory holds its matrix and targets, not the split's other
        columns (19 MiB at 600,000 training events)."""
        return replace(self, weights=None, event_ids=None, labels=None, truth_llr=None)


def signed_policy(w, negative: str) -> np.ndarray:
    """The event weights a fit may see under the ``negative_weights`` policy.

    ``ignore``: negative weights become 0 (TMVA's IgnoreNegWeightsInTraining);
    ``abs``: |w|; ``keep``: as they are.

    Raises
    ------
    ConfigError
        An unknown policy.
    """
    w = np.asarray(w, dtype=np.float64)
    if negative == "ignore":
        return np.where(w < 0, 0.0, w)
    if negative == "abs":
        return np.abs(w)
    if negative == "keep":
        return w
    raise ConfigError(f"training negative_weights '{negative}' unknown; use one of {NEGATIVE_WEIGHTS}")


def fit_weights(w, y, weighting: str, task: str, negative: str = "ignore") -> np.ndarray:
    """Event weights as the fit uses them.

    First the ``negative`` policy (:func:`signed_policy`), then ``weighting``:

    - ``balanced``: for tasks with classes (classification, multiclass) each
      class's weights are scaled so every class carries the same total,
      keeping relative weights within a class (TMVA's NormMode=EqualNumEvents,
      but weighted); for other tasks as ``physical``;
    - ``physical``: the event weights, rescaled to mean 1 (class ratios kept);
    - ``none``: every event counts once (0 for an ignored negative weight).

    In every case the weights have mean 1 over the events (unless an ignored
    event is left at 0), the scale that weight-unit hyper-parameters
    (``min_child_weight``, ``C``) are written for. A family whose parameters
    bound a *curvature* rather than a weight (XGBoost's ``min_child_weight``
    bounds the hessian, ~w·p(1−p)) rescales further in its ``fit``.

    Parameters
    ----------
    w : ndarray of shape (n_events,)
        Event weights (signed).
    y : ndarray of shape (n_events,) or None
        The task's targets.
    weighting : str
        One of :data:`WEIGHTINGS`.
    task : str
        The model's task.
    negative : str, default "ignore"
        One of :data:`NEGATIVE_WEIGHTS`.

    Returns
    -------
    ndarray of shape (n_events,), float64

    Raises
    ------
    DataError
        A class (or all events) with non-positive total weight.
    ConfigError
        An unknown ``weighting`` or ``negative``.
    """
    w = signed_policy(w, negative)
    if weighting == "none":
        return np.where(w == 0, 0.0, 1.0) if negative == "ignore" else np.ones_like(w)
    labels = tasks.get(task).balance_classes(y) if weighting == "balanced" else None
    if labels is not None:
        return w * _balance_factors(w, y, labels, negative)[np.asarray(y, dtype=np.intp)]
    if weighting in ("balanced", "physical"):
        total = w.sum()
        if total <= 0:
            raise DataError(f"events have non-positive total weight {total:g} (negative_weights: {negative})")
        return w * len(w) / total
    raise ConfigError(f"training weighting '{weighting}' unknown; use one of {WEIGHTINGS}")


def select_features(df, wanted, target=None, prepared: dict | None = None) -> list[str]:
    """The feature columns of a model: ``wanted``, or every feature column of ``df``; never
    ``target``, nor the columns the features step made from it (``prepared``, the prepared
    table's ``attrs["hepml"]``: a class-name target's one-hot columns, its missing indicator).

    ``df`` is a table (its ``columns``) or its column names, in file order
    (:func:`hepml_steps.io.columns_of`).

    Raises
    ------
    ConfigError
        A wanted column is not a feature column of ``df``.
    """
    available = [c for c in getattr(df, "columns", df) if is_feature(c)]
    if wanted:
        missing = [c for c in wanted if c not in available]
        if missing:
            raise ConfigError(f"model features {missing} are not prepared feature columns (available: {available})")
        cols = list(wanted)
    else:
        cols = available
    if target is not None:  # never learn a target from itself
        own = {target, *((prepared or {}).get("derived_from") or {}).get(target, [])}
        cols = [c for c in cols if c not in own]
    return cols


def cap_index(event_ids, cap: int) -> np.ndarray:
    """Positions (sorted, int) of the events a training cap keeps: the ``cap``
    smallest hashes of ``event_id`` (independent of order and of the other events' presence)."""
    from .split import uniform_from_id

    u = uniform_from_id(np.asarray(event_ids), CAP_SALT)
    if cap >= len(u):
        return np.arange(len(u))
    return np.sort(np.argpartition(u, cap - 1)[:cap])


def cap_events(df, cap: int | None, what: str):
    """Deterministic subsample of at most ``cap`` events of ``df``; returns (df, cap record)."""
    n = len(df)
    if not cap or n <= cap:
        return df, {"cap": cap, "applied": False, "n_before": n, "n_after": n}
    keep = cap_index(df[EVENT_ID].to_numpy(), cap)
    log.warning(
        "%s: training sample capped at %d of %d events (max_train_events); raise the cap in config to use more",
        what,
        cap,
        n,
    )
    return df.iloc[keep].reset_index(drop=True), {"cap": cap, "applied": True, "n_before": n, "n_after": cap}


def fitted_events(train, record: dict):
    """The rows of ``train`` (training-split predictions) the model was fitted on.

    With a training cap (``train_cap`` in the training ``record``) that is the
    same deterministic subsample the training step took."""
    cap = record.get("train_cap") or {}
    if not cap.get("applied"):
        return train
    pool = _task_events(train, tasks.of(record))
    return pool.iloc[cap_index(pool[EVENT_ID].to_numpy(), int(cap["cap"]))]


def _task_events(df, task, what: str = "model"):
    """The events a model of ``task`` is fitted on: background only for anomaly detection.

    Raises
    ------
    DataError
        A background-only task on unlabelled events.
    """
    if not task.background_only:
        return df
    if LABEL not in df.columns:
        raise DataError(f"{what}: task '{task}' trains on background events, but the events are unlabelled")
    return df[df[LABEL] == 0]


def read_fit(
    path: str, spec: dict, what: str, cap: int | None = None, classes: list | None = None, warn_cap: bool = True
) -> Dataset:
    """Read a training or validation split for fitting the model ``spec``.

    Parameters
    ----------
    path : str
        A prepared split (Parquet).
    spec : dict
        The model's config entry (``task``, ``target``, ``features``, ``weighting``,
        ``negative_weights``).
    what : str
        How messages name the model (and split).
    cap : int, optional
        The training cap (training split only).
    classes : list, optional
        The training classes (multiclass; learned from ``path`` when None).
    warn_cap : bool, default True
        A training cap: log a warning when it applies and refuse one that lost
        a whole class. False for a deliberate sample (a streamed fit's checks).

    Returns
    -------
    Dataset
        With ``fit_weights`` and ``cap`` set. Only the columns the fit needs are
        read (the model's features and the columns of :func:`fit_columns`); the
        feature matrix is built from Arrow one record batch at a time, so memory
        holds ``X``, the few other columns and one batch. Under a cap only the
        key columns of every event and the kept rows are read, so memory follows
        the cap.

    Raises
    ------
    DataError
        No (background) events, unusable targets, a class lost to the cap.
    ConfigError
        Missing ``target`` or features, unknown ``weighting``.
    """
    task = tasks.of(spec)
    target = spec.get("target")
    pf = parquet_file(path)
    names = columns_of(path)
    others = fit_columns(names, target)
    if cap and pf.metadata.num_rows > cap:  # read the capped events only: the cap also bounds memory
        df, rows, classes, cap_rec = _read_capped(pf, path, names, others, task, target, what, cap, classes, warn_cap)
    else:
        df = _read_rows(pf, None, others, path)
        if classes is None:
            classes = task.learn_classes(df, target, what)
        rows = _task_positions(df, task, path, what)
        df = (df if len(rows) == len(df) else df.iloc[rows]).reset_index(drop=True)
        cap_rec = {"cap": cap, "applied": False, "n_before": len(df), "n_after": len(df)}  # n <= cap here
    if df.empty:
        raise DataError(f"{what}: {path} has no events")
    prepared = table_attrs(path).get(_attrs_key())
    cols = select_features(names, spec.get("features"), target, prepared)
    y = task.targets(df, target, what, classes)
    task.check_fit_targets(y, what)
    if classes is not None:
        rows = rows[y >= 0]
        df, y = _known_classes(df, y, classes, cap_rec, target, what, refuse_lost=warn_cap)
    w = df[WEIGHT].to_numpy(dtype=np.float64)
    X = _rows_matrix(pf, rows, cols, path)
    if not handles_missing(spec.get("family")):
        _log_filled(what, _fill_in_place(X, cols, (prepared or {}).get("fill") or {}), spec.get("family"))
    return Dataset(
        X=X,
        y=y,
        weights=w,
        fit_weights=fit_weights(
            w, y, spec.get("weighting", "balanced"), task.name, spec.get("negative_weights", "ignore")
        ),
        event_ids=df[EVENT_ID].to_numpy(),
        labels=_optional(df, LABEL),
        columns=cols,
        classes=classes,
        cap=cap_rec,
        truth_llr=_optional(df, TRUTH_LLR),
        prepared=prepared,
    )


def fit_columns(names: list[str], target: str | None) -> list[str]:
    """The columns of a prepared split (``names``, in file order) besides the
    features that a fit reads: those of :func:`scoring_columns` (event id, label,
    weight, Bayes score, the task's target columns)."""
    return scoring_columns(names, {"features": [], "target": target})


def parquet_rows(path: str) -> int:
    """The number of events of a Parquet table, from its footer (nothing else is read).

    Raises
    ------
    DataError
        The file is missing or not Parquet (naming it).
    """
    return parquet_file(path).metadata.num_rows


def _key_columns(names, task, target: str | None, classes: list | None) -> list[str]:
    """The columns needed to choose a fit's events: event id, label (background-only
    tasks) and the target copies that multiclass classes are learned from."""
    from .tasks import target_copy

    cols = [EVENT_ID]
    if task.background_only and LABEL in names:
        cols.append(LABEL)
    if target and classes is None:
        cols += [c for c in (target_copy(target), target) if c in names and c not in cols]
    return cols


def _task_positions(key, task, path: str, what: str) -> np.ndarray:
    """Row positions (int64, ascending) of the events a model of ``task`` is fitted on."""
    pos = np.arange(len(key), dtype=np.int64)
    if task.background_only:
        pos = pos[_task_events(key.reset_index(drop=True), task, what).index.to_numpy()]  # labels = positions
        if len(pos) == 0:
            raise DataError(f"{what}: anomaly detection trains on background, but {path} has no background events")
    return pos


def _read_rows(pf, positions: np.ndarray | None, columns: list, path: str):
    """The columns ``columns`` of the rows at ``positions`` (ascending; None: every
    row) of a Parquet file, as a DataFrame indexed 0..n-1.

    Read one row group at a time (a group without a kept row is not read), so
    memory holds the kept rows plus one row group; the Arrow columns are then
    released one by one as pandas takes them over (``self_destruct``).

    Raises
    ------
    DataError
        A row group cannot be read (naming ``path``).
    """
    import pyarrow as pa

    parts, start = [], 0
    for rg in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        lo, hi = (0, n) if positions is None else np.searchsorted(positions, [start, start + n])
        if hi > lo:
            with culprit(path, context="cannot read as parquet"):
                group = pf.read_row_group(rg, columns=columns, use_threads=False)
            parts.append(group if hi - lo == n else group.take(pa.array(positions[lo:hi] - start)))
            del group
        start += n
    table = pa.concat_tables(parts) if parts else pf.schema_arrow.empty_table().select(columns)
    del parts  # the table is the columns' only holder: self_destruct can free them
    return table.to_pandas(split_blocks=True, self_destruct=True).reset_index(drop=True)


def _read_capped(pf, path: str, names, columns, task, target, what: str, cap: int, classes, warn: bool = True):
    """:func:`read_fit`'s events under a training cap, without reading the others:
    the key columns of every event first (:func:`_key_columns`), then only
    ``columns`` of the capped rows. Returns (frame, row positions, classes, cap
    record), as the uncapped path has them."""
    key = read_parquet(path, columns=_key_columns(names, task, target, classes))
    if classes is None:
        classes = task.learn_classes(key, target, what)
    pool = _task_positions(key, task, path, what)
    n = len(pool)
    rec = {"cap": cap, "applied": n > cap, "n_before": n, "n_after": min(n, cap)}
    if n > cap:
        pool = pool[cap_index(key[EVENT_ID].to_numpy()[pool], cap)]
    if n > cap and warn:
        log.warning(
            "%s: training sample capped at %d of %d events (max_train_events); raise the cap in config to use more",
            what,
            cap,
            n,
        )
    del key
    return _read_rows(pf, pool, columns, path), pool, classes, rec


def fit_cap(spec: dict, family_cls, streaming: bool) -> int | None:
    """The training cap of a model (``None``: no cap).

    The model's own ``max_train_events`` wins (an explicit ``null``: no cap of
    the family's); else the family's ``max_train_events``; either bounded, for a
    fit in memory (a family that does not stream, or a streaming family below
    ``stream_above_events``), by ``max_in_memory_events``
    (:data:`MAX_IN_MEMORY_EVENTS` when the spec does not say) unless the model
    set its own cap: above it a deterministic subsample is recorded instead of
    running out of memory.
    """
    if spec.get("max_train_events") is not None:
        return int(spec["max_train_events"])
    caps = [None if "max_train_events" in spec else family_cls.max_train_events]
    if not streaming:
        caps.append(spec.get("max_in_memory_events", MAX_IN_MEMORY_EVENTS))
    caps = [int(c) for c in caps if c is not None]
    return min(caps) if caps else None


#: Default ``training.max_in_memory_events``: 20 million events x 20 float32 features is 1.6 GB.
MAX_IN_MEMORY_EVENTS = 20_000_000
#: Default ``training.stream_above_events``: streaming families train from batches above it.
STREAM_ABOVE_EVENTS = 500_000
#: Default number of events per batch of a :class:`ParquetSource`.
BATCH_EVENTS = 262_144


def streams(spec: dict, family_cls, path: str) -> bool:
    """Whether the model ``spec`` trains from batches (:class:`ParquetSource`): its
    family declares ``streams_training``, the training split holds more than
    ``stream_above_events`` events (:data:`STREAM_ABOVE_EVENTS` when not set; 0:
    always), and no training cap of the model or family applies."""
    if not getattr(family_cls, "streams_training", False):
        return False
    n = parquet_rows(path)
    cap = fit_cap(spec, family_cls, streaming=True)
    above = spec.get("stream_above_events", STREAM_ABOVE_EVENTS)
    return n > above and (cap is None or n <= cap)


class FitSource(ABC):
    """Training events handed to a streaming family's ``fit_stream`` in batches.

    A source is read as many times as the fit needs (one pass per epoch, two
    for XGBoost's quantile sketch); every pass gives the same events with the
    same fit weights (:func:`fit_weights`, computed with the global sums of a
    first pass over the weight and target columns only).

    Attributes
    ----------
    n_events : int
        Events a pass yields.
    n_features : int
    columns : list of str
        The feature names, in the order of the columns of ``X``.
    class_weight_sums : dict or None
        Classification and multiclass: class value (of ``y``) -> sum of the fit weights.
    sum_weights : float
        Sum of the signed event weights as stored (the training record's ``sum_weights_train``).
    """

    n_events: int
    n_features: int
    columns: list
    class_weight_sums: dict | None = None
    sum_weights: float = 0.0

    def __len__(self) -> int:
        return self.n_events

    @property
    def n_chunks(self) -> int:
        """How many chunks :meth:`chunks` yields per pass."""
        return len(self._chunk_bounds())

    @abstractmethod
    def _chunk_bounds(self) -> list:
        """One entry per chunk, in the file's order; :meth:`_read_chunk` reads one."""

    @abstractmethod
    def _read_chunk(self, bound) -> tuple:
        """(X, y, w) of one chunk."""

    def chunks(self, rng=None):
        """Yield the events as ``(X, y, w)`` chunks.

        Parameters
        ----------
        rng : numpy.random.Generator, optional
            When given, the chunks come in an order drawn from it (the events
            within a chunk stay in file order); else in file order.

        Yields
        ------
        X : ndarray of shape (n_chunk, n_features), float32
        y : ndarray of shape (n_chunk,) or None
            The task's targets, as :attr:`Dataset.y`.
        w : ndarray of shape (n_chunk,), float64
            The fit weights, as :attr:`Dataset.fit_weights`.
        """
        bounds = self._chunk_bounds()
        order = range(len(bounds)) if rng is None else rng.permutation(len(bounds))
        for i in order:
            X, y, w = self._read_chunk(bounds[i])
            if len(X):
                yield X, y, w

    def shuffled_batches(self, batch_size: int, buffer_events: int, rng, prepare=None):
        """Mini-batches of a shuffled pass: chunks in a random order fill a buffer of
        at most ``buffer_events`` events, which is shuffled and cut into
        ``batch_size`` batches (its last partial batch carried into the next fill).

        Deterministic for a given state of ``rng``. Memory: the buffer (one array per
        column of ``buffer_events`` rows, allocated at the first chunk and reused by
        every fill: the chunks are copied in and let go, so they never pile up on the
        heap) and one chunk.

        Parameters
        ----------
        prepare : callable, optional
            ``prepare(X, y, w) -> (a, b, c)``, arrays of the chunk's length (``b``
            may be None), applied to each chunk before it enters the buffer: per-event
            conversions done once per chunk, not once per batch (the streamed MLP's
            float32 targets and weights: 60 us a batch, 6 % of a 15-feature epoch).

        Yields
        ------
        (X, y, w) : as :meth:`chunks` (or ``prepare`` gives them), ``len(X) <= batch_size``;
            copies, not views of the buffer.
        """
        buffer_events = max(int(buffer_events), int(batch_size))
        buf: tuple | None = None  # (X, y or None, w), buffer_events rows each
        n_held = 0

        def drain(final: bool):
            nonlocal n_held
            X, y, w = (None if a is None else a[:n_held] for a in buf)
            order = rng.permutation(n_held)
            stop = n_held if final else n_held - n_held % batch_size
            for s in range(0, stop, batch_size):
                idx = order[s : min(s + batch_size, stop)]
                yield X[idx], (None if y is None else y[idx]), w[idx]
            rest = order[stop:]  # the next fill starts with them, in this order
            for a in (X, y, w):
                if a is not None and len(rest):
                    a[: len(rest)] = a[rest]
            n_held = len(rest)

        for chunk in self.chunks(rng):
            if prepare is not None:
                chunk = prepare(*chunk)
            if buf is None:
                buf = tuple(None if a is None else np.empty((buffer_events, *a.shape[1:]), a.dtype) for a in chunk)
            start, n = 0, len(chunk[0])
            while start < n:
                take = min(n - start, buffer_events - n_held)
                for b, a in zip(buf, chunk):
                    if b is not None:
                        b[n_held : n_held + take] = a[start : start + take]
                n_held += take
                start += take
                if n_held >= buffer_events:
                    yield from drain(final=False)
            del chunk  # not held while the next chunk is read
        if n_held:
            yield from drain(final=True)


class ArraySource(FitSource):
    """A :class:`FitSource` over arrays already in memory (tests, the conformance kit).

    Parameters
    ----------
    X : ndarray of shape (n_events, n_features)
    y : ndarray of shape (n_events,) or None
    w : ndarray of shape (n_events,), optional
        Fit weights (default 1).
    chunk_events : int, default 65536
    columns : list of str, optional
    task : str, optional
        Sets ``class_weight_sums`` for ``classification`` and ``multiclass``.
    """

    def __init__(self, X, y=None, w=None, chunk_events: int = 65536, columns=None, task: str | None = None):
        self.X = np.asarray(X, dtype=np.float32)
        self.y = None if y is None else np.asarray(y)
        self.w = np.ones(len(self.X)) if w is None else np.asarray(w, dtype=np.float64)
        self.n_events, self.n_features = self.X.shape
        self.columns = list(columns) if columns is not None else [f"f{i}" for i in range(self.n_features)]
        self.chunk_events = max(1, int(chunk_events))
        self.sum_weights = float(self.w.sum())
        if task in ("classification", "multiclass") and self.y is not None:
            self.class_weight_sums = {c.item(): float(self.w[self.y == c].sum()) for c in np.unique(self.y)}

    def _chunk_bounds(self):
        return [(s, min(s + self.chunk_events, self.n_events)) for s in range(0, self.n_events, self.chunk_events)]

    def _read_chunk(self, bound):
        s, e = bound
        return self.X[s:e], None if self.y is None else self.y[s:e], self.w[s:e]


class ParquetSource(FitSource):
    """A training split read for a fit in batches (:func:`stream_fit` builds it).

    Each chunk is one Parquet record batch of at most ``batch_events`` rows,
    reading only the feature, weight, label and target columns, with the rules
    of :func:`read_fit`: the task's events (background only for anomaly
    detection), events of unknown classes left out, NaN filled for a family
    that does not handle missing values, fit weights by ``weighting`` and
    ``negative_weights`` with the global sums of the first pass. No training
    cap: a capped model is read in memory (:func:`read_fit`).
    """

    def __init__(self, path, spec, what, task, classes, columns, read_columns, fill, batch_events, scale):
        self.path, self.spec, self.what, self.task = path, spec, what, task
        self.classes, self.columns, self.read_columns = classes, columns, read_columns
        self.fill, self.batch_events, self._scale = fill, int(batch_events), scale
        self.n_features = len(columns)
        self._pf = parquet_file(path)
        self._group = None

    def _chunk_bounds(self):
        bounds, md = [], self._pf.metadata
        for rg in range(md.num_row_groups):
            n = md.row_group(rg).num_rows
            bounds += [(rg, s, min(s + self.batch_events, n)) for s in range(0, n, self.batch_events)]
        return bounds

    def _read_chunk(self, bound):
        rg, s, e = bound
        if self._group is None or self._group[0] != rg:  # a row group cut into chunks is read once
            self._group = None  # release the previous one first
            self._group = (rg, self._pf.read_row_group(rg, columns=self.read_columns, use_threads=False))
        table = self._group[1]
        if e == table.num_rows:
            self._group = None  # the group's last chunk: keep nothing between groups
        return self._prepare(table.slice(s, e - s))

    def _prepare(self, table):
        """(X, y, w) of an Arrow table with the rules of :func:`read_fit`: X built column by
        column in C order, the targets by :meth:`Task.batch_targets` (no pandas copy for a
        task that reads them from Arrow), the events a task does not fit on left out."""
        keys = table.select([c for c in self.read_columns if c not in set(self.columns)])
        keep = None  # row positions kept (None: all)
        if self.task.background_only:  # the selection of read_fit (_task_events), through pandas
            keep = _task_events(keys.to_pandas().reset_index(drop=True), self.task, self.what).index.to_numpy()
            keys = keys.take(keep)
        y = self.task.batch_targets(keys, self.spec.get("target"), self.what, self.classes)
        if self.classes is not None and len(y) and (y < 0).any():
            known = np.flatnonzero(y >= 0)
            keep, keys, y = (known if keep is None else keep[known]), keys.take(known), y[known]
        w = self._scale(keys.column(WEIGHT).to_numpy(zero_copy_only=False).astype(np.float64, copy=False), y)
        X = _arrow_matrix(table if keep is None else table.select(self.columns).take(keep), self.columns)
        return _fill(X, self.columns, self.fill), y, w


def stream_fit(
    path: str, spec: dict, what: str, batch_events: int = BATCH_EVENTS, classes: list | None = None
) -> ParquetSource:
    """A training split as a :class:`ParquetSource`: :func:`read_fit` for data larger than memory.

    A first pass reads the weight, label and target columns only, to learn the
    classes (multiclass), count the events and sum the weights that
    ``weighting`` needs; the fit weights of a batch are then those
    :func:`fit_weights` gives the whole split (equal up to the order of
    floating-point summation).

    Parameters
    ----------
    path : str
        A prepared training split (Parquet).
    spec : dict
        The model's config entry, as for :func:`read_fit`.
    what : str
        How messages name the model.
    batch_events : int, default :data:`BATCH_EVENTS`
        Events per chunk at most (a Parquet row group is cut into chunks).
    classes : list, optional
        Multiclass: the training split's classes (a validation split is read
        with them, as :func:`read_fit` reads it); None: learnt from ``path``.

    Raises
    ------
    DataError
        No (background) events, unusable targets.
    ConfigError
        Missing ``target`` or features, unknown ``weighting`` or ``negative_weights``.
    """
    task = tasks.of(spec)
    target = spec.get("target")
    weighting, negative = spec.get("weighting", "balanced"), spec.get("negative_weights", "ignore")
    pf = parquet_file(path)
    names = pf.schema_arrow.names
    prepared = table_attrs(path).get(_attrs_key())  # the features step's fill values, read explicitly
    columns = select_features(columns_of(path), spec.get("features"), target, prepared)
    key_cols = [c for c in _key_columns(names, task, target, None) if c != EVENT_ID]
    key_cols += [c for c in (WEIGHT, LABEL) if c in names and c not in key_cols]
    first = read_parquet(path, columns=key_cols)
    given = classes is not None
    if not given:
        classes = task.learn_classes(first, target, what)
    first = _task_events(first, task, what)
    if first.empty:
        what_events = "background events" if task.background_only else "events"
        raise DataError(f"{what}: {path} has no {what_events}")
    y = task.targets(first, target, what, classes)
    if given and y is not None and (y < 0).any():  # as read_fit (_known_classes) warns
        log.warning("%s: %d events of a class absent from training are left out", what, int((y < 0).sum()))
    if classes is not None:
        first, y = first[y >= 0], y[y >= 0]
    task.check_fit_targets(y, what)
    w = signed_policy(first[WEIGHT].to_numpy(dtype=np.float64), negative)
    scale = _weight_scale(w, y, weighting, task.name, negative)
    fw = scale(first[WEIGHT].to_numpy(dtype=np.float64), y)
    labels = task.balance_classes(y) if y is not None else None
    source = ParquetSource(
        path,
        spec,
        what,
        task,
        classes,
        columns,
        [c for c in names if c in set(columns) | set(key_cols)],
        None if handles_missing(spec.get("family")) else (prepared or {}).get("fill") or {},
        batch_events,
        scale,
    )
    source.n_events = len(first)
    source.sum_weights = float(first[WEIGHT].to_numpy(dtype=np.float64).sum())
    if labels is not None:
        source.class_weight_sums = {c.item(): float(fw[y == c].sum()) for c in np.unique(y)}
    source.prepared = prepared
    return source


def _weight_scale(w, y, weighting: str, task: str, negative: str):
    """``f(w_batch, y_batch)``: :func:`fit_weights` of a batch with the totals of the
    whole split (``w`` after the negative policy, ``y`` its targets)."""
    if weighting == "none":
        return lambda wb, yb: fit_weights(wb, yb, "none", task, negative)
    n = len(w)
    labels = tasks.get(task).balance_classes(y) if weighting == "balanced" else None
    if labels is not None:
        factors = _balance_factors(w, y, labels, negative)
        return lambda wb, yb: signed_policy(wb, negative) * factors[np.asarray(yb, dtype=np.intp)]
    if weighting in ("balanced", "physical"):
        total = w.sum()
        if total <= 0:
            raise DataError(f"events have non-positive total weight {total:g} (negative_weights: {negative})")
        return lambda wb, yb: signed_policy(wb, negative) * n / total
    raise ConfigError(f"training weighting '{weighting}' unknown; use one of {WEIGHTINGS}")


def _balance_factors(w, y, labels, negative: str) -> np.ndarray:
    """The factor of ``balanced`` weighting per class index: ``n / (K · W_c)`` for each of
    the K classes ``labels`` (non-negative integers), W_c the class's total weight in ``w``
    (after the negative policy) and n = len(w), so every class sums to n / K; NaN for an
    index that is not a class.

    Raises
    ------
    DataError
        A class with non-positive total weight, or targets ``y`` other than the classes.
    """
    labels = [int(c) for c in labels]
    outside = int(np.count_nonzero(~np.isin(y, labels)))
    if outside:
        raise DataError(f"{outside} events have a class other than {labels}; cannot balance")
    factors = np.full(max(labels, default=-1) + 1, np.nan)
    for cls in labels:
        total = w[y == cls].sum()
        if total <= 0:
            raise DataError(
                f"class {cls} has non-positive total weight {total:g} (negative_weights: {negative}); cannot balance"
            )
        factors[cls] = len(w) / len(labels) / total
    return factors


def _known_classes(df, y, classes: list, cap_rec: dict, target: str, what: str, refuse_lost: bool = True):
    """Leave out events of a class the model does not know (index −1); refuse a
    training cap that lost a whole class (``refuse_lost``; not for a check sample
    of a streamed fit, which itself sees every class)."""
    if (y < 0).any():
        log.warning("%s: %d events of a class absent from training are left out", what, int((y < 0).sum()))
        df, y = df[y >= 0].reset_index(drop=True), y[y >= 0]
    if refuse_lost and cap_rec["applied"] and len(df) and len(np.unique(y)) < len(classes):
        absent = [c for i, c in enumerate(classes) if i not in set(y.tolist())]
        raise DataError(
            f"{what}: class(es) {absent} of '{target}' have no events left after "
            f"the training cap of {cap_rec['cap']} events; raise max_train_events"
        )
    return df, y


def read_scoring(path: str, meta: dict, what: str | None = None) -> Dataset:
    """Read every event of a prepared split for scoring with a trained model.

    Parameters
    ----------
    path : str
        A prepared split (Parquet).
    meta : dict
        The model's metadata (``hepml_model.json``): ``model``, ``task``,
        ``features``, ``target``, ``classes``.
    what : str, optional
        How messages name the model (default ``model '<name>'``).

    Returns
    -------
    Dataset
        Every event; ``fit_weights`` is None.

    Raises
    ------
    DataError
        A feature column of the model is missing, or the target is unusable.
    """
    what = what or f"model '{meta['model']}'"
    task = tasks.get(meta["task"])
    names = _scoring_names(path, meta["features"], what)
    df = read_parquet(path, columns=scoring_columns(names, meta))  # only what scoring needs
    classes = meta.get("classes")
    return Dataset(
        X=_features(df, meta["features"], meta.get("family"), what),
        y=task.targets(df, meta.get("target"), what, classes),
        weights=df[WEIGHT].to_numpy(),
        fit_weights=None,
        event_ids=df[EVENT_ID].to_numpy(),
        labels=_optional(df, LABEL),
        columns=list(meta["features"]),
        classes=classes,
        truth_llr=_optional(df, TRUTH_LLR),
        prepared=_prepared(df),
    )


def _scoring_names(path: str, features: list, what: str) -> list[str]:
    """The columns of the prepared split ``path``; DataError naming the model's feature columns it lacks."""
    names = columns_of(path)
    missing = [c for c in features if c not in names]
    if missing:
        raise DataError(f"{what}: feature column(s) {missing} missing from {path}")
    return names


def scoring_columns(names: list[str], meta: dict) -> list[str]:
    """The columns of a prepared split (``names``, in file order) that scoring with
    the model ``meta`` reads: its features, the event id, label, weight and
    Bayes score, and its target (the ``target:<name>`` copy or the column)."""
    target = meta.get("target")
    wanted = set(meta["features"]) | {EVENT_ID, LABEL, WEIGHT, TRUTH_LLR, TARGET, PROCESS}
    if target:
        wanted |= {target, target_copy(target)}
    return [c for c in names if c in wanted]


def iter_scoring(
    path: str, meta: dict, batch_size: int, what: str | None = None, span: bool = True
) -> Iterator[Dataset]:
    """Read a prepared split for scoring, ``batch_size`` events at a time.

    The batches of :func:`read_scoring`, in file order: concatenated they are
    what it returns, value for value. Only the columns scoring needs are read
    (:func:`scoring_columns`), one record batch at a time, and the feature
    matrix is built straight from Arrow, so memory holds one batch.

    Parameters
    ----------
    path : str
        A prepared split (Parquet).
    meta : dict
        The model's metadata (``hepml_model.json``): ``model``, ``task``,
        ``features``, ``target``, ``classes``, ``family``.
    batch_size : int
        Events per batch (>= 1); the last batch may be shorter.
    what : str, optional
        How messages name the model (default ``model '<name>'``).
    span : bool
        False: no batch spans two row groups (:func:`hepml_steps.io.read_batches`),
        a row group of at most ``batch_size`` events is one batch, read without a copy.

    Yields
    ------
    Dataset
        ``X`` of shape (n_batch, n_features), float32; ``fit_weights`` None.
        A split without events yields one empty batch.

    Raises
    ------
    DataError
        The file is missing or unreadable, a feature column of the model is
        missing, or the target is unusable.
    """
    what = what or f"model '{meta['model']}'"
    task, target, features = tasks.get(meta["task"]), meta.get("target"), list(meta["features"])
    pf = parquet_file(path)
    names = _scoring_names(path, features, what)
    columns = scoring_columns(names, meta)
    others = [c for c in columns if c not in features or c == target]  # what the task's targets may read
    prepared, fill = _prepared_fill(path, meta)
    n_filled = 0
    for batch in _record_batches(pf, columns, batch_size, path, span=span):
        X = _arrow_matrix(batch, features)
        n_filled += _fill_in_place(X, features, fill)
        yield Dataset(
            X=X,
            y=task.batch_targets(batch.select(others), target, what, meta.get("classes")),
            weights=_arrow_column(batch, WEIGHT),
            fit_weights=None,
            event_ids=_arrow_column(batch, EVENT_ID),
            labels=_arrow_column(batch, LABEL),
            columns=features,
            classes=meta.get("classes"),
            truth_llr=_arrow_column(batch, TRUTH_LLR),
            prepared=prepared,
        )
        del batch, X  # not held while the next batch is read (the caller's copy may be gone)
    _log_filled(what, n_filled, meta.get("family"))


def iter_feature_matrices(path: str, meta: dict, batch_size: int, what: str | None = None) -> Iterator[np.ndarray]:
    """The feature matrices of a prepared split, ``batch_size`` events at a time: the
    ``X`` of :func:`iter_scoring`'s batches, value for value (missing values filled
    alike), reading the model's feature columns only, what bare inference reads,
    one column at a time straight into the matrix (:func:`hepml_steps.io.read_matrices`:
    no record batch is built).

    Parameters
    ----------
    path, meta, batch_size, what
        As :func:`iter_scoring`.

    Yields
    ------
    ndarray of shape (n_batch, n_features), float32
        A split without events yields one empty matrix.

    Raises
    ------
    DataError
        The file is missing or unreadable, or a feature column of the model is missing.
    """
    what = what or f"model '{meta['model']}'"
    features = list(meta["features"])
    pf = parquet_file(path)
    _scoring_names(path, features, what)
    prepared, fill = _prepared_fill(path, meta)
    n_filled = 0
    n = 0
    for X in _reads(path, lambda: read_matrices(pf, features, batch_size)):  # no record batch: the matrix alone
        n += len(X)
        n_filled += _fill_in_place(X, features, fill)
        yield X
        del X  # not held while the next one is read
    if not n:
        yield np.empty((0, len(features)), dtype=np.float32)
    _log_filled(what, n_filled, meta.get("family"))


def _prepared_fill(path: str, meta: dict) -> tuple[dict | None, dict]:
    """The features step's record stored with the prepared split ``path`` (None when
    absent) and the fill values scoring applies: its medians, none for a family that
    handles missing values itself."""
    prepared = table_attrs(path).get(_attrs_key())
    return prepared, {} if handles_missing(meta.get("family")) else (prepared or {}).get("fill") or {}


def _record_batches(pf, columns: list, batch_size: int, path: str, row_groups: list | None = None, span: bool = True):
    """The Arrow record batches of ``columns`` of the Parquet file ``pf`` (of its
    ``row_groups`` only, when given; none spanning two row groups unless ``span``);
    one empty batch for no events.

    Raises
    ------
    DataError
        A batch cannot be read (naming ``path``).
    """
    import pyarrow as pa

    n = 0
    for batch in _reads(path, lambda: read_batches(pf, batch_size, columns, row_groups, span)):  # less memory
        n += 1
        yield batch
        del batch  # not held while the next one is read
    if not n:
        yield pa.RecordBatch.from_pylist([], schema=pa.schema([pf.schema_arrow.field(c) for c in columns]))


def _reads(path: str, make: Callable[[], Iterator]) -> Iterator:
    """The items of the reader of ``path`` that ``make()`` returns; an error making or
    advancing it is a DataError naming ``path``."""
    with culprit(path, context="cannot read as parquet"):
        items = make()
    while True:
        with culprit(path, context="cannot read as parquet"):
            item = next(items, None)
        if item is None:
            return
        yield item
        del item  # not held while the next one is read


def _attrs_key() -> str:
    from .features import ATTRS_KEY

    return ATTRS_KEY


def _arrow_matrix(batch, cols: list, out: np.ndarray | None = None) -> np.ndarray:
    """The columns ``cols`` of an Arrow record batch as a float32 matrix (n_events × n_features), nulls as NaN.

    Written column by column into ``out`` (float32, of that shape) when given,
    else into a new array; no copy of the table as a whole is made."""
    X = np.empty((batch.num_rows, len(cols)), dtype=np.float32) if out is None else out
    for j, c in enumerate(cols):
        X[:, j] = batch.column(c).to_numpy(zero_copy_only=False)
    return X


def _rows_matrix(pf, rows: np.ndarray, cols: list, path: str, batch_events: int = BATCH_EVENTS) -> np.ndarray:
    """The feature matrix (float32, n_rows × n_features) of the rows at positions
    ``rows`` (ascending) of the Parquet file ``pf``: the columns ``cols`` only,
    read one record batch at a time (a row group without a wanted row is not
    read) and written straight into the matrix (:func:`_arrow_matrix`). Memory:
    the matrix plus one batch.

    Raises
    ------
    DataError
        A batch cannot be read (naming ``path``).
    """
    import pyarrow as pa

    X = np.empty((len(rows), len(cols)), dtype=np.float32)
    md, start = pf.metadata, 0
    for rg in range(md.num_row_groups):
        n = md.row_group(rg).num_rows
        lo, hi = np.searchsorted(rows, [start, start + n])
        if hi > lo:
            at = start  # the file position of the batch's first row
            for batch in _record_batches(pf, cols, batch_events, path, row_groups=[rg]):
                m = batch.num_rows
                b_lo, b_hi = np.searchsorted(rows, [at, at + m])
                if b_hi > b_lo:
                    part = batch if b_hi - b_lo == m else batch.take(pa.array(rows[b_lo:b_hi] - at))
                    _arrow_matrix(part, cols, out=X[b_lo:b_hi])
                at += m
        start += n
    return X


def _arrow_column(batch, name: str):
    """A column of an Arrow record batch as a numpy array, or None when absent."""
    if name not in batch.schema.names:
        return None
    return batch.column(name).to_numpy(zero_copy_only=False)


def _fill_in_place(X: np.ndarray, cols: list, fill: dict) -> int:
    """Fill NaN in ``X`` (in place) with ``fill[column]``; return how many were filled."""
    n = 0
    for j, c in enumerate(cols):
        if c in fill:
            bad = np.isnan(X[:, j])
            if bad.any():
                X[bad, j] = fill[c]
                n += int(bad.sum())
    return n


def _prepared(df) -> dict | None:
    from .features import ATTRS_KEY

    return df.attrs.get(ATTRS_KEY)


def handles_missing(family: str | None) -> bool:
    """Whether the family ``family`` (a registry name) takes NaN as a missing value."""
    if not family:
        return False
    from . import registry

    return bool(getattr(registry.get(family), "handles_missing", False))


def _features(df, cols: list, family: str | None, what: str) -> np.ndarray:
    """The feature matrix (float32); NaN filled with the split's fill values
    unless ``family`` handles missing values (module docstring)."""
    X = df[cols].to_numpy(dtype=np.float32)
    fill = (_prepared(df) or {}).get("fill") or {}
    if handles_missing(family):
        return X
    X, n = _fill(X, cols, fill, count=True)
    _log_filled(what, n, family)
    return X


def _log_filled(what: str, n: int, family: str | None) -> None:
    """Say (info) that ``n`` missing values were filled, when there were any."""
    if n:
        log.info(
            "%s: %d missing value(s) filled with the train medians (family '%s' does not handle NaN)", what, n, family
        )


def _fill(X: np.ndarray, cols: list, fill: dict | None, count: bool = False):
    """``X`` with NaN in column ``cols[j]`` replaced by ``fill[cols[j]]`` (a copy when
    anything is filled); with ``count``, also the number of values filled."""
    n = 0
    if fill and np.isnan(X).any():
        X = X.copy()
        n = _fill_in_place(X, cols, fill)
    return (X, n) if count else X


def _optional(df, column: str):
    return df[column].to_numpy() if column in df.columns else None
