"""Explanations that can be trusted (issue 5 §3): additivity, faithfulness to the simulator, stability.

The project's ResponseClassifier is fitted directly (no MLflow) on a simulated cohort of 3,000
patients through the one feature function, with configs/train/default.yaml's parameters.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from response_model.config import load_yaml
from response_model.dataset import parse_cohort
from response_model.features import build_feature_matrix
from response_model.modeling import explain as ex
from response_model.modeling import explanation_groups as eg
from response_model.modeling.estimators import ResponseClassifier
from response_model.modeling.train import _model_params
from response_model.regimens import load_catalogue

N, SEED = 3000, 1


@pytest.fixture(scope="module")
def cohort():
    from response_model.sources.simulator import simulate_cohort

    parsed = parse_cohort(simulate_cohort(N, SEED).cohort)
    frame = parsed.frame()
    X = build_feature_matrix(parsed.records, [o.regimen for o in parsed.outcomes])
    catalogue = load_catalogue()
    classes = frame["regimen"].map(lambda r: catalogue[r].regimen_class)
    return frame, X, classes, parsed.records


@pytest.fixture(scope="module")
def fitted(cohort):
    """{(class, outcome): (model, X, y)} for the two models the issue names."""
    frame, X_all, classes, _ = cohort
    config = load_yaml("train/default.yaml")
    out = {}
    for key in [(e["regimen_class"], e["outcome"]) for e in ex.explanation_config()["faithfulness"]["expected_top"]]:
        regimen_class, outcome = key
        y = frame.loc[classes == regimen_class, outcome].astype(float).dropna().astype(int)
        X = X_all.loc[y.index]
        out[key] = (ResponseClassifier(**_model_params(config, regimen_class, outcome)).fit(X, y), X, y)
    return out


def _records_of(cohort, X):
    """The patient records of the rows of ``X`` (its index: positions in the cohort)."""
    records = cohort[3]
    return [records[k] for k in X.index]


def test_additivity_on_random_patients(fitted, cohort):
    rng = np.random.default_rng(0)
    for model, X, _ in fitted.values():
        rows = X.iloc[rng.choice(len(X), 200, replace=False)]
        assert ex.additivity_error(model, rows) <= 1e-6
        contributions, base = model.explain(rows)
        f = base + contributions.sum(axis=1).to_numpy()
        a, b = model.calibrator_ or (0.0, 1.0)  # the explanation's scale is the log-odds before calibration
        np.testing.assert_allclose(expit(a + b * f), model.predict_proba(rows)[:, 1], atol=1e-9)
        assert list(contributions.columns) == model.explained_features_
        # the terms a clinician reads (missing inputs in one term) and the terms alone: just as additive
        decision = np.asarray(model.decision_function(rows), dtype=float)
        for terms in (eg.grouped_frame(contributions, _records_of(cohort, rows)), eg.term_frame(contributions)):
            assert float(np.max(np.abs(base + terms.sum(axis=1).to_numpy() - decision))) <= 1e-6


def test_additivity_error_catches_a_wrong_base(fitted):
    model, X, _ = next(iter(fitted.values()))

    class Shifted:
        def explain(self, rows):
            contributions, base = model.explain(rows)
            return contributions, base + 1e-3

        def decision_function(self, rows):
            return model.decision_function(rows)

    assert ex.additivity_error(Shifted(), X.iloc[:20]) == pytest.approx(1e-3, rel=1e-6)


def test_faithful_to_the_simulators_truth(fitted):
    settings = ex.explanation_config()["faithfulness"]
    for expected in settings["expected_top"]:
        key = (expected["regimen_class"], expected["outcome"])
        model, X, _ = fitted[key]
        table = ex.faithfulness_table(model.explain(X)[0], X, *key)
        # the strong true effect is among the top three
        assert table.loc[expected["feature"], "rank"] <= settings["top"], table.head(5)
        assert table.loc[expected["feature"], "truth"] == "effect"
        none = table[table["truth"] == "no effect"]
        assert set(none.index) >= {"bmi", "smoking", "diabetes", "haemoglobin", "sex_male", "tmb", "chromatin"}
        # features with no effect rank, as a group, low (median below no_effect_median_share of all
        # features), none in the top three, and none carries even half the weight of the strong true effect
        low = settings["no_effect_median_share"] * table["of"].iloc[0]
        assert none["rank"].median() > low, none[["importance", "rank"]]
        assert none["rank"].min() > settings["top"]
        assert none["importance"].max() < 0.5 * table.loc[expected["feature"], "importance"]


def test_grouped_terms_are_faithful_too(fitted, cohort):
    """The same checks on the terms: the strong effect's term is among the top three (with missing
    inputs in their own term, and without); terms made only of the simulator's no-effect features
    rank, as a group, in the bottom half, none in the top three."""
    settings = ex.explanation_config()["faithfulness"]
    for expected in settings["expected_top"]:
        key = (expected["regimen_class"], expected["outcome"])
        model, X, _ = fitted[key]
        contributions = model.explain(X)[0]
        term = eg.term_of(list(contributions.columns), expected["feature"])
        no_effect = eg.terms_made_of(list(contributions.columns), set(ex.no_effect_features()))
        assert no_effect >= {"bmi", "smoking", "diabetes", "haemoglobin", "sex", "tmb", "chromatin"}
        for records in (None, _records_of(cohort, X)):
            table = eg.term_ranks(contributions, X, records)
            assert table.loc[term, "rank"] <= settings["top"], table.head(6)
            none = table.loc[table.index.isin(no_effect)]
            assert len(none) >= 7 and none["rank"].min() > settings["top"], none
            assert none["rank"].median() > table["of"].iloc[0] / 2, table


def test_true_effects_follow_the_simulator_config():
    response = ex.true_effects("checkpoint_inhibitor", "objective_response")
    assert response.loc["wnt_activation", "response"] == -1.5
    assert "pi3k_mtor" not in response.index   # a TKI-class effect only
    resistance = ex.true_effects("tki_antiangiogenic", "primary_resistance")
    assert resistance.loc["pi3k_mtor", "response"] == -0.70 and resistance.loc["pi3k_mtor", "pfs"] == 1.335
    assert "sorafenib" in resistance.loc["vegfa_amplification", "note"]


def test_top_five_stable_across_seeds(fitted, cohort):
    settings = ex.explanation_config()["stability"]
    seeds, k = settings["seeds"], settings["top_k"]
    for model, X, y in fitted.values():
        rows = X.sample(n=300, random_state=0)
        first = ex.refit_with_seed(model, X, y, seeds[0]).explain(rows)[0]
        second = ex.refit_with_seed(model, X, y, seeds[1]).explain(rows)[0]
        overlap = ex.stability_overlap(first, second, k)
        assert overlap.between(0, 5).all() and len(overlap) == 300
        assert overlap.mean() >= settings["target_overlap"], overlap.describe()
        # the terms a clinician reads are as stable (top five terms, missing inputs as one term)
        records = _records_of(cohort, rows)
        grouped = ex.stability_overlap(eg.grouped_frame(first, records), eg.grouped_frame(second, records), k)
        assert grouped.mean() >= settings["target_overlap"], grouped.describe()


def test_stability_overlap_counts():
    a = pd.DataFrame({"x": [3.0, 0.1], "y": [-2.0, 0.2], "z": [0.5, -5.0], "w": [0.0, 0.0]})
    b = pd.DataFrame({"x": [0.1, 0.1], "y": [-2.0, 0.3], "z": [0.5, -5.0], "w": [9.0, 0.0]})
    assert ex.stability_overlap(a, b, k=2).tolist() == [1, 2]
    assert ex.global_importance(a).index[0] == "z"
    with pytest.raises(ValueError, match="same rows"):
        ex.stability_overlap(a, b.iloc[::-1], k=2)
