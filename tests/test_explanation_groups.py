"""Explanations a clinician reads (response_model.modeling.explanation_groups): terms that are exact
sums of the per-feature values, the regimen as one term, missing inputs in one "not recorded" term,
whole labels — on the smoke model, through the API answer and batch scoring."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from response_model.config import load_yaml
from response_model.dataset import parse_cohort
from response_model.features import feature_names
from response_model.modeling import explanation_groups as eg
from response_model.modeling.batch import BASE_VALUE, score_table, shap_column
from response_model.modeling.bundle import OUTCOMES
from response_model.schema import PatientRecord
from response_model.service.answers import predict_many
from response_model.service.holder import LoadedModel
from response_model.service.models import PredictionRequest

SPARSE = {"age": 66, "sex": "male", "albumin": 3.4}
MODEL_NAMES = ("regimen_", "target_", "class_", "_log10", "aetiology_", "cancer_type_", "sex_male", "msi_high",
               "genotyped", "n_alterations")


@pytest.fixture(scope="module")
def loaded(smoke_model):
    return LoadedModel.load(str(smoke_model["export_dir"]))


@pytest.fixture(scope="module")
def simulated_records(simulated_small):
    records = parse_cohort(simulated_small.cohort).records
    rng = np.random.default_rng(13)
    return [records[k] for k in rng.choice(len(records), 20, replace=False)]


def _feature_fields(record: PatientRecord, names) -> set[str]:
    """The record fields behind the features ``names`` that ``record`` lacks."""
    g = eg.grouping(tuple(names))
    return {f for f, missing in zip(g.fields, g.field_missing([record])[0]) if missing}


def test_terms_sum_to_the_per_feature_values_and_the_log_odds(loaded, simulated_records):
    bundle = loaded.bundle
    records = [*simulated_records, PatientRecord.model_validate(SPARSE)]
    predictions = bundle.predictor().predict(records, explain=True)  # every candidate regimen
    assert set(predictions.regimen) == {r.name for r in bundle.predictor().candidate_regimens()}
    X = predictions.features.frame()
    for key, explained in predictions.explanations.items():
        contributions = pd.DataFrame(explained.values, columns=explained.names)
        rows = [records[i] for i in predictions.patient[explained.rows]]
        grouped = eg.grouped_frame(contributions, rows)
        assert list(grouped.columns)[-1] == eg.NOT_RECORDED and grouped.columns.is_unique
        np.testing.assert_allclose(grouped.sum(axis=1), contributions.sum(axis=1), rtol=0, atol=1e-9)
        model = bundle.models[key]
        log_odds = model.decision_function(X.iloc[explained.rows].reindex(
            columns=[str(c) for c in model.feature_names_in_]))
        np.testing.assert_allclose(explained.base_value + grouped.sum(axis=1), log_odds, rtol=0, atol=1e-9)
        position = {name: j for j, name in enumerate(explained.names)}
        for n, row in enumerate(explained.rows.tolist()):  # the terms a clinician reads, row by row
            shown, features = eg.row_terms(rows[n], predictions.regimen[row], key[1], explained.names,
                                           explained.values[n], top=len(grouped.columns))
            assert sorted(f for fs in features.values() for f in fs) == sorted(explained.names)  # a partition
            by_term = {t["term"]: t["contribution"] for t in shown}
            for term, fs in features.items():
                total = float(explained.values[n, [position[f] for f in fs]].sum())
                assert total == pytest.approx(grouped.iat[n, grouped.columns.get_loc(term)], abs=1e-12)
                assert by_term.get(term, 0.0) == pytest.approx(total, abs=1e-5)


def test_random_values_keep_additivity_for_every_regimen(simulated_records):
    names = feature_names()
    rng = np.random.default_rng(5)
    values = pd.DataFrame(rng.normal(size=(len(simulated_records), len(names))), columns=list(names))
    grouped = eg.grouped_frame(values, simulated_records)
    np.testing.assert_allclose(grouped.sum(axis=1), values.sum(axis=1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(eg.term_frame(values).sum(axis=1), values.sum(axis=1), rtol=0, atol=1e-9)
    # a feature with a missing field moves to not recorded: exactly the Σ of those features
    sparse = PatientRecord.model_validate(SPARSE)
    g = eg.grouping(tuple(names))
    missing = g.feature_missing(g.field_missing([sparse]))[0]
    assert {names[j] for j in np.flatnonzero(missing)} >= {"bilirubin", "albi_score", "albi_grade", "afp_log10",
                                                            "wnt_activation", "genotyped", "child_pugh_score"}
    assert not missing[[names.index(n) for n in ("age", "sex_male", "albumin", "regimen_lenvatinib")]].any()
    one = eg.grouped_frame(values.iloc[:1], [sparse])
    assert one[eg.NOT_RECORDED].iloc[0] == pytest.approx(values.iloc[0].to_numpy()[missing].sum(), abs=1e-12)


def test_the_regimen_is_one_term_named_after_the_patients_regimen(loaded, simulated_records):
    requests = [PredictionRequest.model_validate({"patient": r.model_dump(mode="json", exclude_none=True,
                                                                          exclude={"albi_score", "albi_grade",
                                                                                   "child_pugh_score"})})
                for r in simulated_records[:4]] + [PredictionRequest.model_validate({"patient": SPARSE})]
    answers = predict_many(loaded, requests)
    seen = 0
    for answer in answers:
        shown_json = json.dumps([it["explanations"] for it in answer["regimens"]], ensure_ascii=False)
        assert not [name for name in MODEL_NAMES if name in shown_json], shown_json[:400]
        for item in answer["regimens"]:
            for terms in item["explanations"].values():
                regimen_terms = [t for t in terms if t["term"] == "regimen"]
                assert len(regimen_terms) <= 1
                for t in regimen_terms:
                    assert t["text"] == f"Regimen: {item['label']}" and t["fields"] == ["regimen"]
                    seen += 1
                assert len({t["term"] for t in terms}) == len(terms)
    assert seen > 0  # the regimen is among the largest terms somewhere


def test_a_sparse_patients_missing_inputs_are_one_not_recorded_term(loaded):
    record = PatientRecord.model_validate(SPARSE)
    answer = predict_many(loaded, [PredictionRequest.model_validate({"patient": SPARSE})])[0]
    predictor = loaded.bundle.predictor()
    for item in answer["regimens"]:
        if not item["eligible"]:
            continue
        for outcome in OUTCOMES:
            terms = item["explanations"][outcome]
            missing = [t for t in terms if t["term"] == eg.NOT_RECORDED]
            assert len(missing) == 1, terms
            term = missing[0]
            lacking = _feature_fields(record, predictor.feature_names)
            assert set(term["fields"]) == lacking and {"bilirubin", "afp", "alterations", "ecog"} <= lacking
            assert {m["label"] for m in term["missing"]} >= {"Total bilirubin", "Serum alpha-fetoprotein",
                                                              "Tumour sequencing", "ECOG performance status"}
            assert term["display"] == ", ".join(m["label"] for m in term["missing"])
            # never sequenced: it names the genomic tests that would move this regimen's estimate most
            assert term["tests"] and all(t["regimen"] == item["regimen"] for t in term["tests"])
            assert [t["spread"] for t in term["tests"]] == sorted((t["spread"] for t in term["tests"]), reverse=True)
            for other in terms:  # no other term rests on a missing input
                if other is not term:
                    assert not set(other["fields"]) & lacking, other
            albi = [t for t in terms if t["term"] == "albi"]
            if albi:  # albumin given, bilirubin not: the ALBI term shows what was given only
                assert albi[0]["display"] == "albumin 3.4 g/dL"


def test_labels_and_units_come_from_the_schema_whole():
    g = eg.grouping(feature_names())
    labels = {t.term: t.label for t in g.terms}
    assert labels["fcna"] == "Fraction of genome with copy-number alteration"
    assert labels["nlr"] == "Neutrophil-to-lymphocyte ratio"  # the description up to its first ';'
    assert labels["hed"] == "HLA class I evolutionary divergence (mean)"
    assert labels["wnt_activation"] == "WNT/β-catenin activation"
    configured = {t["term"]: t["label"] for t in load_yaml("explanations.yaml")["display"]["terms"]}
    assert all(labels[term] == label for term, label in configured.items())
    record = PatientRecord.model_validate({"age": 58, "sex": "female", "fcna": 0.3125, "afp": 1250.0,
                                           "albumin": 3.1, "bilirubin": 1.4, "aetiology": "HBV"})
    names = feature_names()
    values = np.ones(len(names))
    shown, _ = eg.row_terms(record, "atezolizumab_bevacizumab", "objective_response", names, values, top=100)
    texts = {t["term"]: t["text"] for t in shown}
    assert texts["fcna"] == "Fraction of genome with copy-number alteration: 0.3125 fraction"
    assert texts["afp"] == "Serum alpha-fetoprotein: 1250 ng/mL"
    assert texts["aetiology"] == "Aetiology: HBV"
    assert texts["albi"].startswith("Liver function (ALBI): grade ") and "albumin 3.1 g/dL, bilirubin 1.4 mg/dL" in \
        texts["albi"]
    assert texts["regimen"] == "Regimen: Atezolizumab + bevacizumab"
    assert all(t["text"] == f"{t['label']}: {t['display']}" and "…" not in t["text"] for t in shown)


def test_score_explain_writes_term_columns_that_sum_to_the_feature_columns(loaded, simulated_records):
    predictor = loaded.bundle.predictor()
    records = [*simulated_records[:3], PatientRecord.model_validate(SPARSE)]
    table = score_table(predictor, records, explain=True)
    for outcome in OUTCOMES:
        terms = [c for c in table.columns if c.startswith(f"{eg.TERM_PREFIX}{outcome}__")]
        features = [shap_column(outcome, f) for f in predictor.feature_names]
        assert eg.term_column(outcome, "regimen") in terms and terms[-1] == eg.term_column(outcome, eg.NOT_RECORDED)
        assert not [c for c in terms if any(name in c for name in MODEL_NAMES)]
        explained = table[shap_column(outcome, BASE_VALUE)].notna()
        np.testing.assert_allclose(table.loc[explained, terms].sum(axis=1),
                                   table.loc[explained, features].sum(axis=1), rtol=0, atol=1e-9)
    sparse = table[table["row"] == len(records) - 1]
    assert sparse[eg.NOT_RECORDED].str.contains("Total bilirubin").all()
    assert not sparse[eg.NOT_RECORDED].str.contains("Serum albumin").any()
