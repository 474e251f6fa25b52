"""Names of the canonical columns every step agrees on.

The canonical event table (output of ``ingest``) holds ``event_id`` (int64,
unique), ``label`` (int8: 1 signal, 0 background), ``weight`` (float64 event
weight), optionally ``truth_llr`` (exact log-likelihood ratio, toy data only;
never a training feature), ``target`` (regression target) and ``process``
(the input's process index, a multiclass target; never a feature), plus feature
columns. Split tables add nothing; prediction tables add ``split`` and
``score`` (and ``prob_<i>`` per class for multiclass models).
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

#: Columns that are never used as training features.
RESERVED = (EVENT_ID, LABEL, WEIGHT, TRUTH_LLR, TARGET, SPLIT, SCORE, PROCESS)

SPLITS = ("train", "validation", "test")
