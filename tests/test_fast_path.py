"""The service's fast path (compiled models, NumPy what-if tests) gives the reference path's numbers.

Reference: ``ResponseModelBundle.score`` (the models' own ``predict_proba`` on DataFrames) and the
models' own ``explain``. Checked on the smoke model for several kinds of patient: genotyped,
never sequenced, almost empty, values beyond the clipping bounds, and ramucirumab-ineligible.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from response_model.modeling.bundle import OUTCOMES, example_input
from response_model.modeling.compiled import CompiledModel, ReferenceModel, compile_model
from response_model.pathways import load_pathways
from response_model.schema import PatientRecord
from response_model.service.app import LoadedModel, _audit_outputs, predict_many
from response_model.service.audit import expand_explanations
from response_model.service.models import EXAMPLE_PATIENT, PredictionRequest

PATIENTS = [
    EXAMPLE_PATIENT,
    {**EXAMPLE_PATIENT, "alterations": None, "afp": 35.0},  # clinical-only, ramucirumab ineligible
    {"age": 71, "sex": "female"},  # almost everything missing
    {**EXAMPLE_PATIENT, "neutrophils": 18.0, "lymphocytes": 0.3, "afp": 250000.0, "tmb": 80.0,
     "alterations": [{"gene": "CTNNB1", "kind": "missense", "protein_change": "p.S45P"}]},  # NLR 60 > clip 25
    {**EXAMPLE_PATIENT, "alterations": [], "albumin": 2.1, "bilirubin": 3.5, "ecog": 2},
]


@pytest.fixture(scope="module")
def loaded(smoke_model):
    return LoadedModel.load(str(smoke_model["export_dir"]))


def test_the_models_compile_and_are_served_compiled(loaded):
    bundle = loaded.bundle
    for key in bundle.models:
        assert isinstance(bundle.compiled(key), CompiledModel), key


def test_fast_scores_and_explanations_equal_the_reference(loaded):
    bundle = loaded.bundle
    records = [PatientRecord.model_validate(p) for p in PATIENTS]
    reference = bundle.score(records)
    fast, X = bundle.score_with_features(records, fast=True)
    for column in ("row", "regimen", "regimen_class", "eligible", "ineligible_reason"):
        assert fast[column].tolist() == reference[column].tolist()
    for outcome in OUTCOMES:
        np.testing.assert_allclose(fast[f"p_{outcome}"], reference[f"p_{outcome}"], rtol=0, atol=1e-12)
    explained = bundle.explain_scored(fast, X, fast=True)
    assert set(explained) == set(bundle.models)
    for (regimen_class, outcome), (where, contributions, base_value) in explained.items():
        model = bundle.models[(regimen_class, outcome)]
        rows = X.iloc[where].reindex(columns=[str(c) for c in model.feature_names_in_])
        own, own_base = model.explain(rows)
        assert list(contributions.columns) == list(own.columns)
        np.testing.assert_allclose(contributions.to_numpy(), own.to_numpy(), rtol=0, atol=1e-12)
        assert base_value == pytest.approx(own_base, abs=1e-12)


def test_service_answers_carry_the_reference_numbers(loaded):
    bundle = loaded.bundle
    requests = [PredictionRequest.model_validate({"patient": p}) for p in PATIENTS]
    records = [r.patient for r in requests]
    reference = bundle.score(records)
    answers = predict_many(loaded, requests)
    for i, answer in enumerate(answers):
        answer = copy.deepcopy(answer)
        _, stored = _audit_outputs(answer)  # every feature's SHAP value, as audited (compact form)
        explanations = expand_explanations(stored)  # as the trail's readers see it
        expected = reference[reference["row"] == i].set_index("regimen")
        assert {it["regimen"] for it in answer["regimens"]} == set(expected.index)
        regimens = [it["regimen"] for it in answer["regimens"]]
        X = bundle.features([records[i]] * len(regimens), regimens)
        own_explanations = {}  # the models' own explain, one call per class × outcome
        for key, model in bundle.models.items():
            rows = [k for k, r in enumerate(regimens) if bundle.catalogue[r].regimen_class == key[0]]
            if rows:
                own, own_base = model.explain(X.iloc[rows].reindex(columns=[str(c) for c in model.feature_names_in_]))
                own_explanations.update({(regimens[k], key[1]): (own.iloc[n], own_base) for n, k in enumerate(rows)})
        for item in answer["regimens"]:
            regimen = item["regimen"]
            for outcome in OUTCOMES:
                assert item[outcome]["probability"] == round(float(expected.loc[regimen, f"p_{outcome}"]), 4)
                own, own_base = own_explanations[(regimen, outcome)]
                audited = explanations[regimen][outcome]
                assert audited["base_value"] == pytest.approx(own_base, rel=0, abs=1e-12)
                assert list(audited["values"]) == list(own.index)
                np.testing.assert_allclose(list(audited["values"].values()), own.to_numpy(), rtol=0, atol=1e-12)
                shown = [c["feature"] for c in item["explanations"][outcome]]
                largest = own.abs().sort_values(ascending=False, kind="stable")
                assert set(shown) <= set(largest.index[:len(shown) + 2])  # the top five (ties aside)
        if records[i].alterations is None:  # what-if tests: the reference path on edited feature rows
            test = answer["genomic_tests"][0]
            X = bundle.features([records[i]], [test["regimen"]])
            pathways = [p.name for p in load_pathways() if p.name in X.columns]
            X["genotyped"] = 1.0
            X[pathways] = 0.0
            X["n_alterations"] = 1.0
            X[test["pathway"]] = 1.0
            regimen_class = bundle.catalogue[test["regimen"]].regimen_class
            p1 = bundle._probabilities((regimen_class, "objective_response"), X)[0]
            assert test["p_if_altered"] == round(float(p1), 4)


def test_a_compiled_form_that_disagrees_is_not_used(loaded):
    bundle = loaded.bundle
    key = next(iter(bundle.models))
    model = copy.deepcopy(bundle.models[key])
    own = model.predict_proba
    model.predict_proba = lambda X: own(X) + np.array([-1e-9, 1e-9])  # the model's own answer moved
    assert isinstance(compile_model(model, bundle.feature_names), ReferenceModel)
    assert isinstance(compile_model(bundle.models[key], bundle.feature_names), CompiledModel)


def test_the_pyfunc_predicts_the_reference_numbers(loaded):
    """``predict`` (what ``mlflow models serve`` and batch scoring run) uses the compiled models too."""
    bundle = loaded.bundle
    records = [PatientRecord.model_validate(p) for p in PATIENTS]
    served = bundle.predict(None, example_input(records, n=len(records)))
    reference = bundle.score(records)
    assert served["regimen"].tolist() == reference["regimen"].tolist()
    for outcome in OUTCOMES:
        np.testing.assert_allclose(served[f"p_{outcome}"], reference[f"p_{outcome}"], rtol=0, atol=1e-12)


def _explain_in_child(loaded, queue) -> None:
    records = [PatientRecord.model_validate(EXAMPLE_PATIENT)]
    _, _, explained = loaded.bundle.score_explain_rows(records)
    queue.put(sorted(explained))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork (POSIX)")
def test_background_explanations_work_in_a_forked_child(loaded):
    """The explainers' threads do not survive a fork (batch scoring's workers): a child starts its own."""
    import multiprocessing

    records = [PatientRecord.model_validate(EXAMPLE_PATIENT)]
    scores, X, explained = loaded.bundle.score_explain_rows(records)  # the parent's pool exists now
    reference = loaded.bundle.explain_rows(scores["regimen_class"], X)
    for key, (where, values, columns, base) in explained.items():
        np.testing.assert_array_equal(values, reference[key][1])
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_explain_in_child, args=(loaded, queue))
    child.start()
    try:
        assert queue.get(timeout=60) == sorted(explained)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
