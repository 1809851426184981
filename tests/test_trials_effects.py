"""Effect estimates in subsets (response_model.trials.effects): AIPW recovers a planted effect where the
naive comparison is confounded, weighting balances the confounder, and bad input is named, never a crash."""

from dataclasses import replace

import numpy as np
import pytest
from scipy.special import expit

from response_model.dataset import parse_cohort
from response_model.errors import InputError
from response_model.trials.effects import EFFECT_COLUMNS, estimate_effects, newcombe_interval
from response_model.trials.estimation import CohortTable

ARM, COMPARATOR = "atezolizumab_bevacizumab", "sorafenib"


@pytest.fixture(scope="module")
def fast_config(tmp_path_factory):
    """configs/trial_effects.yaml with smaller nuisance models (3 folds, 30 boosting rounds): the same
    code, a fraction of the fits."""
    import yaml

    from response_model.config import resolve_config_path

    cfg = yaml.safe_load(resolve_config_path("trial_effects.yaml").read_text())
    cfg["adjusted"]["folds"] = 3
    cfg["adjusted"]["learner"].update(max_iter=30, learning_rate=0.2)
    path = tmp_path_factory.mktemp("trials") / "trial_effects.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def records_table(simulated_small):
    """The 2,000 simulated patients' records and features (their own regimens and labels replaced below)."""
    return CohortTable.of(parse_cohort(simulated_small.cohort))


def planted(table: CohortTable, seed: int = 5, deterministic: bool = False):
    """(table with a confounded assignment and outcomes, the true effect): older patients (age ≥ 68) get
    the arm far more often and respond less under both regimens, so the naive difference is too small."""
    rng = np.random.default_rng(seed)
    old = table.covariates["age"].to_numpy() >= 68
    p_assign = old.astype(float) if deterministic else expit(-0.8 + 2.4 * old)
    arm = rng.random(len(table)) < p_assign
    p_arm, p_comparator = expit(0.4 - 1.6 * old), expit(-0.9 - 1.6 * old)
    response = (rng.random(len(table)) < np.where(arm, p_arm, p_comparator)).astype(float)
    response[rng.random(len(table)) < 0.05] = np.nan  # a few not assessed
    labels = {"objective_response": response, "primary_resistance": np.full(len(table), np.nan)}
    given = np.where(arm, ARM, COMPARATOR).astype(object)
    return replace(table, given=given, labels=labels), float((p_arm - p_comparator).mean()), old


@pytest.fixture(scope="module")
def estimates(records_table, fast_config):
    """Effects for every patient, the old, an empty subset and one with unknown status, both endpoints."""
    table, truth, old = planted(records_table)
    unknown = np.where(np.arange(len(table)) % 4 == 0, None, old)
    subsets = {"all": np.ones(len(table), dtype=bool), "old": old, "nobody": np.zeros(len(table), dtype=bool),
               "old_partly_known": unknown}
    return estimate_effects(table, subsets, [(ARM, COMPARATOR)], config=fast_config), truth


def _row(effects, subset, estimator, endpoint="objective_response"):
    rows = effects[(effects.subset == subset) & (effects.estimator == estimator) & (effects.endpoint == endpoint)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_adjusted_recovers_the_effect_the_naive_comparison_misses(estimates):
    result, truth = estimates
    adjusted, naive = _row(result.effects, "all", "adjusted"), _row(result.effects, "all", "naive")
    assert adjusted.lower <= truth <= adjusted.upper
    assert abs(adjusted.difference - truth) < 0.05
    assert abs(naive.difference - truth) > 0.08  # confounded by age
    assert abs(naive.difference - truth) > 2 * abs(adjusted.difference - truth)
    assert list(result.effects.columns) == list(EFFECT_COLUMNS)
    assert adjusted.n_subset == 2000 and adjusted.n_arm + adjusted.n_comparator < 2000  # unlabelled excluded


def test_weighting_balances_the_confounder(estimates):
    result, _ = estimates
    age = result.balance[(result.balance.subset == "all") & (result.balance.covariate == "age")].iloc[0]
    assert abs(age.smd_unweighted) > 0.5
    assert abs(age.smd_weighted) < abs(age.smd_unweighted) / 3
    verdict = result.verdicts[(result.verdicts.subset == "all") & (result.verdicts.endpoint == "objective_response")]
    assert verdict.iloc[0].trusted in {"adjusted", "none"} and verdict.iloc[0].reason


def test_unestimable_cells_say_why(estimates):
    result, _ = estimates
    effects = result.effects
    assert not effects[effects.difference.isna() & (effects.warnings == "")].shape[0]  # no silent NaN
    assert "has no patient" in _row(effects, "nobody", "naive").warnings
    assert "labels primary_resistance for no patient" in _row(effects, "all", "adjusted", "primary_resistance").warnings
    assert "no labelled primary_resistance" in _row(effects, "all", "naive", "primary_resistance").warnings
    assert "500 patient(s) of unknown old_partly_known status excluded" in _row(
        effects, "old_partly_known", "adjusted").warnings


def test_no_overlap_is_named(records_table, fast_config):
    table, _, _ = planted(records_table, deterministic=True)
    effects = estimate_effects(table, {"all": np.ones(len(table), dtype=bool)}, [(ARM, COMPARATOR)],
                               endpoints=["objective_response"], config=fast_config).effects
    adjusted = _row(effects, "all", "adjusted")
    assert np.isnan(adjusted.difference) and "no overlap" in adjusted.warnings
    assert not np.isnan(_row(effects, "all", "naive").difference)


def test_an_arm_never_given_is_named(records_table):
    table, _, _ = planted(records_table)
    effects = estimate_effects(table, {"all": np.ones(len(table), dtype=bool)}, [("lenvatinib", COMPARATOR)],
                               endpoints=["objective_response"]).effects
    assert "lenvatinib (given to 0)" in _row(effects, "all", "adjusted").warnings
    assert "lenvatinib" in _row(effects, "all", "naive").warnings


@pytest.mark.parametrize("pair, endpoint, message", [
    ((ARM, ARM), "objective_response", "equals the arm"),
    (("sorafenibb", COMPARATOR), "objective_response", "did you mean 'sorafenib'"),
    ((ARM, COMPARATOR), "objective_responses", "did you mean 'objective_response'"),
])
def test_bad_requests_are_errors_naming_the_value(records_table, pair, endpoint, message):
    with pytest.raises(InputError, match=message):
        estimate_effects(records_table, {"all": np.ones(len(records_table), dtype=bool)}, [pair], endpoints=[endpoint])


def test_membership_of_the_wrong_length_is_an_error(records_table):
    with pytest.raises(InputError, match="expected one per patient"):
        estimate_effects(records_table, {"short": [True, False]}, [(ARM, COMPARATOR)])


def test_newcombe_interval_matches_the_published_example():
    # Newcombe 1998, Table II example (a): 56/70 vs 48/80 → difference 0.2000, interval 0.0524 to 0.3339
    lower, upper = newcombe_interval(56, 70, 48, 80)
    assert lower == pytest.approx(0.0524, abs=5e-4) and upper == pytest.approx(0.3339, abs=5e-4)


def test_model_rows_predict_every_patient_under_both_regimens(records_table, smoke_model, fast_config):
    from response_model.modeling.predict import as_bundle, load_model

    predictor = as_bundle(load_model(smoke_model["export_dir"])).predictor()
    table, _, _ = planted(records_table)
    few = np.arange(len(table)) < 300
    effects = estimate_effects(table, {"first_300": few}, [(ARM, COMPARATOR)], endpoints=["objective_response"],
                               predictor=predictor, config=fast_config).effects
    model = _row(effects, "first_300", "model")
    predictions = predictor.predict([table.records[i] for i in range(300)], [[ARM, COMPARATOR]] * 300)
    p = predictions.probability["objective_response"].reshape(300, 2)
    assert model.arm_rate == pytest.approx(p[:, 0].mean()) and model.comparator_rate == pytest.approx(p[:, 1].mean())
    assert model.lower <= model.difference <= model.upper and model.n_subset == 300


@pytest.fixture(scope="module")
def small_cohort_file(simulated_small, tmp_path_factory):
    """The first 400 simulated patients as a canonical Parquet file."""
    from response_model.dataset import write_cohort

    return write_cohort(simulated_small.cohort.head(400), tmp_path_factory.mktemp("cohort") / "cohort.parquet")


def test_effects_command_prints_the_three_estimates_and_writes_the_tables(small_cohort_file, tmp_path):
    import pandas as pd
    from click.testing import CliRunner

    from response_model.cli import main

    result = CliRunner().invoke(main, [
        "trials", "effects", "--source", "configs/sources/canonical.yaml", str(small_cohort_file),
        "--subset", "wnt_activated", "--arm", ARM, "--comparator", "lenvatinib", "--endpoint", "objective_response",
        "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "naive" in result.output and "adjusted" in result.output and "verdict wnt_activated" in result.output
    effects = pd.read_csv(tmp_path / "effects.csv")
    assert set(effects.subset) == {"all", "wnt_activated"} and set(effects.estimator) == {"naive", "adjusted"}
    assert set(pd.read_csv(tmp_path / "balance.csv").columns) >= {"covariate", "smd_unweighted", "smd_weighted"}


def test_effects_command_refuses_a_comparator_equal_to_the_arm(small_cohort_file):
    from click.testing import CliRunner

    from response_model.cli import main

    result = CliRunner().invoke(main, [
        "trials", "effects", "--source", "configs/sources/canonical.yaml", str(small_cohort_file),
        "--subset", "wnt_activated", "--arm", ARM, "--comparator", ARM])
    assert result.exit_code == 2 and "equals the arm" in result.output
