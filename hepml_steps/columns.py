"""Names of the canonical columns every step agrees on.

The canonical event table (output of ``ingest``) holds ``event_id`` (int64,
unique), ``label`` (int8: 1 signal, 0 background; absent when the inputs
are unlabelled, see :class:`hepml_steps.ingest.Labels`), ``weight`` (float64 event
weight), optionally ``truth_llr`` (exact log-likelihood ratio, toy data only;
never a training feature), ``target`` (regression target) and ``process``
(the input's process index, a multiclass target; never a feature), plus feature
columns. Split tables add nothing. Prepared (feature) tables add
``target:<name>``, the unstandardised copy of a model's target column
``<name>`` (see :mod:`hepml_steps.features`); prediction tables add ``split``
and ``score`` (and ``prob_<i>`` per class for multiclass models), stored in
the model library's dtype (float32 for XGBoost and torch) and read back as
float64 (:func:`widen_scores`).
"""

EVENT_ID = "event_id"
LABEL = "label"
WEIGHT = "weight"
TRUTH_LLR = "truth_llr"
TARGET = "target"
SPLIT = "split"
SCORE = "score"
#: per-input process index (``data.files.inputs[].process``): the class column of
#: TMVA-style multiclass training, one input file per process
PROCESS = "process"
#: prefix of the per-class probability columns of multiclass predictions (prob_0, prob_1, ...)
PROB = "prob_"

#: prefix of the features step's unstandardised copy of a model's target (``target:m_jj``)
TARGET_COPY = "target:"

#: Columns that are never used as training features.
RESERVED = (EVENT_ID, LABEL, WEIGHT, TRUTH_LLR, TARGET, SPLIT, SCORE, PROCESS)

SPLITS = ("train", "validation", "test")


def widen_scores(df):
    """``df`` (a prediction table read with pandas) with its float32 ``score`` and
    ``prob_<i>`` columns as float64, in place (value for value): what
    ``predict_score`` gave before the predict step stored them narrow."""
    for c in df.columns:
        if (c == SCORE or c.startswith(PROB)) and str(df[c].dtype) == "float32":
            df[c] = df[c].astype("float64")
    return df


def target_copy(name: str) -> str:
    """The prepared table's column holding target ``name`` in physical units."""
    return TARGET_COPY + name


def is_feature(column: str) -> bool:
    """Whether ``column`` may be a training feature: not reserved, not a target copy."""
    return column not in RESERVED and not column.startswith(TARGET_COPY)
