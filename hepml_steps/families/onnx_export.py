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


def _with_score_output(model, source: str, column: int | None, n_classes: int | None = None,
                       order: list[int] | None = None):
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
        onx = convert_xgboost(booster, initial_types=[("features", FloatTensorType([None, n_features]))],
                              target_opset=OPSET)
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
        raise FamilyError(f"ONNX export of the XGBoost {task} model does not reproduce its scores "
                          f"(max difference {float(np.abs(got - want).max()):.3g}); not written")
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(onx.SerializeToString())


def _run(model, X):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["score"], {"features": X})[0]
