"""Per-patient intervals (issue 13 point 4): wider for sparse patients, containing the estimate, with
their level, in batch output; the population summary holds aggregates only; the training factor."""

import numpy as np
import pytest

from response_model.modeling.uncertainty import (
    QUANTILE_LEVELS,
    FieldDistribution,
    MemberEvaluator,
    Spread,
    estimate_scale,
)
from response_model.schema import PatientRecord
from response_model.service.models import EXAMPLE_PATIENT


@pytest.fixture(scope="module")
def bundle(smoke_model):
    from response_model.modeling.predict import as_bundle, load_model

    return as_bundle(load_model(str(smoke_model["export_dir"])))


#: the example patient with every optional field the population summary could draw filled in
COMPLETE = {**EXAMPLE_PATIENT, "pdl1_tps": 5, "cd8_density": 300, "teff_signature": 0.2, "treg_signature": -0.1,
            "myeloid_signature": 0.0, "prior_systemic_therapy": False}


def _widths(predictor, record):
    """(log-odds width per row and outcome, predictions, bounds) of ``record`` under every candidate regimen."""
    from scipy.special import logit

    predictions = predictor.predict([record])
    bounds = predictor.intervals([record], predictions)
    return {o: logit(bounds[o][1]) - logit(bounds[o][0]) for o in bounds}, predictions, bounds


def test_a_sparse_patients_interval_is_wider_than_a_complete_patients(bundle):
    predictor = bundle.predictor()
    complete = PatientRecord.model_validate(COMPLETE)
    assert bundle.uncertainty.population.missing(complete) == []
    sparse = PatientRecord(age=complete.age, sex=complete.sex, albumin=complete.albumin)
    wide, _, _ = _widths(predictor, sparse)
    narrow, _, _ = _widths(predictor, complete)
    for outcome in wide:  # on the log-odds scale, where a width does not depend on the estimate's level
        assert np.all(wide[outcome] > narrow[outcome]), outcome
        assert wide[outcome].mean() > 1.5 * narrow[outcome].mean(), outcome


def test_the_interval_contains_the_estimate_and_is_the_same_every_time(bundle):
    predictor = bundle.predictor()
    for record in (PatientRecord.model_validate(COMPLETE), PatientRecord(age=70, sex="female")):
        _, predictions, bounds = _widths(predictor, record)
        again = predictor.intervals([record], predictions)
        for outcome, (lower, upper) in bounds.items():
            p = predictions.probability[outcome]
            assert np.all((lower >= 0) & (lower <= p) & (p <= upper) & (upper <= 1))
            assert np.all(upper > lower)
            np.testing.assert_array_equal(again[outcome][0], lower)  # fixed draws: reproducible answers


def test_bundle_states_level_and_method(bundle):
    meta = bundle.metadata["uncertainty"]
    assert meta["level"] == 0.8 and meta["method"].startswith("80% per-patient interval")
    assert set(meta["members"].values()) == {3}  # tests/data/train_smoke.yaml
    assert all(0.1 <= s["ensemble"] <= 50 and len(s["draws_by_missing_share"]) == 3 for s in meta["scale"].values())


def test_members_are_evaluated_exactly_as_their_own_predict_proba(bundle, simulated_small):
    from response_model.features import build_feature_matrix

    records = [PatientRecord.model_validate(EXAMPLE_PATIENT), PatientRecord(age=50, sex="male")]
    X = build_feature_matrix(records, ["lenvatinib", "nivolumab"])
    uncertainty = bundle.uncertainty
    key = next(iter(uncertainty.members))
    for model, evaluator in zip(uncertainty.members[key], uncertainty.evaluators_[key]):
        assert isinstance(evaluator, MemberEvaluator)
        expected = model.predict_proba(X.reindex(columns=model.feature_names_in_))[:, 1]
        np.testing.assert_allclose(evaluator.probabilities(X.reindex(columns=bundle.feature_names).to_numpy()),
                                   expected, rtol=0, atol=1e-12)


def test_batch_output_has_the_interval_columns(bundle):
    from response_model.modeling.batch import interval_columns, score_table

    predictor = bundle.predictor()
    records = [PatientRecord.model_validate(EXAMPLE_PATIENT), PatientRecord(age=58, sex="male")]
    table = score_table(predictor, records, intervals=True)
    assert set(interval_columns()) <= set(table.columns)
    assert (table["interval_level"] == 0.8).all()
    for outcome in ("objective_response", "primary_resistance"):
        assert (table[f"p_{outcome}_lower"] <= table[f"p_{outcome}"]).all()
        assert (table[f"p_{outcome}"] <= table[f"p_{outcome}_upper"]).all()
    assert not set(interval_columns()) & set(score_table(predictor, records).columns)  # optional


def test_the_population_summary_holds_aggregates_never_a_patients_row(simulated_small):
    from response_model.dataset import parse_cohort

    records = parse_cohort(simulated_small.cohort.head(400)).records
    population = FieldDistribution.of(records)
    albumin = np.array([r.albumin for r in records if r.albumin is not None])
    stored = population.numeric["albumin"]
    assert len(stored) == len(QUANTILE_LEVELS)
    assert albumin.min() < stored[0] and stored[-1] < albumin.max()  # 1st-99th percentiles: no extreme row
    assert all(isinstance(v, np.ndarray) for v in population.numeric.values())
    for values, cumulative in population.categorical.values():
        assert cumulative[-1] == pytest.approx(1.0) and len(values) == len(cumulative)
    # a record missing nothing drawable gets no draws; a sparse one gets complete draws
    sparse = PatientRecord(age=60, sex="male")
    draws = population.draws(sparse, 16)
    assert len(draws) == 16 and all(d.albumin is not None and d.alterations is not None for d in draws)
    assert len({d.albumin for d in draws}) >= 8  # one per stratum (values recorded to 0.1 g/dL tie)
    assert population.draws(draws[0], 16) == []


def test_the_training_factor_recovers_a_known_spread():
    rng = np.random.default_rng(0)
    n = 4000
    truth = 1 / (1 + np.exp(-rng.normal(0.0, 2.0, n)))  # true log-odds: sd 2 around a centre of 0
    undrawn = Spread(np.zeros(n), np.full(n, 0.25), np.zeros(n))  # sd 0.5 before the factor
    few = Spread(np.zeros(n), np.zeros(n), np.ones(n))  # drawn, sd 1
    many = Spread(np.zeros(n), np.zeros(n), np.full(n, 16.0))  # drawn, sd 4
    versions = [(np.zeros(n), undrawn, np.zeros(n, int)), (np.zeros(n), few, np.zeros(n, int)),
                (np.zeros(n), many, np.full(n, 2))]
    a, (b0, b1, b2) = estimate_scale(truth, versions, level=0.8)
    assert a == pytest.approx(4.0, rel=0.08)
    assert b0 == pytest.approx(2.0, rel=0.08)  # the draws' sd must be doubled to cover
    assert b2 == pytest.approx(0.5, rel=0.08)  # and halved where much is missing
    assert b2 < b1 < b0  # no rows in that band: the factor of all drawn rows, in between
