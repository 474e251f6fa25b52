"""The tasks a model can have, one object each: the one home of everything
that depends on a model's task.

A step never branches on a task's name: it asks ``tasks.get(name)`` and calls
the object. Per task the object says

- **targets**: what ``y`` a model learns and is judged against
  (:meth:`Task.targets`): the 0/1 label (classification), the ``target``
  column in physical units (regression), the index of the ``target`` value
  among the training classes (multiclass), nothing (anomaly, clustering,
  dimensionality reduction); whether the model needs ``target``
  (:attr:`Task.target_kind`), needs the inputs' signal/background labels
  (:meth:`Task.needs_labels`), trains on background only (anomaly), and
  which classes ``balanced`` weighting equalises;
- **tuning**: the objectives it accepts with their direction, its default
  objective and the objective's value on a set of predictions;
- **predictions**: how scores are laid out (one ``score`` column, or for
  multiclass the most probable class in ``score`` and ``prob_<i>`` per class);
- **figures of merit** (:meth:`Task.figures`, the evaluate step's logic;
  those against the labels only when the events have them, :func:`labelled`),
  the score to permute for feature importance, the per-model **plots** and
  whether the score separates signal from background (ROC curves, energy views);
- its **leaderboard section**: title, columns (metric, header, format) and
  the metric that ranks it.

Adding a task means adding a subclass here and listing it in :data:`TASKS`
(plus a family that supports it). Targets are never standardised: the
features step keeps an unstandardised copy of every model's target (see
:mod:`hepml_steps.features`), and :func:`target_column` reads it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import metrics as M
from .columns import EVENT_ID, LABEL, PROB, SCORE, SPLIT, TARGET, TRUTH_LLR, WEIGHT, is_feature, target_copy
from .errors import ConfigError, DataError

log = logging.getLogger("hepml.evaluate")

#: At most this many classes in a multiclass target (more: it is a continuous variable).
MAX_CLASSES = 50


# -- what a task is handed -------------------------------------------------------
@dataclass
class Judged:
    """One model's predictions as the evaluate step hands them to a task.

    Attributes
    ----------
    by_split : mapping of str to DataFrame
        Prediction rows per split (``train`` holds only the events the model
        was fitted on); columns as written by the predict step, less those no
        task judges on that split (the truth LLR outside test, event ids
        outside test unless the model's training was capped). The evaluate
        step reads each split at its first use
        (:class:`hepml_steps.evaluate.SplitFrames`).
    record : dict
        The training record (``features``, ``classes``, ``info``, ...).
    what : str
        How error messages name the model and file.
    threshold : float
        Score threshold of the confusion-matrix figures (classification).
    bkg_efficiencies : list of float
        Background efficiencies at which the signal efficiency is reported.
    ks_pvalue_min : float
        Overtraining is flagged when a train-vs-test KS p-value is below this.
    features : str or None
        The prepared test features (clustering's silhouette needs them).
    significance : str
        The figure of merit the optimal cut maximises (one of
        :data:`hepml_steps.significance.FIGURES`).
    bkg_uncertainty : float
        Relative background uncertainty σ_b/B of that figure.
    test_fraction : float
        The fraction of the sample in the test split: test weights are scaled
        by 1/test_fraction so that S and B are the full sample's expected yields.
    """

    by_split: Mapping
    record: dict
    what: str
    threshold: float = 0.5
    bkg_efficiencies: list = field(default_factory=lambda: [0.01, 0.1, 0.3])
    ks_pvalue_min: float = 0.01
    features: str | None = None
    significance: str = "asimov"
    bkg_uncertainty: float = 0.0
    test_fraction: float = 1.0

    @property
    def test(self):
        return self.by_split["test"]


@dataclass
class Figures:
    """A task's figures of merit: ``metrics`` (name -> value), the train-vs-test
    ``overtraining`` test (or None) and further ``document`` entries of metrics.json."""

    metrics: dict
    overtraining: dict | None = None
    document: dict = field(default_factory=dict)


@dataclass
class Drawn:
    """What a task's per-model plots are drawn from.

    Attributes
    ----------
    pred : DataFrame
        The model's predictions (train rows: the fitted events only).
    metrics : dict
        The model's metrics.json document.
    record : dict
        The training record.
    out : Path
        The model's plot directory.
    title : str
        Figure title, ``model (family)``.
    features_test : str or None
        The prepared test features.
    """

    pred: Any
    metrics: dict
    record: dict
    out: Path
    title: str
    features_test: str | None = None


# -- the base --------------------------------------------------------------------
class Task:
    """What every task declares; the defaults suit an unsupervised task.

    Attributes
    ----------
    name : str
        The key used in ``config.yaml`` (``models.<model>.task``).
    title : str
        The task's leaderboard section heading.
    target_kind : str or None
        What ``target`` names (``"regression target"``, ``"class column"``);
        None when the task takes no ``target``.
    uses_labels : bool
        Every model of the task needs the signal/background labels
        (classification, anomaly detection); see :meth:`needs_labels`.
    background_only : bool
        The model is fitted on background events only (label 0).
    min_fit_events : int
        Fewest training events the task can be fitted on.
    separates_signal : bool
        The score is a signal-vs-background discriminant (ROC curves, AUC views).
    objectives : dict of str to str
        Tuning objectives the task accepts -> ``"maximize"`` or ``"minimize"``.
    default_objective : str or None
        The tuning objective when the config names none; None: not tunable.
    importance_metric : tuple of (str, float) or None
        The figure of merit of permutation importance and +1 if higher is
        better (−1 if lower); None: the task has none.
    leaderboard_columns : tuple of (metric, header, format)
        The task's Markdown leaderboard columns.
    front_page_columns : tuple of str
        The few of those the HTML report's first page shows (its text column is
        about 500 px wide beside the rule graph); empty: the first four.
    rank_by : tuple of (metric, bool)
        The metric that ranks the section, and whether higher is better.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    target_kind: ClassVar[str | None] = None
    uses_labels: ClassVar[bool] = False
    background_only: ClassVar[bool] = False
    min_fit_events: ClassVar[int] = 1
    separates_signal: ClassVar[bool] = False
    objectives: ClassVar[dict[str, str]] = {}
    default_objective: ClassVar[str | None] = None
    importance_metric: ClassVar[tuple[str, float] | None] = None
    leaderboard_columns: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    front_page_columns: ClassVar[tuple[str, ...]] = ()
    rank_by: ClassVar[tuple[str, bool]] = ("", True)

    def __str__(self) -> str:
        return self.name

    @property
    def needs_target(self) -> bool:
        """Whether a model of this task must name its ``target`` column."""
        return self.target_kind is not None

    def front_columns(self) -> tuple[tuple[str, str, str], ...]:
        """The :attr:`leaderboard_columns` of the report's first page (:attr:`front_page_columns`)."""
        if not self.front_page_columns:
            return self.leaderboard_columns[:4]
        return tuple(c for c in self.leaderboard_columns if c[0] in self.front_page_columns)

    def needs_labels(self, target: str | None = None) -> bool:
        """Whether a model of this task with this ``target`` needs labelled events.

        True for a task that :attr:`uses_labels`, and for any model whose
        ``target`` is the ``label`` column itself (a multiclass or regression
        model of the labels). A model that needs none runs on unlabelled
        inputs (:func:`hepml_steps.inputs.labelled`); its figures against the
        labels are then left out.
        """
        return self.uses_labels or target == LABEL

    @property
    def tunable(self) -> bool:
        """Whether the task has a validation objective to tune on."""
        return self.default_objective is not None

    @property
    def needs_test_features(self) -> bool:
        """Whether the evaluate step needs the prepared test features."""
        return False

    # -- targets
    def learn_classes(self, df, target: str | None, what: str) -> list | None:
        """The classes a model learns from its training split (None: the task has none)."""
        return None

    def targets(self, df, target: str | None, what: str, classes: list | None = None) -> np.ndarray | None:
        """The per-event truth of ``df`` for this task (None for an unsupervised task).

        Parameters
        ----------
        df : DataFrame
            A prepared split (or any table with the canonical columns).
        target : str or None
            The model's ``target`` column.
        what : str
            How error messages name the model.
        classes : list, optional
            The training classes (multiclass).

        Returns
        -------
        ndarray of shape (n_events,) or None
        """
        return None

    def batch_targets(self, batch, target: str | None, what: str, classes: list | None = None) -> np.ndarray | None:
        """:meth:`targets` of an Arrow record batch, value for value: the batch as
        pandas, except where a task reads its truth from Arrow itself (a task
        that does not override :meth:`targets` has none; classification reads
        the ``label`` column), so that scoring a batch converts nothing to pandas."""
        if type(self).targets is Task.targets:
            return None
        return self.targets(batch.to_pandas(), target, what, classes)

    def check_fit_targets(self, y, what: str) -> None:
        """Refuse targets a model cannot be fitted on (default: accept)."""

    def balance_classes(self, y) -> Any:
        """The classes whose total weight ``balanced`` weighting equalises (None: no classes)."""
        return None

    # -- tuning
    def check_objective(self, objective: str, what: str) -> str:
        """``objective`` if the task accepts it.

        Raises
        ------
        ConfigError
            The task cannot be tuned, or does not know ``objective``.
        """
        if not self.tunable:
            raise ConfigError(f"{what}: tuning is not available for task '{self.name}'")
        if objective in self.objectives:
            return objective
        raise ConfigError(
            f"{what}: unknown tuning objective '{objective}' for task '{self.name}'; "
            f"choose one of {self._objective_names()}"
        )

    def _objective_names(self) -> list[str]:
        return sorted(self.objectives)

    def direction(self, objective: str) -> str:
        """``"maximize"`` or ``"minimize"``: how the study optimises ``objective``."""
        return self.objectives.get(objective, "minimize")

    def objective_value(self, objective: str, y, score, w, X=None) -> float:
        """The objective on one set of validation predictions.

        Parameters
        ----------
        objective : str
            A name accepted by :meth:`check_objective`.
        y : ndarray of shape (n_events,) or None
            The targets (:meth:`targets`).
        score : ndarray of shape (n_events,) or (n_events, n_classes)
            The model's ``predict_score``.
        w : ndarray of shape (n_events,)
            Event weights.
        X : ndarray of shape (n_events, n_features), optional
            The features (clustering).
        """
        raise ConfigError(f"tuning is not available for task '{self.name}'")

    def objective_truth(self, data, objective: str):
        """What :meth:`objective_value` compares the scores of ``data`` (a
        :class:`hepml_steps.dataset.Dataset`) with: its targets; the labels for a
        task judged against them without fitting them (anomaly, clustering).

        Raises
        ------
        DataError
            ``objective`` needs labels and the events have none.
        """
        return data.y

    # -- predictions
    def empty_scores(self, classes: list | None) -> np.ndarray:
        """What ``predict_score`` would give for no events."""
        return np.empty(0)

    def prediction_columns(self, score) -> dict[str, np.ndarray]:
        """The prediction-table columns of the scores of a batch of events."""
        return {SCORE: score}

    # -- judging
    def figures(self, judged: Judged) -> Figures:
        """The figures of merit on the test split (see :mod:`hepml_steps.evaluate`)."""
        return Figures({})

    def importance_value(self, data, score) -> float:
        """The :attr:`importance_metric` of a model's scores of ``data``.

        Parameters
        ----------
        data : hepml_steps.dataset.Dataset
            The events scored (``y``, ``labels``, ``weights`` used).
        score : ndarray of shape (n_events,) or (n_events, n_classes)
            The model's ``predict_score``.
        """
        raise ConfigError(f"task '{self.name}' has no permutation-importance metric")

    def model_plots(self, drawn: Drawn) -> list[str | None]:
        """The task's own per-model figures (paths; None for a figure not drawn)."""
        return []


# -- shared figures --------------------------------------------------------------
def labelled(df) -> bool:
    """Whether a table's events carry signal/background labels (unlabelled
    inputs give tables without a ``label`` column: :mod:`hepml_steps.ingest`)."""
    return LABEL in df.columns


def _eff_key(eff: float) -> str:
    return f"sig_eff_at_bkg_{eff:g}"


def _two_classes(part, what: str):
    y = part[LABEL].to_numpy()
    w = part[WEIGHT].to_numpy(dtype=np.float64)
    for cls, name in ((1, "signal"), (0, "background")):
        if not np.any(y == cls) or w[y == cls].sum() <= 0:
            raise DataError(
                f"{what}: the test split has no {name} events (with positive weight); cannot compute ROC figures"
            )
    return y, w


def _discriminant(m: dict, part, effs) -> None:
    y, w = part[LABEL].to_numpy(), part[WEIGHT].to_numpy(dtype=np.float64)
    s = part[SCORE].to_numpy(dtype=np.float64)
    m["roc_auc"] = M.roc_auc(y, s, w)
    for e, v in zip(effs, np.atleast_1d(M.signal_efficiency_at(y, s, effs, w))):
        m[_eff_key(e)] = float(v)


#: The optimal-cut figures written to metrics.json (metric name -> key of
#: :func:`hepml_steps.significance.optimal_cut`).
CUT_METRICS = {
    "z_max": "z_max",
    "optimal_cut": "cut",
    "s_at_cut": "s",
    "b_at_cut": "b",
    "b_mc_error_at_cut": "b_mc_error",
    "n_bkg_mc_at_cut": "n_b",
    "cut_at_guard": "at_guard",
    "sig_eff_at_cut": "eps_s",
    "bkg_eff_at_cut": "eps_b",
}


def significance_settings(judged: Judged) -> dict:
    """The metrics.json ``significance`` entry: what the optimal cut maximised
    and how test weights were scaled to expected yields (the plots step reuses it)."""
    if not 0 < judged.test_fraction <= 1:
        raise ConfigError(f"{judged.what}: test_fraction = {judged.test_fraction!r} must lie in (0, 1]")
    return {
        "figure": judged.significance,
        "rel_bkg_uncertainty": float(judged.bkg_uncertainty),
        "test_fraction": float(judged.test_fraction),
        "weight_scale": 1.0 / judged.test_fraction,
    }


def _optimal_cut(m: dict, test, judged: Judged) -> dict:
    """The cut on the test scores maximising the chosen significance; its
    figures go into ``m`` (:data:`CUT_METRICS`). Returns the document entry."""
    from .significance import optimal_cut

    doc = significance_settings(judged)
    w = test[WEIGHT].to_numpy(dtype=np.float64) * doc["weight_scale"]
    best = optimal_cut(
        test[LABEL].to_numpy(),
        test[SCORE].to_numpy(dtype=np.float64),
        w,
        figure=judged.significance,
        rel_bkg_uncertainty=judged.bkg_uncertainty,
    )
    for name, key in CUT_METRICS.items():
        m[name] = best[key]
    if best["at_guard"]:
        log.warning(
            "%s: the best %s cut (%.4g) is the tightest the scan allows (>= 1 expected and >= 10 "
            "simulated background events): tighter cuts scored higher, so Z_max = %.3g rests on the %d "
            "simulated background events there, B = %.4g ± %.2g (MC statistics)",
            judged.what,
            judged.significance,
            best["cut"],
            best["z_max"],
            best["n_b"],
            best["b"],
            best["b_mc_error"],
        )
    return doc


def _bayes(m: dict, test) -> None:
    if TRUTH_LLR in test.columns and test[TRUTH_LLR].notna().all():
        y, w = test[LABEL].to_numpy(), test[WEIGHT].to_numpy(dtype=np.float64)
        m["bayes_auc"] = M.roc_auc(y, test[TRUTH_LLR].to_numpy(), w)
        if "roc_auc" in m:
            m["auc_gap_to_bayes"] = m["bayes_auc"] - m["roc_auc"]


def ks_overtraining(by_split: dict, tests, ks_pvalue_min: float) -> dict:
    """Train-vs-test KS test per class.

    Parameters
    ----------
    by_split : mapping of str to DataFrame
        Prediction rows per split (``train`` and ``test`` used).
    tests : iterable of (name, column, value, score column)
        One entry per class: its events are those with ``column == value``.
    ks_pvalue_min : float
        Flag overtraining when a p-value is below this.

    Returns
    -------
    dict
        ``ks_statistic_<name>``, ``ks_pvalue_<name>``, ``flagged`` (None
        without training events) and ``ks_pvalue_threshold``.
    """
    out = {"ks_pvalue_threshold": ks_pvalue_min}
    tr, te = by_split.get("train"), by_split["test"]
    if tr is None or tr.empty:
        return {**out, "flagged": None, "reason": "no training events in the predictions"}
    ps = []
    for name, column, value, score in tests:
        a, b = (tr[column] == value).to_numpy(), (te[column] == value).to_numpy()  # the two columns only
        # the class's train and test events in one array each, built in place: no copy per split
        n = int(a.sum())
        s = np.empty(n + int(b.sum()), dtype=np.result_type(tr[score].dtype, te[score].dtype))
        w = np.empty(len(s))
        for rows, part, at in ((a, tr, slice(0, n)), (b, te, slice(n, None))):
            np.compress(rows, part[score].to_numpy(), out=s[at])
            np.compress(rows, part[WEIGHT].to_numpy(dtype=np.float64), out=w[at])
        del a, b
        train = np.zeros(len(s), dtype=bool)
        train[:n] = True
        r = M.ks_joint(s, w, train)
        del s, w, train
        out[f"ks_statistic_{name}"], out[f"ks_pvalue_{name}"] = r["statistic"], r["pvalue"]
        if not math.isnan(r["pvalue"]):
            ps.append(r["pvalue"])
    out["flagged"] = bool(ps) and min(ps) < ks_pvalue_min
    return out


def _labels_for(data, objective: str, task) -> np.ndarray:
    """The signal/background labels of ``data``, which ``objective`` of ``task`` is judged against."""
    if data.labels is None:
        raise DataError(f"tuning objective '{objective}' of task '{task}' needs labelled events; these have none")
    return data.labels


def _discriminant_objective(objective: str, y, score, w) -> float:
    """A signal-vs-background objective (classification, anomaly)."""
    if objective == "roc_auc":
        return float(M.roc_auc(y, score, sample_weight=w))
    if objective.startswith("sig_eff_at_bkg_"):
        eff = float(objective.rsplit("_", 1)[1])
        return float(np.atleast_1d(M.signal_efficiency_at(y, score, eff, sample_weight=w))[0])
    losses = {
        "zero_one_loss": M.zero_one_loss,
        "mse": M.mse,
        "absolute_loss": M.absolute_loss,
        "hinge_loss": M.hinge_loss,
        "cross_entropy": M.cross_entropy,
    }
    if objective in losses:
        return float(losses[objective](y, score, sample_weight=w))
    return float(M.threshold_metrics(y, score, 0.5, sample_weight=w)[objective])


# -- targets ---------------------------------------------------------------------
def target_column(df, target: str | None, kind: str, task: str, what: str, names: bool = False):
    """A model's ``target`` column of ``df`` in physical units.

    Read from the features step's unstandardised copy ``target:<name>`` when
    the table has one, else from the column ``<name>`` itself (a reserved
    column such as ``process``, which is never standardised, or a table that
    did not go through the features step). With ``names``, a column of
    strings (class names such as ``ttbar``) is accepted too.

    Raises
    ------
    ConfigError
        No ``target`` given.
    DataError
        The column is absent, or not numeric (nor strings, with ``names``).
    """
    from pandas.api.types import is_bool_dtype, is_numeric_dtype, is_string_dtype

    if not target:
        raise ConfigError(f"{what}: a {task} model needs 'target' (the {kind}'s name)")
    for name in (target_copy(target), target):
        if name in df.columns:
            col = df[name]
            break
    else:
        from .expressions import hint

        raise DataError(f"{what}: {kind} '{target}' not found in the prepared split{hint(target, df.columns)}")
    if names and is_string_dtype(col.dtype) and not is_numeric_dtype(col.dtype):
        return col
    if not is_numeric_dtype(col.dtype) or is_bool_dtype(col.dtype):
        also = " nor class names" if names else ""
        raise DataError(f"{what}: {kind} '{target}' is not numeric{also} (dtype {col.dtype})")
    return col


def _class_names(values) -> np.ndarray | None:
    """``values`` as an array of str when they are class names (strings; a missing one
    as ""), else None."""
    import pandas as pd

    v = np.asarray(values)
    if v.dtype.kind == "U":
        return v
    if v.dtype.kind == "O" and pd.api.types.infer_dtype(v.ravel(), skipna=True) == "string":
        return np.where(pd.isna(v), "", v).astype(str)
    return None


def learn_classes(col, target: str, what: str) -> list:
    """The sorted distinct values of a multiclass target (2 to :data:`MAX_CLASSES` of them):
    numbers, or class names (str, sorted as text: ``["QCD", "tt", "ttH"]``).

    Raises
    ------
    DataError
        Non-finite or missing values, one class only, or more than :data:`MAX_CLASSES` values.
    """
    names = _class_names(col)
    if names is not None:
        missing = int((names == "").sum())
        if missing:
            raise DataError(f"{what}: class column '{target}' has {missing} missing or empty class names")
        classes = np.unique(names)
    else:
        v = np.asarray(col, dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise DataError(f"{what}: class column '{target}' has {int((~np.isfinite(v)).sum())} non-finite values")
        classes = np.unique(v)
    if len(classes) < 2:
        raise DataError(f"{what}: class column '{target}' has one class only in the training split")
    if len(classes) > MAX_CLASSES:
        raise DataError(
            f"{what}: class column '{target}' has {len(classes)} distinct values (at most "
            f"{MAX_CLASSES}); a multiclass target holds class labels — use task 'regression' "
            "for a continuous target"
        )
    if names is not None:
        return [str(c) for c in classes]
    return [int(c) if float(c).is_integer() else float(c) for c in classes]


def encode_classes(values, classes) -> np.ndarray:
    """Indices of ``values`` into ``classes`` (int64, shape of ``values``); −1 where a value
    is not a class (for class names: also a number, a missing or an empty value).

    Raises
    ------
    DataError
        Class names against numeric values, or the reverse (a model trained on the other kind).
    """
    if any(isinstance(c, str) for c in classes):
        ref = np.asarray(classes, dtype=str)
        v = _class_names(values)
        if v is None:
            if np.asarray(values).dtype.kind in "biuf":
                raise DataError(f"class names {list(classes)} cannot be matched to numeric class values")
            return np.full(np.shape(values), -1, dtype=np.int64)
    else:
        ref = np.asarray(classes, dtype=np.float64)
        if _class_names(values) is not None:
            raise DataError(f"numeric classes {list(classes)} cannot be matched to class names")
        v = np.asarray(values, dtype=np.float64)
    if len(ref) == 0:
        return np.full(np.shape(v), -1, dtype=np.int64)
    idx = np.clip(np.searchsorted(ref, v), 0, len(ref) - 1)
    return np.where(ref[idx] == v, idx, -1).astype(np.int64)


# -- the tasks -------------------------------------------------------------------
class Classification(Task):
    """Signal (label 1) against background (label 0); the score is the signal probability."""

    name = "classification"
    title = "Classification (signal vs background)"
    uses_labels = True
    separates_signal = True
    objectives = {
        **{
            k: "maximize"
            for k in (
                "roc_auc",
                "accuracy",
                "precision",
                "sensitivity",
                "specificity",
                "roc_combined",
                "f1",
                "geometric_mean",
            )
        },
        **{
            k: "minimize"
            for k in ("error_rate", "zero_one_loss", "mse", "absolute_loss", "hinge_loss", "cross_entropy")
        },
    }
    default_objective = "roc_auc"
    importance_metric = ("roc_auc", 1.0)
    leaderboard_columns = (
        ("roc_auc", "test AUC", ".4f"),
        ("bayes_auc", "Bayes-optimal AUC", ".4f"),
        ("roc_auc_train", "train AUC", ".4f"),
        ("sig_eff_at_bkg_0.1", "ε_S @ ε_B=0.1", ".3f"),
        ("sig_eff_at_bkg_0.01", "ε_S @ ε_B=0.01", ".3f"),
        ("z_max", "Z_max", ".3g"),
        ("optimal_cut", "best cut", ".3g"),
        ("s_at_cut", "S @ cut", ".4g"),
        ("b_at_cut", "B @ cut", ".4g"),
        ("b_mc_error_at_cut", "± B (MC)", ".2g"),
        ("n_bkg_mc_at_cut", "B MC events @ cut", ".0f"),
        ("cut_at_guard", "cut at MC limit?", ""),
        ("sig_eff_at_cut", "ε_S @ cut", ".3f"),
        ("f1_at_cut", "F1 @ cut", ".3f"),
        ("accuracy", "accuracy", ".3f"),
        ("roc_combined", "\"ROC\"", ".3f"),
        ("f1", "F1", ".3f"),
        ("ks_pvalue_signal", "KS p (S)", ".3g"),
        ("ks_pvalue_background", "KS p (B)", ".3g"),
        ("overtrained", "overtrained?", ""),
    )
    front_page_columns = ("roc_auc", "sig_eff_at_bkg_0.1", "z_max", "s_at_cut", "b_at_cut", "overtrained")
    rank_by = ("roc_auc", True)

    def targets(self, df, target, what, classes=None):
        return df[LABEL].to_numpy()

    def batch_targets(self, batch, target, what, classes=None):
        if LABEL not in batch.schema.names:  # unlabelled: the pandas path, and its error
            return super().batch_targets(batch, target, what, classes)
        return batch.column(LABEL).to_numpy(zero_copy_only=False)

    def check_fit_targets(self, y, what):
        if len(np.unique(y)) < 2:
            raise DataError(f"{what}: the training labels have one class only")

    def balance_classes(self, y):
        return (0, 1)

    def check_objective(self, objective, what):
        if objective.startswith("sig_eff_at_bkg_") and objective not in self.objectives:
            try:
                eff = float(objective.rsplit("_", 1)[1])
            except ValueError:
                eff = -1.0
            if 0 < eff < 1:
                return objective
        return super().check_objective(objective, what)

    def _objective_names(self):
        return sorted(self.objectives) + ["sig_eff_at_bkg_<eff>"]

    def direction(self, objective):
        return "maximize" if objective.startswith("sig_eff_at_bkg_") else super().direction(objective)

    def objective_value(self, objective, y, score, w, X=None):
        return _discriminant_objective(objective, y, score, w)

    def figures(self, judged):
        test, m = judged.test, {}
        y, w = _two_classes(test, judged.what)
        s = test[SCORE].to_numpy(dtype=np.float64)
        m.update(M.threshold_metrics(y, s, judged.threshold, w))
        _discriminant(m, test, judged.bkg_efficiencies)
        for name in ("zero_one_loss", "mse", "absolute_loss", "hinge_loss", "cross_entropy"):
            m[name] = getattr(M, name)(y, s, w)
        for sp in ("train", "validation"):
            part = judged.by_split.get(sp)
            if part is not None and part[LABEL].nunique() == 2:
                m[f"roc_auc_{sp}"] = M.roc_auc(part[LABEL], part[SCORE], part[WEIGHT])
        _bayes(m, test)
        doc = _optimal_cut(m, test, judged)
        if math.isfinite(m["optimal_cut"]):
            for k, v in M.threshold_metrics(y, s, m["optimal_cut"], w).items():
                m[f"{k}_at_cut"] = v
        ks = ks_overtraining(
            judged.by_split, (("signal", LABEL, 1, SCORE), ("background", LABEL, 0, SCORE)), judged.ks_pvalue_min
        )
        return Figures(m, ks, {"significance": doc})

    def importance_value(self, data, score):
        return M.roc_auc(data.labels, score, sample_weight=data.weights)

    def model_plots(self, drawn):
        from . import plots

        m = drawn.metrics.get("metrics", {})
        made = [plots.score_distributions(drawn.pred, drawn.out / "score_distributions.png", drawn.title, m)]
        if all(k in m and m[k] is not None for k in ("tp", "fp", "tn", "fn")):
            made.append(
                plots.confusion_matrix(
                    m,
                    drawn.out / "confusion_matrix.png",
                    f"{drawn.title}, test, threshold {drawn.metrics.get('threshold', 0.5)}",
                )
            )
        made.append(
            plots.significance_scan(drawn.pred, drawn.metrics, drawn.out / "significance_scan.png", drawn.title)
        )
        return made


class Multiclass(Task):
    """One of K classes, the distinct values of the ``target`` column (TMVA's
    multiclass); the scores are the K class probabilities."""

    name = "multiclass"
    title = "Multiclass classification"
    target_kind = "class column"
    objectives = {
        "roc_auc": "maximize",
        "accuracy": "maximize",
        "f1_macro": "maximize",
        "error_rate": "minimize",
        "cross_entropy": "minimize",
    }
    default_objective = "roc_auc"
    importance_metric = ("roc_auc", 1.0)
    leaderboard_columns = (
        ("n_classes", "classes", ""),
        ("roc_auc", "test AUC (macro, one-vs-rest)", ".4f"),
        ("accuracy", "accuracy", ".4f"),
        ("accuracy_train", "train accuracy", ".4f"),
        ("f1_macro", "F1 (macro)", ".3f"),
        ("cross_entropy", "cross-entropy", ".4g"),
        ("overtrained", "overtrained?", ""),
    )
    front_page_columns = ("roc_auc", "accuracy", "f1_macro", "overtrained")
    rank_by = ("roc_auc", True)

    def learn_classes(self, df, target, what):
        return learn_classes(target_column(df, target, self.target_kind, self.name, what, names=True), target, what)

    def targets(self, df, target, what, classes=None):
        """Indices of the ``target`` values into ``classes`` (learned from ``df``
        when not given); −1 for a value that is not among ``classes``."""
        col = target_column(df, target, self.target_kind, self.name, what, names=True)
        if classes is None:
            classes = learn_classes(col, target, what)
        return encode_classes(col.to_numpy(), classes)

    def balance_classes(self, y):
        return np.unique(y)

    def objective_value(self, objective, y, score, w, X=None):
        # roc_auc: the macro one-vs-rest AUC
        return float(M.multiclass_metrics(y, score, sample_weight=w)[objective])

    def empty_scores(self, classes):
        return np.empty((0, len(classes or ())))

    def prediction_columns(self, score):
        probs = {f"{PROB}{i}": score[:, i] for i in range(score.shape[1])}
        best = score.argmax(axis=1).astype(np.float64) if len(score) else np.empty(0)
        return {SCORE: best, **probs}

    def figures(self, judged):
        test = judged.test
        cols = sorted((c for c in test.columns if c.startswith(PROB)), key=lambda c: int(c[len(PROB) :]))
        if not cols or TARGET not in test.columns:
            raise DataError(f"{judged.what}: multiclass predictions need '{TARGET}' and '{PROB}<i>' columns")
        m = _multiclass_metrics(test, cols)
        classes = judged.record.get("classes") or range(len(cols))
        confusion = {"classes": list(classes), "matrix": m.pop("confusion")}
        for sp in ("train", "validation"):
            part = judged.by_split.get(sp)
            if part is not None and not part.empty:
                mc = _multiclass_metrics(part, cols)
                m[f"accuracy_{sp}"], m[f"roc_auc_{sp}"] = mc["accuracy"], mc["roc_auc"]
        ks = ks_overtraining(
            judged.by_split, [(f"class{c}", TARGET, c, col) for c, col in enumerate(cols)], judged.ks_pvalue_min
        )
        return Figures(m, ks, {"confusion": confusion})

    def importance_value(self, data, score):  # the macro one-vs-rest AUC
        return M.multiclass_metrics(data.y, score, sample_weight=data.weights)["roc_auc"]

    def model_plots(self, drawn):
        from . import plots

        confusion = drawn.metrics.get("confusion")
        if not confusion:
            return []
        return [
            plots.multiclass_confusion(
                confusion,
                drawn.out / "confusion_matrix.png",
                f"{drawn.title}, test, most probable class",
                drawn.record.get("target"),
            )
        ]


def _multiclass_metrics(part, cols: list[str]) -> dict:
    return M.multiclass_metrics(
        part[TARGET].to_numpy(), part[cols].to_numpy(dtype=np.float64), part[WEIGHT].to_numpy(dtype=np.float64)
    )


class Anomaly(Task):
    """Trained on background only; the score (higher = more anomalous) is judged
    as a signal discriminant."""

    name = "anomaly"
    title = "Anomaly detection"
    uses_labels = True
    background_only = True
    separates_signal = True
    objectives = {"roc_auc": "maximize"}
    default_objective = "roc_auc"
    importance_metric = ("roc_auc", 1.0)
    leaderboard_columns = (
        ("roc_auc", "test AUC", ".4f"),
        ("bayes_auc", "Bayes-optimal AUC", ".4f"),
        ("sig_eff_at_bkg_0.1", "ε_S @ ε_B=0.1", ".3f"),
        ("z_max", "Z_max", ".3g"),
        ("optimal_cut", "best cut", ".3g"),
        ("ks_pvalue_background", "KS p (B)", ".3g"),
    )
    front_page_columns = ("roc_auc", "sig_eff_at_bkg_0.1", "z_max", "overtrained")
    rank_by = ("roc_auc", True)

    def objective_truth(self, data, objective):
        return _labels_for(data, objective, self)

    def objective_value(self, objective, y, score, w, X=None):
        return _discriminant_objective(objective, y, score, w)

    def figures(self, judged):
        m = {}
        _two_classes(judged.test, judged.what)
        _discriminant(m, judged.test, judged.bkg_efficiencies)
        _bayes(m, judged.test)
        doc = _optimal_cut(m, judged.test, judged)
        ks = ks_overtraining(judged.by_split, (("background", LABEL, 0, SCORE),), judged.ks_pvalue_min)
        return Figures(m, ks, {"significance": doc})

    def importance_value(self, data, score):
        return M.roc_auc(data.labels, score, sample_weight=data.weights)

    def model_plots(self, drawn):
        from . import plots

        return [
            plots.anomaly_scores(drawn.pred, drawn.out / "anomaly_scores.png", drawn.title),
            plots.significance_scan(drawn.pred, drawn.metrics, drawn.out / "significance_scan.png", drawn.title),
        ]


class Regression(Task):
    """A continuous ``target`` in physical units; the score is the prediction."""

    name = "regression"
    title = "Regression"
    target_kind = "regression target"
    objectives = {"r2": "maximize", **{k: "minimize" for k in ("mse", "mae", "rmse", "resolution")}}
    default_objective = "mse"
    importance_metric = ("mse", -1.0)
    leaderboard_columns = (
        ("mse", "MSE", ".4g"),
        ("mae", "MAE", ".4g"),
        ("r2", "R²", ".4f"),
        ("bias", "bias", ".3g"),
        ("resolution_68", "resolution (68 %)", ".4g"),
        ("relative_resolution_68", "rel. resolution", ".4f"),
        ("r2_train", "train R²", ".4f"),
    )
    front_page_columns = ("mse", "r2", "bias", "resolution_68")
    rank_by = ("mse", False)

    def targets(self, df, target, what, classes=None):
        """The ``target`` column as float64, in its physical units.

        Raises
        ------
        DataError
            A non-finite target value (or see :func:`target_column`).
        """
        y = target_column(df, target, self.target_kind, self.name, what).to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise DataError(
                f"{what}: regression target '{target}' has {int((~np.isfinite(y)).sum())} non-finite values"
            )
        return y

    def objective_value(self, objective, y, score, w, X=None):
        return float(M.regression_metrics(y, score, sample_weight=w)[objective])

    def figures(self, judged):
        test = judged.test
        if TARGET not in test.columns:
            raise DataError(f"{judged.what}: regression predictions have no '{TARGET}' column")
        m = dict(M.regression_metrics(test[TARGET], test[SCORE], test[WEIGHT]))
        tr = judged.by_split.get("train")
        if tr is not None and not tr.empty:
            rt = M.regression_metrics(tr[TARGET], tr[SCORE], tr[WEIGHT])
            m["mse_train"], m["r2_train"] = rt["mse"], rt["r2"]
        return Figures(m)

    def importance_value(self, data, score):
        return M.mse(data.y, score, sample_weight=data.weights)

    def model_plots(self, drawn):
        from . import plots

        return [plots.residuals(drawn.pred, drawn.out / "residuals.png", drawn.title, drawn.record.get("target"))]


class Clustering(Task):
    """Unsupervised clusters; the score is the cluster index (−1 = noise).
    Adjusted Rand index and purity compare the clusters with the labels, when
    the events have them."""

    name = "clustering"
    title = "Clustering"
    min_fit_events = 2
    objectives = {"silhouette": "maximize", "adjusted_rand": "maximize"}
    default_objective = "silhouette"
    leaderboard_columns = (
        ("n_clusters", "clusters", ""),
        ("silhouette", "silhouette", ".3f"),
        ("adjusted_rand", "adjusted Rand", ".3f"),
        ("purity", "purity", ".3f"),
        ("noise_fraction", "noise", ".3f"),
    )
    front_page_columns = ("n_clusters", "silhouette", "adjusted_rand", "purity")
    rank_by = ("silhouette", True)

    @property
    def needs_test_features(self):
        return True

    def objective_truth(self, data, objective):
        return _labels_for(data, objective, self) if objective == "adjusted_rand" else None

    def objective_value(self, objective, y, score, w, X=None):
        return float(M.clustering_metrics(X, score, y_true=y)[objective])

    def figures(self, judged):
        from .io import columns_of, read_parquet

        test, X = judged.test, None
        if judged.features:
            cols = judged.record.get("features") or [c for c in columns_of(judged.features) if is_feature(c)]
            ft = read_parquet(judged.features, columns=[EVENT_ID, *cols])  # only what the silhouette needs
            X = ft.set_index(EVENT_ID).loc[test[EVENT_ID].to_numpy(), cols].to_numpy(dtype=np.float64)
        labels = test[SCORE].to_numpy()
        if len(labels) < 2:
            raise DataError(f"{judged.what}: {len(labels)} test events are too few to evaluate clustering")
        y_true = test[LABEL].to_numpy() if labelled(test) else None
        return Figures(dict(M.clustering_metrics(X, labels, y_true=y_true)))

    def model_plots(self, drawn):
        from . import plots
        from .io import read_parquet

        if not drawn.features_test:
            return []
        ft = read_parquet(drawn.features_test, columns=[EVENT_ID, *drawn.record["features"]])
        test = drawn.pred[drawn.pred[SPLIT] == "test"].set_index(EVENT_ID)
        labels = test.loc[ft[EVENT_ID].to_numpy(), SCORE].to_numpy()
        return [
            plots.cluster_scatter(ft[drawn.record["features"]], labels, drawn.out / "clusters_pc12.png", drawn.title)
        ]


class DimReduction(Task):
    """Principal components; the score is the first component (its
    signal/background separation is reported when the events are labelled)."""

    name = "dimreduction"
    title = "Dimensionality reduction"
    min_fit_events = 2
    leaderboard_columns = (
        ("explained_variance_ratio_total", "explained variance", ".3f"),
        ("pc1_separation_auc", "PC1 S/B AUC", ".3f"),
    )
    rank_by = ("explained_variance_ratio_total", True)

    def figures(self, judged):
        test, m = judged.test, {}
        evr = (judged.record.get("info") or {}).get("explained_variance_ratio")
        if evr:
            for i, v in enumerate(evr, 1):
                m[f"explained_variance_ratio_pc{i}"] = float(v)
            m["explained_variance_ratio_total"] = float(sum(evr))
        if labelled(test) and test[LABEL].nunique() == 2:
            auc = M.roc_auc(test[LABEL], test[SCORE], test[WEIGHT])
            m["pc1_separation_auc"] = max(auc, 1.0 - auc)
        return Figures(m)

    def model_plots(self, drawn):
        from . import plots
        from .io import read_parquet

        if not drawn.features_test or len(drawn.record.get("features") or []) < 2:
            return []
        from .io import columns_of

        read = [c for c in (LABEL, WEIGHT) if c in columns_of(drawn.features_test)] + drawn.record["features"]
        ft = read_parquet(drawn.features_test, columns=read)
        y = ft[LABEL].to_numpy() if labelled(ft) else None
        return [
            plots.pca_figure(
                ft[drawn.record["features"]],
                y,
                drawn.out / "pca.png",
                f"{drawn.title}: principal components of its inputs (test)",
                weights=np.clip(ft[WEIGHT].to_numpy(dtype=np.float64), 0, None),
            )
        ]


#: The task of a model whose config entry names none.
DEFAULT = "classification"

#: Every task, in leaderboard order.
TASKS: dict[str, Task] = {
    t.name: t for t in (Classification(), Multiclass(), Anomaly(), Regression(), Clustering(), DimReduction())
}


def get(name: str) -> Task:
    """The task called ``name``.

    Raises
    ------
    ConfigError
        ``name`` is not a task, listing the known ones.
    """
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}") from None


def of(spec: dict) -> Task:
    """The task of a model's config entry, record or metadata (``task``, default :data:`DEFAULT`)."""
    return get(spec.get("task", DEFAULT))


def names() -> list[str]:
    """The task names, in leaderboard order."""
    return list(TASKS)
