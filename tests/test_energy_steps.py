"""Energy records of the pipeline steps: train, tune and predict are metered, the
numbers are sane and say how they were obtained, and they reach the leaderboard."""

import json

import pandas as pd
import pytest

from hepml_steps import evaluate as ev
from hepml_steps import leaderboard as lb
from hepml_steps import predict as pr
from hepml_steps import train as tr
from hepml_steps import tune as tu
from hepml_steps.energy import step_meter
from hepml_steps.errors import ConfigError
from tests.conftest import make_events
from tests.test_energy import domain, set_uj

SPLITS = ("train", "validation", "test")


@pytest.fixture
def prepared(tmp_path):
    paths = {}
    for i, s in enumerate(SPLITS):
        paths[s] = str(tmp_path / f"{s}.parquet")
        make_events(3000, seed=20 + i).to_parquet(paths[s], index=False)
    return paths


def _sane(e, events):
    assert e["events"] == events
    assert e["energy_j"] > 0 and e["wall_s"] > 0 and e["cpu_s"] >= 0 and e["peak_rss_mib"] > 0
    assert e["events_per_s"] == pytest.approx(events / e["wall_s"])
    assert e["j_per_event"] == pytest.approx(e["energy_j"] / events)
    assert e["method"] and e["notes"]


def test_train_tune_predict_write_energy_records(prepared, tmp_path):
    settings = {"cpu_watts_per_core": 20.0, "powercap_root": str(tmp_path / "no-rapl")}
    spec = {"family": "xgboost", "params": {"n_estimators": 40}, "tune": {"n_trials": 3, "objective": "roc_auc"}}
    tuned = tu.tune(
        prepared["train"],
        prepared["validation"],
        "bdt",
        spec,
        str(tmp_path / "t.json"),
        str(tmp_path / "t.csv"),
        energy=settings,
    )
    _sane(tuned["energy"], 3 * 3000)
    rec = tr.train(
        prepared["train"],
        prepared["validation"],
        "bdt",
        spec,
        str(tmp_path / "bdt"),
        str(tmp_path / "bdt.json"),
        tuned=str(tmp_path / "t.json"),
        energy=settings,
    )
    e = rec["energy"]["train"]
    _sane(e, 3000)
    assert e["method"] == "estimate:cpu-time" and "estimate" in " ".join(e["notes"])
    assert e["cpu_energy_j"] == pytest.approx(20.0 * e["cpu_s"])
    assert e["device"] == "cpu"
    assert rec["energy"]["tuning"]["energy_j"] == tuned["energy"]["energy_j"]
    assert json.loads((tmp_path / "bdt.json").read_text())["energy"]["train"]["energy_j"] == e["energy_j"]

    precord = pr.predict(
        str(tmp_path / "bdt"),
        prepared,
        str(tmp_path / "p.parquet"),
        batch_size=500,
        record_out=str(tmp_path / "p.json"),
        energy=settings,
    )
    inf = precord["energy"]["inference"]
    _sane(inf, 3000)
    assert inf["batch_size"] == 500 and inf["split"] == "test"
    assert json.loads((tmp_path / "p.json").read_text()) == json.loads(json.dumps(precord))

    met = ev.evaluate(
        str(tmp_path / "p.parquet"),
        str(tmp_path / "m.json"),
        "bdt",
        "classification",
        extra=str(tmp_path / "bdt.json"),
        inference=str(tmp_path / "p.json"),
    )
    assert set(met["extra"]["energy"]) == {"train", "tuning", "inference"}
    rows = lb.leaderboard([str(tmp_path / "m.json")], str(tmp_path / "lb.csv"), str(tmp_path / "lb.md"))
    csv = pd.read_csv(tmp_path / "lb.csv")
    for col in ("train_j_per_event", "inference_events_per_s", "tuning_energy_j", "train_method"):
        assert col in csv.columns
    assert csv.loc[0, "train_method"] == "estimate:cpu-time" and rows[0]["inference_j_per_event"] > 0
    assert "estimate:cpu-time" in (tmp_path / "lb.md").read_text()


def test_training_uses_rapl_when_counters_are_readable(prepared, tmp_path):
    root = tmp_path / "powercap"
    pkg = domain(root / "intel-rapl:0", "package-0", 1_000_000)
    meter = step_meter({"powercap_root": str(root)})
    with meter:
        set_uj(pkg, 4_000_000)  # +3 J while "training"
    meter.set_events(1000)
    assert meter.record["method"] == "rapl" and meter.record["cpu_energy_j"] == pytest.approx(3.0)
    assert meter.record["j_per_event"] == pytest.approx(meter.record["energy_j"] / 1000)


def test_gpu_metered_only_when_visible_and_usable(monkeypatch):
    from hepml_steps import energy

    monkeypatch.setattr(energy, "gpu_visible", lambda nvml=None: False)
    assert step_meter({}, requested_device="cuda", gpu_capable=True).device == "cpu"
    monkeypatch.setattr(energy, "gpu_visible", lambda nvml=None: True)
    assert step_meter({}, requested_device="auto", gpu_capable=True).device == "cuda"
    assert step_meter({}, requested_device="cuda", gpu_capable=False).device == "cpu"
    assert step_meter({}, requested_device="cpu", gpu_capable=True).device == "cpu"


def test_unknown_energy_setting_is_named():
    with pytest.raises(ConfigError, match="cpu_watt"):
        step_meter({"cpu_watt": 3})
