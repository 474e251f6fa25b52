"""Model bundles: train on a small NanoAOD-like ROOT sample, score raw columns
(bundle, ONNX on raw inputs), refuse swapped preprocessing / missing columns."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hepml_steps import bundle, features, ingest, predict, registry, split, train
from hepml_steps.errors import DataError
from tests.nanoaod_files import sample

COLUMNS = ["MET_pt", "Jet_pt[0]", "Jet_pt[1]", "len(Jet_pt)", "max(Jet_btagDeepB)", "PV_npvs", "ht"]
ALIASES = {"ht": "sum(Jet_pt)"}
DERIVED = {"log_met": "log(MET_pt + 1)"}
MODELS = {
    "bdt": {"family": "xgboost", "task": "classification", "params": {"n_estimators": 30, "max_depth": 3}},
    "mlp": {
        "family": "mlp",
        "task": "classification",
        "params": {"hidden_layers": [16], "epochs": 2, "batch_size": 256},
    },
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ingest -> split -> features -> train (bdt, mlp) on 2 x 1500 events; the model dirs."""
    d = tmp_path_factory.mktemp("bundle")
    sig = sample(d / "in", "ttree", True, 1500, seed=1)[0]
    bkg = sample(d / "in", "ttree", False, 1500, seed=1)[0]
    settings = {"columns": COLUMNS, "aliases": ALIASES, "cut": None}
    ingest.ingest(
        [{"path": str(sig), "label": 1}, {"path": str(bkg), "label": 0}],
        d / "events.parquet",
        columns=COLUMNS,
        aliases=ALIASES,
        nonfinite="keep",
    )
    raw = {s: str(d / f"raw_{s}.parquet") for s in split.SPLITS}
    split.split(str(d / "events.parquet"), raw, {"train": 0.6, "validation": 0.2, "test": 0.2})
    prepared = {s: str(d / f"f_{s}.parquet") for s in split.SPLITS}
    features.features(raw, prepared, str(d / "transform.json"), derived=DERIVED)
    dirs = {}
    for m, spec in MODELS.items():
        dirs[m] = d / "models" / m
        train.train(
            prepared["train"],
            prepared["validation"],
            m,
            spec,
            str(dirs[m]),
            str(d / f"{m}.json"),
            transform=str(d / "transform.json"),
            ingest=settings,
        )
    return {"dir": d, "models": dirs, "raw": raw, "prepared": prepared}


def _raw_test(t):
    import pandas as pd

    return pd.read_parquet(t["raw"]["test"])


@pytest.mark.parametrize("model", list(MODELS))
def test_bundle_scores_equal_predict(trained, model):
    b = bundle.load(trained["models"][model])
    raw = _raw_test(trained)
    got = b.score(raw)
    predict.predict(str(trained["models"][model]), trained["prepared"], str(trained["dir"] / f"{model}.p.parquet"))
    import pandas as pd

    p = pd.read_parquet(trained["dir"] / f"{model}.p.parquet")
    want = p[p["split"] == "test"].set_index("event_id").loc[raw["event_id"], "score"].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert b.raw_columns[:2] == ["MET_pt", "Jet_pt_0"]


@pytest.mark.parametrize("model", list(MODELS))
def test_onnx_takes_raw_inputs(trained, model):
    import onnxruntime as ort

    d = trained["models"][model]
    meta = json.loads((d / registry.META_FILE).read_text())
    assert meta["onnx_input"] == "raw", meta.get("onnx_raw_refused")
    sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    props = sess.get_modelmeta().custom_metadata_map
    names = json.loads(props["hepml_input_names"])
    assert names == meta["onnx_input_names"] and props["hepml_task"] == "classification"
    assert sess.get_inputs()[0].name == "raw"
    raw = features._add_derived(_raw_test(trained), DERIVED)  # the ONNX input is after derived columns
    got = sess.run(["score"], {"raw": raw[names].to_numpy(np.float32)})[0]
    want = bundle.load(d).score(_raw_test(trained))
    assert float(np.abs(got - want).max()) < 1e-4


def test_refuses_swapped_preprocessing(trained, tmp_path):
    d = tmp_path / "bdt"
    shutil.copytree(trained["models"]["bdt"], d)
    pre = json.loads((d / bundle.FILE).read_text())
    pre["transform"]["mean"][0] += 1.0
    (d / bundle.FILE).write_text(json.dumps(pre))
    with pytest.raises(DataError, match=r"model 'bdt'.*does not match"):
        bundle.load(d)


def test_refuses_other_hepml_version(trained, tmp_path):
    d = tmp_path / "bdt"
    shutil.copytree(trained["models"]["bdt"], d)
    meta = json.loads((d / registry.META_FILE).read_text())
    meta["hepml_version"] = "0.0.1"
    (d / registry.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"model 'bdt'.*hepml 0.0.1"):
        bundle.load(d)


def test_refuses_missing_column(trained):
    b = bundle.load(trained["models"]["bdt"])
    with pytest.raises(DataError, match=r"model 'bdt'.*Jet_pt_0"):
        b.score(_raw_test(trained).drop(columns=["Jet_pt_0"]))


def test_mlflow_model_takes_the_raw_columns_with_their_integer_types(trained, tmp_path, monkeypatch):
    """The MLflow model of a bundle is typed by the raw test split's columns: NanoAOD counts
    (``len(Jet_pt)``: int64, ``PV_npvs``: int32) are ``long``, floats ``double``; logging it with
    that split's first rows as the example works (a ``double`` signature refused int64 columns),
    and pyfunc scores the raw split, int columns and all, as the bundle does."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from hepml_steps import mlflow_model

    raw = _raw_test(trained)
    model_dir = trained["models"]["bdt"]
    meta = json.loads((model_dir / registry.META_FILE).read_text())
    cols = mlflow_model.input_columns(str(model_dir), meta)
    ints = [c for c in cols if raw[c].dtype.kind == "i"]
    assert ints  # the sample has integer columns: the case this test is about
    example = mlflow_model.input_example(trained["raw"]["test"], cols)
    sig = mlflow_model.signature(meta, cols, example).inputs.input_dict()
    assert {c: sig[c].type.name for c in ints} == dict.fromkeys(ints, "long")
    assert {sig[c].type.name for c in cols if c not in ints} == {"double"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bundle", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp)
    mlflow_model.log(str(model_dir), run.info.run_id, exp, uri, meta, example)
    got = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(raw[cols])
    want = bundle.load(model_dir).score(raw[cols])
    np.testing.assert_allclose(got["score"].to_numpy(), want, rtol=0, atol=1e-6)
