"""Trial design (issue 15 points 2, 4-6): analytic sizes, the Monte-Carlo check against the simulator's truth,
every bad input named, the describe and design commands and the HTML report."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from response_model.cli import main
from response_model.dataset import write_cohort
from response_model.errors import EXIT_USAGE
from response_model.trials.design import (
    DesignSpec,
    design_trial,
    power_curve,
    schoenfeld_events,
    simulate_power,
)
from response_model.trials.planning import plan_trial
from response_model.trials.rates import DesignError, arm_rates, model_pool, truth_pool
from response_model.trials.subsets import Subset, get_subset, subset_frame

ARM, COMPARATOR = "atezolizumab_bevacizumab", "lenvatinib"


@pytest.fixture(scope="module")
def cohort(simulated_small):
    """The session's simulated cohort (2,000 patients) as a subset frame, and its truth table."""
    return subset_frame(simulated_small.cohort), simulated_small.truth


def spec(**given) -> DesignSpec:
    return DesignSpec.with_defaults("wnt_activated", given.pop("arm", ARM), given.pop("comparator", COMPARATOR),
                                    **given)


def test_the_enrichment_size_is_the_smallest_with_the_tests_power_and_screening_divides_by_prevalence():
    """Per arm: the smallest whole number at which the pooled z-test's exact power reaches 80 % (near
    statsmodels' normal approximation); the trial enrols twice that and screens 1 / prevalence as many."""
    from statsmodels.stats.proportion import power_proportions_2indep

    from response_model.trials.design import proportion_power

    design = design_trial(spec(), arm_rates(0.3, 0.1, 0.25, 0.2, 0.2))
    enrich = design.size("enrichment", 0.8)
    per_arm = enrich.n_total // 2
    assert proportion_power(0.3, 0.1, per_arm, 0.05) >= 0.8 > proportion_power(0.3, 0.1, per_arm - 1, 0.05)
    normal = power_proportions_2indep(0.2, 0.1, per_arm, alpha=0.05, return_results=False)
    assert abs(normal - proportion_power(0.3, 0.1, per_arm, 0.05)) < 0.03
    assert enrich.n_screened == math.ceil(enrich.n_total / 0.25)
    assert 0.8 <= enrich.power_subset < 0.82
    assert design.size("enrichment", 0.9).n_total > enrich.n_total
    # all-comers: outside the subset no effect, so the overall effect is diluted and the trial is larger
    allc = design.size("all_comers", 0.8)
    assert allc.n_total > enrich.n_total / 0.25 * 0.9 and allc.power_subset >= 0.8 and allc.power_overall >= 0.8


def test_bonferroni_splits_alpha_and_costs_patients_against_fixed_sequence():
    rates = arm_rates(0.3, 0.1, 0.25, 0.2, 0.2)
    fixed = design_trial(spec(alpha_split="fixed_sequence"), rates).size("all_comers", 0.8)
    split = design_trial(spec(alpha_split="bonferroni", primary_alpha_share=0.8), rates).size("all_comers", 0.8)
    assert (fixed.alpha_overall, fixed.alpha_subset) == (0.05, 0.05)
    assert split.alpha_overall == pytest.approx(0.04) and split.alpha_subset == pytest.approx(0.01)
    assert split.n_total > fixed.n_total


def test_pfs_events_follow_schoenfeld_and_patients_follow_accrual_and_follow_up():
    assert math.ceil(schoenfeld_events(0.7, 0.05, 0.8)) == 247  # the textbook number for HR 0.7, 80 %, 1:1
    design = design_trial(spec(endpoint="pfs", hazard_ratio=0.7, control_median_months=6.0),
                          arm_rates(0, 0, 0.4))
    enrich = design.size("enrichment", 0.8)
    assert enrich.events == 247 and enrich.n_total > 247 and enrich.n_screened >= enrich.n_total / 0.4
    longer = design_trial(spec(endpoint="pfs", hazard_ratio=0.7, control_median_months=6.0, follow_up_months=36),
                          arm_rates(0, 0, 0.4)).size("enrichment", 0.8)
    assert longer.events == 247 and longer.n_total < enrich.n_total  # more follow-up: fewer patients, same events


def test_analytic_and_monte_carlo_power_agree_within_a_few_points_on_the_simulator(cohort):
    frame, truth = cohort
    subset = get_subset("wnt_activated")
    pool = truth_pool(frame, truth, subset, ARM, COMPARATOR, "objective_response")
    for split in ("fixed_sequence", "bonferroni"):
        design = design_trial(spec(alpha_split=split, powers=[0.8]), pool.rates("truth"))
        checked = simulate_power(design, pool, n_trials=3000, seed=3)
        assert len(checked) == 3 and checked["empirical_power"].notna().all()
        worst = (checked["empirical_power"] - checked["analytic_power"]).abs().max()
        assert worst < 0.03, checked  # the issue's ±3 points (seeded: the same draws every run)


def test_a_trial_without_effect_rejects_at_about_alpha(cohort):
    frame, truth = cohort
    pool = truth_pool(frame, truth, get_subset("wnt_activated"), ARM, COMPARATOR, "objective_response")
    same = type(pool)(pool.p_arm, pool.p_arm.copy(), pool.member)  # both arms the arm's true probabilities
    design = design_trial(spec(powers=[0.8]), arm_rates(0.3, 0.2, 0.4, 0.3, 0.2))
    null = simulate_power(design, same, n_trials=2000, seed=1)
    assert (null.loc[null["design"] == "enrichment", "empirical_power"] < 0.075).all()


def test_power_curves_rise_with_n_and_hold_no_nan():
    design = design_trial(spec(), arm_rates(0.3, 0.1, 0.25, 0.2, 0.2))
    curve = power_curve(design, np.array([20, 100, 400, 2000]))
    assert not curve.isna().any().any()
    assert (np.diff(curve["enrichment"]) > 0).all()


# ---- bad input: each a clear error or a warning naming what is missing, never NaN -------------------------


def test_comparator_equal_to_arm_unknown_endpoint_and_missing_hazard_ratio_are_refused():
    with pytest.raises(DesignError, match="comparator 'lenvatinib' is the arm itself"):
        spec(arm=COMPARATOR)
    with pytest.raises(DesignError, match=r"endpoint 'objective_respnse' .*did you mean 'objective_response'"):
        spec(endpoint="objective_respnse")
    with pytest.raises(DesignError, match="endpoint pfs needs the hazard ratio"):
        spec(endpoint="pfs")
    with pytest.raises(DesignError, match="p_arm: nan is not a rate"):
        arm_rates(float("nan"), 0.1, 0.3)


def test_an_empty_subset_an_unknown_regimen_or_no_rate_source_is_a_design_error(cohort):
    frame, truth = cohort
    with pytest.raises(DesignError, match=r"subset 'negative_afp' is empty in this cohort \(2000 patients: 0 inside"):
        plan_trial(frame, Subset("negative_afp", "afp < 0"), spec(), truth=truth)
    with pytest.raises(DesignError, match=r"arm 'atezolizumab_bevacizumb' .*did you mean 'atezolizumab_bevacizumab'"):
        plan_trial(frame, get_subset("wnt_activated"), spec(arm="atezolizumab_bevacizumb"), truth=truth)
    with pytest.raises(DesignError, match="need one source"):
        plan_trial(frame, get_subset("wnt_activated"), spec())


def test_equal_rates_give_a_reasoned_not_reachable_never_nan():
    design = design_trial(spec(), arm_rates(0.2, 0.2, 0.3, 0.2, 0.2))
    assert all(s.n_total is None and "same expected rate" in s.note for s in design.sizes)
    assert design.warnings and all("not reachable" in w for w in design.warnings)


def test_an_arm_never_given_an_unlabelled_endpoint_and_a_small_subset_are_warned(cohort):
    frame, truth = cohort
    cut = frame[frame["regimen"] != ARM].assign(objective_response=pd.NA)
    plan = plan_trial(cut, get_subset("wnt_activated"), spec(), truth=truth)
    text = " | ".join(plan.design.warnings)
    assert f"arm '{ARM}' was never given in this cohort" in text
    assert "labels no subset patient's objective_response" in text
    assert "fewer than the" in text and "rests on few patients" in text
    assert plan.design.size("enrichment", 0.8).n_total is not None  # warned, still designed


def test_pfs_takes_the_comparators_median_from_the_cohort_or_says_it_cannot(cohort):
    frame, _ = cohort
    plan = plan_trial(frame, get_subset("wnt_activated"), spec(endpoint="pfs", hazard_ratio=0.6))
    assert 0 < plan.design.spec.control_median_months < 60
    assert plan.design.size("all_comers", 0.9).events is not None
    unlabelled = frame.assign(pfs_months=np.nan, pfs_event=pd.NA)
    with pytest.raises(DesignError, match="needs the comparator's median PFS"):
        plan_trial(unlabelled, get_subset("wnt_activated"), spec(endpoint="pfs", hazard_ratio=0.6))
    with pytest.raises(DesignError, match="Monte-Carlo check covers"):
        simulate_power(plan.design, None, n_trials=10)


def test_the_models_counterfactual_rates_come_from_the_predictor(cohort, smoke_model):
    from response_model.modeling.predict import as_bundle, load_model

    frame, _ = cohort
    predictor = as_bundle(load_model(smoke_model["export_dir"])).predictor()
    part = frame.iloc[:300]
    pool = model_pool(part, predictor, get_subset("viral"), ARM, COMPARATOR, "objective_response")
    assert len(pool.p_arm) == int(get_subset("viral").membership(part).notna().sum())
    assert ((pool.p_arm > 0) & (pool.p_arm < 1)).all() and not np.allclose(pool.p_arm, pool.p_comparator)
    plan = plan_trial(part, get_subset("viral"), spec(), predictor=predictor)
    assert plan.design.rates.source == "model" and plan.pool is None


# ---- the commands and the report ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(simulated_small, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trial-cohort")
    write_cohort(simulated_small.cohort.iloc[:800], folder / "cohort.parquet")
    simulated_small.truth.to_parquet(folder / "truth.parquet")
    return folder


def test_describe_prints_prevalence_screening_and_table_one(files):
    result = CliRunner().invoke(main, ["trials", "describe", "--source", "configs/sources/canonical.yaml",
                                       str(files / "cohort.parquet"), "--subset", "wnt_activated"])
    assert result.exit_code == 0, result.output
    for text in ("prevalence among tested:", "patients to screen per patient enrolled:", "by sequencing_panel:",
                 "Table 1 (inside / outside / unknown):", "objective response"):
        assert text in result.output
    bad = CliRunner().invoke(main, ["trials", "describe", "--source", "configs/sources/canonical.yaml",
                                    str(files / "cohort.parquet"), "--subset", "wnt_activatd"])
    assert bad.exit_code == EXIT_USAGE and "did you mean 'wnt_activated'" in bad.output


def test_design_prints_sizes_and_monte_carlo_and_writes_a_labelled_report(files, tmp_path, monkeypatch, smoke_model):
    effects = pd.DataFrame({"subset": "wnt_activated", "arm": ARM, "comparator": COMPARATOR,
                            "endpoint": "objective_response", "estimator": ["naive", "model", "adjusted"],
                            "arm_rate": [0.1, 0.12, 0.13], "comparator_rate": 0.2, "difference": [-0.1, -0.08, -0.07],
                            "lower": [-0.2, -0.15, -0.16], "upper": [0.0, -0.01, 0.02], "n_subset": 300})
    balance = pd.DataFrame({"covariate": ["age", "albumin"], "smd_unweighted": [0.3, -0.2],
                            "smd_weighted": [0.02, -0.05]})
    effects.to_csv(tmp_path / "effects.csv", index=False)
    balance.to_csv(tmp_path / "balance.csv", index=False)
    # the session's store (a new SQLite store costs seconds of migrations)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", smoke_model["tracking_uri"])
    result = CliRunner().invoke(main, [
        "trials", "design", "--source", "configs/sources/canonical.yaml", str(files / "cohort.parquet"),
        "--subset", "wnt_activated", "--arm", ARM, "--comparator", COMPARATOR, "--truth", str(files / "truth.parquet"),
        "--monte-carlo-trials", "200", "--report", str(tmp_path / "design.html"),
        "--effects", str(tmp_path / "effects.csv"), "--balance", str(tmp_path / "balance.csv")])
    assert result.exit_code == 0, result.output
    assert "enrichment" in result.output and "all_comers" in result.output and "empirical" in result.output
    html = (tmp_path / "design.html").read_text(encoding="utf-8")
    assert 'id="research-label"' in html and "research use — trained on simulated data" in html
    assert html.count("data:image/png;base64,") == 4  # prevalence, power, forest, balance
    assert "Trusted: the adjusted estimate" in html
    assert not re.search(r"\bnan\b", re.sub(r"data:image/png;base64,[^\"]+", "", html), flags=re.IGNORECASE)
    import mlflow

    run = mlflow.search_runs(experiment_names=["trial-design"], output_format="list")[0]
    assert run.data.tags["subset"] == "wnt_activated" and run.inputs.dataset_inputs  # the cohort's digest
    assert "trial_design/report.html" in [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id,
                                                                                            "trial_design")]


def test_design_of_an_empty_subset_exits_2_naming_it(files, tmp_path):
    (tmp_path / "mine.yaml").write_text("subsets:\n  none_such:\n    rule: afp < 0\n", encoding="utf-8")
    result = CliRunner().invoke(main, [
        "trials", "design", "--source", "configs/sources/canonical.yaml", str(files / "cohort.parquet"),
        "--subset", "none_such", "--subsets", str(tmp_path / "mine.yaml"), "--arm", ARM, "--comparator", COMPARATOR,
        "--truth", str(files / "truth.parquet")])
    assert result.exit_code == EXIT_USAGE and "subset 'none_such' is empty in this cohort" in result.output
