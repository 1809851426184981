"""Missing inputs (issue 13 points 2–3): the field → columns map, missingness augmentation, the
information block and the out-of-distribution check of missingness patterns."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from response_model.dataset import parse_cohort
from response_model.features import build_feature_matrix, field_columns, hide_fields, hideable_fields
from response_model.modeling.estimators import ResponseClassifier
from response_model.modeling.missingness import augment, hiding_masks, mask_fields, missing_table
from response_model.regimens import candidate_regimens, load_catalogue
from response_model.schema import PatientRecord


@pytest.fixture(scope="module")
def parsed(simulated_small):
    return parse_cohort(simulated_small.cohort)


def test_mask_map_equals_the_feature_path_on_random_records_and_subsets(parsed):
    rng = np.random.default_rng(11)
    records = [parsed.records[i] for i in rng.choice(len(parsed.records), 300, replace=False)]
    regimens = [r.name for r in rng.choice(candidate_regimens(), len(records))]
    fields = hideable_fields()
    hidden = {f: rng.random(len(records)) < rng.uniform(0.05, 0.9) for f in fields}
    hidden_records = [hide_fields(r, [f for f in fields if hidden[f][k]]) for k, r in enumerate(records)]
    expected = build_feature_matrix(hidden_records, regimens)
    masked = mask_fields(build_feature_matrix(records, regimens), hidden)
    assert list(masked.columns) == list(expected.columns)
    np.testing.assert_array_equal(masked.to_numpy(), expected.to_numpy())  # NaN positions included
    # and every field alone, in every record
    records, regimens = records[:100], regimens[:100]
    full = build_feature_matrix(records, regimens)
    for f in fields:
        one = build_feature_matrix([hide_fields(r, [f]) for r in records], regimens)
        np.testing.assert_array_equal(mask_fields(full, [f]).to_numpy(), one.to_numpy(), err_msg=f)


def test_derived_columns_follow_their_fields():
    columns = field_columns()
    assert {"albumin", "albi_score", "albi_grade", "child_pugh_score"} <= set(columns["albumin"])
    assert columns["alterations"]["genotyped"] == 0.0 and np.isnan(columns["alterations"]["wnt_activation"])
    assert "afp_log10" in columns["afp"] and "aetiology_viral" in columns["aetiology"]
    assert "age" not in columns and "sex" not in columns and "cancer_type" not in columns
    assert not {"neutrophils", "lymphocytes", "sequencing_panel", "patient_id"} & set(columns)


def test_hiding_masks_mix_schemes_and_augment_keeps_the_originals(parsed):
    X = build_feature_matrix(parsed.records[:400], "lenvatinib")
    y = np.arange(400) % 2
    masks = hiding_masks(4000, np.random.default_rng(0))
    hidden = pd.DataFrame(masks)
    everything = hidden.all(axis=1).mean()
    assert 0.25 < everything < 0.35  # required_only share 0.3 (configs/missingness.yaml)
    assert hidden.any(axis=1).mean() > 0.95
    rows, labels, weights = augment(X, y, copies=2, weight=1.0, seed=3)
    assert len(rows) == 1200 and (labels[:400] == y).all() and (labels[400:800] == y).all()
    np.testing.assert_array_equal(rows.iloc[:400].to_numpy(), X.to_numpy())
    assert weights[:400].sum() == pytest.approx(400) and weights[400:].sum() == pytest.approx(400)
    regimen_columns = [c for c in X.columns if c.startswith(("class_", "target_", "regimen_"))]
    np.testing.assert_array_equal(rows[regimen_columns].to_numpy()[400:],
                                  np.tile(X[regimen_columns].to_numpy(), (2, 1)))


def _class_rows(parsed, regimen_class, outcome):
    frame = parsed.frame()
    catalogue = load_catalogue()
    classes = frame["regimen"].map(lambda r: catalogue[r].regimen_class)
    y = frame.loc[classes == regimen_class, outcome].astype(float).dropna().astype(int)
    X = build_feature_matrix(parsed.records, frame["regimen"].tolist()).loc[y.index]
    return X, y


def test_augmentation_moves_sparse_estimates_towards_the_population_mean(simulated_small, parsed):
    from response_model.config import load_yaml
    from response_model.modeling.train import _model_params

    X, y = _class_rows(parsed, "tki_antiangiogenic", "objective_response")
    params = _model_params(load_yaml("train/default.yaml"), "tki_antiangiogenic", "objective_response")
    assert params["missing_copies"] > 0  # the default config trains with augmentation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = ResponseClassifier(**{**params, "missing_copies": 0}).fit(X, y)
        on = ResponseClassifier(**params).fit(X, y)
    # the sparse patient: age, sex and albumin only
    sparse = [PatientRecord(age=r.age, sex=r.sex, albumin=r.albumin) for r in parsed.records[:400]]
    truth = simulated_small.truth.groupby("regimen")["p_objective_response"].mean()
    errors = {"off": [], "on": []}
    for regimen in (r.name for r in candidate_regimens() if r.regimen_class == "tki_antiangiogenic"):
        rows = build_feature_matrix(sparse, regimen)
        for name, model in (("off", off), ("on", on)):
            errors[name].append(abs(model.predict_proba(rows)[:, 1].mean() - truth[regimen]))
    assert np.mean(errors["on"]) < 0.6 * np.mean(errors["off"])
    assert max(errors["on"]) < 0.03


def test_augmentation_is_seeded_and_leaves_the_fitted_interface(parsed):
    X, y = _class_rows(parsed, "tki_antiangiogenic", "objective_response")
    X, y = X.iloc[:300], y.iloc[:300]
    params = {"n_estimators": 30, "min_child_samples": 20, "missing_copies": 1}
    a = ResponseClassifier(**params).fit(X, y)
    b = ResponseClassifier(**params).fit(X, y)
    c = ResponseClassifier(**params, random_state=1).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))
    assert list(a.feature_names_in_) == list(X.columns)
    contributions, base = a.explain(X.iloc[:50])
    np.testing.assert_allclose(base + contributions.sum(axis=1), a.decision_function(X.iloc[:50]), atol=1e-9)
    with pytest.raises(ValueError, match="missing_copies"):
        ResponseClassifier(missing_copies=-1).fit(X, y)


# -- the information block and the out-of-distribution check of the served model --------------------


@pytest.fixture(scope="module")
def loaded(smoke_model):
    from response_model.service.holder import LoadedModel

    return LoadedModel.load(str(smoke_model["export_dir"]))


def _answer(loaded, patient: dict) -> dict:
    from response_model.service.answers import predict_many
    from response_model.service.models import PredictionRequest, PredictionResponse

    answer = predict_many(loaded, [PredictionRequest.model_validate({"patient": patient})])[0]
    PredictionResponse.model_validate(answer)  # the documented answer schema
    return answer


def test_bundle_stores_aggregated_missingness_only(loaded):
    summary = loaded.bundle.metadata["missingness"]
    assert set(summary["fields"]) == set(hideable_fields())
    for model in summary["models"].values():
        assert sum(model["influence"].values()) == pytest.approx(1.0, abs=1e-4)
        assert model["share_at_least"][0] == 1.0 and model["share_at_least"] == sorted(model["share_at_least"])[::-1]
    for stats in summary["classes"].values():
        assert all(p["share"] * stats["n"] >= summary["settings"]["information"]["min_pattern_count"] - 1e-3
                   for p in stats["patterns"])


def test_sparse_patient_is_flagged(loaded):
    answer = _answer(loaded, {"age": 64, "sex": "male", "albumin": 3.9})
    info, ood = answer["information"], answer["out_of_distribution"]
    assert info["checked"] and info["rests_on_population_averages"]
    assert info["missing_influence_share"] >= 0.5 and "population averages" in info["message"]
    assert "albumin" not in info["missing_fields"] and "bilirubin" in info["missing_fields"]
    assert info["missing_influential"] and all(m["field"] != "albumin" for m in info["missing_influential"])
    assert ood["flagged"] and ood["missingness"]["flagged"]
    assert ood["missingness"]["training_share_missing_as_much"] < 0.01
    assert "aetiology" in {f["field"] for f in ood["missingness"]["rarely_missing_in_training"]}  # never missing


def test_complete_simulated_patient_is_not_flagged(loaded, parsed):
    missing = missing_table(parsed.records)
    best = int(missing.sum(axis=1).to_numpy().argmin())
    patient = parsed.records[best].model_dump(exclude={"patient_id", "albi_score", "albi_grade", "child_pugh_score"})
    answer = _answer(loaded, patient)
    info, ood = answer["information"], answer["out_of_distribution"]
    assert info["checked"] and not info["rests_on_population_averages"]
    assert info["missing_influence_share"] < 0.1
    assert not ood["missingness"]["flagged"]
    assert ood["flagged"] == bool(ood["features"])  # only a value could flag it


def test_audit_record_carries_the_information(loaded):
    from response_model.service.answers import audit_outputs

    outputs, _ = audit_outputs(_answer(loaded, {"age": 70, "sex": "female"}))
    assert outputs["information"]["rests_on_population_averages"] is True
    assert outputs["out_of_distribution_missingness"]["flagged"] is True
