"""The fast path (the bundle's compiled evaluators) gives the reference path's numbers.

Reference: :meth:`Predictor.reference` (the models' own ``predict_proba`` and ``explain`` on
DataFrames). Checked on the smoke model for several kinds of patient: genotyped, never sequenced,
almost empty, values beyond the clipping bounds, and ramucirumab-ineligible.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from response_model.features import FeatureBlocks, build_feature_matrix
from response_model.modeling.bundle import OUTCOMES, example_input
from response_model.modeling.compiled import CompiledModel, ReferenceModel, compile_model
from response_model.modeling.predictor import Predictor
from response_model.pathways import load_pathways
from response_model.schema import PatientRecord
from response_model.service.answers import audit_outputs, predict_many
from response_model.service.audit import expand_explanations
from response_model.service.holder import LoadedModel
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


def _features(bundle, records, regimens):
    """The feature matrix of (record, regimen) rows in the bundle's column order."""
    return build_feature_matrix(records, regimens).reindex(columns=list(bundle.feature_names))


def test_the_models_compile_and_are_served_compiled(loaded):
    bundle = loaded.bundle
    for key in bundle.models:
        assert isinstance(bundle.predictor().evaluators[key], CompiledModel), key


def test_fast_scores_and_explanations_equal_the_reference(loaded):
    bundle = loaded.bundle
    records = [PatientRecord.model_validate(p) for p in PATIENTS]
    reference = Predictor.reference(bundle).predict(records).table()
    predictions = bundle.predictor().predict(records, explain=True)
    fast = predictions.table()
    for column in ("row", "regimen", "regimen_class", "eligible", "ineligible_reason"):
        assert fast[column].tolist() == reference[column].tolist()
    for outcome in OUTCOMES:
        np.testing.assert_allclose(fast[f"p_{outcome}"], reference[f"p_{outcome}"], rtol=0, atol=1e-12)
    explained = predictions.explanations
    assert set(explained) == set(bundle.models)
    X = predictions.features.frame().reindex(columns=list(bundle.feature_names))
    for (regimen_class, outcome), explanation in explained.items():
        model = bundle.models[(regimen_class, outcome)]
        rows = X.iloc[explanation.rows].reindex(columns=[str(c) for c in model.feature_names_in_])
        own, own_base = model.explain(rows)
        assert explanation.names == [str(c) for c in own.columns]
        np.testing.assert_allclose(explanation.values, own.to_numpy(), rtol=0, atol=1e-12)
        assert explanation.base_value == pytest.approx(own_base, abs=1e-12)


def test_service_answers_carry_the_reference_numbers(loaded):
    bundle = loaded.bundle
    requests = [PredictionRequest.model_validate({"patient": p}) for p in PATIENTS]
    records = [r.patient for r in requests]
    reference = Predictor.reference(bundle).predict(records).table()
    answers = predict_many(loaded, requests)
    for i, answer in enumerate(answers):
        answer = copy.deepcopy(answer)
        _, stored = audit_outputs(answer)  # every feature's SHAP value, as audited (compact form)
        explanations = expand_explanations(stored)  # as the trail's readers see it
        expected = reference[reference["row"] == i].set_index("regimen")
        assert {it["regimen"] for it in answer["regimens"]} == set(expected.index)
        regimens = [it["regimen"] for it in answer["regimens"]]
        X = _features(bundle, [records[i]] * len(regimens), regimens)
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
                # the terms shown: the reference's per-feature values summed over each term's features
                for term in item["explanations"][outcome]:
                    total = float(own[audited["terms"][term["term"]]].sum())
                    assert term["contribution"] == pytest.approx(total, abs=1e-5)
        if records[i].alterations is None:  # what-if tests: the reference path on edited feature rows
            test = answer["genomic_tests"][0]
            X = _features(bundle, [records[i]], [test["regimen"]])
            pathways = [p.name for p in load_pathways() if p.name in X.columns]
            X["genotyped"] = 1.0
            X[pathways] = 0.0
            X["n_alterations"] = 1.0
            X[test["pathway"]] = 1.0
            regimen_class = bundle.catalogue[test["regimen"]].regimen_class
            model = ReferenceModel(bundle.models[(regimen_class, "objective_response")], bundle.feature_names)
            p1 = model.probabilities(X.to_numpy())[0]
            assert test["p_if_altered"] == round(float(p1), 4)


def test_a_compiled_form_that_disagrees_is_not_used(loaded):
    bundle = loaded.bundle
    key = next(iter(bundle.models))
    model = copy.deepcopy(bundle.models[key])
    own = model.predict_proba
    model.predict_proba = lambda X: own(X) + np.array([-1e-9, 1e-9])  # the model's own answer moved
    assert isinstance(compile_model(model, bundle.feature_names), ReferenceModel)
    assert isinstance(compile_model(bundle.models[key], bundle.feature_names), CompiledModel)
    # a predictor with such a model among the compiled ones (the model's own methods, on the
    # feature blocks it is given instead of a matrix) still scores, with the model's own numbers
    evaluators = {**bundle.predictor().evaluators, key: ReferenceModel(bundle.models[key], bundle.feature_names)}
    predictor = Predictor(evaluators, bundle.feature_names, bundle.catalogue, bundle.metadata)
    records = [PatientRecord.model_validate(p) for p in PATIENTS]
    predictions = predictor.predict(records)
    assert isinstance(predictions.features, FeatureBlocks)  # no feature matrix was built
    scores = predictions.table()
    reference = Predictor.reference(bundle).predict(records).table()
    for outcome in OUTCOMES:
        np.testing.assert_allclose(scores[f"p_{outcome}"], reference[f"p_{outcome}"], rtol=0, atol=1e-12)


def test_the_pyfunc_predicts_the_reference_numbers(loaded):
    """``predict`` (what ``mlflow models serve`` runs) uses the compiled models too."""
    bundle = loaded.bundle
    records = [PatientRecord.model_validate(p) for p in PATIENTS]
    served = bundle.predict(None, example_input(records, n=len(records)))
    reference = Predictor.reference(bundle).predict(records).table()
    assert served["regimen"].tolist() == reference["regimen"].tolist()
    for outcome in OUTCOMES:
        np.testing.assert_allclose(served[f"p_{outcome}"], reference[f"p_{outcome}"], rtol=0, atol=1e-12)


def _explain_in_child(loaded, queue) -> None:
    records = [PatientRecord.model_validate(EXAMPLE_PATIENT)]
    queue.put(sorted(loaded.bundle.predictor().predict(records, explain=True).explanations))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork (POSIX)")
def test_explanations_work_in_a_forked_child(loaded):
    """A forked child (e.g. a batch worker) explains with the parent's predictor after the parent has."""
    import multiprocessing

    records = [PatientRecord.model_validate(EXAMPLE_PATIENT)]
    explained = loaded.bundle.predictor().predict(records, explain=True).explanations
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


# -- the factored evaluation (patients' features and trees once per patient) -----------------------


def _cohort_records(n: int = 60):
    from response_model.dataset import row_to_record
    from response_model.sources.simulator import simulate_cohort

    return [row_to_record(r) for r in simulate_cohort(n, 5).cohort.to_dict(orient="records")]


def test_tree_groups_add_up_to_the_booster(loaded):
    """Every tree lands in exactly one group, and the groups' raw scores and TreeSHAP values (put back in
    their feature positions) add up to the whole booster's on real feature rows."""
    from response_model.features import regimen_feature_names
    from response_model.modeling.compiled import group_trees

    bundle = loaded.bundle
    records = _cohort_records()
    X = bundle.predictor().predict(records).features.frame()
    for key, model in bundle.models.items():
        booster = model.gbm_.booster_
        matrix = np.ascontiguousarray(X.reindex(columns=[str(c) for c in model.gbm_features_]).to_numpy())
        groups = group_trees(booster, regimen_feature_names(), max_groups=4)
        assert 1 <= len(groups) <= 4
        assert sum(g.booster.num_trees() for g in groups) == booster.num_trees(), key
        row_positions = {k for k, n in enumerate(booster.feature_name()) if n in set(regimen_feature_names())}
        assert not set(groups[0].row_features) or all(len(g.row_features) for g in groups), key
        raw = sum(g.booster.predict(matrix[:, g.features], raw_score=True) for g in groups)
        np.testing.assert_allclose(raw, booster.predict(matrix, raw_score=True), rtol=0, atol=1e-12)
        contributions = np.zeros((len(matrix), matrix.shape[1] + 1))
        for g in groups:
            assert set(g.row_features) == set(g.features) & row_positions
            values = g.booster.predict(matrix[:, g.features], pred_contrib=True)
            contributions[:, g.features] += values[:, :-1]
            contributions[:, -1] += values[:, -1]
        np.testing.assert_allclose(contributions, booster.predict(matrix, pred_contrib=True), rtol=0, atol=1e-12)


def test_grouping_rows_by_patient_changes_no_number(loaded):
    """Scored as one patient per group (the API path), from feature blocks (the batch path), or every
    row on its own, and with the rows shuffled: the same probabilities and explanations, to 1e-12 of
    the models' own methods."""
    bundle = loaded.bundle
    records = _cohort_records()
    predictions = bundle.predictor().predict(records)
    matrix = _features(bundle, [records[i] for i in predictions.patient], list(predictions.regimen)).to_numpy()
    classes = predictions.regimen_class
    blocks = predictions.features
    np.testing.assert_array_equal(blocks.matrix(), matrix)
    rows = predictions.patient
    shuffle = np.random.default_rng(0).permutation(len(matrix))
    for key in bundle.models:
        model = bundle.predictor().evaluators[key]
        mask = classes == key[0]
        grouped, alone = model.probabilities(matrix[mask], rows[mask]), model.probabilities(matrix[mask])
        np.testing.assert_allclose(grouped, alone, rtol=0, atol=1e-12)
        # batch scoring without explanations reads the feature blocks, never building the matrix: bit for bit
        np.testing.assert_array_equal(model.probabilities(blocks.subset(mask)), grouped)
        shuffled = model.probabilities(matrix[shuffle][mask[shuffle]], rows[shuffle][mask[shuffle]])
        np.testing.assert_allclose(np.sort(shuffled), np.sort(grouped), rtol=0, atol=1e-12)
        reference = ReferenceModel(bundle.models[key], bundle.feature_names)
        np.testing.assert_allclose(grouped, reference.probabilities(matrix[mask]), rtol=0, atol=1e-12)
        values, _, base = model.explain(matrix[mask], rows[mask])
        ref_values, _, ref_base = reference.explain(matrix[mask])
        np.testing.assert_allclose(values, ref_values, rtol=0, atol=1e-12)
        assert abs(base - ref_base) <= 1e-12


def test_a_predictor_scores_like_its_bundle_without_mlflow(loaded, tmp_path):
    """What batch scoring's workers get: the same numbers, and unpickled in a fresh interpreter
    without importing MLflow or the training code."""
    import pickle
    import subprocess
    import sys

    bundle = loaded.bundle
    predictor = pickle.loads(pickle.dumps(bundle.predictor()))
    records = _cohort_records(20)
    ours = predictor.predict(records).table()
    theirs = bundle.predictor().predict(records).table()
    assert ours.drop(columns=[c for c in ours if c.startswith("p_")]).equals(
        theirs.drop(columns=[c for c in theirs if c.startswith("p_")]))
    for outcome in OUTCOMES:
        np.testing.assert_array_equal(ours[f"p_{outcome}"], theirs[f"p_{outcome}"])
    (tmp_path / "predictor.pkl").write_bytes(pickle.dumps(bundle.predictor()))
    script = (
        "import pickle, sys\n"
        f"predictor = pickle.loads(open({str(tmp_path / 'predictor.pkl')!r}, 'rb').read())\n"
        "import response_model.modeling.batch\n"
        "heavy = [m for m in ('mlflow', 'response_model.modeling.bundle', 'response_model.modeling.cv',\n"
        "                     'response_model.modeling.estimators') if m in sys.modules]\n"
        "print(type(predictor).__name__, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["Predictor", "[]"], out.stdout + out.stderr


def test_a_recalibrated_elastic_net_model_is_served_compiled():
    """The default recipe's form (elastic-net linear part, LightGBM, sigmoid recalibration) compiles,
    so serving it does not fall back to the slower reference path, and gives the model's numbers."""
    import pandas as pd

    from response_model.modeling.estimators import ResponseClassifier

    rng = np.random.default_rng(7)
    names = ["albumin", "nlr", "tmb", "noise_a", "noise_b"]
    X = pd.DataFrame(rng.normal(size=(600, len(names))), columns=names)
    X.loc[rng.random(600) < 0.2, "tmb"] = np.nan
    y = (rng.random(600) < 1 / (1 + np.exp(-(0.9 * X["albumin"] - 0.7 * X["nlr"])))).astype(int)
    model = ResponseClassifier(linear_weight=0.7, C=0.03, l1_ratio=0.5, calibrate=True, n_estimators=40,
                               learning_rate=0.1).fit(X, y)
    assert model.calibrator_ is not None and (model.linear_.coefficients_ == 0.0).any()
    compiled = compile_model(model, names)
    assert isinstance(compiled, CompiledModel)
    probe = X.iloc[:50].to_numpy()
    np.testing.assert_allclose(compiled.probabilities(probe), model.predict_proba(X.iloc[:50])[:, 1], atol=1e-9)
