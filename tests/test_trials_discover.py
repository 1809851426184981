"""Candidate-subset discovery (response_model.trials.discover): a planted interaction is found and
survives the held-out half, a rule on a no-effect feature does not, and found rules are subset rules."""

from dataclasses import replace

import numpy as np
import pytest
from scipy.special import expit

from response_model.dataset import parse_cohort
from response_model.errors import InputError
from response_model.trials.discover import benjamini_hochberg, discover, holm, save_rules
from response_model.trials.estimation import CohortTable
from response_model.trials.subsets import load_subsets

ARM, COMPARATOR = "atezolizumab_bevacizumab", "lenvatinib"


@pytest.fixture(scope="module")
def fast_config(tmp_path_factory):
    """configs/trial_effects.yaml with smaller nuisance models: the same code, fewer fits."""
    import yaml

    from response_model.config import resolve_config_path

    cfg = yaml.safe_load(resolve_config_path("trial_effects.yaml").read_text())
    cfg["adjusted"]["folds"] = 3
    cfg["adjusted"]["learner"].update(max_iter=30, learning_rate=0.2)
    path = tmp_path_factory.mktemp("discover") / "trial_effects.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def found(simulated_small, fast_config):
    """Discovery on the 2,000 simulated patients with a planted outcome: the arm helps only WNT-active
    tumours (+1.8 log-odds); assignment depends mildly on age; BMI and smoking do nothing."""
    table = CohortTable.of(parse_cohort(simulated_small.cohort))
    rng = np.random.default_rng(11)
    wnt = np.nan_to_num(table.covariates["wnt_activation"].to_numpy()) == 1
    old = table.covariates["age"].to_numpy() >= 70
    arm = rng.random(len(table)) < expit(-0.2 + 0.8 * old)
    p = np.where(arm, expit(-1.0 + 1.8 * wnt), expit(-1.0))
    labels = {"objective_response": (rng.random(len(table)) < p).astype(float),
              "primary_resistance": np.full(len(table), np.nan)}
    planted = replace(table, given=np.where(arm, ARM, COMPARATOR).astype(object), labels=labels)
    return discover(planted, ARM, COMPARATOR, "objective_response", config=fast_config)


def test_the_planted_interaction_ranks_first_and_survives(found):
    best = found.rules.iloc[0]
    assert best.rule.startswith("wnt_activation == 1") and best.survives
    assert best.heterogeneity > 0.15 and best.p_holm < 0.05


def test_no_effect_rules_do_not_survive(found):
    noise = found.rules[found.rules.rule.str.contains("bmi|smoking")]
    assert not noise.survives.any()
    assert found.rules.survives.sum() <= 3  # WNT and at most a couple of WNT conjunctions


def test_every_line_is_labelled_exploratory(found):
    lines = found.lines()
    assert len(lines) == len(found.rules) + 1 and all(line.startswith("exploratory:") for line in lines)


def test_surviving_rules_save_as_a_subset_file(found, tmp_path):
    path = tmp_path / "discovered.yaml"
    n = save_rules(found, path)
    subsets = load_subsets([path])
    assert n == len(subsets) == int(found.rules.survives.sum())
    assert next(iter(subsets.values())).rule == found.rules.iloc[0].rule


def test_multiplicity_adjustments():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_too_few_patients_given_a_regimen_is_named(simulated_small):
    table = CohortTable.of(parse_cohort(simulated_small.cohort.head(200)))
    with pytest.raises(InputError, match="nivolumab_ipilimumab \\(given to"):
        discover(table, ARM, "nivolumab_ipilimumab")


def test_discover_command_names_a_regimen_given_too_rarely(simulated_small, tmp_path):
    from click.testing import CliRunner

    from response_model.cli import main
    from response_model.dataset import write_cohort

    path = write_cohort(simulated_small.cohort.head(200), tmp_path / "cohort.parquet")
    result = CliRunner().invoke(main, ["trials", "discover", "--source", "configs/sources/canonical.yaml", str(path),
                                       "--arm", ARM, "--comparator", "nivolumab_ipilimumab"])
    assert result.exit_code == 2 and "nivolumab_ipilimumab (given to" in result.output
