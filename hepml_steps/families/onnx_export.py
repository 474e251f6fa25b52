"""ONNX export helpers for families whose library does not export directly.

Every exported model takes a float32 input named ``features`` of shape
``[N, n_features]`` and gives an output named ``score`` of shape ``[N]`` equal
to the family's ``predict_score`` (signal probability for classifiers;
``[N, K]`` class probabilities for multiclass models).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_path

OPSET = 15


def _with_score_output(model, source: str, column: int | None, n_classes: int | None = None):
    """Append nodes that turn output ``source`` into a 1-D ``score`` output
    (``n_classes``: keep the [N, K] probabilities as they are)."""
    import onnx
    from onnx import TensorProto, helper

    g = model.graph
    nodes = []
    flat_in = source
    if n_classes:
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
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    onx = convert_xgboost(booster, initial_types=[("features", FloatTensorType([None, n_features]))],
                          target_opset=OPSET)
    if task == "classification":
        onx = _with_score_output(onx, "probabilities", 1)
    elif task == "multiclass":
        k = int(json.loads(booster.save_config())["learner"]["learner_model_param"]["num_class"])
        onx = _with_score_output(onx, "probabilities", None, n_classes=k)
    else:
        onx = _with_score_output(onx, onx.graph.output[0].name, None)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(onx.SerializeToString())
