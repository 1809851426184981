"""Configuration files are checked against schemas: every key the shipped configs use is accepted, and a
misspelt key is refused naming the file, the key's path and the nearest valid key."""

import inspect
from pathlib import Path

import pytest

from response_model.config import config_dir
from response_model.errors import ConfigError
from response_model.settings import TrainingConfig, load_source_config, load_training_config

ROOT = Path(__file__).parent.parent
TRAINING = [*sorted((ROOT / "configs" / "train").glob("*.yaml")), ROOT / "tests" / "data" / "train_smoke.yaml"]
SOURCES = sorted((ROOT / "configs" / "sources").glob("*.yaml"))


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.name)
def test_every_shipped_training_config_is_valid_and_read_unchanged(path):
    import yaml

    assert load_training_config(path) == yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_every_shipped_source_config_is_valid(path):
    import yaml

    if yaml.safe_load(path.read_text())["format"] == "outcome_table":  # a registry extract's mapping
        from response_model.sources.outcome_tables import parse_spec

        parse_spec(yaml.safe_load(path.read_text()))
        with pytest.raises(ConfigError, match="outcomes import"):
            load_source_config(path)
        return
    assert load_source_config(path)["format"] in ("table", "cbioportal", "canonical")


def _edited(tmp_path, source: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text
    out = tmp_path / f"edited-{source.name}"
    out.write_text(text.replace(old, new, 1))
    return out


SMOKE = ROOT / "tests" / "data" / "train_smoke.yaml"
DEFAULT = ROOT / "configs" / "train" / "default.yaml"


@pytest.mark.parametrize(("source", "old", "new", "wanted"), [
    (SMOKE, "n_repeats: 1", "n_repeat: 1", "cv: unknown key(s) n_repeat (did you mean 'n_repeats'?)"),
    (SMOKE, "primary_resistance: {enabled", "primary_resistance: {enable",
     "outcomes.primary_resistance: unknown key(s) enable (did you mean 'enabled'?)"),
    (SMOKE, "registered_model:", "registerd_model:",
     "unknown key(s) registerd_model (did you mean 'registered_model'?)"),
    (SMOKE, "num_leaves: 4", "num_leave: 4", "num_leave in model.defaults (did you mean 'num_leaves'?)"),
    (SMOKE, "auc_lower: 0.5", "auc_lowr: 0.5", "auc_lowr in gate (did you mean 'auc_lower'?)"),
    (SMOKE, "tki_antiangiogenic: {monotone", "tki_antiangiogenc: {monotone",
     "tki_antiangiogenc in model (did you mean 'tki_antiangiogenic'?)"),
    (SMOKE, "regimen_classes: [checkpoint_inhibitor,", "regimen_classes: [checkpoint_inhibitors,",
     "did you mean 'checkpoint_inhibitor'?"),
    (SMOKE, "logistic: {C: 1.0}", "logistik: {C: 1.0}",
     "baselines: unknown key(s) logistik (did you mean 'logistic'?)"),
    (DEFAULT, "  inner_splits: 2", "  inner_split: 2",
     "search: unknown key(s) inner_split (did you mean 'inner_splits'?)"),
    (DEFAULT, "min_child_samples: [30, 50, 100]", "min_child_sample: [30, 50, 100]",
     "min_child_sample in search.space (did you mean 'min_child_samples'?)"),
    (DEFAULT, "  lightgbm_dask_min_rows: 200000", "  lightgbm_dask_min_row: 200000",
     "did you mean 'lightgbm_dask_min_rows'?"),
    (DEFAULT, "  n_splits: 5", "  n_splits: five", "cv.n_splits: Input should be a valid integer"),
    (DEFAULT, "      num_leaves: 2\n", "      num_leave: 2\n",
     "num_leave in model.tki_antiangiogenic.objective_response (did you mean 'num_leaves'?)"),
])
def test_a_misspelt_training_key_is_refused_with_the_nearest_valid_key(tmp_path, source, old, new, wanted):
    path = _edited(tmp_path, source, old, new)
    with pytest.raises(ConfigError) as caught:
        load_training_config(path)
    assert str(caught.value).startswith(f"{path}: not a valid training configuration: ")
    assert wanted in str(caught.value)


@pytest.mark.parametrize(("name", "old", "new", "wanted"), [
    ("chowell2022.yaml", "\nignore:", "\nignor:", "unknown key(s) ignor (did you mean 'ignore'?)"),
    ("chowell2022.yaml", "  age: {column: Age}", "  age: {colum: Age}",
     "columns.age: unknown key(s) colum (did you mean 'column'?)"),
    ("chowell2022.yaml", "  albumin: {column", "  albumen: {column",
     "columns.albumen: not a canonical cohort field (did you mean 'albumin'?)"),
    ("example_hospital.yaml", "status\", wildtype: [wt", "status\", wildtyp: [wt",
     "gene_columns.CTNNB1: unknown key(s) wildtyp (did you mean 'wildtype'?)"),
    ("cbioportal.yaml", "pseudonymise: false", "pseudonymize: false", "(did you mean 'pseudonymise'?)"),
    ("cbioportal.yaml", "    field: sex", "    feld: sex",
     "patient_attributes.SEX: unknown key(s) feld (did you mean 'field'?)"),
    ("canonical.yaml", "format: canonical", "format: canonicl", "(did you mean 'canonical'?)"),
])
def test_a_misspelt_source_key_is_refused_with_the_nearest_valid_key(tmp_path, name, old, new, wanted):
    path = _edited(tmp_path, config_dir() / "sources" / name, old, new)
    with pytest.raises(ConfigError) as caught:
        load_source_config(path)
    assert str(path) in str(caught.value) and wanted in str(caught.value)


def test_the_model_parameters_allowed_are_those_of_the_response_classifier():
    from response_model.modeling.estimators import ResponseClassifier
    from response_model.settings import _classifier_params

    assert set(_classifier_params()) == set(inspect.signature(ResponseClassifier.__init__).parameters)


def test_a_training_run_refuses_a_misspelt_config_before_training(tmp_path):
    from response_model.modeling.train import train

    with pytest.raises(ConfigError, match="n_repeat"):
        train(_edited(tmp_path, SMOKE, "n_repeats: 1", "n_repeat: 1"), register=False)


def test_the_schema_has_a_field_for_every_top_level_key_of_the_default_config():
    import yaml

    assert set(yaml.safe_load(DEFAULT.read_text())) <= set(TrainingConfig.model_fields)


def test_a_misspelt_baseline_parameter_is_refused(tmp_path):
    path = _edited(tmp_path, SMOKE, "logistic: {C: 1.0}", "logistic: {c: 1.0}")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) c in baselines.logistic \(did you mean 'C'\?\)"):
        load_training_config(path)


def test_per_outcome_overrides_apply_to_that_outcome_only():
    from response_model.modeling.train import _model_params

    config = {"model": {"defaults": {"C": 0.1, "num_leaves": 4},
                        "tki_antiangiogenic": {"num_leaves": 8, "monotone_constraints": {"albumin": 1},
                                               "objective_response": {"C": 0.01}}}}
    response = _model_params(config, "tki_antiangiogenic", "objective_response")
    resistance = _model_params(config, "tki_antiangiogenic", "primary_resistance")
    assert response == {"C": 0.01, "num_leaves": 8, "monotone_constraints": {"albumin": 1}}
    assert resistance == {"C": 0.1, "num_leaves": 8, "monotone_constraints": {"albumin": -1}}
    assert _model_params(config, "checkpoint_inhibitor", "objective_response")["num_leaves"] == 4


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.name)
def test_every_column_a_shipped_training_config_names_is_a_feature_column(path):
    """A misspelt column in a model's column lists would only be warned about and then left out."""
    import fnmatch

    from response_model.features import feature_names
    from response_model.modeling.train import OUTCOMES, _model_params

    config, columns = load_training_config(path), feature_names()
    for regimen_class in config["regimen_classes"]:
        for outcome in OUTCOMES:
            params = _model_params(config, regimen_class, outcome)
            patterns = [*(params.get("linear_features") or ()), *(params.get("gbm_features") or ())]
            named = [*(params.get("clip") or {}), *(params.get("monotone_constraints") or {})]
            where = f"{path.name}: {regimen_class} × {outcome}"
            assert [p for p in patterns if not fnmatch.filter(columns, p)] == [], where
            assert [n for n in named if n not in columns] == [], where
