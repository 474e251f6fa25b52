"""ONNX export helpers for families whose library does not export directly.

Every exported model takes a float32 input named ``features`` of shape
``[N, n_features]`` and gives an output named ``score`` of shape ``[N]`` equal
to the family's ``predict_score`` (signal probability for classifiers;
``[N, K]`` class probabilities for multiclass models).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import FamilyError
from ..io import atomic_path

OPSET = 15


def _with_score_output(
    model, source: str, column: int | None, n_classes: int | None = None, order: list[int] | None = None
):
    """Append nodes that turn output ``source`` into a 1-D ``score`` output
    (``n_classes``: keep the [N, K] probabilities, columns taken in ``order``)."""
    import onnx
    from onnx import TensorProto, helper

    g = model.graph
    nodes = []
    flat_in = source
    if n_classes and order is not None:
        g.initializer.append(helper.make_tensor("hepml_order", TensorProto.INT64, [len(order)], order))
        nodes.append(helper.make_node("Gather", [source, "hepml_order"], ["score"], axis=1))
    elif n_classes:
        nodes.append(helper.make_node("Identity", [source], ["score"]))
    elif column is not None:
        g.initializer.append(helper.make_tensor("hepml_col", TensorProto.INT64, [], [column]))
        nodes.append(helper.make_node("Gather", [source, "hepml_col"], ["score"], axis=1))
    else:
        g.initializer.append(helper.make_tensor("hepml_shape", TensorProto.INT64, [1], [-1]))
        nodes.append(helper.make_node("Reshape", [flat_in, "hepml_shape"], ["score"]))
    g.node.extend(nodes)
    if not any(op.domain in ("", "ai.onnx") for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", OPSET))
    del g.output[:]
    shape = [None, n_classes] if n_classes else [None]
    g.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, shape))
    onnx.checker.check_model(model)
    return model


def export_xgboost(booster, task: str, n_features: int, path) -> None:
    """Write an XGBoost booster as ONNX whose ``score`` equals its predictions.

    Parameters
    ----------
    booster : xgboost.Booster
    task : str
        ``classification`` (score = P(signal)), ``multiclass`` (K columns) or ``regression``.
    n_features : int
        Width of the ``features`` input.
    path : path-like
        The file to write (atomically).

    Raises
    ------
    FamilyError
        When the converted model does not reproduce the booster's scores on
        probe events (nothing is written).
    """
    import numpy as np
    import xgboost as xgb
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    def convert(order=None):
        onx = convert_xgboost(
            booster, initial_types=[("features", FloatTensorType([None, n_features]))], target_opset=OPSET
        )
        if task == "classification":
            return _with_score_output(onx, "probabilities", 1)
        if task == "multiclass":
            k = int(json.loads(booster.save_config())["learner"]["learner_model_param"]["num_class"])
            return _with_score_output(onx, "probabilities", None, n_classes=k, order=order)
        return _with_score_output(onx, onx.graph.output[0].name, None)

    onx = convert()
    # onnxmltools treats two classes as a binary model and swaps the probability
    # columns of a 2-class softprob booster: check against XGBoost on probe
    # events and fix the order (or refuse) rather than write a wrong model
    probe = np.random.default_rng(0).normal(0.0, 2.0, (256, n_features)).astype(np.float32)
    want = booster.predict(xgb.DMatrix(probe)).reshape(len(probe), -1)
    got = _run(onx, probe).reshape(len(probe), -1)
    if task == "multiclass" and not np.allclose(got, want, atol=1e-5) and np.allclose(got[:, ::-1], want, atol=1e-5):
        onx = convert(order=list(range(want.shape[1]))[::-1])
        got = _run(onx, probe).reshape(len(probe), -1)
    if not np.allclose(got, want, atol=1e-5):
        raise FamilyError(
            f"ONNX export of the XGBoost {task} model does not reproduce its scores "
            f"(max difference {float(np.abs(got - want).max()):.3g}); not written"
        )
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(onx.SerializeToString())


def _run(model, X):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["score"], {"features": X})[0]


# --------------------------------------------------------------------------- preprocessing in the graph

#: name of the raw input of an ONNX model that includes its preprocessing
RAW_INPUT = "raw"
#: largest |ONNX - bundle| score difference accepted on probe events
RAW_TOLERANCE = 1e-4


def raw_input_columns(transform: dict) -> list[str]:
    """The columns of the raw ONNX input, in order: the transform's numeric
    columns (after derived columns, before imputation/standardisation/PCA)."""
    cats = transform.get("categories") or {}
    return [c for c in transform["columns"] if c not in cats]


def _preprocessing_nodes(transform: dict, features: list[str], handles_missing: bool):
    """Nodes and initializers turning ``raw`` [N, n_raw] into ``features`` [N, n_features] (float32)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    cats = transform.get("categories") or {}
    if cats:
        raise FamilyError(f"categorical column(s) {sorted(cats)}: their one-hot encoding is not put in the ONNX graph")
    numeric = raw_input_columns(transform)
    pca = "pca_components" in transform
    nodes, inits = [], []

    def const(name, value, dtype=np.float64):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), f"hepml_pre_{name}"))
        return f"hepml_pre_{name}"

    def node(op, inputs, name, **kw):
        out = f"hepml_pre_{name}"
        nodes.append(helper.make_node(op, inputs, [out], **kw))
        return out

    x = node("Cast", [RAW_INPUT], "x64", to=TensorProto.DOUBLE)
    if transform.get("standardize") and numeric:
        x = node(
            "Div",
            [node("Sub", [x, const("mean", transform["mean"])], "centred"), const("std", transform["std"])],
            "scaled",
        )
    nan = node("IsNaN", [x], "isnan")
    if pca or not handles_missing:
        fill = [transform["fill"][c] for c in numeric]
        x = node("Where", [nan, const("fill", fill), x], "filled")
    parts = [x]
    ind = [numeric.index(c) for c in transform.get("missing_indicators") or []]
    if ind:
        picked = node("Gather", [nan, const("ind", ind, np.int64)], "ind_nan", axis=1)
        parts.append(node("Cast", [picked], "ind_val", to=TensorProto.DOUBLE))
    out = node("Concat", parts, "outputs", axis=1) if len(parts) > 1 else x
    if pca:
        comps = np.asarray(transform["pca_components"], dtype=np.float64).T
        out = node(
            "MatMul",
            [node("Sub", [out, const("pca_mean", transform["pca_mean"])], "pca_centred"), const("pca_t", comps)],
            "pcs",
        )
    outputs = list(transform["outputs"])
    idx = [outputs.index(f) for f in features]
    out = node("Gather", [out, const("feature_index", idx, np.int64)], "selected", axis=1)
    nodes.append(helper.make_node("Cast", [out], ["features"], to=TensorProto.FLOAT))
    return nodes, inits, numeric


def with_preprocessing(path, bundle, props: dict) -> list[str]:
    """Rewrite the ONNX model at ``path`` (input ``features``) so it takes the raw
    feature vector ``raw`` and includes the bundle's preprocessing; check it.

    Parameters
    ----------
    path : path-like
        An ONNX model written by a family's ``to_onnx``.
    bundle : hepml_steps.bundle.Bundle
        The model with its preprocessing (the reference scores).
    props : dict
        Metadata (string values) to set on the model.

    Returns
    -------
    list of str
        The raw input columns, in order.

    Raises
    ------
    FamilyError
        A preprocessing step cannot be expressed in ONNX, or the rewritten
        model differs from the bundle by more than :data:`RAW_TOLERANCE` on
        probe events (the file is then left as it was).
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from .. import dataset

    transform = bundle.transform
    handles = dataset.handles_missing(bundle.meta["family"])
    nodes, inits, numeric = _preprocessing_nodes(transform, bundle.features, handles)
    model = onnx.load(str(path))
    g = model.graph
    if [i.name for i in g.input] != ["features"]:
        raise FamilyError(f"ONNX model inputs {[i.name for i in g.input]}, expected ['features']")
    new_nodes = nodes + list(g.node)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(inits)
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(RAW_INPUT, TensorProto.FLOAT, [None, len(numeric)]))
    opset = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset.version < 13:
        opset.version = 13
    helper.set_model_props(model, {**props, "hepml_input": RAW_INPUT, "hepml_input_names": json.dumps(numeric)})
    onnx.checker.check_model(model)
    # probe events: around the train mean (raw units) with some missing values
    rng = np.random.default_rng(1)
    n = 512
    mean = np.asarray(transform.get("mean") or np.zeros(len(numeric)))
    std = np.asarray(transform.get("std") or np.ones(len(numeric)))
    raw = (mean + std * rng.normal(0, 1.5, (n, len(numeric)))).astype(np.float32)
    raw[rng.random(raw.shape) < 0.05] = np.nan
    import pandas as pd

    want = bundle.score(pd.DataFrame(raw.astype(np.float64), columns=numeric), derived=False)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["score"], {RAW_INPUT: raw})[0]
    diff = float(np.nanmax(np.abs(got.reshape(want.shape) - want))) if want.size else 0.0
    if not diff < RAW_TOLERANCE:
        raise FamilyError(
            f"the ONNX model with preprocessing differs from the model by {diff:.3g} "
            f"(> {RAW_TOLERANCE}) on probe events"
        )
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(model.SerializeToString())
    return numeric
