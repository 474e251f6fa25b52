"""Config that means what it says: schema bounds, empty selections, disabled
models; every problem is one line starting with the key."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from hepml_steps import config as hconfig
from hepml_steps.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def load(override: dict):
    """Merge ``override`` over config/config.yaml the way Snakemake does, then load."""
    config = copy.deepcopy(DEFAULTS)
    update_config(config, copy.deepcopy(override))
    return config, hconfig.load(config, override)


def error(override: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        load(override)
    msg = str(exc.value)
    assert "\n" not in msg  # one line
    return msg


def test_default_config_is_valid_and_gets_its_defaults():
    config, models = load({})
    assert "bdt" in models and models["bdt"]["task"] == "classification"
    assert config["evaluation"]["threshold"] == 0.5 and config["tracking"]["enabled"] is True


def test_empty_models_override_is_an_error_not_every_default_model():
    assert error({"models": {}}).startswith("models: the override is empty")


def test_empty_selection_is_an_error():
    assert error({"select_models": []}).startswith("select_models: [] selects no model")


def test_selected_but_disabled_model_is_named():
    msg = error({"select_models": ["bdt", "jet_multiplicity"]})  # disabled in config.yaml
    assert msg.startswith("select_models:") and "jet_multiplicity" in msg and "disabled" in msg
    msg = error({"select_models": ["mlp"], "models": {"mlp": {"enabled": False}}})
    assert "['mlp']" in msg


def test_selection_of_a_subset_runs_only_it():
    _, models = load({"select_models": ["bdt", "mlp"]})
    assert sorted(models) == ["bdt", "mlp"]


@pytest.mark.parametrize("threshold", [0.0, 1.0, 2.0, -0.5])
def test_threshold_must_lie_strictly_between_0_and_1(threshold):
    assert error({"evaluation": {"threshold": threshold}}).startswith("evaluation.threshold:")


@pytest.mark.parametrize(
    "override, key",
    [
        ({"seed": -1}, "seed"),
        ({"evaluation": {"bkg_efficiencies": []}}, "evaluation.bkg_efficiencies"),
        ({"evaluation": {"bkg_efficiencies": [1.5]}}, "evaluation.bkg_efficiencies.0"),
        ({"evaluation": {"ks_pvalue_min": 2}}, "evaluation.ks_pvalue_min"),
        ({"evaluation": {"inference_batch_size": 0}}, "evaluation.inference_batch_size"),
        ({"training": {"threads": 0}}, "training.threads"),
        ({"data": {"toy": {"n_events": 0}}}, "data.toy.n_events"),
        ({"data": {"files": {"inputs": [{"path": "a.root", "weight": 0}]}}}, "data.files.inputs.0.weight"),
        ({"data": {"files": {"inputs": [{"path": "a.root", "process": -1}]}}}, "data.files.inputs.0.process"),
        ({"energy": {"cpu_watts_per_core": 0}}, "energy.cpu_watts_per_core"),
        ({"tuning": {"n_trials": 0}}, "tuning.n_trials"),
        ({"models": {"bdt": {"tune": {"timeout": 0}}}}, "models.bdt.tune.timeout"),
        ({"split": {"fractions": {"train": 0.6, "validation": 0.3, "test": 0.3}}}, "split.fractions must sum to 1"),
        ({"data": {"source": "files"}}, "data.files.inputs"),
    ],
)
def test_numeric_and_structural_bounds_name_the_key(override, key):
    msg = error(override)
    assert msg.startswith(f"{key}:") or (" " in key and msg.startswith(key)), msg


def test_validation_error_is_the_reason_not_a_schema_dump():
    msg = error({"evaluation": {"thresold": 0.5}})
    assert msg == "evaluation: Additional properties are not allowed ('thresold' was unexpected)"
    msg = error({"evaluation": {"threshold": "high"}})
    assert msg == "evaluation.threshold: 'high' is not of type 'number'"


def test_model_errors_name_the_model_and_key():
    assert error({"models": {"x": {"family": "nope"}}}).startswith("models.x.family: unknown model family 'nope'")
    assert error({"models": {"r": {"family": "xgboost", "task": "regression"}}}).startswith("models.r.target:")
    assert error({"models": {"k": {"family": "knn", "gpus": 1}}}).startswith("models.k.gpus:")
    assert error({"models": {"t": {"family": "xgboost", "task": "ranking"}}}) == (
        "models.t.task: unknown task 'ranking'; known tasks: classification, multiclass, anomaly, regression, "
        "clustering, dimreduction"
    )


def test_a_feature_listed_twice_is_named():
    """A model's features with a repeated column are refused at validation (scoring read it twice)."""
    msg = error({"models": {"bdt": {"family": "xgboost", "features": ["j1_pt", "m_jj", "j1_pt"]}}})
    assert msg.startswith("models.bdt.features:") and "non-unique" in msg


def test_exit_on_error_prints_one_line_and_exits_1(capsys):
    def bad():
        raise ConfigError("evaluation.threshold: 2.0 is greater than or equal to the maximum of 1")

    with pytest.raises(SystemExit) as exc:
        hconfig.exit_on_error(bad)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err == "hepml: error: evaluation.threshold: 2.0 is greater than or equal to the maximum of 1\n"


@pytest.mark.parametrize(
    "override, key",
    [
        ({"evaluation": {"threshold": float("nan")}}, "evaluation.threshold"),
        ({"evaluation": {"bkg_efficiencies": [float("nan"), 0.1]}}, "evaluation.bkg_efficiencies.0"),
        ({"tuning": {"timeout": float("nan")}}, "tuning.timeout"),
        ({"energy": {"cpu_watts_per_core": float("nan")}}, "energy.cpu_watts_per_core"),
    ],
)
def test_nan_passes_no_bound(override, key):
    """JSON schema comparisons with NaN are all false: NaN is refused on its own."""
    assert error(override) == f"{key}: not a finite number (NaN or infinity)"


@pytest.mark.parametrize("results", ["r s?mode=ro", "out#1", "-r", "a" * 1025])
def test_results_that_would_change_meaning_are_refused(results):
    """'?' and '#' would be read as part of the sqlite URI of the default store,
    a leading '-' as an option of the step."""
    assert error({"results": results}).startswith("results:")


def test_reserved_and_overlong_model_names_are_refused():
    assert error({"select_models": ["summary"], "models": {"summary": {"family": "xgboost"}}}).startswith(
        "models.summary: the name 'summary' is reserved"
    )
    assert error({"models": {"m" * 65: {"family": "xgboost"}}}).startswith("models:")
